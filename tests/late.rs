//! Late and long answers end to end: WeChat's attempts (simulated: each attempt is dropped
//! after `wechat_attempt_ms`, 5 s like WeChat in the first test) → real nginx → weixin-fcgi →
//! a local backend (20 s for some contents, 5,000-byte answers for others), and a local fake
//! WeChat API (stable_token/token, custom/send; records calls; answers 40001/45015 on demand).

pub mod common;
use common::fake_http::{Fake, Response};
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "latetoken";
const SECRET: &str = "SECRET-never-logged-7f3a";
const PENDING_NEXT: &str = "正在思考，请稍候片刻后发送任意消息获取回答。";
const PENDING_CS: &str = "正在思考，回答稍后会自动发送给您。";
const HINT: &str = "\n（回复任意消息查看后续）";

// ---------------------------------------------------------------------------------------------
// The business backend (go-wx-gateway protocol), by the message's Content:
//   "slow …" answers after 20 s, "wait …" after 4.5 s, "mid …" after 2.5 s:
//   "answer to: <content>";
//   "long" answers LONG_TEXT (5,000 bytes) at once; "more" answers {"type":"none"};
//   anything else "echo: <content>" at once.

struct Backend {
    fake: Fake,
    /// (Content, FromUserName) of every call, in arrival order.
    calls: Arc<Mutex<Vec<(String, String)>>>,
    finished: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start() -> Backend {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (c, f) = (Arc::clone(&calls), Arc::clone(&finished));
        let fake = Fake::start(move |req| {
            let json = req.json_or_null();
            let content = json["Content"].as_str().unwrap_or("").to_string();
            let from = json["FromUserName"].as_str().unwrap_or("").to_string();
            c.lock().unwrap().push((content.clone(), from));
            let answer = if content.starts_with("slow") {
                fake_http::sleep(Duration::from_secs(20));
                serde_json::json!({"type": "text", "msg": format!("answer to: {content}")})
            } else if content.starts_with("wait") {
                fake_http::sleep(Duration::from_millis(4500));
                serde_json::json!({"type": "text", "msg": format!("answer to: {content}")})
            } else if content.starts_with("mid") {
                fake_http::sleep(Duration::from_millis(2500));
                serde_json::json!({"type": "text", "msg": format!("answer to: {content}")})
            } else if content == "long" {
                serde_json::json!({"type": "text", "msg": long_text()})
            } else if content == "more" {
                serde_json::json!({"type": "none"})
            } else {
                serde_json::json!({"type": "text", "msg": format!("echo: {content}")})
            };
            f.lock().unwrap().push(content);
            Response::json(200, answer.to_string())
        });
        Backend {
            fake,
            calls,
            finished,
        }
    }

    fn url(&self) -> String {
        self.fake.url("/wx")
    }

    fn calls_for(&self, content: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(c, _)| c == content).count()
    }

    fn has_finished(&self, content: &str) -> bool {
        self.finished.lock().unwrap().iter().any(|c| c == content)
    }
}

/// 5,000 bytes of mixed Chinese and ASCII text with line and sentence ends.
fn long_text() -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < 5000 {
        i += 1;
        s.push_str(&format!(
            "第{i}段：这是一个很长的回答，用来测试分段。Sentence {i} is here. "
        ));
        if i % 4 == 0 {
            s.push('\n');
        }
    }
    while s.len() > 5000 {
        s.pop();
    }
    assert_eq!(s.len(), 5000);
    s
}

// ---------------------------------------------------------------------------------------------
// The fake WeChat API.

#[derive(Default)]
struct ApiState {
    token_fetches: usize,
    /// (access_token, message JSON) of every custom/send call.
    sent: Vec<(String, serde_json::Value)>,
    /// OpenIDs outside the 48-hour window: custom/send answers 45015.
    out_of_window: Vec<String>,
}

struct FakeWeChat {
    fake: Fake,
    state: Arc<Mutex<ApiState>>,
    /// The next custom/send answers 40001 (token invalid) once.
    invalid_once: Arc<AtomicBool>,
}

