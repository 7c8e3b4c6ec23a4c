//! The go-wx-gateway protocol: the message as JSON, POSTed to `<base>/msg/<MsgType>` or
//! `<base>/event/<Event>`; the backend answers 200 with `{"type": "text", "msg": "…"}`.
//!
//! Request JSON: every field under its WeChat name; `CreateTime` is a number (as
//! go-wx-gateway sends it), every other value a string; nested fields (`ScanCodeInfo`,
//! `SendPicsInfo`, …) are nested objects, and `item` elements are always an array.
//!
//! Accepted answers (status 200): an empty body or `{"type": "none"}` (no reply);
//! `text` / `image` / `voice` / `video` with `msg` (the text, or the media id); `video` may
//! add `title` and `description`; `music` with `title`, `description`, `music_url`,
//! `hq_music_url`, `thumb_media_id` (or go-style `musicurl`, `hqmusicurl`, `thumbmediaid`);
//! `news` with `articles: [{title, description, pic_url | picurl, url}]`. The fields of
//! `music`/`news` may also sit in a `msg` object. Anything else is a failure.

use crate::wechat::message::Node;
use serde_json::{Map, Value};
use std::time::Duration;

/// Largest backend answer read; a longer one is a failure.
pub const MAX_ANSWER: u64 = 64 * 1024;

/// A reply from a backend or a program, owned (it crosses threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedReply {
    None,
    Text(String),
    Image(String),
    Voice(String),
    Video {
        media_id: String,
        title: String,
        description: String,
    },
    Music {
        title: String,
        description: String,
        music_url: String,
        hq_music_url: String,
        thumb_media_id: String,
    },
    News(Vec<[String; 4]>),
}

/// The URL path suffix for a message: `/msg/<MsgType>` or `/event/<Event>`, percent-encoded.
pub fn path_for(msg_type: &str, event: &str) -> String {
    let (kind, name) = if msg_type == "event" {
        ("event", event)
    } else {
        ("msg", msg_type)
    };
    let mut out = format!("/{kind}/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The message as a go-wx-gateway JSON object.
pub fn to_json(nodes: &[Node<'_>]) -> Vec<u8> {
    let mut i = 0;
    let object = build(nodes, &mut i, 0);
    serde_json::to_vec(&Value::Object(object)).unwrap_or_else(|_| b"{}".to_vec())
}

fn build(nodes: &[Node<'_>], i: &mut usize, depth: u8) -> Map<String, Value> {
    let mut map = Map::new();
    while let Some(node) = nodes.get(*i) {
        if node.depth < depth {
            break;
        }
        *i += 1;
        if node.depth > depth {
            // Cannot happen in a pre-order list; skip defensively.
            continue;
        }
        let value = match &node.value {
            Some(v) if depth == 0 && node.name == "CreateTime" => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
            Some(v) => Value::String(v.to_string()),
            None => Value::Object(build(nodes, i, depth + 1)),
        };
        match map.get_mut(node.name) {
            Some(Value::Array(items)) if node.name == "item" => items.push(value),
            Some(existing) => {
                // A repeated name: keep them all, as an array.
                let first = std::mem::take(existing);
                *existing = Value::Array(vec![first, value]);
            }
            None if node.name == "item" => {
                map.insert(node.name.to_string(), Value::Array(vec![value]));
            }
            None => {
                map.insert(node.name.to_string(), value);
            }
        }
    }
    map
}

/// POSTs `body` to `url` and interprets the answer. `Err` is a one-line reason for the log.
pub fn call(url: &str, body: &[u8], timeout: Duration) -> Result<OwnedReply, String> {
    let agent = agent(timeout);
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("backend answered HTTP {status}"));
    }
    let answer = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| format!("while reading the answer: {}", describe(&e)))?;
    drop(response);
    parse_answer(&answer)
}

/// A client with no proxy, no redirects, and the whole exchange under `timeout`.
///
/// Its buffers are 16 KiB instead of ureq's 128 KiB each: they are zero-filled (so resident)
/// for every call, and with every forward slot busy 256 KiB per call was most of the process's
/// memory. A response head may be 16 KiB at most; bodies stream through.
pub fn agent(timeout: Duration) -> ureq::Agent {
    const BUFFER: usize = 16 * 1024;
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .input_buffer_size(BUFFER)
        .output_buffer_size(BUFFER)
        .max_response_header_size(BUFFER)
        .build()
        .into()
}

/// A short reason for an HTTP client error.
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timeout".to_string(),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        ureq::Error::BodyExceedsLimit(_) => format!("answer longer than {MAX_ANSWER} bytes"),
        other => other.to_string(),
    }
}

