//! Which response headers from a backend (a menu handler's `h`, a `redirect_url` answer) may
//! reach the browser. One function, [`check_response_header`], used for both.

/// Longest header name passed on.
pub const MAX_NAME: usize = 128;
/// Longest header value passed on.
pub const MAX_VALUE: usize = 8 * 1024;

/// Headers that describe one connection (RFC 9110 §7.6.1) or that the FastCGI transport,
/// nginx or CGI own: never taken from a backend.
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Computed by nginx from the body it sends.
    "content-length",
    // The CGI status line; nginx reads it as the HTTP status.
    "status",
    // nginx adds its own.
    "date",
    "server",
];

/// Whether a backend's response header `name: value` may be passed to the browser; `Err` is a
/// short reason for the log. Refused: names that are not HTTP tokens or are too long; values
/// with CR, LF, NUL or another control character (tab excepted) or too long; hop-by-hop and
/// transport headers ([`RESERVED`]); `X-Accel-*`, which nginx would obey (internal redirects,
/// buffering) instead of passing on.
pub fn check_response_header(name: &str, value: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(is_token_byte) {
        return Err("header name is not an HTTP token");
    }
    if value.len() > MAX_VALUE {
        return Err("header value too long");
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("header value has CR, LF, NUL or another control character");
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err("hop-by-hop or transport header");
    }
    if lower.starts_with("x-accel-") {
        return Err("X-Accel-* header (nginx would act on it)");
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request header's name from its FastCGI parameter (`HTTP_USER_AGENT` → `User-Agent`).
pub fn from_cgi_name(param: &str) -> Option<String> {
    let rest = param.strip_prefix("HTTP_")?;
    if rest.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(rest.len());
    for (i, part) in rest.split('_').enumerate() {
        if i > 0 {
            out.push('-');
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_ordinary_headers() {
        for (n, v) in [
            ("Set-Cookie", "sid=1; Path=/; HttpOnly"),
            ("Location", "http://example.com/p?u=1"),
            ("Cache-Control", "no-store"),
            ("X-Custom", "a\tb"),
            ("Content-Type", "text/html; charset=utf-8"),
        ] {
            assert_eq!(check_response_header(n, v), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_injection_and_transport_headers() {
        for (n, v) in [
            ("Set-Cookie", "a=b\r\nX-Evil: 1"),
            ("Set-Cookie", "a=b\nc"),
            ("X-A", "nul\0"),
            ("X-A", "bell\x07"),
            ("Bad Name", "v"),
            ("Bad:Name", "v"),
            ("", "v"),
            ("Naïve", "v"),
            ("Transfer-Encoding", "chunked"),
            ("connection", "close"),
            ("Content-Length", "5"),
            ("Status", "200"),
            ("X-Accel-Redirect", "/internal"),
            ("Upgrade", "websocket"),
        ] {
            assert!(check_response_header(n, v).is_err(), "{n:?}: {v:?}");
        }
        assert!(check_response_header("X", &"a".repeat(MAX_VALUE + 1)).is_err());
        assert!(check_response_header(&"a".repeat(MAX_NAME + 1), "v").is_err());
    }

    #[test]
    fn cgi_names() {
        assert_eq!(
            from_cgi_name("HTTP_USER_AGENT").as_deref(),
            Some("User-Agent")
        );
        assert_eq!(from_cgi_name("HTTP_COOKIE").as_deref(), Some("Cookie"));
        assert_eq!(
            from_cgi_name("HTTP_X_FORWARDED_FOR").as_deref(),
            Some("X-Forwarded-For")
        );
        assert_eq!(from_cgi_name("REMOTE_ADDR"), None);
        assert_eq!(from_cgi_name("HTTP_"), None);
    }
}
