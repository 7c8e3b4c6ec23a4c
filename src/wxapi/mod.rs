//! The WeChat server API (`{api_base}/cgi-bin/...`) as an account calls it: the access token
//! and JSON calls made with it (customer-service messages, user info).
//!
//! # The access token
//! Fetched from `app_id` + `app_secret` with `POST /cgi-bin/stable_token` (the stable token
//! does not invalidate the tokens of other callers); where that endpoint is missing (HTTP
//! 404) `GET /cgi-bin/token` is used instead. The token is kept in the [`Store`] under
//! `state::key(account, "token", app_id)` until [`EARLY`] before WeChat says it expires, so
//! several instances sharing a store fetch it once. One refresher at a time: a mutex in this
//! process and a short lock key in the store across processes (it expires by itself if its
//! holder dies). When a call answers errcode 40001, 42001 or 40014 (token invalid or
//! expired), the token is dropped, fetched again once with `force_refresh`, and the call is
//! repeated once.
//!
//! # Security
//! The AppSecret and tokens travel only in request bodies and query strings; no error text
//! returned from here contains either (errors never include URLs, and any echo is redacted).

use crate::state::{self, Store};
use serde_json::Value;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long before WeChat's `expires_in` the token is treated as expired.
pub const EARLY: Duration = Duration::from_secs(300);
/// Longest answer read from the API.
const MAX_ANSWER: u64 = 256 * 1024;
/// The cross-instance refresh lock expires by itself after this long.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a caller waits for another instance's refresh before fetching itself.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// errcodes that mean "this access token is not valid (any more)".
const TOKEN_INVALID: [i64; 3] = [40001, 42001, 40014];

