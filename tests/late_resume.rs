//! A late backend call still running when the process stops (beyond its 8 s stop deadline) is
//! saved in the state file and made again by the next process, whose answer reaches the user:
//! real nginx, a real HTTP backend on loopback, SIGTERM as systemd sends it.

pub mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const TOKEN: &str = "resumetoken";

/// A go-wx-gateway style backend: the first call for a message sleeps `first_ms` before it
/// answers, later calls answer at once; answers are `call N: <Content>`.
struct Backend {
    fake: fake_http::Fake,
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn start(first_ms: u64) -> Backend {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let fake = fake_http::Fake::simple(move |_path, body| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                fake_http::sleep(Duration::from_millis(first_ms));
            }
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let content = json["Content"].as_str().unwrap_or("");
            let msg = format!("call {n}: {content}");
            (
                200,
                serde_json::json!({"type": "text", "msg": msg}).to_string(),
            )
        });
        Backend { fake, calls }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn config(state_file: &std::path::Path, backend: &Backend, rule: &str) -> String {
    format!(
        "wechat_attempt_ms = 600\nstate_file = \"{}\"\n{}",
        state_file.display(),
        config_with_rules(
            TOKEN,
            &format!(
                "[[account.rule]]\nname = \"{rule}\"\nmsg_type = \"text\"\nreply = {{ type = \
                 \"forward\", url = \"http://127.0.0.1:{}/gw\", late = \"next_message\", \
                 late_timeout_ms = 30000 }}\n",
                backend.fake.port
            ),
        )
    )
}

fn message(content: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oRes]]>\
         </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{}</MsgId></xml>",
        now(),
        7_700_000_000 + N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One attempt as WeChat makes it, given up after `wait`.
fn attempt(port: u16, message: &str, wait: Duration) -> Option<(u16, Option<String>)> {
    wechat_attempt(port, TOKEN, message, wait)
}

/// Sends a message the backend answers only after 11 s, then stops the process while the call
/// runs; returns the log of the stopped process.
fn stop_during_a_late_call(conf: &str, backend: &Backend) -> String {
    let mut r = Responder::start(conf);
    let nginx = Nginx::start(&r.socket, true);
    let wait = Duration::from_millis(600);
    assert_eq!(attempt(nginx.port, &message("resume me"), wait), None);
    assert!(wait_for(Duration::from_secs(5), || backend.calls() == 1));
    r.term();
    assert!(wait_for(Duration::from_secs(12), || !r.alive()));
    r.stderr()
}

#[test]
fn a_late_call_running_at_stop_is_made_again_by_the_next_process() {
    let backend = Backend::start(11_000);
    let dir = TempDir::new("late-resume");
    let conf = config(&dir.join("late-answers"), &backend, "bot");
    let log = stop_during_a_late_call(&conf, &backend);
    assert!(
        log.contains("stopping with 1 backend call(s) or push(es) unfinished after 8s")
            && log.contains("1 backend call(s) still running saved to"),
        "{log}"
    );
    // The saved call does not carry the AppSecret or the Token.
    let saved = std::fs::read(dir.join("late-answers")).expect("state file");
    assert!(!String::from_utf8_lossy(&saved).contains(TOKEN));

    let r = Responder::start(&conf);
    let nginx = Nginx::start(&r.socket, true);
    assert!(
        wait_for(Duration::from_secs(5), || backend.calls() == 2),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("result=resumed"), "{}", r.stderr());
    assert!(wait_for(Duration::from_secs(5), || r
        .stderr()
        .contains("result=kept")));
    // The user's next message gets the answer of the call made again.
    let next = attempt(nginx.port, &message("hello?"), Duration::from_millis(600));
    assert_eq!(
        next,
        Some((200, Some("call 2: resume me".into()))),
        "{}",
        r.stderr()
    );
    // Made once: after a clean stop, the next start has nothing to resume.
    drop(nginx);
    let mut r = r;
    r.term();
    assert!(wait_for(Duration::from_secs(12), || !r.alive()));
    let again = Responder::start(&conf);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!again.stderr().contains("result=resumed"));
    assert!(
        backend.calls() <= 3,
        "the message itself forwarded: {}",
        backend.calls()
    );
}

#[test]
fn a_saved_call_whose_rule_is_gone_is_dropped_with_a_reason() {
    let backend = Backend::start(11_000);
    let dir = TempDir::new("late-resume-gone");
    let file = dir.join("late-answers");
    let log = stop_during_a_late_call(&config(&file, &backend, "bot"), &backend);
    assert!(log.contains("saved to"), "{log}");
    // The operator renamed the rule meanwhile.
    let r = Responder::start(&config(&file, &backend, "renamed"));
    assert!(
        wait_for(Duration::from_secs(5), || r.stderr().contains(
            "late: a saved backend call is dropped: account \"test\" has no rule \"bot\" with \
             `late` any more"
        )),
        "{}",
        r.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backend.calls(), 1);
}
