//! [`MemoryStore`]: the in-process [`Store`], bounded in bytes.
//!
//! Every entry is charged its key, its value bytes and a fixed overhead for the map slot, the
//! eviction index and (for lists) each element's allocation. When a write would go over the
//! budget, the least recently written entries are dropped first — expired or not — until it
//! fits; one value larger than a quarter of the budget is refused with
//! [`StoreError::TooLarge`] so a single answer can never flush the whole table. Expired
//! entries are dropped when touched and by a sweep at most once a second.
//!
//! [`MemoryStore::save`] / [`MemoryStore::load`] persist the entries under one key prefix to
//! a file (written to a temporary file, synced, then renamed), for state that must survive a
//! restart without Redis.

use super::{Store, StoreError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes charged per entry beyond its key and value: the hash map slot, the eviction index
/// entry (which holds a second copy of the key) and allocator rounding. Measured in the running
/// server: 10,000 and 40,000 small entries (64-byte key, 16-byte value) took 400 bytes of RSS
/// each — hash table slack at a power-of-two capacity, B-tree nodes, malloc headers — against
/// 144 for the key (held twice) and the value.
const ENTRY_OVERHEAD: usize = 256;
/// Bytes charged per list element beyond its bytes (its `Vec` header and allocator rounding).
const ELEMENT_OVERHEAD: usize = 32;
/// How often expired entries are swept out in one pass.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The in-process store. Cheap to share behind an `Arc`; one mutex, held only for map work.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    map: HashMap<String, Slot>,
    /// Write sequence → key: the first entry is the least recently written.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    bytes: usize,
    next_sweep: Instant,
}

struct Slot {
    value: Value,
    expires: Instant,
    seq: u64,
    /// What this entry is charged against the budget.
    charged: usize,
}

enum Value {
    Bytes(Vec<u8>),
    List(VecDeque<Vec<u8>>),
}

/// One persisted entry (see [`MemoryStore::export`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub key: String,
    /// Wall-clock expiry in milliseconds since the Unix epoch, so that time spent stopped counts.
    pub expires_unix_ms: u64,
    pub value: ExportedValue,
}

/// The value of an [`Exported`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportedValue {
    Bytes(Vec<u8>),
    List(Vec<Vec<u8>>),
}

impl MemoryStore {
    /// A store that holds at most `budget` bytes (as charged above).
    pub fn new(budget: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 0,
                bytes: 0,
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
            budget,
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes charged now (live and not yet swept entries).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held now (live and not yet swept).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
    }

    /// The live entries whose key starts with `prefix`, oldest written first.
    pub fn export(&self, prefix: &str) -> Vec<Exported> {
        let now = Instant::now();
        let wall_now = unix_ms();
        let inner = self.lock();
        let mut out = Vec::new();
        for key in inner.order.values() {
            if !key.starts_with(prefix) {
                continue;
            }
            let Some(slot) = inner.map.get(key) else {
                continue;
            };
            if slot.expires <= now {
                continue;
            }
            let left = slot.expires.duration_since(now).as_millis();
            let expires_unix_ms = wall_now.saturating_add(u64::try_from(left).unwrap_or(u64::MAX));
            let value = match &slot.value {
                Value::Bytes(b) => ExportedValue::Bytes(b.clone()),
                Value::List(l) => ExportedValue::List(l.iter().cloned().collect()),
            };
            out.push(Exported {
                key: key.clone(),
                expires_unix_ms,
                value,
            });
        }
        out
    }

    /// Adds exported entries back (already expired ones are skipped; the budget applies).
    pub fn import(&self, entries: Vec<Exported>) {
        let now = Instant::now();
        let wall_now = unix_ms();
        let mut inner = self.lock();
        for e in entries {
            if e.expires_unix_ms <= wall_now {
                continue;
            }
            let ttl = Duration::from_millis(e.expires_unix_ms - wall_now);
            let value = match e.value {
                ExportedValue::Bytes(b) => Value::Bytes(b),
                ExportedValue::List(l) => Value::List(l.into()),
            };
            // An entry over the per-value limit is dropped, as a live write would be.
            let _ = inner.insert(self.budget, e.key, value, now + ttl);
        }
    }

