//! Response headers chosen by a backend (the menu handler's `"h"`), checked before they reach
//! the CGI head: a name must be an HTTP token (RFC 9110 §5.6.2 `tchar`), must not be one we set
//! ourselves (compared case-insensitively, after the token check, so `"Location:"` or
//! `"Status\n"` cannot slip past it), and a value must not hold CR, LF or NUL. Anything else is
//! dropped with one log line.

/// Headers the responder sets itself.
const RESERVED: &[&str] = &[
    "status",
    "content-type",
    "content-length",
    "location",
    "transfer-encoding",
    "x-content-type-options",
];

/// RFC 9110 `tchar`: `!#$%&'*+-.^_`|~`, digits and letters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty HTTP token.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// Why a header was dropped.
fn refusal(name: &str, value: &str) -> Option<&'static str> {
    if !is_token(name) {
        Some("name is not an HTTP token")
    } else if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        Some("name is reserved")
    } else if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Some("value holds CR, LF or NUL")
    } else {
        None
    }
}

/// The headers of `headers` that may be sent; each dropped one is logged (`origin` names the
/// backend, e.g. `menu_handler account=shop`).
pub fn allowed<'h>(
    headers: &'h [(String, String)],
    origin: &str,
) -> impl Iterator<Item = (&'h str, &'h str)> {
    headers.iter().filter_map(move |(name, value)| {
        if let Some(why) = refusal(name, value) {
            crate::log_warn!("{origin}: dropping header {name:?}: {why}");
            None
        } else {
            Some((name.as_str(), value.as_str()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        for ok in ["Set-Cookie", "X-A", "a!#$%&'*+-.^_`|~9"] {
            assert!(is_token(ok), "{ok:?}");
        }
        for bad in [
            "",
            "Location:",
            "A B",
            "Content-Type\n",
            "X\r",
            "é",
            "a\0",
            "(x)",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_safe_headers_pass() {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        let headers = [
            h("Set-Cookie", "sid=1; HttpOnly"),
            h("Location:", "http://evil/"),
            h("Content-Length:", "3"),
            h("Content-Type\n", "text/evil"),
            h("Status:", "500"),
            h("status", "500"),
            h("LOCATION", "http://evil/"),
            h("X-Split", "a\r\nX-Injected: 1"),
            h("X-Nul", "a\0b"),
            h("Cache-Control", "no-store"),
        ];
        let kept: Vec<_> = allowed(&headers, "test").collect();
        assert_eq!(
            kept,
            [
                ("Set-Cookie", "sid=1; HttpOnly"),
                ("Cache-Control", "no-store")
            ]
        );
    }
}
