//! Retry claims shared between instances (`shared_state`).
//!
//! Behind one nginx upstream, WeChat's retries of a message can reach another instance than
//! the first attempt. So before the backend is called the message is *claimed* in the shared
//! store — one key, set only if absent, with a TTL: "this instance is calling the backend".
//! When the answer is rendered it replaces the claim under the same key, kept for
//! `dedup_seconds`, and any instance answers a later retry with it.
//!
//! An instance that finds a claim looks at the key again every [`POLL`] until the answer
//! appears, and answers with it instead of calling the backend. A claim lives for the rule's
//! `timeout_ms` plus [`CLAIM_MARGIN`]: the claimer always replaces it within that time unless
//! it died, and then the claim expires and the next look claims the message and calls the
//! backend. Waiting is bounded by the same time.
//!
//! All store traffic for claims runs on one thread ([`ClaimThread`]): FastCGI workers and the
//! threads calling backends only queue work for it, so a slow store never holds them up, and a
//! waiting retry costs an entry in a list, not a thread. Requests parked on an attempt stay
//! process-local ([`super::dedup`]); only claims and answers are in the store. Keys are
//! `weixin-fcgi:<account>:retry:<sha1 of the retry key>`, so no OpenID appears in a key name.

use crate::state::{self, Store};
use sha1::{Digest, Sha1};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// How often a waiting instance looks for the claimer's answer.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a claim outlives the rule's backend deadline: time to render and store the answer.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(2);
/// Largest answer shared; a larger one stays local (and the claim is released).
pub const MAX_SHARED_ANSWER: usize = 64 * 1024;

/// Value prefixes: a claim (followed by who holds it), a reply (followed by its XML), no reply.
const CLAIM: u8 = b'C';
const REPLY: u8 = b'R';
const NO_REPLY: u8 = b'N';

/// What the store holds for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing was there: this instance holds the claim now.
    Claimed,
    /// Another attempt's answer (reply XML, or `None` for no reply).
    Answer(Option<Vec<u8>>),
    /// Another instance's claim.
    Held,
}

/// Claims and answers in a shared store.
pub struct Claims {
    store: Arc<dyn Store>,
    /// The claim value: `C` + pid@hostname, to tell who is calling (`redis-cli GET …`).
    owner: Vec<u8>,
}

impl Claims {
    pub fn new(store: Arc<dyn Store>) -> Claims {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut owner = vec![CLAIM];
        owner.extend_from_slice(format!("{}@{}", std::process::id(), host.trim()).as_bytes());
        owner.truncate(128);
        Claims { store, owner }
    }

    /// The store key of a message: `retry_key` is [`super::dedup_key`].
    pub fn key(account: &str, retry_key: &str) -> String {
        let digest = Sha1::digest(retry_key.as_bytes());
        state::key(account, "retry", &hex::encode(digest))
    }

    /// Claims `key` for `ttl` if nothing is there, else says what is. Tries the claim first
    /// (one round trip when this is the first attempt). A store that fails counts as claimed:
    /// the message is then handled as without shared state.
    pub fn claim_or_look(&self, key: &str, ttl: Duration) -> Found {
        match self.store.put_new(key, &self.owner, ttl) {
            Ok(false) => {}
            Ok(true) | Err(_) => return Found::Claimed,
        }
        match self.store.get(key) {
            Ok(Some(value)) => decode(&value).map_or(Found::Held, Found::Answer),
            // Gone in between (expired or released): the next look claims it.
            Ok(None) => Found::Held,
            Err(_) => Found::Claimed,
        }
    }

    /// Like [`Claims::claim_or_look`], looking first (one round trip while a claim is held).
    pub fn look_or_claim(&self, key: &str, ttl: Duration) -> Found {
        match self.store.get(key) {
            Ok(Some(value)) => decode(&value).map_or(Found::Held, Found::Answer),
            Ok(None) => self.claim_or_look(key, ttl),
            Err(_) => Found::Claimed,
        }
    }

    /// Replaces the claim on `key` with `answer`, kept for `ttl`. An answer too large to share
    /// releases the claim instead, so that waiting instances stop waiting.
    pub fn finish(&self, key: &str, answer: Option<&[u8]>, ttl: Duration) {
        let value = encode(answer);
        // A failure is logged by the store; the answer was delivered locally anyway.
        let _ = if value.len() <= MAX_SHARED_ANSWER && !ttl.is_zero() {
            self.store.put(key, &value, ttl)
        } else {
            self.store.remove(key)
        };
    }
}

fn encode(answer: Option<&[u8]>) -> Vec<u8> {
    match answer {
        Some(xml) => {
            let mut v = Vec::with_capacity(1 + xml.len());
            v.push(REPLY);
            v.extend_from_slice(xml);
            v
        }
        None => vec![NO_REPLY],
    }
}

/// The answer in a stored value; `None` for a claim (or anything unknown: keep waiting, the
/// TTL ends it).
fn decode(value: &[u8]) -> Option<Option<Vec<u8>>> {
    match value.split_first() {
        Some((&REPLY, xml)) => Some(Some(xml.to_vec())),
        Some((&NO_REPLY, [])) => Some(None),
        _ => None,
    }
}

