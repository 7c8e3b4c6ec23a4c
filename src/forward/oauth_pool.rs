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
//! [`WARNING_INTERVAL`](crate::logger::WARNING_INTERVAL), with a count.

use super::oauth::{self, OAuthJob};
use super::{Answer, Complete, userinfo};
use crate::config::OAuthSettings;
use crate::logger::Throttle;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Why a GET was refused before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account's token bucket is empty (429).
    RateLimited,
    /// Every OAuth slot is busy and the queue is full (503).
    Busy,
}

impl Refusal {
    /// The refusal as an answer: 429 or 503, with `Retry-After: 1`.
    pub fn answer(self) -> Answer {
        let mut answer = match self {
            Refusal::RateLimited => Answer::plain(429, "too many requests, try again\n"),
            Refusal::Busy => Answer::plain(503, "busy, try again\n"),
        };
        answer
            .headers
            .push(("Retry-After".to_string(), "1".to_string()));
        answer
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
    job: Box<OAuthJob>,
    complete: Complete,
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
    /// `userInfo` lookups, shared with the forward pool.
    user_info: Arc<userinfo::UserInfo>,
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
    pub fn new(settings: OAuthSettings, user_info: Arc<userinfo::UserInfo>) -> OAuthPool {
        OAuthPool {
            settings: OAuthSettings {
                slots: settings.slots.max(1),
                rate: settings.rate.max(1),
            },
            outstanding: Arc::new(AtomicUsize::new(0)),
            sender: OnceLock::new(),
            accounts: Mutex::new(HashMap::new()),
            user_info,
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
                crate::logger::WARNING_INTERVAL.as_secs()
            );
        }
        Err(refusal)
    }

    /// Queues an admitted exchange; never blocks (called on a FastCGI worker).
    pub fn submit(&self, job: Box<OAuthJob>, admitted: Admitted, complete: Complete) {
        let sender = self.sender.get_or_init(|| self.spawn());
        let task = Task {
            job,
            complete,
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
            (task.complete)(Refusal::Busy.answer());
        }
    }

    fn spawn(&self) -> SyncSender<Task> {
        let (tx, rx) = sync_channel::<Task>(self.capacity());
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.settings.slots {
            let rx = Arc::clone(&rx);
            let user_info = Arc::clone(&self.user_info);
            let spawned = std::thread::Builder::new()
                .name(format!("oauth-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || oauth_thread(&rx, &user_info));
            if let Err(e) = spawned {
                crate::log_error!("cannot start oauth thread {i}: {e}");
            }
        }
        tx
    }
}

fn oauth_thread(rx: &Mutex<Receiver<Task>>, user_info: &userinfo::UserInfo) {
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
            (task.complete)(Refusal::Busy.answer());
            continue;
        }
        run_task(&task.job, task.complete, user_info);
    }
}

fn run_task(job: &OAuthJob, complete: Complete, user_info: &userinfo::UserInfo) {
    let started = Instant::now();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| oauth::run(job, user_info)));
    let ms = started.elapsed().as_millis();
    match result {
        Ok(Ok(page)) => {
            crate::log_info!(
                "oauth account={} result={} status={} ms={ms}",
                job.account,
                page.kind(),
                page.status
            );
            complete(page.into_answer());
        }
        Ok(Err(reason)) => {
            crate::log_warn!(
                "oauth account={} result=error reason=\"{}\" ms={ms}",
                job.account,
                reason.escape_debug()
            );
            complete(Answer::plain(502, "OAuth backend unavailable\n"));
        }
        Err(_) => {
            crate::log_error!(
                "oauth account={} result=error reason=\"internal error\"",
                job.account
            );
            complete(Answer::plain(500, "internal error\n"));
        }
    }
}

/// A token bucket: `capacity` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, capacity: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            tokens: capacity,
            capacity,
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 3, t0);
        assert!((0..3).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "empty");
        let half = t0 + Duration::from_millis(500);
        assert!(b.take(half), "one token after 0.5 s at 2/s");
        assert!(!b.take(half));
        // Never more than the capacity, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        // A clock going backwards takes nothing and grants nothing extra.
        assert!(!b.take(t0));
    }
}
