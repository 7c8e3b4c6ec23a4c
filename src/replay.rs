//! The replay cache: each accepted signed POST is remembered for the whole timestamp window.
//!
//! In plaintext mode `signature` covers only token, timestamp and nonce, never the body, and
//! nginx's default access log (or any proxy's) records the query. So whoever reads one logged
//! request could send another body — another FromUserName, another Content — under the same
//! valid signature until the timestamp leaves `timestamp_window`. Here every accepted request
//! leaves its signature and a keyed digest of its body, until its timestamp leaves the window:
//! - the same signature with another body is refused (403, "signature reused with another
//!   body");
//! - the same signature with the same body within the retry period (`dedup_seconds`, or
//!   [`RETRY_PERIOD_WITHOUT_DEDUP`] when that is 0) is a WeChat retry and is served as before
//!   (a `forward` rule answers it from the retry table);
//! - the same request later than that, still inside the window, is a replay: refused (403), so
//!   even a request that is valid in every byte (safe mode included) reaches a `forward`
//!   backend once.
//!
//! The key is the signature alone: it is `sha1(sort(token, timestamp, nonce))`, so it names the
//! triple, and digits moved between timestamp and nonce (which sort to the same string and so
//! keep the signature valid) are the same entry. Entries live in a table bounded in bytes
//! (`replay_cache_bytes`): when it is full the oldest are dropped first — those closest to
//! leaving the window anyway. With `timestamp_window = 0` (replay protection off) the cache is
//! not consulted.
//!
//! In one process the table is [`Table`]: fixed-size entries (the signature's 20 bytes, not
//! its hex in a string key), one lookup per request — every signed POST pays for it. With
//! `shared_state` it is the shared [`Store`] (Redis), under `state::key` keys.

use crate::logger::Throttle;
use crate::state::{self, Store};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The retry period when `dedup_seconds = 0`: WeChat retries a message twice, after 5 s
/// timeouts, so its tries span about 15 s.
pub const RETRY_PERIOD_WITHOUT_DEDUP: Duration = Duration::from_secs(20);

/// What the cache says about a signed POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before (now remembered), or a retry within the retry period: serve it.
    Serve,
    /// The signature was accepted before with another body: refuse.
    OtherBody,
    /// The same request again after the retry period: refuse.
    Replayed,
}

impl Verdict {
    /// The refusal reason, for the log and the 403 body.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Verdict::Serve => None,
            Verdict::OtherBody => Some("signature reused with another body"),
            Verdict::Replayed => Some("request replayed after the retry period"),
        }
    }
}

/// A POST whose `signature` and timestamp were verified.
pub struct SignedPost<'a> {
    pub account: &'a str,
    /// The account's token: keys the body digest.
    pub token: &'a [u8],
    pub timestamp: &'a [u8],
    pub signature: &'a [u8],
    pub body: &'a [u8],
}

/// The cache; cheap to share.
pub struct ReplayCache {
    table: Tables,
    unavailable: Throttle,
}

enum Tables {
    Local(Table),
    Shared(Arc<dyn Store>),
}

/// Stored per signature: the body's digest and when it was first accepted (ms since the epoch).
const DIGEST_LEN: usize = 8;
const VALUE_LEN: usize = DIGEST_LEN + 8;

/// A 64-bit digest of `body` keyed with the account's token: SipHash-1-3 (std's
/// `DefaultHasher`, fixed keys) over the token, then the body. Without the token nobody can
/// compute it, so another body with the same digest can only be found by sending requests
/// under one logged signature, inside one window — 2^64 of them. (SHA-1 of the body cost 8,000
/// of the 42,000 instructions a plaintext request took; this costs a few hundred.)
fn digest(token: &[u8], body: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = std::hash::DefaultHasher::new();
    h.write(token);
    h.write_usize(body.len());
    h.write(body);
    h.finish().to_be_bytes()
}

impl ReplayCache {
    /// A cache in this process's memory, at most `budget` bytes.
    pub fn local(budget: usize) -> ReplayCache {
        ReplayCache {
            table: Tables::Local(Table::new(budget)),
            unavailable: Throttle::default(),
        }
    }

