//! `forward` and `exec` rules end to end: WeChat → real nginx → weixin-fcgi → a real HTTP
//! backend on loopback speaking the go-wx-gateway protocol (started by the test) or a program.

pub mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "fwdtoken";

/// A go-wx-gateway style backend. Paths (under any prefix):
/// `/ok/...` answers by message type; `/slow/...` after 3 s; `/hang/...` after 30 s;
/// `/garbage/...` 200 with HTML; `/none/...` 200 empty; `/err/...` 500.
struct Backend {
    fake: fake_http::Fake,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Backend {
    fn start() -> Backend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let fake = fake_http::Fake::simple(move |path, body| {
            s.lock()
                .expect("seen")
                .push((path.to_string(), body.to_string()));
            answer(path, body)
        });
        Backend { fake, seen }
    }

    fn url(&self, prefix: &str) -> String {
        format!("http://127.0.0.1:{}/{prefix}", self.fake.port)
    }

    fn calls(&self) -> usize {
        self.fake.calls()
    }
}

/// The backend's answer to `path` with `body` (see [`Backend`]).
fn answer(path: &str, body: &str) -> (u16, String) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if path.starts_with("/sns/oauth2/access_token?") {
        let expected = "appid=wxapp&secret=s3cret%2Bx&code=CODE1&grant_type=authorization_code";
        if path.ends_with(expected) {
            (200, r#"{"access_token":"AT","expires_in":7200,"openid":"oOAuthUser","scope":"snsapi_base"}"#.to_string())
        } else {
            (
                200,
                r#"{"errcode":40029,"errmsg":"invalid code"}"#.to_string(),
            )
        }
    } else if path == "/menu" {
        let (open_id, state) = (
            json["openId"].as_str().unwrap_or(""),
            json["state"].as_str().unwrap_or(""),
        );
        let app_id = json["appId"].as_str().unwrap_or("");
        if state == "go" {
            (200, serde_json::json!({"h": {"Set-Cookie": "sid=1"}, "r": format!("http://example.com/p?u={open_id}"), "c": ""}).to_string())
        } else {
            (200, serde_json::json!({"h": {}, "r": "", "c": format!("<p>{app_id} {open_id} {state}</p>")}).to_string())
        }
    } else if path.starts_with("/ok/msg/text") {
        let content = json["Content"].as_str().unwrap_or("");
        (
            200,
            serde_json::json!({"type": "text", "msg": format!("echo: {content}")}).to_string(),
        )
    } else if path.starts_with("/ok/msg/image") {
        (200, r#"{"type":"image","msg":"MEDIA_1"}"#.to_string())
    } else if path.starts_with("/ok/event/subscribe") {
        (
            200,
            r#"{"type":"news","articles":[{"title":"Hello","description":"d","picurl":"http://p/1.png","url":"http://u/1"}]}"#
                .to_string(),
        )
    } else if path.starts_with("/slow/") {
        fake_http::sleep(Duration::from_secs(3));
        (200, r#"{"type":"text","msg":"slow answer"}"#.to_string())
    } else if path.starts_with("/hang/") {
        fake_http::sleep(Duration::from_secs(30));
        (200, r#"{"type":"text","msg":"too late"}"#.to_string())
    } else if path.starts_with("/garbage/") {
        (200, "<html>not json</html>".to_string())
    } else if path.starts_with("/none/") {
        (200, String::new())
    } else {
        (500, "oops".to_string())
    }
}

/// A text message with its own MsgId (the de-duplication key).
fn text(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now(),
        content.replace("]]>", "]]]]><![CDATA[>")
    )
}

fn post(nginx: &Nginx, body: &str) -> HttpResponse {
    nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        body.as_bytes(),
    )
}

fn content_of(resp: &HttpResponse) -> Option<String> {
    xml_field(&resp.text(), "Content")
}

fn next_id() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(1);
    7_000_000_000 + N.fetch_add(1, Ordering::SeqCst) as u64
}

