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

use super::reply::write_u64;
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
        if s.len() != 43 {
            return Err(KeyError::WrongLength);
        }
        // 43 characters carry 258 bits; the last 2 are whatever the console generated, so they
        // must not be required to be zero (most real keys would fail).
        let mut padded = [b'='; 44];
        padded[..43].copy_from_slice(s.as_bytes());
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
    let (head, found_app_id) = plain.split_at(msg_end);
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
    let msg_len = u32::try_from(msg.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message too long to encrypt",
        )
    })?;
    let unpadded = HEADER_LEN + msg.len() + app_id.len();
    let pad = PAD_BLOCK - unpadded % PAD_BLOCK; // 1..=32
    let mut block = Vec::with_capacity(unpadded + pad);
    block.resize(RANDOM_LEN, 0);
    getrandom::fill(&mut block).map_err(std::io::Error::other)?;
    block.extend_from_slice(&msg_len.to_be_bytes());
    block.extend_from_slice(msg);
    block.extend_from_slice(app_id.as_bytes());
    // `pad` is at most 32, so the cast is exact.
    block.resize(unpadded + pad, pad as u8);

    let (blocks, _) = Array::slice_as_chunks_mut(block.as_mut_slice());
    cipher_enc(key).encrypt_blocks(blocks);

    let start = out.len();
    let encoded = base64::encoded_len(block.len(), true).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message too long to encrypt",
        )
    })?;
    out.resize(start + encoded, 0);
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
    let mut ts = Vec::with_capacity(20);
    write_u64(&mut ts, timestamp);

    out.extend_from_slice(b"<xml><Encrypt><![CDATA[");
    let b64_start = out.len();
    if let Err(e) = encrypt(key, app_id, reply_xml, out) {
        out.truncate(start);
        return Err(e);
    }
    // Base64 has no `]`, so it can go into CDATA as it is.
    let sig = sign(&mut [token, &ts, &nonce, out.get(b64_start..).unwrap_or_default()]);
    out.extend_from_slice(b"]]></Encrypt><MsgSignature><![CDATA[");
    out.extend_from_slice(&sig);
    out.extend_from_slice(b"]]></MsgSignature><TimeStamp>");
    out.extend_from_slice(&ts);
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
