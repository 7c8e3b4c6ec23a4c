//! [`Store`] on Redis (`shared_state = "redis://…"`), with the `redis` crate's synchronous
//! client: what several weixin-fcgi instances behind one nginx upstream share.
//!
//! Every call is one round trip under a short deadline ([`TIMEOUT`] to connect, to send and to
//! receive); any failure is [`StoreError::Unavailable`] and the connection is dropped (a late
//! answer must never be read as the next command's), so the caller falls back to local state
//! at once and the next call connects afresh. Connections are kept in a small pool: a caller
//! takes one, so workers and forward threads never wait on each other's round trips.
//!
//! Values read back are bounded ([`MAX_VALUE`]): a Lua script checks the length on the server,
//! so a key filled by something else never makes this process allocate its size.

use super::shared::redacted;
use super::{Store, StoreError};
use ::redis::{
    Client, Cmd, Connection, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value,
};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadline of a connect, and of each send and receive.
pub const TIMEOUT: Duration = Duration::from_millis(200);
/// Largest value written or read back; a longer one is refused when written
/// ([`StoreError::TooLarge`]) and treated as absent when read (a list element: popped).
pub const MAX_VALUE: usize = 256 * 1024;
/// Idle connections kept for reuse; callers beyond that open and close their own.
const MAX_IDLE: usize = 16;

// Lua scripts, each one round trip and atomic, give the trait's semantics where plain
// commands would differ: reads are bounded, and a key of the other kind reads as absent
// (GET/LLEN/LPOP on the wrong type are errors in Redis) or is replaced (RPUSH onto a string).

/// GET, but nil for a list and -1 for a value over ARGV[1] bytes.
const GET_BOUNDED: &str = "if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return false end \
     if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return -1 end \
     return redis.call('GET', KEYS[1])";
/// LPOP, but nil for a string, and -1 (the element is dropped) for one over ARGV[1] bytes.
const POP_BOUNDED: &str = "if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then return false end \
     local v = redis.call('LPOP', KEYS[1]) \
     if not v then return false end \
     if #v > tonumber(ARGV[1]) then return -1 end \
     return v";
/// LLEN, but 0 for a string.
const LIST_LEN: &str = "if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then return 0 end \
     return redis.call('LLEN', KEYS[1])";
/// RPUSH ARGV[2..] and PEXPIRE ARGV[1], replacing a string under the key.
const PUSH: &str = "if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then redis.call('DEL', KEYS[1]) end \
     redis.call('RPUSH', KEYS[1], unpack(ARGV, 2)) \
     redis.call('PEXPIRE', KEYS[1], ARGV[1]) \
     return 1";

/// A Lua script run by its SHA-1 (`EVALSHA`), sent whole (`EVAL`) only when the server does
/// not have it yet (a new or restarted Redis): most calls carry 40 bytes, not the script.
struct Script {
    code: &'static str,
    sha: String,
}

impl Script {
    fn new(code: &'static str) -> Script {
        use sha1::Digest;
        Script {
            code,
            sha: hex::encode(sha1::Sha1::digest(code.as_bytes())),
        }
    }

    /// Runs the script with one key and the arguments `args` adds.
    fn run<T: FromRedisValue>(
        &self,
        c: &mut Connection,
        key: &str,
        args: impl Fn(&mut Cmd),
    ) -> Result<T, RedisError> {
        let mut call = |command: &str, script: &str| {
            let mut cmd = ::redis::cmd(command);
            cmd.arg(script).arg(1).arg(key);
            args(&mut cmd);
            cmd.query::<T>(c)
        };
        match call("EVALSHA", &self.sha) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                call("EVAL", self.code)
            }
            other => other,
        }
    }
}

/// The scripts above.
struct Scripts {
    get: Script,
    pop: Script,
    list_len: Script,
    push: Script,
}

/// A Redis server reached over TCP or a Unix socket.
pub struct RedisStore {
    client: Client,
    scripts: Scripts,
    idle: Mutex<Vec<Connection>>,
    /// The URL without a password, for log lines.
    name: String,
    created: Instant,
    /// Seconds after `created` of the last warning about an oversized value, plus one.
    warned_at: AtomicU64,
}