/// Interprets a backend's 200 answer.
pub fn parse_answer(body: &[u8]) -> Result<OwnedReply, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(OwnedReply::None);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    let Value::Object(obj) = value else {
        return Err("answer is not a JSON object".to_string());
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("answer has no string \"type\"")?;
    let inner = match obj.get("msg") {
        Some(Value::Object(m)) => m,
        _ => &obj,
    };
    let field = |names: &[&str]| -> String {
        names
            .iter()
            .find_map(|n| inner.get(*n).and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    let msg = || -> Result<String, String> {
        match obj.get("msg").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(format!(
                "{kind:?} answer without a non-empty string \"msg\""
            )),
        }
    };
    Ok(match kind {
        "none" => OwnedReply::None,
        "text" => OwnedReply::Text(msg()?),
        "image" => OwnedReply::Image(msg()?),
        "voice" => OwnedReply::Voice(msg()?),
        "video" => OwnedReply::Video {
            media_id: msg()?,
            title: field(&["title"]),
            description: field(&["description"]),
        },
        "music" => {
            let thumb_media_id = field(&["thumb_media_id", "thumbmediaid", "ThumbMediaId"]);
            if thumb_media_id.is_empty() {
                return Err("music answer without thumb_media_id".to_string());
            }
            OwnedReply::Music {
                title: field(&["title"]),
                description: field(&["description"]),
                music_url: field(&["music_url", "musicurl"]),
                hq_music_url: field(&["hq_music_url", "hqmusicurl"]),
                thumb_media_id,
            }
        }
        "news" => {
            let Some(Value::Array(items)) = inner.get("articles") else {
                return Err("news answer without an \"articles\" array".to_string());
            };
            let mut articles = Vec::with_capacity(items.len().min(8));
            for item in items
                .iter()
                .take(crate::wechat::reply::MAX_ARTICLES_FOR_EVENT)
            {
                let Value::Object(a) = item else {
                    return Err("news article is not an object".to_string());
                };
                let get = |names: &[&str]| -> String {
                    names
                        .iter()
                        .find_map(|n| a.get(*n).and_then(Value::as_str))
                        .unwrap_or("")
                        .to_string()
                };
                articles.push([
                    get(&["title"]),
                    get(&["description"]),
                    get(&["pic_url", "picurl"]),
                    get(&["url"]),
                ]);
            }
            if articles.is_empty() {
                return Err("news answer with no articles".to_string());
            }
            OwnedReply::News(articles)
        }
        other => return Err(format!("unknown answer type {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::message::Message;

    #[test]
    fn json_follows_go_wx_gateway() {
        let xml = b"<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>\
<CreateTime>1556088649</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi \"x\"]]></Content>\
<MsgId>22277834746191186</MsgId></xml>";
        let msg = Message::parse(xml).expect("parse");
        let v: Value = serde_json::from_slice(&to_json(msg.nodes())).expect("json");
        assert_eq!(v["CreateTime"], Value::from(1556088649u64));
        assert_eq!(v["MsgId"], Value::from("22277834746191186"));
        assert_eq!(v["Content"], Value::from("hi \"x\""));
        assert_eq!(v["FromUserName"], Value::from("o1"));
    }

    #[test]
    fn nested_fields_are_objects_and_items_arrays() {
        let xml = b"<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
<MsgType>event</MsgType><Event>pic_weixin</Event><EventKey>k</EventKey><SendPicsInfo><Count>2</Count>\
<PicList><item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo></xml>";
        let msg = Message::parse(xml).expect("parse");
        let v: Value = serde_json::from_slice(&to_json(msg.nodes())).expect("json");
        assert_eq!(v["SendPicsInfo"]["Count"], Value::from("2"));
        assert_eq!(
            v["SendPicsInfo"]["PicList"]["item"][1]["PicMd5Sum"],
            Value::from("b")
        );
        assert_eq!(v["EventKey"], Value::from("k"));
        assert_eq!(path_for("event", "pic_weixin"), "/event/pic_weixin");
        assert_eq!(path_for("text", ""), "/msg/text");
        assert_eq!(path_for("event", "a/b c"), "/event/a%2Fb%20c");
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer(b""), Ok(OwnedReply::None));
        assert_eq!(parse_answer(b" \n"), Ok(OwnedReply::None));
        assert_eq!(parse_answer(br#"{"type":"none"}"#), Ok(OwnedReply::None));
        assert_eq!(
            parse_answer(br#"{"type":"text","msg":"hi"}"#),
            Ok(OwnedReply::Text("hi".into()))
        );
        assert_eq!(
            parse_answer(br#"{"type":"image","msg":"MEDIA"}"#),
            Ok(OwnedReply::Image("MEDIA".into()))
        );
        assert_eq!(
            parse_answer(br#"{"type":"news","articles":[{"title":"t","picurl":"p","url":"u"}]}"#),
            Ok(OwnedReply::News(vec![[
                "t".into(),
                String::new(),
                "p".into(),
                "u".into()
            ]]))
        );
        assert!(parse_answer(br#"{"type":"text","msg":""}"#).is_err());
        assert!(parse_answer(br#"{"type":"bogus","msg":"x"}"#).is_err());
        assert!(parse_answer(b"<html>").is_err());
        assert!(parse_answer(b"[1]").is_err());
        assert!(parse_answer(br#"{"type":"music","msg":{"title":"t"}}"#).is_err());
    }
}
