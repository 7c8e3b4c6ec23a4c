//! Safe mode (安全模式) and compatible mode: the AES envelope of PROTOCOL.md §5.
//!
//! ```text
//! AESKey = base64_decode(EncodingAESKey + "=")            32 bytes, IV = AESKey[0..16]
//! plain  = random(16) ‖ msg_len (u32 big-endian) ‖ msg ‖ AppID, PKCS#7 padded to 32
//! Encrypt = base64(AES-256-CBC(plain))
//! msg_signature = hex(sha1(concat(sort([token, timestamp, nonce, Encrypt]))))
//! ```
//!
//! # Security
//! Keys never appear in `Debug` output or errors. Decryption validates every length and the
//! padding before use, and allocates nothing beyond the (already capped) ciphertext size.

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::array::Array;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};

use super::signature::{ct_eq, sign};

/// A 32-byte AES key decoded from a 43-character EncodingAESKey. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Why an EncodingAESKey is unusable. Messages never include the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not exactly 43 characters.
    WrongLength,
    /// Not standard base64, or does not decode to 32 bytes.
    NotBase64,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyError::WrongLength => "EncodingAESKey must be exactly 43 characters",
            KeyError::NotBase64 => "EncodingAESKey must be base64 that decodes to 32 bytes",
        })
    }
}
impl std::error::Error for KeyError {}

impl AesKey {
    /// Decodes an EncodingAESKey as shown in the WeChat console.
    pub fn from_encoding_aes_key(s: &str) -> Result<AesKey, KeyError> {
        if s.chars().count() != 43 {
            return Err(KeyError::WrongLength);
        }
        if !s.is_ascii() {
            return Err(KeyError::NotBase64);
        }
        // 43 characters carry 258 bits; the last 2 are whatever the console generated, so they
        // must not be required to be zero (most real keys would fail).
        let chars: &[u8; 43] = s.as_bytes().try_into().map_err(|_| KeyError::WrongLength)?;
        let mut padded = [b'='; 44];
        padded[..43].copy_from_slice(chars);
        let mut key = [0u8; 32];
        match KEY_B64.decode_slice(padded, &mut key) {
            Ok(32) => Ok(AesKey(key)),
            _ => Err(KeyError::NotBase64),
        }
    }
}

/// Why a safe-mode ciphertext was refused. All map to HTTP 400 except where noted by callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecryptError {
    /// `Encrypt` is not valid standard base64.
    Base64,
    /// Ciphertext empty or not a multiple of the 16-byte AES block.
    NotBlockAligned,
    /// PKCS#7 padding byte outside 1..=32 or padding bytes not all equal.
    BadPadding,
    /// Shorter than random(16) + length(4), or the length field points beyond the data.
    BadLength,
    /// The AppID after the message is not the account's.
    AppIdMismatch,
    /// The decrypted message is not UTF-8.
    InvalidUtf8,
    /// Ciphertext larger than the caller's cap.
    TooLarge,
}

impl DecryptError {
    /// A fixed one-line reason for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecryptError::Base64 => "Encrypt is not valid base64",
            DecryptError::NotBlockAligned => "ciphertext is empty or not a multiple of 16 bytes",
            DecryptError::BadPadding => "decrypted data has invalid PKCS#7 padding",
            DecryptError::BadLength => "decrypted message length field is out of range",
            DecryptError::AppIdMismatch => "decrypted AppID is not this account's",
            DecryptError::InvalidUtf8 => "decrypted message is not UTF-8",
            DecryptError::TooLarge => "ciphertext exceeds the size limit",
        }
    }
}
impl std::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::error::Error for DecryptError {}

