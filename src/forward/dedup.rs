//! De-duplication of WeChat retries.
//!
//! WeChat retries a message (three tries in all, 5 s apart) when it gets no answer in 5 s.
//! The backend must see each message once, so the first attempt creates an entry keyed by
//! account + FromUserName + MsgId (messages) or account + FromUserName + CreateTime + Event +
//! EventKey (events):
//! - while the backend works, the entry is *in flight* and a retry's request is parked on it
//!   (no thread waits: the deferred FastCGI request itself is stored);
//! - when the backend answers, every parked request gets the same answer, and the answer is
//!   kept in the state [`Store`] for `dedup_seconds` so a later retry is answered at once.
//!
//! Bounded: in-flight entries (process-local: they hold the parked requests) are bounded by
//! the number of forward slots, each with at most [`MAX_WAITERS`] requests; finished answers
//! live in the store, which is bounded in bytes (`state_memory_bytes`) and drops the oldest
//! first. Lookups are one `HashMap` access each.

use crate::logger::Throttle;
use crate::state::{Store, StoreError};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most requests parked on one in-flight entry (WeChat sends three tries in all).
pub const MAX_WAITERS: usize = 8;

/// An answer as kept in the store.
pub trait StoredAnswer: Sized {
    fn encode(&self) -> Vec<u8>;
    /// `None` for bytes this type did not write.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// A reply (`Some(xml)`) or no reply (`None`): a tag byte, then the XML.
impl StoredAnswer for Arc<Option<Vec<u8>>> {
    fn encode(&self) -> Vec<u8> {
        match self.as_ref() {
            None => vec![0],
            Some(xml) => {
                let mut out = Vec::with_capacity(xml.len() + 1);
                out.push(1);
                out.extend_from_slice(xml);
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first()? {
            (0, []) => Some(Arc::new(None)),
            (1, xml) => Some(Arc::new(Some(xml.to_vec()))),
            _ => None,
        }
    }
}

/// The de-duplication table. `W` is a parked request, `A` an answer. Keys are store keys.
pub struct Table<W, A> {
    in_flight: Mutex<HashMap<String, Vec<W>>>,
    store: Arc<dyn Store>,
    ttl: Duration,
    failures: Throttle,
    answer: PhantomData<fn() -> A>,
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

impl<W, A: StoredAnswer> Table<W, A> {
    /// Answers are kept in `store` for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Table {
            in_flight: Mutex::new(HashMap::new()),
            store,
            ttl,
            failures: Throttle::default(),
            answer: PhantomData,
        }
    }

    /// Looks `key` up: parks on an in-flight attempt, answers from a kept answer, or — when
    /// `acquire` grants a slot — starts a new in-flight attempt.
    pub fn begin(&self, key: &str, waiter: W, acquire: impl FnOnce() -> bool) -> Begin<W, A> {
        // Held across the store lookup, so an attempt cannot complete unseen in between.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match in_flight.get_mut(key) {
            Some(waiters) if waiters.len() < MAX_WAITERS => {
                waiters.push(waiter);
                return Begin::Parked;
            }
            Some(_) => return Begin::Refused(waiter),
            None => {}
        }
        match self.store.get(key) {
            Ok(Some(bytes)) => {
                if let Some(answer) = A::decode(&bytes) {
                    return Begin::Done(answer, waiter);
                }
            }
            Ok(None) => {}
            Err(e) => self.failed(&e),
        }
        if acquire() {
            in_flight.insert(key.to_string(), Vec::new());
            Begin::New(waiter)
        } else {
            Begin::Refused(waiter)
        }
    }

    /// Keeps the answer of the attempt for `key` and returns the requests parked on it.
    pub fn complete(&self, key: &str, answer: &A) -> Vec<W> {
        if let Err(e) = self.store.put(key, &answer.encode(), self.ttl) {
            self.failed(&e);
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.remove(key).unwrap_or_default()
    }

    /// Ends the attempt for `key` without keeping an answer (it was answered elsewhere) and
    /// returns the requests parked on it.
    pub fn abandon(&self, key: &str) -> Vec<W> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.remove(key).unwrap_or_default()
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The answer is not kept (retries will call the backend again); said once per interval.
    fn failed(&self, e: &StoreError) {
        if let Some(count) = self.failures.hit(Instant::now()) {
            crate::log_warn!(
                "retry table: {e}; retries may reach the backend again (count={count})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    type Answer = Arc<Option<Vec<u8>>>;

    fn table(ttl: Duration, budget: usize) -> (Table<u32, Answer>, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new(budget));
        (Table::new(Arc::clone(&store) as Arc<dyn Store>, ttl), store)
    }

    fn answer(s: &str) -> Answer {
        Arc::new(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn answers_round_trip() {
        for a in [Arc::new(None), answer(""), answer("<xml/>")] {
            assert_eq!(Answer::decode(&a.encode()), Some(a));
        }
        assert_eq!(Answer::decode(b""), None);
        assert_eq!(Answer::decode(b"\x02x"), None);
        assert_eq!(Answer::decode(b"\x00x"), None);
    }

    #[test]
    fn first_attempt_is_new_retries_park_then_get_the_answer() {
        let (t, _) = table(Duration::from_secs(30), 64 * 1024);
        assert!(matches!(t.begin("k", 1, || true), Begin::New(1)));
        assert!(matches!(t.begin("k", 2, || true), Begin::Parked));
        assert!(matches!(t.begin("k", 3, || true), Begin::Parked));
        assert_eq!(t.complete("k", &answer("hi")), vec![2, 3]);
        match t.begin("k", 4, || true) {
            Begin::Done(a, 4) => assert_eq!(a, answer("hi")),
            _ => panic!("the kept answer"),
        }
        assert!(matches!(t.begin("j", 5, || true), Begin::New(5)));
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn no_slot_means_refused_and_no_entry() {
        let (t, _) = table(Duration::from_secs(30), 64 * 1024);
        assert!(matches!(t.begin("k", 1, || false), Begin::Refused(1)));
        assert_eq!(t.in_flight(), 0);
        assert!(matches!(t.begin("k", 1, || true), Begin::New(1)));
    }

    #[test]
    fn waiters_are_bounded() {
        let (t, _) = table(Duration::from_secs(30), 64 * 1024);
        assert!(matches!(t.begin("k", 0, || true), Begin::New(_)));
        for i in 0..MAX_WAITERS as u32 {
            assert!(matches!(t.begin("k", i, || true), Begin::Parked));
        }
        assert!(matches!(t.begin("k", 99, || true), Begin::Refused(99)));
    }

    #[test]
    fn answers_expire_and_are_bounded_in_bytes() {
        let (t, store) = table(Duration::from_millis(50), 256 * 1024);
        let big = "x".repeat(60 * 1024);
        for i in 0..100u32 {
            let k = format!("k{i}");
            assert!(matches!(t.begin(&k, i, || true), Begin::New(_)));
            t.complete(&k, &answer(&big));
            assert!(store.bytes() <= 256 * 1024, "{}", store.bytes());
        }
        // The newest survive.
        assert!(matches!(t.begin("k99", 0, || true), Begin::Done(..)));
        assert!(matches!(t.begin("k0", 0, || true), Begin::New(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(t.begin("k98", 0, || true), Begin::New(_)),
            "expired"
        );
    }
}
