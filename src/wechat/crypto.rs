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
        let _ = s;
        todo!()
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
        todo!()
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
    let _ = (key, app_id, encrypt_b64, max_len, scratch);
    todo!()
}

/// Encrypts `msg` for `app_id` with 16 random bytes from the OS, appending the base64 to `out`.
pub fn encrypt(key: &AesKey, app_id: &str, msg: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let _ = (key, app_id, msg, out);
    todo!()
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
    let _ = (token, key, app_id, reply_xml, timestamp, out);
    todo!()
}
