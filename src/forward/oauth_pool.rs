//! Menu OAuth on a pool of its own.
//!
//! A GET to an account's `redirect_path` needs no signature: anyone can send one, and each
//! costs two outbound calls (the first carrying the AppSecret). So OAuth work is kept apart from
//! message handling and bounded three ways:
//! - it runs on `oauth_slots` threads of its own with a queue as long again; `forward` slots are
//!   never used, so a flood of GETs cannot make a `forward` rule answer its fallback;
//! - each account has a token bucket of `oauth_rate` exchanges per second (burst the same): a
//!   GET beyond it is answered 429 at once, without an outbound call;
//! - with every slot busy and the queue full, a GET is answered 503 at once; a GET that waited
//!   in the queue longer than a call's deadline is answered 503 without calling (the browser has
//!   given up by then).
//!
//! Refusals are logged as one summary line per account and reason every
//! [`WARNING_INTERVAL`](crate::ratelimit::WARNING_INTERVAL), with a count.

use super::oauth::{self, OAuthJob};
use crate::fastcgi::{Pending, Response};
use crate::ratelimit::{Throttle, TokenBucket};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Settings (`oauth_slots`, `oauth_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthSettings {
    /// Threads doing OAuth exchanges; as many more may wait in the queue.
    pub slots: usize,
    /// Exchanges per second per account, and the burst.
    pub rate: u32,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings { slots: 2, rate: 10 }
    }
}

/// Why a GET was refused before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account's token bucket is empty (429).
    RateLimited,
    /// Every OAuth slot is busy and the queue is full (503).
    Busy,
}

impl Refusal {
    /// Fills `response` with the refusal.
    pub fn answer(self, response: &mut Response) {
        match self {
            Refusal::RateLimited => {
                response.plain(429, "too many requests, try again\n");
                response.add_header("Retry-After", "1");
            }
            Refusal::Busy => {
                response.plain(503, "busy, try again\n");
                response.add_header("Retry-After", "1");
            }
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::RateLimited => "over oauth_rate",
            Refusal::Busy => "every oauth slot busy and the queue full",
        }
    }
}

/// Per account: the bucket and the two refusal throttles.
struct AccountState {
    bucket: TokenBucket,
    limited: Throttle,
    busy: Throttle,
}

struct Task {
    job: OAuthJob,
    pending: Pending,
    queued: Instant,
    /// Released when the task is done.
    _admitted: Admitted,
}

/// The OAuth pool.
pub struct OAuthPool {
    settings: OAuthSettings,
    /// Admitted GETs not finished yet (queued or running).
    outstanding: Arc<AtomicUsize>,
    sender: OnceLock<SyncSender<Task>>,
    /// Keyed by account name (from the config, so bounded by it).
    accounts: Mutex<HashMap<String, AccountState>>,
}

/// A place in the pool, taken by [`OAuthPool::admit`]; given back when dropped.
pub struct Admitted {
    outstanding: Arc<AtomicUsize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OAuthPool {
    pub fn new(settings: OAuthSettings) -> OAuthPool {
        OAuthPool {
            settings: OAuthSettings {
                slots: settings.slots.max(1),
                rate: settings.rate.max(1),
            },
            outstanding: Arc::new(AtomicUsize::new(0)),
            sender: OnceLock::new(),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Most GETs admitted at once: one per slot running, as many queued.
    fn capacity(&self) -> usize {
        self.settings.slots * 2
    }

    /// Decides at once whether a GET for `account` may go ahead. A refusal is logged here
    /// (throttled), so the caller writes no line of its own for it.
    pub fn admit(&self, account: &str) -> Result<Admitted, Refusal> {
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let state = match accounts.get_mut(account) {
            Some(s) => s,
            None => accounts.entry(account.to_string()).or_insert(AccountState {
                bucket: TokenBucket::new(self.settings.rate, self.settings.rate, now),
                limited: Throttle::default(),
                busy: Throttle::default(),
            }),
        };
        let capacity = self.capacity();
        let placed = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok();
        let refusal = if !placed {
            Refusal::Busy
        } else if !state.bucket.take(now) {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            Refusal::RateLimited
        } else {
            return Ok(Admitted {
                outstanding: Arc::clone(&self.outstanding),
            });
        };
        let throttle = match refusal {
            Refusal::RateLimited => &state.limited,
            Refusal::Busy => &state.busy,
        };
        if let Some(count) = throttle.hit(now) {
            crate::log_warn!(
                "oauth account={account} result=refused reason=\"{}\" count={count} (at most one line per {} s)",
                refusal.reason(),
                crate::ratelimit::WARNING_INTERVAL.as_secs()
            );
        }
        Err(refusal)
    }

    /// Queues an admitted exchange; never blocks (called on a FastCGI worker).
    pub fn submit(&self, job: OAuthJob, admitted: Admitted, pending: Pending) {
        let sender = self.sender.get_or_init(|| self.spawn());
        let task = Task {
            job,
            pending,
            queued: Instant::now(),
            _admitted: admitted,
        };
        // The channel holds `capacity` tasks, and admission keeps at most that many
        // outstanding, so this only fails if the threads could not be started.
        if let Err(e) = sender.try_send(task) {
            let (std::sync::mpsc::TrySendError::Full(task)
            | std::sync::mpsc::TrySendError::Disconnected(task)) = e;
            crate::log_error!(
                "oauth account={} result=error reason=\"no oauth thread\"",
                task.job.account
            );
            task.pending.finish(|r| Refusal::Busy.answer(r));
        }
    }

    fn spawn(&self) -> SyncSender<Task> {
        let (tx, rx) = sync_channel::<Task>(self.capacity());
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.settings.slots {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("oauth-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || oauth_thread(&rx));
            if let Err(e) = spawned {
                crate::log_error!("cannot start oauth thread {i}: {e}");
            }
        }
        tx
    }
}

fn oauth_thread(rx: &Mutex<Receiver<Task>>) {
    loop {
        let task = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(task) = task else { return };
        if task.queued.elapsed() > oauth::TIMEOUT {
            crate::log_warn!(
                "oauth account={} result=refused reason=\"waited too long in the queue\"",
                task.job.account
            );
            task.pending.finish(|r| Refusal::Busy.answer(r));
            continue;
        }
        run_task(&task.job, task.pending);
    }
}

fn run_task(job: &OAuthJob, pending: Pending) {
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| oauth::run(job)));
    let ms = started.elapsed().as_millis();
    match result {
        Ok(Ok(page)) => {
            crate::log_info!(
                "oauth account={} result={} ms={ms}",
                job.account,
                if page.redirect.is_empty() {
                    "page"
                } else {
                    "redirect"
                }
            );
            pending.finish(|r| page.write(r));
        }
        Ok(Err(reason)) => {
            crate::log_warn!(
                "oauth account={} result=error reason=\"{}\" ms={ms}",
                job.account,
                reason.escape_debug()
            );
            pending.finish(|r| r.plain(502, "menu handler unavailable\n"));
        }
        Err(_) => {
            crate::log_error!(
                "oauth account={} result=error reason=\"internal error\"",
                job.account
            );
            pending.finish(|r| r.plain(500, "internal error\n"));
        }
    }
}
