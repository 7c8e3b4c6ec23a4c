//! Several instances, one memory: two weixin-fcgi processes with the same config sharing a
//! real `redis-server` (`shared_state`), behind real nginx, forwarding to a real HTTP backend
//! on loopback. Built with `--features redis` (tests/run.sh does).
#![cfg(feature = "redis")]

pub mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weixin_fcgi::state::fallback::{FallbackStore, Health};
use weixin_fcgi::state::redis::{MAX_VALUE, RedisStore};
use weixin_fcgi::state::{MemoryStore, Store, StoreError};

const TOKEN: &str = "sharedtoken";

/// A go-wx-gateway style backend (the harness's fake HTTP server): `/sleep-MS/msg/text`
/// answers `slow: <Content>` after MS milliseconds, anything else `echo: <Content>` at once;
/// a message `more` is answered `{"type": "none"}` (nothing to say), and `long N` a text of
/// N bytes: numbered lines `0001 xxxx…` of 20 bytes. Records when each call began.
struct Backend {
    fake: fake_http::Fake,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Backend {
    fn start() -> Backend {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let fake = fake_http::Fake::simple(move |path, body| {
            seen.lock().expect("calls").push(Instant::now());
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let content = json["Content"].as_str().unwrap_or("");
            let sleep_ms = path
                .strip_prefix("/sleep-")
                .and_then(|p| p.split('/').next())
                .and_then(|ms| ms.parse::<u64>().ok());
            if let Some(ms) = sleep_ms {
                fake_http::sleep(Duration::from_millis(ms));
            }
            if content == "more" {
                return (200, r#"{"type": "none"}"#.to_string());
            }
            let msg = match (content.strip_prefix("long "), sleep_ms) {
                (Some(n), _) => long_text(n.parse().unwrap_or(0)),
                (None, Some(_)) => format!("slow: {content}"),
                (None, None) => format!("echo: {content}"),
            };
            (
                200,
                serde_json::json!({"type": "text", "msg": msg}).to_string(),
            )
        });
        Backend { fake, calls }
    }

    fn url(&self, prefix: &str) -> String {
        format!("http://127.0.0.1:{}/{prefix}", self.fake.port)
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().expect("calls").clone()
    }
}

/// An instance of the binary with `config`, once it uses Redis: on a busy machine its first
/// connection (at start) can take longer than the 200 ms it gives Redis, and then Redis is
/// tried again only a second later.
fn start_instance(config: &str) -> Responder {
    let r = Responder::start(config);
    // Logged once the store is set up and probed.
    assert!(wait_for(Duration::from_secs(5), || r
        .stderr()
        .contains(" serving on ")));
    if r.stderr().contains("unavailable (timed out)") {
        std::thread::sleep(Duration::from_millis(1200));
    }
    r
}

/// The config both instances run: `shared_state` and one forward rule.
fn config(shared_state: &str, backend_url: &str, timeout_ms: u64) -> String {
    format!(
        "shared_state = \"{shared_state}\"\n{}",
        config_with_rules(
            TOKEN,
            &format!(
                "[[account.rule]]\nname = \"bot\"\nreply = {{ type = \"forward\", url = \
                 \"{backend_url}\", timeout_ms = {timeout_ms}, fallback = {{ type = \"text\", \
                 content = \"fallback\" }} }}\n"
            ),
        )
    )
}

/// `bytes` of numbered lines, `0001 xxx…x\n`, 20 bytes each.
fn long_text(bytes: usize) -> String {
    (1..=bytes.div_ceil(20))
        .map(|i| format!("{i:04} {}\n", "x".repeat(14)))
        .collect::<String>()[..bytes]
        .to_string()
}

/// A text message with its own MsgId (the retry key).
fn message(content: &str) -> String {
    message_from("oUser", content)
}

/// A text message of `user` with its own MsgId.
fn message_from(user: &str, content: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let id = 8_100_000_000 + N.fetch_add(1, Ordering::SeqCst) + u64::from(std::process::id());
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[{user}]]>\
         </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{id}</MsgId></xml>",
        now()
    )
}

/// One attempt through the nginx on `port`: status and the reply's Content.
fn attempt(port: u16, message: &str) -> (u16, Option<String>) {
    let query = format!("/weixin?{}", signed_query(TOKEN));
    match try_http(port, "POST", &query, message.as_bytes()) {
        // nginx's own error pages (502, 504) are HTML, not a reply.
        Ok(resp) if resp.status != 200 => (resp.status, None),
        Ok(resp) => (resp.status, xml_field(&resp.text(), "Content")),
        Err(e) => panic!("HTTP to nginx failed: {e}"),
    }
}

