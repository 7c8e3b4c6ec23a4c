//! Showing untrusted text safely: in a log line (one line, no forged `key=value` pairs) and on
//! a terminal (no control sequences).

use std::borrow::Cow;
use std::fmt;

/// A value from a message (MsgType, Event, FromUserName, …) for a `key=value` log line: written
/// bare when it is a plain word (`text`, `subscribe`, `CLICK`, an OpenID), otherwise quoted
/// with every quote, backslash, control and other invisible or line-breaking character escaped
/// as Rust does (`"x status=200\u{1b}"`), as `content=` already is. So a value can neither end
/// the line nor pass for another field.
pub struct LogValue<'a>(pub &'a str);

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self.0.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
            });
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// True for characters that move the cursor, end a line, or reorder text on a terminal:
/// C0/C1 controls (ESC, BEL, NEL, …), LINE/PARAGRAPH SEPARATOR, and the bidirectional controls.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every character [`unsafe_on_terminal`] written as a Rust escape (`\n`, `\u{1b}`);
/// everything else, Chinese included, as is. Borrowed when nothing needed escaping.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_on_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_on_terminal(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_values() {
        for plain in [
            "text",
            "event",
            "subscribe",
            "CLICK",
            "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
        ] {
            assert_eq!(LogValue(plain).to_string(), plain);
        }
        let cases = [
            (
                "x status=200 user=deadbeef",
                r#""x status=200 user=deadbeef""#,
            ),
            ("a\u{1b}[2Jb", r#""a\u{1b}[2Jb""#),
            ("\u{7}\u{b}\u{c}", r#""\u{7}\u{b}\u{c}""#),
            ("a\u{2028}b\u{85}c", r#""a\u{2028}b\u{85}c""#),
            ("q\"uote\\", r#""q\"uote\\""#),
            ("line\nbreak\r", r#""line\nbreak\r""#),
            ("", r#""""#),
            ("中文", r#""中文""#),
        ];
        for (value, logged) in cases {
            assert_eq!(LogValue(value).to_string(), logged, "{value:?}");
        }
    }

    #[test]
    fn terminal() {
        assert!(matches!(for_terminal("你好 <b>"), Cow::Borrowed(_)));
        assert_eq!(
            for_terminal("a\u{1b}[31mred\u{7}\nnext\u{202e}\u{85}\u{2028}"),
            r"a\u{1b}[31mred\u{7}\nnext\u{202e}\u{85}\u{2028}"
        );
    }
}
