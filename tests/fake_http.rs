//! The tests' fake HTTP server (tests/common/fake_http.rs) itself: it hands the handler what
//! was sent, answers what the handler says, refuses oversized heads and bodies, and stops
//! (listener, open connections, sleeping handlers) when dropped.

pub mod common;
use common::fake_http::{self, Fake, Response};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn exchange(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_handler_gets_the_request_and_its_answer_is_sent() {
    let fake = Fake::recording(|req| {
        Response::new(201, format!("{} {} {}", req.method, req.path, req.text()))
            .with_header("Set-Cookie", "a=1")
            .with_header("Set-Cookie", "b=2")
    });
    let answer = exchange(
        fake.port,
        b"POST /p/q?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nX-Two:  v w \r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(
        answer,
        "HTTP/1.1 201 X\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 15\r\n\
         Connection: close\r\n\r\nPOST /p/q hello"
    );
    let [req] = fake.take().try_into().expect("one request");
    assert_eq!(req.target, "/p/q?x=1&y=%20");
    assert_eq!(req.query_param("y"), Some("%20"));
    assert_eq!(req.query_param("z"), None);
    assert_eq!(req.header("x-two"), Some("v w"));
    assert_eq!(req.body, b"hello");
    assert_eq!(fake.calls(), 1);
    assert!(fake.take().is_empty());

    let json = Fake::simple(|target, body| (404, format!("[\"{target}\",\"{body}\"]")));
    let answer = exchange(json.port, b"GET /a?b HTTP/1.1\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 404 X\r\nContent-Type: application/json\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\n[\"/a?b\",\"\"]"), "{answer}");
}

#[test]
fn oversized_or_malformed_requests_are_refused_without_calling_the_handler() {
    let fake = Fake::start(|_| Response::new(200, "called"));
    let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 * 1024));
    assert!(exchange(fake.port, big_head.as_bytes()).starts_with("HTTP/1.1 431 "));
    let big_body = b"POST / HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n";
    assert!(exchange(fake.port, big_body).starts_with("HTTP/1.1 413 "));
    let bad_length = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
    assert!(exchange(fake.port, bad_length).starts_with("HTTP/1.1 400 "));
    assert!(exchange(fake.port, b"NOT HTTP\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // A body shorter than its Content-Length: nothing until the client closes.
    let mut s = TcpStream::connect(("127.0.0.1", fake.port)).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty());
    assert_eq!(fake.calls(), 0);
}

#[test]
fn dropping_the_fake_closes_its_port_and_connections_and_wakes_sleeping_handlers() {
    let fake = Fake::simple(|_, _| {
        fake_http::sleep(Duration::from_secs(30));
        (200, "late".to_string())
    });
    let port = fake.port;
    // A connection waiting for its request's head, and one whose handler sleeps.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let busy = std::thread::spawn(move || exchange(port, b"GET / HTTP/1.1\r\n\r\n"));
    assert!(wait_for(Duration::from_secs(5), || fake.calls() == 1));

    let dropped = Instant::now();
    drop(fake);
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "{:?}",
        dropped.elapsed()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(idle.read(&mut buf), Ok(0) | Err(_)),
        "idle connection left open"
    );
    // The sleeping handler woke at once and its connection had been shut down.
    let answer = busy.join().unwrap();
    assert!(
        dropped.elapsed() < Duration::from_secs(3),
        "{:?}",
        dropped.elapsed()
    );
    assert!(answer.is_empty(), "{answer}");
}