/// Keys of one kind (`KEYS weixin-fcgi:*:KIND:*`) with their remaining TTL in ms and value,
/// read with the redis crate.
fn shared_keys(redis: &RedisServer, kind: &str) -> Vec<(String, i64, Vec<u8>)> {
    shared_entries(redis, kind, |c, k| {
        redis::cmd("GET").arg(k).query(c).unwrap_or_default()
    })
}

/// Keys of one kind with their remaining TTL in ms and what `read` reads of each.
fn shared_entries<T>(
    redis: &RedisServer,
    kind: &str,
    read: impl Fn(&mut redis::Connection, &str) -> T,
) -> Vec<(String, i64, T)> {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect to redis-server");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("weixin-fcgi:*:{kind}:*"))
        .query(&mut c)
        .expect("KEYS");
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).expect("PTTL");
            let v = read(&mut c, &k);
            (k, ttl, v)
        })
        .collect()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn attempts_alternating_between_instances_reach_a_slow_backend_once() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let config = config(&redis.url(), &backend.url("sleep-3000"), 4500);
    let a = start_instance(&config);
    let b = start_instance(&config);
    let nginx = Nginx::start_upstream(&[&a.socket, &b.socket], true);
    let port = nginx.port;
    // WeChat retries every 5 s; here every second, with a backend needing 3 s, so that
    // attempts reach both instances while the first is still waiting for the backend.
    let msg = message("retry me");
    let started = Instant::now();
    let attempts: Vec<_> = (0..5u64)
        .map(|i| {
            let msg = msg.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1000 * i));
                attempt(port, &msg)
            })
        })
        .collect();
    for (i, t) in attempts.into_iter().enumerate() {
        let (status, content) = t.join().expect("attempt");
        assert_eq!(status, 200, "attempt {i}");
        assert_eq!(
            content.as_deref(),
            Some("slow: retry me"),
            "attempt {i}\nA:\n{}\nB:\n{}",
            a.stderr(),
            b.stderr()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    assert_eq!(
        backend.calls().len(),
        1,
        "the backend sees the message once"
    );
    let (la, lb) = (a.stderr(), b.stderr());
    // Both instances answered attempts (nginx takes them in turn) ...
    assert!(count(&la, "request account=test") >= 2, "A:\n{la}");
    assert!(count(&lb, "request account=test") >= 2, "B:\n{lb}");
    // ... one called the backend, the other waited for its answer in Redis.
    let (caller, waiter) = if la.contains("result=ok") {
        (&la, &lb)
    } else {
        (&lb, &la)
    };
    assert_eq!(count(caller, "rule=bot result=ok"), 1, "{caller}");
    assert_eq!(count(waiter, "rule=bot result=ok"), 0, "{waiter}");
    assert_eq!(
        count(waiter, "result=duplicate-answered-shared"),
        1,
        "{waiter}"
    );
}

#[test]
fn a_retry_on_the_other_instance_is_answered_from_shared_state() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let config = config(&redis.url(), &backend.url("ok"), 3000);
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));

    let msg = message("once");
    assert_eq!(
        attempt(nginx_a.port, &msg),
        (200, Some("echo: once".into()))
    );
    assert_eq!(
        attempt(nginx_b.port, &msg),
        (200, Some("echo: once".into()))
    );
    assert_eq!(
        backend.calls().len(),
        1,
        "B answered from Redis:\n{}",
        b.stderr()
    );
    // B never saw the message before: its retry table found A's answer in Redis.
    assert!(b.stderr().contains("rule=bot result=duplicate-answered"));
    // Another message is another key.
    assert_eq!(
        attempt(nginx_b.port, &message("twice")),
        (200, Some("echo: twice".into()))
    );
    assert_eq!(backend.calls().len(), 2);

    // What Redis holds: prefixed keys with a TTL — the answers for dedup_seconds (30 s), the
    // claims for timeout_ms + 2 s (5 s) — the finished reply as value.
    let keys = shared_keys(&redis, "answer");
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (key, ttl, value) in &keys {
        assert!(key.starts_with("weixin-fcgi:test:answer:"), "{key}");
        assert!(*ttl > 25_000 && *ttl <= 30_000, "{key} ttl {ttl} ms");
        assert_eq!(value.first(), Some(&1), "{key}: a finished reply");
        assert!(String::from_utf8_lossy(value).contains("echo: "));
    }
    let claims = shared_keys(&redis, "claim");
    assert_eq!(claims.len(), 2, "{claims:?}");
    for (key, ttl, _) in &claims {
        assert!(*ttl > 0 && *ttl <= 5_000, "{key} ttl {ttl} ms");
    }
    // Every signed POST left its replay entry there too, for the timestamp window (300 s).
    let replay = shared_keys(&redis, "replay");
    assert_eq!(replay.len(), 3, "{replay:?}");
    for (key, ttl, _) in &replay {
        assert!(*ttl > 290_000 && *ttl <= 300_000, "{key} ttl {ttl} ms");
    }
}

