//! Menu OAuth under attack (issue 11, findings 1 and 5), through a real nginx with the shipped
//! `nginx/weixin-oauth.conf`, a fake WeChat API and menu handler, and a `forward` backend, all
//! on loopback.
//!
//! - Finding 1: unsigned OAuth GETs flooding the redirect path must not starve message handling
//!   (every genuine signed message for a `forward` rule is answered by the backend), outbound
//!   OAuth calls are rate-limited per account, excess GETs are refused at once (429/503), and
//!   refusals are logged as throttled summaries rather than one line each.
//! - Finding 5: menu-handler headers whose names are not HTTP tokens are dropped.
//!
//! Every flood is bounded in time and threads.

pub mod common;
use common::fake_http::Fake;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "oauthtoken";

/// The WeChat API: every code is good; answers after `delay`.
fn wechat_api(delay: Duration) -> Fake {
    Fake::simple(move |_path, _body| {
        fake_http::sleep(delay);
        (
            200,
            r#"{"access_token":"AT","expires_in":7200,"openid":"oOAuthUser","scope":"snsapi_base"}"#
                .to_string(),
        )
    })
}

/// The menu handler answers `page` for every user.
fn menu_handler(page: serde_json::Value) -> Fake {
    Fake::simple(move |_path, _body| (200, page.to_string()))
}

/// A `forward` backend echoing text messages.
fn echo_backend() -> Fake {
    Fake::simple(|_path, body| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let content = v["Content"].as_str().unwrap_or("");
        (
            200,
            serde_json::json!({"type": "text", "msg": format!("echo: {content}")}).to_string(),
        )
    })
}

/// One account at /weixin with a `forward` rule (fallback "fallback") and menu OAuth at
/// /wxoauth; `top` adds global settings.
fn config(api: &Fake, menu: &Fake, backend: &Fake, top: &str) -> String {
    let account = format!(
        "app_id = \"wxapp\"\napp_secret = \"s3cret\"\nredirect_path = \"/wxoauth\"\n\
         menu_handler = \"http://127.0.0.1:{}/menu\"\n\n[[account.rule]]\nname = \"bot\"\n\
         reply = {{ type = \"forward\", url = \"http://127.0.0.1:{}/wx\", timeout_ms = 3000, \
         fallback = {{ type = \"text\", content = \"fallback\" }} }}\n",
        menu.port, backend.port
    );
    format!(
        "oauth_api_base = \"http://127.0.0.1:{}\"\n{top}\n{}",
        api.port,
        config_with_rules(TOKEN, &account)
    )
}

/// nginx with the shipped snippets, `weixin.conf` and `weixin-oauth.conf`.
fn nginx_for(r: &Responder) -> Nginx {
    Nginx::start_with_snippets(&r.socket, true, "", &["weixin-oauth.conf"])
}

fn text(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now()
    )
}

/// `clients` threads GET the redirect path with fresh codes until `stop`; returns the count
/// per status (0 = transport error).
fn flood(
    port: u16,
    clients: usize,
    stop: &Arc<AtomicBool>,
    limit: Duration,
) -> Vec<std::thread::JoinHandle<BTreeMap<u16, usize>>> {
    (0..clients)
        .map(|c| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut seen = BTreeMap::new();
                let started = Instant::now();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    i += 1;
                    let path = format!("/wxoauth?code=C{c}x{i}&state=s");
                    let status = try_http(port, "GET", &path, b"").map_or(0, |r| r.status);
                    *seen.entry(status).or_insert(0) += 1;
                }
                seen
            })
        })
        .collect()
}

