//! The status page (`status_path`) through a real nginx with the shipped (commented) location
//! from `nginx/weixin.conf`, and `weixin-fcgi status` on the socket: the counters follow the
//! requests sent, the three formats agree, the OpenMetrics page parses with the reference
//! parser (Python's `prometheus_client`), only 127.0.0.1 may read it, and a reload keeps the
//! counters.

pub mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};

const TOKEN: &str = "statustoken";

fn config(prefix: &str) -> String {
    config_toml(
        "status_path = \"/weixin-status\"",
        TOKEN,
        "",
        &format!(
            "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\n\
             reply = {{ type = \"text\", content = \"{prefix} {{Content}}\" }}\n"
        ),
    )
}

/// The commented `location = /weixin-status` block at the end of nginx/weixin.conf, uncommented
/// as the README tells an administrator to.
fn shipped_status_location() -> String {
    let snippet = std::fs::read_to_string(repo().join("nginx/weixin.conf")).unwrap();
    let start = snippet
        .find("#location = /weixin-status {")
        .expect("nginx/weixin.conf has the commented status location");
    let block: Vec<&str> = snippet[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#'))
        .collect();
    assert_eq!(block.last(), Some(&"}"), "{block:?}");
    block.join("\n")
}

fn json_page(nginx: &Nginx) -> Value {
    let r = nginx.request("GET", "/weixin-status?json", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("JSON status page")
}

/// Parses an OpenMetrics page with prometheus_client and prints `name{labels} value` per sample.
fn parse_openmetrics(page: &str) -> Vec<String> {
    const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s %s{%s} %g" % (family.type, s.name, labels, s.value))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics page does not parse (python3-prometheus-client is installed by \
         tests/run.sh): {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn status_cli(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("status")
        .args(args)
        .output()
        .expect("weixin-fcgi status")
}

#[test]
fn counters_follow_requests_in_three_formats() {
    let _w = watchdog("status", std::time::Duration::from_secs(60));
    let r = Responder::start(&config("You said:"));
    let nginx = Nginx::start_with(&r.socket, true, &shipped_status_location());

    for i in 0..5 {
        assert_eq!(
            nginx_text(nginx.port, TOKEN, &format!("m{i}")).unwrap(),
            format!("You said: m{i}")
        );
    }
    // Refused: a bad signature, and a stale timestamp (a possible replay).
    let bad = nginx.request(
        "POST",
        "/weixin?signature=0000&timestamp=1&nonce=1",
        text_message("x").as_bytes(),
    );
    assert_eq!(bad.status, 403);
    let old = (now() - 3600).to_string();
    let sig = sign(&[TOKEN, &old, "77"]);
    let stale = nginx.request(
        "POST",
        &format!("/weixin?signature={sig}&timestamp={old}&nonce=77"),
        text_message("x").as_bytes(),
    );
    assert_eq!(stale.status, 403);
    // A path no account has, straight on the socket (nginx only routes /weixin).
    let (status, _) = {
        use weixin_fcgi::fastcgi::client;
        let mut c = client::Connection::connect(
            r.socket.to_str().unwrap(),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let params: [(&str, &[u8]); 2] = [("REQUEST_METHOD", b"GET"), ("DOCUMENT_URI", b"/nope")];
        let resp = client::request(&mut c, 1, &params, b"", false).unwrap();
        (resp.status, resp.body)
    };
    assert_eq!(status, 404);

    let v = json_page(&nginx);
    assert_eq!(v["requests"]["test"]["200"], 5, "{v}");
    assert_eq!(v["requests"]["test"]["403"], 2, "{v}");
    assert_eq!(v["requests"]["-"]["404"], 1, "{v}");
    assert_eq!(v["requests_total"], 8);
    assert_eq!(v["replies"]["reply"], 5);
    assert_eq!(v["replies"]["refused"], 3);
    assert_eq!(v["replay_rejects"], 1);
    assert_eq!(v["request_duration"]["count"], 8);
    assert_eq!(v["max_connections"], 256);
    assert_eq!(v["max_connections_reached"], 0);
    assert!(v["open_connections"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        v["resident_memory_bytes"].as_u64().unwrap() > 500_000,
        "{v}"
    );
    let since = v["start_since"].as_u64().unwrap();
    assert!(since < 60, "{v}");
    // The status page's own requests are not counted.
    assert_eq!(json_page(&nginx)["requests_total"], 8);

    let plain = nginx.request("GET", "/weixin-status", b"");
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let text = plain.text();
    assert!(text.contains("\nrequests:           8\n"), "{text}");
    assert!(text.contains("\nrequests test: 200 5, 403 2\n"), "{text}");
    assert!(text.contains("\nreplay rejects:     1\n"), "{text}");

    let om = nginx.request("GET", "/weixin-status?openmetrics", b"");
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        om.headers
    );
    assert!(om.text().ends_with("# EOF\n"));
    let samples = parse_openmetrics(&om.text());
    for want in [
        "counter weixin_fcgi_requests_total{account=test,status=200} 5",
        "counter weixin_fcgi_requests_total{account=-,status=404} 1",
        "counter weixin_fcgi_replies_total{outcome=refused} 3",
        "counter weixin_fcgi_replay_rejects_total{} 1",
        "histogram weixin_fcgi_request_duration_seconds_count{} 8",
        "histogram weixin_fcgi_request_duration_seconds_bucket{le=+Inf} 8",
        "gauge weixin_fcgi_max_connections{} 256",
        "counter weixin_fcgi_max_connections_reached_total{} 0",
        "counter weixin_fcgi_forward_results_total{result=ok} 0",
        "counter weixin_fcgi_retry_table_hits_total{} 0",
        "gauge weixin_fcgi_retry_table_entries{} 0",
    ] {
        assert!(
            samples.iter().any(|s| s == want),
            "{want} not in {samples:#?}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|s| s.starts_with("gauge weixin_fcgi_start_time_seconds{} 1"))
    );

    // POST to the status page: 405 from weixin-fcgi (nginx's limit_except answers 403 first).
    assert_eq!(nginx.request("POST", "/weixin-status", b"").status, 403);

    // `weixin-fcgi status` reads the same page from the socket.
    let sock = r.socket.to_str().unwrap();
    let out = status_cli(&["--to", sock, "--path", "/weixin-status", "--openmetrics"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains("weixin_fcgi_requests_total{account=\"test\",status=\"200\"} 5\n"));
    assert!(page.ends_with("# EOF\n"));
    let config_path = r.config.to_str().unwrap();
    let out = status_cli(&["--config", config_path, "--to", sock, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"]["test"]["200"], 5);

    // A reload keeps the counters of an account that keeps its name.
    std::fs::write(&r.config, config("Reloaded:")).unwrap();
    let pid = r.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_for(std::time::Duration::from_secs(5), || r
        .stderr()
        .contains("SIGHUP: reloaded")));
    assert_eq!(
        nginx_text(nginx.port, TOKEN, "after").unwrap(),
        "Reloaded: after"
    );
    assert_eq!(json_page(&nginx)["requests"]["test"]["200"], 6);
}

#[test]
fn only_loopback_127_0_0_1_reads_it_through_nginx() {
    require_tool("curl");
    let r = Responder::start(&config("You said:"));
    let nginx = Nginx::start_with(&r.socket, false, &shipped_status_location());
    let code = |source: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--interface",
                source,
            ])
            .arg(format!("http://127.0.0.1:{}/weixin-status", nginx.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code("127.0.0.1"), "200");
    // Another loopback address is still not 127.0.0.1: denied by the location.
    assert_eq!(code("127.0.0.2"), "403");
}

#[test]
fn status_cli_and_config_errors() {
    // No status_path in the config: a clear error, exit 1.
    let r = Responder::start(&config_with_rules(TOKEN, ""));
    let out = status_cli(&[
        "--config",
        r.config.to_str().unwrap(),
        "--to",
        r.socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no status path: set status_path"), "{err}");
    // A path the responder does not serve as a status page: its 404, named.
    let out = status_cli(&["--to", r.socket.to_str().unwrap(), "--path", "/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered status 404"));
    // Nothing listening.
    let out = status_cli(&["--to", "/nonexistent/x.sock", "--path", "/s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to /nonexistent/x.sock"));
    // Usage errors.
    assert_eq!(
        status_cli(&["--json", "--openmetrics"]).status.code(),
        Some(2)
    );
    assert_eq!(status_cli(&["extra"]).status.code(), Some(2));

    // status_path must not collide with an account's path.
    let dir = TempDir::new("status-check");
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        config_toml("status_path = \"/weixin\"", TOKEN, "", ""),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: status_path: collides with the path or redirect_path of account[0]"),
        "{err}"
    );
}
