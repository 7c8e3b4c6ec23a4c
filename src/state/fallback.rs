//! Shared state that never fails a request: the shared store (Redis) answers while it can;
//! when it is unreachable or slow, this instance's own memory answers instead.
//!
//! After a failure the shared store is skipped for [`RETRY`]; then one caller at a time probes
//! it again while the others stay local, so an outage costs at most one timeout per interval
//! instead of one per call. The outage is logged once (again at most every [`WARN_EVERY`]
//! while it lasts) with the reason, and its end once. What was written locally meanwhile stays
//! local: claims and answers are short-lived, and nothing is copied back.

use super::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the shared store is skipped after a failure before it is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Least time between two warnings about the same outage.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether the shared store is usable, and the warnings about it. Shared by every
/// [`FallbackStore`] over the same shared store, so an outage is noticed, skipped and logged
/// once for all of them.
pub struct Health {
    /// Names the shared store in log lines (e.g. `Redis redis://127.0.0.1:6379/0`).
    name: String,
    epoch: Instant,
    /// Milliseconds since `epoch` before which the shared store is not tried; 0 while healthy.
    retry_at: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one; 0 before the first.
    warned_at: AtomicU64,
    /// Calls answered locally since the last warning.
    local_calls: AtomicU64,
    /// Milliseconds since `epoch` when the current outage began.
    down_since: AtomicU64,
}

impl Health {
    pub fn new(name: String) -> Arc<Health> {
        Arc::new(Health {
            name,
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            local_calls: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
        })
    }

    /// True while the shared store is considered unavailable.
    pub fn degraded(&self) -> bool {
        self.retry_at.load(Ordering::Acquire) != 0
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this call may use the shared store: always while healthy; while down, one
    /// caller per [`RETRY`] interval. `Some(was_down)` when it may.
    fn admit(&self) -> Option<bool> {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return Some(false);
        }
        let now = self.ms();
        let next = now + RETRY.as_millis() as u64;
        let probe = now >= retry_at
            && (self.retry_at)
                .compare_exchange(retry_at, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if probe {
            Some(true)
        } else {
            self.local_calls.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    fn failed(&self, was_healthy: bool, reason: &str) {
        let now = self.ms();
        self.local_calls.fetch_add(1, Ordering::Relaxed);
        if was_healthy {
            self.down_since.store(now, Ordering::Relaxed);
        }
        // Never 0: that means healthy.
        self.retry_at
            .store(now + RETRY.as_millis() as u64, Ordering::Release);
        let last = self.warned_at.load(Ordering::Acquire);
        let due = last == 0 || now + 1 >= last + WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_at
                .compare_exchange(last, now + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let meanwhile = match self.local_calls.swap(0, Ordering::Relaxed) {
                0 | 1 => String::new(),
                n => format!(" ({} calls answered locally since the last warning)", n - 1),
            };
            crate::log_warn!(
                "shared state: {} unavailable ({reason}); answering from this instance's \
                 memory, retrying every {}s{meanwhile}",
                self.name,
                RETRY.as_secs()
            );
        }
    }

    fn recovered(&self) {
        if self.retry_at.swap(0, Ordering::AcqRel) == 0 {
            return; // another caller logged it
        }
        let secs = self
            .ms()
            .saturating_sub(self.down_since.load(Ordering::Relaxed))
            / 1000;
        crate::log_info!(
            "shared state: {} is back after {secs}s ({} calls were answered locally)",
            self.name,
            self.local_calls.swap(0, Ordering::Relaxed)
        );
    }
}

/// `shared` first, `local` when it is unavailable (as [`Health`] says).
pub struct FallbackStore {
    shared: Arc<dyn Store>,
    local: Arc<dyn Store>,
    health: Arc<Health>,
}

impl FallbackStore {
    pub fn new(shared: Arc<dyn Store>, local: Arc<dyn Store>, health: Arc<Health>) -> Self {
        FallbackStore {
            shared,
            local,
            health,
        }
    }

    /// True while the shared store is considered unavailable.
    pub fn degraded(&self) -> bool {
        self.health.degraded()
    }

    fn call<T>(
        &self,
        shared: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
        local: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(was_down) = self.health.admit() else {
            return local(&*self.local);
        };
        match shared(&*self.shared) {
            Err(StoreError::Unavailable(reason)) => {
                self.health.failed(!was_down, &reason);
                local(&*self.local)
            }
            // Answered (a value too large is the caller's business, not an outage).
            answered => {
                if was_down {
                    self.health.recovered();
                }
                answered
            }
        }
    }
}

impl Store for FallbackStore {
    fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        self.call(
            |s| s.put_new(key, value, ttl),
            |l| l.put_new(key, value, ttl),
        )
    }

    fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.call(|s| s.put(key, value, ttl), |l| l.put(key, value, ttl))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|s| s.get(key), |l| l.get(key))
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.call(|s| s.remove(key), |l| l.remove(key))
    }

    fn push(&self, key: &str, values: &[&[u8]], ttl: Duration) -> Result<(), StoreError> {
        self.call(|s| s.push(key, values, ttl), |l| l.push(key, values, ttl))
    }

    fn pop(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|s| s.pop(key), |l| l.pop(key))
    }

    fn list_len(&self, key: &str) -> Result<usize, StoreError> {
        self.call(|s| s.list_len(key), |l| l.list_len(key))
    }
}
