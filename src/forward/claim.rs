//! Retry claims shared between instances (`shared_state`).
//!
//! Behind one nginx upstream, WeChat's retries of a message can reach another instance than
//! the first attempt. The retry table ([`super::dedup`]) keeps finished answers in the shared
//! store, so a retry that comes after the answer is answered anywhere; this module covers the
//! time before it. Before the backend is called the message is *claimed* — a key of its own,
//! set only if absent, with a TTL: "this instance is calling the backend". An instance that
//! finds the claim looks for the answer (under the retry table's key) every [`POLL`] and
//! answers with it instead of calling the backend.
//!
//! A claim lives for the rule's `timeout_ms` plus [`CLAIM_MARGIN`]: the claimer answers within
//! that time unless it died; then the claim expires and the next look claims the message and
//! calls the backend. It is never released early: an instance that checked for an answer just
//! before it was stored still finds the claim, then the answer. Waiting is bounded by the
//! claim's lifetime.
//!
//! All store traffic for claims runs on one thread ([`ClaimThread`]): FastCGI workers and the
//! threads calling backends only queue work for it, and a waiting retry costs an entry in a
//! list, not a thread. Requests parked on an attempt stay process-local. Claim keys are
//! `weixin-fcgi:<account>:claim:<SHA-1 of the answer's key>`.

use super::dedup::StoredAnswer;
use crate::state::{self, Store};
use sha1::{Digest, Sha1};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// How often a waiting instance looks for the claimer's answer.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a claim outlives the rule's backend deadline: time to render and store the answer.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(2);

/// An answer as the retry table keeps it: reply XML, or `None` for no reply.
type Answer = Option<Vec<u8>>;

/// What the store holds for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Neither an answer nor a claim: this instance holds the claim now.
    Claimed,
    /// Another attempt's answer.
    Answer(Answer),
    /// Another instance's claim, no answer yet.
    Held,
}

/// The keys of one message: its claim and its answer (the retry table's key).
#[derive(Debug, Clone)]
pub struct Keys {
    pub claim: String,
    pub answer: String,
}

impl Keys {
    /// For the retry table's key `answer` of a message of `account`.
    pub fn new(account: &str, answer: &str) -> Keys {
        let digest = Sha1::digest(answer.as_bytes());
        Keys {
            claim: state::key(account, "claim", &hex::encode(digest)),
            answer: answer.to_string(),
        }
    }
}

/// Claims in a shared store.
pub struct Claims {
    store: Arc<dyn Store>,
    /// The claim value: pid@hostname, to tell who is calling (`redis-cli GET …`).
    owner: Vec<u8>,
}

impl Claims {
    pub fn new(store: Arc<dyn Store>) -> Claims {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut owner = format!("{}@{}", std::process::id(), host.trim()).into_bytes();
        owner.truncate(128);
        Claims { store, owner }
    }

    /// The answer if there is one.
    fn answer(&self, keys: &Keys) -> Result<Option<Answer>, ()> {
        match self.store.get(&keys.answer) {
            Ok(Some(bytes)) => Ok(<Arc<Answer>>::decode(&bytes).map(|a| (*a).clone())),
            Ok(None) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Claims the message for `ttl` unless answered or claimed already: one round trip when
    /// this is the first attempt. A store that fails counts as claimed: the message is then
    /// handled as without shared state.
    pub fn claim_or_look(&self, keys: &Keys, ttl: Duration) -> Found {
        match self.store.put_new(&keys.claim, &self.owner, ttl) {
            Ok(false) => {}
            Ok(true) | Err(_) => return Found::Claimed,
        }
        match self.answer(keys) {
            Ok(Some(answer)) => Found::Answer(answer),
            Ok(None) => Found::Held,
            Err(()) => Found::Claimed,
        }
    }

    /// Like [`Claims::claim_or_look`], looking for the answer first (one round trip while a
    /// claim is held).
    pub fn look_or_claim(&self, keys: &Keys, ttl: Duration) -> Found {
        match self.answer(keys) {
            Ok(Some(answer)) => Found::Answer(answer),
            Ok(None) => match self.store.put_new(&keys.claim, &self.owner, ttl) {
                Ok(true) | Err(_) => Found::Claimed,
                // Claimed (or answered) by another in between: look again at the next poll.
                Ok(false) => Found::Held,
            },
            Err(()) => Found::Claimed,
        }
    }
}

/// An attempt at a message, told by the [`ClaimThread`] what to do. Each method is called on
/// that thread and must not block.
pub trait Claimant: Send + 'static {
    /// This instance holds the claim: call the backend (the retry table stores the answer).
    /// `took_over`: how long another instance's claim was waited for until it expired
    /// without an answer.
    fn call(self: Box<Self>, took_over: Option<Duration>);
    /// Another instance's answer, after `waited`.
    fn answered(self: Box<Self>, answer: Answer, waited: Duration);
    /// Another instance still held the claim after `waited`, the longest a claim lives.
    fn gave_up(self: Box<Self>, waited: Duration);
}

struct Work {
    keys: Keys,
    ttl: Duration,
    claimant: Box<dyn Claimant>,
}

/// An attempt waiting for another instance's answer.
struct Waiting {
    keys: Keys,
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

