//! Issue 11, finding 6, through a real nginx: an `exec` program that leaves a background child
//! holding stdout (`sh -c 'sleep 20 & echo started'`) is answered as soon as the program exits,
//! with what it wrote; no thread or descriptor of the responder outlives the message; at the
//! deadline the whole process group is killed.

pub mod common;
use common::*;
use std::time::{Duration, Instant};

const TOKEN: &str = "exectoken";

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The reply's Content, or the status and body when there is none.
fn post(nginx: &Nginx, content: &str, id: u64) -> Result<String, String> {
    let body = text_message(content).replace("1234567890123456", &id.to_string());
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        body.as_bytes(),
    );
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    xml_field(&resp.text(), "Content").ok_or_else(|| resp.text())
}

#[test]
fn exec_background_children_neither_delay_nor_leak() {
    let dir = TempDir::new("exec-group");
    let marker = dir.join("survived");
    let rules = format!(
        r#"
[[account.rule]]
name = "background"
content = "bg"
reply = {{ type = "exec", command = ["/bin/sh", "-c", "sleep 20 & echo started"], timeout_ms = 3000, fallback = {{ type = "text", content = "fallback" }} }}

[[account.rule]]
name = "stuck"
content = "stuck"
reply = {{ type = "exec", command = ["/bin/sh", "-c", "(sleep 1; touch {m}) & echo partial; sleep 30"], timeout_ms = 300, fallback = {{ type = "text", content = "timed out" }} }}

[[account.rule]]
name = "plain"
reply = {{ type = "exec", command = ["/bin/echo", "plain"] }}
"#,
        m = marker.display()
    );
    // One forward thread: started by the warm-up, so any thread more is one a message left.
    let r = Responder::start(&format!(
        "forward_slots = 1\n{}",
        config_with_rules(TOKEN, &rules)
    ));
    let nginx = Nginx::start(&r.socket, true);
    let pid = r.pid();

    // Warm up (starts the forward threads), then take the baseline.
    assert_eq!(post(&nginx, "x", 1).as_deref(), Ok("plain"));
    std::thread::sleep(Duration::from_millis(200));
    let (threads, fds) = (
        count(format!("/proc/{pid}/task")),
        count(format!("/proc/{pid}/fd")),
    );

    let mut took = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        assert_eq!(
            post(&nginx, "bg", 10 + i).as_deref(),
            Ok("started"),
            "{}",
            r.stderr()
        );
        took.push(started.elapsed());
    }
    let slowest = took.iter().max().copied().unwrap_or_default();
    let settled = wait_for(Duration::from_secs(2), || {
        count(format!("/proc/{pid}/task")) == threads && count(format!("/proc/{pid}/fd")) <= fds
    });
    let after = (
        count(format!("/proc/{pid}/task")),
        count(format!("/proc/{pid}/fd")),
    );
    println!(
        "exec with a background child: slowest reply {} ms; threads {threads} -> {}, fds {fds} -> {}",
        slowest.as_millis(),
        after.0,
        after.1
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(settled, "threads/fds leaked: {threads}/{fds} -> {after:?}");

    // At the deadline the background child dies with the program.
    let started = Instant::now();
    assert_eq!(
        post(&nginx, "stuck", 20).as_deref(),
        Ok("timed out"),
        "{}",
        r.stderr()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !marker.exists(),
        "a background child outlived the timeout of its program"
    );
    assert!(
        r.stderr()
            .contains("rule=stuck result=fallback reason=\"timeout after 300 ms")
    );
}
