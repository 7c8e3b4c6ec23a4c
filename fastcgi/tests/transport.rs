//! The FastCGI transport on a real Unix socket, with a test handler (no WeChat involved):
//! spec behaviour (keep-alive, GET_VALUES, unknown types and roles, multiplexing refused,
//! abort) and hostile input (truncated, giant, wrong version) — the process keeps serving.

use fastcgi_responder::client::{self, ClientResponse};
use fastcgi_responder::record::{self, Parsed, kind, protocol_status};
use fastcgi_responder::{Handler, Listener, Outcome, Request, Response, Server, ServerConfig};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Echoes method, a param and the body; `/panic` panics; `/later` answers from another thread;
/// `/later-panic` defers, and its job panics on the worker.
struct Echo {
    calls: AtomicUsize,
}

impl Handler for Echo {
    fn handle(&self, req: &Request<'_>, resp: &mut Response) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match req.param_str("DOCUMENT_URI").unwrap_or("") {
            "/panic" => panic!("test panic"),
            "/later" => {
                let body = req.body.to_vec();
                return Outcome::Later(Box::new(move |pending| {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        pending.finish(|r| {
                            r.set_status(202);
                            r.body.extend_from_slice(b"later:");
                            r.body.extend_from_slice(&body);
                        });
                    });
                }));
            }
            "/later-panic" => {
                return Outcome::Later(Box::new(|_pending| panic!("test panic in a deferred job")));
            }
            "/slow" => std::thread::sleep(Duration::from_millis(300)),
            _ => {}
        }
        resp.set_content_type("text/x-test");
        resp.add_header("X-Evil\r\nInjected", "a\r\nb");
        resp.body
            .extend_from_slice(req.param("REQUEST_METHOD").unwrap_or(b"?"));
        resp.body.push(b' ');
        resp.body.extend_from_slice(req.body);
        Outcome::Done
    }
}

struct Fixture {
    path: String,
    _dir: TempDir,
    handler: Arc<Echo>,
    server: Option<Server>,
}

struct TempDir(String);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(config: ServerConfig) -> Fixture {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = format!(
        "{}/wxfcgi-transport-{}-{}",
        std::env::temp_dir().display(),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    std::fs::create_dir_all(&dir).unwrap();
    let path = format!("{dir}/s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handler = Arc::new(Echo {
        calls: AtomicUsize::new(0),
    });
    let server = Server::start(Listener::Unix(listener), config, Arc::clone(&handler)).unwrap();
    Fixture {
        path,
        _dir: TempDir(dir),
        handler,
        server: Some(server),
    }
}

fn small() -> ServerConfig {
    ServerConfig {
        workers: 2,
        max_conns: 64,
        max_body: 1024,
        max_params: 4096,
        io_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
    }
}

impl Fixture {
    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn get(&self, uri: &str, body: &[u8]) -> ClientResponse {
        let mut s = self.connect();
        client::request(&mut s, 1, &params(uri), body, false).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            assert!(
                s.stop(Duration::from_secs(2)),
                "server did not stop cleanly"
            );
        }
    }
}

fn params(uri: &str) -> Vec<(&'static str, &[u8])> {
    vec![
        ("REQUEST_METHOD", b"POST" as &[u8]),
        ("DOCUMENT_URI", uri.as_bytes()),
    ]
}

/// Reads until EOF (or timeout) and returns all records.
fn read_records(s: &mut UnixStream) -> Vec<(record::Header, Vec<u8>)> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut out = Vec::new();
    let mut rest = &buf[..];
    while let Ok(Parsed::Complete((h, c), used)) = record::parse_record(rest) {
        out.push((h, c.to_vec()));
        rest = &rest[used..];
    }
    out
}

fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

#[test]
fn answers_a_request_with_cgi_headers() {
    let f = start(small());
    let r = f.get("/x", b"hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/x-test"));
    assert_eq!(r.body, b"POST hello");
    assert_eq!(
        (r.app_status, r.protocol_status),
        (0, protocol_status::REQUEST_COMPLETE)
    );
    // CR/LF cannot inject a header.
    assert_eq!(r.header("X-EvilInjected"), Some("ab"));
    assert_eq!(r.header("Injected"), None);
}

#[test]
fn keep_conn_serves_many_requests_on_one_connection() {
    let f = start(small());
    let mut s = f.connect();
    for i in 0..50u16 {
        let body = format!("n{i}");
        let r = client::request(&mut s, i + 1, &params("/x"), body.as_bytes(), true).unwrap();
        assert_eq!(r.body, format!("POST n{i}").as_bytes());
    }
    // Without KEEP_CONN the responder closes after the request.
    let r = client::request(&mut s, 99, &params("/x"), b"last", false).unwrap();
    assert_eq!(r.body, b"POST last");
    assert_closed(&mut s);
}

