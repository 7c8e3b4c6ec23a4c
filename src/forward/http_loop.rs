//! One thread, one epoll: every backend HTTP call of `forward` rules, however many and however
//! slow, without a thread each.
//!
//! Why: a blocking client needs a thread per call in flight. Measured with 256 calls of 30 s
//! (`benches/late_scale.py`): threads with ureq's default 128 KiB buffers took the process to
//! 79 MiB; with 64 KiB stacks and 16 KiB/4 KiB buffers still 18 MiB, of which 36 KiB of touched
//! stack per thread (9 MiB) that no setting removes. Here a call in flight costs its socket, the
//! request until it is sent, and the bytes received so far.
//!
//! The HTTP/1.1 framing is `ureq-proto`'s sans-IO state machine (the one `ureq` itself uses):
//! this module only moves bytes between it and a non-blocking socket. Plain HTTP to an IP
//! literal or `localhost` (what `check_url` allows), no proxy, no redirects, the answer capped
//! at [`MAX_ANSWER`] bytes, the whole exchange under one deadline. The completion runs on the
//! loop's thread and must not block for long.

use rustix::event::epoll;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq_proto::client::state::{RecvBody, RecvResponse};
use ureq_proto::client::{Call, RecvBodyResult, RecvResponseResult, SendRequestResult};

/// Largest answer body read; a longer one is a failure.
const MAX_ANSWER: usize = super::backend::MAX_ANSWER as usize;
/// Largest response head (status line and headers).
const MAX_HEAD: usize = 16 * 1024;
const TOKEN_WAKE: u64 = u64::MAX;

/// A finished exchange: the status and the (de-chunked) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Receives the outcome of one call: the answer, or a one-line reason ("timeout",
/// "connection refused", …).
pub type Done = Box<dyn FnOnce(Result<HttpAnswer, String>) + Send>;

/// The loop: a handle to submit calls; the thread runs until the process ends.
pub struct HttpLoop {
    inbox: Mutex<VecDeque<Submitted>>,
    wake: OwnedFd,
}

struct Submitted {
    addr: SocketAddr,
    request: Vec<u8>,
    call: Call<RecvResponse>,
    deadline: Instant,
    done: Done,
}

impl HttpLoop {
    /// Starts the loop's thread.
    pub fn start() -> std::io::Result<Arc<HttpLoop>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(TOKEN_WAKE),
            epoll::EventFlags::IN,
        )?;
        let this = Arc::new(HttpLoop {
            inbox: Mutex::new(VecDeque::new()),
            wake,
        });
        let shared = Arc::clone(&this);
        std::thread::Builder::new()
            .name("forward-http".into())
            .spawn(move || Worker::new(epoll, shared).run())?;
        Ok(this)
    }

    /// POSTs `body` as JSON to `url` (`http://HOST[:PORT]/path`) under `timeout`; `done` gets
    /// the outcome on the loop's thread (or at once, on this thread, for an unusable URL).
    pub fn post_json(&self, url: &str, body: &[u8], timeout: Duration, done: Done) {
        match prepare(url, body) {
            Ok((addr, request, call)) => {
                let item = Submitted {
                    addr,
                    request,
                    call,
                    deadline: Instant::now() + timeout,
                    done,
                };
                self.inbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(item);
                let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
            }
            Err(reason) => done(Err(reason)),
        }
    }
}

