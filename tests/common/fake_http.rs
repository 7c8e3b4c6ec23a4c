//! The one fake HTTP/1.1 server of the tests: a backend, a menu handler or the WeChat API on
//! loopback. One thread per connection and one request per connection (`Connection: close`);
//! a handler turns each [`Request`] into a [`Response`].
//!
//! - [`Fake::start`]: any handler; [`Fake::recording`] also keeps every request for
//!   [`Fake::take`]; [`Fake::simple`]: `(target, body text) → (status, JSON text)`.
//! - Bounded: 5 s of silence or 30 s for a whole request ends a connection; a head over 64 KiB
//!   is answered 431, a body over 8 MiB 413, a 1,025th open connection is closed at once, and
//!   what a recording fake keeps is capped (a test that overflows it fails in `take`).
//! - Dropping the `Fake` stops it: the listener closes, open connections are shut down and a
//!   handler waiting in [`sleep`] wakes, so no thread outlives its test for long.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 1024;
const MAX_RECORDED: usize = 10_000;
const MAX_RECORDED_BYTES: usize = 64 * 1024 * 1024;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// The target without its query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_in(&self.headers, name)
    }

    /// The query (after `?`), empty without one.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The first `name=value` of the query, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query().split('&').find_map(|kv| {
            kv.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON; panics (failing the test) when it is not: for assertions.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the fake got a body that is not JSON ({e}): {}",
                self.text()
            )
        })
    }

    /// The body as JSON, `null` when it is not: for handlers.
    pub fn json_or_null(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// What the fake answers: status, header lines (`Content-Length` and `Connection: close` are
/// added), body; the harness's one HTTP response type.
pub use super::HttpResponse as Response;

impl Response {
    /// `body` with no header of its own (not even a `Content-Type`).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `body` as `Content-Type: application/json`.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, body.into()).with_header("Content-Type", "application/json")
    }

    /// Adds a header line (repeat it for a header sent twice).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} X\r\n", self.status);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running fake server; dropping it stops it.
pub struct Fake {
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    calls: AtomicUsize,
    record: bool,
    recorded: Mutex<Recorded>,
    conns: Mutex<Conns>,
    /// Signalled when the fake stops (wakes handlers in [`sleep`]).
    stopped: Condvar,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<Request>,
    bytes: usize,
    overflowed: bool,
}

#[derive(Default)]
struct Conns {
    stopped: bool,
    next_id: u64,
    /// A handle on each open connection, to shut it down when the fake stops.
    open: HashMap<u64, TcpStream>,
}

impl Fake {
    /// A fake answering every request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Fake {
        Fake::with(false, Arc::new(handler))
    }

    /// Like [`Fake::start`], and keeps every request (before answering it) for [`Fake::take`].
    pub fn recording(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Fake {
        Fake::with(true, Arc::new(handler))
    }

    /// A JSON API: `handler(target, body as text)` gives the status and the JSON text.
    pub fn simple(handler: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> Fake {
        Fake::start(move |req| {
            let (status, body) = handler(&req.target, &req.text());
            Response::json(status, body)
        })
    }

    fn with(record: bool, handler: Arc<Handler>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake HTTP server");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            calls: AtomicUsize::new(0),
            record,
            recorded: Mutex::new(Recorded::default()),
            conns: Mutex::new(Conns::default()),
            stopped: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept(&listener, &s, &handler));
        Fake {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests read whole so far (counted before the handler runs).
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The requests recorded since the last `take` (a [`Fake::recording`] fake only).
    pub fn take(&self) -> Vec<Request> {
        assert!(self.shared.record, "take() needs Fake::recording");
        let mut recorded = self.shared.recorded.lock().expect("recorded");
        assert!(
            !recorded.overflowed,
            "the fake recorded more than {MAX_RECORDED} requests or {MAX_RECORDED_BYTES} bytes"
        );
        recorded.bytes = 0;
        std::mem::take(&mut recorded.requests)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        {
            let mut conns = self.shared.conns();
            conns.stopped = true;
            for conn in conns.open.values() {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        self.shared.stopped.notify_all();
        // Wake the acceptor, which sees `stopped` and returns, closing the listener.
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, request: &Request) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let size = request.target.len() + request.body.len();
        if recorded.requests.len() >= MAX_RECORDED || recorded.bytes + size > MAX_RECORDED_BYTES {
            recorded.overflowed = true;
            return;
        }
        recorded.bytes += size;
        recorded.requests.push(request.clone());
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, handler: &Arc<Handler>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // Out of descriptors, say: no busy loop, and stop if the fake was dropped.
            if shared.conns().stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = {
            let mut conns = shared.conns();
            if conns.stopped {
                return;
            }
            if conns.open.len() >= MAX_CONNECTIONS {
                continue; // dropped: closed at once
            }
            let Ok(handle) = conn.try_clone() else {
                continue;
            };
            conns.next_id += 1;
            let id = conns.next_id;
            conns.open.insert(id, handle);
            id
        };
        let (shared, handler) = (Arc::clone(shared), Arc::clone(handler));
        std::thread::spawn(move || {
            let _open = OpenConn(&shared, id);
            serve(conn, &shared, &*handler);
        });
    }
}

/// Forgets a connection when its thread ends, however it ends.
struct OpenConn<'a>(&'a Arc<Shared>, u64);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.0.conns().open.remove(&self.1);
    }
}

thread_local! {
    /// The fake whose handler runs on this thread (for [`sleep`]).
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// For handlers: sleeps for `d`, or less when the fake that called the handler is dropped.
pub fn sleep(d: Duration) {
    let Some(shared) = CURRENT.with(|c| c.borrow().clone()) else {
        std::thread::sleep(d);
        return;
    };
    let until = Instant::now() + d;
    let mut conns = shared.conns();
    while !conns.stopped {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        conns = match shared.stopped.wait_timeout(conns, left) {
            Ok((guard, _)) => guard,
            Err(e) => e.into_inner().0,
        };
    }
}

fn serve(mut conn: TcpStream, shared: &Arc<Shared>, handler: &Handler) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let request = match read_request(&mut conn) {
        Ok(request) => request,
        Err(Some(refusal)) => {
            let _ = conn.write_all(&refusal.encode());
            // Read (a bounded amount of) what the client is still sending before closing, so
            // that the close does not reset the connection before it has read the refusal.
            let _ = conn.shutdown(Shutdown::Write);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = std::io::copy(&mut (&conn).take(MAX_HEAD as u64), &mut std::io::sink());
            return;
        }
        Err(None) => return,
    };
    shared.calls.fetch_add(1, Ordering::SeqCst);
    if shared.record {
        shared.record(&request);
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(shared)));
    let response = handler(&request);
    CURRENT.with(|c| *c.borrow_mut() = None);
    let _ = conn.write_all(&response.encode());
}

