//! The replay cache: each accepted signed POST is remembered for the whole timestamp window.
//!
//! In plaintext mode `signature` covers only token, timestamp and nonce, never the body, and
//! nginx's default access log (or any proxy's) records the query. So whoever reads one logged
//! request could send another body — another FromUserName, another Content — under the same
//! valid signature until the timestamp leaves `timestamp_window`. Here every accepted request
//! leaves its signature and a keyed digest of its body, until its timestamp leaves the window:
//! - the same signature with another body is refused (403, "signature reused with another
//!   body");
//! - the same signature with the same body within the retry period (`dedup_seconds`, or
//!   [`RETRY_PERIOD_WITHOUT_DEDUP`] when that is 0) is a WeChat retry and is served as before
//!   (a `forward` rule answers it from the retry table);
//! - the same request later than that, still inside the window, is a replay: refused (403), so
//!   even a request that is valid in every byte (safe mode included) reaches a `forward`
//!   backend once.
//!
//! The key is the signature alone: it is `sha1(sort(token, timestamp, nonce))`, so it names the
//! triple, and digits moved between timestamp and nonce (which sort to the same string and so
//! keep the signature valid) are the same entry. Entries live in a byte-bounded
//! [`Store`](crate::state::Store) (`replay_cache_bytes`): when it is full the oldest are
//! dropped first — those closest to leaving the window anyway. With `timestamp_window = 0`
//! (replay protection off) the cache is not consulted.

use crate::logger::Throttle;
use crate::state::{self, Store};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The retry period when `dedup_seconds = 0`: WeChat retries a message twice, after 5 s
/// timeouts, so its tries span about 15 s.
pub const RETRY_PERIOD_WITHOUT_DEDUP: Duration = Duration::from_secs(20);

/// What the cache says about a signed POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before (now remembered), or a retry within the retry period: serve it.
    Serve,
    /// The signature was accepted before with another body: refuse.
    OtherBody,
    /// The same request again after the retry period: refuse.
    Replayed,
}

impl Verdict {
    /// The refusal reason, for the log and the 403 body.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Verdict::Serve => None,
            Verdict::OtherBody => Some("signature reused with another body"),
            Verdict::Replayed => Some("request replayed after the retry period"),
        }
    }
}

/// A POST whose `signature` and timestamp were verified.
pub struct SignedPost<'a> {
    pub account: &'a str,
    /// The account's token: keys the body digest.
    pub token: &'a [u8],
    pub timestamp: &'a [u8],
    pub signature: &'a [u8],
    pub body: &'a [u8],
}

/// The cache; cheap to share.
pub struct ReplayCache {
    store: Arc<dyn Store>,
    unavailable: Throttle,
}

/// Stored per signature: the body's digest and when it was first accepted (ms since the epoch).
const DIGEST_LEN: usize = 8;
const VALUE_LEN: usize = DIGEST_LEN + 8;

/// A 64-bit digest of `body` keyed with the account's token: SipHash-1-3 (std's
/// `DefaultHasher`, fixed keys) over the token, then the body. Without the token nobody can
/// compute it, so another body with the same digest can only be found by sending requests
/// under one logged signature, inside one window — 2^64 of them. (SHA-1 of the body cost 8,000
/// of the 42,000 instructions a plaintext request took; this costs a few hundred.)
fn digest(token: &[u8], body: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = std::hash::DefaultHasher::new();
    h.write(token);
    h.write_usize(body.len());
    h.write(body);
    h.finish().to_be_bytes()
}

impl ReplayCache {
    pub fn new(store: Arc<dyn Store>) -> ReplayCache {
        ReplayCache {
            store,
            unavailable: Throttle::default(),
        }
    }