/// An attempt at a message, told by the [`ClaimThread`] what to do. Each method is called on
/// that thread and must not block.
pub trait Claimant: Send + 'static {
    /// This instance holds the claim: call the backend, then [`ClaimThread::finish`].
    /// `took_over`: how long another instance's claim was waited for until it expired.
    fn call(self: Box<Self>, took_over: Option<Duration>);
    /// Another instance's answer (reply XML, or `None` for no reply), after `waited`.
    fn answered(self: Box<Self>, answer: Option<Vec<u8>>, waited: Duration);
    /// Another instance still held the claim after `waited`, the longest a claim lives.
    fn gave_up(self: Box<Self>, waited: Duration);
}

enum Work {
    Begin {
        key: String,
        ttl: Duration,
        claimant: Box<dyn Claimant>,
    },
    Finish {
        key: String,
        answer: Option<Vec<u8>>,
        keep: Duration,
    },
}

/// An attempt waiting for another instance's answer.
struct Waiting {
    key: String,
    ttl: Duration,
    claimant: Box<dyn Claimant>,
    since: Instant,
    until: Instant,
}

/// The thread that does all claim traffic with the store (see the module doc).
#[derive(Clone)]
pub struct ClaimThread {
    queue: SyncSender<Work>,
}

impl ClaimThread {
    /// Starts the thread; `capacity` bounds the queue (and, as every waiting attempt holds a
    /// forward slot, the waiting list too).
    pub fn start(claims: Claims, capacity: usize) -> std::io::Result<ClaimThread> {
        let (queue, rx) = sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("claims".into())
            .spawn(move || run(&claims, &rx))?;
        Ok(ClaimThread { queue })
    }

    /// Queues an attempt at `key` (a claim lives `ttl`). When the queue is full or the thread
    /// is gone, the attempt calls the backend at once, as without shared state.
    pub fn begin(&self, key: String, ttl: Duration, claimant: Box<dyn Claimant>) {
        if let Err(TrySendError::Full(work) | TrySendError::Disconnected(work)) =
            self.queue.try_send(Work::Begin { key, ttl, claimant })
        {
            crate::log_warn!("shared state: claim queue full; calling the backend unclaimed");
            if let Work::Begin { claimant, .. } = work {
                claimant.call(None);
            }
        }
    }

    /// Queues storing `answer` for `key` (kept `keep`) in place of this instance's claim.
    /// With the queue full the answer is not shared (the claim expires instead).
    pub fn finish(&self, key: String, answer: Option<&[u8]>, keep: Duration) {
        let answer = answer.map(<[u8]>::to_vec);
        if self
            .queue
            .try_send(Work::Finish { key, answer, keep })
            .is_err()
        {
            crate::log_warn!(
                "shared state: claim queue full; an answer is not shared (its claim expires)"
            );
        }
    }
}

/// An attempt that may hold the claim on `key`: its answer replaces the claim, kept `keep`.
pub struct Claimed {
    thread: ClaimThread,
    key: String,
    keep: Duration,
}

impl Claimed {
    pub fn new(thread: ClaimThread, key: String, keep: Duration) -> Claimed {
        Claimed { thread, key, keep }
    }

    /// Queues the answer (reply XML, or `None` for no reply) for the shared store.
    pub fn finish(&self, answer: Option<&[u8]>) {
        self.thread.finish(self.key.clone(), answer, self.keep);
    }
}