    /// Writes the live entries under `prefix` to `path` atomically (temporary file in the same
    /// directory, fsync, rename), readable by the owner only.
    pub fn save(&self, prefix: &str, path: &Path) -> io::Result<()> {
        let bytes = encode(&self.export(prefix));
        let tmp = path.with_extension("tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads a file written by [`save`](Self::save) into the store and returns how many entries
    /// it held. A missing file is `Ok(0)`; a damaged one is an error (nothing is imported).
    /// The file is read only up to `budget` bytes (plus framing): it cannot make us allocate more.
    pub fn load(&self, path: &Path) -> io::Result<usize> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let limit = self.budget.saturating_mul(2).saturating_add(4096);
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("state file is larger than {limit} bytes"),
            ));
        }
        let entries = decode(&bytes).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("state file is damaged: {why}"),
            )
        })?;
        let n = entries.len();
        self.import(entries);
        Ok(n)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every mutation below is
        // completed before anything that can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-value limit: a quarter of the budget.
    fn value_limit(&self) -> usize {
        value_limit(self.budget)
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .map
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
        self.next_sweep = now + SWEEP_EVERY;
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.seq);
        self.bytes -= slot.charged;
        Some(slot)
    }

    /// The live slot under `key`; an expired one is dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Slot> {
        // A miss (the common case of a new replay entry or claim) hashes the key once.
        if self.map.get(key)?.expires <= now {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    /// Drops the least recently written entries until `need` more bytes fit in `budget`.
    fn make_room(&mut self, need: usize, budget: usize) {
        while self.bytes + need > budget {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.map.remove(&key) {
                self.bytes -= slot.charged;
            }
        }
    }

    /// Inserts or replaces `key`, charging it and evicting as needed.
    fn insert(
        &mut self,
        budget: usize,
        key: String,
        value: Value,
        expires: Instant,
    ) -> Result<(), StoreError> {
        let charged = charge_within(&key, &value, budget)?;
        self.remove(&key);
        self.insert_absent(budget, key, value, expires, charged);
        Ok(())
    }

    /// Inserts `key`, known to be absent, charged `charged` (within the per-value limit).
    fn insert_absent(
        &mut self,
        budget: usize,
        key: String,
        value: Value,
        expires: Instant,
        charged: usize,
    ) {
        self.make_room(charged, budget);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.bytes += charged;
        self.map.insert(
            key,
            Slot {
                value,
                expires,
                seq,
                charged,
            },
        );
    }
}

/// The largest charge one entry may have: a quarter of `budget`, so one value never flushes
/// the table.
fn value_limit(budget: usize) -> usize {
    budget / 4
}

/// What `key` and `value` are charged, refused when over [`value_limit`].
fn charge_within(key: &str, value: &Value, budget: usize) -> Result<usize, StoreError> {
    let charged = charge(key, value);
    let limit = value_limit(budget);
    if charged > limit {
        return Err(StoreError::TooLarge {
            bytes: charged,
            limit,
        });
    }
    Ok(charged)
}

fn charge(key: &str, value: &Value) -> usize {
    let value_bytes = match value {
        Value::Bytes(b) => b.len(),
        Value::List(l) => l.iter().map(|v| v.len() + ELEMENT_OVERHEAD).sum(),
    };
    // The key is stored twice: as the map key and in the eviction index.
    2 * key.len() + value_bytes + ENTRY_OVERHEAD
}