/// One POST with a given signed query (a replay sends the same query again).
fn post_query(port: u16, query: &str, body: &str) -> (u16, String) {
    match try_http(port, "POST", &format!("/weixin?{query}"), body.as_bytes()) {
        Ok(resp) => (resp.status, resp.text()),
        Err(e) => panic!("HTTP to nginx failed: {e}"),
    }
}

#[test]
fn a_request_replayed_on_the_other_instance_is_refused() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    // A retry period of 1 s (dedup_seconds), so that the replay comes after it.
    let config = format!(
        "dedup_seconds = 1
{}",
        config(&redis.url(), &backend.url("ok"), 3000)
    );
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    let query = signed_query(TOKEN);
    let msg = message("pay 1 yuan");
    let (status, text) = post_query(nginx_a.port, &query, &msg);
    assert_eq!(status, 200, "{text}");
    // The same signature with another body, on B: refused at once.
    let (status, text) = post_query(nginx_b.port, &query, &message("pay 100 yuan"));
    assert_eq!(status, 403, "{text}\nB:\n{}", b.stderr());
    // The same request again on B after the retry period: a replay, refused.
    std::thread::sleep(Duration::from_millis(1300));
    let (status, text) = post_query(nginx_b.port, &query, &msg);
    assert_eq!(status, 403, "{text}\nB:\n{}", b.stderr());
    assert_eq!(backend.calls().len(), 1, "the backend saw the message once");
}

#[test]
fn state_survives_restarting_an_instance_over_a_unix_socket() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let url = format!("redis+unix://{}?db=1", redis.socket().display());
    let on_db_1 = config(&url, &backend.url("ok"), 3000);
    let msg = message("before restart");
    {
        let a = start_instance(&on_db_1);
        let nginx = Nginx::start(&a.socket, true);
        assert_eq!(
            attempt(nginx.port, &msg),
            (200, Some("echo: before restart".into()))
        );
        a.term();
    }
    let a = start_instance(&on_db_1);
    let nginx = Nginx::start(&a.socket, true);
    assert_eq!(
        attempt(nginx.port, &msg),
        (200, Some("echo: before restart".into())),
        "{}",
        a.stderr()
    );
    assert_eq!(
        backend.calls().len(),
        1,
        "answered from Redis:\n{}",
        a.stderr()
    );
    assert!(a.stderr().contains("result=duplicate-answered"));
    assert!(
        shared_keys(&redis, "answer").is_empty(),
        "db=1 was used, not db 0 (KEYS looks at db 0)"
    );
    // A reload cannot move the state elsewhere: it says so and keeps Redis db 1.
    std::fs::write(&a.config, config(&redis.url(), &backend.url("ok"), 3000)).expect("write");
    a.hup();
    assert!(wait_for(Duration::from_secs(5), || a.stderr().contains(
        "SIGHUP: shared_state changed; the running values stay until a restart"
    )));
    assert_eq!(
        attempt(nginx.port, &msg),
        (200, Some("echo: before restart".into()))
    );
    assert_eq!(backend.calls().len(), 1, "still answered from db 1");
}

#[test]
fn redis_stopped_still_answers_with_one_warning_and_comes_back() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let config = format!(
        "status_path = \"/weixin-status\"\n{}",
        config(&redis.url(), &backend.url("ok"), 3000)
    );
    let a = start_instance(&config);
    let nginx = Nginx::start(&a.socket, true);
    assert_eq!(
        attempt(nginx.port, &message("up")),
        (200, Some("echo: up".into()))
    );
    assert_eq!(shared_keys(&redis, "answer").len(), 1);
    assert_eq!(shared_state_up(&a), Some(true));

    redis.stop();
    for i in 0..4 {
        let started = Instant::now();
        let content = format!("down {i}");
        assert_eq!(
            attempt(nginx.port, &message(&content)),
            (200, Some(format!("echo: {content}"))),
            "{}",
            a.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered without waiting on Redis"
        );
    }
    let log = a.stderr();
    let warning = format!(
        "shared state: Redis {} unavailable (connection refused); answering from this \
         instance's memory",
        redis.url()
    );
    assert_eq!(
        count(&log, &warning),
        1,
        "one warning, not one per call:\n{log}"
    );
    // Retries still de-duplicate locally while Redis is away.
    let msg = message("local retry");
    assert_eq!(
        attempt(nginx.port, &msg),
        (200, Some("echo: local retry".into()))
    );
    assert_eq!(
        attempt(nginx.port, &msg),
        (200, Some("echo: local retry".into()))
    );
    assert_eq!(backend.calls().len(), 6);
    // The status page says so too (the plain page and the OpenMetrics one as well).
    assert_eq!(shared_state_up(&a), Some(false));
    let plain = status_page(&a, None);
    assert!(
        plain.contains("shared state:       unavailable (local memory answers)"),
        "{plain}"
    );
    let metrics = status_page(&a, Some("--openmetrics"));
    assert!(
        metrics.contains("\nweixin_fcgi_shared_state_up 0\n"),
        "{metrics}"
    );

    redis.restart();
    std::thread::sleep(Duration::from_millis(1200)); // past the 1 s retry interval
    assert_eq!(
        attempt(nginx.port, &message("back")),
        (200, Some("echo: back".into()))
    );
    assert!(
        wait_for(Duration::from_secs(2), || a.stderr().contains(&format!(
            "shared state: Redis {} is back after",
            redis.url()
        ))),
        "{}",
        a.stderr()
    );
    let keys = shared_keys(&redis, "answer");
    assert_eq!(keys.len(), 1, "the new answer is in Redis again: {keys:?}");
    assert_eq!(shared_state_up(&a), Some(true));
}