impl FakeWeChat {
    fn start() -> FakeWeChat {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let invalid_once = Arc::new(AtomicBool::new(false));
        let (st, inv) = (Arc::clone(&state), Arc::clone(&invalid_once));
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let fake = Fake::start(move |req| {
            let json = req.json_or_null();
            let mut s = st.lock().unwrap();
            if req.target.starts_with("/cgi-bin/stable_token") && req.method == "POST" {
                if json["appid"] != "wxlate" || json["secret"] != SECRET {
                    return Response::json(
                        200,
                        r#"{"errcode":40125,"errmsg":"invalid appsecret"}"#,
                    );
                }
                s.token_fetches += 1;
                let n = SERIAL.fetch_add(1, Ordering::SeqCst);
                let token = format!("ACCESS-TOKEN-{n}-xyz");
                let answer = serde_json::json!({"access_token": token, "expires_in": 7200});
                return Response::json(200, answer.to_string());
            }
            if req.target.starts_with("/cgi-bin/message/custom/send?") {
                let token = req.query_param("access_token").unwrap_or("").to_string();
                if inv.swap(false, Ordering::SeqCst) {
                    return Response::json(
                        200,
                        r#"{"errcode":40001,"errmsg":"invalid credential"}"#,
                    );
                }
                let to = json["touser"].as_str().unwrap_or("").to_string();
                if s.out_of_window.contains(&to) {
                    return Response::json(
                        200,
                        r#"{"errcode":45015,"errmsg":"response out of time limit or subscription is canceled"}"#,
                    );
                }
                s.sent.push((token, json));
                return Response::json(200, r#"{"errcode":0,"errmsg":"ok"}"#);
            }
            Response::json(404, r#"{"errcode":-1}"#)
        });
        FakeWeChat {
            fake,
            state,
            invalid_once,
        }
    }

    fn base(&self) -> String {
        self.fake.url("")
    }

    /// Texts pushed to `user`, in order.
    fn texts_to(&self, user: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.sent
            .iter()
            .filter(|(_, m)| m["touser"] == user)
            .map(|(_, m)| {
                assert_eq!(m["msgtype"], "text", "{m}");
                m["text"]["content"].as_str().unwrap_or("").to_string()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// WeChat's side.

fn text(user: &str, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_late]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now()
    )
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    9_000_000_000 + N.fetch_add(1, Ordering::SeqCst)
}

/// One attempt through nginx; `None` when no answer came within `wait` (WeChat gives up and
/// drops the connection, as it does after 5 s), or when nginx answered an error itself (504:
/// the responder took longer than nginx waits; WeChat retries the same).
fn attempt(port: u16, body: &str, wait: Duration) -> Option<HttpResponse> {
    let query = format!("/weixin?{}", signed_query(TOKEN));
    try_http_within(port, "POST", &query, body.as_bytes(), wait)
        .ok()
        .filter(|resp| resp.status == 200)
}

/// WeChat delivering one message: up to three attempts, each given up after `wait`.
/// Returns the attempt that was answered (1-based) and the reply's Content (`None` for
/// `success`), or `None` when no attempt was answered.
fn wechat(port: u16, body: &str, wait: Duration) -> Option<(usize, Option<String>)> {
    for n in 1..=3 {
        if let Some(resp) = attempt(port, body, wait) {
            let text = resp.text();
            return Some((
                n,
                (text != "success").then(|| xml_field(&text, "Content").unwrap_or_default()),
            ));
        }
    }
    None
}

fn config(attempt_ms: u64, mode: &str, backend: &Backend, top: &str) -> String {
    format!(
        r#"wechat_attempt_ms = {attempt_ms}
{top}

[[account]]
name = "bot"
path = "/weixin"
token = "{TOKEN}"
app_id = "wxlate"
app_secret = "{SECRET}"

[[account.rule]]
name = "bot"
msg_type = "text"
reply = {{ type = "forward", url = "{url}", late = "{mode}", late_timeout_ms = 40000, fallback = {{ type = "text", content = "the backend failed" }} }}
"#,
        url = backend.url()
    )
}

fn assert_no_secrets(log: &str) {
    assert!(!log.contains(SECRET), "the AppSecret is in the log:\n{log}");
    assert!(
        !log.contains("ACCESS-TOKEN-"),
        "an access token is in the log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------

/// WeChat's real timing: three attempts of 5 s. A 20-second backend is called once; the third
/// attempt gets `pending` before WeChat gives up; the next message gets the answer.
#[test]
fn slow_answer_pending_on_the_last_attempt_then_delivered_on_the_next_message() {
    let backend = Backend::start();
    let r = Responder::start(&config(5000, "next_message", &backend, ""));
    let nginx = Nginx::start(&r.socket, true);
    let wait = Duration::from_secs(5);

    let started = Instant::now();
    let got = wechat(
        nginx.port,
        &text("oAlice", "slow question", next_id()),
        wait,
    );
    let elapsed = started.elapsed();
    assert_eq!(
        got,
        Some((3, Some(PENDING_NEXT.to_string()))),
        "the third attempt gets pending; log:\n{}",
        r.stderr()
    );
    // Attempts 1 and 2 went unanswered for their 5 s each; the third was answered within its
    // 5 s (else `attempt` would have given up on it): 0.5 s before WeChat would have.
    assert!(elapsed >= Duration::from_millis(14_000), "{elapsed:?}");
    assert_eq!(
        backend.calls_for("slow question"),
        1,
        "the backend is called once"
    );

    // The answer comes at 20 s and is kept for Alice.
    assert!(wait_for(Duration::from_secs(10), || backend
        .has_finished("slow question")));
    assert!(wait_for(Duration::from_secs(2), || r
        .stderr()
        .contains("result=kept")));

    // Alice's next message is answered with it; her message itself is forwarded as usual
    // and its answer kept for the message after.
    let got = wechat(nginx.port, &text("oAlice", "hi", next_id()), wait);
    assert_eq!(got, Some((1, Some("answer to: slow question".to_string()))));
    assert!(wait_for(Duration::from_secs(2), || backend.calls_for("hi") == 1));
    assert!(wait_for(Duration::from_secs(2), || backend.has_finished("hi")));
    let got = wechat(nginx.port, &text("oAlice", "more", next_id()), wait);
    assert_eq!(got, Some((1, Some("echo: hi".to_string()))));
    // "more" reached the backend too, which answered "none": nothing more is kept, so the next
    // message waits for its own answer.
    assert!(wait_for(Duration::from_secs(2), || backend.has_finished("more")));
    let got = wechat(nginx.port, &text("oAlice", "how are you", next_id()), wait);
    assert_eq!(got, Some((1, Some("echo: how are you".to_string()))));
    for c in ["slow question", "hi", "more", "how are you"] {
        assert_eq!(backend.calls_for(c), 1, "{c}");
    }
    assert_no_secrets(&r.stderr());
}

/// A 5,000-byte answer: the reply is the first part with the hint, each next message gets the
/// next part; every part ≤ 2048 bytes; the parts without hints are exactly the answer.
#[test]
fn long_answer_arrives_in_parts_on_the_next_messages() {
    let backend = Backend::start();
    let r = Responder::start(&config(1000, "next_message", &backend, ""));
    let nginx = Nginx::start(&r.socket, true);
    let wait = Duration::from_secs(1);

    let mut parts = Vec::new();
    let first = wechat(nginx.port, &text("oBob", "long", next_id()), wait);
    let Some((1, Some(content))) = first else {
        panic!("{first:?}\n{}", r.stderr());
    };
    parts.push(content);
    for _ in 0..10 {
        if !parts.last().unwrap().ends_with(HINT) {
            break;
        }
        let got = wechat(nginx.port, &text("oBob", "more", next_id()), wait);
        let Some((1, Some(content))) = got else {
            panic!("{got:?}\n{}", r.stderr());
        };
        parts.push(content);
    }
    assert!(parts.len() >= 3, "{} parts", parts.len());
    for p in &parts {
        assert!(p.len() <= 2048, "part of {} bytes", p.len());
    }
    let joined: String = parts
        .iter()
        .map(|p| p.strip_suffix(HINT).unwrap_or(p))
        .collect();
    assert_eq!(joined, long_text(), "nothing lost or repeated");
    assert!(!parts.last().unwrap().ends_with(HINT));
    // Every "more" reached the backend (answered "none"); with nothing kept any more, the next
    // one gets its own answer: none, i.e. `success`.
    assert!(wait_for(Duration::from_secs(2), || backend
        .calls_for("more")
        == parts.len() - 1));
    assert!(wait_for(Duration::from_secs(2), || backend
        .finished
        .lock()
        .unwrap()
        .len()
        == parts.len()));
    let got = wechat(nginx.port, &text("oBob", "more", next_id()), wait);
    assert_eq!(got, Some((1, None)));
    assert_eq!(backend.calls_for("long"), 1);
}

/// `customer_service`: answers after WeChat's attempts are pushed to the right OpenID, a long
/// one as consecutive messages; one token fetch serves them all; 45015 falls back to
/// `next_message` with the reason in the log; 40001 refreshes the token once.
#[test]
fn customer_service_pushes_answers_with_one_token_and_falls_back_on_45015() {
    let backend = Backend::start();
    let api = FakeWeChat::start();
    let top = format!("api_base = \"{}\"", api.base());
    let r = Responder::start(&config(600, "customer_service", &backend, &top));
    let nginx = Nginx::start(&r.socket, true);
    let wait = Duration::from_millis(600);
    api.state
        .lock()
        .unwrap()
        .out_of_window
        .push("oDave".to_string());

    // Three users ask something that takes 2.5 s, at once; WeChat's three attempts (1.8 s)
    // end with pending.
    let users = ["oAnn", "oCarl", "oDave"];
    let handles: Vec<_> = users
        .iter()
        .map(|u| {
            let (port, body) = (nginx.port, text(u, &format!("mid {u}"), next_id()));
            std::thread::spawn(move || wechat(port, &body, wait))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some((3, Some(PENDING_CS.to_string()))));
    }
    // A long answer comes at once: part 1 is the reply, the rest are pushed in order.
    let got = wechat(nginx.port, &text("oEve", "long", next_id()), wait);
    let Some((1, Some(first))) = got else {
        panic!("{got:?}\n{}", r.stderr());
    };
    assert!(wait_for(Duration::from_secs(10), || {
        ["oAnn", "oCarl"]
            .iter()
            .all(|u| !api.texts_to(u).is_empty())
            && r.stderr().contains("45015")
    }));
    assert!(
        wait_for(Duration::from_secs(5), || {
            let mut all = first.clone();
            all.extend(api.texts_to("oEve"));
            all == long_text()
        }),
        "{}",
        r.stderr()
    );
    for p in api.texts_to("oEve").iter().chain([&first]) {
        assert!(p.len() <= 2048);
    }
    assert_eq!(api.texts_to("oAnn"), ["answer to: mid oAnn"]);
    assert_eq!(api.texts_to("oCarl"), ["answer to: mid oCarl"]);
    assert!(api.texts_to("oDave").is_empty());
    assert_eq!(
        api.state.lock().unwrap().token_fetches,
        1,
        "one token for every push"
    );
    for u in users {
        assert_eq!(backend.calls_for(&format!("mid {u}")), 1);
    }
    // Dave is outside the 48-hour window: his answer was kept, the log says why, and his next
    // message gets it.
    let log = r.stderr();
    assert!(
        log.contains("result=kept reason=\"customer-service message failed: errcode 45015"),
        "{log}"
    );
    let got = wechat(nginx.port, &text("oDave", "hello", next_id()), wait);
    assert_eq!(got, Some((1, Some("answer to: mid oDave".to_string()))));

    // An invalid token (40001) is refreshed once and the push repeated.
    api.invalid_once.store(true, Ordering::SeqCst);
    assert_eq!(
        wechat(nginx.port, &text("oAnn", "mid again", next_id()), wait),
        Some((3, Some(PENDING_CS.to_string())))
    );
    assert!(wait_for(Duration::from_secs(10), || api
        .texts_to("oAnn")
        .len()
        == 2));
    assert_eq!(api.texts_to("oAnn")[1], "answer to: mid again");
    assert_eq!(api.state.lock().unwrap().token_fetches, 2);
    let tokens: Vec<String> = api
        .state
        .lock()
        .unwrap()
        .sent
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        tokens.iter().all(|t| t.starts_with("ACCESS-TOKEN-")),
        "{tokens:?}"
    );
    assert_no_secrets(&r.stderr());
}

/// A backend, a temp dir with the state file, and a `next_message` config that uses it.
fn with_state_file(tag: &str) -> (Backend, TempDir, std::path::PathBuf, String) {
    let backend = Backend::start();
    let state = TempDir::new(tag);
    let file = state.join("late-answers");
    let top = format!("state_file = \"{}\"", file.display());
    let conf = config(600, "next_message", &backend, &top);
    (backend, state, file, conf)
}

/// A new process on `conf`: `user`'s next message gets `answer` at its first attempt.
fn next_process_delivers(conf: &str, user: &str, answer: &str) -> Responder {
    let r = Responder::start(conf);
    let nginx = Nginx::start(&r.socket, true);
    let got = wechat(
        nginx.port,
        &text(user, "back", next_id()),
        Duration::from_millis(600),
    );
    assert_eq!(got, Some((1, Some(answer.to_string()))), "{}", r.stderr());
    r
}

/// Kept answers are in the state file and survive a restart of the responder.
#[test]
fn kept_answers_survive_a_restart() {
    let (_backend, _state, file, conf) = with_state_file("late-state");
    let wait = Duration::from_millis(600);
    {
        let mut r = Responder::start(&conf);
        let nginx = Nginx::start(&r.socket, true);
        let got = wechat(nginx.port, &text("oFay", "mid kept", next_id()), wait);
        assert_eq!(got, Some((3, Some(PENDING_NEXT.to_string()))));
        assert!(wait_for(Duration::from_secs(10), || r
            .stderr()
            .contains("result=kept")));
        // Written within a second of the change, readable by the service only.
        assert!(wait_for(Duration::from_secs(3), || file.exists()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Killed, not stopped: what was saved within the second must be enough.
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    let r = next_process_delivers(&conf, "oFay", "answer to: mid kept");
    assert!(r.stderr().contains("kept answer list(s) read from"));
}

/// Stopped (SIGTERM, as systemd stops and restarts the service) while a late answer is still
/// being computed, the process waits for it within its stop deadline, keeps and saves it; the
/// next process delivers it.
#[test]
fn a_stop_waits_for_a_late_answer_being_computed_and_the_next_process_delivers_it() {
    let (_backend, _state, _file, conf) = with_state_file("late-stop");
    let wait = Duration::from_millis(600);
    {
        let mut r = Responder::start(&conf);
        let nginx = Nginx::start(&r.socket, true);
        // Three attempts of 600 ms: `pending` at 1.8 s; the answer comes at 4.5 s.
        let got = wechat(nginx.port, &text("oIda", "wait for me", next_id()), wait);
        assert_eq!(got, Some((3, Some(PENDING_NEXT.to_string()))));
        assert!(!r.stderr().contains("result=kept"));
        r.term();
        let exited = wait_for(Duration::from_secs(10), || !r.alive());
        let log = r.stderr();
        assert!(exited, "{log}");
        assert!(
            log.contains("stopping: waiting up to") && log.contains("1 late answer(s)"),
            "{log}"
        );
        let kept = log.find("result=kept").expect("kept before exiting");
        let stopped = log.find("stopped after").expect("a clean stop");
        assert!(kept < stopped, "{log}");
        assert!(!log.contains("unfinished"), "{log}");
    }
    next_process_delivers(&conf, "oIda", "answer to: wait for me");
}

/// Without a state file, a late answer that does not come within the stop deadline is named in
/// the log as lost (with one, it is made again at the next start: tests/late_resume.rs).
#[test]
fn a_stop_gives_up_on_a_late_answer_after_its_deadline_and_says_so() {
    let backend = Backend::start();
    let conf = config(600, "next_message", &backend, "");
    let wait = Duration::from_millis(600);
    let mut r = Responder::start(&conf);
    let nginx = Nginx::start(&r.socket, true);
    // "slow …" takes 20 s, longer than the 8 s the stop waits.
    let got = wechat(nginx.port, &text("oJo", "slow stop", next_id()), wait);
    assert_eq!(got, Some((3, Some(PENDING_NEXT.to_string()))));
    let stopping = Instant::now();
    r.term();
    assert!(wait_for(Duration::from_secs(12), || !r.alive()));
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(10),
        "within the unit's TimeoutStopSec=10s: {took:?}"
    );
    let log = r.stderr();
    assert!(
        log.contains("stopping with 1 backend call(s) or push(es) unfinished after 8s")
            && log.contains("late: 1 backend call(s) still running are lost"),
        "without a state file nothing is kept: {log}"
    );
}

/// With `idle_exit`, a process whose only work is a late answer still being computed does not
/// exit before the answer is kept and saved; the next process (socket activation) delivers it.
#[test]
fn idle_exit_waits_for_the_late_answer_and_the_next_process_delivers_it() {
    let _w = watchdog("late_idle_exit", Duration::from_secs(90));
    let backend = Backend::start();
    let dir = TempDir::new("late-idle");
    let held = HeldSocket::bind(&dir);
    let file = dir.join("late-answers");
    let top = format!("idle_exit = 1\nstate_file = \"{}\"", file.display());
    let config = dir.join("c.toml");
    std::fs::write(&config, self::config(600, "next_message", &backend, &top)).unwrap();
    let nginx = Nginx::start(&held.path, false);
    let wait = Duration::from_millis(600);

    let mut p = spawn_on(&held, &config, &dir.join("p0.log"));
    let got = wechat(nginx.port, &text("oGil", "wait idle", next_id()), wait);
    assert_eq!(
        got,
        Some((3, Some(PENDING_NEXT.to_string()))),
        "{}",
        p.stderr()
    );
    // The last waiting request is let go at 2.2 s, so the process is idle for a second at
    // 3.2 s; the answer only comes at 4.5 s.
    let st = p
        .wait_exit(Duration::from_secs(15))
        .expect("exits when idle");
    assert!(st.success(), "{st:?}\n{}", p.stderr());
    let log = p.stderr();
    let kept = log
        .find("result=kept")
        .expect("the answer was kept before exiting");
    let exit = log.find("idle for 1s: exiting").expect("idle exit");
    assert!(kept < exit, "{log}");
    assert!(file.exists());

    let port = nginx.port;
    let body = text("oGil", "hello again", next_id());
    let client = std::thread::spawn(move || wechat(port, &body, Duration::from_secs(5)));
    assert!(
        held.pending(Duration::from_secs(10)),
        "no pending connection"
    );
    let mut next = spawn_on(&held, &config, &dir.join("p1.log"));
    assert_eq!(
        client.join().unwrap(),
        Some((1, Some("answer to: wait idle".to_string()))),
        "{}",
        next.stderr()
    );
    assert!(next.wait_exit(Duration::from_secs(15)).is_some());
}

/// `exec` rules are late-capable too: a program slower than WeChat's attempts.
#[test]
fn slow_exec_program_answers_late() {
    let r = Responder::start(&format!(
        r#"wechat_attempt_ms = 600

[[account]]
name = "bot"
path = "/weixin"
token = "{TOKEN}"

[[account.rule]]
name = "script"
msg_type = "text"
reply = {{ type = "exec", command = ["/bin/sh", "-c", "sleep 2; echo \"done: $WX_Content\""], late = "next_message", late_timeout_ms = 10000 }}
"#
    ));
    let nginx = Nginx::start(&r.socket, true);
    let wait = Duration::from_millis(600);
    let got = wechat(nginx.port, &text("oHal", "job", next_id()), wait);
    assert_eq!(
        got,
        Some((3, Some(PENDING_NEXT.to_string()))),
        "{}",
        r.stderr()
    );
    assert!(wait_for(Duration::from_secs(5), || r
        .stderr()
        .contains("result=kept")));
    let got = wechat(nginx.port, &text("oHal", "next", next_id()), wait);
    assert_eq!(got, Some((1, Some("done: job".to_string()))));
}