    /// A cache in `store` (`shared_state`: Redis, falling back to memory).
    pub fn shared(store: Arc<dyn Store>) -> ReplayCache {
        ReplayCache {
            table: Tables::Shared(store),
            unavailable: Throttle::default(),
        }
    }

    /// Bytes the local table is charged (0 when shared).
    pub fn bytes(&self) -> usize {
        match &self.table {
            Tables::Local(t) => t.bytes(),
            Tables::Shared(_) => 0,
        }
    }

    /// Drops the local table's expired entries (called about once a second).
    pub fn sweep(&self) {
        if let Tables::Local(t) = &self.table {
            t.sweep(unix_ms());
        }
    }

    /// Checks (and remembers) a verified POST. `window` is `timestamp_window` in seconds; `retry_period` how long an identical request
    /// is still a retry. A store failure serves the request (and is logged, throttled).
    pub fn check(&self, post: &SignedPost<'_>, window: u64, retry_period: Duration) -> Verdict {
        let store = match &self.table {
            Tables::Local(table) => {
                let now_ms = unix_ms();
                let ttl = ttl(post.timestamp, window, now_ms / 1000);
                let entry = Entry {
                    digest: digest(post.token, post.body),
                    first_ms: now_ms,
                    expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
                };
                return table.check(table_key(post), entry, retry_period);
            }
            Tables::Shared(store) => store,
        };
        let key = state::key(
            post.account,
            "replay",
            &String::from_utf8_lossy(post.signature),
        );
        let now_ms = unix_ms();
        let mut value = [0u8; VALUE_LEN];
        value[..DIGEST_LEN].copy_from_slice(&digest(post.token, post.body));
        value[DIGEST_LEN..].copy_from_slice(&now_ms.to_be_bytes());
        let ttl = ttl(post.timestamp, window, now_ms / 1000);
        let stored = match store.put_new(&key, &value, ttl) {
            Ok(true) => return Verdict::Serve,
            Ok(false) => store.get(&key),
            Err(e) => Err(e),
        };
        match stored {
            // Expired in between: it was put anew by nobody; serve (and remember it).
            Ok(None) => {
                let _ = store.put(&key, &value, ttl);
                Verdict::Serve
            }
            Ok(Some(old)) if old.len() == VALUE_LEN => {
                let first = u64::from_be_bytes(old[DIGEST_LEN..].try_into().unwrap_or([0; 8]));
                let digest: [u8; DIGEST_LEN] = old[..DIGEST_LEN].try_into().unwrap_or_default();
                verdict(digest, first, &value[..DIGEST_LEN], now_ms, retry_period)
            }
            Ok(Some(_)) => Verdict::Serve,
            Err(e) => {
                if let Some(count) = self.unavailable.hit(Instant::now()) {
                    crate::log_warn!(
                        "replay cache: {e}; serving without the check (count={count})"
                    );
                }
                Verdict::Serve
            }
        }
    }
}

/// Another body under the signature, a retry, or a replay after the retry period.
fn verdict(
    digest: [u8; DIGEST_LEN],
    first_ms: u64,
    body_digest: &[u8],
    now_ms: u64,
    retry_period: Duration,
) -> Verdict {
    if digest[..] != *body_digest {
        return Verdict::OtherBody;
    }
    let age = Duration::from_millis(now_ms.saturating_sub(first_ms));
    if age < retry_period {
        Verdict::Serve
    } else {
        Verdict::Replayed
    }
}

/// A local entry's key: a tag of the account and the signature's 20 bytes.
type Key = [u8; 28];

fn table_key(post: &SignedPost<'_>) -> Key {
    let mut key = [0u8; 28];
    let mut h = std::hash::DefaultHasher::new();
    h.write(post.account.as_bytes());
    key[..8].copy_from_slice(&h.finish().to_be_bytes());
    // The signature was verified, so it is SHA-1 in hex; anything else (never) is hashed.
    if hex::decode_to_slice(post.signature, &mut key[8..]).is_err() {
        let mut h = std::hash::DefaultHasher::new();
        h.write(post.signature);
        key[8..16].copy_from_slice(&h.finish().to_be_bytes());
    }
    key
}