/// Least time between two warnings about oversized values.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl RedisStore {
    /// Parses `url` (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path[?db=N]`). Does not connect: the first call does.
    pub fn open(url: &str) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| reason(&e))?;
        Ok(RedisStore {
            client,
            scripts: Scripts {
                get: Script::new(GET_BOUNDED),
                pop: Script::new(POP_BOUNDED),
                list_len: Script::new(LIST_LEN),
                push: Script::new(PUSH),
            },
            idle: Mutex::new(Vec::new()),
            name: redacted(url),
            created: Instant::now(),
            warned_at: AtomicU64::new(0),
        })
    }

    /// True at most once per [`WARN_EVERY`].
    fn warn_due(&self) -> bool {
        let now = self.created.elapsed().as_secs() + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        (last == 0 || now >= last + WARN_EVERY.as_secs())
            && (self.warned_at)
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The URL for log lines, without a password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a pooled connection. A pooled connection that fails at once (Redis was
    /// restarted since it was used) is replaced and `f` tried once more; a timeout is not
    /// retried. Any failure drops the connection and the idle ones: they are likely as dead.
    fn with<T>(
        &self,
        f: impl Fn(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let result = match pooled {
            Some(mut conn) => match f(&mut conn) {
                Err(e) if !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()) => {
                    self.connect().and_then(|mut c| f(&mut c).map(|v| (v, c)))
                }
                other => other.map(|v| (v, conn)),
            },
            None => self.connect().and_then(|mut c| f(&mut c).map(|v| (v, c))),
        };
        match result {
            Ok((v, conn)) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(v)
            }
            Err(e) => {
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                Err(StoreError::Unavailable(reason(&e)))
            }
        }
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        Ok(conn)
    }
}

/// Refuses a value that could not be read back ([`MAX_VALUE`]).
fn fits(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE {
        return Err(StoreError::TooLarge {
            bytes: value.len(),
            limit: MAX_VALUE,
        });
    }
    Ok(())
}

impl Store for RedisStore {
    fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        fits(value)?;
        self.with(|c| {
            let set: Value = ::redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query(c)?;
            Ok(!matches!(set, Value::Nil))
        })
    }

    fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        fits(value)?;
        self.with(|c| {
            ::redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query::<()>(c)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_bounded(&self.scripts.get, key)
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| ::redis::cmd("DEL").arg(key).query::<()>(c))
    }

    fn push(&self, key: &str, values: &[&[u8]], ttl: Duration) -> Result<(), StoreError> {
        if values.is_empty() {
            return Ok(());
        }
        values.iter().try_for_each(|v| fits(v))?;
        self.with(|c| {
            self.scripts.push.run::<()>(c, key, |cmd| {
                cmd.arg(ttl_ms(ttl)).arg(values);
            })
        })
    }

    fn pop(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_bounded(&self.scripts.pop, key)
    }

    fn list_len(&self, key: &str) -> Result<usize, StoreError> {
        self.with(|c| self.scripts.list_len.run::<usize>(c, key, |_| {}))
    }
}

impl RedisStore {
    /// Runs `script` (one of the bounded reads) on `key`: the bytes, or `None` for nil, -1
    /// (too long) or anything unexpected.
    fn read_bounded(&self, script: &Script, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.with(|c| {
            script.run::<Value>(c, key, |cmd| {
                cmd.arg(MAX_VALUE);
            })
        })?;
        Ok(match value {
            Value::BulkString(bytes) => Some(bytes),
            Value::Nil => None,
            Value::Int(-1) if self.warn_due() => {
                crate::log_warn!(
                    "shared state: Redis {} key {} holds a value over {MAX_VALUE} bytes; ignored",
                    self.name,
                    key.escape_debug()
                );
                None
            }
            _ => None,
        })
    }
}

/// Milliseconds for PX/PEXPIRE: at least 1 (0 is an error in Redis).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A short, one-line reason for logs: "timed out", "connection refused", the server's error.
fn reason(e: &RedisError) -> String {
    let text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connection_refusal() && e.kind() == ErrorKind::Io {
        "connection refused".to_string()
    } else {
        e.to_string()
    };
    let mut text: String = text.escape_debug().collect();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_at_least_one_millisecond() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_secs(30)), 30_000);
    }
}