fn merge(floods: Vec<std::thread::JoinHandle<BTreeMap<u16, usize>>>) -> BTreeMap<u16, usize> {
    let mut all = BTreeMap::new();
    for f in floods {
        for (k, v) in f.join().expect("flood thread") {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

/// Finding 1 with a slow WeChat API (3 s per call): 32 clients flood the OAuth path for 6 s
/// while 49 genuine signed messages go to a `forward` rule. Every one of them must be answered
/// by the backend, not by the fallback.
#[test]
fn oauth_flood_does_not_starve_forward_rules() {
    let api = wechat_api(Duration::from_secs(3));
    let menu = menu_handler(serde_json::json!({"h": {}, "r": "", "c": "<p>menu</p>"}));
    let backend = echo_backend();
    let r = Responder::start(&config(&api, &menu, &backend, ""));
    let nginx = nginx_for(&r);

    let stop = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let floods = flood(nginx.port, 32, &stop, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = 0;
    let mut fallback = 0;
    let mut other = Vec::new();
    let started = Instant::now();
    for i in 0..49u64 {
        let resp = nginx.request(
            "POST",
            &format!("/weixin?{}", signed_query(TOKEN)),
            text(&format!("m{i}"), 8_100_000_000 + i).as_bytes(),
        );
        match xml_field(&resp.text(), "Content").as_deref() {
            Some(c) if c == format!("echo: m{i}") => answered += 1,
            Some("fallback") => fallback += 1,
            _ => other.push((resp.status, resp.text())),
        }
        std::thread::sleep(Duration::from_millis(110));
    }
    let flood_for = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let statuses = merge(floods);
    let oauth_calls = api.calls();
    let since_flood = flood_started.elapsed();
    println!(
        "oauth flood (32 clients, WeChat API 3 s): genuine forwards answered by the backend \
         {answered}/49, fallback {fallback}, other {}; in {:.1} s the flood's GETs got {statuses:?}; \
         outbound access_token calls {oauth_calls}",
        other.len(),
        flood_for.as_secs_f64()
    );
    assert_eq!(
        answered,
        49,
        "fallback {fallback}, other {other:?}\n{}",
        r.stderr()
    );
    assert_eq!(backend.calls(), 49);
    assert!(
        statuses.get(&429).copied().unwrap_or(0) + statuses.get(&503).copied().unwrap_or(0) > 0,
        "excess GETs are refused: {statuses:?}"
    );
    // 2 OAuth slots, 3 s per call: at most 2 calls started per 3 s.
    let bound = 2 * (since_flood.as_secs() as usize / 3 + 1);
    assert!(oauth_calls <= bound, "{oauth_calls} calls > {bound}");
}

/// Finding 1 with a fast WeChat API: outbound calls are bounded by the token bucket
/// (`oauth_rate`), excess GETs get 429 at once, and the log gets a summary, not a line each.
#[test]
fn oauth_calls_are_rate_limited_and_refusals_logged_once_per_interval() {
    let api = wechat_api(Duration::ZERO);
    let menu = menu_handler(serde_json::json!({"h": {}, "r": "", "c": "<p>menu</p>"}));
    let backend = echo_backend();
    let r = Responder::start(&config(&api, &menu, &backend, "oauth_rate = 5"));
    let nginx = nginx_for(&r);
    // A GET that is not refused works as before.
    let page = nginx.request("GET", "/wxoauth?code=FIRST&state=s", b"");
    assert_eq!(page.status, 200, "{}\n{}", page.text(), r.stderr());
    assert_eq!(page.text(), "<p>menu</p>");
    // A code that cannot be WeChat's costs no outbound call.
    let calls = api.calls();
    let bad = nginx.request("GET", "/wxoauth?code=%3Cscript%3E&state=s", b"");
    assert_eq!(bad.status, 400);
    assert_eq!(api.calls(), calls);

    let log_before = r.stderr().lines().count();
    let calls_before = api.calls();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let floods = flood(nginx.port, 16, &stop, Duration::from_secs(3));
    let statuses = merge(floods);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let calls = api.calls() - calls_before;
    let log_lines = r.stderr().lines().count() - log_before;
    let gets: usize = statuses.values().sum();
    let refused = statuses.get(&429).copied().unwrap_or(0);
    println!(
        "oauth flood (16 clients, fast API, oauth_rate = 5) for {:.1} s: {gets} GETs, \
         statuses {statuses:?}, outbound access_token calls {calls}, log lines {log_lines}",
        took.as_secs_f64()
    );
    // Burst 5 (already partly used above) + 5 per second.
    let bound = 5 + 5 * (took.as_secs_f64().ceil() as usize);
    assert!(calls <= bound, "{calls} outbound calls > {bound}");
    assert!(
        refused > gets / 2,
        "most GETs refused with 429: {statuses:?}"
    );
    // Two lines per admitted GET (the request and its outcome), a few summaries.
    assert!(
        log_lines <= 2 * calls + 10,
        "{log_lines} log lines for {calls} admitted GETs:\n{}",
        r.stderr()
    );
    let log = r.stderr();
    assert!(
        log.contains("oauth account=test result=refused reason=\"over oauth_rate\" count="),
        "{log}"
    );
    // Refusals are fast: a refused GET never waits on the API.
    let t = Instant::now();
    let again = nginx.request("GET", "/wxoauth?code=AGAIN&state=s", b"");
    assert!(matches!(again.status, 200 | 429), "{}", again.status);
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Finding 5: the menu handler's header names must be HTTP tokens; `"Location:"`,
/// `"Content-Length:"`, `"Content-Type\n"` and `"Status:"` used to get through the
/// reserved-name check because `:`, CR and LF were stripped only afterwards.
#[test]
fn menu_handler_headers_must_be_tokens() {
    let api = wechat_api(Duration::ZERO);
    let menu = menu_handler(serde_json::json!({
        "h": {
            "Location:": "http://evil.example/",
            "Content-Length:": "3",
            "Content-Type\n": "text/evil",
            "Status:": "500",
            "X-Split": "a\r\nX-Injected: 1",
            "Set-Cookie": "sid=1",
        },
        "r": "",
        "c": "<p>menu page</p>",
    }));
    let backend = echo_backend();
    let r = Responder::start(&config(&api, &menu, &backend, ""));
    let nginx = nginx_for(&r);
    let page = nginx.request("GET", "/wxoauth?code=CODE1&state=s", b"");
    assert_eq!(page.status, 200, "{:?}\n{}", page, r.stderr());
    assert_eq!(
        page.text(),
        "<p>menu page</p>",
        "the whole body, not 3 bytes"
    );
    assert_eq!(page.header("Location"), None, "{:?}", page.headers);
    assert_eq!(page.header("X-Injected"), None, "{:?}", page.headers);
    assert_eq!(page.header("X-Split"), None, "{:?}", page.headers);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("Set-Cookie"), Some("sid=1"));
    assert!(wait_for(Duration::from_secs(2), || {
        r.stderr().contains(
        "header dropped from=menu_handler name=\"Location:\" reason=\"header name is not an HTTP token\""
    )
    }));
}
