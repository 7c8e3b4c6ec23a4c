//! `Template::parse` + `ReplyTemplate::render` with arbitrary message values.
//!
//! Input: byte 0 picks the text limit and reply type, the rest is split at 0xFF bytes (never in
//! UTF-8) into the template source and message values (Content, FromUserName, ToUserName,
//! MediaId). The rendered reply must be XML that `Message::parse` accepts, whose values equal
//! the template rendered by hand, cleaned (and for text, truncated).
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use weixin_fcgi::rules::{ReplyTemplate, Template};
use weixin_fcgi::wechat::message::{Message, Node};
use weixin_fcgi::wechat::reply::{Envelope, Limits};

const FIELDS: [&str; 4] = ["Content", "FromUserName", "ToUserName", "MediaId"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xFF);
    let Some(Ok(src)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let Ok(template) = Template::parse(src) else {
        return;
    };
    let mut nodes = Vec::new();
    for (name, part) in FIELDS.iter().zip(parts) {
        let Ok(value) = std::str::from_utf8(part) else {
            return;
        };
        nodes.push(Node {
            name,
            value: Some(Cow::Borrowed(value)),
            depth: 0,
        });
    }
    let msg = Message::from_nodes(nodes);

    let mut expected = String::new();
    template.render_into(&msg, &mut expected);

    let limits = Limits {
        // Small limits reach truncation with short inputs; 2048 is the real default.
        text_max_bytes: match selector & 0x7f {
            0 => 2048,
            n => n as usize,
        },
        max_articles: 1,
    };
    let envelope = Envelope {
        to_user: msg.from_user(),
        from_user: msg.to_user(),
        create_time: 1_700_000_000,
    };
    let (reply, field, want) = if selector & 0x80 == 0 {
        (
            ReplyTemplate::Text { content: template },
            "Content",
            common::cleaned_truncated(&expected, limits.text_max_bytes),
        )
    } else {
        (
            ReplyTemplate::Image { media_id: template },
            "MediaId",
            common::cleaned(&expected),
        )
    };
    let mut scratch = String::new();
    let mut out = Vec::new();
    reply.render(&msg, &envelope, &limits, &mut scratch, &mut out);
    assert_eq!(common::reparse_field(&out, field), want, "{field} differs");
    assert_eq!(
        common::reparse_field(&out, "ToUserName"),
        common::cleaned(msg.from_user())
    );
    assert_eq!(
        common::reparse_field(&out, "FromUserName"),
        common::cleaned(msg.to_user())
    );
});
