//! Shared oracles for the fuzz targets: an independent model of what the reply writer must
//! produce, and a check that a rendered reply parses back.
#![allow(dead_code)]

use weixin_fcgi::wechat::message::Message;

/// Characters XML 1.0 forbids, which the reply writer must drop (C0 controls but tab/LF/CR,
/// U+FFFE, U+FFFF). Written independently of `reply.rs`.
pub fn forbidden(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}'
}

/// The value a reply must carry for `s`: forbidden characters dropped.
pub fn cleaned(s: &str) -> String {
    s.chars().filter(|&c| !forbidden(c)).collect()
}

/// Cleaned, then cut to the longest prefix of at most `max` bytes on a char boundary.
pub fn cleaned_truncated(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|&c| !forbidden(c)) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Parses `xml` (a reply) and returns the value of `field` (nested lookups allowed), panicking
/// with the document if it does not parse.
pub fn reparse_field(xml: &[u8], field: &str) -> String {
    let msg = match Message::parse(xml) {
        Ok(m) => m,
        Err(e) => panic!(
            "rendered reply does not parse ({e}):\n{}",
            String::from_utf8_lossy(xml)
        ),
    };
    msg.get(field).unwrap_or("").to_string()
}

/// Ignore SIGPIPE as a Rust `main` would (libFuzzer's C main does not).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
