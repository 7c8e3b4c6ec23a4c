//! The WeChat Official Account callback protocol, with no knowledge of sockets or FastCGI.
//!
//! - [`signature`]: `hex(sha1(concat(sort([token, timestamp, nonce, …]))))` and its check.
//! - [`message`]: incoming message/event XML parsed into borrowed fields.
//! - [`reply`]: passive reply XML rendering (CDATA-safe, length-limited).
//! - [`crypto`]: safe-mode (AES-256-CBC) envelope decrypt/encrypt.
//! - [`split`]: long text cut into parts of at most N bytes at line/sentence ends.

pub mod crypto;
pub mod message;
pub mod reply;
pub mod signature;
pub mod split;

use std::time::{SystemTime, UNIX_EPOCH};

/// Content type of a reply (XML, plain or encrypted).
pub const XML: &str = "application/xml; charset=utf-8";
/// Content type of the literal `success` (no reply).
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Seconds since the epoch: CreateTime of replies, the timestamp window, signed requests.
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What encrypts a reply for one account (borrowed: nothing is copied per request).
pub struct Sealer<'a> {
    pub token: &'a [u8],
    pub key: &'a crypto::AesKey,
    pub app_id: &'a str,
}

/// Replaces `out` with the body that answers a callback: `reply_xml` — encrypted when `seal`
/// is given — or the literal `success` when there is no reply; returns its content type.
/// Fails only when the OS gives no randomness for the encryption. Used by template replies and
/// by forwarded ones alike.
pub fn write_answer(
    reply_xml: Option<&[u8]>,
    seal: Option<&Sealer<'_>>,
    out: &mut Vec<u8>,
) -> std::io::Result<&'static str> {
    out.clear();
    let Some(xml) = reply_xml else {
        out.extend_from_slice(reply::NO_REPLY);
        return Ok(TEXT);
    };
    match seal {
        None => out.extend_from_slice(xml),
        Some(s) => crypto::render_encrypted_reply(s.token, s.key, s.app_id, xml, unix_time(), out)?,
    }
    Ok(XML)
}

#[cfg(test)]
mod testvec;
