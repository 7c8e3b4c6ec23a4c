//! `crypto::decrypt` with the test vectors' key and AppID.
//!
//! The first byte picks the mode:
//! - 0: the rest is the base64 `Encrypt` value as is (seeded with a valid ciphertext, so
//!   libFuzzer mutates a real one).
//! - 1: the rest is the *plaintext* block (random ‖ len ‖ msg ‖ AppID), PKCS#7-padded to 32 and
//!   encrypted here, so mutations reach the length field, AppID check and UTF-8 check behind
//!   the cipher. The result is compared with an independent model of the layout.
//! - 2: like 1 but zero-filled to a whole AES block and not padded (bad padding paths).
#![no_main]

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::array::Array;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weixin_fcgi::wechat::crypto::{self, AesKey};

const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APP_ID: &str = "wxb11529c136998cb6";
const MAX_LEN: usize = 64 * 1024;

fn key() -> &'static (AesKey, [u8; 32]) {
    static KEY: OnceLock<(AesKey, [u8; 32])> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = AesKey::from_encoding_aes_key(ENCODING_AES_KEY).expect("vector key");
        // EncodingAESKey + "=" carries non-zero spare bits in its last character.
        let lenient = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let raw: [u8; 32] = lenient
            .decode(format!("{ENCODING_AES_KEY}="))
            .expect("key base64")
            .try_into()
            .expect("32 bytes");
        (key, raw)
    })
}

fn encrypt_raw(raw_key: &[u8; 32], mut plain: Vec<u8>) -> Vec<u8> {
    let iv: [u8; 16] = raw_key[..16].try_into().expect("iv");
    let mut enc = cbc::Encryptor::<Aes256>::new(raw_key.into(), (&iv).into());
    let (blocks, rest) = Array::slice_as_chunks_mut(plain.as_mut_slice());
    assert!(rest.is_empty());
    enc.encrypt_blocks(blocks);
    STANDARD.encode(&plain).into_bytes()
}

/// What `decrypt` must return for a correctly padded plaintext `plain`.
fn model(plain: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(plain.get(16..20)?.try_into().ok()?) as usize;
    let end = 20usize.checked_add(len)?;
    let msg = plain.get(20..end)?;
    if &plain[end..] != APP_ID.as_bytes() {
        return None;
    }
    std::str::from_utf8(msg).ok()?;
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (key, raw) = key();
    let mut scratch = Vec::new();
    match mode % 3 {
        0 => {
            if let Ok(msg) = crypto::decrypt(key, APP_ID, rest, MAX_LEN, &mut scratch) {
                assert!(std::str::from_utf8(msg).is_ok());
                assert!(msg.len() <= MAX_LEN);
            }
        }
        1 => {
            let mut plain = rest.to_vec();
            let pad = 32 - plain.len() % 32;
            plain.extend(std::iter::repeat_n(pad as u8, pad));
            let b64 = encrypt_raw(raw, plain);
            let got = crypto::decrypt(key, APP_ID, &b64, MAX_LEN, &mut scratch).ok();
            assert_eq!(got, model(rest), "decrypt disagrees with the layout model");
        }
        _ => {
            let mut plain = rest.to_vec();
            plain.resize(plain.len().div_ceil(16).max(1) * 16, 0);
            let b64 = encrypt_raw(raw, plain);
            if let Ok(msg) = crypto::decrypt(key, APP_ID, &b64, MAX_LEN, &mut scratch) {
                assert!(std::str::from_utf8(msg).is_ok());
            }
        }
    }
});