/// `weixin-fcgi status` of the instance (its `status_path` is /weixin-status) with `format`.
fn status_page(instance: &Responder, format: Option<&str>) -> String {
    let out = std::process::Command::new(bin())
        .args(["status", "--path", "/weixin-status", "--to"])
        .arg(&instance.socket)
        .args(format)
        .output()
        .expect("weixin-fcgi status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 status page")
}

/// `shared_state_up` of the JSON status page.
fn shared_state_up(instance: &Responder) -> Option<bool> {
    let page: serde_json::Value =
        serde_json::from_str(&status_page(instance, Some("--json"))).expect("JSON status page");
    page["shared_state_up"].as_bool()
}

#[test]
fn a_stalled_redis_costs_one_short_timeout_then_local_memory_answers() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let a = start_instance(&config(&redis.url(), &backend.url("ok"), 3000));
    let nginx = Nginx::start(&a.socket, true);
    assert_eq!(
        attempt(nginx.port, &message("warm")),
        (200, Some("echo: warm".into()))
    );
    let pid = redis.pid().expect("redis running").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "kill {sig} {pid}");
    };
    signal("-STOP");
    let started = Instant::now();
    let answered = attempt(nginx.port, &message("stalled"));
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(answered, (200, Some("echo: stalled".into())));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let log = a.stderr();
    assert!(
        log.contains(&format!(
            "shared state: Redis {} unavailable (timed out)",
            redis.url()
        )),
        "{log}"
    );
}

#[test]
fn an_instance_killed_mid_call_leaves_a_claim_that_expires_and_a_later_retry_is_answered() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    // Backend needs 2 s; timeout_ms 2500 → a claim lives 2.5 + 2 = 4.5 s.
    let config = config(&redis.url(), &backend.url("sleep-2000"), 2500);
    let mut a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    let msg = message("orphan");

    let first = {
        let (port, msg) = (nginx_a.port, msg.clone());
        std::thread::spawn(move || attempt(port, &msg))
    };
    assert!(wait_for(Duration::from_secs(5), || backend.calls().len() == 1));
    let _ = a.child.kill(); // SIGKILL while it holds the claim
    let _ = a.child.wait();
    let (status, _) = first.join().expect("first attempt");
    assert_ne!(status, 200, "A died before answering");

    // WeChat's retry reaches B, which waits for the claim of dead A to expire, then calls
    // the backend itself; that attempt outlives nginx's 5 s, the next one gets the answer.
    let second = {
        let (port, msg) = (nginx_b.port, msg.clone());
        std::thread::spawn(move || attempt(port, &msg))
    };
    std::thread::sleep(Duration::from_millis(4000));
    let (status, content) = attempt(nginx_b.port, &msg);
    assert_eq!(status, 200, "{}", b.stderr());
    assert_eq!(content.as_deref(), Some("slow: orphan"), "{}", b.stderr());
    let _ = second.join();

    let calls = backend.calls();
    assert_eq!(calls.len(), 2, "{}", b.stderr());
    let gap = calls[1] - calls[0];
    assert!(
        gap >= Duration::from_millis(4400),
        "second call only after the claim expired: {gap:?}"
    );
    assert!(b.stderr().contains("rule=bot result=claim-expired"));
}