/// Why an API call failed. Its text names no secret and no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Connecting, sending or reading failed (timeout, refused, TLS, answer too long).
    Transport(String),
    /// The API answered an HTTP status other than 200.
    Http(u16),
    /// The API answered `{"errcode": N, "errmsg": "..."}` with N ≠ 0.
    Api { errcode: i64, errmsg: String },
    /// The answer was not the JSON expected.
    BadAnswer(&'static str),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Transport(why) => write!(f, "{why}"),
            ApiError::Http(status) => write!(f, "HTTP {status}"),
            ApiError::Api { errcode, errmsg } => {
                write!(f, "errcode {errcode} ({})", errmsg.escape_debug())
            }
            ApiError::BadAnswer(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// The WeChat errcode, when the API answered one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }
}

/// One account's API client. Share it (`Arc`) between threads.
pub struct Api {
    base: String,
    account: String,
    app_id: String,
    app_secret: String,
    store: Arc<dyn Store>,
    agent: ureq::Agent,
    refresh: Mutex<()>,
    fetches: AtomicU64,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("account", &self.account)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for `account` (the config's account name, for state keys) calling `base`
    /// (`api_base`, e.g. `https://api.weixin.qq.com`), each exchange bounded by `timeout`.
    pub fn new(
        base: &str,
        account: &str,
        app_id: &str,
        app_secret: &str,
        store: Arc<dyn Store>,
        timeout: Duration,
    ) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .build()
            .into();
        Api {
            base: base.trim_end_matches('/').to_owned(),
            account: account.to_owned(),
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            store,
            agent,
            refresh: Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many times this client fetched a token from WeChat (for tests and the status page).
    pub fn token_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `POST {base}{path}?access_token=…` with a JSON body; the answer's JSON when its errcode
    /// is absent or 0. Retried once with a fresh token when the token was not valid.
    pub fn post_json(&self, path: &str, body: &[u8]) -> Result<Value, ApiError> {
        self.with_token(|token| {
            let url = format!("{}{path}", self.base);
            let request = self
                .agent
                .post(&url)
                .query("access_token", token)
                .header("Content-Type", "application/json; charset=utf-8");
            self.answer(request.send(body))
        })
    }

    /// `GET {base}{path}?access_token=…&{query}`; like [`post_json`](Self::post_json).
    pub fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        self.with_token(|token| {
            let url = format!("{}{path}", self.base);
            let request = self
                .agent
                .get(&url)
                .query("access_token", token)
                .query_pairs(query.iter().copied());
            self.answer(request.call())
        })
    }

    fn with_token(
        &self,
        call: impl Fn(&str) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let token = self.access_token()?;
        match call(&token) {
            Err(e) if e.errcode().is_some_and(|c| TOKEN_INVALID.contains(&c)) => {
                self.invalidate(&token);
                let fresh = self.refresh_token(true, Some(&token))?;
                call(&fresh)
            }
            other => other,
        }
    }

    /// The current access token: from the store, or fetched (once across callers).
    pub fn access_token(&self) -> Result<String, ApiError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        self.refresh_token(false, None)
    }

    fn token_key(&self) -> String {
        state::key(&self.account, "token", &self.app_id)
    }

    fn cached(&self) -> Option<String> {
        let bytes = self.store.get(&self.token_key()).ok()??;
        String::from_utf8(bytes).ok().filter(|t| !t.is_empty())
    }

    /// Drops `bad` from the store unless another caller already replaced it.
    fn invalidate(&self, bad: &str) {
        if self.cached().as_deref() == Some(bad) {
            let _ = self.store.remove(&self.token_key());
        }
    }

    /// Fetches a token unless another caller has stored one (other than `stale`) meanwhile.
    fn refresh_token(&self, force: bool, stale: Option<&str>) -> Result<String, ApiError> {
        let _one_here = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |t: &String| Some(t.as_str()) != stale;
        if let Some(token) = self.cached().filter(fresh) {
            return Ok(token);
        }
        let lock_key = state::key(&self.account, "token-lock", &self.app_id);
        let deadline = Instant::now() + LOCK_WAIT;
        // Another instance may be refreshing: wait for its token, but not past LOCK_WAIT.
        // A store that is unavailable counts as holding the lock (we fetch ourselves).
        while let Ok(false) = self.store.put_new(&lock_key, b"1", LOCK_TTL) {
            if let Some(token) = self.cached().filter(fresh) {
                return Ok(token);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let result = self.fetch(force);
        if let Ok((token, expires_in)) = &result {
            let ttl = expires_in
                .saturating_sub(EARLY)
                .max(Duration::from_secs(30));
            let _ = self.store.put(&self.token_key(), token.as_bytes(), ttl);
        }
        let _ = self.store.remove(&lock_key);
        result.map(|(token, _)| token)
    }

    /// One token fetch from WeChat: the token and how long it lives.
    fn fetch(&self, force: bool) -> Result<(String, Duration), ApiError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": self.app_id,
            "secret": self.app_secret,
            "force_refresh": force,
        });
        let stable = self
            .agent
            .post(&format!("{}/cgi-bin/stable_token", self.base))
            .header("Content-Type", "application/json; charset=utf-8")
            .send(body.to_string().as_bytes());
        let answer = match self.answer(stable) {
            Err(ApiError::Http(404)) => {
                let classic = self
                    .agent
                    .get(&format!("{}/cgi-bin/token", self.base))
                    .query("grant_type", "client_credential")
                    .query("appid", &self.app_id)
                    .query("secret", &self.app_secret)
                    .call();
                self.answer(classic)?
            }
            other => other?,
        };
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 2048)
            .ok_or(ApiError::BadAnswer("token answer without access_token"))?;
        let expires_in = answer
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(7200)
            .min(86_400);
        Ok((token.to_owned(), Duration::from_secs(expires_in)))
    }

    /// Reads a JSON answer; errcode ≠ 0 is an error.
    fn answer(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ApiError> {
        let mut response = sent.map_err(|e| ApiError::Transport(self.describe(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ApiError::Http(status));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| ApiError::Transport(self.describe(&e)))?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|_| ApiError::BadAnswer("answer is not JSON"))?;
        match value.get("errcode").and_then(Value::as_i64) {
            Some(0) | None => Ok(value),
            Some(errcode) => Err(ApiError::Api {
                errcode,
                errmsg: value
                    .get("errmsg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>()
                    .replace(&self.app_secret, "<redacted>"),
            }),
        }
    }

    /// A short reason for a client error, without URLs (they carry the secret or token).
    fn describe(&self, e: &ureq::Error) -> String {
        let text = match e {
            ureq::Error::Timeout(_) => "timeout".to_owned(),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_owned()
            }
            ureq::Error::BodyExceedsLimit(_) => format!("answer longer than {MAX_ANSWER} bytes"),
            ureq::Error::BadUri(_) => "bad api_base URL".to_owned(),
            other => other.to_string(),
        };
        if self.app_secret.is_empty() {
            text
        } else {
            text.replace(&self.app_secret, "<redacted>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    /// A fake WeChat API on loopback: `answers` are (path prefix, status, body) in the order
    /// they are served; the request lines it saw are returned by the handle.
    struct FakeApi {
        base: String,
        seen: Arc<Mutex<Vec<String>>>,
        served: Arc<AtomicUsize>,
    }

    fn fake_api(answers: Vec<(&'static str, u16, String)>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicUsize::new(0));
        let (seen2, served2) = (seen.clone(), served.clone());
        std::thread::spawn(move || {
            for (want, status, body) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut req_body = vec![0; len];
                reader.read_exact(&mut req_body).unwrap();
                assert!(line.contains(want), "expected {want}, got {line}");
                seen2.lock().unwrap().push(format!(
                    "{} {}",
                    line.trim(),
                    String::from_utf8_lossy(&req_body)
                ));
                let mut stream = reader.into_inner();
                // Counted before the answer leaves: the caller may assert as soon as it has it.
                served2.fetch_add(1, Ordering::SeqCst);
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        FakeApi { base, seen, served }
    }

    fn api(base: &str, store: Arc<dyn Store>) -> Api {
        Api::new(
            base,
            "main",
            "wxAPPID",
            "S3CRET",
            store,
            Duration::from_secs(5),
        )
    }

    fn token(t: &str) -> String {
        format!(r#"{{"access_token":"{t}","expires_in":7200}}"#)
    }

    #[test]
    fn one_token_fetch_serves_several_calls() {
        let fake = fake_api(vec![
            ("/cgi-bin/stable_token", 200, token("TOKEN1")),
            (
                "/cgi-bin/message/custom/send?access_token=TOKEN1",
                200,
                r#"{"errcode":0}"#.into(),
            ),
            (
                "/cgi-bin/message/custom/send?access_token=TOKEN1",
                200,
                r#"{"errcode":0}"#.into(),
            ),
        ]);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(64 * 1024));
        let a = api(&fake.base, store.clone());
        for _ in 0..2 {
            a.post_json("/cgi-bin/message/custom/send", br#"{"touser":"o1"}"#)
                .unwrap();
        }
        assert_eq!(a.token_fetches(), 1);
        let seen = fake.seen.lock().unwrap();
        assert!(
            seen[0].contains(r#""appid":"wxAPPID""#)
                && seen[0].contains(r#""force_refresh":false"#)
        );
        // A second client on the same store (another instance) reuses the stored token.
        let b = api(&fake.base, store);
        assert_eq!(b.access_token().unwrap(), "TOKEN1");
        assert_eq!(b.token_fetches(), 0);
    }

    #[test]
    fn invalid_token_is_refreshed_once_and_the_call_repeated() {
        let fake = fake_api(vec![
            ("/cgi-bin/stable_token", 200, token("OLD")),
            (
                "access_token=OLD",
                200,
                r#"{"errcode":40001,"errmsg":"invalid credential"}"#.into(),
            ),
            ("/cgi-bin/stable_token", 200, token("NEW")),
            (
                "access_token=NEW",
                200,
                r#"{"errcode":0,"errmsg":"ok"}"#.into(),
            ),
        ]);
        let a = api(&fake.base, Arc::new(MemoryStore::new(64 * 1024)));
        let v = a.post_json("/cgi-bin/message/custom/send", b"{}").unwrap();
        assert_eq!(v["errmsg"], "ok");
        assert_eq!(a.token_fetches(), 2);
        let seen = fake.seen.lock().unwrap();
        assert!(seen[2].contains(r#""force_refresh":true"#), "{}", seen[2]);
    }

    #[test]
    fn other_errcodes_are_returned_without_refresh() {
        let fake = fake_api(vec![
            ("/cgi-bin/stable_token", 200, token("T")),
            (
                "access_token=T",
                200,
                r#"{"errcode":45015,"errmsg":"response out of time limit"}"#.into(),
            ),
        ]);
        let a = api(&fake.base, Arc::new(MemoryStore::new(64 * 1024)));
        let err = a
            .post_json("/cgi-bin/message/custom/send", b"{}")
            .unwrap_err();
        assert_eq!(err.errcode(), Some(45015));
        assert_eq!(a.token_fetches(), 1);
    }

    #[test]
    fn classic_token_endpoint_when_stable_token_is_missing() {
        let fake = fake_api(vec![
            ("/cgi-bin/stable_token", 404, String::new()),
            (
                "/cgi-bin/token?grant_type=client_credential&appid=wxAPPID&secret=S3CRET",
                200,
                token("CLASSIC"),
            ),
        ]);
        let a = api(&fake.base, Arc::new(MemoryStore::new(64 * 1024)));
        assert_eq!(a.access_token().unwrap(), "CLASSIC");
    }

    #[test]
    fn errors_never_carry_the_secret_or_token() {
        let fake = fake_api(vec![(
            "/cgi-bin/stable_token",
            200,
            r#"{"errcode":40125,"errmsg":"invalid appsecret S3CRET"}"#.into(),
        )]);
        let a = api(&fake.base, Arc::new(MemoryStore::new(64 * 1024)));
        let err = a.access_token().unwrap_err().to_string();
        assert!(err.contains("40125") && !err.contains("S3CRET"), "{err}");
        assert!(!format!("{a:?}").contains("S3CRET"));
        // Unreachable API: the text names no URL.
        let dead = api("http://127.0.0.1:9", Arc::new(MemoryStore::new(64 * 1024)));
        let err = dead.access_token().unwrap_err().to_string();
        assert!(!err.contains("S3CRET"), "{err}");
        let _ = fake.served.load(Ordering::SeqCst);
    }

    #[test]
    fn concurrent_callers_fetch_once() {
        let mut answers = vec![("/cgi-bin/stable_token", 200, token("SHARED"))];
        for _ in 0..8 {
            answers.push(("access_token=SHARED", 200, r#"{"errcode":0}"#.into()));
        }
        let fake = fake_api(answers);
        let a = Arc::new(api(&fake.base, Arc::new(MemoryStore::new(64 * 1024))));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || a.post_json("/x", b"{}").unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.token_fetches(), 1);
        assert_eq!(fake.served.load(Ordering::SeqCst), 9);
    }
}
