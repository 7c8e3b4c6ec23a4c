//! WeChat request signatures.
//!
//! Spec (PROTOCOL.md §2, §5): `signature = hex(sha1(concat(sort_lexicographic([token, timestamp, nonce]))))`,
//! lower-case hex; safe mode's `msg_signature` adds the `Encrypt` value to the sorted list.

/// Lower-case hex SHA-1 of the lexicographically sorted concatenation of `parts`.
/// `parts` is sorted in place (byte-wise, as WeChat and wechatpy do).
pub fn sign(parts: &mut [&[u8]]) -> [u8; 40] {
    let _ = parts;
    todo!()
}

/// Checks a URL/POST `signature` over `[token, timestamp, nonce]` in constant time.
/// A `signature` of the wrong length, or with upper-case hex, is simply unequal.
pub fn verify(token: &[u8], timestamp: &[u8], nonce: &[u8], signature: &[u8]) -> bool {
    let _ = (token, timestamp, nonce, signature);
    todo!()
}

/// Checks a safe-mode `msg_signature` over `[token, timestamp, nonce, encrypt]` in constant time.
pub fn verify_msg(
    token: &[u8],
    timestamp: &[u8],
    nonce: &[u8],
    encrypt: &[u8],
    msg_signature: &[u8],
) -> bool {
    let _ = (token, timestamp, nonce, encrypt, msg_signature);
    todo!()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let _ = (a, b);
    todo!()
}