#[test]
fn check_summarizes_shared_state_without_its_password_and_refuses_public_hosts() {
    let dir = TempDir::new("shared-check");
    let path = dir.join("weixin-fcgi.toml");
    let run = |shared_state: &str| {
        std::fs::write(&path, config(shared_state, "http://127.0.0.1:9/x", 3000)).expect("write");
        std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run check")
    };
    let o = run("redis://:s3cret@10.1.2.3:6380/2");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("shared_state Redis redis://***@10.1.2.3:6380/2 (retry claims"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
    for (url, why) in [
        (
            "redis://203.0.113.7:6379/0",
            "is not a loopback or private IP address",
        ),
        ("rediss://127.0.0.1:6379/0", "TLS to Redis is not supported"),
        (
            "redis+unix://run/redis.sock",
            "needs an absolute socket path",
        ),
    ] {
        let o = run(url);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{url}");
        assert!(
            err.contains(":1: shared_state: ") && err.contains(why),
            "{url}: {err}"
        );
    }
}

/// The same operations on any store, as a transcript of results.
fn exercise(store: &dyn Store, prefix: &str) -> Vec<String> {
    let k = |name: &str| format!("weixin-fcgi:{prefix}:t:{name}");
    let long = Duration::from_secs(60);
    let binary: Vec<u8> = (0..=255u8).collect();
    let mut out = Vec::new();
    let mut log = |what: &str, r: String| out.push(format!("{what} -> {r}"));
    log(
        "put_new a",
        format!("{:?}", store.put_new(&k("a"), b"1", long)),
    );
    log(
        "put_new a again",
        format!("{:?}", store.put_new(&k("a"), b"2", long)),
    );
    log("get a", format!("{:?}", store.get(&k("a"))));
    log("put a", format!("{:?}", store.put(&k("a"), &binary, long)));
    log("get a", format!("{:?}", store.get(&k("a"))));
    log("remove a", format!("{:?}", store.remove(&k("a"))));
    log("get a", format!("{:?}", store.get(&k("a"))));
    log(
        "remove absent",
        format!("{:?}", store.remove(&k("nothing"))),
    );
    log(
        "push l",
        format!("{:?}", store.push(&k("l"), &[b"x", b"", b"z"], long)),
    );
    log(
        "push l",
        format!("{:?}", store.push(&k("l"), &[&binary], long)),
    );
    log("len l", format!("{:?}", store.list_len(&k("l"))));
    log("get l (a list)", format!("{:?}", store.get(&k("l"))));
    log(
        "put_new l (taken)",
        format!("{:?}", store.put_new(&k("l"), b"s", long)),
    );
    for _ in 0..5 {
        log("pop l", format!("{:?}", store.pop(&k("l"))));
    }
    log("len absent", format!("{:?}", store.list_len(&k("nothing"))));
    log("put s", format!("{:?}", store.put(&k("s"), b"str", long)));
    log("len s (a string)", format!("{:?}", store.list_len(&k("s"))));
    log("pop s (a string)", format!("{:?}", store.pop(&k("s"))));
    log(
        "push s (replaces)",
        format!("{:?}", store.push(&k("s"), &[b"e"], long)),
    );
    log("pop s", format!("{:?}", store.pop(&k("s"))));
    log(
        "put l2 over list",
        format!("{:?}", store.push(&k("l2"), &[b"e"], long)),
    );
    log("put l2", format!("{:?}", store.put(&k("l2"), b"v", long)));
    log("get l2", format!("{:?}", store.get(&k("l2"))));
    let short = Duration::from_millis(300);
    log(
        "put_new e",
        format!("{:?}", store.put_new(&k("e"), b"1", short)),
    );
    log(
        "push f",
        format!("{:?}", store.push(&k("f"), &[b"1"], short)),
    );
    std::thread::sleep(Duration::from_millis(450));
    log("get e (expired)", format!("{:?}", store.get(&k("e"))));
    log("len f (expired)", format!("{:?}", store.list_len(&k("f"))));
    log(
        "put_new e (expired)",
        format!("{:?}", store.put_new(&k("e"), b"2", long)),
    );
    out
}

#[test]
fn redis_store_behaves_like_memory_store() {
    let redis = RedisServer::start();
    let memory = MemoryStore::new(1 << 20);
    let shared = RedisStore::open(&redis.url()).expect("open");
    let want = exercise(&memory, "m");
    let got = exercise(&shared, "r");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());
    // Over a dead Redis the fallback answers the same from memory.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let fallback = FallbackStore::new(
        Arc::new(RedisStore::open(&dead).expect("open")),
        Arc::new(MemoryStore::new(1 << 20)),
        Health::new("Redis (dead)".into()),
    );
    assert_eq!(exercise(&fallback, "f"), want);
    assert!(fallback.degraded());
}

