//! The responder: a fixed pool of worker threads sharing one epoll instance.
//!
//! # Design
//! - The listener is registered level-triggered; a worker that sees it accepts one connection
//!   and serves it at once (nginx writes the request right after connecting), like libfcgi.
//! - A kept-alive connection (FCGI_KEEP_CONN) with nothing to read is parked in epoll with
//!   `EPOLLONESHOT`, so whichever worker is free picks it up when the next request arrives.
//!   Idle connections therefore never pin a worker: a blocking worker-per-connection design
//!   deadlocks as soon as nginx keeps more connections than there are workers.
//! - Idle connections do not hold a place for ever: a kept-alive connection with no request
//!   for `idle_timeout`, or a new one that sent nothing for `io_timeout`, is closed (the
//!   workers wake at least once a second to look); and when `max_conns` are open, a new
//!   connection is admitted by closing the connection idle the longest, not refused. Only
//!   when every open connection is in a request is a new one refused, with one warning per
//!   10 s saying how many.
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

use crate::connection::{Connection, Limits, Request, Step};
use crate::record::{self, Parsed};
use crate::response::{Response, write_response};
use crate::socket::{Listener, Stream, read_some, write_all};
use rustix::event::{PollFd, PollFlags, epoll};
use std::io;
use std::os::fd::OwnedFd;
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
    /// Deadline for reading the rest of a started request, and for writing a response; also
    /// how long a new connection may stay silent.
    pub io_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed. Keep it above the
    /// client's own idle timeout (nginx's upstream `keepalive_timeout`), so that the client,
    /// which knows when it will reuse a connection, normally closes first.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 2,
            max_conns: 256,
            max_body: 64 * 1024,
            max_params: 64 * 1024,
            io_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Initial read buffer; grows up to one whole record when a record needs it.
const READ_BUF: usize = 16 * 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKE: u64 = 1;
/// A parked connection's token: `TOKEN_CONN_BASE + slot` in the low 32 bits and the slot's
/// generation in the high 32, so an event for a connection already closed (by the idle reaper
/// or to admit a new one) is not taken for the connection now in its slot.
const TOKEN_CONN_BASE: u64 = 2;

/// How often idle connections are looked for (the longest a worker sleeps in epoll).
const REAP_EVERY: Duration = Duration::from_secs(1);
/// At most one "max_conns" warning line per this interval, with a count.
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    in_flight: Option<InFlight>,
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
        let mut head = Vec::with_capacity(256);
        let records = response.body.len() / record::MAX_CONTENT + 4;
        let mut out = Vec::with_capacity(response.body.len() + 256 + records * 8);
        write_response(&mut out, &mut head, self.request_id, response);
        let deadline = Instant::now() + self.shared.config.io_timeout;
        let written = write_all(&mut conn, &out, deadline);
        if let Some(request) = self.in_flight.take() {
            request.answered();
        }
        match written {
            Ok(()) if self.keep_conn => self.shared.park(conn, self.registered, false),
            Ok(()) => self.shared.close(conn),
            Err(e) => {
                log::warn!("fastcgi: closing connection while writing a deferred response: {e}");
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
    /// The `max_conns` setting.
    pub max_conns: usize,
    /// Connections closed at accept because `max_conns` were already open.
    pub max_conns_reached: u64,
    /// Time since the last request started or finished.
    pub idle_for: Duration,
}

/// One request counted in flight, from BEGIN_REQUEST until it is answered or abandoned:
/// the count drops when this does, whichever way the request ends.
struct InFlight {
    shared: Arc<Shared>,
    answered: bool,
}

impl InFlight {
    fn begin(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: Arc::clone(shared),
            answered: false,
        }
    }

    /// The response went out (or was attempted): counted as served.
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.answered {
            self.shared.served.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.touch();
    }
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
    /// Connections refused at accept for `max_conns`.
    max_conns_reached: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last activity.
    last_activity: AtomicU64,
    /// Milliseconds since `started` when idle connections are next looked for.
    next_reap: AtomicU64,
    /// Connections closed to admit a new one at `max_conns`, and new ones refused, since the
    /// last warning; and when that was (ms since `started`, `u64::MAX` before the first).
    evicted: AtomicU64,
    refused: AtomicU64,
    last_warning: AtomicU64,
}

#[derive(Default)]
struct Slab {
    slots: Vec<Option<Parked>>,
    /// Each slot's generation, bumped whenever the slot is taken (see [`TOKEN_CONN_BASE`]).
    generations: Vec<u32>,
    free: Vec<usize>,
}