/// The request bytes (head and body) and the state machine waiting for the response.
fn prepare(url: &str, body: &[u8]) -> Result<(SocketAddr, Vec<u8>, Call<RecvResponse>), String> {
    let request = ureq_proto::http::Request::post(url)
        .header("content-type", super::backend::CONTENT_TYPE)
        .header("content-length", body.len())
        .body(())
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(format!("bad URL {url:?}: only http:// is supported"));
    }
    let host = uri.host().unwrap_or("");
    let ip = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse::<IpAddr>()
            .map_err(|_| format!("bad URL {url:?}: the host must be an IP address or localhost"))?,
    };
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let proto = |e: ureq_proto::Error| format!("cannot build the request: {e}");
    let mut call = Call::new(request).map_err(proto)?.proceed();
    let mut out = Vec::with_capacity(256 + body.len());
    let mut buf = [0u8; 1024];
    loop {
        let n = call.write(&mut buf).map_err(proto)?;
        out.extend_from_slice(&buf[..n]);
        if call.can_proceed() {
            break;
        }
        if n == 0 {
            return Err("cannot build the request: head does not fit".into());
        }
    }
    let recv = match call.proceed().map_err(proto)? {
        Some(SendRequestResult::SendBody(mut send)) => {
            let mut rest = body;
            let mut chunk = vec![0u8; 4096];
            while !rest.is_empty() {
                let (used, n) = send.write(rest, &mut chunk).map_err(proto)?;
                out.extend_from_slice(&chunk[..n]);
                rest = &rest[used..];
            }
            let (_, n) = send.write(&[], &mut chunk).map_err(proto)?;
            out.extend_from_slice(&chunk[..n]);
            send.proceed()
                .ok_or_else(|| "cannot build the request: body incomplete".to_string())?
        }
        Some(SendRequestResult::RecvResponse(recv)) => recv,
        Some(SendRequestResult::Await100(_)) | None => {
            return Err("cannot build the request: unexpected state".into());
        }
    };
    Ok((addr, out, recv))
}

/// Where a call is.
enum Phase {
    /// Connecting, then writing `request[sent..]`.
    Send { sent: usize },
    /// Reading the status line and headers.
    Head,
    /// Reading the body.
    Body,
}

enum Machine {
    Head(Call<RecvResponse>),
    Body(Call<RecvBody>),
    Gone,
}

struct Active {
    stream: TcpStream,
    phase: Phase,
    machine: Machine,
    request: Vec<u8>,
    /// Received bytes not yet consumed by the state machine.
    input: Vec<u8>,
    status: u16,
    body: Vec<u8>,
    deadline: Instant,
    done: Option<Done>,
}

struct Worker {
    epoll: OwnedFd,
    shared: Arc<HttpLoop>,
    /// Calls in flight; the index is the epoll token. Freed slots are reused.
    slots: Vec<Option<Active>>,
    free: Vec<usize>,
    /// Read buffer, reused by every call.
    scratch: Vec<u8>,
}

impl Worker {
    fn new(epoll: OwnedFd, shared: Arc<HttpLoop>) -> Worker {
        Worker {
            epoll,
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            scratch: vec![0u8; 16 * 1024],
        }
    }

    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            let timeout = self.next_deadline().map(|d| {
                let wait = d.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                rustix::time::Timespec {
                    tv_sec: wait.as_secs() as i64,
                    tv_nsec: wait.subsec_nanos() as i64,
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    crate::log_error!("forward: epoll_wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            for event in &events {
                match event.data.u64() {
                    TOKEN_WAKE => {
                        let mut b = [0u8; 8];
                        let _ = rustix::io::read(&self.shared.wake, &mut b);
                        self.take_inbox();
                    }
                    token => self.advance(token as usize),
                }
            }
            self.expire();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|a| a.deadline).min()
    }

    fn take_inbox(&mut self) {
        loop {
            let next = self
                .shared
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(item) = next else { return };
            self.begin(item);
        }
    }

    /// Opens a non-blocking connection and registers it.
    fn begin(&mut self, item: Submitted) {
        let family = match item.addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let socket = match rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        ) {
            Ok(s) => s,
            Err(e) => return (item.done)(Err(format!("cannot open a socket: {e}"))),
        };
        match rustix::net::connect(&socket, &item.addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return (item.done)(Err(describe_errno(e))),
        }
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let flags = epoll::EventFlags::OUT | epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        if let Err(e) = epoll::add(
            &self.epoll,
            &socket,
            epoll::EventData::new_u64(index as u64),
            flags,
        ) {
            self.free.push(index);
            return (item.done)(Err(format!("cannot watch the socket: {e}")));
        }
        self.slots[index] = Some(Active {
            stream: TcpStream::from(socket),
            phase: Phase::Send { sent: 0 },
            machine: Machine::Head(item.call),
            request: item.request,
            input: Vec::new(),
            status: 0,
            body: Vec::new(),
            deadline: item.deadline,
            done: Some(item.done),
        });
    }

