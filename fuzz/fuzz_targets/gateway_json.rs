//! The go-wx-gateway side of forwarding on arbitrary bytes: the request JSON built from any
//! message that parses (always a JSON object with the gateway's base members, numbers as
//! integers), a backend's answer read with any status, and a menu handler's answer whose
//! headers, once checked, can never break the CGI head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weixin_fcgi::forward::{backend, headers, oauth};
use weixin_fcgi::wechat::message::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(msg) = Message::parse(rest) else {
                return;
            };
            let json = backend::to_json(msg.nodes());
            let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
            let obj = v.as_object().expect("an object");
            for key in ["ToUserName", "FromUserName", "MsgType"] {
                assert!(obj[key].is_string(), "{key}");
            }
            assert!(obj["CreateTime"].is_i64());
            assert!(json.len() < 64 * 1024 + rest.len() * 8, "bounded output");
        }
        1 => {
            let status = u16::from(rest.first().copied().unwrap_or(0)) + 100;
            let _ = backend::interpret(status, rest.get(1..).unwrap_or(&[]));
        }
        _ => {
            let Ok(answer) = oauth::parse_menu_answer(rest) else {
                return;
            };
            for (name, value) in &answer.headers {
                if headers::check_response_header(name, value).is_ok() {
                    assert!(!name.is_empty());
                    assert!(!name.bytes().any(|b| b == b':' || b <= b' '));
                    assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
                }
            }
        }
    }
});
