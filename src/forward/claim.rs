//! Retry claims shared between instances (`shared_state`).
//!
//! Behind one nginx upstream, WeChat's retries of a message can reach another instance than
//! the first attempt. So before a forward thread calls the backend it *claims* the message in
//! the shared store — one key, set only if absent, with a TTL: "this instance is calling the
//! backend". When the answer is rendered it replaces the claim under the same key, kept for
//! `dedup_seconds`, and any instance answers a later retry with it.
//!
//! An instance that finds a claim polls the key (every [`POLL`]) until the answer appears, and
//! answers with it instead of calling the backend again. A claim lives for the rule's
//! `timeout_ms` plus [`CLAIM_MARGIN`]: the claimer always replaces it within that time unless
//! it died, and then the claim expires and the next instance to look claims the message and
//! calls the backend itself. Waiting is bounded by the same time.
//!
//! Requests parked on an attempt stay process-local ([`super::dedup`]); only claims and
//! answers are in the store. Keys are `weixin-fcgi:<account>:retry:<sha1 of the retry key>`,
//! so no OpenID appears in a key name.

use crate::state::{self, Store};
use sha1::{Digest, Sha1};
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

/// What [`Claims::acquire`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Another attempt's answer (reply XML, or `None` for no reply): answer with it.
    Answer(Option<Vec<u8>>),
    /// Claimed: call the backend, then [`Claims::finish`].
    Mine,
    /// Claimed after another instance's claim expired without an answer.
    TakenOver,
    /// Another instance still held the claim when the wait ran out.
    GaveUp,
}

/// Claims and answers in a shared store.
pub struct Claims {
    store: std::sync::Arc<dyn Store>,
    /// The claim value: `C` + pid@hostname, to tell who is calling (`redis-cli GET …`).
    owner: Vec<u8>,
}

impl Claims {
    pub fn new(store: std::sync::Arc<dyn Store>) -> Claims {
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

    /// Claims `key` for `claim_ttl`, or waits (at most `claim_ttl` and two polls) for the
    /// answer of the instance holding it. Blocks: call it on a forward thread.
    pub fn acquire(&self, key: &str, claim_ttl: Duration) -> Acquired {
        let deadline = Instant::now() + claim_ttl + 2 * POLL;
        let mut waited = false;
        loop {
            match self.store.put_new(key, &self.owner, claim_ttl) {
                Ok(true) if waited => return Acquired::TakenOver,
                Ok(true) => return Acquired::Mine,
                Ok(false) => {}
                // No store at all: behave as without one.
                Err(_) => return Acquired::Mine,
            }
            loop {
                match self.store.get(key) {
                    Ok(Some(value)) => {
                        if let Some(answer) = decode(&value) {
                            return Acquired::Answer(answer);
                        }
                    }
                    // Expired or released: claim it (another waiter may be faster).
                    Ok(None) => break,
                    Err(_) => return Acquired::Mine,
                }
                if Instant::now() >= deadline {
                    return Acquired::GaveUp;
                }
                waited = true;
                std::thread::sleep(POLL);
            }
            if Instant::now() >= deadline {
                return Acquired::GaveUp;
            }
        }
    }

    /// Replaces the claim on `key` with `answer`, kept for `ttl`. An answer too large to share
    /// releases the claim instead, so that waiting instances stop waiting.
    pub fn finish(&self, key: &str, answer: Option<&[u8]>, ttl: Duration) {
        let value = encode(answer);
        // Failures are already logged by the store; the answer is delivered locally anyway.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use std::sync::Arc;

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

    #[test]
    fn second_claimer_waits_for_the_answer_of_the_first() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let a = Claims::new(Arc::clone(&store));
        let b = Arc::new(Claims::new(Arc::clone(&store)));
        let ttl = Duration::from_secs(5);
        assert_eq!(a.acquire("k", ttl), Acquired::Mine);
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.acquire("k", ttl))
        };
        std::thread::sleep(3 * POLL);
        a.finish("k", Some(b"<xml>hi</xml>"), Duration::from_secs(30));
        assert_eq!(
            waiter.join().expect("waiter"),
            Acquired::Answer(Some(b"<xml>hi</xml>".to_vec()))
        );
        // A later attempt is answered at once.
        assert_eq!(
            b.acquire("k", ttl),
            Acquired::Answer(Some(b"<xml>hi</xml>".to_vec()))
        );
    }

    #[test]
    fn a_claim_left_by_a_dead_instance_expires_and_is_taken_over() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let dead = Claims::new(Arc::clone(&store));
        let b = Claims::new(Arc::clone(&store));
        let ttl = Duration::from_millis(400);
        assert_eq!(dead.acquire("k", ttl), Acquired::Mine);
        let started = Instant::now();
        assert_eq!(b.acquire("k", ttl), Acquired::TakenOver);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "took over after {took:?}"
        );
        assert!(took < ttl + 3 * POLL, "took over after {took:?}");
    }

    #[test]
    fn oversized_answers_release_the_claim() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
        let a = Claims::new(Arc::clone(&store));
        let ttl = Duration::from_secs(5);
        assert_eq!(a.acquire("k", ttl), Acquired::Mine);
        a.finish(
            "k",
            Some(&vec![b'x'; MAX_SHARED_ANSWER]),
            Duration::from_secs(30),
        );
        assert!(matches!(store.get("k"), Ok(None)));
    }
}