    /// Checks (and remembers) a verified POST. `window` is `timestamp_window` in seconds; `retry_period` how long an identical request
    /// is still a retry. A store failure serves the request (and is logged, throttled).
    pub fn check(&self, post: &SignedPost<'_>, window: u64, retry_period: Duration) -> Verdict {
        let key = state::key(
            post.account,
            "replay",
            &String::from_utf8_lossy(post.signature),
        );
        let now_ms = unix_ms();
        let mut value = [0u8; VALUE_LEN];
        value[..DIGEST_LEN].copy_from_slice(&digest(post.token, post.body));
        value[DIGEST_LEN..].copy_from_slice(&now_ms.to_be_bytes());
        let ttl = ttl(post.timestamp, window, now_ms / 1000);
        let stored = match self.store.put_new(&key, &value, ttl) {
            Ok(true) => return Verdict::Serve,
            Ok(false) => self.store.get(&key),
            Err(e) => Err(e),
        };
        match stored {
            // Expired in between: it was put anew by nobody; serve (and remember it).
            Ok(None) => {
                let _ = self.store.put(&key, &value, ttl);
                Verdict::Serve
            }
            Ok(Some(old)) if old.len() == VALUE_LEN => {
                if old[..DIGEST_LEN] != value[..DIGEST_LEN] {
                    return Verdict::OtherBody;
                }
                let first = u64::from_be_bytes(old[DIGEST_LEN..].try_into().unwrap_or([0; 8]));
                let age = Duration::from_millis(now_ms.saturating_sub(first));
                if age < retry_period {
                    Verdict::Serve
                } else {
                    Verdict::Replayed
                }
            }
            Ok(Some(_)) => Verdict::Serve,
            Err(e) => {
                if let Some(count) = self.unavailable.hit(Instant::now()) {
                    crate::log_warn!(
                        "replay cache: {e}; serving without the check (count={count})"
                    );
                }
                Verdict::Serve
            }
        }
    }
}

/// Until the timestamp leaves the window: `timestamp + window - now`, at least 1 s and at most
/// twice the window. (With `timestamp_window = 0` the cache is not used: nothing bounds it.)
fn ttl(timestamp: &[u8], window: u64, now: u64) -> Duration {
    let window = window.max(1);
    let ts = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(now);
    let left = ts.saturating_add(window).saturating_sub(now);
    Duration::from_secs(left.clamp(1, 2 * window))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn post<'a>(account: &'a str, signature: &'a [u8], body: &'a [u8]) -> SignedPost<'a> {
        SignedPost {
            account,
            token: b"tok",
            timestamp: b"1700000000",
            signature,
            body,
        }
    }

    #[test]
    fn same_body_is_a_retry_another_body_is_refused() {
        let cache = ReplayCache::new(Arc::new(MemoryStore::new(64 * 1024)));
        let retry = Duration::from_secs(30);
        let check = |sig: &[u8], body: &[u8]| cache.check(&post("a", sig, body), 300, retry);
        assert_eq!(check(b"sig1", b"<xml>1</xml>"), Verdict::Serve);
        assert_eq!(check(b"sig1", b"<xml>1</xml>"), Verdict::Serve, "a retry");
        assert_eq!(check(b"sig1", b"<xml>2</xml>"), Verdict::OtherBody);
        assert_eq!(check(b"sig2", b"<xml>2</xml>"), Verdict::Serve);
        // Accounts are separate.
        assert_eq!(
            cache.check(&post("b", b"sig1", b"<xml>2</xml>"), 300, retry),
            Verdict::Serve
        );
        // After the retry period the same request is a replay.
        assert_eq!(
            cache.check(&post("a", b"sig1", b"<xml>1</xml>"), 300, Duration::ZERO),
            Verdict::Replayed
        );
    }

    #[test]
    fn entries_live_until_the_timestamp_leaves_the_window() {
        assert_eq!(ttl(b"1000", 300, 1000), Duration::from_secs(300));
        assert_eq!(ttl(b"1000", 300, 1299), Duration::from_secs(1));
        assert_eq!(ttl(b"1000", 300, 5000), Duration::from_secs(1));
        assert_eq!(ttl(b"1300", 300, 1000), Duration::from_secs(600));
        assert_eq!(ttl(b"junk", 300, 1000), Duration::from_secs(300));
    }

    #[test]
    fn bounded_in_bytes() {
        let store = Arc::new(MemoryStore::new(32 * 1024));
        let cache = ReplayCache::new(Arc::clone(&store) as Arc<dyn Store>);
        for i in 0..10_000 {
            let sig = format!("{i:040x}");
            cache.check(&post("a", sig.as_bytes(), b"body"), 300, Duration::ZERO);
        }
        assert!(store.bytes() <= 32 * 1024, "{}", store.bytes());
        assert!(store.len() > 50, "{}", store.len());
    }
}
