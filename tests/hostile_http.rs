//! Issue 11's HTTP-level findings, through a real nginx with the shipped snippet:
//! - 7: GET verification honours `timestamp_window`, echoes only a short token, and every
//!   response carries `X-Content-Type-Options: nosniff`;
//! - 8: values from a message reach the log escaped (no control bytes, no forged fields);
//! - 10: a body that is not a user message (no MsgType/FromUserName/ToUserName) is refused 400;
//! - 11: nginx's access log, with the shipped `log_format`, never records the query (openid).

mod common;
use common::*;
use std::time::Duration;

const TOKEN: &str = "httptoken";

fn echo_config(top: &str) -> String {
    format!(
        "{top}\n{}",
        config_with_rules(
            TOKEN,
            "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\n\
             reply = { type = \"text\", content = \"You said: {Content}\" }\n\n\
             [[account.rule]]\nname = \"catch-all\"\nreply = { type = \"text\", content = \"hi {FromUserName}\" }\n"
        )
    )
}

fn verify_query(ts: u64, echostr: &str) -> String {
    let ts = ts.to_string();
    let sig = sign(&[TOKEN, &ts, "n0nce"]);
    format!("/weixin?signature={sig}&timestamp={ts}&nonce=n0nce&echostr={echostr}")
}

/// Finding 7.
#[test]
fn get_verification_is_fresh_echoes_tokens_only_and_nothing_is_sniffed() {
    let r = Responder::start(&echo_config(""));
    let nginx = Nginx::start(&r.socket, true);

    let good = nginx.request("GET", &verify_query(now(), "5837397520665436492"), b"");
    assert_eq!(good.status, 200);
    assert_eq!(good.body, b"5837397520665436492");
    assert_eq!(good.header("X-Content-Type-Options"), Some("nosniff"));

    // A triple signed 400 days ago (e.g. read from an old access log) is refused.
    let old = nginx.request(
        "GET",
        &verify_query(now() - 400 * 86_400, "5837397520665436492"),
        b"",
    );
    assert_eq!(old.status, 403, "{}", old.text());
    assert!(!old.text().contains("5837397520665436492"));

    // Markup is never reflected, whatever the signature.
    for hostile in [
        "%3Chtml%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "a%22b",
        "a%20b",
        "%E4%BD%A0",
        &"9".repeat(129),
        "",
    ] {
        let resp = nginx.request("GET", &verify_query(now(), hostile), b"");
        assert_eq!(resp.status, 400, "echostr {hostile:?}: {}", resp.text());
        assert!(!resp.text().contains("<script>"));
        assert_eq!(resp.header("X-Content-Type-Options"), Some("nosniff"));
    }
    for token in ["abc-DEF_1.2~", &"9".repeat(128)] {
        let resp = nginx.request("GET", &verify_query(now(), token), b"");
        assert_eq!((resp.status, resp.text()), (200, token.to_string()));
    }

    // nosniff on every kind of response: a reply, a refusal, a 404, a transport 413.
    let reply = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        text_message("hi").as_bytes(),
    );
    assert_eq!(reply.status, 200);
    let refused = nginx.request("POST", "/weixin?signature=x", text_message("hi").as_bytes());
    assert_eq!(refused.status, 403);
    for resp in [&reply, &refused] {
        assert_eq!(
            resp.header("X-Content-Type-Options"),
            Some("nosniff"),
            "{resp:?}"
        );
    }
    let big = weixin_fcgi::fastcgi::client::request(
        &mut std::os::unix::net::UnixStream::connect(&r.socket).expect("connect"),
        1,
        &[("REQUEST_METHOD", b"POST"), ("DOCUMENT_URI", b"/weixin")],
        &vec![b'x'; 70_000],
        false,
    )
    .expect("answered");
    assert_eq!(big.status, 413);
    assert_eq!(big.header("X-Content-Type-Options"), Some("nosniff"));
}

/// A text message whose MsgType, Event and FromUserName carry control characters and a forged
/// `status=… user=…`.
fn hostile_message() -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName>\
         <FromUserName><![CDATA[o\u{1b}[31mEvil user=deadbeef]]></FromUserName>\
         <CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[te\u{1b}xt status=200 user=deadbeef]]></MsgType>\
         <Event><![CDATA[a\u{7}b\u{b}c\u{c}d\u{2028}e\u{85}f]]></Event>\
         <Content><![CDATA[hi]]></Content></xml>",
        now()
    )
}