/// Calls of `command` so far (`INFO commandstats`).
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect to redis-server");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn scripts_go_by_their_sha1_and_are_sent_again_after_a_script_flush() {
    let redis = RedisServer::start();
    let memory = MemoryStore::new(1 << 20);
    let shared = RedisStore::open(&redis.url()).expect("open");
    let want = exercise(&memory, "m");
    assert_eq!(exercise(&shared, "r1"), want);
    let (eval, evalsha) = (
        command_calls(&redis, "eval"),
        command_calls(&redis, "evalsha"),
    );
    // Each of the four scripts sent whole once; every other call by SHA-1.
    assert_eq!(eval, 4, "EVAL {eval}, EVALSHA {evalsha}");
    assert!(evalsha > 4 * eval, "EVAL {eval}, EVALSHA {evalsha}");
    // A Redis that forgot the scripts (restarted, SCRIPT FLUSH) gets them again, and every
    // call still answers as before.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut c)
        .expect("SCRIPT FLUSH");
    assert_eq!(exercise(&shared, "r2"), want);
    assert_eq!(command_calls(&redis, "eval"), 8);
}

#[test]
fn redis_store_bounds_what_it_reads_and_writes() {
    let redis = RedisServer::start();
    let store = RedisStore::open(&redis.url()).expect("open");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect");
    let huge = vec![b'x'; MAX_VALUE + 1];
    // Written by something else: read as absent, never allocated here.
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&huge)
        .query(&mut c)
        .expect("SET");
    assert_eq!(store.get("big"), Ok(None));
    let _: () = redis::cmd("RPUSH")
        .arg("bigl")
        .arg(&huge)
        .arg("next")
        .query(&mut c)
        .expect("RPUSH");
    assert_eq!(
        store.pop("bigl"),
        Ok(None),
        "the oversized element is dropped"
    );
    assert_eq!(store.pop("bigl"), Ok(Some(b"next".to_vec())));
    // Not written either.
    let refused = Err(StoreError::TooLarge {
        bytes: MAX_VALUE + 1,
        limit: MAX_VALUE,
    });
    assert_eq!(store.put("k", &huge, Duration::from_secs(5)), refused);
    assert_eq!(
        store.push("l", &[b"ok", &huge], Duration::from_secs(5)),
        refused
    );
    assert_eq!(
        store.list_len("l"),
        Ok(0),
        "nothing of a refused push is kept"
    );
    // Every write carries its TTL.
    store.put("t", b"v", Duration::from_secs(7)).expect("put");
    store
        .push("tl", &[b"v"], Duration::from_secs(7))
        .expect("push");
    for key in ["t", "tl"] {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut c).expect("PTTL");
        assert!(ttl > 6000 && ttl <= 7000, "{key}: {ttl}");
    }
}

/// `total_connections_received` of the server (this query's connection included).
fn connections_received(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect");
    let info: String = redis::cmd("INFO").arg("stats").query(&mut c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

#[test]
fn a_stalled_redis_is_tried_once_per_second_while_memory_answers() {
    let redis = RedisServer::start();
    let store = FallbackStore::new(
        Arc::new(RedisStore::open(&redis.url()).expect("open")),
        Arc::new(MemoryStore::new(1 << 20)),
        Health::new("Redis".into()),
    );
    let key = "weixin-fcgi:t:retry:k";
    assert_eq!(store.put(key, b"in redis", Duration::from_secs(60)), Ok(()));
    let before = connections_received(&redis);
    let pid = redis.pid().expect("running").to_string();
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "kill {sig}");
    };
    kill("-STOP");
    // The first call waits for Redis (200 ms) and falls back; the next ones go straight to
    // memory, without a connection. After the retry interval one call probes again.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(store.get(key), Ok(None), "memory does not have it");
    }
    let first_ten = started.elapsed();
    assert!(store.degraded());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(store.get(key), Ok(None));
    kill("-CONT");
    // Connections made while stalled: the probe's (the pooled one was already counted), plus
    // this query's own.
    assert_eq!(connections_received(&redis) - before, 2);
    assert!(first_ten < Duration::from_millis(1000), "{first_ten:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        store.get(key),
        Ok(Some(b"in redis".to_vec())),
        "back to Redis"
    );
    assert!(!store.degraded());
}

/// One attempt as WeChat makes it, given up after `wait`.
fn attempt_within(port: u16, message: &str, wait: Duration) -> Option<(u16, Option<String>)> {
    wechat_attempt(port, TOKEN, message, wait)
}

