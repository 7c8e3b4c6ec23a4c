//! `Config::parse` on arbitrary UTF-8: errors, never panics; a parsed config answers lookups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weixin_fcgi::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            for path in ["/weixin", "/wx", "/", ""] {
                let _ = config.account_for_path(path);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains("fuzz.toml"),
                "error does not name the file: {shown}"
            );
        }
    }
});
