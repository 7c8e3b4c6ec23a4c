//! `Message::parse` on arbitrary bytes. When a message parses, every leaf value echoed back as
//! a text reply (as an echo rule would) must render to XML that parses again, with the
//! Content equal to the value cleaned and truncated.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;
use weixin_fcgi::wechat::message::Message;
use weixin_fcgi::wechat::reply::{self, Envelope, Limits, Reply};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert!(msg.nodes().len() <= weixin_fcgi::wechat::message::MAX_NODES);
    let envelope = Envelope {
        to_user: msg.from_user(),
        from_user: msg.to_user(),
        create_time: 1,
    };
    let limits = Limits::default();
    let mut out = Vec::new();
    for node in msg.nodes().iter().take(16) {
        let Some(value) = node.value.as_deref() else {
            continue;
        };
        out.clear();
        reply::render(
            &Reply::Text { content: value },
            &envelope,
            &limits,
            &mut out,
        );
        let got = common::reparse_field(&out, "Content");
        let want = common::cleaned_truncated(value, limits.text_max_bytes);
        assert_eq!(got, want, "echo of <{}> changed", node.name);
        assert_eq!(
            common::reparse_field(&out, "ToUserName"),
            common::cleaned(msg.from_user())
        );
    }
});
