//! The go-wx-gateway protocol (github rosbit/go-wx-gateway, message structs from
//! rosbit/go-wx-api `msg/`): the message as JSON, POSTed with
//! `Content-Type: application/json; charset=UTF-8` to `<base>/msg/<MsgType>` or
//! `<base>/event/<Event>` (also for `CLICK`, as the gateway's README documents; its code posts
//! CLICK to `/event/event`).
//!
//! # Request JSON
//! Exactly the gateway's structs, field by field ([`to_json`]): every field of the struct for the
//! message's type, present even when the XML lacks it (`""`, or `0` for numbers); `CreateTime`,
//! `Scale`, `Count`, `TotalCount`, `FilterCount`, `SentCount`, `ErrorCount`, `ResultCount` are
//! numbers parsed like Go's `strconv.Atoi` (0 when not a number); `MsgId` is a string (for
//! TEMPLATESENDJOBFINISH read from `MsgID`); `ScanCodeInfo` is flattened to `ScanType`,
//! `ScanResult`; `SendPicsInfo` to `Count` + `PicList: ["md5", …]` (`null` when empty);
//! `CopyrightCheckResult` to `ResultCount` + `ResultList: [{…}]` (`null` when empty).
//! Each struct reads its fields from the top level of `<xml>` by name, first occurrence.
//! Every other element of the XML (types the gateway drops, fields its structs lack, e.g.
//! `SendLocationInfo`) is added as well, under its WeChat name: a leaf as a string, a
//! container as a nested object, `item` elements always as an array.
//!
//! # Answers
//! The status is not looked at when the body is a JSON answer (as the gateway, which decodes
//! any status): `{"type": T, "msg": M}`, `type` defaulting to `text`. See [`interpret`].

use crate::wechat::message::Node;
use crate::wechat::reply::{Article, Reply};
use serde_json::{Map, Value};
use std::time::Duration;

/// Largest backend answer read; a longer one is a failure.
pub const MAX_ANSWER: u64 = 64 * 1024;

/// The request's Content-Type, as go-wx-gateway sends it.
pub const CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// Most `ResultList` entries built from a MASSSENDJOBFINISH `Count` (the gateway allocates
/// whatever `Count` says; real reports have a handful).
pub const MAX_RESULT_LIST: usize = 64;

/// A reply from a backend or a program, owned (it crosses threads); `None` is no reply.
pub type OwnedReply = Option<Reply<String>>;

/// The URL path suffix for a message: `/msg/<MsgType>` or `/event/<Event>`, percent-encoded.
pub fn path_for(msg_type: &str, event: &str) -> String {
    let (kind, name) = if msg_type == "event" {
        ("event", event)
    } else {
        ("msg", msg_type)
    };
    format!("/{kind}/{}", crate::query::encode(name))
}

/// How the gateway's struct types a field: Go `string` or `int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
}
use Kind::{Int, Str};

/// One struct field: JSON key, where the gateway reads it (`Parent/Child` below `<xml>`), type.
type Field = (&'static str, &'static str, Kind);

/// A struct's fields beyond `BaseMsg`, and the list it builds from a nested element.
struct Shape {
    fields: &'static [Field],
    list: List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    None,
    /// `SendPicsInfo` → `Count`, `PicList`.
    Pics,
    /// `CopyrightCheckResult` → `ResultCount`, `ResultList`.
    MassResults,
}

/// go-wx-api's `BaseMsg`.
const BASE: &[Field] = &[
    ("ToUserName", "ToUserName", Str),
    ("FromUserName", "FromUserName", Str),
    ("CreateTime", "CreateTime", Int),
    ("MsgType", "MsgType", Str),
];
const MSG_ID: Field = ("MsgId", "MsgId", Str);
const EVENT: Field = ("Event", "Event", Str);
const EVENT_KEY: Field = ("EventKey", "EventKey", Str);

/// `MassSentEvent.ResultList` item fields.
const RESULT_ITEM: [&str; 8] = [
    "ArticleIdx",
    "UserDeclareState",
    "AuditState",
    "OriginalArticleUrl",
    "OriginalArticleType",
    "CanReprint",
    "NeedReplaceContent",
    "NeedShowReprintSource",
];

