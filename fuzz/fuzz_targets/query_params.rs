//! The callback's query parameters: `query::get_all` (one pass, as every request reads them)
//! must give, name by name, what `query::get` gives, on any query and any names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weixin_fcgi::query;

fuzz_target!(|data: &[u8]| {
    // The first byte says how much of the rest is names (separated by `,`), the rest is the
    // query; plus the six names the responder reads.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let (names, q) = rest.split_at(split);
    let names = String::from_utf8_lossy(names);
    let mut picked: Vec<&str> = names.split(',').take(4).collect();
    picked.resize(4, "");
    let fixed = weixin_fcgi::app::CALLBACK_PARAMS;
    let found = query::get_all(q, fixed);
    for (name, value) in fixed.iter().zip(&found) {
        assert_eq!(value, &query::get(q, name), "{name}");
    }
    let found = query::get_all(q, [picked[0], picked[1], picked[2], picked[3]]);
    for (name, value) in picked.iter().zip(&found) {
        assert_eq!(value, &query::get(q, name), "{name:?}");
    }
});