/// Reads one request; `Err(Some(answer))` refuses it, `Err(None)` gives up silently (the
/// client closed, went quiet or the fake stopped).
fn read_request(conn: &mut TcpStream) -> Result<Request, Option<Response>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut read_more = |raw: &mut Vec<u8>| -> Result<(), Option<Response>> {
        if Instant::now() > deadline {
            return Err(None);
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => Err(None),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                Ok(())
            }
        }
    };
    let (mut request, head_len) = loop {
        read_more(&mut raw)?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&raw) {
            Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => {
                break (owned(&parsed), head_len);
            }
            Ok(httparse::Status::Partial) if raw.len() <= MAX_HEAD => continue,
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(Response::new(431, "head too large")));
            }
            Err(e) => return Err(Some(Response::new(400, format!("bad request: {e}")))),
        }
    };
    let length = match request.header("Content-Length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => n,
            Ok(_) => return Err(Some(Response::new(413, "body too large"))),
            Err(_) => return Err(Some(Response::new(400, "bad Content-Length"))),
        },
    };
    while raw.len() < head_len + length {
        read_more(&mut raw)?;
    }
    request.body = raw[head_len..head_len + length].to_vec();
    Ok(request)
}

fn owned(parsed: &httparse::Request) -> Request {
    let target = parsed.path.unwrap_or("").to_string();
    Request {
        method: parsed.method.unwrap_or("").to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        target,
        headers: (parsed.headers.iter())
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_string(), value)
            })
            .collect(),
        body: Vec::new(),
    }
}