#[test]
fn a_late_rule_counts_wechat_attempts_and_calls_the_backend_once_across_instances() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    // Attempts of 600 ms (as WeChat's 5 s, shortened), a backend that needs 2.5 s.
    let config = late_config(&redis, &backend.url("sleep-2500"), 600, "");
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    let msg = message("slow question");
    let wait = Duration::from_millis(600);
    // WeChat's three attempts: A, B, A. Neither of the first two is answered in time; the
    // third, the last by the count they share, gets `pending` before WeChat would give up.
    assert_eq!(attempt_within(nginx_a.port, &msg, wait), None);
    assert_eq!(attempt_within(nginx_b.port, &msg, wait), None);
    let third = attempt_within(nginx_a.port, &msg, wait);
    let Some((200, Some(pending))) = third else {
        panic!("{third:?}\nA:\n{}\nB:\n{}", a.stderr(), b.stderr());
    };
    assert!(pending.contains("正在思考"), "{pending}");
    assert_eq!(
        backend.calls().len(),
        1,
        "B saw A's claim: one backend call\nB:\n{}",
        b.stderr()
    );
    // A, the instance that called the backend, keeps the answer in Redis; the user's next
    // message reaches B, and B gives it.
    assert!(wait_for(Duration::from_secs(5), || a
        .stderr()
        .contains("result=kept")));
    let kept = shared_lists(&redis, "late-kept");
    assert_eq!(kept.len(), 1, "one user's list in Redis: {kept:?}");
    assert!(kept[0].1 > 0, "kept answers expire: {kept:?}");
    let next = attempt_within(nginx_b.port, &message("more"), wait);
    assert_eq!(
        next,
        Some((200, Some("slow: slow question".into()))),
        "B:\n{}",
        b.stderr()
    );
    assert!(
        b.stderr().contains("result=delivered-kept"),
        "{}",
        b.stderr()
    );
    // Taken once: the list is gone, and neither instance has it to give again.
    assert!(shared_lists(&redis, "late-kept").is_empty());
}

/// Lists of one kind (`weixin-fcgi:*:KIND:*`) with their remaining TTL in ms and length.
fn shared_lists(redis: &RedisServer, kind: &str) -> Vec<(String, i64, usize)> {
    shared_entries(redis, kind, |c, k| {
        redis::cmd("LLEN").arg(k).query(c).expect("LLEN")
    })
}

/// A config with one `late = "next_message"` rule to `url`, WeChat's attempts shortened to
/// `attempt_ms`, and `extra` global keys.
fn late_config(redis: &RedisServer, url: &str, attempt_ms: u64, extra: &str) -> String {
    format!(
        "wechat_attempt_ms = {attempt_ms}\nshared_state = \"{}\"\n{extra}\n{}",
        redis.url(),
        config_with_rules(
            TOKEN,
            &format!(
                "[[account.rule]]\nname = \"bot\"\nmsg_type = \"text\"\nreply = {{ type = \
                 \"forward\", url = \"{url}\", late = \"next_message\", late_timeout_ms = 10000 }}\n"
            ),
        )
    )
}

#[test]
fn the_parts_of_a_long_answer_go_out_on_whichever_instance_the_next_messages_reach() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    // Attempts of 2 s: the answer must come within the first 1.5 s to answer the question.
    let config = late_config(&redis, &backend.url("fast"), 2000, "");
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    let wait = Duration::from_millis(2000);
    // 5,000 bytes in parts of at most 2,048 (the hint included): the first answers the
    // question on A at once, the rest are kept in Redis.
    let first = attempt_within(nginx_a.port, &message("long 5000"), wait);
    let Some((200, Some(first))) = first else {
        panic!("{first:?}\nA:\n{}", a.stderr());
    };
    let hint = "\n（回复任意消息查看后续）";
    let mut joined = first.strip_suffix(hint).expect("more follows").to_string();
    assert!(first.len() <= 2048, "{}", first.len());
    // Next messages alternate B, A, B…: each gets the next part, whichever instance it reaches.
    let mut parts = 1;
    for port in [nginx_b.port, nginx_a.port, nginx_b.port, nginx_a.port] {
        let next = attempt_within(port, &message("more"), wait);
        let Some((200, Some(part))) = next else {
            panic!("{next:?}\nA:\n{}\nB:\n{}", a.stderr(), b.stderr());
        };
        assert!(part.len() <= 2048, "{}", part.len());
        parts += 1;
        match part.strip_suffix(hint) {
            Some(part) => joined.push_str(part),
            None => {
                joined.push_str(&part);
                break;
            }
        }
    }
    assert_eq!(
        joined,
        long_text(5000),
        "the parts concatenate to the answer"
    );
    assert_eq!(parts, 3);
    assert!(shared_lists(&redis, "late-kept").is_empty());
}