/// The struct go-wx-api parses a message into (its `newMessages` / `newEvents` tables; `video`
/// and `SCAN` have a struct there even though the gateway registers no handler for them).
/// Types it does not know get `Msg` (messages) or `EventMsg` (events).
fn shape(msg_type: &str, event: &str) -> Shape {
    let plain = |fields| Shape {
        fields,
        list: List::None,
    };
    if msg_type != "event" {
        return plain(match msg_type {
            "text" => &[MSG_ID, ("Content", "Content", Str)],
            "image" => &[
                MSG_ID,
                ("PicUrl", "PicUrl", Str),
                ("MediaId", "MediaId", Str),
            ],
            "voice" => &[
                MSG_ID,
                ("MediaId", "MediaId", Str),
                ("Format", "Format", Str),
                ("Recognition", "Recognition", Str),
            ],
            "video" | "shortvideo" => &[
                MSG_ID,
                ("MediaId", "MediaId", Str),
                ("ThumbMediaId", "ThumbMediaId", Str),
            ],
            "location" => &[
                MSG_ID,
                ("Location_X", "Location_X", Str),
                ("Location_Y", "Location_Y", Str),
                ("Scale", "Scale", Int),
                ("Label", "Label", Str),
            ],
            "link" => &[
                MSG_ID,
                ("Title", "Title", Str),
                ("Description", "Description", Str),
                ("Url", "Url", Str),
            ],
            _ => &[MSG_ID],
        });
    }
    match event {
        "CLICK" => plain(&[EVENT, EVENT_KEY]),
        "VIEW" => plain(&[EVENT, EVENT_KEY, ("MenuId", "MenuId", Str)]),
        "subscribe" | "unsubscribe" | "SCAN" => {
            plain(&[EVENT, EVENT_KEY, ("Ticket", "Ticket", Str)])
        }
        // location_select: the gateway reads these at the top level, where WeChat never puts
        // them (they are in SendLocationInfo, which is passed along as an extra field).
        "location" => plain(&[
            EVENT,
            ("Location_X", "Location_X", Str),
            ("Location_Y", "Location_Y", Str),
            ("Scale", "Scale", Int),
            ("Label", "Label", Str),
            MSG_ID,
        ]),
        "LOCATION" => plain(&[
            EVENT,
            ("Latitude", "Latitude", Str),
            ("Longitude", "Longitude", Str),
            ("Precision", "Precision", Str),
        ]),
        "pic_sysphoto" | "pic_photo_or_album" | "pic_weixin" => Shape {
            fields: &[EVENT, EVENT_KEY],
            list: List::Pics,
        },
        "scancode_waitmsg" | "scancode_push" => plain(&[
            EVENT,
            EVENT_KEY,
            ("ScanType", "ScanCodeInfo/ScanType", Str),
            ("ScanResult", "ScanCodeInfo/ScanResult", Str),
        ]),
        "MASSSENDJOBFINISH" => Shape {
            fields: &[
                EVENT,
                ("MsgID", "MsgID", Str),
                ("Status", "Status", Str),
                ("TotalCount", "TotalCount", Int),
                ("FilterCount", "FilterCount", Int),
                ("SentCount", "SentCount", Int),
                ("ErrorCount", "ErrorCount", Int),
            ],
            list: List::MassResults,
        },
        "TEMPLATESENDJOBFINISH" => {
            plain(&[EVENT, ("MsgId", "MsgID", Str), ("Status", "Status", Str)])
        }
        _ => plain(&[EVENT]),
    }
}