/// Decrypts a base64 `Encrypt` value into `scratch` (cleared first, reused across requests)
/// and returns the inner message XML, borrowed from `scratch`. `max_len` caps the decoded size.
pub fn decrypt<'s>(
    key: &AesKey,
    app_id: &str,
    encrypt_b64: &[u8],
    max_len: usize,
    scratch: &'s mut Vec<u8>,
) -> Result<&'s [u8], DecryptError> {
    scratch.clear();
    // Refuse before decoding: `Encrypt` decodes to between 3n/4 - 2 and 3n/4 bytes.
    let decoded_min = (encrypt_b64.len() / 4).saturating_mul(3).saturating_sub(2);
    if decoded_min > max_len {
        return Err(DecryptError::TooLarge);
    }
    STANDARD
        .decode_vec(encrypt_b64, scratch)
        .map_err(|_| DecryptError::Base64)?;
    if scratch.len() > max_len {
        return Err(DecryptError::TooLarge);
    }
    if scratch.is_empty() || scratch.len() % AES_BLOCK != 0 {
        return Err(DecryptError::NotBlockAligned);
    }

    let (blocks, rest) = Array::slice_as_chunks_mut(scratch.as_mut_slice());
    if !rest.is_empty() {
        return Err(DecryptError::NotBlockAligned);
    }
    cipher_dec(key).decrypt_blocks(blocks);

    let unpadded = unpad(scratch)?;
    let plain = scratch.get(..unpadded).ok_or(DecryptError::BadPadding)?;
    // random(16) ‖ msg_len (u32 BE) ‖ msg ‖ AppID
    let len_field: [u8; 4] = plain
        .get(RANDOM_LEN..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecryptError::BadLength)?;
    let msg_end = usize::try_from(u32::from_be_bytes(len_field))
        .ok()
        .and_then(|len| HEADER_LEN.checked_add(len))
        .filter(|&end| end <= plain.len())
        .ok_or(DecryptError::BadLength)?;
    let (head, found_app_id) = plain
        .split_at_checked(msg_end)
        .ok_or(DecryptError::BadLength)?;
    if !ct_eq(found_app_id, app_id.as_bytes()) {
        return Err(DecryptError::AppIdMismatch);
    }
    let msg = head.get(HEADER_LEN..).ok_or(DecryptError::BadLength)?;
    if std::str::from_utf8(msg).is_err() {
        return Err(DecryptError::InvalidUtf8);
    }
    Ok(msg)
}

/// AES block size; the ciphertext must be a whole number of these.
const AES_BLOCK: usize = 16;
/// WeChat pads to 32 bytes (PKCS#7 with a 32-byte "block"), not AES's 16.
const PAD_BLOCK: usize = 32;
/// The random prefix of the plaintext block.
const RANDOM_LEN: usize = 16;
/// Random prefix plus the 4-byte message length.
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// `EncodingAESKey + "="` is base64 whose last character may carry non-zero spare bits.
const KEY_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn cipher_dec(key: &AesKey) -> cbc::Decryptor<Aes256> {
    let iv: &[u8; 16] = key.0.first_chunk().unwrap_or(&[0; 16]);
    cbc::Decryptor::<Aes256>::new((&key.0).into(), iv.into())
}

fn cipher_enc(key: &AesKey) -> cbc::Encryptor<Aes256> {
    let iv: &[u8; 16] = key.0.first_chunk().unwrap_or(&[0; 16]);
    cbc::Encryptor::<Aes256>::new((&key.0).into(), iv.into())
}

/// Checks PKCS#7 padding (pad value 1..=32) and returns the unpadded length. Every padding byte
/// is looked at whatever the content, so timing says nothing about where a mismatch is.
fn unpad(data: &[u8]) -> Result<usize, DecryptError> {
    let Some(&pad) = data.last() else {
        return Err(DecryptError::BadPadding);
    };
    let p = usize::from(pad);
    if p == 0 || p > PAD_BLOCK || p > data.len() {
        return Err(DecryptError::BadPadding);
    }
    let tail = data.get(data.len() - p..).ok_or(DecryptError::BadPadding)?;
    let diff = tail.iter().fold(0u8, |acc, &b| acc | (b ^ pad));
    if std::hint::black_box(diff) != 0 {
        return Err(DecryptError::BadPadding);
    }
    Ok(data.len() - p)
}

/// Encrypts `msg` for `app_id` with 16 random bytes from the OS, appending the base64 to `out`.
pub fn encrypt(key: &AesKey, app_id: &str, msg: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut random = [0u8; RANDOM_LEN];
    getrandom::fill(&mut random).map_err(std::io::Error::other)?;
    encrypt_with(key, app_id, &random, msg, out)
}