    /// Moves the call at `index` as far as its socket allows.
    fn advance(&mut self, index: usize) {
        let Some(Some(active)) = self.slots.get_mut(index) else {
            return;
        };
        let outcome = step(active, &mut self.scratch);
        match outcome {
            Step::Wait => {
                if matches!(active.phase, Phase::Head | Phase::Body) && !active.request.is_empty() {
                    // Sent: stop asking for writability and free the request.
                    active.request = Vec::new();
                    let _ = epoll::modify(
                        &self.epoll,
                        active.stream.as_fd(),
                        epoll::EventData::new_u64(index as u64),
                        epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                    );
                }
            }
            Step::Finished(result) => self.finish(index, result),
        }
    }

    fn finish(&mut self, index: usize, result: Result<HttpAnswer, String>) {
        let Some(mut active) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, active.stream.as_fd());
        drop(active.stream);
        self.free.push(index);
        if let Some(done) = active.done.take() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(result))).is_err() {
                crate::log_error!("forward: a completion panicked");
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<usize> = (self.slots.iter().enumerate())
            .filter(|(_, a)| a.as_ref().is_some_and(|a| a.deadline <= now))
            .map(|(i, _)| i)
            .collect();
        for index in late {
            self.finish(index, Err("timeout".into()));
        }
    }
}

enum Step {
    Wait,
    Finished(Result<HttpAnswer, String>),
}

/// Writes what can be written and reads what can be read.
fn step(active: &mut Active, scratch: &mut [u8]) -> Step {
    if let Phase::Send { sent } = &mut active.phase {
        if *sent == 0 {
            match rustix::net::sockopt::socket_error(active.stream.as_fd()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Step::Finished(Err(describe_errno(e))),
                Err(e) => return Step::Finished(Err(describe_errno(e))),
            }
        }
        while *sent < active.request.len() {
            match active.stream.write(&active.request[*sent..]) {
                Ok(0) => return Step::Finished(Err("connection closed while sending".into())),
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Finished(Err(describe_io(&e))),
            }
        }
        active.phase = Phase::Head;
    }
    loop {
        let n = match active.stream.read(scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Step::Finished(Err(describe_io(&e))),
        };
        if n > 0 {
            active.input.extend_from_slice(&scratch[..n]);
        }
        let eof = n == 0;
        match parse(active, eof) {
            Ok(true) => {
                let body = std::mem::take(&mut active.body);
                return Step::Finished(Ok(HttpAnswer {
                    status: active.status,
                    body,
                }));
            }
            Ok(false) if eof => {
                return Step::Finished(Err(
                    "connection closed before the answer was complete".into()
                ));
            }
            Ok(false) => {}
            Err(reason) => return Step::Finished(Err(reason)),
        }
    }
}

/// Feeds received bytes to the state machine. `Ok(true)` when the answer is complete.
fn parse(active: &mut Active, eof: bool) -> Result<bool, String> {
    let proto = |e: ureq_proto::Error| format!("bad HTTP answer: {e}");
    loop {
        match std::mem::replace(&mut active.machine, Machine::Gone) {
            Machine::Head(mut call) => {
                let (used, response) = call.try_response(&active.input, false).map_err(proto)?;
                active.input.drain(..used);
                let Some(response) = response else {
                    if active.input.len() > MAX_HEAD {
                        return Err(format!("answer head longer than {MAX_HEAD} bytes"));
                    }
                    active.machine = Machine::Head(call);
                    return Ok(false);
                };
                active.status = response.status().as_u16();
                active.phase = Phase::Body;
                match call.proceed() {
                    Some(RecvResponseResult::RecvBody(body)) => {
                        active.machine = Machine::Body(body)
                    }
                    // No body (or a redirect, which is not followed): the answer is the status.
                    Some(RecvResponseResult::Redirect(_) | RecvResponseResult::Cleanup(_)) => {
                        return Ok(true);
                    }
                    None => return Err("bad HTTP answer: incomplete head".into()),
                }
            }
            Machine::Body(mut call) => {
                let mut out = [0u8; 4096];
                loop {
                    let (used, n) = call.read(&active.input, &mut out).map_err(proto)?;
                    active.input.drain(..used);
                    if active.body.len() + n > MAX_ANSWER {
                        return Err(format!("answer longer than {MAX_ANSWER} bytes"));
                    }
                    active.body.extend_from_slice(&out[..n]);
                    if used == 0 && n == 0 {
                        break;
                    }
                }
                // A close-delimited body ends at EOF; the others know their end.
                let complete = call.can_proceed()
                    && (eof || !matches!(call.body_mode(), ureq_proto::BodyMode::CloseDelimited));
                if complete {
                    return match call.proceed() {
                        Some(RecvBodyResult::Cleanup(_) | RecvBodyResult::Redirect(_)) => Ok(true),
                        None => Err("bad HTTP answer: incomplete body".into()),
                    };
                }
                active.machine = Machine::Body(call);
                return Ok(false);
            }
            Machine::Gone => return Err("bad HTTP answer".into()),
        }
    }
}

