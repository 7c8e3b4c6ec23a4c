//! The responder: a fixed pool of worker threads sharing one epoll instance.
//!
//! # Design
//! - The listener is registered level-triggered; a worker that sees it accepts one connection
//!   and serves it at once (nginx writes the request right after connecting), like libfcgi.
//! - A kept-alive connection (FCGI_KEEP_CONN) with nothing to read is parked in epoll with
//!   `EPOLLONESHOT`, so whichever worker is free picks it up when the next request arrives.
//!   Idle connections therefore never pin a worker: a blocking worker-per-connection design
//!   deadlocks as soon as nginx keeps more connections than there are workers.
//! - Each worker owns its buffers (read, params, body, output) and reuses them; they grow only
//!   up to the configured caps.
//! - Once a request has started, the worker reads the rest of it with a deadline
//!   (`io_timeout`), so a stalled peer holds a worker at most that long.
//! - A handler may answer later ([`Outcome::Later`]): the connection moves into a [`Pending`]
//!   that another thread completes, and the worker goes on serving others.
//!
//! # Limitations
//! One request per connection at a time (FCGI_MPXS_CONNS=0), as nginx uses FastCGI.
//! Only the RESPONDER role.

use super::record::{self, BeginRequest, Pairs, Parsed, kind, protocol_status};
use rustix::event::{PollFd, PollFlags, epoll};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Transport limits and pool size.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads (fixed).
    pub workers: usize,
    /// Most open connections; further ones are closed on accept.
    pub max_conns: usize,
    /// STDIN cap in bytes; a larger body is answered 413 without calling the handler.
    pub max_body: usize,
    /// PARAMS stream cap in bytes; beyond it the connection is closed.
    pub max_params: usize,
    /// Deadline for reading the rest of a started request, and for writing a response.
    pub io_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 2,
            max_conns: 256,
            max_body: 64 * 1024,
            max_params: 64 * 1024,
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// Most name-value pairs one request may carry.
const MAX_PAIRS: usize = 512;
/// Initial read buffer; grows up to one whole record when a record needs it.
const READ_BUF: usize = 16 * 1024;
/// Bytes of an oversized body we read and discard to still answer 413 in-protocol.
const MAX_DISCARD: usize = 16 * 1024 * 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_CONN_BASE: u64 = 2;

/// A listening socket: Unix or TCP stream.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        let stream = match self {
            Listener::Unix(l) => Stream::Unix(l.accept()?.0),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        stream.set_nonblocking()?;
        Ok(stream)
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A request as the handler sees it: params and body borrowed from the worker's buffers.
pub struct Request<'a> {
    stream: &'a [u8],
    index: &'a [ParamIndex],
    /// The STDIN stream, complete.
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct ParamIndex {
    name: (u32, u32),
    value: (u32, u32),
}

impl<'a> Request<'a> {
    /// The value of param `name` (last one wins if repeated, as in CGI environments).
    pub fn param(&self, name: &str) -> Option<&'a [u8]> {
        let stream = self.stream;
        self.index
            .iter()
            .rev()
            .find(|p| stream.get(p.name.0 as usize..p.name.1 as usize) == Some(name.as_bytes()))
            .and_then(|p| stream.get(p.value.0 as usize..p.value.1 as usize))
    }

    /// The value of param `name` when it is UTF-8.
    pub fn param_str(&self, name: &str) -> Option<&'a str> {
        self.param(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All params in arrival order.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        let stream = self.stream;
        self.index.iter().filter_map(move |p| {
            Some((
                stream.get(p.name.0 as usize..p.name.1 as usize)?,
                stream.get(p.value.0 as usize..p.value.1 as usize)?,
            ))
        })
    }
}

/// The CGI response the handler fills in. Reused across requests by each worker.
#[derive(Debug)]
pub struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<u8>,
    /// The response body, sent exactly as is.
    pub body: Vec<u8>,
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

impl Response {
    pub fn new() -> Response {
        Response {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.status = 200;
        self.content_type = "text/plain; charset=utf-8";
        self.headers.clear();
        self.body.clear();
    }

    /// Sets the HTTP status.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn set_content_type(&mut self, content_type: &'static str) {
        self.content_type = content_type;
    }

