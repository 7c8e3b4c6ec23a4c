//! `QUERY_STRING` lookups with percent-decoding (`+` is a space, as browsers and WeChat send),
//! and the one percent-encoder for the query values and path segments we send.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::borrow::Cow;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`) is escaped.
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` percent-encoded for a query value or a path segment.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, RESERVED).to_string()
}

/// The value of the first `name=value` pair named `name`, percent-decoded. Borrowed when
/// nothing needed decoding (the usual case: WeChat's values are digits and hex).
pub fn get<'a>(query: &'a [u8], name: &str) -> Option<Cow<'a, [u8]>> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        (decode(k).as_ref() == name.as_bytes()).then(|| decode(v))
    })
}

/// The values of `names` in one pass over the query: for each name, the first pair's value
/// (as [`get`] gives it). A request reads several parameters; one pass costs a third.
pub fn get_all<'a, const N: usize>(
    query: &'a [u8],
    names: [&str; N],
) -> [Option<Cow<'a, [u8]>>; N] {
    let mut found: [Option<Cow<'a, [u8]>>; N] = [const { None }; N];
    let mut left = N;
    for pair in query.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        let k = decode(k);
        for (name, slot) in names.iter().zip(found.iter_mut()) {
            if slot.is_none() && name.as_bytes() == k.as_ref() {
                *slot = Some(decode(v));
                left -= 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    found
}

/// Percent-decodes `s`; a malformed escape is kept literally.
pub fn decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(|&h| hex(h)),
                s.get(i + 2).and_then(|&l| hex(l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let q = b"signature=abc&timestamp=123&nonce=n%20x&echostr=a+b%2B&flag&bad=%zz%4";
        assert_eq!(get(q, "signature").as_deref(), Some(&b"abc"[..]));
        assert_eq!(get(q, "nonce").as_deref(), Some(&b"n x"[..]));
        assert_eq!(get(q, "echostr").as_deref(), Some(&b"a b+"[..]));
        assert_eq!(get(q, "flag").as_deref(), Some(&b""[..]));
        assert_eq!(get(q, "bad").as_deref(), Some(&b"%zz%4"[..]));
        assert_eq!(get(q, "missing"), None);
        assert_eq!(get(b"", "x"), None);
        // One pass gives what the lookups give, name by name (the first pair wins).
        let q2 = b"nonce=first&signature=abc&nonce=second&time%73tamp=1+2";
        let [ts, nonce, sig, missing] = get_all(q2, ["timestamp", "nonce", "signature", "x"]);
        assert_eq!(ts.as_deref(), Some(&b"1 2"[..]));
        assert_eq!(nonce.as_deref(), Some(&b"first"[..]));
        assert_eq!(sig.as_deref(), Some(&b"abc"[..]));
        assert_eq!(missing, None);
        // The same name twice: both get the first pair's value.
        let [a, b] = get_all(q2, ["nonce", "nonce"]);
        assert_eq!(
            (a.as_deref(), b.as_deref()),
            (Some(&b"first"[..]), Some(&b"first"[..]))
        );
        for name in ["signature", "nonce", "echostr", "flag", "bad", "missing"] {
            assert_eq!(get_all(q, [name])[0], get(q, name), "{name}");
        }
        assert!(matches!(get(q, "timestamp"), Some(Cow::Borrowed(_))));
    }
}
