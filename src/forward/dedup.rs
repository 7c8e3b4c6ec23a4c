//! De-duplication of WeChat retries.
//!
//! WeChat retries a message (three tries in all, 5 s apart) when it gets no answer in 5 s.
//! The backend must see each message once, so the first attempt creates an entry keyed by
//! account + FromUserName + MsgId (messages) or account + FromUserName + CreateTime + Event +
//! EventKey (events):
//! - while the backend works, the entry is *in flight* and a retry's request is parked on it
//!   (no thread waits: the deferred FastCGI request itself is stored);
//! - when the backend answers, every parked request gets the same answer, and the entry keeps
//!   it for `dedup_seconds` so a later retry is answered at once.
//!
//! Bounded: at most `dedup_entries` finished entries (the oldest go first), plus the in-flight
//! ones, which are bounded by the number of forward slots. Lookups are one `HashMap` access;
//! expiry pops a queue ordered by completion time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most requests parked on one in-flight entry (WeChat sends three tries in all).
pub const MAX_WAITERS: usize = 8;

/// The de-duplication table. `W` is a parked request, `A` a (cheaply cloned) answer.
pub struct Table<W, A> {
    inner: Mutex<Inner<W, A>>,
    ttl: Duration,
    capacity: usize,
}

struct Inner<W, A> {
    map: HashMap<String, Entry<W, A>>,
    /// Finished entries by completion time (stale pairs are skipped when popped).
    order: VecDeque<(Instant, String)>,
}

enum Entry<W, A> {
    InFlight(Vec<W>),
    Done(A, Instant),
}

/// What [`Table::begin`] decided for a request.
pub enum Begin<W, A> {
    /// A finished attempt's answer: reply with it.
    Done(A, W),
    /// An attempt is in flight: the request is parked and will get its answer.
    Parked,
    /// Too many requests parked on the entry already, or no slot for a new attempt.
    Refused(W),
    /// First attempt: the caller holds a slot and must call [`Table::complete`].
    New(W),
}

impl<W, A: Clone> Table<W, A> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Table {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Looks `key` up: answers from a finished entry, parks on an in-flight one, or — when
    /// `acquire` grants a slot — creates a new in-flight entry.
    pub fn begin(
        &self,
        key: &str,
        waiter: W,
        acquire: impl FnOnce() -> bool,
        now: Instant,
    ) -> Begin<W, A> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut inner, now);
        match inner.map.get_mut(key) {
            Some(Entry::Done(answer, _)) => Begin::Done(answer.clone(), waiter),
            Some(Entry::InFlight(waiters)) if waiters.len() < MAX_WAITERS => {
                waiters.push(waiter);
                Begin::Parked
            }
            Some(Entry::InFlight(_)) => Begin::Refused(waiter),
            None if acquire() => {
                while inner.map.len() >= self.capacity {
                    let Some((at, old)) = inner.order.pop_front() else {
                        break;
                    };
                    remove_if_done_at(&mut inner.map, &old, at);
                }
                inner
                    .map
                    .insert(key.to_string(), Entry::InFlight(Vec::new()));
                Begin::New(waiter)
            }
            None => Begin::Refused(waiter),
        }
    }

    /// Stores the answer of the attempt for `key` and returns the requests parked on it.
    pub fn complete(&self, key: &str, answer: A, now: Instant) -> Vec<W> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let waiters = match inner.map.insert(key.to_string(), Entry::Done(answer, now)) {
            Some(Entry::InFlight(w)) => w,
            _ => Vec::new(),
        };
        inner.order.push_back((now, key.to_string()));
        self.expire(&mut inner, now);
        waiters
    }

    /// Number of entries (finished and in flight).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Entries (finished and in flight) and the bytes they hold: keys (stored twice: map and
    /// expiry queue), `weigh` of each answer, and the fixed size of an entry. Walks the table:
    /// for the status page, not the request path.
    pub fn usage(&self, weigh: impl Fn(&A) -> usize) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let per_entry =
            std::mem::size_of::<(String, Entry<W, A>)>() + std::mem::size_of::<(Instant, String)>();
        let bytes = inner
            .map
            .iter()
            .map(|(key, entry)| {
                let answer = match entry {
                    Entry::Done(answer, _) => weigh(answer),
                    Entry::InFlight(waiters) => waiters.len() * std::mem::size_of::<W>(),
                };
                per_entry + 2 * key.len() + answer
            })
            .sum();
        (inner.map.len(), bytes)
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner<W, A>, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            if let Some((at, key)) = inner.order.pop_front() {
                remove_if_done_at(&mut inner.map, &key, at);
            }
        }
    }
}

/// Removes `key` if it is the finished entry completed at `at` (not a newer one).
fn remove_if_done_at<W, A>(map: &mut HashMap<String, Entry<W, A>>, key: &str, at: Instant) {
    if matches!(map.get(key), Some(Entry::Done(_, t)) if *t == at) {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ttl_s: u64, cap: usize) -> Table<u32, &'static str> {
        Table::new(Duration::from_secs(ttl_s), cap)
    }

    #[test]
    fn first_attempt_is_new_retries_park_then_get_the_answer() {
        let t = table(30, 16);
        let now = Instant::now();
        assert!(matches!(t.begin("k", 1, || true, now), Begin::New(1)));
        assert!(matches!(t.begin("k", 2, || true, now), Begin::Parked));
        assert!(matches!(t.begin("k", 3, || true, now), Begin::Parked));
        assert_eq!(t.complete("k", "hi", now), vec![2, 3]);
        assert!(matches!(
            t.begin("k", 4, || true, now),
            Begin::Done("hi", 4)
        ));
        // Another key is independent.
        assert!(matches!(t.begin("j", 5, || true, now), Begin::New(5)));
    }

    #[test]
    fn no_slot_means_refused_and_no_entry() {
        let t = table(30, 16);
        let now = Instant::now();
        assert!(matches!(t.begin("k", 1, || false, now), Begin::Refused(1)));
        assert!(t.is_empty());
        assert!(matches!(t.begin("k", 1, || true, now), Begin::New(1)));
    }

    #[test]
    fn waiters_are_bounded() {
        let t = table(30, 16);
        let now = Instant::now();
        assert!(matches!(t.begin("k", 0, || true, now), Begin::New(_)));
        for i in 0..MAX_WAITERS as u32 {
            assert!(matches!(t.begin("k", i, || true, now), Begin::Parked));
        }
        assert!(matches!(t.begin("k", 99, || true, now), Begin::Refused(99)));
    }

    #[test]
    fn entries_expire_after_ttl_and_capacity_is_kept() {
        let t = table(30, 4);
        let now = Instant::now();
        for i in 0..10u32 {
            let k = format!("k{i}");
            assert!(matches!(t.begin(&k, i, || true, now), Begin::New(_)));
            t.complete(&k, "a", now);
            assert!(t.len() <= 4, "len {}", t.len());
        }
        // The newest survive.
        assert!(matches!(
            t.begin("k9", 0, || true, now),
            Begin::Done("a", 0)
        ));
        let later = now + Duration::from_secs(31);
        assert!(matches!(t.begin("k9", 0, || true, later), Begin::New(0)));
        assert_eq!(t.len(), 1, "expired entries are gone");
    }
}
