//! `shared_state`: where the process keeps what several instances must agree on. Absent, the
//! process's own bounded memory; `redis://HOST[:PORT][/DB]` or `redis+unix:///PATH[?db=N]`,
//! Redis, with that memory answering while Redis is unreachable or slow.

use super::Store;
use super::fallback::{FallbackStore, Health};
use std::sync::Arc;

/// Checks a `shared_state` URL without connecting: the scheme, and for TCP a loopback or
/// private IP address (or `localhost`), as Redis speaks in clear text and has no business on a
/// public network. With Redis support, the client must accept it too.
pub fn check_url(url: &str) -> Result<(), String> {
    check_form(url)?;
    #[cfg(feature = "redis")]
    super::redis::RedisStore::open(url)?;
    Ok(())
}

fn check_form(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    if url.starts_with("rediss://") {
        return Err(
            "TLS to Redis is not supported: reach it over loopback, a private \
                    network or a Unix socket (redis+unix:///path)"
                .into(),
        );
    }
    if let Some(path) = url.strip_prefix("redis+unix://") {
        let path = path.split('?').next().unwrap_or("");
        if !path.starts_with('/') || path.len() < 2 {
            return Err("redis+unix:// needs an absolute socket path, e.g. \
                        redis+unix:///run/redis/redis-server.sock"
                .into());
        }
        if let Some(query) = url.split_once('?').map(|(_, q)| q) {
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("db", n)) if n.parse::<u16>().is_ok() => {}
                    Some(("user" | "pass", _)) => {}
                    _ => {
                        return Err(format!(
                            "unknown or bad parameter {:?} (allowed: db=N, user=, pass=)",
                            pair.split('=').next().unwrap_or("")
                        ));
                    }
                }
            }
        }
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err("must be redis://HOST[:PORT][/DB] or redis+unix:///PATH[?db=N]".into());
    };
    if rest.contains(['?', '#']) {
        return Err("must not contain a query or fragment".into());
    }
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    if !(db.is_empty() || db.parse::<u16>().is_ok()) {
        return Err(format!("database {db:?} is not a number (0-65535)"));
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
            (host, after.strip_prefix(':'))
        }
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("port {port:?} is not a number (1-65535)"));
        }
    }
    let private = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => host == "localhost",
    };
    if !private {
        return Err(format!(
            "host {host:?} is not a loopback or private IP address (or localhost)"
        ));
    }
    Ok(())
}

/// The store named by `shared_state` (Redis), and one [`Health`] for every use of it.
/// Cloning is cheap: the clones share the client and the health.
#[derive(Clone)]
pub struct Shared {
    store: Arc<dyn Store>,
    health: Arc<Health>,
}

impl Shared {
    /// With `shared_state`: the Redis client, probed once so that an unreachable Redis is
    /// reported at start rather than at the first request that needs it. `None` without
    /// `shared_state`, or when Redis cannot be set up (ruled out by the config check; logged).
    pub fn open(shared_state: Option<&str>) -> Option<Shared> {
        let url = shared_state?;
        match check_url(url).and_then(|()| open_redis(url)) {
            Ok(store) => {
                crate::log_info!(
                    "shared state: Redis {} (this instance's memory answers while it is \
                     unavailable)",
                    redacted(url)
                );
                let shared = Shared {
                    store,
                    health: Health::new(format!("Redis {}", redacted(url))),
                };
                // Any answer will do: a failure is logged.
                let probe = shared.with_fallback(Arc::new(super::MemoryStore::new(4096)));
                let _ = probe.get(&super::key("-", "probe", "start"));
                Some(shared)
            }
            Err(e) => {
                crate::log_error!(
                    "shared_state: {e}; keeping state in this instance's memory only"
                );
                None
            }
        }
    }

    /// True while Redis is considered unavailable (local memory answers).
    pub fn degraded(&self) -> bool {
        self.health.degraded()
    }

    /// Redis, with `local` answering while it is unavailable.
    pub fn with_fallback(&self, local: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(FallbackStore::new(
            Arc::clone(&self.store),
            local,
            Arc::clone(&self.health),
        ))
    }
}

/// `url` with the password (`user:password@`, or `pass=` of a Unix URL) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let mut out = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    };
    if let Some(q) = out.find("pass=") {
        let end = out[q..].find('&').map_or(out.len(), |e| q + e);
        out.replace_range(q + 5..end, "***");
    }
    out
}

#[cfg(feature = "redis")]
fn open_redis(url: &str) -> Result<Arc<dyn Store>, String> {
    Ok(Arc::new(super::redis::RedisStore::open(url)?))
}

#[cfg(not(feature = "redis"))]
fn open_redis(_: &str) -> Result<Arc<dyn Store>, String> {
    Err(NO_REDIS.into())
}

/// Why `shared_state` is refused by a build without Redis support.
pub const NO_REDIS: &str =
    "this build has no Redis support: build with `cargo release-static --features redis`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log_name() {
        assert_eq!(
            redacted("redis://127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.5/0"),
            "redis://***@10.0.0.5/0"
        );
        assert_eq!(
            redacted("redis://u:p@ss@10.0.0.5/0"),
            "redis://***@10.0.0.5/0"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }

    #[test]
    fn urls() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://127.0.0.1",
            "redis://10.0.0.5:6380/3",
            "redis://:s3cret@192.168.1.9/1",
            "redis://[::1]:6379/0",
            "redis://localhost/2",
            "redis+unix:///run/redis/redis-server.sock",
            "redis+unix:///tmp/r.sock?db=4",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("rediss://127.0.0.1/0", "TLS"),
            ("redis://8.8.8.8:6379/0", "not a loopback or private"),
            ("redis://redis.example.com/0", "not a loopback or private"),
            ("redis://127.0.0.1:0/0", "port"),
            ("redis://127.0.0.1:http/0", "port"),
            ("redis://127.0.0.1/x", "database"),
            ("redis://127.0.0.1/0?protocol=resp3", "query"),
            ("redis+unix://relative.sock", "absolute"),
            ("redis+unix:///tmp/r.sock?timeout=1", "parameter"),
            ("http://127.0.0.1:6379", "must be redis://"),
            ("redis://127.0.0.1/0\n", "control"),
        ] {
            let e = check_url(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