#[test]
fn idle_kept_alive_connections_do_not_pin_workers() {
    // 2 workers, 20 idle kept-alive connections: a new request is still answered at once.
    let f = start(small());
    let mut idle: Vec<UnixStream> = (0..20).map(|_| f.connect()).collect();
    for (i, s) in idle.iter_mut().enumerate() {
        let r = client::request(s, 1, &params("/x"), format!("{i}").as_bytes(), true).unwrap();
        assert_eq!(r.status, 200);
    }
    let started = Instant::now();
    for s in idle.iter_mut().rev() {
        let r = client::request(s, 2, &params("/x"), b"again", true).unwrap();
        assert_eq!(r.body, b"POST again");
    }
    let r = f.get("/x", b"fresh");
    assert_eq!(r.body, b"POST fresh");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn params_and_stdin_split_across_many_records() {
    let f = start(small());
    let mut s = f.connect();
    let mut stream = Vec::new();
    record::write_pair(&mut stream, b"REQUEST_METHOD", b"POST");
    record::write_pair(&mut stream, b"LONG", &vec![b'x'; 3000]);
    let mut out = Vec::new();
    record::write_begin_request(&mut out, 1, record::ROLE_RESPONDER, 0);
    for chunk in stream.chunks(7) {
        record::write_stream(&mut out, kind::PARAMS, 1, chunk);
    }
    record::write_stream_end(&mut out, kind::PARAMS, 1);
    for chunk in b"split body".chunks(3) {
        record::write_header(&mut out, kind::STDIN, 1, chunk.len() as u16, 5);
        out.extend_from_slice(chunk);
        out.extend_from_slice(&[0; 5]);
    }
    record::write_stream_end(&mut out, kind::STDIN, 1);
    // Dribble the bytes to exercise partial reads.
    for piece in out.chunks(13) {
        s.write_all(piece).unwrap();
    }
    let r = client::read_response(&mut s, 1).unwrap();
    assert_eq!(r.body, b"POST split body");
}

#[test]
fn get_values_unknown_type_and_role() {
    let f = start(small());
    let mut s = f.connect();
    let mut q = Vec::new();
    for name in [
        "FCGI_MAX_CONNS",
        "FCGI_MAX_REQS",
        "FCGI_MPXS_CONNS",
        "NOT_A_VAR",
    ] {
        record::write_pair(&mut q, name.as_bytes(), b"");
    }
    let mut out = Vec::new();
    record::write_stream(&mut out, kind::GET_VALUES, 0, &q);
    record::write_header(&mut out, 42, 0, 3, 0);
    out.extend_from_slice(b"abc");
    record::write_begin_request(&mut out, 5, 2 /* AUTHORIZER */, 0);
    s.write_all(&out).unwrap();
    let recs = read_records(&mut s);
    let (h, c) = &recs[0];
    assert_eq!(h.kind, kind::GET_VALUES_RESULT);
    let pairs: Vec<_> = record::Pairs::new(c).map(|p| p.unwrap()).collect();
    assert_eq!(
        pairs,
        vec![
            (&b"FCGI_MAX_CONNS"[..], &b"64"[..]),
            (&b"FCGI_MAX_REQS"[..], &b"64"[..]),
            (&b"FCGI_MPXS_CONNS"[..], &b"0"[..])
        ]
    );
    assert_eq!((recs[1].0.kind, recs[1].1[0]), (kind::UNKNOWN_TYPE, 42));
    assert_eq!(
        (recs[2].0.kind, recs[2].0.request_id),
        (kind::END_REQUEST, 5)
    );
    assert_eq!(recs[2].1[4], protocol_status::UNKNOWN_ROLE);
    assert_eq!(f.handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_second_concurrent_request_is_refused_cant_mpx_conn() {
    let f = start(small());
    let mut s = f.connect();
    let mut out = Vec::new();
    record::write_begin_request(&mut out, 1, record::ROLE_RESPONDER, 0);
    record::write_begin_request(&mut out, 2, record::ROLE_RESPONDER, 0);
    let rest = client::encode_request(1, &params("/x"), b"one", false);
    out.extend_from_slice(&rest[16..]); // skip request 1's BEGIN_REQUEST, already sent
    s.write_all(&out).unwrap();
    let recs = read_records(&mut s);
    let end2 = recs
        .iter()
        .find(|(h, _)| h.kind == kind::END_REQUEST && h.request_id == 2)
        .unwrap();
    assert_eq!(end2.1[4], protocol_status::CANT_MPX_CONN);
    let stdout: Vec<u8> = recs
        .iter()
        .filter(|(h, _)| h.kind == kind::STDOUT && h.request_id == 1)
        .flat_map(|(_, c)| c.clone())
        .collect();
    assert!(
        stdout.ends_with(b"POST one"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn abort_request_ends_it_without_calling_the_handler() {
    let f = start(small());
    let mut s = f.connect();
    let mut out = Vec::new();
    record::write_begin_request(&mut out, 3, record::ROLE_RESPONDER, record::FLAG_KEEP_CONN);
    record::write_stream_end(&mut out, kind::PARAMS, 3);
    record::write_header(&mut out, kind::ABORT_REQUEST, 3, 0, 0);
    s.write_all(&out).unwrap();
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[1], kind::END_REQUEST);
    assert_eq!(f.handler.calls.load(Ordering::SeqCst), 0);
    // The kept connection still serves the next request.
    let r = client::request(&mut s, 4, &params("/x"), b"after", true).unwrap();
    assert_eq!(r.body, b"POST after");
}

#[test]
fn oversized_body_is_413_and_the_connection_still_works() {
    let f = start(small());
    let mut s = f.connect();
    let r = client::request(&mut s, 1, &params("/x"), &[b'a'; 5000], true).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(f.handler.calls.load(Ordering::SeqCst), 0);
    let r = client::request(&mut s, 2, &params("/x"), &[b'a'; 1024], true).unwrap();
    assert_eq!(r.status, 200, "a body exactly at the cap is accepted");
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let f = start(small());
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut wrong_version = client::encode_request(1, &params("/x"), b"", false);
    wrong_version[0] = 2;
    cases.push(("wrong version", wrong_version));
    let mut huge_pair = Vec::new();
    record::write_begin_request(&mut huge_pair, 1, record::ROLE_RESPONDER, 0);
    record::write_stream(
        &mut huge_pair,
        kind::PARAMS,
        1,
        &[0xff, 0xff, 0xff, 0xff, 1, b'a'],
    );
    record::write_stream_end(&mut huge_pair, kind::PARAMS, 1);
    cases.push(("pair length 2 GiB", huge_pair));
    let mut giant_params = Vec::new();
    record::write_begin_request(&mut giant_params, 1, record::ROLE_RESPONDER, 0);
    for _ in 0..4 {
        record::write_stream(&mut giant_params, kind::PARAMS, 1, &[b'p'; 60000]);
    }
    cases.push(("params over the cap", giant_params));
    let mut stdin_first = Vec::new();
    record::write_begin_request(&mut stdin_first, 1, record::ROLE_RESPONDER, 0);
    record::write_stream(&mut stdin_first, kind::STDIN, 1, b"x");
    cases.push(("STDIN before PARAMS ended", stdin_first));
    let mut short_begin = Vec::new();
    record::write_header(&mut short_begin, kind::BEGIN_REQUEST, 1, 2, 0);
    short_begin.extend_from_slice(&[0, 1]);
    cases.push(("short BEGIN_REQUEST", short_begin));
    for (name, bytes) in cases {
        let mut s = f.connect();
        let _ = s.write_all(&bytes);
        assert_closed(&mut s);
        let r = f.get("/x", name.as_bytes());
        assert_eq!(r.body, format!("POST {name}").as_bytes(), "after {name}");
    }
}

#[test]
fn truncated_and_stalled_requests_time_out() {
    let f = start(small());
    // A truncated header, then silence: the worker gives up after io_timeout.
    let mut stalled = Vec::new();
    for n in [3usize, 8 + 4, 40] {
        let mut s = f.connect();
        let bytes = client::encode_request(1, &params("/x"), b"body", false);
        s.write_all(&bytes[..n.min(bytes.len())]).unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    for s in &mut stalled {
        assert_closed(s);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // Meanwhile and afterwards, good requests are answered.
    assert_eq!(f.get("/x", b"ok").body, b"POST ok");
    // A peer that hangs up mid-request does not disturb anything either.
    let mut s = f.connect();
    s.write_all(&client::encode_request(1, &params("/x"), b"body", false)[..20])
        .unwrap();
    drop(s);
    assert_eq!(f.get("/x", b"ok2").body, b"POST ok2");
}

#[test]
fn handler_panic_is_a_500_and_workers_survive() {
    let f = start(small());
    for _ in 0..5 {
        assert_eq!(f.get("/panic", b"").status, 500);
    }
    assert_eq!(f.get("/x", b"alive").body, b"POST alive");
}

#[test]
fn a_deferred_job_that_panics_is_a_500_and_the_only_worker_survives() {
    let f = start(ServerConfig {
        workers: 1,
        ..small()
    });
    for _ in 0..3 {
        assert_eq!(f.get("/later-panic", b"").status, 500);
    }
    assert_eq!(f.get("/x", b"alive").body, b"POST alive");
    let stats = f.server.as_ref().unwrap().handle().stats();
    assert_eq!(
        stats.in_flight, 0,
        "the panicked requests are not counted as in flight"
    );
}

#[test]
fn deferred_responses_do_not_block_workers() {
    let f = start(ServerConfig {
        workers: 1,
        ..small()
    });
    let path = f.path.clone();
    let later = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = client::request(&mut s, 1, &params("/later"), b"x", true).unwrap();
        let r2 = client::request(&mut s, 2, &params("/x"), b"kept", true).unwrap();
        (r, r2)
    });
    std::thread::sleep(Duration::from_millis(10));
    // With the only worker free again, this is answered before the deferred one.
    let started = Instant::now();
    assert_eq!(f.get("/x", b"meanwhile").body, b"POST meanwhile");
    assert!(started.elapsed() < Duration::from_millis(45));
    let (r, r2) = later.join().unwrap();
    assert_eq!((r.status, &r.body[..]), (202, &b"later:x"[..]));
    assert_eq!(r2.body, b"POST kept");
}

#[test]
fn max_conns_admits_a_new_connection_in_place_of_the_oldest_idle_one() {
    let f = start(ServerConfig {
        max_conns: 3,
        ..small()
    });
    let mut held: Vec<UnixStream> = (0..3).map(|_| f.connect()).collect();
    for s in &mut held {
        client::request(s, 1, &params("/x"), b"", true).unwrap();
    }
    let stats = f.server.as_ref().unwrap().handle().stats();
    assert_eq!((stats.max_conns, stats.max_conns_reached), (3, 0));
    // All three are idle between requests: the oldest gives way to the new one.
    let mut extra = f.connect();
    let r = client::request(&mut extra, 1, &params("/x"), b"new", false).unwrap();
    assert_eq!(r.body, b"POST new");
    let mut buf = [0u8; 8];
    held[0]
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(
        matches!(held[0].read(&mut buf), Ok(0) | Err(_)),
        "the oldest idle connection was closed"
    );
    assert_eq!(
        client::request(&mut held[2], 2, &params("/x"), b"kept", true)
            .unwrap()
            .body,
        b"POST kept"
    );
    // Counted for the status page.
    let stats = f.server.as_ref().unwrap().handle().stats();
    assert_eq!(stats.max_conns_reached, 1);
    assert!(stats.open_conns <= 3, "{}", stats.open_conns);
}

#[test]
fn max_conns_refuses_when_every_connection_is_in_a_request() {
    let f = start(ServerConfig {
        workers: 3,
        max_conns: 2,
        io_timeout: Duration::from_secs(2),
        ..small()
    });
    // Two requests started and stalled (half a PARAMS stream): each holds a worker, none idle.
    let partial = client::encode_request(1, &params("/x"), b"", false);
    let mut stalled: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut s = f.connect();
            s.write_all(&partial[..20]).unwrap();
            s
        })
        .collect();
    // Both begun on a worker (a fixed sleep was not always enough on a loaded machine: a
    // connection not yet read counts as idle and is evicted instead).
    let handle = f.server.as_ref().unwrap().handle();
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().in_flight < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handle.stats().in_flight, 2);
    let mut extra = f.connect();
    assert!(client::request(&mut extra, 1, &params("/x"), b"", false).is_err());
    let stats = f.server.as_ref().unwrap().handle().stats();
    assert_eq!(stats.max_conns_reached, 1);
    // Once they time out, connections are admitted again.
    for s in &mut stalled {
        let mut buf = [0u8; 8];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read(&mut buf);
    }
    assert_eq!(f.get("/x", b"again").body, b"POST again");
}

#[test]
fn idle_connections_are_closed_after_their_timeouts() {
    let f = start(ServerConfig {
        io_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1200),
        ..small()
    });
    let started = std::time::Instant::now();
    let mut silent = f.connect();
    let mut kept = f.connect();
    client::request(&mut kept, 1, &params("/x"), b"", true).unwrap();
    let closed_after = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        started.elapsed()
    };
    // A new connection that sends nothing: io_timeout (+ up to the 1 s reaping period).
    let silent_after = closed_after(&mut silent);
    assert!(
        silent_after < Duration::from_millis(1300 + 500),
        "{silent_after:?}"
    );
    // A kept-alive one after a request: idle_timeout, not io_timeout.
    let kept_after = closed_after(&mut kept);
    assert!(
        kept_after >= Duration::from_millis(1200) && kept_after < Duration::from_millis(2200 + 500),
        "{kept_after:?}"
    );
    // The count drops just after the close the client saw.
    let handle = f.server.as_ref().unwrap().handle();
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while handle.stats().open_conns > 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(handle.stats().open_conns, 0);
}

#[test]
fn stop_finishes_in_flight_requests() {
    let mut f = start(small());
    let path = f.path.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        client::request(&mut s, 1, &params("/slow"), b"", false)
    });
    std::thread::sleep(Duration::from_millis(100));
    let server = f.server.take().unwrap();
    assert!(server.stop(Duration::from_secs(3)));
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
}
