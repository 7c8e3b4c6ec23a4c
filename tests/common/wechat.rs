//! The WeChat side: signatures (computed independently of the project), messages as WeChat
//! sends them, configs, rule fixtures with their expected replies, and one-call requests.

use super::{repo, try_http, xml_field};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, as WeChat sends `timestamp`.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `hex(sha1(concat(sort(parts))))`, computed here with the `sha1` crate directly (not the
/// project's own function), so a sorting or hex bug in the project cannot cancel out.
pub fn sign(parts: &[&str]) -> String {
    use sha1::{Digest, Sha1};
    let mut v: Vec<&str> = parts.to_vec();
    v.sort();
    let mut h = Sha1::new();
    for p in v {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A query string WeChat would send for a POST to an account with `token`: a fresh nonce each
/// time, as WeChat's (the replay cache refuses a signature reused with another body).
pub fn signed_query(token: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ts = now().to_string();
    let nonce = format!(
        "{}{:06}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let sig = sign(&[token, &ts, &nonce]);
    format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser")
}

/// A text message from `oUser` to `gh_test` as WeChat sends it.
pub fn text_message(content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{}]]></Content><MsgId>1234567890123456</MsgId></xml>",
        now(),
        content.replace("]]>", "]]]]><![CDATA[>")
    )
}

/// An event message (`Event` = `event`, optional `EventKey`).
pub fn event_message(event: &str, key: Option<&str>) -> String {
    let key = key
        .map(|k| format!("<EventKey><![CDATA[{k}]]></EventKey>"))
        .unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event>{key}</xml>",
        now()
    )
}

/// A minimal config with one account at `/weixin` and the given rules appended.
pub fn config_with_rules(token: &str, rules: &str) -> String {
    format!(
        "workers = 2\nlog_level = \"info\"\n\n[[account]]\nname = \"test\"\npath = \"/weixin\"\n\
         token = \"{token}\"\n\n{rules}"
    )
}

/// A message from `tests/fixtures/messages/` (see its README), as WeChat sends it.
pub fn message_fixture(name: &str) -> String {
    let path = repo().join("tests/fixtures/messages").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `[[account.rule]]` tables of `tests/fixtures/rules/NAME` (see its README).
pub fn rules_fixture(name: &str) -> String {
    let path = repo().join("tests/fixtures/rules").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (fixture, expected reply Content) for `rules/all-types.toml`: every fixture in
/// `tests/fixtures/messages/`.
pub const ALL_TYPES_CASES: &[(&str, &str)] = &[
    ("text.xml", "text:this is a test|1234567890123456"),
    (
        "image.xml",
        "image:http://mmbiz.qpic.cn/pic.jpg|img_media_1",
    ),
    ("voice.xml", "voice:amr|腾讯微信团队|voice_media_1"),
    ("video.xml", "video:video_media_1|video_thumb_1"),
    ("shortvideo.xml", "shortvideo:short_media_1|short_thumb_1"),
    (
        "location.xml",
        "location:23.134521,113.358803|20|广州市天河区",
    ),
    (
        "link.xml",
        "link:公众平台官网链接|a description|https://mp.weixin.qq.com/x",
    ),
    (
        "event-subscribe-qrscene.xml",
        "subscribe:qrscene_123123|TICKET_SUB",
    ),
    ("event-unsubscribe.xml", "unsubscribe:oUser|"),
    ("event-scan.xml", "scan:123123|TICKET_SCAN"),
    (
        "event-location.xml",
        "location-event:23.137466,113.352425,119.385040",
    ),
    ("event-click.xml", "click:V1001_TODAY_MUSIC"),
    ("event-view.xml", "view:https://example.com/menu|208379533"),
    (
        "event-scancode-push.xml",
        "scancode_push:6|qrcode|push-result-1",
    ),
    (
        "event-scancode-waitmsg.xml",
        "scancode_waitmsg:7|barcode|EAN_13,6901234567892",
    ),
    ("event-pic-sysphoto.xml", "pic_sysphoto:p1|2|md5firstp1"),
    (
        "event-pic-photo-or-album.xml",
        "pic_photo_or_album:p2|2|md5firstp2",
    ),
    ("event-pic-weixin.xml", "pic_weixin:p3|2|md5firstp3"),
    (
        "event-location-select.xml",
        "location_select:6|23,113|15|广州市海珠区|Canton Tower",
    ),
    (
        "event-masssendjobfinish.xml",
        "mass:1000001625|sendsuccess|100|80|75|5",
    ),
    (
        "event-templatesendjobfinish.xml",
        "template:200163836|failed:user block",
    ),
    (
        "unknown-future.xml",
        "fallback:miniprogrampage|mini|pages/index?id=1|deep|.",
    ),
];

/// An image message with `pic_url` (for the `fields` rule of `rules/match.toml`).
pub fn image_message(pic_url: &str, media_id: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[image]]></MsgType>\
         <PicUrl><![CDATA[{pic_url}]]></PicUrl><MediaId><![CDATA[{media_id}]]></MediaId>\
         <MsgId>1234567890123499</MsgId></xml>",
        now()
    )
}

