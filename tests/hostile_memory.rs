//! Issue 11, finding 3: every in-memory table is bounded in bytes, and memory goes back to the
//! OS after a burst. The attack: 4,096 signed events, each answered by a `forward` backend with
//! a 64 KB news reply, as fast as four raw FastCGI clients can send them. Kept for retries,
//! those answers once took RSS from 2.9 MB to 280 MB (the shipped unit has MemoryMax=32M).
//!
//! Required: RSS stays under idle + the tables' budgets + 2 MiB during the burst, and once the
//! answers expire it is back within 1 MiB of idle.

pub mod common;
use common::fake_http::Fake;
use common::*;
use std::time::{Duration, Instant};
use weixin_fcgi::fastcgi::client;

const TOKEN: &str = "memtoken";
const BURST: usize = 4096;
const CLIENTS: usize = 4;
const DEDUP_SECONDS: u64 = 3;
const STATE_BYTES: u64 = 4 * 1024 * 1024;
const REPLAY_BYTES: u64 = 64 * 1024;

/// A backend answering every event with 8 articles of about 7.5 KB each (~60 KB of reply XML).
fn news_backend() -> Fake {
    let description = "d".repeat(7_500);
    let articles: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            serde_json::json!({"title": format!("t{i}"), "description": description,
                "picurl": "http://p/1.png", "url": "http://u/1"})
        })
        .collect();
    let answer = serde_json::json!({"type": "news", "articles": articles}).to_string();
    assert!(answer.len() < 64 * 1024, "{}", answer.len());
    Fake::simple(move |_path, _body| (200, answer.clone()))
}

fn event(key: usize) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[K{key}]]></EventKey></xml>",
        now()
    )
}

/// One signed event over FastCGI; the length of the reply body.
fn send_event(socket: &std::path::Path, key: usize) -> std::io::Result<(u16, usize)> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = event(key);
    let query = signed_query(TOKEN);
    let len = body.len().to_string();
    let params: [(&str, &[u8]); 5] = [
        ("REQUEST_METHOD", b"POST"),
        ("DOCUMENT_URI", b"/weixin"),
        ("QUERY_STRING", query.as_bytes()),
        ("CONTENT_TYPE", b"text/xml"),
        ("CONTENT_LENGTH", len.as_bytes()),
    ];
    let r = client::request(&mut conn, 1, &params, body.as_bytes(), false)?;
    Ok((r.status, r.body.len()))
}

#[test]
fn a_burst_of_large_answers_stays_within_the_budgets_and_memory_comes_back() {
    let backend = news_backend();
    let rules = format!(
        "[[account.rule]]\nname = \"news\"\nevent = \"CLICK\"\n\
         reply = {{ type = \"forward\", url = \"http://127.0.0.1:{}/wx\", timeout_ms = 4000 }}\n",
        backend.port
    );
    let config = format!(
        "dedup_seconds = {DEDUP_SECONDS}\nstate_memory_bytes = {STATE_BYTES}\n\
         replay_cache_bytes = {REPLAY_BYTES}\n{}",
        config_with_rules(TOKEN, &rules).replace("\"info\"", "\"warn\"")
    );
    let r = Responder::start(&config);
    let pid = r.pid();
    // Warm up: the forward threads exist and have served, like the burst will.
    for i in 0..16 {
        let (status, len) = send_event(&r.socket, 1_000_000 + i).expect("warm-up");
        assert_eq!(status, 200);
        assert!(len > 60_000, "{len}");
    }
    // Let the warm-up answers expire and the process trim, then take the idle figure.
    std::thread::sleep(Duration::from_secs(DEDUP_SECONDS + 3));
    let (idle, _) = rss_kib(pid);

    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let socket = r.socket.clone();
        clients.push(std::thread::spawn(move || {
            let mut ok = 0;
            for i in (c..BURST).step_by(CLIENTS) {
                if started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                if matches!(send_event(&socket, i), Ok((200, len)) if len > 60_000) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    // Sample RSS while the burst runs.
    let mut peak = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss_kib(pid).0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let took = started.elapsed();
    let (after_burst, hwm) = rss_kib(pid);
    peak = peak.max(after_burst);
    // The answers expire after DEDUP_SECONDS; the next idle second sweeps and trims.
    let mut settled = after_burst;
    let back = wait_for(Duration::from_secs(DEDUP_SECONDS + 10), || {
        settled = rss_kib(pid).0;
        settled <= idle + 1024
    });
    let budget_kib = (STATE_BYTES + REPLAY_BYTES) / 1024;
    println!(
        "burst: {answered}/{BURST} events answered with ~60 KB news in {:.1} s; RSS idle {idle} KiB, \
         peak sampled {peak} KiB (VmHWM {hwm} KiB), right after {after_burst} KiB, after expiry \
         {settled} KiB; bound idle + budgets ({budget_kib} KiB) + 2048 KiB = {} KiB",
        took.as_secs_f64(),
        idle + budget_kib + 2048
    );
    assert_eq!(answered, BURST, "{}", r.stderr());
    assert!(
        peak <= idle + budget_kib + 2048,
        "peak {peak} KiB > idle {idle} + budgets {budget_kib} + 2048"
    );
    assert!(
        back,
        "RSS {settled} KiB did not come back within 1 MiB of idle {idle} KiB"
    );
    assert_good(&r);
}

/// The process still answers.
fn assert_good(r: &Responder) {
    let (status, len) = send_event(&r.socket, 9_999_999).expect("after the burst");
    assert_eq!(status, 200);
    assert!(len > 60_000);
}