    /// Adds a header line. CR, LF and NUL are dropped from name and value so nothing can
    /// inject a header or end the head early.
    pub fn add_header(&mut self, name: &str, value: &str) {
        let clean = |b: &u8| !matches!(b, b'\r' | b'\n' | 0);
        self.headers
            .extend(name.bytes().filter(|b| clean(b) && *b != b':'));
        self.headers.extend_from_slice(b": ");
        self.headers.extend(value.bytes().filter(clean));
        self.headers.extend_from_slice(b"\r\n");
    }

    /// Sets status, a plain-text body, and its content type in one go (for errors).
    pub fn plain(&mut self, status: u16, text: &str) {
        self.status = status;
        self.content_type = "text/plain; charset=utf-8";
        self.body.clear();
        self.body.extend_from_slice(text.as_bytes());
    }

    /// Appends the CGI head and body (`Status:`, `Content-Type:`, headers, blank line, body).
    fn write_cgi(&self, out: &mut Vec<u8>) {
        self.write_head(out);
        out.extend_from_slice(&self.body);
    }

    /// Appends the CGI head (`Status:`, `Content-Type:`, headers, blank line).
    fn write_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Status: ");
        push_u64(out, self.status as u64);
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        // Every body is what its Content-Type says; a browser must not guess (e.g. run a
        // reflected value as HTML).
        out.extend_from_slice(b"\r\nX-Content-Type-Options: nosniff\r\n");
        out.extend_from_slice(&self.headers);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// What the handler did with the request.
pub enum Outcome {
    /// The response is filled in; send it now.
    Done,
    /// The response will come later: the closure receives the [`Pending`] request (on the
    /// worker thread, right away) and must hand it to whatever finishes it.
    Later(Box<dyn FnOnce(Pending) + Send>),
}

/// The application: turns a request into a response. Called from several workers at once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request<'_>, response: &mut Response) -> Outcome;
}

/// A request whose response is deferred. Dropping it unfinished answers 500.
pub struct Pending {
    conn: Option<Stream>,
    registered: bool,
    request_id: u16,
    keep_conn: bool,
    shared: Arc<Shared>,
}

impl Pending {
    /// Builds the response with `fill` and sends it; the connection then goes back to the
    /// pool (FCGI_KEEP_CONN) or is closed.
    pub fn finish(mut self, fill: impl FnOnce(&mut Response)) {
        let mut response = Response::new();
        fill(&mut response);
        self.send(&response);
    }

    fn send(&mut self, response: &Response) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Head and body as two runs of STDOUT records: the body is copied once, straight into
        // the records (a deferred reply can be large, and many can be in flight).
        let mut head = Vec::with_capacity(256);
        response.write_head(&mut head);
        let records = response.body.len() / record::MAX_CONTENT + 4;
        let mut out = Vec::with_capacity(head.len() + response.body.len() + records * 8 + 32);
        record::write_stream(&mut out, kind::STDOUT, self.request_id, &head);
        record::write_stream(&mut out, kind::STDOUT, self.request_id, &response.body);
        record::write_stream_end(&mut out, kind::STDOUT, self.request_id);
        record::write_end_request(
            &mut out,
            self.request_id,
            0,
            protocol_status::REQUEST_COMPLETE,
        );
        let deadline = Instant::now() + self.shared.config.io_timeout;
        let written = write_all(&mut conn, &out, deadline);
        self.shared.request_done();
        match written {
            Ok(()) if self.keep_conn => self.shared.park(conn, self.registered, false),
            Ok(()) => self.shared.close(conn),
            Err(e) => {
                crate::log_warn!(
                    "fastcgi: closing connection while writing a deferred response: {e}"
                );
                self.shared.close(conn);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.conn.is_some() {
            let mut response = Response::new();
            response.plain(500, "deferred request dropped\n");
            self.send(&response);
        }
    }
}

/// Counters for status lines and idle exit.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Requests answered since start.
    pub served: u64,
    /// Requests being processed right now (including deferred ones).
    pub in_flight: usize,
    /// Open connections.
    pub open_conns: usize,
    /// Time since the last request started or finished.
    pub idle_for: Duration,
}

/// State shared by the workers and [`Pending`] requests.
struct Shared {
    config: ServerConfig,
    epoll: OwnedFd,
    wake: OwnedFd,
    listener: Listener,
    conns: Mutex<Slab>,
    open: AtomicUsize,
    stopping: AtomicBool,
    /// Set at the end of a stop: workers return.
    exiting: AtomicBool,
    in_flight: AtomicUsize,
    served: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last activity.
    last_activity: AtomicU64,
}