#[test]
fn kept_answers_taken_on_another_instance_no_longer_count_against_the_bound() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    // One kept part per account: a bound that counted A's parts taken on B would drop the
    // second answer.
    let config = late_config(
        &redis,
        &backend.url("sleep-1500"),
        600,
        "late_max_answers = 1",
    );
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    let wait = Duration::from_millis(600);
    for (n, user) in ["oFirst", "oSecond"].into_iter().enumerate() {
        // Not answered within the attempt: A keeps the answer when it comes.
        let question = format!("question {n}");
        assert_eq!(
            attempt_within(nginx_a.port, &message_from(user, &question), wait),
            None
        );
        assert!(
            wait_for(Duration::from_secs(5), || count(&a.stderr(), "result=kept")
                == n + 1),
            "A:\n{}",
            a.stderr()
        );
        let next = attempt_within(nginx_b.port, &message_from(user, "more"), wait);
        assert_eq!(next, Some((200, Some(format!("slow: {question}")))));
    }
    assert_eq!(count(&a.stderr(), "result=dropped"), 0, "{}", a.stderr());
}

#[test]
fn an_answer_kept_while_redis_is_down_is_given_by_its_instance_after_redis_returns() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let config = late_config(&redis, &backend.url("sleep-1500"), 600, "");
    let a = start_instance(&config);
    let nginx_a = Nginx::start(&a.socket, true);
    let wait = Duration::from_millis(600);
    redis.stop();
    assert_eq!(
        attempt_within(nginx_a.port, &message("asked during the outage"), wait),
        None
    );
    assert!(
        wait_for(Duration::from_secs(5), || a
            .stderr()
            .contains("result=kept")),
        "A:\n{}",
        a.stderr()
    );
    redis.restart();
    // Redis answers again (and has no list): the part kept locally is still given.
    std::thread::sleep(Duration::from_millis(1200));
    let next = attempt_within(nginx_a.port, &message("more"), wait);
    assert_eq!(
        next,
        Some((200, Some("slow: asked during the outage".into()))),
        "A:\n{}",
        a.stderr()
    );
}

#[test]
fn two_instances_share_one_access_token_from_redis() {
    let redis = RedisServer::start();
    // A fake WeChat API: `stable_token` hands out a new token on every call (as WeChat's does
    // with force_refresh), and `user/info` accepts only the latest, so an instance with a token
    // of its own would invalidate the other's.
    let fetches = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&fetches);
    let api = fake_http::Fake::simple(move |path, _body| {
        if path.starts_with("/cgi-bin/stable_token") {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            return (
                200,
                format!(r#"{{"access_token":"TOK{n}","expires_in":7200}}"#),
            );
        }
        let latest = format!("access_token=TOK{}&", seen.load(Ordering::SeqCst));
        if path.starts_with("/cgi-bin/user/info") && path.contains(&latest) {
            (
                200,
                r#"{"subscribe":1,"openid":"oUser","nickname":"Nick"}"#.into(),
            )
        } else {
            (
                200,
                r#"{"errcode":40001,"errmsg":"invalid credential"}"#.into(),
            )
        }
    });
    let backend = Backend::start();
    let config = format!(
        "shared_state = \"{}\"\napi_base = \"http://127.0.0.1:{}\"\ndedup_seconds = 0\n{}",
        redis.url(),
        api.port,
        config_toml(
            "",
            TOKEN,
            "app_id = \"wxapp\"\napp_secret = \"S3cretOfTheApp\"\nuser_info = true",
            &format!(
                "[[account.rule]]\nreply = {{ type = \"forward\", url = \"{}\", \
                 timeout_ms = 3000 }}\n",
                backend.url("gw")
            ),
        )
    );
    let a = start_instance(&config);
    let b = start_instance(&config);
    let (nginx_a, nginx_b) = (Nginx::start(&a.socket, true), Nginx::start(&b.socket, true));
    // Different users (each instance looks each one up): A, B, A, B.
    for (i, port) in [nginx_a.port, nginx_b.port, nginx_a.port, nginx_b.port]
        .into_iter()
        .enumerate()
    {
        let msg = message_from(&format!("oUser{i}"), &format!("m{i}"));
        assert_eq!(
            attempt(port, &msg),
            (200, Some(format!("echo: m{i}"))),
            "A:\n{}\nB:\n{}",
            a.stderr(),
            b.stderr()
        );
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one token for both instances\nA:\n{}\nB:\n{}",
        a.stderr(),
        b.stderr()
    );
    // In Redis, with its expiry; the AppSecret is not.
    let tokens = shared_keys(&redis, "token");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(tokens[0].1 > 0 && tokens[0].1 <= 7_200_000, "{tokens:?}");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_connection().expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
    for k in keys {
        let v: Vec<u8> = redis::cmd("DUMP").arg(&k).query(&mut c).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&v).contains("S3cretOfTheApp") && !k.contains("S3cret"),
            "{k}"
        );
    }
}
