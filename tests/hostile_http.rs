//! Issue 11's HTTP-level findings, through a real nginx with the shipped snippet:
//! - 7: GET verification honours `timestamp_window`, echoes only a short token, and every
//!   response carries `X-Content-Type-Options: nosniff`;
//! - 8: values from a message reach the log escaped (no control bytes, no forged fields);
//! - 10: a body that is not a user message (no MsgType/FromUserName/ToUserName) is refused 400;
//! - 11: nginx's access log, with the shipped `log_format`, never records the query (openid).

pub mod common;
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

/// A flood of refusals (here 300 forged signatures and 300 stale timestamps) is answered
/// request by request, but logs only the first few lines of each reason a minute; genuine
/// requests meanwhile are logged as always.
#[test]
fn a_flood_of_refusals_logs_a_few_lines_per_reason() {
    let r = Responder::start(&echo_config(""));
    let nginx = Nginx::start(&r.socket, true);
    let forged = "/weixin?signature=0000000000000000000000000000000000000000&timestamp=1&nonce=n";
    let stale = {
        let ts = (now() - 3600).to_string();
        let sig = sign(&[TOKEN, &ts, "n0nce"]);
        format!("/weixin?signature={sig}&timestamp={ts}&nonce=n0nce")
    };
    let body = text_message("hi");
    for i in 0..300 {
        assert_eq!(nginx.request("POST", forged, body.as_bytes()).status, 403);
        assert_eq!(nginx.request("POST", &stale, body.as_bytes()).status, 403);
        if i % 100 == 0 {
            let ok = nginx.request(
                "POST",
                &format!("/weixin?{}", signed_query(TOKEN)),
                text_message(&format!("ok {i}")).as_bytes(),
            );
            assert_eq!(ok.status, 200);
        }
    }
    let log = r.stderr();
    let lines_with = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let refused = lines_with("refused account=");
    assert_eq!(refused, 10, "5 lines per reason, 2 reasons:\n{log}");
    assert_eq!(lines_with("reason=\"signature mismatch\""), 5, "{log}");
    assert_eq!(lines_with("outcome=reply status=200"), 3, "{log}");
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

/// Finding 2: in plaintext mode the signature does not cover the body. One signed query may
/// carry its own body again (a WeChat retry), never another one.
#[test]
fn a_signature_is_good_for_one_body_only() {
    let r = Responder::start(&echo_config(""));
    let nginx = Nginx::start(&r.socket, true);
    let query = format!("/weixin?{}", signed_query(TOKEN));
    let genuine = text_message("hello");
    let first = nginx.request("POST", &query, genuine.as_bytes());
    assert_eq!(
        xml_field(&first.text(), "Content").as_deref(),
        Some("You said: hello")
    );
    let forged = genuine
        .replace("[oUser]", "[oVictim]")
        .replace("hello", "transfer all my points");
    let refused = nginx.request("POST", &query, forged.as_bytes());
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.text(), "signature reused with another body\n");
    let retry = nginx.request("POST", &query, genuine.as_bytes());
    assert_eq!(retry.status, 200, "a WeChat retry is answered");
    assert_eq!(
        xml_field(&retry.text(), "Content").as_deref(),
        Some("You said: hello")
    );
    assert!(wait_for(Duration::from_secs(2), || r
        .stderr()
        .contains("reason=\"signature reused with another body\"")));
}

/// Finding 2, last part: an identical safe-mode request (valid in every byte) replayed after
/// `dedup_seconds` but inside the timestamp window must not reach a `forward` backend again.
#[test]
fn an_identical_request_reaches_the_backend_once() {
    use common::fake_http::Fake;
    use weixin_fcgi::wechat::crypto::{self, AesKey};
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APP_ID: &str = "wxb11529c136998cb6";
    let backend = Fake::simple(|_path, _body| {
        (
            200,
            r#"{"type":"text","msg":"from the backend"}"#.to_string(),
        )
    });
    let config = format!(
        "dedup_seconds = 2\n\n[[account]]\nname = \"safe\"\npath = \"/weixin\"\ntoken = \"{TOKEN}\"\n\
         app_id = \"{APP_ID}\"\naes_key = \"{AES}\"\n\n[[account.rule]]\n\
         reply = {{ type = \"forward\", url = \"http://127.0.0.1:{}/wx\" }}\n",
        backend.port
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let key = AesKey::from_encoding_aes_key(AES).expect("key");
    let mut b64 = Vec::new();
    crypto::encrypt(&key, APP_ID, text_message("pay").as_bytes(), &mut b64).expect("encrypt");
    let b64 = String::from_utf8(b64).expect("base64");
    let ts = now().to_string();
    let nonce = "918273";
    let query = format!(
        "/weixin?signature={}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={}",
        sign(&[TOKEN, &ts, nonce]),
        sign(&[TOKEN, &ts, nonce, &b64])
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{b64}]]></Encrypt></xml>"
    );
    let first = nginx.request("POST", &query, body.as_bytes());
    assert_eq!(first.status, 200, "{}", r.stderr());
    assert!(xml_field(&first.text(), "Encrypt").is_some());
    let retry = nginx.request("POST", &query, body.as_bytes());
    assert_eq!(retry.status, 200, "a retry within dedup_seconds");
    assert_eq!(backend.calls(), 1);
    std::thread::sleep(Duration::from_millis(2500));
    let replay = nginx.request("POST", &query, body.as_bytes());
    assert_eq!(replay.status, 403, "{}", replay.text());
    assert_eq!(replay.text(), "request replayed after the retry period\n");
    assert_eq!(backend.calls(), 1, "the backend saw the message once");
}
