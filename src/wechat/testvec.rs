//! Test-only loader for `shared/vectors/wechat-vectors.json` (made with wechatpy), with a tiny
//! JSON reader so the crate needs no serde_json dev-dependency.

use std::path::PathBuf;

/// A JSON value, as much of it as the vector file uses.
#[derive(Debug, Clone)]
pub enum Json {
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    Other,
}

/// Reads and parses the vector file, found from either the main checkout (`<repo>/../shared`)
/// or a worktree (`<worktree>/../../shared`). Panics: a missing or malformed fixture should fail
/// the test loudly.
pub fn load() -> Json {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for rel in [
        "../shared/vectors/wechat-vectors.json",
        "../../shared/vectors/wechat-vectors.json",
    ] {
        if let Ok(text) = std::fs::read_to_string(root.join(rel)) {
            let mut p = Parser {
                s: text.as_bytes(),
                i: 0,
            };
            let v = p.value();
            p.ws();
            assert_eq!(p.i, p.s.len(), "trailing data in {rel}");
            return v;
        }
    }
    panic!("wechat-vectors.json not found near {}", root.display());
}

impl Json {
    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| {
                    panic!("no key {key:?}");
                }),
            _ => panic!("not an object looking up {key:?}"),
        }
    }
    /// String member `key`.
    pub fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Json::Str(s) => s,
            other => panic!("{key:?} is not a string: {other:?}"),
        }
    }
    /// Array member `key`.
    pub fn array(&self, key: &str) -> &[Json] {
        match self.get(key) {
            Json::Arr(a) => a,
            other => panic!("{key:?} is not an array: {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) {
        self.ws();
        assert_eq!(
            self.s.get(self.i),
            Some(&c),
            "expected {:?} at {}",
            c as char,
            self.i
        );
        self.i += 1;
    }
    fn peek(&mut self) -> u8 {
        self.ws();
        self.s[self.i]
    }
    fn value(&mut self) -> Json {
        match self.peek() {
            b'"' => Json::Str(self.string()),
            b'[' => {
                self.eat(b'[');
                let mut items = Vec::new();
                if self.peek() != b']' {
                    loop {
                        items.push(self.value());
                        if self.peek() == b',' {
                            self.eat(b',');
                        } else {
                            break;
                        }
                    }
                }
                self.eat(b']');
                Json::Arr(items)
            }
            b'{' => {
                self.eat(b'{');
                let mut members = Vec::new();
                if self.peek() != b'}' {
                    loop {
                        self.ws();
                        let k = self.string();
                        self.eat(b':');
                        members.push((k, self.value()));
                        if self.peek() == b',' {
                            self.eat(b',');
                        } else {
                            break;
                        }
                    }
                }
                self.eat(b'}');
                Json::Obj(members)
            }
            _ => {
                // Numbers, true, false, null: skipped, the vectors only need strings.
                while self.i < self.s.len() && !b",]} \n\r\t".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                Json::Other
            }
        }
    }
    fn hex4(&mut self) -> u32 {
        let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).expect("hex");
        self.i += 4;
        u32::from_str_radix(h, 16).expect("hex digits")
    }
    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = Vec::new();
        loop {
            let c = self.s[self.i];
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.s[self.i];
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let mut cp = self.hex4();
                            if (0xD800..0xDC00).contains(&cp) {
                                assert_eq!(&self.s[self.i..self.i + 2], b"\\u");
                                self.i += 2;
                                let lo = self.hex4();
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            let ch = char::from_u32(cp).expect("valid code point");
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => panic!("bad escape"),
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).expect("UTF-8 string")
    }
}

#[test]
fn parser_handles_escapes() {
    let mut p = Parser {
        s: br#"{"a": ["x\"y\\\/\u00e9\ud83d\ude00", 1, true], "b": {}}"#,
        i: 0,
    };
    let v = p.value();
    assert_eq!(v.array("a").len(), 3);
    match &v.array("a")[0] {
        Json::Str(s) => assert_eq!(s, "x\"y\\/é😀"),
        other => panic!("{other:?}"),
    }
}
