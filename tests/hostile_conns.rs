//! Issue 11, finding 4: idle FastCGI connections must not hold every place. 70 raw connections
//! that send nothing used to hold all `max_conns`: good requests were refused at once and still
//! 6.5 s later, through nginx as 502s, and each refused connect logged a warning.
//!
//! Required, and checked here on the raw socket and through nginx with the shipped snippet:
//! a new connection at `max_conns` is admitted by closing the oldest idle one; a silent new
//! connection is closed after `io_timeout_ms`, a kept-alive one with no request after
//! `conn_idle_timeout_ms`; the warning is written at most once per 10 s with a count.

pub mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use weixin_fcgi::fastcgi::client;

const TOKEN: &str = "connstoken";
const MAX_CONNS: usize = 16;
const IO_TIMEOUT_MS: u64 = 1000;
const IDLE_TIMEOUT_MS: u64 = 2500;

fn config() -> String {
    format!(
        "max_conns = {MAX_CONNS}\nio_timeout_ms = {IO_TIMEOUT_MS}\n\
         conn_idle_timeout_ms = {IDLE_TIMEOUT_MS}\n{}",
        config_with_rules(
            TOKEN,
            "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\n\
             reply = { type = \"text\", content = \"You said: {Content}\" }\n"
        )
    )
}

fn params(query: &str, len: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("REQUEST_METHOD", b"POST".to_vec()),
        ("DOCUMENT_URI", b"/weixin".to_vec()),
        ("QUERY_STRING", query.as_bytes().to_vec()),
        ("CONTENT_TYPE", b"text/xml".to_vec()),
        ("CONTENT_LENGTH", len.as_bytes().to_vec()),
    ]
}

/// One signed message on `conn`; the reply's Content.
fn ask(conn: &mut UnixStream, content: &str, keep: bool) -> std::io::Result<String> {
    let body = text_message(content);
    let query = signed_query(TOKEN);
    let owned = params(&query, &body.len().to_string());
    let p: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let r = client::request(conn, 1, &p, body.as_bytes(), keep)?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    Ok(xml_field(&text, "Content").unwrap_or(text))
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True once the responder has closed `s` (EOF or reset), waiting up to `limit`.
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
        Ok(_) => false,
    }
}

fn warnings(r: &Responder) -> usize {
    r.stderr().matches("max_conns (16) reached").count()
}

#[test]
fn idle_connections_give_way_and_time_out() {
    let r = Responder::start(&config());
    let nginx = Nginx::start(&r.socket, true);
    let pid = r.pid();
    for i in 0..10 {
        assert_eq!(
            ask(&mut connect(&r.socket), &format!("warm {i}"), false).expect("warm-up"),
            format!("You said: warm {i}")
        );
        assert_eq!(
            nginx_text(nginx.port, TOKEN, "warm").as_deref(),
            Ok("You said: warm")
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let (idle_rss, _) = rss_kib(pid);

    // 70 connections that send nothing: more than max_conns.
    let mut silent: Vec<UnixStream> = (0..70).map(|_| connect(&r.socket)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let raw = ask(&mut connect(&r.socket), "raw", false);
    let raw_took = started.elapsed();
    assert_eq!(
        raw.as_deref().ok(),
        Some("You said: raw"),
        "{raw:?}\n{}",
        r.stderr()
    );
    let started = Instant::now();
    let through_nginx = nginx_text(nginx.port, TOKEN, "via nginx");
    let nginx_took = started.elapsed();
    assert_eq!(through_nginx.as_deref(), Ok("You said: via nginx"));

    // 3,000 more connects: each admitted in place of an idle one; the warning stays one line.
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..3000 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        if let Ok(mut s) = UnixStream::connect(&r.socket) {
            let _ = s.write_all(b"");
            admitted += 1;
            silent.push(s);
            if silent.len() > 200 {
                silent.drain(..100);
            }
        }
    }
    let burst_took = started.elapsed();
    let still_good = ask(&mut connect(&r.socket), "after", false);
    assert_eq!(still_good.as_deref().ok(), Some("You said: after"));
    let lines = warnings(&r);
    let (busy_rss, busy_hwm) = rss_kib(pid);

    // Silent connections are closed after io_timeout (+ the 1 s reaping period).
    let mut last = silent.pop().expect("a silent connection");
    let silent_closed = closed_within(&mut last, Duration::from_millis(IO_TIMEOUT_MS + 2000));
    // A kept-alive connection after a request: open past io_timeout, closed after the idle
    // timeout.
    let mut kept = connect(&r.socket);
    assert_eq!(
        ask(&mut kept, "keep", true).expect("kept"),
        "You said: keep"
    );
    let kept_at = Instant::now();
    kept.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS + 500)))
        .unwrap();
    let mut buf = [0u8; 8];
    let early = kept.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a kept-alive connection was closed before conn_idle_timeout_ms: {early:?}"
    );
    let kept_closed = closed_within(&mut kept, Duration::from_millis(IDLE_TIMEOUT_MS + 2000));
    let kept_after = kept_at.elapsed();
    drop(silent);
    std::thread::sleep(Duration::from_millis(500));
    let (after_rss, _) = rss_kib(pid);
    println!(
        "idle connections: with 70 silent ones open (max_conns {MAX_CONNS}) a raw request was \
         answered in {} ms and one through nginx in {} ms; {admitted} more connects in {:.1} s \
         gave {lines} warning line(s); a silent connection closed: {silent_closed}, a kept-alive \
         one after {:.1} s; RSS idle {idle_rss} KiB, with the connections {busy_rss} KiB \
         (VmHWM {busy_hwm} KiB), after {after_rss} KiB",
        raw_took.as_millis(),
        nginx_took.as_millis(),
        burst_took.as_secs_f64(),
        kept_after.as_secs_f64()
    );
    assert!(raw_took < Duration::from_secs(1), "{raw_took:?}");
    assert!(admitted >= 1000, "{admitted}");
    assert!(lines <= 3, "{lines} warning lines:\n{}", r.stderr());
    assert!(silent_closed, "a silent connection was never closed");
    assert!(kept_closed, "a kept-alive idle connection was never closed");
    assert!(
        kept_after >= Duration::from_millis(IDLE_TIMEOUT_MS)
            && kept_after < Duration::from_millis(IDLE_TIMEOUT_MS + 2000),
        "{kept_after:?}"
    );
    assert!(
        after_rss <= idle_rss + 1024,
        "{after_rss} KiB vs idle {idle_rss}"
    );
    assert_eq!(
        nginx_text(nginx.port, TOKEN, "end").as_deref(),
        Ok("You said: end")
    );
}
