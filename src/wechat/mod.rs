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

#[cfg(test)]
mod testvec;