#[derive(Default)]
struct Slab {
    slots: Vec<Option<Parked>>,
    free: Vec<usize>,
}

struct Parked {
    stream: Stream,
    /// Accepted but nothing read yet: the peer connected to send a request (nginx writes it
    /// right after connecting). A stop waits for it instead of closing it unserved.
    fresh: bool,
}

impl Shared {
    fn lock_conns(&self) -> MutexGuard<'_, Slab> {
        // A poisoned lock only means a thread panicked while holding it; the slab stays valid.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn close(&self, stream: Stream) {
        drop(stream);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Parks a connection in epoll until its next (or, `fresh`, first) request arrives.
    fn park(&self, stream: Stream, registered: bool, fresh: bool) {
        let index = {
            let mut slab = self.lock_conns();
            if self.stopping.load(Ordering::Acquire) && !fresh {
                drop(slab);
                self.close(stream);
                return;
            }
            let parked = Parked { stream, fresh };
            match slab.free.pop() {
                Some(i) => {
                    slab.slots[i] = Some(parked);
                    i
                }
                None => {
                    slab.slots.push(Some(parked));
                    slab.slots.len() - 1
                }
            }
        };
        // Armed only after the slab holds it, so the worker that gets the event finds it.
        let data = epoll::EventData::new_u64(TOKEN_CONN_BASE + index as u64);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let armed = {
            let slab = self.lock_conns();
            match slab.slots.get(index).and_then(|s| s.as_ref()) {
                Some(p) if registered => epoll::modify(&self.epoll, &p.stream, data, flags),
                Some(p) => epoll::add(&self.epoll, &p.stream, data, flags),
                None => return,
            }
        };
        if let Err(e) = armed {
            crate::log_warn!("fastcgi: cannot watch a kept-alive connection: {e}");
            if let Some(p) = self.take_parked(index) {
                self.close(p.stream);
            }
        }
    }

    fn take_parked(&self, index: usize) -> Option<Parked> {
        let mut slab = self.lock_conns();
        let parked = slab.slots.get_mut(index)?.take()?;
        slab.free.push(index);
        Some(parked)
    }

    /// Closes the parked connections with nothing to read; returns how many remain (a request,
    /// or nginx's close, is waiting on them and a worker will pick it up).
    /// Fresh connections (nothing read yet) are kept unless `close_fresh`.
    fn close_idle_parked(&self, close_fresh: bool) -> usize {
        let mut remaining = 0;
        let idle: Vec<Parked> = {
            let mut slab = self.lock_conns();
            let mut idle = Vec::new();
            for i in 0..slab.slots.len() {
                let Some(p) = &slab.slots[i] else { continue };
                if p.fresh && !close_fresh {
                    remaining += 1;
                    continue;
                }
                let mut fds = [PollFd::new(&p.stream, PollFlags::IN)];
                let zero = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0)) {
                    idle.extend(slab.slots[i].take());
                    slab.free.push(i);
                } else {
                    remaining += 1;
                }
            }
            idle
        };
        for p in idle {
            self.close(p.stream);
        }
        remaining
    }

    fn close_all_parked(&self) {
        let drained: Vec<Parked> = {
            let mut slab = self.lock_conns();
            let parked: Vec<Parked> = slab.slots.iter_mut().filter_map(Option::take).collect();
            slab.slots.clear();
            slab.free.clear();
            parked
        };
        for p in drained {
            self.close(p.stream);
        }
    }
}

/// A running responder.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap handle to ask a running server for its counters or to stop it.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let now = s.started.elapsed().as_millis() as u64;
        let last = s.last_activity.load(Ordering::Relaxed);
        Stats {
            served: s.served.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Acquire),
            open_conns: s.open.load(Ordering::Acquire),
            idle_for: Duration::from_millis(now.saturating_sub(last)),
        }
    }
}