#[test]
fn forward_answers_text_image_and_news_per_go_wx_gateway() {
    let backend = Backend::start();
    let config = config_with_rules(
        TOKEN,
        &format!(
            "[[account.rule]]\nreply = {{ type = \"forward\", url = \"{}\", timeout_ms = 3000 }}\n",
            backend.url("ok")
        ),
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);

    let resp = post(&nginx, &text("hi 你好 ]]> <b>", next_id()));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), r.stderr());
    assert_eq!(content_of(&resp).as_deref(), Some("echo: hi 你好 ]]> <b>"));
    assert_eq!(
        xml_field(&resp.text(), "ToUserName").as_deref(),
        Some("oUser")
    );
    {
        let seen = backend.seen.lock().expect("seen");
        let (path, body) = &seen[0];
        assert_eq!(path, "/ok/msg/text");
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(v["CreateTime"].is_u64(), "CreateTime is a number: {body}");
        assert!(v["MsgId"].is_string(), "MsgId is a string: {body}");
        assert_eq!(v["FromUserName"], "oUser");
        assert_eq!(v["ToUserName"], "gh_test");
    }

    let image = format!(
        "<xml><ToUserName>gh_test</ToUserName><FromUserName>oUser</FromUserName><CreateTime>{}</CreateTime>\
         <MsgType>image</MsgType><PicUrl>http://x/y.jpg</PicUrl><MediaId>m1</MediaId><MsgId>{}</MsgId></xml>",
        now(),
        next_id()
    );
    let resp = post(&nginx, &image);
    assert_eq!(xml_field(&resp.text(), "MsgType").as_deref(), Some("image"));
    assert_eq!(
        xml_field(&resp.text(), "MediaId").as_deref(),
        Some("MEDIA_1")
    );

    let resp = post(&nginx, &event_message("subscribe", None));
    let xml = resp.text();
    assert_eq!(xml_field(&xml, "MsgType").as_deref(), Some("news"), "{xml}");
    assert_eq!(xml_field(&xml, "Title").as_deref(), Some("Hello"));
    assert_eq!(xml_field(&xml, "PicUrl").as_deref(), Some("http://p/1.png"));
    assert_eq!(backend.calls(), 3);
}

#[test]
fn backend_failures_answer_the_fallback_and_log_the_reason() {
    let backend = Backend::start();
    let closed = format!("http://127.0.0.1:{}/x", free_port());
    let rule = |content: &str, url: &str, extra: &str| {
        format!(
            "[[account.rule]]\nname = \"{content}\"\ncontent = \"{content}\"\n\
             reply = {{ type = \"forward\", url = \"{url}\", timeout_ms = 500{extra} }}\n"
        )
    };
    let fb = ", fallback = { type = \"text\", content = \"sorry {Content}\" }";
    let mut rules = String::new();
    rules += &rule("garbage", &backend.url("garbage"), fb);
    rules += &rule("err", &backend.url("err"), fb);
    rules += &rule("slow", &backend.url("slow"), fb);
    rules += &rule("refused", &closed, fb);
    rules += &rule("nofallback", &backend.url("garbage"), "");
    rules += &rule("none", &backend.url("none"), fb);
    let r = Responder::start(&config_with_rules(TOKEN, &rules));
    let nginx = Nginx::start(&r.socket, true);

    for case in ["garbage", "err", "slow", "refused"] {
        let started = Instant::now();
        let resp = post(&nginx, &text(case, next_id()));
        assert_eq!(resp.status, 200);
        assert_eq!(
            content_of(&resp),
            Some(format!("sorry {case}")),
            "{case}: {}",
            r.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case} took too long"
        );
    }
    for case in ["nofallback", "none"] {
        let resp = post(&nginx, &text(case, next_id()));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"success", "{case}");
    }
    assert!(wait_for(Duration::from_secs(2), || r.stderr().contains(
        "rule=refused result=fallback reason=\"connection refused\""
    )));
    let log = r.stderr();
    for needle in [
        "rule=garbage result=fallback reason=\"answer is not JSON",
        "rule=err result=fallback reason=\"backend answered HTTP 500: answer is not JSON",
        "rule=slow result=fallback reason=\"timeout\"",
    ] {
        assert!(log.contains(needle), "missing {needle:?} in log:\n{log}");
    }
}

