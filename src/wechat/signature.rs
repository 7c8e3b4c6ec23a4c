//! WeChat request signatures.
//!
//! Spec (PROTOCOL.md §2, §5): `signature = hex(sha1(concat(sort_lexicographic([token, timestamp, nonce]))))`,
//! lower-case hex; safe mode's `msg_signature` adds the `Encrypt` value to the sorted list.

use sha1::{Digest, Sha1};

/// Lower-case hex SHA-1 of the lexicographically sorted concatenation of `parts`.
/// `parts` is sorted in place (byte-wise, as WeChat and wechatpy do).
pub fn sign(parts: &mut [&[u8]]) -> [u8; 40] {
    // `[u8]`'s `Ord` is byte-wise lexicographic, the order WeChat uses.
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part);
    }
    let mut out = [0u8; 40];
    // 20 digest bytes always fill the 40 hex digits exactly, so this cannot fail.
    let _ = hex::encode_to_slice(hasher.finalize(), &mut out);
    out
}

/// Checks a URL/POST `signature` over `[token, timestamp, nonce]` in constant time.
/// A `signature` of the wrong length, or with upper-case hex, is simply unequal.
pub fn verify(token: &[u8], timestamp: &[u8], nonce: &[u8], signature: &[u8]) -> bool {
    ct_eq(&sign(&mut [token, timestamp, nonce]), signature)
}

/// Checks a safe-mode `msg_signature` over `[token, timestamp, nonce, encrypt]` in constant time.
pub fn verify_msg(
    token: &[u8],
    timestamp: &[u8],
    nonce: &[u8],
    encrypt: &[u8],
    msg_signature: &[u8],
) -> bool {
    ct_eq(
        &sign(&mut [token, timestamp, nonce, encrypt]),
        msg_signature,
    )
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::testvec;

    #[test]
    fn vectors_verify() {
        let v = testvec::load();
        let token = testvec::str(&v, "token");
        let sigs = testvec::array(&v, "signature");
        assert_eq!(sigs.len(), 3);
        for s in sigs {
            let (ts, nonce, sig) = (
                testvec::str(s, "timestamp"),
                testvec::str(s, "nonce"),
                testvec::str(s, "signature"),
            );
            assert!(verify(
                token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                sig.as_bytes()
            ));
            assert_eq!(
                &sign(&mut [token.as_bytes(), ts.as_bytes(), nonce.as_bytes()]),
                sig.as_bytes()
            );
            // Order of the arguments does not matter: they are sorted.
            assert_eq!(
                sign(&mut [nonce.as_bytes(), token.as_bytes(), ts.as_bytes()]),
                sign(&mut [ts.as_bytes(), nonce.as_bytes(), token.as_bytes()])
            );
            // Flip one hex digit anywhere: refused.
            for i in 0..sig.len() {
                let mut bad = sig.as_bytes().to_vec();
                bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
                assert!(!verify(
                    token.as_bytes(),
                    ts.as_bytes(),
                    nonce.as_bytes(),
                    &bad
                ));
            }
            // Upper-case hex, truncated, extended, empty: all unequal.
            let upper = sig.to_ascii_uppercase();
            if upper != sig {
                assert!(!verify(
                    token.as_bytes(),
                    ts.as_bytes(),
                    nonce.as_bytes(),
                    upper.as_bytes()
                ));
            }
            let b = sig.as_bytes();
            assert!(!verify(
                token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                &b[..39]
            ));
            assert!(!verify(
                token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                b""
            ));
            let mut long = b.to_vec();
            long.push(b'0');
            assert!(!verify(
                token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                &long
            ));
            // Wrong token or swapped values in a different field still sort the same, so only
            // a different token is a meaningful negative.
            assert!(!verify(b"pamtesT", ts.as_bytes(), nonce.as_bytes(), b));
        }
    }

    #[test]
    fn sorts_bytewise_not_by_length() {
        // "b" < "ba" < "c": byte order, the shorter prefix first.
        let mut parts: [&[u8]; 3] = [b"c", b"ba", b"b"];
        let sig = sign(&mut parts);
        assert_eq!(parts, [b"b" as &[u8], b"ba", b"c"]);
        let mut h = Sha1::new();
        h.update(b"bbac");
        assert_eq!(&sig[..], hex::encode(h.finalize()).as_bytes());
    }

    #[test]
    fn known_sha1() {
        // sha1("") and sha1("abc") from FIPS 180.
        assert_eq!(&sign(&mut []), b"da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            &sign(&mut [b"a", b"c", b"b"]),
            b"a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn ct_eq_cases() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }
}
