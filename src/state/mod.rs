//! State that outlives one request: the retry/de-duplication answers, the replay cache, kept
//! late answers, the WeChat access token.
//!
//! One small key/value interface, [`Store`], with two kinds of value — a byte string and a
//! list of byte strings — each with a time to live. It is the subset of Redis those users
//! need (`SET NX PX`, `SET PX`, `GET`, `DEL`, `RPUSH`+`PEXPIRE`, `LPOP`, `LLEN`), so a
//! Redis-backed store serves several instances with the same code, and [`MemoryStore`] serves
//! one instance in a bounded number of bytes.
//!
//! Keys are built with [`key`] so every deployment's keys share the `weixin-fcgi:` prefix and
//! no id can forge another kind's key.

pub mod fallback;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod shared;

pub use memory::{Exported, ExportedValue, MemoryStore};

use std::fmt;
use std::time::Duration;

/// Why a store operation did not happen. Callers never fail a request for it: they fall back
/// to local state (or to behaving as if nothing was stored) and log once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backing service is unreachable, slow or answered an error.
    Unavailable(String),
    /// One value (with its key) is larger than the store accepts.
    TooLarge { bytes: usize, limit: usize },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "state store unavailable: {why}"),
            StoreError::TooLarge { bytes, limit } => {
                write!(
                    f,
                    "value of {bytes} bytes exceeds the state store's limit of {limit}"
                )
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// A key/value store with expiry. Every method is atomic for its key.
pub trait Store: Send + Sync {
    /// Stores `value` under `key` for `ttl` only if the key is absent (or expired).
    /// `Ok(true)` when stored: the caller now holds the key (a claim).
    fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;
    /// Stores `value` under `key` for `ttl`, replacing what was there (of either kind).
    fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;
    /// The byte-string value under `key`; `None` when absent, expired or a list.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes `key` (either kind). Absent keys are fine.
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Appends `values` to the list under `key` (created when absent; a byte string there is
    /// replaced) and sets the list's time to live to `ttl`.
    fn push(&self, key: &str, values: &[&[u8]], ttl: Duration) -> Result<(), StoreError>;
    /// Removes and returns the first value of the list under `key`.
    fn pop(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// How many values the list under `key` holds (0 when absent).
    fn list_len(&self, key: &str) -> Result<usize, StoreError>;
}

/// The prefix of every key, so one Redis can serve several programs.
pub const KEY_PREFIX: &str = "weixin-fcgi:";

/// Longest escaped `id` kept as is; longer ids are replaced by their SHA-1 (keys stay small).
const MAX_ID_BYTES: usize = 200;

/// `weixin-fcgi:{account}:{kind}:{id}`, each part escaped so that the mapping is injective:
/// bytes outside `[A-Za-z0-9_.@/+=-]` (including `:` and `%`) become `%XX`. An escaped id
/// longer than 200 bytes is replaced by `#` and its SHA-1 in hex.
pub fn key(account: &str, kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(KEY_PREFIX.len() + account.len() + kind.len() + 64);
    out.push_str(KEY_PREFIX);
    escape_into(&mut out, account.as_bytes());
    out.push(':');
    escape_into(&mut out, kind.as_bytes());
    out.push(':');
    let start = out.len();
    escape_into(&mut out, id.as_bytes());
    if out.len() - start > MAX_ID_BYTES {
        use sha1::Digest;
        out.truncate(start);
        out.push('#');
        let digest = sha1::Sha1::digest(id.as_bytes());
        let mut hex = [0u8; 40];
        // Cannot fail: 40 bytes hold the hex of a 20-byte digest.
        if hex::encode_to_slice(digest, &mut hex).is_ok() {
            out.extend(hex.iter().map(|&b| b as char));
        }
    }
    out
}

/// Bytes a key part keeps as they are: `[A-Za-z0-9_.@/+=-]`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b'.' | b'@' | b'/' | b'+' | b'=' | b'-');
        b += 1;
    }
    t
};

fn escape_into(out: &mut String, mut bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let plain = |b: &u8| PLAIN[usize::from(*b)];
    // Runs of plain bytes are copied at once: ids (signatures, OpenIDs) are mostly plain.
    while !bytes.is_empty() {
        let run = bytes.iter().position(|b| !plain(b)).unwrap_or(bytes.len());
        let (head, rest) = bytes.split_at(run);
        // Plain bytes are ASCII.
        out.push_str(std::str::from_utf8(head).unwrap_or_default());
        let Some((&b, rest)) = rest.split_first() else {
            break;
        };
        out.push('%');
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
        bytes = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_escaped() {
        assert_eq!(
            key("main", "retry", "oABC-12_x"),
            "weixin-fcgi:main:retry:oABC-12_x"
        );
        assert_eq!(key("a:b", "k", "x y%"), "weixin-fcgi:a%3Ab:k:x%20y%25");
        assert_eq!(key("main", "late", "é"), "weixin-fcgi:main:late:%C3%A9");
    }

    #[test]
    fn keys_are_injective_across_parts() {
        // Without escaping, ("a:b", "c") and ("a", "b:c") would give the same key.
        assert_ne!(key("a:b", "c", "d"), key("a", "b:c", "d"));
        assert_ne!(key("a", "b", "c%3A"), key("a", "b", "c:"));
    }

    #[test]
    fn long_ids_are_hashed() {
        let id = "x".repeat(500);
        let k = key("main", "replay", &id);
        assert!(k.starts_with("weixin-fcgi:main:replay:#"), "{k}");
        assert_eq!(k.len(), "weixin-fcgi:main:replay:#".len() + 40);
        assert_ne!(k, key("main", "replay", &"x".repeat(501)));
        // At the limit the id is kept as is.
        let edge = "y".repeat(MAX_ID_BYTES);
        assert!(key("m", "k", &edge).ends_with(&edge));
    }
}