#[test]
fn retries_wait_for_the_first_attempt_and_the_backend_is_called_once() {
    let backend = Backend::start();
    let config = config_with_rules(
        TOKEN,
        &format!(
            "[[account.rule]]\nreply = {{ type = \"forward\", url = \"{}\", timeout_ms = 5000, \
             fallback = {{ type = \"text\", content = \"fallback\" }} }}\n",
            backend.url("slow")
        ),
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let port = nginx.port;
    // WeChat retries every 5 s; here every second, with a backend needing 3 s.
    let message = text("retry me", next_id());
    let started = Instant::now();
    let mut attempts = Vec::new();
    for i in 0..5u64 {
        let message = message.clone();
        attempts.push(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1000 * i));
            let sent = Instant::now();
            let resp = try_http(
                port,
                "POST",
                &format!("/weixin?{}", signed_query(TOKEN)),
                message.as_bytes(),
            );
            (i, sent.elapsed(), resp)
        }));
    }
    for a in attempts {
        let (i, took, resp) = a.join().expect("attempt thread");
        let resp = resp.expect("HTTP");
        println!("attempt {i}: {} ms", took.as_millis());
        assert_eq!(resp.status, 200);
        assert_eq!(
            content_of(&resp).as_deref(),
            Some("slow answer"),
            "attempt {i}: {}",
            r.stderr()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(backend.calls(), 1, "the backend sees the message once");
    let log = r.stderr();
    assert!(log.contains("result=duplicate-waiting"), "{log}");
    assert!(log.contains("result=duplicate-answered"), "{log}");
}

#[test]
fn hanging_backend_does_not_slow_static_rules_and_extra_forwards_fall_back_at_once() {
    let backend = Backend::start();
    let rules = format!(
        "[[account.rule]]\nname = \"static\"\ncontent = \"static\"\nreply = {{ type = \"text\", content = \"static ok\" }}\n\n\
         [[account.rule]]\nname = \"hang\"\nreply = {{ type = \"forward\", url = \"{}\", timeout_ms = 9000, \
         fallback = {{ type = \"text\", content = \"busy\" }} }}\n",
        backend.url("hang")
    );
    let config = format!("forward_slots = 2\n{}", config_with_rules(TOKEN, &rules));
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let port = nginx.port;
    // Fill both slots (nginx gives up after 5 s; the slots stay stuck until 9 s).
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let m = text("hang", next_id());
        stuck.push(std::thread::spawn(move || {
            try_http(
                port,
                "POST",
                &format!("/weixin?{}", signed_query(TOKEN)),
                m.as_bytes(),
            )
        }));
    }
    assert!(wait_for(Duration::from_secs(3), || backend.calls() == 2));

    let started = Instant::now();
    let resp = post(&nginx, &text("hang", next_id()));
    let beyond = started.elapsed();
    assert_eq!(content_of(&resp).as_deref(), Some("busy"));
    assert!(
        beyond < Duration::from_millis(500),
        "fallback took {beyond:?}"
    );

    let mut times = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let resp = post(&nginx, &text("static", 100 + i));
        times.push(started.elapsed());
        assert_eq!(content_of(&resp).as_deref(), Some("static ok"));
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "static rule latency with all forward slots stuck: p50 {} us, max {} us; beyond-slots fallback {} us",
        p50.as_micros(),
        max.as_micros(),
        beyond.as_micros()
    );
    assert!(max < Duration::from_millis(500), "max {max:?}");
    assert_eq!(backend.calls(), 2, "no third call while the slots are full");
    drop(stuck);
}