/// Finding 8.
#[test]
fn message_values_are_escaped_in_the_log() {
    let r = Responder::start(&echo_config("").replace("\"info\"", "\"debug\""));
    let nginx = Nginx::start(&r.socket, true);
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        hostile_message().as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(wait_for(Duration::from_secs(2), || r
        .stderr()
        .contains("request account=test")));
    let log = r.stderr();
    for bad in ['\u{1b}', '\u{7}', '\u{b}', '\u{c}', '\u{2028}', '\u{85}'] {
        assert!(!log.contains(bad), "raw {bad:?} in the log:\n{log:?}");
    }
    let request = log
        .lines()
        .find(|l| l.contains("request account=test"))
        .expect("request line");
    assert!(
        request.contains(r#"type="te\u{1b}xt status=200 user=deadbeef" event="a\u{7}b\u{b}c\u{c}d\u{2028}e\u{85}f" rule=catch-all"#),
        "{request}"
    );
    // Outside the quoted values, the only status= and user= are the responder's own.
    let fields = request.split(" rule=").nth(1).expect("rule=");
    assert_eq!(fields.matches(" status=").count(), 1, "{request}");
    assert_eq!(fields.matches(" user=").count(), 1, "{request}");
    let debug = log
        .lines()
        .find(|l| l.contains("message account=test"))
        .expect("debug line");
    assert!(
        debug.contains(r#"from="o\u{1b}[31mEvil user=deadbeef""#),
        "{debug}"
    );
}

/// Finding 10.
#[test]
fn bodies_that_are_not_user_messages_are_refused() {
    let r = Responder::start(&echo_config(""));
    let nginx = Nginx::start(&r.socket, true);
    let cases = [
        (
            "no MsgType",
            "<xml><Content>hi</Content></xml>",
            "without MsgType",
        ),
        (
            "no users",
            "<xml><MsgType>text</MsgType><Content>hi</Content></xml>",
            "without FromUserName or ToUserName",
        ),
        (
            "a payment notification",
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><appid>wx1</appid>\
             <out_trade_no>42</out_trade_no></xml>",
            "without MsgType",
        ),
        (
            "empty values",
            "<xml><ToUserName></ToUserName><FromUserName> </FromUserName><MsgType>text</MsgType>\
             <Content>hi</Content></xml>",
            "without FromUserName or ToUserName",
        ),
    ];
    for (what, body, reason) in cases {
        let resp = nginx.request(
            "POST",
            &format!("/weixin?{}", signed_query(TOKEN)),
            body.as_bytes(),
        );
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(resp.text().contains(reason), "{what}: {}", resp.text());
        assert!(!resp.text().contains("<ToUserName>"), "{what}");
    }
    let ok = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        text_message("hi").as_bytes(),
    );
    assert_eq!(
        xml_field(&ok.text(), "Content").as_deref(),
        Some("You said: hi")
    );
}

/// Finding 11: with the shipped snippet and log format, nginx's access log keeps the method,
/// path and status of each request, but never the query (openid, signature, echostr).
#[test]
fn nginx_access_log_never_records_the_query() {
    let r = Responder::start(&echo_config(""));
    let nginx = Nginx::start(&r.socket, true);
    let query = format!(
        "{}&openid=oSecretOpenId",
        signed_query(TOKEN).replace("&openid=oUser", "")
    );
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{query}"),
        text_message("hi").as_bytes(),
    );
    assert_eq!(resp.status, 200);
    let verify = nginx.request("GET", &verify_query(now(), "74653"), b"");
    assert_eq!(verify.status, 200);
    assert!(wait_for(Duration::from_secs(2), || nginx
        .access_log()
        .lines()
        .count()
        >= 2));
    let log = nginx.access_log();
    println!("nginx access log:\n{log}");
    assert!(log.contains("\"POST /weixin HTTP/1.1\" 200"), "{log}");
    assert!(log.contains("\"GET /weixin HTTP/1.1\" 200"), "{log}");
    for secret in ["oSecretOpenId", "openid", "signature", "74653", "?"] {
        assert!(
            !log.contains(secret),
            "{secret:?} in the access log:\n{log}"
        );
    }
}