/// The message as go-wx-gateway's JSON object (see the module documentation).
pub fn to_json(nodes: &[Node<'_>]) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(gateway_object(nodes))).unwrap_or_else(|_| b"{}".to_vec())
}

fn gateway_object(nodes: &[Node<'_>]) -> Map<String, Value> {
    let shape = shape(lookup(nodes, "MsgType"), lookup(nodes, "Event"));
    let mut map = Map::new();
    // Top-level elements the struct reads; the rest are passed along as they are.
    let mut consumed: Vec<&str> = Vec::with_capacity(16);
    for &(key, path, kind) in BASE.iter().chain(shape.fields) {
        let text = lookup(nodes, path);
        let value = match kind {
            Str => Value::String(text.to_string()),
            Int => Value::from(go_atoi(text)),
        };
        map.insert(key.to_string(), value);
        consumed.push(path.split('/').next().unwrap_or(path));
    }
    match shape.list {
        List::None => {}
        List::Pics => {
            consumed.push("SendPicsInfo");
            let info = find(nodes, None, "SendPicsInfo");
            let count = info.map_or(0, |i| {
                go_atoi(text_of(nodes, find(nodes, Some(i), "Count")))
            });
            let mut list = Value::Null;
            if let (true, Some(info)) = (count > 0, info) {
                let items: Vec<Value> = find(nodes, Some(info), "PicList")
                    .into_iter()
                    .flat_map(|l| children(nodes, Some(l)))
                    .filter(|&i| nodes[i].name == "item")
                    .map(|i| text_of(nodes, find(nodes, Some(i), "PicMd5Sum")).into())
                    .collect();
                if !items.is_empty() {
                    list = Value::Array(items);
                }
            }
            map.insert("Count".into(), Value::from(count));
            map.insert("PicList".into(), list);
        }
        List::MassResults => {
            consumed.push("CopyrightCheckResult");
            let result = find(nodes, None, "CopyrightCheckResult");
            let count = result.map_or(0, |r| {
                go_atoi(text_of(nodes, find(nodes, Some(r), "Count")))
            });
            let mut list = Value::Null;
            if let (true, Some(result)) = (count > 0, result) {
                let items: Vec<usize> = find(nodes, Some(result), "ResultList")
                    .into_iter()
                    .flat_map(|l| children(nodes, Some(l)))
                    .filter(|&i| nodes[i].name == "item")
                    .collect();
                let len = usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .min(MAX_RESULT_LIST);
                let entries = (0..len)
                    .map(|n| {
                        let item = items.get(n).copied();
                        let mut entry = Map::new();
                        for key in RESULT_ITEM {
                            let found = item.and_then(|i| find(nodes, Some(i), key));
                            entry.insert(key.to_string(), text_of(nodes, found).into());
                        }
                        Value::Object(entry)
                    })
                    .collect();
                list = Value::Array(entries);
            }
            map.insert("ResultCount".into(), Value::from(count));
            map.insert("ResultList".into(), list);
        }
    }
    let extras = children(nodes, None).filter(|&i| {
        let name = nodes[i].name;
        !consumed.contains(&name) && !map.contains_key(name)
    });
    let extras = merge(nodes, extras);
    map.extend(extras);
    map
}

/// Indices of the children of `parent` (`None`: of `<xml>`) in the pre-order node list.
fn children<'n>(nodes: &'n [Node<'_>], parent: Option<usize>) -> impl Iterator<Item = usize> + 'n {
    let (start, depth) = match parent {
        None => (0, 0),
        Some(p) => (
            p + 1,
            nodes.get(p).map_or(u8::MAX, |n| n.depth.saturating_add(1)),
        ),
    };
    nodes
        .get(start..)
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .take_while(move |(_, n)| n.depth >= depth)
        .filter(move |(_, n)| n.depth == depth)
        .map(move |(i, _)| start + i)
}

/// The first child of `parent` named `name` (etree's `SelectElement`).
fn find(nodes: &[Node<'_>], parent: Option<usize>, name: &str) -> Option<usize> {
    children(nodes, parent).find(|&i| nodes[i].name == name)
}

/// An element's text as etree's `Text()` gives it: "" for a container or a missing element.
fn text_of<'n>(nodes: &'n [Node<'_>], index: Option<usize>) -> &'n str {
    index.and_then(|i| nodes[i].value.as_deref()).unwrap_or("")
}

/// The text at `Parent/Child` below `<xml>`, "" when missing.
fn lookup<'n>(nodes: &'n [Node<'_>], path: &str) -> &'n str {
    let mut at = None;
    for part in path.split('/') {
        match find(nodes, at, part) {
            Some(i) => at = Some(i),
            None => return "",
        }
    }
    text_of(nodes, at)
}

/// Elements as JSON members under their own names: a leaf as a string, a container as an
/// object; a repeated name (and `item`, always) becomes an array.
fn merge(nodes: &[Node<'_>], ids: impl Iterator<Item = usize>) -> Map<String, Value> {
    let mut map = Map::new();
    for i in ids {
        let node = &nodes[i];
        let value = match &node.value {
            Some(v) => Value::String(v.to_string()),
            None => Value::Object(merge(nodes, children(nodes, Some(i)))),
        };
        match map.get_mut(node.name) {
            // Values are strings or objects; an array is a repeated name (or `item`).
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
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

/// Go's `strconv.Atoi` with its error ignored, as the gateway parses numbers: an optional sign
/// and ASCII digits, saturating at the 64-bit limits; anything else (spaces, empty) is 0.
pub fn go_atoi(s: &str) -> i64 {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let mut n: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        let next = n.checked_mul(10).and_then(|n| {
            if negative {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        });
        match next {
            Some(v) => n = v,
            None if negative => return i64::MIN,
            None => return i64::MAX,
        }
    }
    n
}

/// POSTs `body` to `url` and interprets the answer. `Err` is a one-line reason for the log.
pub fn call(url: &str, body: &[u8], timeout: Duration) -> Result<OwnedReply, String> {
    let agent = agent(timeout);
    let mut response = agent
        .post(url)
        .header("Content-Type", CONTENT_TYPE)
        .send(body)
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let answer = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| format!("while reading the answer (HTTP {status}): {}", describe(&e)))?;
    drop(response);
    interpret(status, &answer)
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
        ureq::Error::BodyExceedsLimit(limit) => format!("answer longer than {limit} bytes"),
        other => other.to_string(),
    }
}

/// Reads a backend's answer of any status, as go-wx-gateway does:
///
/// | answer | reply |
/// |---|---|
/// | `{"msg": "hello"}` (no `type`) | text `hello` |
/// | `{"type": "text", "msg": "…"}` | text; an empty `msg` is no reply |
/// | `{"type": "image" \| "voice", "msg": "MEDIA_ID"}` | image / voice |
/// | `{"type": "video", "msg": "MEDIA_ID", "title": "…", "desc": "…"}` | video (`description` is also read) |
/// | `{"type": "success"}` or `{"type": "none"}`, with or without `msg` | no reply (`success`) |
/// | `news` / `music` objects (weixin-fcgi's extension) | news / music |
/// | an empty body with status 200 | no reply |
///
/// Everything else is a failure (`Err`, answered with the rule's fallback, else `success`):
/// not JSON, not an object, an unknown or non-string `type`, a missing or non-string `msg`, an
/// empty media id, a non-string `title`/`desc`, an empty body with another status.
/// Only the first JSON value of the body is read (Go's `json.Decoder`).
pub fn interpret(status: u16, body: &[u8]) -> Result<OwnedReply, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if status == 200 {
            Ok(None)
        } else {
            Err(format!("backend answered HTTP {status} with an empty body"))
        };
    }
    parse_answer(body).map_err(|e| {
        if status == 200 {
            e
        } else {
            format!("backend answered HTTP {status}: {e}")
        }
    })
}

/// Interprets one answer body (see [`interpret`]).
pub fn parse_answer(body: &[u8]) -> Result<OwnedReply, String> {
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .unwrap_or(Ok(Value::Null))
        .map_err(|e| format!("answer is not JSON ({e})"))?;
    let Value::Object(obj) = value else {
        return Err("answer is not a JSON object".to_string());
    };
    let kind = match obj.get("type") {
        None => "text",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("answer \"type\" is not a string".to_string()),
    };
    if matches!(kind, "success" | "none") {
        return Ok(None);
    }
    if matches!(kind, "news" | "music") {
        return rich(kind, &obj);
    }
    if !matches!(kind, "text" | "image" | "voice" | "video") {
        return Err(format!("unknown answer type {kind:?}"));
    }
    let msg = match obj.get("msg") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{kind:?} answer whose \"msg\" is not a string")),
        None => return Err(format!("{kind:?} answer without \"msg\"")),
    };
    if kind == "text" {
        return Ok((!msg.is_empty()).then_some(Reply::Text { content: msg }));
    }
    if msg.is_empty() {
        return Err(format!("{kind:?} answer with an empty media id"));
    }
    Ok(Some(match kind {
        "image" => Reply::Image { media_id: msg },
        "voice" => Reply::Voice { media_id: msg },
        _ => {
            let text = |names: &[&str]| -> Result<String, String> {
                for name in names {
                    match obj.get(*name) {
                        Some(Value::String(s)) => return Ok(s.clone()),
                        Some(_) => {
                            return Err(format!("video answer whose {name:?} is not a string"));
                        }
                        None => {}
                    }
                }
                Ok(String::new())
            };
            Reply::Video {
                media_id: msg,
                title: text(&["title"])?,
                description: text(&["desc", "description"])?,
            }
        }
    }))
}

/// `music` and `news` answers (weixin-fcgi's extension; the gateway answers `success`). Their
/// fields may also sit in a `msg` object.
fn rich(kind: &str, obj: &Map<String, Value>) -> Result<OwnedReply, String> {
    let inner = match obj.get("msg") {
        Some(Value::Object(m)) => m,
        _ => obj,
    };
    let field = |names: &[&str]| -> String {
        names
            .iter()
            .find_map(|n| inner.get(*n).and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    if kind == "music" {
        let thumb_media_id = field(&["thumb_media_id", "thumbmediaid", "ThumbMediaId"]);
        if thumb_media_id.is_empty() {
            return Err("music answer without thumb_media_id".to_string());
        }
        return Ok(Some(Reply::Music {
            title: field(&["title"]),
            description: field(&["description", "desc"]),
            music_url: field(&["music_url", "musicurl"]),
            hq_music_url: field(&["hq_music_url", "hqmusicurl"]),
            thumb_media_id,
        }));
    }
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
        articles.push(Article {
            title: get(&["title"]),
            description: get(&["description", "desc"]),
            pic_url: get(&["pic_url", "picurl"]),
            url: get(&["url"]),
        });
    }
    if articles.is_empty() {
        return Err("news answer with no articles".to_string());
    }
    Ok(Some(Reply::News { articles }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::message::Message;
    use serde_json::json;

    fn json_of(xml: &str) -> Value {
        let msg = Message::parse(xml.as_bytes()).expect("parse");
        serde_json::from_slice(&to_json(msg.nodes())).expect("json")
    }

    const HEAD: &str = "<ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>\
        <CreateTime>1556088649</CreateTime>";

    #[test]
    fn text_message_is_the_gateway_struct() {
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi \"x\"]]></Content>\
             <MsgId>22277834746191186</MsgId><MsgDataId>7</MsgDataId></xml>"
        ));
        assert_eq!(
            v,
            json!({"ToUserName": "gh", "FromUserName": "o1", "CreateTime": 1556088649,
                   "MsgType": "text", "MsgId": "22277834746191186", "Content": "hi \"x\"",
                   "MsgDataId": "7"})
        );
    }

    #[test]
    fn absent_fields_are_empty_or_zero() {
        let v = json_of("<xml><MsgType>location</MsgType></xml>");
        assert_eq!(
            v,
            json!({"ToUserName": "", "FromUserName": "", "CreateTime": 0, "MsgType": "location",
                   "MsgId": "", "Location_X": "", "Location_Y": "", "Scale": 0, "Label": ""})
        );
        let v = json_of("<xml><MsgType>event</MsgType><Event>subscribe</Event></xml>");
        assert_eq!(v["EventKey"], json!(""));
        assert_eq!(v["Ticket"], json!(""));
        assert_eq!(v["CreateTime"], json!(0));
    }

    #[test]
    fn numbers_parse_like_go_atoi() {
        assert_eq!(go_atoi("20"), 20);
        assert_eq!(go_atoi("+7"), 7);
        assert_eq!(go_atoi("-3"), -3);
        assert_eq!(go_atoi(" 3"), 0);
        assert_eq!(go_atoi("3.5"), 0);
        assert_eq!(go_atoi(""), 0);
        assert_eq!(go_atoi("-"), 0);
        assert_eq!(go_atoi("99999999999999999999"), i64::MAX);
        assert_eq!(go_atoi("-99999999999999999999"), i64::MIN);
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>location</MsgType><Scale>20</Scale><Location_X>23.1</Location_X></xml>"
        ));
        assert_eq!(v["Scale"], json!(20));
        assert_eq!(v["Location_X"], json!("23.1"));
    }

    #[test]
    fn scancode_and_pics_are_flattened() {
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>scancode_push</Event><EventKey>6</EventKey>\
             <ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>1</ScanResult></ScanCodeInfo></xml>"
        ));
        assert_eq!(v["ScanType"], json!("qrcode"));
        assert_eq!(v["ScanResult"], json!("1"));
        assert!(v.get("ScanCodeInfo").is_none());

        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>pic_weixin</Event><EventKey>k</EventKey>\
             <SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item>\
             <item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo></xml>"
        ));
        assert_eq!(v["Count"], json!(2));
        assert_eq!(v["PicList"], json!(["a", "b"]));
        assert!(v.get("SendPicsInfo").is_none());
        // Count 0 (or missing): the Go slice stays nil.
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>pic_sysphoto</Event><SendPicsInfo><Count>0</Count>\
             <PicList><item><PicMd5Sum>a</PicMd5Sum></item></PicList></SendPicsInfo></xml>"
        ));
        assert_eq!(v["Count"], json!(0));
        assert_eq!(v["PicList"], Value::Null);
    }

    #[test]
    fn mass_and_template_reports() {
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>MASSSENDJOBFINISH</Event><MsgID>1988</MsgID>\
             <Status>sendsuccess</Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount>\
             <SentCount>75</SentCount><ErrorCount>5</ErrorCount><CopyrightCheckResult><Count>2</Count>\
             <ResultList><item><ArticleIdx>1</ArticleIdx><CanReprint>1</CanReprint></item></ResultList>\
             <CheckState>2</CheckState></CopyrightCheckResult></xml>"
        ));
        assert_eq!(v["MsgID"], json!("1988"));
        assert_eq!(v["TotalCount"], json!(100));
        assert_eq!(v["ErrorCount"], json!(5));
        assert_eq!(v["ResultCount"], json!(2));
        let first = json!({"ArticleIdx": "1", "UserDeclareState": "", "AuditState": "",
            "OriginalArticleUrl": "", "OriginalArticleType": "", "CanReprint": "1",
            "NeedReplaceContent": "", "NeedShowReprintSource": ""});
        let empty = json!({"ArticleIdx": "", "UserDeclareState": "", "AuditState": "",
            "OriginalArticleUrl": "", "OriginalArticleType": "", "CanReprint": "",
            "NeedReplaceContent": "", "NeedShowReprintSource": ""});
        assert_eq!(v["ResultList"], json!([first, empty]));
        assert!(v.get("CopyrightCheckResult").is_none());

        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID>\
             <Status>success</Status></xml>"
        ));
        assert_eq!(v["MsgId"], json!("200163836"));
        assert!(v.get("MsgID").is_none());
        // A huge Count is bounded.
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>MASSSENDJOBFINISH</Event>\
             <CopyrightCheckResult><Count>999999999999</Count></CopyrightCheckResult></xml>"
        ));
        assert_eq!(v["ResultCount"], json!(999_999_999_999i64));
        assert_eq!(
            v["ResultList"].as_array().map(Vec::len),
            Some(MAX_RESULT_LIST)
        );
    }

    #[test]
    fn location_select_keeps_its_nested_info_as_an_extra() {
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>location_select</Event><EventKey>k</EventKey>\
             <SendLocationInfo><Location_X>23</Location_X><Label>L</Label></SendLocationInfo></xml>"
        ));
        // An event the gateway has no struct for: EventMsg plus everything else.
        assert_eq!(v["Event"], json!("location_select"));
        assert_eq!(v["EventKey"], json!("k"));
        assert_eq!(v["SendLocationInfo"]["Location_X"], json!("23"));
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>event</MsgType><Event>location</Event>\
             <SendLocationInfo><Location_X>23</Location_X></SendLocationInfo></xml>"
        ));
        // go-wx-api reads location's fields at the top level: empty, as the gateway sends them.
        assert_eq!(v["Location_X"], json!(""));
        assert_eq!(v["Scale"], json!(0));
        assert_eq!(v["SendLocationInfo"]["Location_X"], json!("23"));
    }

    #[test]
    fn first_occurrence_wins_and_extras_repeat_as_arrays() {
        let v = json_of(&format!(
            "<xml>{HEAD}<MsgType>text</MsgType><Content>a</Content><Content>b</Content>\
             <X>1</X><X>2</X><X>3</X><L><item><a>1</a></item></L></xml>"
        ));
        assert_eq!(v["Content"], json!("a"));
        assert_eq!(v["X"], json!(["1", "2", "3"]));
        assert_eq!(v["L"]["item"], json!([{"a": "1"}]));
    }

    #[test]
    fn paths() {
        assert_eq!(path_for("event", "pic_weixin"), "/event/pic_weixin");
        assert_eq!(path_for("event", "CLICK"), "/event/CLICK");
        assert_eq!(path_for("text", ""), "/msg/text");
        assert_eq!(path_for("event", "a/b c"), "/event/a%2Fb%20c");
    }

    fn text(s: &str) -> Result<OwnedReply, String> {
        Ok(Some(Reply::Text { content: s.into() }))
    }

    #[test]
    fn answers_as_the_gateway_reads_them() {
        assert_eq!(interpret(200, br#"{"msg":"hello"}"#), text("hello"));
        assert_eq!(interpret(200, br#"{"type":"text","msg":"hi"}"#), text("hi"));
        assert_eq!(interpret(200, br#"{"type":"success"}"#), Ok(None));
        assert_eq!(interpret(200, br#"{"type":"success","msg":"x"}"#), Ok(None));
        assert_eq!(interpret(200, br#"{"type":"text","msg":""}"#), Ok(None));
        assert_eq!(interpret(200, br#"{"msg":""}"#), Ok(None));
        assert_eq!(interpret(200, br#"{"type":"none"}"#), Ok(None));
        assert_eq!(interpret(200, b" \n"), Ok(None));
        assert_eq!(
            interpret(500, br#"{"type":"text","msg":"from 500"}"#),
            text("from 500")
        );
        assert_eq!(interpret(200, b"{\"msg\":\"a\"} trailing"), text("a"));
        assert_eq!(
            interpret(200, br#"{"type":"video","msg":"M","title":"T","desc":"D"}"#),
            Ok(Some(Reply::Video {
                media_id: "M".into(),
                title: "T".into(),
                description: "D".into()
            }))
        );
        assert_eq!(
            interpret(200, br#"{"type":"image","msg":"MEDIA"}"#),
            Ok(Some(Reply::Image {
                media_id: "MEDIA".into()
            }))
        );
        assert_eq!(
            interpret(
                200,
                br#"{"type":"news","articles":[{"title":"t","picurl":"p","url":"u"}]}"#
            ),
            Ok(Some(Reply::News {
                articles: vec![Article {
                    title: "t".into(),
                    description: String::new(),
                    pic_url: "p".into(),
                    url: "u".into()
                }]
            }))
        );
        for failure in [
            &br#"{"type":"bogus","msg":"x"}"#[..],
            br#"{"type":7,"msg":"x"}"#,
            br#"{"type":"text","msg":5}"#,
            br#"{"type":"text"}"#,
            br#"{"type":"image","msg":""}"#,
            br#"{"type":"video","msg":"M","title":1}"#,
            b"<html>",
            b"[1]",
            b"null",
            br#"{"type":"music","msg":{"title":"t"}}"#,
        ] {
            assert!(
                interpret(200, failure).is_err(),
                "{}",
                String::from_utf8_lossy(failure)
            );
        }
        assert!(interpret(404, b"404 page not found").is_err());
        assert!(interpret(500, b"").is_err());
    }
}