#[derive(Clone, Copy)]
struct Entry {
    digest: [u8; DIGEST_LEN],
    first_ms: u64,
    expires_ms: u64,
}

/// Bytes charged per entry: the map slot (key + entry, 52 bytes, at hashbrown's load factor
/// and doubling growth) and the eviction queue's record (36 bytes, at `VecDeque`'s doubling).
/// Measured: see the README's `replay_cache_bytes`.
const ENTRY_CHARGE: usize = 192;

/// The local replay table: a map from [`Key`] to [`Entry`] and the keys in the order they
/// were written, oldest first, for eviction and expiry. A key written again (its entry had
/// expired) leaves its old record behind in the queue; records are charged, so the bound
/// holds, and a stale one is skipped when it comes up.
struct Table {
    inner: std::sync::Mutex<TableInner>,
    budget: usize,
}

struct TableInner {
    map: std::collections::HashMap<Key, Entry>,
    order: std::collections::VecDeque<(u64, Key)>,
}

impl Table {
    fn new(budget: usize) -> Table {
        Table {
            inner: std::sync::Mutex::new(TableInner {
                map: std::collections::HashMap::new(),
                order: std::collections::VecDeque::new(),
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes(&self) -> usize {
        self.lock().order.len() * ENTRY_CHARGE
    }

    fn check(&self, key: Key, new: Entry, retry_period: Duration) -> Verdict {
        use std::collections::hash_map::Entry as Slot;
        let now_ms = new.first_ms;
        let mut inner = self.lock();
        match inner.map.entry(key) {
            Slot::Occupied(o) if o.get().expires_ms > now_ms => {
                let old = *o.get();
                return verdict(old.digest, old.first_ms, &new.digest, now_ms, retry_period);
            }
            Slot::Occupied(mut o) => {
                o.insert(new);
            }
            Slot::Vacant(v) => {
                v.insert(new);
            }
        }
        inner.order.push_back((new.expires_ms, key));
        // Oldest first, until the records fit (the one just written stays).
        while inner.order.len() * ENTRY_CHARGE > self.budget && inner.order.len() > 1 {
            inner.pop_oldest();
        }
        Verdict::Serve
    }

    fn sweep(&self, now_ms: u64) {
        let mut inner = self.lock();
        while inner.order.front().is_some_and(|(exp, _)| *exp <= now_ms) {
            inner.pop_oldest();
        }
        // Give back what a burst grew, once the table is small again.
        if inner.order.capacity() > 64 && inner.order.len() < inner.order.capacity() / 4 {
            inner.order.shrink_to_fit();
            inner.map.shrink_to_fit();
        }
    }
}

impl TableInner {
    /// Drops the oldest record, and its entry unless the key was written again since.
    fn pop_oldest(&mut self) {
        let Some((expires_ms, key)) = self.order.pop_front() else {
            return;
        };
        if self
            .map
            .get(&key)
            .is_some_and(|e| e.expires_ms == expires_ms)
        {
            self.map.remove(&key);
        }
    }
}

/// Until the timestamp leaves the window: `timestamp + window - now`, at least 1 s and at most
/// twice the window. (With `timestamp_window = 0` the cache is not used: nothing bounds it.)
fn ttl(timestamp: &[u8], window: u64, now: u64) -> Duration {
    let window = window.max(1);
    let ts = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(now);
    let left = ts.saturating_add(window).saturating_sub(now);
    Duration::from_secs(left.clamp(1, 2 * window))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn post<'a>(account: &'a str, signature: &'a [u8], body: &'a [u8]) -> SignedPost<'a> {
        SignedPost {
            account,
            token: b"tok",
            timestamp: b"1700000000",
            signature,
            body,
        }
    }

    /// The local table, and the same cache over a store (as with `shared_state`).
    fn caches(budget: usize) -> [ReplayCache; 2] {
        [
            ReplayCache::local(budget),
            ReplayCache::shared(Arc::new(MemoryStore::new(budget))),
        ]
    }

    fn sig(i: usize) -> String {
        format!("{i:040x}")
    }

    #[test]
    fn same_body_is_a_retry_another_body_is_refused() {
        for cache in caches(64 * 1024) {
            let retry = Duration::from_secs(30);
            let check =
                |sig: &str, body: &[u8]| cache.check(&post("a", sig.as_bytes(), body), 300, retry);
            assert_eq!(check(&sig(1), b"<xml>1</xml>"), Verdict::Serve);
            assert_eq!(check(&sig(1), b"<xml>1</xml>"), Verdict::Serve, "a retry");
            assert_eq!(check(&sig(1), b"<xml>2</xml>"), Verdict::OtherBody);
            assert_eq!(check(&sig(2), b"<xml>2</xml>"), Verdict::Serve);
            // Not hex (never, once verified): still its own entry.
            assert_eq!(check("sig-x", b"<xml>1</xml>"), Verdict::Serve);
            assert_eq!(check("sig-x", b"<xml>2</xml>"), Verdict::OtherBody);
            // Accounts are separate.
            assert_eq!(
                cache.check(&post("b", sig(1).as_bytes(), b"<xml>2</xml>"), 300, retry),
                Verdict::Serve
            );
            // After the retry period the same request is a replay.
            assert_eq!(
                cache.check(
                    &post("a", sig(1).as_bytes(), b"<xml>1</xml>"),
                    300,
                    Duration::ZERO
                ),
                Verdict::Replayed
            );
        }
    }

    #[test]
    fn entries_live_until_the_timestamp_leaves_the_window() {
        assert_eq!(ttl(b"1000", 300, 1000), Duration::from_secs(300));
        assert_eq!(ttl(b"1000", 300, 1299), Duration::from_secs(1));
        assert_eq!(ttl(b"1000", 300, 5000), Duration::from_secs(1));
        assert_eq!(ttl(b"1300", 300, 1000), Duration::from_secs(600));
        assert_eq!(ttl(b"junk", 300, 1000), Duration::from_secs(300));
    }

    #[test]
    fn bounded_in_bytes_oldest_dropped_first() {
        let budget = 32 * 1024;
        let store = Arc::new(MemoryStore::new(budget));
        let shared = ReplayCache::shared(Arc::clone(&store) as Arc<dyn Store>);
        let local = ReplayCache::local(budget);
        for i in 0..10_000 {
            for cache in [&shared, &local] {
                cache.check(&post("a", sig(i).as_bytes(), b"body"), 300, Duration::ZERO);
            }
        }
        assert!(store.bytes() <= budget, "{}", store.bytes());
        assert!(store.len() > 50, "{}", store.len());
        assert!(local.bytes() <= budget, "{}", local.bytes());
        let held = budget / ENTRY_CHARGE;
        let Tables::Local(table) = &local.table else {
            unreachable!()
        };
        assert_eq!(table.lock().map.len(), held);
        // The newest are still there; the oldest were dropped (served again).
        let again =
            |i: usize| local.check(&post("a", sig(i).as_bytes(), b"other"), 300, Duration::ZERO);
        assert_eq!(again(9_999), Verdict::OtherBody);
        assert_eq!(again(10_000 - held), Verdict::OtherBody);
        assert_eq!(again(0), Verdict::Serve);
    }

    #[test]
    fn the_local_table_expires_entries_and_reuses_keys() {
        let table = Table::new(64 * 1024);
        let key = [7u8; 28];
        let entry = |digest: u8, at: u64| Entry {
            digest: [digest; DIGEST_LEN],
            first_ms: at,
            expires_ms: at + 1000,
        };
        let retry = Duration::from_secs(30);
        assert_eq!(table.check(key, entry(1, 0), retry), Verdict::Serve);
        assert_eq!(table.check(key, entry(2, 500), retry), Verdict::OtherBody);
        // Expired: the key is written anew (another body is fine now), its old record stays
        // queued until swept, and sweeping it leaves the new entry alone.
        assert_eq!(table.check(key, entry(2, 1000), retry), Verdict::Serve);
        assert_eq!(table.lock().order.len(), 2);
        table.sweep(1000);
        assert_eq!(table.lock().order.len(), 1);
        assert_eq!(table.check(key, entry(3, 1500), retry), Verdict::OtherBody);
        table.sweep(2000);
        assert!(table.lock().map.is_empty());
        assert_eq!(table.bytes(), 0);
    }
}