#[test]
fn exec_runs_a_program_with_fields_in_env_and_content_on_stdin() {
    let rules = r#"
[[account.rule]]
name = "fails"
content = "fail"
reply = { type = "exec", command = ["/bin/sh", "-c", "exit 2"], fallback = { type = "text", content = "exec failed" } }

[[account.rule]]
name = "slow"
content = "slow"
reply = { type = "exec", command = ["/bin/sleep", "10"], timeout_ms = 300, fallback = { type = "text", content = "exec slow" } }

[[account.rule]]
name = "bot"
reply = { type = "exec", command = ["/bin/sh", "-c", "read line; printf '%s said %s (%s)\n\n' \"$WX_FromUserName\" \"$line\" \"$WX_MsgType\""], timeout_ms = 3000, max_output = 200 }
"#;
    let r = Responder::start(&config_with_rules(TOKEN, rules));
    let nginx = Nginx::start(&r.socket, true);
    let resp = post(&nginx, &text("$(id) `x` ; hi", next_id()));
    assert_eq!(
        content_of(&resp).as_deref(),
        Some("oUser said $(id) `x` ; hi (text)"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        content_of(&post(&nginx, &text("fail", next_id()))).as_deref(),
        Some("exec failed")
    );
    let started = Instant::now();
    assert_eq!(
        content_of(&post(&nginx, &text("slow", next_id()))).as_deref(),
        Some("exec slow")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn config_refuses_public_or_https_forward_urls_with_the_line() {
    for (url, needle) in [
        ("http://8.8.8.8/x", "not a loopback or private"),
        ("https://127.0.0.1/x", "must start with http://"),
    ] {
        let text = config_with_rules(
            TOKEN,
            &format!("[[account.rule]]\nreply = {{ type = \"forward\", url = \"{url}\" }}\n"),
        );
        let e = weixin_fcgi::config::Config::parse(&text, "t.toml").expect_err("refused");
        let s = e.to_string();
        assert!(s.contains(needle) && s.contains("t.toml:10:"), "{s}");
    }
}

#[test]
fn safe_mode_forward_reply_is_encrypted_like_a_template_reply() {
    use weixin_fcgi::wechat::crypto::{self, AesKey};
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APP_ID: &str = "wxb11529c136998cb6";
    let backend = Backend::start();
    let config = format!(
        "[[account]]\nname = \"safe\"\npath = \"/weixin\"\ntoken = \"{TOKEN}\"\napp_id = \"{APP_ID}\"\n\
         aes_key = \"{AES}\"\n\n[[account.rule]]\nreply = {{ type = \"forward\", url = \"{}\" }}\n",
        backend.url("ok")
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let key = AesKey::from_encoding_aes_key(AES).expect("key");
    let mut b64 = Vec::new();
    crypto::encrypt(
        &key,
        APP_ID,
        text("secret hi", next_id()).as_bytes(),
        &mut b64,
    )
    .expect("encrypt");
    let b64 = String::from_utf8(b64).expect("base64");
    let ts = now().to_string();
    let nonce = "4242";
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={}",
        sign(&[TOKEN, &ts, nonce]),
        sign(&[TOKEN, &ts, nonce, &b64])
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{b64}]]></Encrypt></xml>"
    );
    let resp = nginx.request("POST", &format!("/weixin?{query}"), body.as_bytes());
    assert_eq!(resp.status, 200, "{}", r.stderr());
    let xml = resp.text();
    let enc = xml_field(&xml, "Encrypt").expect("encrypted reply");
    let (rts, rnonce) = (
        xml_field(&xml, "TimeStamp").expect("TimeStamp"),
        xml_field(&xml, "Nonce").expect("Nonce"),
    );
    assert_eq!(
        xml_field(&xml, "MsgSignature"),
        Some(sign(&[TOKEN, &rts, &rnonce, &enc]))
    );
    let mut scratch = Vec::new();
    let plain =
        crypto::decrypt(&key, APP_ID, enc.as_bytes(), 65536, &mut scratch).expect("decrypt");
    let plain = String::from_utf8_lossy(plain).to_string();
    assert_eq!(
        xml_field(&plain, "Content").as_deref(),
        Some("echo: secret hi"),
        "{plain}"
    );
}

#[test]
fn menu_oauth_exchanges_the_code_and_follows_the_menu_handler() {
    let api = Backend::start();
    let account_keys = format!(
        "app_id = \"wxapp\"\napp_secret = \"s3cret+x\"\nredirect_path = \"/wxoauth\"\nmenu_handler = \"http://127.0.0.1:{}/menu\"\n",
        api.fake.port
    );
    let config = format!(
        "oauth_api_base = \"http://127.0.0.1:{}\"\n{}",
        api.fake.port,
        config_with_rules(TOKEN, &account_keys)
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start_with(
        &r.socket,
        true,
        "location = /wxoauth { limit_except GET { deny all; } include fastcgi_params; \
         fastcgi_pass weixin_fcgi; fastcgi_keep_conn on; fastcgi_read_timeout 15s; }",
    );
    let page = nginx.request("GET", "/wxoauth?code=CODE1&state=hello", b"");
    assert_eq!(page.status, 200, "{}\n{}", page.text(), r.stderr());
    assert_eq!(page.text(), "<p>wxapp oOAuthUser hello</p>");
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );

    let go = nginx.request("GET", "/wxoauth?code=CODE1&state=go", b"");
    assert_eq!(go.status, 302, "{}", r.stderr());
    assert_eq!(
        go.header("Location"),
        Some("http://example.com/p?u=oOAuthUser")
    );
    assert_eq!(go.header("Set-Cookie"), Some("sid=1"));

    let bad = nginx.request("GET", "/wxoauth?code=WRONG&state=x", b"");
    assert_eq!(bad.status, 502);
    let missing = nginx.request("GET", "/wxoauth?state=x", b"");
    assert_eq!(missing.status, 400);
    assert!(wait_for(Duration::from_secs(2), || r
        .stderr()
        .contains("errcode 40029")));
    assert!(
        !r.stderr().contains("s3cret"),
        "the AppSecret is never logged"
    );
}