impl Store for MemoryStore {
    fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.maybe_sweep(now);
        if inner.live(key, now).is_some() {
            return Ok(false);
        }
        let value = Value::Bytes(value.to_vec());
        let charged = charge_within(key, &value, self.budget)?;
        inner.insert_absent(self.budget, key.to_owned(), value, now + ttl, charged);
        Ok(true)
    }

    fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.maybe_sweep(now);
        inner.insert(
            self.budget,
            key.to_owned(),
            Value::Bytes(value.to_vec()),
            now + ttl,
        )
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(match inner.live(key, now) {
            Some(Slot {
                value: Value::Bytes(b),
                ..
            }) => Some(b.clone()),
            _ => None,
        })
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }

    fn push(&self, key: &str, values: &[&[u8]], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.maybe_sweep(now);
        let added: usize = values.iter().map(|v| v.len() + ELEMENT_OVERHEAD).sum();
        let current = match inner.live(key, now) {
            Some(Slot {
                value: Value::List(_),
                charged,
                ..
            }) => *charged,
            _ => 2 * key.len() + ENTRY_OVERHEAD,
        };
        // All or nothing: refuse before touching the list, so a refused push loses nothing.
        let limit = self.value_limit();
        if current + added > limit {
            return Err(StoreError::TooLarge {
                bytes: current + added,
                limit,
            });
        }
        let mut list = match inner.remove(key).map(|s| s.value) {
            Some(Value::List(l)) => l,
            _ => VecDeque::new(),
        };
        list.extend(values.iter().map(|v| v.to_vec()));
        inner.insert(self.budget, key.to_owned(), Value::List(list), now + ttl)
    }

    fn pop(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.live(key, now) else {
            return Ok(None);
        };
        let Value::List(list) = &mut slot.value else {
            return Ok(None);
        };
        let first = list.pop_front();
        let freed = first.as_ref().map_or(0, |v| v.len() + ELEMENT_OVERHEAD);
        let empty = list.is_empty();
        slot.charged -= freed;
        inner.bytes -= freed;
        if empty {
            inner.remove(key);
        }
        Ok(first)
    }

    fn list_len(&self, key: &str) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(match inner.live(key, now) {
            Some(Slot {
                value: Value::List(l),
                ..
            }) => l.len(),
            _ => 0,
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// File magic and format version.
const MAGIC: &[u8; 8] = b"WXFCGST1";

/// `MAGIC`, then per entry: key length (u32 LE), key, expiry (u64 LE ms), kind (0 bytes, 1
/// list), then for bytes a length-prefixed value, for a list a count (u32) and length-prefixed
/// elements.
fn encode(entries: &[Exported]) -> Vec<u8> {
    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut out = MAGIC.to_vec();
    for e in entries {
        put_bytes(&mut out, e.key.as_bytes());
        out.extend_from_slice(&e.expires_unix_ms.to_le_bytes());
        match &e.value {
            ExportedValue::Bytes(b) => {
                out.push(0);
                put_bytes(&mut out, b);
            }
            ExportedValue::List(l) => {
                out.push(1);
                out.extend_from_slice(&(l.len() as u32).to_le_bytes());
                for v in l {
                    put_bytes(&mut out, v);
                }
            }
        }
    }
    out
}

/// Parses [`encode`]'s format; every length is checked against the bytes left before use.
fn decode(mut input: &[u8]) -> Result<Vec<Exported>, &'static str> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if input.len() < n {
            return Err("truncated");
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }
    fn u32_le(input: &mut &[u8]) -> Result<usize, &'static str> {
        let b = take(input, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
        let n = u32_le(input)?;
        take(input, n)
    }
    if take(&mut input, MAGIC.len())? != MAGIC {
        return Err("not a weixin-fcgi state file");
    }
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = std::str::from_utf8(bytes(&mut input)?).map_err(|_| "key is not UTF-8")?;
        let expiry = take(&mut input, 8)?;
        let mut ms = [0u8; 8];
        ms.copy_from_slice(expiry);
        let value = match take(&mut input, 1)?[0] {
            0 => ExportedValue::Bytes(bytes(&mut input)?.to_vec()),
            1 => {
                let n = u32_le(&mut input)?;
                // Each element needs at least its 4-byte length: bounds the allocation.
                if n > input.len() / 4 {
                    return Err("list count larger than the file");
                }
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(bytes(&mut input)?.to_vec());
                }
                ExportedValue::List(list)
            }
            _ => return Err("unknown value kind"),
        };
        out.push(Exported {
            key: key.to_owned(),
            expires_unix_ms: u64::from_le_bytes(ms),
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn put_new_claims_once() {
        let s = MemoryStore::new(64 * 1024);
        assert_eq!(s.put_new("k", b"a", MIN), Ok(true));
        assert_eq!(s.put_new("k", b"b", MIN), Ok(false));
        assert_eq!(s.get("k"), Ok(Some(b"a".to_vec())));
        s.remove("k").unwrap();
        assert_eq!(s.put_new("k", b"c", MIN), Ok(true));
        assert_eq!(s.get("k"), Ok(Some(b"c".to_vec())));
    }

    #[test]
    fn entries_expire() {
        let s = MemoryStore::new(64 * 1024);
        s.put("k", b"v", Duration::from_millis(30)).unwrap();
        s.push("l", &[b"1"], Duration::from_millis(30)).unwrap();
        assert_eq!(s.get("k"), Ok(Some(b"v".to_vec())));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.get("k"), Ok(None));
        assert_eq!(s.list_len("l"), Ok(0));
        // An expired claim can be taken again.
        assert_eq!(s.put_new("k", b"w", MIN), Ok(true));
        s.sweep();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn lists_are_fifo_and_charged_per_element() {
        let s = MemoryStore::new(64 * 1024);
        s.push("l", &[b"one", b"two"], MIN).unwrap();
        s.push("l", &[b"three"], MIN).unwrap();
        assert_eq!(s.list_len("l"), Ok(3));
        let before = s.bytes();
        assert_eq!(s.pop("l"), Ok(Some(b"one".to_vec())));
        assert_eq!(s.bytes(), before - 3 - ELEMENT_OVERHEAD);
        assert_eq!(s.pop("l"), Ok(Some(b"two".to_vec())));
        assert_eq!(s.pop("l"), Ok(Some(b"three".to_vec())));
        assert_eq!(s.pop("l"), Ok(None));
        // The emptied list is gone and nothing stays charged.
        assert_eq!(s.bytes(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn kinds_do_not_mix() {
        let s = MemoryStore::new(64 * 1024);
        s.push("k", &[b"x"], MIN).unwrap();
        assert_eq!(s.get("k"), Ok(None));
        s.put("k", b"v", MIN).unwrap();
        assert_eq!(s.pop("k"), Ok(None));
        assert_eq!(s.list_len("k"), Ok(0));
        assert_eq!(s.get("k"), Ok(Some(b"v".to_vec())));
    }

    #[test]
    fn flood_stays_within_budget_evicting_oldest() {
        let budget = 256 * 1024;
        let s = MemoryStore::new(budget);
        let value = vec![b'x'; 16 * 1024];
        for i in 0..4096 {
            s.put(&format!("k{i}"), &value, MIN).unwrap();
            assert!(s.bytes() <= budget, "{} > {budget}", s.bytes());
        }
        // The newest entries are kept, the oldest went first.
        assert!(s.get("k4095").unwrap().is_some());
        assert!(s.get("k0").unwrap().is_none());
        let kept = s.len();
        assert!(
            (10..=15).contains(&kept),
            "{kept} entries of 16 KiB in 256 KiB"
        );
    }

    #[test]
    fn rewriting_refreshes_age() {
        let s = MemoryStore::new(4 * (2 * 2 + 100 + ENTRY_OVERHEAD));
        s.put("k1", &[0; 100], MIN).unwrap();
        s.put("k2", &[0; 100], MIN).unwrap();
        s.put("k3", &[0; 100], MIN).unwrap();
        s.put("k1", &[1; 100], MIN).unwrap(); // k1 is now the newest
        s.put("k4", &[0; 100], MIN).unwrap();
        s.put("k5", &[0; 100], MIN).unwrap(); // evicts k2, the least recently written
        assert!(s.get("k2").unwrap().is_none());
        assert_eq!(s.get("k1").unwrap(), Some(vec![1; 100]));
    }

    #[test]
    fn one_huge_value_is_refused_not_flushing_the_table() {
        let s = MemoryStore::new(64 * 1024);
        s.put("keep", b"v", MIN).unwrap();
        let err = s.put("huge", &vec![0; 20 * 1024], MIN).unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 16384, .. }),
            "{err}"
        );
        assert!(s.push("huge", &[&vec![0; 20 * 1024]], MIN).is_err());
        // A refused push leaves the list as it was.
        s.push("list", &[b"a"], MIN).unwrap();
        assert!(s.push("list", &[&vec![0; 20 * 1024]], MIN).is_err());
        assert_eq!(s.pop("list"), Ok(Some(b"a".to_vec())));
        assert_eq!(s.get("keep"), Ok(Some(b"v".to_vec())));
        assert_eq!(s.get("huge"), Ok(None));
    }

    #[test]
    fn save_and_load_round_trip_with_prefix() {
        let dir = std::env::temp_dir().join(format!("wxfcgi-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let s = MemoryStore::new(64 * 1024);
        s.push("late:u1", &[b"part 1", b"part 2"], MIN).unwrap();
        s.put("late:u2", "答案".as_bytes(), MIN).unwrap();
        s.put("retry:x", b"not persisted", MIN).unwrap();
        s.save("late:", &path).unwrap();

        let t = MemoryStore::new(64 * 1024);
        assert_eq!(t.load(&path).unwrap(), 2);
        assert_eq!(t.pop("late:u1"), Ok(Some(b"part 1".to_vec())));
        assert_eq!(t.pop("late:u1"), Ok(Some(b"part 2".to_vec())));
        assert_eq!(t.get("late:u2"), Ok(Some("答案".as_bytes().to_vec())));
        assert_eq!(t.get("retry:x"), Ok(None));
        // A missing file is an empty state.
        assert_eq!(t.load(&dir.join("absent")).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_whole() {
        let entries = vec![Exported {
            key: "k".into(),
            expires_unix_ms: u64::MAX,
            value: ExportedValue::List(vec![b"a".to_vec(), b"bc".to_vec()]),
        }];
        let good = encode(&entries);
        assert_eq!(decode(&good), Ok(entries));
        // Every strict prefix is refused (never a partial import), and so is garbage.
        for n in 0..good.len() {
            if n == MAGIC.len() {
                continue; // the magic alone is a valid empty file
            }
            assert!(decode(&good[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut huge_count = good.clone();
        let at = MAGIC.len() + 4 + 1 + 8 + 1;
        huge_count[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_count), Err("list count larger than the file"));
        assert!(decode(b"not a state file at all").is_err());
    }

    #[test]
    fn expired_entries_are_not_imported() {
        let s = MemoryStore::new(64 * 1024);
        s.import(vec![
            Exported {
                key: "old".into(),
                expires_unix_ms: unix_ms() - 1,
                value: ExportedValue::Bytes(b"x".to_vec()),
            },
            Exported {
                key: "new".into(),
                expires_unix_ms: unix_ms() + 60_000,
                value: ExportedValue::Bytes(b"y".to_vec()),
            },
        ]);
        assert_eq!(s.get("old"), Ok(None));
        assert_eq!(s.get("new"), Ok(Some(b"y".to_vec())));
    }
}