struct Parked {
    stream: Stream,
    /// Accepted but nothing read yet: the peer connected to send a request (nginx writes it
    /// right after connecting). A stop waits for it instead of closing it unserved.
    fresh: bool,
    /// When it was parked: idle since then.
    since: Instant,
}

/// Whether `stream` has bytes (or a hang-up) waiting to be read right now.
fn readable(stream: &Stream) -> bool {
    let mut fds = [PollFd::new(stream, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0))
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
            let parked = Parked {
                stream,
                fresh,
                since: Instant::now(),
            };
            let index = match slab.free.pop() {
                Some(i) => {
                    slab.slots[i] = Some(parked);
                    i
                }
                None => {
                    slab.slots.push(Some(parked));
                    slab.generations.push(0);
                    slab.slots.len() - 1
                }
            };
            (index, slab.generations[index])
        };
        let (index, generation) = index;
        // Armed only after the slab holds it, so the worker that gets the event finds it.
        let token = TOKEN_CONN_BASE + index as u64 + (u64::from(generation) << 32);
        let data = epoll::EventData::new_u64(token);
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
            log::warn!("fastcgi: cannot watch a kept-alive connection: {e}");
            if let Some(p) = self.take_parked(index, generation) {
                self.close(p.stream);
            }
        }
    }

    /// Takes the connection parked in slot `index` if it is still the one of `generation`.
    fn take_parked(&self, index: usize, generation: u32) -> Option<Parked> {
        let mut slab = self.lock_conns();
        if slab.generations.get(index) != Some(&generation) {
            return None;
        }
        take_slot(&mut slab, index)
    }

    /// Admits a new connection at `max_conns` by closing the one idle the longest (parked,
    /// nothing waiting to be read). False when every open connection is in a request.
    fn evict_oldest_idle(&self) -> bool {
        let oldest = {
            let mut slab = self.lock_conns();
            let mut idle: Vec<(Instant, usize)> = (slab.slots.iter().enumerate())
                .filter_map(|(i, p)| p.as_ref().map(|p| (p.since, i)))
                .collect();
            idle.sort_unstable();
            let found = idle
                .into_iter()
                .find(|&(_, i)| (slab.slots[i].as_ref()).is_some_and(|p| !readable(&p.stream)));
            found.and_then(|(_, i)| take_slot(&mut slab, i))
        };
        match oldest {
            Some(p) => {
                self.close(p.stream);
                true
            }
            None => false,
        }
    }

    /// Closes connections idle too long: kept-alive ones after `idle_timeout`, new ones that
    /// sent nothing after `io_timeout`. Runs at most once per [`REAP_EVERY`], on whichever
    /// worker wakes first.
    fn reap_idle(&self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let due = self.next_reap.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_reap
                .compare_exchange(
                    due,
                    now_ms + REAP_EVERY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let now = Instant::now();
        let expired: Vec<Parked> = {
            let mut slab = self.lock_conns();
            let mut expired = Vec::new();
            for i in 0..slab.slots.len() {
                let Some(p) = &slab.slots[i] else { continue };
                let limit = if p.fresh {
                    self.config.io_timeout
                } else {
                    self.config.idle_timeout
                };
                if now.saturating_duration_since(p.since) >= limit && !readable(&p.stream) {
                    expired.extend(take_slot(&mut slab, i));
                }
            }
            expired
        };
        if !expired.is_empty() {
            log::debug!(
                "fastcgi: closed {} connection(s) idle too long",
                expired.len()
            );
        }
        for p in expired {
            self.close(p.stream);
        }
    }

    /// Counts an eviction or a refusal at `max_conns`; writes one warning line per
    /// [`WARN_EVERY`] with the counts since the last one.
    fn note_max_conns(&self, evicted: bool) {
        let counter = if evicted {
            &self.evicted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_warning.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if !due
            || self
                .last_warning
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let evicted = self.evicted.swap(0, Ordering::Relaxed);
        let refused = self.refused.swap(0, Ordering::Relaxed);
        log::warn!(
            "fastcgi: max_conns ({}) reached: closed {evicted} idle connection(s) to admit new \
             ones, refused {refused} (every connection in a request) (at most one line per {} s)",
            self.config.max_conns,
            WARN_EVERY.as_secs()
        );
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
                if readable(&p.stream) {
                    remaining += 1;
                } else {
                    idle.extend(take_slot(&mut slab, i));
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
            slab.generations.clear();
            slab.free.clear();
            parked
        };
        for p in drained {
            self.close(p.stream);
        }
    }
}

/// Empties slot `index`, freeing it under a new generation.
fn take_slot(slab: &mut Slab, index: usize) -> Option<Parked> {
    let parked = slab.slots.get_mut(index)?.take()?;
    slab.generations[index] = slab.generations[index].wrapping_add(1);
    slab.free.push(index);
    Some(parked)
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
            max_conns: s.config.max_conns,
            max_conns_reached: s.max_conns_reached.load(Ordering::Relaxed),
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
            max_conns_reached: AtomicU64::new(0),
            started: Instant::now(),
            last_activity: AtomicU64::new(0),
            next_reap: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_warning: AtomicU64::new(u64::MAX),
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

/// What serving a connection ended with.
enum ConnEnd {
    /// Nothing more to read now: park it for the next request (`true`: nothing read yet).
    Park(bool),
    /// Close it (peer closed, not keep-alive, error, or shutdown).
    Close,
    /// The handler deferred the response: the connection goes to a [`Pending`].
    Defer(Box<dyn FnOnce(Pending) + Send>),
}

struct Worker<H> {
    shared: Arc<Shared>,
    handler: Arc<H>,
    conn: Connection,
    read_buf: Vec<u8>,
    start: usize,
    end: usize,
    response: Response,
    cgi: Vec<u8>,
    out: Vec<u8>,
}

impl<H: Handler> Worker<H> {
    fn new(shared: Arc<Shared>, handler: Arc<H>) -> Worker<H> {
        let limits = Limits {
            max_params: shared.config.max_params,
            max_body: shared.config.max_body,
            max_conns: shared.config.max_conns,
        };
        Worker {
            shared,
            handler,
            conn: Connection::new(limits),
            read_buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            response: Response::new(),
            cgi: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
        }
    }
    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1);
        let wake_up = rustix::time::Timespec {
            tv_sec: REAP_EVERY.as_secs() as _,
            tv_nsec: 0,
        };
        loop {
            events.clear();
            match epoll::wait(
                &self.shared.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&wake_up),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("fastcgi: epoll_wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            if self.shared.exiting.load(Ordering::Acquire) {
                return;
            }
            if !self.shared.stopping.load(Ordering::Acquire) {
                self.shared.reap_idle();
            }
            for event in &events {
                match event.data.u64() {
                    TOKEN_LISTENER => self.accept_one(),
                    TOKEN_WAKE => {}
                    token => {
                        let index = ((token & 0xffff_ffff) - TOKEN_CONN_BASE) as usize;
                        let generation = (token >> 32) as u32;
                        if let Some(parked) = self.shared.take_parked(index, generation) {
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
                log::error!("fastcgi: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        };
        let open = self.shared.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.shared.config.max_conns {
            self.shared
                .max_conns_reached
                .fetch_add(1, Ordering::Relaxed);
            // Admit it in place of the connection idle the longest, if there is one.
            let evicted = self.shared.evict_oldest_idle();
            self.shared.note_max_conns(evicted);
            if !evicted {
                self.shared.close(stream);
                return;
            }
        }
        self.shared.touch();
        self.serve(stream, false, true);
    }

    /// Serves requests on `stream` until it has nothing more to read.
    fn serve(&mut self, mut stream: Stream, registered: bool, fresh: bool) {
        self.start = 0;
        self.end = 0;
        self.out.clear();
        self.conn.reset();
        // A started request that is never answered (peer gone, malformed, timeout) still
        // leaves the in-flight count when this drops.
        let mut in_flight = None;
        match self.serve_records(&mut stream, fresh, &mut in_flight) {
            ConnEnd::Park(fresh) => self.shared.park(stream, registered, fresh),
            ConnEnd::Close => {
                drop(in_flight.take());
                // Whatever is queued (an END_REQUEST, GET_VALUES_RESULT) still goes out.
                let _ = self.flush(&mut stream);
                self.shared.close(stream);
            }
            ConnEnd::Defer(job) => {
                let (request_id, keep_conn) = self.conn.hand_off();
                // Pipelined bytes cannot follow the connection to another thread.
                let keep_conn = keep_conn && self.start == self.end;
                let pending = Pending {
                    conn: Some(stream),
                    registered,
                    request_id,
                    keep_conn,
                    in_flight: in_flight.take(),
                    shared: Arc::clone(&self.shared),
                };
                // A panicking job drops its `Pending` while unwinding, which answers 500; the
                // worker must live on like after a panicking handler.
                if catch_unwind(AssertUnwindSafe(|| job(pending))).is_err() {
                    log::error!("fastcgi: a deferred handler panicked; answering 500");
                }
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
        for buf in [&mut self.cgi, &mut self.out] {
            if buf.capacity() > 64 * 1024 {
                buf.clear();
                buf.shrink_to(4096);
            }
        }
        self.response.shrink();
        self.conn.shrink();
    }

    /// Feeds the connection's records to the state machine, reading with a deadline once a
    /// request has started. `fresh`: just accepted, nothing read yet (see [`Parked::fresh`]).
    fn serve_records(
        &mut self,
        stream: &mut Stream,
        mut fresh: bool,
        in_flight: &mut Option<InFlight>,
    ) -> ConnEnd {
        let io_timeout = self.shared.config.io_timeout;
        let mut deadline = Instant::now() + io_timeout;
        loop {
            // Handle every complete record already buffered.
            loop {
                let input = &self.read_buf[self.start..self.end];
                let (used, step) = self.conn.advance(input, &mut self.out);
                self.start += used;
                match step {
                    Step::NeedInput => break,
                    Step::Began => {
                        *in_flight = Some(InFlight::begin(&self.shared));
                        continue;
                    }
                    Step::Request => {
                        if let Some(job) = self.respond() {
                            return ConnEnd::Defer(job);
                        }
                        if let Some(request) = in_flight.take() {
                            request.answered();
                        }
                    }
                    Step::Ended => *in_flight = None,
                    Step::Close(e) => {
                        if e == record::Error::BodyFarTooLarge {
                            log::warn!("fastcgi: closing connection: {e}");
                        } else {
                            log::warn!("fastcgi: closing connection: malformed input: {e}");
                        }
                        return ConnEnd::Close;
                    }
                }
                if !self.conn.keep_conn() || self.shared.stopping.load(Ordering::Acquire) {
                    return ConnEnd::Close;
                }
            }
            if let Err(e) = self.flush(stream) {
                log::warn!("fastcgi: closing connection while writing: {e}");
                return ConnEnd::Close;
            }
            let idle = !self.conn.in_request() && self.start == self.end;
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
                    Err(e) => {
                        log::warn!("fastcgi: closing connection: malformed input: {e}");
                        return ConnEnd::Close;
                    }
                };
                self.read_buf
                    .resize(needed.clamp(READ_BUF, record::MAX_RECORD), 0);
            }
            let wait = if idle { None } else { Some(deadline) };
            match read_some(stream, &mut self.read_buf[self.end..], wait) {
                Ok(0) => {
                    if !idle {
                        log::warn!(
                            "fastcgi: peer closed the connection in the middle of a request"
                        );
                    }
                    return ConnEnd::Close;
                }
                Ok(n) => {
                    fresh = false;
                    if idle {
                        // The first bytes of a request start its deadline.
                        deadline = Instant::now() + io_timeout;
                    }
                    self.end += n;
                }
                // Only returned without a deadline: idle between requests.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if self.shared.stopping.load(Ordering::Acquire) && !fresh {
                        ConnEnd::Close
                    } else {
                        ConnEnd::Park(fresh)
                    };
                }
                Err(e) => {
                    let step = self.conn.reading();
                    log::warn!("fastcgi: closing connection while {step}: {e}");
                    return ConnEnd::Close;
                }
            }
        }
    }

    /// The request is complete: call the handler (or refuse an oversized body) and queue the
    /// response, or return the handler's job for a deferred one.
    fn respond(&mut self) -> Option<Box<dyn FnOnce(Pending) + Send>> {
        let Worker {
            handler,
            conn,
            response,
            cgi,
            out,
            shared,
            ..
        } = self;
        response.reset();
        let outcome = if let Some(size) = conn.oversized() {
            log::warn!(
                "fastcgi: refusing a {size} byte body (max_body is {})",
                shared.config.max_body
            );
            response.plain(413, "request body too large\n");
            Outcome::Done
        } else {
            let request = conn.request();
            match catch_unwind(AssertUnwindSafe(|| handler.handle(&request, response))) {
                Ok(outcome) => outcome,
                Err(_) => {
                    log::error!("fastcgi: the handler panicked; answering 500");
                    response.plain(500, "internal error\n");
                    Outcome::Done
                }
            }
        };
        match outcome {
            Outcome::Done => {
                conn.respond(response, cgi, out);
                None
            }
            Outcome::Later(job) => Some(job),
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