    /// Queues an attempt (a claim lives `ttl`). When the queue is full or the thread is gone,
    /// the attempt calls the backend at once, as without shared state.
    pub fn begin(&self, keys: Keys, ttl: Duration, claimant: Box<dyn Claimant>) {
        if let Err(TrySendError::Full(work) | TrySendError::Disconnected(work)) =
            self.queue.try_send(Work {
                keys,
                ttl,
                claimant,
            })
        {
            crate::log_warn!("shared state: claim queue full; calling the backend unclaimed");
            work.claimant.call(None);
        }
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
            Ok(Work {
                keys,
                ttl,
                claimant,
            }) => match claims.claim_or_look(&keys, ttl) {
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
                        keys,
                        ttl,
                        claimant,
                        since,
                        until,
                    });
                }
            },
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
            match claims.look_or_claim(&w.keys, w.ttl) {
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
    fn claim_keys_are_prefixed_and_fixed_in_size() {
        let keys = Keys::new("demo", &state::key("demo", "answer", "m\0demo\0oUser\0x1"));
        assert!(
            keys.claim.starts_with("weixin-fcgi:demo:claim:"),
            "{}",
            keys.claim
        );
        assert!(!keys.claim.contains("oUser"), "{}", keys.claim);
        assert_eq!(keys.claim.len(), "weixin-fcgi:demo:claim:".len() + 40);
    }

    /// What the claim thread told an attempt.
    #[derive(Debug, PartialEq)]
    enum Told {
        Call(bool),
        Answered(Answer),
        GaveUp,
    }

    struct Probe(Sender<(Told, Duration)>);

    impl Claimant for Probe {
        fn call(self: Box<Self>, took_over: Option<Duration>) {
            let waited = took_over.unwrap_or_default();
            let _ = self.0.send((Told::Call(took_over.is_some()), waited));
        }
        fn answered(self: Box<Self>, answer: Answer, waited: Duration) {
            let _ = self.0.send((Told::Answered(answer), waited));
        }
        fn gave_up(self: Box<Self>, waited: Duration) {
            let _ = self.0.send((Told::GaveUp, waited));
        }
    }

    /// Two instances' claim threads on one store, and the store.
    fn two_instances() -> (ClaimThread, ClaimThread, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let a = ClaimThread::start(Claims::new(Arc::clone(&store)), 8).expect("thread");
        let b = ClaimThread::start(Claims::new(Arc::clone(&store)), 8).expect("thread");
        (a, b, store)
    }

    fn keys(id: &str) -> Keys {
        Keys::new("t", &state::key("t", "answer", id))
    }

    fn begin(
        t: &ClaimThread,
        id: &str,
        ttl: Duration,
    ) -> std::sync::mpsc::Receiver<(Told, Duration)> {
        let (tx, rx) = channel();
        t.begin(keys(id), ttl, Box::new(Probe(tx)));
        rx
    }

    /// What the retry table does when the claimer's backend answers.
    fn answer(store: &dyn Store, id: &str, answer: Answer) {
        let encoded = Arc::new(answer).encode();
        store
            .put(&keys(id).answer, &encoded, Duration::from_secs(30))
            .expect("put");
    }

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn the_second_instance_waits_for_the_answer_of_the_first() {
        let (a, b, store) = two_instances();
        assert_eq!(
            begin(&a, "k", LONG).recv().expect("told").0,
            Told::Call(false)
        );
        let second = begin(&b, "k", LONG);
        std::thread::sleep(3 * POLL);
        assert!(second.try_recv().is_err(), "still waiting");
        answer(&*store, "k", Some(b"<xml>hi</xml>".to_vec()));
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
        let second = begin(&b, "n", LONG);
        std::thread::sleep(2 * POLL);
        answer(&*store, "n", None);
        assert_eq!(
            second.recv_timeout(LONG).expect("told").0,
            Told::Answered(None)
        );
    }

    #[test]
    fn a_claim_left_by_a_dead_instance_expires_and_is_taken_over() {
        let (dead, b, _) = two_instances();
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
    fn a_claim_still_held_at_the_deadline_gives_up() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        // Another instance holds a longer claim (as a stuck one with a longer timeout might).
        let other = Claims::new(Arc::clone(&store));
        let t = ClaimThread::start(Claims::new(store), 8).expect("thread");
        let ttl = Duration::from_millis(300);
        assert_eq!(other.claim_or_look(&keys("k"), LONG), Found::Claimed);
        let (told, waited) = begin(&t, "k", ttl).recv_timeout(LONG).expect("told");
        assert_eq!(told, Told::GaveUp);
        assert!(waited >= ttl, "{waited:?}");
    }
}
