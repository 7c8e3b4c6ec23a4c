//! Test-only: the signature and safe-mode vectors made with wechatpy,
//! `tests/fixtures/vectors/wechat-vectors.json`, compiled in so no test depends on a path.

use serde_json::Value;

/// The parsed vector file. Panics: a malformed fixture should fail the test loudly.
pub fn load() -> Value {
    let text = include_str!("../../tests/fixtures/vectors/wechat-vectors.json");
    serde_json::from_str(text).expect("tests/fixtures/vectors/wechat-vectors.json is JSON")
}

/// String member `key` of `v`.
pub fn str<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key:?} is not a string"))
}

/// Array member `key` of `v`.
pub fn array<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key:?} is not an array"))
}