/// [`encrypt`] with the random prefix given, so tests can reproduce a known ciphertext.
fn encrypt_with(
    key: &AesKey,
    app_id: &str,
    random: &[u8; RANDOM_LEN],
    msg: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let too_long = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message too long to encrypt",
        )
    };
    let msg_len = u32::try_from(msg.len()).map_err(|_| too_long())?;
    let unpadded = HEADER_LEN
        .checked_add(msg.len())
        .and_then(|n| n.checked_add(app_id.len()))
        .ok_or_else(too_long)?;
    let pad = PAD_BLOCK - unpadded % PAD_BLOCK; // 1..=32
    let total = unpadded.checked_add(pad).ok_or_else(too_long)?;
    let encoded = base64::encoded_len(total, true)
        .and_then(|n| n.checked_add(out.len()))
        .ok_or_else(too_long)?;

    let mut block = Vec::with_capacity(total);
    block.extend_from_slice(random);
    block.extend_from_slice(&msg_len.to_be_bytes());
    block.extend_from_slice(msg);
    block.extend_from_slice(app_id.as_bytes());
    // `pad` is at most 32, so the cast is exact.
    block.resize(total, pad as u8);
    let (blocks, _) = Array::slice_as_chunks_mut(block.as_mut_slice());
    cipher_enc(key).encrypt_blocks(blocks);

    let start = out.len();
    out.resize(encoded, 0);
    match STANDARD.encode_slice(&block, out.get_mut(start..).unwrap_or_default()) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(std::io::Error::other(e))
        }
    }
}

/// Renders the encrypted reply envelope for `reply_xml` into `out`:
/// `<xml><Encrypt><![CDATA[b64]]></Encrypt><MsgSignature><![CDATA[sig]]></MsgSignature>`
/// `<TimeStamp>ts</TimeStamp><Nonce><![CDATA[nonce]]></Nonce></xml>`, with a fresh random
/// numeric nonce, `timestamp` in seconds, and `sig = sha1(sort([token, ts, nonce, b64]))`.
pub fn render_encrypted_reply(
    token: &[u8],
    key: &AesKey,
    app_id: &str,
    reply_xml: &[u8],
    timestamp: u64,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let start = out.len();
    let mut nonce = [0u8; NONCE_LEN];
    random_digits(&mut nonce)?;
    let mut ts_buf = itoa::Buffer::new();
    let ts = ts_buf.format(timestamp).as_bytes();

    out.extend_from_slice(b"<xml><Encrypt><![CDATA[");
    let b64_start = out.len();
    if let Err(e) = encrypt(key, app_id, reply_xml, out) {
        out.truncate(start);
        return Err(e);
    }
    // Base64 has no `]`, so it can go into CDATA as it is.
    let sig = sign(&mut [token, ts, &nonce, out.get(b64_start..).unwrap_or_default()]);
    out.extend_from_slice(b"]]></Encrypt><MsgSignature><![CDATA[");
    out.extend_from_slice(&sig);
    out.extend_from_slice(b"]]></MsgSignature><TimeStamp>");
    out.extend_from_slice(ts);
    out.extend_from_slice(b"</TimeStamp><Nonce><![CDATA[");
    out.extend_from_slice(&nonce);
    out.extend_from_slice(b"]]></Nonce></xml>");
    Ok(())
}

/// Digits in a reply nonce (wechatpy and the official SDKs use 9 or 10).
const NONCE_LEN: usize = 10;