fn run(claims: &Claims, rx: &Receiver<Work>) {
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut next_look = Instant::now() + POLL;
    loop {
        let work = if waiting.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(next_look.saturating_duration_since(Instant::now()))
        };
        match work {
            Ok(Work::Begin { key, ttl, claimant }) => match claims.claim_or_look(&key, ttl) {
                Found::Claimed => claimant.call(None),
                Found::Answer(answer) => claimant.answered(answer, Duration::ZERO),
                Found::Held => {
                    if waiting.is_empty() {
                        next_look = Instant::now() + POLL;
                    }
                    let since = Instant::now();
                    // Whenever it was made, the claim is gone by then.
                    let until = since + ttl + 2 * POLL;
                    waiting.push(Waiting {
                        key,
                        ttl,
                        claimant,
                        since,
                        until,
                    });
                }
            },
            Ok(Work::Finish { key, answer, keep }) => claims.finish(&key, answer.as_deref(), keep),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        let now = Instant::now();
        if waiting.is_empty() || now < next_look {
            continue;
        }
        next_look = now + POLL;
        for w in std::mem::take(&mut waiting) {
            let waited = w.since.elapsed();
            match claims.look_or_claim(&w.key, w.ttl) {
                Found::Answer(answer) => w.claimant.answered(answer, waited),
                Found::Claimed => w.claimant.call(Some(waited)),
                Found::Held if Instant::now() >= w.until => w.claimant.gave_up(waited),
                Found::Held => waiting.push(w),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use std::sync::mpsc::{Sender, channel};

    #[test]
    fn answers_round_trip_and_claims_are_not_answers() {
        assert_eq!(
            decode(&encode(Some(b"<xml/>"))),
            Some(Some(b"<xml/>".to_vec()))
        );
        assert_eq!(decode(&encode(None)), Some(None));
        assert_eq!(decode(b"C123@host"), None);
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"Nx"), None);
    }

    #[test]
    fn keys_are_prefixed_and_carry_no_openid() {
        let k = Claims::key("demo", "m\0demo\0oUserOpenId\0x123");
        assert!(k.starts_with("weixin-fcgi:demo:retry:"), "{k}");
        assert!(!k.contains("oUser"), "{k}");
        assert_eq!(k.len(), "weixin-fcgi:demo:retry:".len() + 40);
    }

    /// What the claim thread told an attempt.
    #[derive(Debug, PartialEq)]
    enum Told {
        Call(bool),
        Answered(Option<Vec<u8>>),
        GaveUp,
    }

    struct Probe(Sender<(Told, Duration)>);

    impl Claimant for Probe {
        fn call(self: Box<Self>, took_over: Option<Duration>) {
            let waited = took_over.unwrap_or_default();
            let _ = self.0.send((Told::Call(took_over.is_some()), waited));
        }
        fn answered(self: Box<Self>, answer: Option<Vec<u8>>, waited: Duration) {
            let _ = self.0.send((Told::Answered(answer), waited));
        }
        fn gave_up(self: Box<Self>, waited: Duration) {
            let _ = self.0.send((Told::GaveUp, waited));
        }
    }

    fn two_instances() -> (ClaimThread, ClaimThread) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let a = ClaimThread::start(Claims::new(Arc::clone(&store)), 8).expect("thread");
        let b = ClaimThread::start(Claims::new(store), 8).expect("thread");
        (a, b)
    }

    fn begin(
        t: &ClaimThread,
        key: &str,
        ttl: Duration,
    ) -> std::sync::mpsc::Receiver<(Told, Duration)> {
        let (tx, rx) = channel();
        t.begin(key.into(), ttl, Box::new(Probe(tx)));
        rx
    }

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn the_second_instance_waits_for_the_answer_of_the_first() {
        let (a, b) = two_instances();
        let first = begin(&a, "k", LONG).recv().expect("told");
        assert_eq!(first.0, Told::Call(false));
        let second = begin(&b, "k", LONG);
        std::thread::sleep(3 * POLL);
        assert!(second.try_recv().is_err(), "still waiting");
        a.finish("k".into(), Some(b"<xml>hi</xml>"), Duration::from_secs(30));
        let (told, waited) = second.recv_timeout(LONG).expect("told");
        assert_eq!(told, Told::Answered(Some(b"<xml>hi</xml>".to_vec())));
        assert!(waited >= 3 * POLL, "{waited:?}");
        // A later attempt is answered at once, also "no reply".
        let (told, _) = begin(&b, "k", LONG).recv().expect("told");
        assert_eq!(told, Told::Answered(Some(b"<xml>hi</xml>".to_vec())));
        assert_eq!(
            begin(&a, "n", LONG).recv().expect("told").0,
            Told::Call(false)
        );
        a.finish("n".into(), None, Duration::from_secs(30));
        assert_eq!(
            begin(&b, "n", LONG).recv_timeout(LONG).expect("told").0,
            Told::Answered(None)
        );
    }

    #[test]
    fn a_claim_left_by_a_dead_instance_expires_and_is_taken_over() {
        let (dead, b) = two_instances();
        let ttl = Duration::from_millis(400);
        assert_eq!(
            begin(&dead, "k", ttl).recv().expect("told").0,
            Told::Call(false)
        );
        let (told, waited) = begin(&b, "k", ttl).recv_timeout(LONG).expect("told");
        assert_eq!(told, Told::Call(true));
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < ttl + 3 * POLL, "{waited:?}");
    }

    #[test]
    fn oversized_answers_release_the_claim_so_waiters_call_themselves() {
        let (a, b) = two_instances();
        assert_eq!(
            begin(&a, "k", LONG).recv().expect("told").0,
            Told::Call(false)
        );
        let second = begin(&b, "k", LONG);
        std::thread::sleep(2 * POLL);
        assert!(second.try_recv().is_err(), "waiting for the claim");
        a.finish(
            "k".into(),
            Some(&vec![b'x'; MAX_SHARED_ANSWER]),
            Duration::from_secs(30),
        );
        let (told, waited) = second.recv_timeout(LONG).expect("told");
        assert_eq!(told, Told::Call(true));
        assert!(waited < LONG, "released, not expired: {waited:?}");
    }

    #[test]
    fn a_claim_still_held_at_the_deadline_gives_up() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        // Another instance renews its claim (as a stuck one might with a longer timeout).
        let other = Claims::new(Arc::clone(&store));
        let t = ClaimThread::start(Claims::new(store), 8).expect("thread");
        let ttl = Duration::from_millis(300);
        assert_eq!(other.claim_or_look("k", LONG), Found::Claimed);
        let (told, waited) = begin(&t, "k", ttl).recv_timeout(LONG).expect("told");
        assert_eq!(told, Told::GaveUp);
        assert!(waited >= ttl, "{waited:?}");
    }
}