/// (what is checked, message body, expected reply Content or `None` for `success`) for
/// `rules/match.toml`.
pub fn match_cases() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("exact content", text_message("hello"), Some("exact")),
        (
            "first match wins over a later contains",
            text_message("hello"),
            Some("exact"),
        ),
        (
            "exact is not contains",
            text_message("hello world"),
            Some("second:hello world"),
        ),
        (
            "contains",
            text_message("what is the price?"),
            Some("contains:what is the price?"),
        ),
        (
            "contains wins (earlier) over a later contains",
            text_message("hello price"),
            Some("contains:hello price"),
        ),
        (
            "prefix",
            text_message("echo 回声"),
            Some("prefix:echo 回声"),
        ),
        ("prefix is not contains", text_message("say echo x"), None),
        (
            "event is case-insensitive",
            event_message("SUBSCRIBE", None),
            Some("event-ci:SUBSCRIBE"),
        ),
        (
            "event_key",
            event_message("CLICK", Some("K1")),
            Some("click-k1"),
        ),
        (
            "other event_key falls to the next rule",
            event_message("CLICK", Some("K2")),
            Some("click-any:K2"),
        ),
        (
            "fields",
            image_message("http://x/a.jpg", "m1"),
            Some("fields:m1"),
        ),
        (
            "fields must all match",
            image_message("http://x/b.jpg", "m2"),
            None,
        ),
        ("no reply rule", text_message("quiet"), None),
        ("no rule matched", text_message("nothing"), None),
        (
            "no rule matched (event)",
            event_message("VIEW", Some("https://x")),
            None,
        ),
    ]
}

/// A config with top-level settings `top`, one account `test` at `/weixin` with `token`
/// (plus `account_extra` lines) and `rules`.
pub fn config_toml(top: &str, token: &str, account_extra: &str, rules: &str) -> String {
    format!(
        "log_level = \"info\"\n{top}\n\n[[account]]\nname = \"test\"\npath = \"/weixin\"\n\
         token = \"{token}\"\n{account_extra}\n\n{rules}"
    )
}

/// A message triggering each rule of `rules/reply.toml`.
pub fn reply_triggers() -> Vec<String> {
    let mut v: Vec<String> = [
        "r-text",
        "r-image",
        "r-voice",
        "r-video",
        "r-music",
        "r-music-min",
        "r-news",
        "r-kf",
        "r-kf-acct",
        "r-none",
        "unmatched",
    ]
    .iter()
    .map(|c| text_message(c))
    .collect();
    v.push(event_message("CLICK", Some("NEWS3")));
    v.push(event_message("CLICK", Some("NEWS9")));
    v
}
/// One signed text message straight to the responder over FastCGI (no nginx), returning the
/// reply's `Content`.
pub fn fcgi_text(socket: &Path, token: &str, content: &str) -> std::io::Result<(u16, String)> {
    use weixin_fcgi::fastcgi::client;
    let mut conn = client::Connection::connect(
        socket.to_str().expect("utf-8 path"),
        Duration::from_secs(10),
    )?;
    let query = signed_query(token);
    let body = text_message(content);
    let len = body.len().to_string();
    let params: Vec<(&str, &[u8])> = vec![
        ("REQUEST_METHOD", b"POST"),
        ("DOCUMENT_URI", b"/weixin"),
        ("SCRIPT_NAME", b"/weixin"),
        ("REQUEST_URI", b"/weixin"),
        ("QUERY_STRING", query.as_bytes()),
        ("CONTENT_TYPE", b"text/xml"),
        ("CONTENT_LENGTH", len.as_bytes()),
    ];
    let resp = client::request(&mut conn, 1, &params, body.as_bytes(), false)?;
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    Ok((resp.status, xml_field(&text, "Content").unwrap_or(text)))
}

/// A signed text message through nginx; `Ok(Content)` only for a 200 with a reply.
pub fn nginx_text(port: u16, token: &str, content: &str) -> Result<String, String> {
    let resp = try_http(
        port,
        "POST",
        &format!("/weixin?{}", signed_query(token)),
        text_message(content).as_bytes(),
    )
    .map_err(|e| format!("transport: {e}"))?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    xml_field(&resp.text(), "Content").ok_or_else(|| format!("no Content in {}", resp.text()))
}

/// A config whose one rule answers every text with `"{prefix}: {Content}"`; `top` goes before
/// the account (e.g. `idle_exit = 1`).
pub fn prefix_config(token: &str, prefix: &str, top: &str) -> String {
    format!(
        "{top}\n{}",
        config_with_rules(
            token,
            &format!(
                "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\n\
                 reply = {{ type = \"text\", content = \"{prefix}: {{Content}}\" }}\n"
            ),
        )
    )
}