fn describe_errno(e: rustix::io::Errno) -> String {
    describe_io(&std::io::Error::from(e))
}

/// The same short reasons as the blocking client's.
fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A server that answers each connection with `answer` after reading the request.
    fn serve(answer: &'static [u8], delay: Duration) -> (u16, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(got);
                    std::thread::sleep(delay);
                    let _ = conn.write_all(answer);
                });
            }
        });
        (port, rx)
    }

    fn call(l: &HttpLoop, url: &str, timeout: Duration) -> Result<HttpAnswer, String> {
        let (tx, rx) = mpsc::channel();
        l.post_json(
            url,
            br#"{"a":1}"#,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv_timeout(timeout + Duration::from_secs(5))
            .expect("completion")
    }

    #[test]
    fn content_length_chunked_and_close_delimited_answers() {
        let l = HttpLoop::start().expect("loop");
        let (port, seen) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Duration::ZERO,
        );
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/x/msg/text"),
            Duration::from_secs(5),
        );
        assert_eq!(
            got,
            Ok(HttpAnswer {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        let request = String::from_utf8(seen.recv().expect("request")).expect("utf8");
        assert!(
            request.starts_with("POST /x/msg/text HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");

        let (port, _) = serve(
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            Duration::ZERO,
        );
        let got = call(
            &l,
            &format!("http://localhost:{port}/"),
            Duration::from_secs(5),
        );
        assert_eq!(
            got,
            Ok(HttpAnswer {
                status: 500,
                body: b"abcde".to_vec()
            })
        );

        let (port, _) = serve(b"HTTP/1.0 200 OK\r\n\r\nuntil close", Duration::ZERO);
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        assert_eq!(got.map(|a| a.body), Ok(b"until close".to_vec()));
    }

    #[test]
    fn timeouts_refusals_and_oversized_answers_are_reasons() {
        let l = HttpLoop::start().expect("loop");
        let (port, _) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Duration::from_secs(3),
        );
        let started = Instant::now();
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(300),
        );
        assert_eq!(got, Err("timeout".to_string()));
        assert!(started.elapsed() < Duration::from_secs(2));

        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        assert_eq!(got, Err("connection refused".to_string()));

        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                MAX_ANSWER + 1
            )
            .into_bytes();
            v.resize(v.len() + MAX_ANSWER + 1, b'x');
            v
        });
        let (port, _) = serve(big, Duration::ZERO);
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        assert_eq!(got, Err(format!("answer longer than {MAX_ANSWER} bytes")));

        let (port, _) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            Duration::ZERO,
        );
        // The server closes after 5 of 10 bytes.
        let got = call(
            &l,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        assert_eq!(
            got,
            Err("connection closed before the answer was complete".to_string())
        );
        assert!(call(&l, "https://127.0.0.1/", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn many_slow_calls_in_flight_at_once() {
        let l = HttpLoop::start().expect("loop");
        let (port, _) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Duration::from_millis(500),
        );
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        for _ in 0..64 {
            let tx = tx.clone();
            l.post_json(
                &format!("http://127.0.0.1:{port}/"),
                b"{}",
                Duration::from_secs(10),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
        }
        for _ in 0..64 {
            let r = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
            assert_eq!(r.map(|a| a.body), Ok(b"ok".to_vec()));
        }
        // Concurrent, not one after the other (64 × 0.5 s).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