impl Server {
    /// Starts `config.workers` threads serving `listener` with `handler`.
    pub fn start<H: Handler>(
        listener: Listener,
        config: ServerConfig,
        handler: Arc<H>,
    ) -> io::Result<Server> {
        listener.set_nonblocking()?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(TOKEN_WAKE),
            epoll::EventFlags::IN,
        )?;
        let workers = config.workers.max(1);
        let shared = Arc::new(Shared {
            config,
            epoll,
            wake,
            listener,
            conns: Mutex::new(Slab::default()),
            open: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            exiting: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            started: Instant::now(),
            last_activity: AtomicU64::new(0),
        });
        let mut threads = Vec::with_capacity(workers);
        for n in 0..workers {
            let shared = Arc::clone(&shared);
            let handler = Arc::clone(&handler);
            let thread = std::thread::Builder::new()
                .name(format!("fcgi-worker-{n}"))
                // Workers need little stack: buffers live on the heap.
                .stack_size(256 * 1024)
                .spawn(move || Worker::new(shared, handler).run())?;
            threads.push(thread);
        }
        Ok(Server { shared, threads })
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish until
    /// `deadline`, and joins the workers. Returns false when requests were still in flight
    /// at the deadline. The listening socket is closed, never shut down: with socket
    /// activation systemd holds the same socket for the next instance.
    ///
    /// A kept-alive connection on which nginx has already written its next request is
    /// answered (then closed), not closed with the request unread: nginx reports that as a
    /// reset after sending and does not retry a POST. Only connections with nothing to read
    /// are closed. (nginx can still pick an idle connection in the microseconds between that
    /// check and the close; only `fastcgi_next_upstream error timeout non_idempotent` in nginx
    /// makes that lossless, see tests/restart.rs.)
    pub fn stop(self, deadline: Duration) -> bool {
        let s = &self.shared;
        s.stopping.store(true, Ordering::Release);
        let _ = epoll::delete(&s.epoll, &s.listener);
        let until = Instant::now() + deadline;
        // A just-accepted connection gets up to io_timeout to send its request.
        let fresh_until = Instant::now() + s.config.io_timeout.min(deadline);
        while s.close_idle_parked(Instant::now() >= fresh_until) > 0
            || s.in_flight.load(Ordering::Acquire) > 0
        {
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        s.exiting.store(true, Ordering::Release);
        let _ = rustix::io::write(&s.wake, &1u64.to_ne_bytes());
        s.close_all_parked();
        while s.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let clean = s.in_flight.load(Ordering::Acquire) == 0;
        if clean {
            for t in self.threads {
                let _ = t.join();
            }
        }
        clean
    }
}

/// Where a connection's current request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests.
    Idle,
    /// BEGIN_REQUEST seen; PARAMS arriving.
    Params,
    /// PARAMS ended; STDIN arriving.
    Stdin,
}

struct RequestState {
    phase: Phase,
    id: u16,
    keep_conn: bool,
    /// Body bytes beyond `max_body` seen so far (the body is then answered 413).
    discarded: usize,
    deadline: Instant,
    /// Just accepted and nothing read yet. Parked like any idle connection (so silent peers
    /// never hold a worker), but a stop waits for its request instead of closing it unserved:
    /// a SIGTERM between nginx's connect and its write would otherwise cost that request a 502.
    fresh: bool,
}

/// What serving a connection ended with.
enum ConnEnd {
    /// Nothing more to read now: park it for the next request (`true`: nothing read yet).
    Park(bool),
    /// Close it (peer closed, not keep-alive, error, or shutdown).
    Close,
    /// The handler deferred the response: the connection goes to a [`Pending`].
    Defer(Box<dyn FnOnce(Pending) + Send>, u16, bool),
}

/// What one record led to.
enum Step {
    Continue,
    /// A response (or END_REQUEST) for the current request is queued.
    Answered,
    End(ConnEnd),
}

struct Worker<H> {
    shared: Arc<Shared>,
    handler: Arc<H>,
    read_buf: Vec<u8>,
    start: usize,
    end: usize,
    params: Vec<u8>,
    index: Vec<ParamIndex>,
    body: Vec<u8>,
    response: Response,
    cgi: Vec<u8>,
    out: Vec<u8>,
}