/// Fills `out` with random ASCII digits from the OS generator.
fn random_digits(out: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(out).map_err(std::io::Error::other)?;
    for d in out.iter_mut() {
        // The modulo bias (256 % 10) is irrelevant for a nonce that only has to be fresh.
        *d = b'0' + *d % 10;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::message::Message;
    use crate::wechat::signature::verify_msg;
    use crate::wechat::testvec;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APP_ID: &str = "wxb11529c136998cb6";
    const MAX: usize = 64 * 1024;

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key(KEY).unwrap()
    }

    /// Encrypts an arbitrary (block-aligned) plaintext, to build malformed ciphertexts.
    fn raw_ciphertext(plain: &[u8]) -> Vec<u8> {
        assert_eq!(plain.len() % AES_BLOCK, 0);
        let mut block = plain.to_vec();
        let (blocks, _) = Array::slice_as_chunks_mut(block.as_mut_slice());
        cipher_enc(&key()).encrypt_blocks(blocks);
        STANDARD.encode(block).into_bytes()
    }

    /// random(16) ‖ len ‖ msg ‖ app_id, padded with `pad` bytes of value `pad_value`.
    fn plain(len_field: u32, msg: &[u8], app_id: &[u8], pad: usize, pad_value: u8) -> Vec<u8> {
        let mut p = vec![7u8; RANDOM_LEN];
        p.extend_from_slice(&len_field.to_be_bytes());
        p.extend_from_slice(msg);
        p.extend_from_slice(app_id);
        p.resize(p.len() + pad, pad_value);
        p
    }

    fn dec(b64: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let mut scratch = b"stale data from a previous request".to_vec();
        decrypt(&key(), APP_ID, b64, MAX, &mut scratch).map(<[u8]>::to_vec)
    }

    #[test]
    fn safe_mode_vectors_decrypt_and_verify() {
        let v = testvec::load();
        assert_eq!(testvec::str(&v, "encoding_aes_key"), KEY);
        assert_eq!(testvec::str(&v, "app_id"), APP_ID);
        let token = testvec::str(&v, "token").as_bytes();
        let cases = testvec::array(&v, "safe_mode_incoming");
        assert_eq!(cases.len(), 3);
        let mut scratch = Vec::new();
        for case in cases {
            let body = Message::parse(testvec::str(case, "body").as_bytes()).unwrap();
            let encrypt_b64 = body.get("Encrypt").unwrap();
            let (ts, nonce) = (
                testvec::str(case, "timestamp").as_bytes(),
                testvec::str(case, "nonce").as_bytes(),
            );
            let sig = testvec::str(case, "msg_signature").as_bytes();
            assert!(verify_msg(token, ts, nonce, encrypt_b64.as_bytes(), sig));
            let mut flipped = sig.to_vec();
            flipped[0] ^= 1;
            assert!(!verify_msg(
                token,
                ts,
                nonce,
                encrypt_b64.as_bytes(),
                &flipped
            ));
            assert!(!verify_msg(
                token,
                ts,
                nonce,
                &encrypt_b64.as_bytes()[1..],
                sig
            ));

            let msg = decrypt(&key(), APP_ID, encrypt_b64.as_bytes(), MAX, &mut scratch).unwrap();
            assert_eq!(
                std::str::from_utf8(msg).unwrap(),
                testvec::str(case, "plaintext")
            );
            let inner = Message::parse(msg).unwrap();
            assert_eq!(inner.to_user(), "gh_test");

            // Re-encrypting with the same random prefix gives wechatpy's ciphertext exactly.
            let random: [u8; 16] = scratch[..16].try_into().unwrap();
            let mut again = Vec::new();
            encrypt_with(
                &key(),
                APP_ID,
                &random,
                testvec::str(case, "plaintext").as_bytes(),
                &mut again,
            )
            .unwrap();
            assert_eq!(std::str::from_utf8(&again).unwrap(), encrypt_b64);
        }
    }

    #[test]
    fn round_trip_every_padding_length() {
        let mut scratch = Vec::new();
        for n in 0..=100 {
            let msg: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let mut out = b"prefix:".to_vec();
            encrypt(&key(), APP_ID, &msg, &mut out).unwrap();
            let b64 = &out[7..];
            assert_eq!(STANDARD.decode(b64).unwrap().len() % PAD_BLOCK, 0);
            assert_eq!(
                decrypt(&key(), APP_ID, b64, MAX, &mut scratch).unwrap(),
                msg
            );
        }
        // Fresh randomness each time.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encrypt(&key(), APP_ID, b"same", &mut a).unwrap();
        encrypt(&key(), APP_ID, b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn bad_inputs_are_named() {
        use DecryptError::*;
        let mut good = Vec::new();
        encrypt(&key(), APP_ID, b"<xml/>", &mut good).unwrap();
        assert_eq!(dec(&good), Ok(b"<xml/>".to_vec()));

        // Tampered base64: a character outside the alphabet, URL-safe alphabet, bad padding.
        let mut bang = good.clone();
        bang[5] = b'!';
        assert_eq!(dec(&bang), Err(Base64));
        assert_eq!(dec(b"ab-_"), Err(Base64));
        assert_eq!(dec(b"abc"), Err(Base64));
        assert_eq!(dec(b"===="), Err(Base64));
        assert_eq!(dec(&good[..good.len() - 1]), Err(Base64));
        let mut spaced = good.clone();
        spaced.insert(4, b' ');
        assert_eq!(dec(&spaced), Err(Base64));

        // Truncated / not block-aligned.
        assert_eq!(dec(b""), Err(NotBlockAligned));
        assert_eq!(
            dec(STANDARD.encode([1u8; 20]).as_bytes()),
            Err(NotBlockAligned)
        );
        assert_eq!(
            dec(STANDARD.encode([1u8; 31]).as_bytes()),
            Err(NotBlockAligned)
        );
        let ct = STANDARD.decode(&good).unwrap();
        assert_eq!(
            dec(STANDARD.encode(&ct[..ct.len() - 3]).as_bytes()),
            Err(NotBlockAligned)
        );

        // Padding value 0, 33, and unequal padding bytes; 32 is fine.
        let msg = b"hi";
        let body = RANDOM_LEN + 4 + msg.len() + APP_ID.len(); // 40
        let p = plain(2, msg, APP_ID.as_bytes(), 64 - body, 0);
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadPadding));
        let mut p = plain(2, msg, APP_ID.as_bytes(), 64 - body, 24);
        *p.last_mut().unwrap() = 33;
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadPadding));
        let mut p = plain(2, msg, APP_ID.as_bytes(), 64 - body, 24);
        p[50] = 23;
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadPadding));
        let p = plain(2, msg, APP_ID.as_bytes(), 64 - body, 24);
        assert_eq!(dec(&raw_ciphertext(&p)), Ok(msg.to_vec()));
        let p = plain(2, msg, APP_ID.as_bytes(), 64 - body + 32, 56);
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadPadding), "56 > 32");
        // An aligned body gets a whole block of padding 32.
        let abc = b"abcdefghijklmnopqrstuvwxyz";
        let p = plain(26, abc, APP_ID.as_bytes(), 32, 32);
        assert_eq!(p.len(), 96);
        assert_eq!(dec(&raw_ciphertext(&p)), Ok(abc.to_vec()));
        // A single 16-byte block whose padding claims 32 bytes.
        assert_eq!(dec(&raw_ciphertext(&[32u8; 16])), Err(BadPadding));
        assert_eq!(
            dec(&raw_ciphertext(&[16u8; 16])),
            Err(BadLength),
            "nothing left after padding"
        );

        // Length field beyond the data, or header cut short.
        let p = plain(3, msg, APP_ID.as_bytes(), 64 - body, 24);
        assert_eq!(
            dec(&raw_ciphertext(&p)),
            Err(AppIdMismatch),
            "off by one shifts the AppID"
        );
        let p = plain(2 + 18 + 1, msg, APP_ID.as_bytes(), 64 - body, 24);
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadLength));
        let p = plain(u32::MAX, msg, APP_ID.as_bytes(), 64 - body, 24);
        assert_eq!(dec(&raw_ciphertext(&p)), Err(BadLength));
        let mut short = vec![0u8; 19];
        short.resize(32, 13);
        assert_eq!(dec(&raw_ciphertext(&short)), Err(BadLength));

        // Wrong AppID, empty AppID, AppID with a suffix.
        let mut other = Vec::new();
        encrypt(&key(), "wx0000000000000000", b"<xml/>", &mut other).unwrap();
        assert_eq!(dec(&other), Err(AppIdMismatch));
        other.clear();
        encrypt(&key(), "", b"<xml/>", &mut other).unwrap();
        assert_eq!(dec(&other), Err(AppIdMismatch));
        other.clear();
        encrypt(&key(), &format!("{APP_ID}x"), b"<xml/>", &mut other).unwrap();
        assert_eq!(dec(&other), Err(AppIdMismatch));

        // Invalid UTF-8 inside.
        let mut bad_utf8 = Vec::new();
        encrypt(&key(), APP_ID, b"<xml>\xff</xml>", &mut bad_utf8).unwrap();
        assert_eq!(dec(&bad_utf8), Err(InvalidUtf8));

        // Another key: garbage after decryption, refused one way or another, never a panic.
        let other_key =
            AesKey::from_encoding_aes_key("0123456789abcdefghijklmnopqrstuvwxyzABCDEFG").unwrap();
        let mut scratch = Vec::new();
        assert!(decrypt(&other_key, APP_ID, &good, MAX, &mut scratch).is_err());

        // Every prefix and every single-character change: an error or the message, no panic.
        for end in 0..good.len() {
            assert!(dec(&good[..end]).is_err());
        }
        for i in 0..good.len() {
            for c in [b'A', b'/', b'+', b'=', b'z'] {
                let mut m = good.clone();
                m[i] = c;
                let _ = dec(&m);
            }
        }
    }

    #[test]
    fn size_cap_is_checked_before_decoding() {
        let mut good = Vec::new();
        encrypt(&key(), APP_ID, &[b'x'; 100], &mut good).unwrap();
        let len = STANDARD.decode(&good).unwrap().len(); // 160
        let mut scratch = Vec::new();
        assert!(decrypt(&key(), APP_ID, &good, len, &mut scratch).is_ok());
        assert_eq!(
            decrypt(&key(), APP_ID, &good, len - 1, &mut scratch),
            Err(DecryptError::TooLarge)
        );
        assert_eq!(
            decrypt(&key(), APP_ID, &good, 0, &mut scratch),
            Err(DecryptError::TooLarge)
        );
        // A huge body of junk is refused without being decoded (or allocated for).
        let huge = vec![b'!'; 10 * 1024 * 1024];
        let mut scratch = Vec::new();
        assert_eq!(
            decrypt(&key(), APP_ID, &huge, MAX, &mut scratch),
            Err(DecryptError::TooLarge)
        );
        assert_eq!(scratch.capacity(), 0);
    }

    #[test]
    fn key_errors() {
        assert!(AesKey::from_encoding_aes_key(KEY).is_ok());
        // Last character with zero spare bits, as a strict decoder wants, works too.
        assert!(
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE").is_ok()
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(""),
            Err(KeyError::WrongLength)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&KEY[..42]),
            Err(KeyError::WrongLength)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{KEY}=")),
            Err(KeyError::WrongLength)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{KEY}A")),
            Err(KeyError::WrongLength)
        );
        let bad = |c: &str| AesKey::from_encoding_aes_key(&format!("{}{c}", &KEY[..42]));
        assert_eq!(bad("!"), Err(KeyError::NotBase64));
        assert_eq!(bad("="), Err(KeyError::NotBase64));
        assert_eq!(bad("-"), Err(KeyError::NotBase64));
        assert_eq!(
            bad("é"),
            Err(KeyError::NotBase64),
            "43 characters, 44 bytes"
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&"é".repeat(43)),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&format!("{}=abc", &KEY[..39])),
            Err(KeyError::NotBase64)
        );
        // The decoded bytes match a plain base64 decode of KEY + "=" (ignoring spare bits).
        let k = key();
        let expected = STANDARD.decode(format!("{}E=", &KEY[..42])).unwrap();
        assert_eq!(k.0[..], expected[..]);
    }

    #[test]
    fn debug_and_errors_do_not_leak_the_key() {
        let k = key();
        let debug = format!("{k:?}");
        assert_eq!(debug, "AesKey(<redacted>)");
        assert!(!debug.contains("abcdef"));
        for e in [KeyError::WrongLength, KeyError::NotBase64] {
            assert!(!e.to_string().contains("abcdef"));
        }
        assert_eq!(
            DecryptError::BadPadding.to_string(),
            DecryptError::BadPadding.as_str()
        );
    }

    #[test]
    fn encrypted_reply_envelope() {
        let reply = b"<xml><ToUserName><![CDATA[oUser]]></ToUserName><Content><![CDATA[hi]]></Content></xml>";
        let mut out = b"kept".to_vec();
        render_encrypted_reply(b"pamtest", &key(), APP_ID, reply, 1_409_304_348, &mut out).unwrap();
        assert!(out.starts_with(b"kept<xml><Encrypt><![CDATA["));
        let xml = std::str::from_utf8(&out[4..]).unwrap();
        let m = Message::parse(xml.as_bytes()).unwrap();
        let names: Vec<_> = m.nodes().iter().map(|n| n.name).collect();
        assert_eq!(names, ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]);
        let (enc, sig) = (m.get("Encrypt").unwrap(), m.get("MsgSignature").unwrap());
        let (ts, nonce) = (m.get("TimeStamp").unwrap(), m.get("Nonce").unwrap());
        assert_eq!(ts, "1409304348");
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonce.bytes().all(|c| c.is_ascii_digit()));
        assert!(
            xml.contains("<TimeStamp>1409304348</TimeStamp>"),
            "bare number: {xml}"
        );
        assert!(xml.ends_with(&format!("]]></MsgSignature><TimeStamp>1409304348</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>")));
        assert!(verify_msg(
            b"pamtest",
            ts.as_bytes(),
            nonce.as_bytes(),
            enc.as_bytes(),
            sig.as_bytes()
        ));
        let mut scratch = Vec::new();
        assert_eq!(
            decrypt(&key(), APP_ID, enc.as_bytes(), MAX, &mut scratch).unwrap(),
            reply
        );
    }
}