impl<H: Handler> Worker<H> {
    fn new(shared: Arc<Shared>, handler: Arc<H>) -> Worker<H> {
        Worker {
            shared,
            handler,
            read_buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            params: Vec::with_capacity(2048),
            index: Vec::with_capacity(64),
            body: Vec::with_capacity(4096),
            response: Response::new(),
            cgi: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
        }
    }

    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1);
        loop {
            events.clear();
            match epoll::wait(
                &self.shared.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    crate::log_error!("fastcgi: epoll_wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            if self.shared.exiting.load(Ordering::Acquire) {
                return;
            }
            for event in &events {
                match event.data.u64() {
                    TOKEN_LISTENER => self.accept_one(),
                    TOKEN_WAKE => {}
                    token => {
                        let index = (token - TOKEN_CONN_BASE) as usize;
                        if let Some(parked) = self.shared.take_parked(index) {
                            self.serve(parked.stream, true, parked.fresh);
                        }
                    }
                }
            }
        }
    }

    fn accept_one(&mut self) {
        let stream = match self.shared.listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on a ready listener.
                crate::log_error!("fastcgi: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        };
        let open = self.shared.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.shared.config.max_conns {
            crate::log_warn!(
                "fastcgi: refusing a connection: {} already open (raise max_conns?)",
                open - 1
            );
            self.shared.close(stream);
            return;
        }
        self.shared.touch();
        self.serve(stream, false, true);
    }

    /// Serves requests on `stream` until it has nothing more to read.
    fn serve(&mut self, mut stream: Stream, registered: bool, fresh: bool) {
        self.start = 0;
        self.end = 0;
        self.out.clear();
        match self.serve_requests(&mut stream, fresh) {
            ConnEnd::Park(fresh) => self.shared.park(stream, registered, fresh),
            ConnEnd::Close => {
                // Whatever is queued (an END_REQUEST, GET_VALUES_RESULT) still goes out.
                let _ = self.flush(&mut stream);
                self.shared.close(stream);
            }
            ConnEnd::Defer(job, request_id, keep_conn) => {
                // Pipelined bytes cannot follow the connection to another thread.
                let keep_conn = keep_conn && self.start == self.end;
                job(Pending {
                    conn: Some(stream),
                    registered,
                    request_id,
                    keep_conn,
                    shared: Arc::clone(&self.shared),
                });
            }
        }
        self.shrink_buffers();
    }

    /// Returns buffers that an unusual request grew back to their usual size, so one large
    /// body does not stay resident for the life of the process.
    fn shrink_buffers(&mut self) {
        if self.read_buf.len() > READ_BUF {
            self.read_buf.truncate(READ_BUF);
            self.read_buf.shrink_to_fit();
        }
        let bufs = [
            &mut self.params,
            &mut self.body,
            &mut self.cgi,
            &mut self.out,
            &mut self.response.body,
        ];
        for buf in bufs {
            if buf.capacity() > 64 * 1024 {
                buf.clear();
                buf.shrink_to(4096);
            }
        }
    }

    /// `fresh`: just accepted, no byte read yet (see [`RequestState::fresh`]).
    fn serve_requests(&mut self, stream: &mut Stream, fresh: bool) -> ConnEnd {
        let mut state = RequestState {
            phase: Phase::Idle,
            id: 0,
            keep_conn: false,
            discarded: 0,
            deadline: Instant::now() + self.shared.config.io_timeout,
            fresh,
        };
        let end = self.serve_records(stream, &mut state);
        if state.phase != Phase::Idle && !matches!(end, ConnEnd::Defer(..)) {
            // A started request that will never be answered still leaves the in-flight count.
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.touch();
        }
        end
    }

    fn serve_records(&mut self, stream: &mut Stream, state: &mut RequestState) -> ConnEnd {
        loop {
            // Handle every complete record already buffered.
            loop {
                let parsed = match record::parse_record(&self.read_buf[self.start..self.end]) {
                    Ok(p) => p,
                    Err(e) => return malformed(e),
                };
                let Parsed::Complete((header, _), used) = parsed else {
                    break;
                };
                let content = self.start + record::HEADER_LEN
                    ..self.start + record::HEADER_LEN + header.content_len as usize;
                self.start += used;
                match self.on_record(state, header, content) {
                    Step::Continue => {}
                    Step::End(end) => return end,
                    Step::Answered => {
                        if !state.keep_conn || self.shared.stopping.load(Ordering::Acquire) {
                            return ConnEnd::Close;
                        }
                    }
                }
            }
            if let Err(e) = self.flush(stream) {
                crate::log_warn!("fastcgi: closing connection while writing: {e}");
                return ConnEnd::Close;
            }
            let idle = state.phase == Phase::Idle && self.start == self.end;
            // Make room: move the partial record to the front; grow for one whole record.
            if self.start > 0 {
                self.read_buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.read_buf.len() {
                let needed = match record::parse_header(&self.read_buf[..self.end]) {
                    Ok(Parsed::Complete(h, _)) => h.record_len(),
                    Ok(Parsed::Partial) => record::HEADER_LEN,
                    Err(e) => return malformed(e),
                };
                self.read_buf
                    .resize(needed.clamp(READ_BUF, record::MAX_RECORD), 0);
            }
            let deadline = if idle { None } else { Some(state.deadline) };
            match read_some(stream, &mut self.read_buf[self.end..], deadline) {
                Ok(0) => {
                    if !idle {
                        crate::log_warn!(
                            "fastcgi: peer closed the connection in the middle of a request"
                        );
                    }
                    return ConnEnd::Close;
                }
                Ok(n) => {
                    state.fresh = false;
                    if idle {
                        // The first bytes of a request start its deadline.
                        state.deadline = Instant::now() + self.shared.config.io_timeout;
                    }
                    self.end += n;
                }
                // Only returned without a deadline: idle between requests.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if self.shared.stopping.load(Ordering::Acquire) && !state.fresh {
                        ConnEnd::Close
                    } else {
                        ConnEnd::Park(state.fresh)
                    };
                }
                Err(e) => {
                    let step = match state.phase {
                        Phase::Idle => "reading a record",
                        Phase::Params => "reading PARAMS",
                        Phase::Stdin => "reading STDIN",
                    };
                    crate::log_warn!("fastcgi: closing connection while {step}: {e}");
                    return ConnEnd::Close;
                }
            }
        }
    }

    fn on_record(
        &mut self,
        state: &mut RequestState,
        header: record::Header,
        content: std::ops::Range<usize>,
    ) -> Step {
        let id = header.request_id;
        let active = state.phase != Phase::Idle && id == state.id;
        match header.kind {
            kind::BEGIN_REQUEST => {
                let begin = match BeginRequest::parse(&self.read_buf[content]) {
                    Ok(b) => b,
                    Err(e) => return Step::End(malformed(e)),
                };
                if id == 0 || active {
                    return Step::End(malformed(record::Error::UnexpectedRecord));
                }
                if state.phase != Phase::Idle {
                    record::write_end_request(&mut self.out, id, 0, protocol_status::CANT_MPX_CONN);
                    return Step::Continue;
                }
                if begin.role != record::ROLE_RESPONDER {
                    crate::log_warn!("fastcgi: refusing role {} (only RESPONDER)", begin.role);
                    record::write_end_request(&mut self.out, id, 0, protocol_status::UNKNOWN_ROLE);
                    state.keep_conn = begin.keep_conn();
                    return Step::Answered;
                }
                *state = RequestState {
                    phase: Phase::Params,
                    id,
                    keep_conn: begin.keep_conn(),
                    discarded: 0,
                    deadline: state.deadline,
                    fresh: false,
                };
                self.params.clear();
                self.index.clear();
                self.body.clear();
                self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
                Step::Continue
            }
            kind::ABORT_REQUEST => {
                if active {
                    record::write_end_request(
                        &mut self.out,
                        id,
                        1,
                        protocol_status::REQUEST_COMPLETE,
                    );
                    state.phase = Phase::Idle;
                    self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    self.shared.touch();
                    return Step::Answered;
                }
                Step::Continue
            }
            kind::PARAMS if active => {
                if state.phase != Phase::Params {
                    return Step::End(malformed(record::Error::UnexpectedRecord));
                }
                if content.is_empty() {
                    if let Err(e) = self.index_params() {
                        return Step::End(malformed(e));
                    }
                    state.phase = Phase::Stdin;
                    return Step::Continue;
                }
                if self.params.len() + content.len() > self.shared.config.max_params {
                    return Step::End(malformed(record::Error::ParamsTooLarge));
                }
                self.params.extend_from_slice(&self.read_buf[content]);
                Step::Continue
            }
            kind::STDIN if active => {
                if state.phase != Phase::Stdin {
                    return Step::End(malformed(record::Error::UnexpectedRecord));
                }
                if content.is_empty() {
                    return self.respond(state);
                }
                if state.discarded > 0
                    || self.body.len() + content.len() > self.shared.config.max_body
                {
                    state.discarded += content.len();
                    if state.discarded > MAX_DISCARD {
                        crate::log_warn!("fastcgi: closing connection: body far over max_body");
                        return Step::End(ConnEnd::Close);
                    }
                    return Step::Continue;
                }
                self.body.extend_from_slice(&self.read_buf[content]);
                Step::Continue
            }
            // Records of a request that is not active are ignored (FastCGI §3.3); DATA is for
            // the FILTER role, which we do not serve.
            kind::PARAMS | kind::STDIN | kind::DATA => Step::Continue,
            kind::GET_VALUES => {
                self.get_values(content);
                Step::Continue
            }
            other => {
                record::write_unknown_type(&mut self.out, other);
                Step::Continue
            }
        }
    }

    /// Answers FCGI_GET_VALUES with the variables we know; unknown names are left out (§4.1).
    fn get_values(&mut self, content: std::ops::Range<usize>) {
        let max = self.shared.config.max_conns.to_string();
        let mut result = Vec::with_capacity(64);
        for pair in Pairs::new(&self.read_buf[content]) {
            let Ok((name, _)) = pair else { break };
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => max.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            record::write_pair(&mut result, name, value);
        }
        result.truncate(record::MAX_CONTENT);
        record::write_header(
            &mut self.out,
            kind::GET_VALUES_RESULT,
            0,
            result.len() as u16,
            0,
        );
        self.out.extend_from_slice(&result);
    }

    fn index_params(&mut self) -> Result<(), record::Error> {
        let base = self.params.as_ptr() as usize;
        for pair in Pairs::new(&self.params) {
            let (name, value) = pair?;
            if self.index.len() >= MAX_PAIRS {
                return Err(record::Error::TooManyParams);
            }
            let offset = |s: &[u8]| {
                let start = (s.as_ptr() as usize - base) as u32;
                (start, start + s.len() as u32)
            };
            self.index.push(ParamIndex {
                name: offset(name),
                value: offset(value),
            });
        }
        Ok(())
    }

    /// STDIN is complete: call the handler and queue its response.
    fn respond(&mut self, state: &mut RequestState) -> Step {
        let Worker {
            handler,
            params,
            index,
            body,
            response,
            cgi,
            out,
            ..
        } = self;
        response.reset();
        let outcome = if state.discarded > 0 {
            crate::log_warn!(
                "fastcgi: refusing a {} byte body (max_body is {})",
                body.len() + state.discarded,
                self.shared.config.max_body
            );
            response.plain(413, "request body too large\n");
            Outcome::Done
        } else {
            let request = Request {
                stream: params,
                index,
                body,
            };
            match catch_unwind(AssertUnwindSafe(|| handler.handle(&request, response))) {
                Ok(outcome) => outcome,
                Err(_) => {
                    crate::log_error!("fastcgi: the handler panicked; answering 500");
                    response.plain(500, "internal error\n");
                    Outcome::Done
                }
            }
        };
        state.phase = Phase::Idle;
        match outcome {
            Outcome::Done => {
                cgi.clear();
                response.write_cgi(cgi);
                record::write_stream(out, kind::STDOUT, state.id, cgi);
                record::write_stream_end(out, kind::STDOUT, state.id);
                record::write_end_request(out, state.id, 0, protocol_status::REQUEST_COMPLETE);
                self.shared.request_done();
                Step::Answered
            }
            Outcome::Later(job) => Step::End(ConnEnd::Defer(job, state.id, state.keep_conn)),
        }
    }

    fn flush(&mut self, stream: &mut Stream) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = write_all(
            stream,
            &self.out,
            Instant::now() + self.shared.config.io_timeout,
        );
        self.out.clear();
        result
    }
}

fn malformed(e: record::Error) -> ConnEnd {
    crate::log_warn!("fastcgi: closing connection: malformed input: {e}");
    ConnEnd::Close
}

/// Reads what is available; waits until `deadline` when given, else returns `WouldBlock`.
fn read_some(stream: &mut Stream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match deadline {
                Some(d) => wait_ready(stream, PollFlags::IN, d)?,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Writes all of `buf`, waiting for the socket until `deadline`.
fn write_all(stream: &mut Stream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(stream, PollFlags::OUT, deadline)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn wait_ready(stream: &Stream, flags: PollFlags, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out (io_timeout)",
            ));
        }
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(stream, flags)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
