//! `weixin-fcgi check`: the real binary on good configs (summary lines), on each kind of
//! error (exit 1, `FILE:LINE: KEY: MESSAGE` on stderr), and on each warning (fixtures in
//! `tests/fixtures/check/`, described in its README).

pub mod common;
use common::*;
use std::process::{Command, Output, Stdio};

fn check(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("check")
        .args(args)
        .current_dir(repo())
        .env_remove("WEIXIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run weixin-fcgi check")
}

fn fixture(name: &str) -> String {
    format!("tests/fixtures/check/{name}")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 0, the `want` lines printed, and the warnings exactly `warnings` (as substrings, in order).
fn assert_ok(o: &Output, want: &[&str], warnings: &[&str]) {
    let out = stdout(o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{}",
        stderr(o)
    );
    assert!(stderr(o).is_empty(), "nothing on stderr: {}", stderr(o));
    let lines: Vec<&str> = out.lines().collect();
    for w in want {
        assert!(lines.contains(w), "line {w:?} missing from:\n{out}");
    }
    let got: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(": warning: "))
        .collect();
    assert_eq!(got.len(), warnings.len(), "warnings:\n{}", got.join("\n"));
    for (g, w) in got.iter().zip(warnings) {
        assert!(g.contains(w), "warning {g:?} should contain {w:?}");
    }
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.starts_with("OK: ")
            && last.ends_with(&format!(
                "{} warning{}",
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" }
            )),
        "last line: {last}"
    );
}

#[test]
fn embedded_default_config() {
    assert_ok(
        &check(&[]),
        &[
            "config <embedded>",
            "account demo: path /weixin, mode plain, 2 rules",
            "  1. welcome (line 12): msg_type=\"event\" event=\"subscribe\" -> text \"Welcome! Send me any text and I will echo it back.\"",
            "  2. echo (line 18): msg_type=\"text\" -> text \"You said: {Content}\"",
            "OK: <embedded>: 1 account, 2 rules, 0 warnings",
        ],
        &[],
    );
}

#[test]
fn full_example_is_clean_and_summarized_in_match_order() {
    let o = check(&["--config", "examples/full.toml"]);
    assert_ok(
        &o,
        &[
            "config examples/full.toml",
            "listen /run/weixin-fcgi.sock (socket mode 0660; ignored under socket activation)",
            "workers 2, max_conns 256, max_body 65536 bytes, timestamp_window 300 s, io_timeout 5000 ms, text_max_bytes 2048, log_level info, idle_exit 0 s",
            "account shop: path /weixin, mode plain, 10 rules",
            "  1. welcome (line 22): msg_type=\"event\" event=\"subscribe\" -> text \"Welcome, {FromUserName}!\"",
            "  2. menu-news (line 28): msg_type=\"event\" event=\"CLICK\" event_key=\"NEWS\" -> news, 1 article: \"Today\"",
            "  3. help (line 37): content=\"help\" -> text \"Commands: help, price, echo <text>\"",
            "  5. echo (line 47): prefix=\"echo \" -> text \"{Content}\"",
            "  7. image-back (line 57): msg_type=\"image\" -> image media_id=\"{MediaId}\"",
            "  8. agent (line 62): content=\"human\" -> transfer_customer_service",
            "  9. ignore-unsubscribe (line 67): msg_type=\"event\" event=\"unsubscribe\" -> no reply (success)",
            "  10. fallback (line 73): any message -> text \"Sorry, I did not understand. Send help.\"",
            "OK: examples/full.toml: 1 account, 10 rules, 0 warnings",
        ],
        &[],
    );
    // -c works too.
    assert_eq!(check(&["-c", "examples/full.toml"]).status.code(), Some(0));
}

#[test]
fn modes_are_summarized_and_secrets_never_printed() {
    let o = check(&["--config", &fixture("safe-modes.toml")]);
    assert_ok(
        &o,
        &[
            "listen 127.0.0.1:9000 (ignored under socket activation)",
            "account plain: path /weixin/plain, mode plain, 0 rules",
            "account rotating: path /weixin/rotating, mode safe+previous key (plaintext also accepted), app_id wxb11529c136998cb6, 0 rules",
            "account strict: path /weixin/strict, mode safe, encrypted_only, app_id wxb11529c136998cb6, 1 rule",
            "  1. echo (line 27): msg_type=\"text\" -> text \"{Content}\"",
        ],
        &[],
    );
    let out = stdout(&o);
    for secret in [
        "secret-token",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
}

#[test]
fn errors_exit_1_with_file_line_and_key() {
    for (name, want) in [
        (
            "missing-token.toml",
            ":3: account[0].token: missing required key",
        ),
        (
            "unknown-key.toml",
            ":10: account[0].rule[0].contians: unknown key",
        ),
        (
            "bad-template.toml",
            ":8: account[0].rule[0].reply.content: invalid template: unclosed \"{\"",
        ),
        (
            "duplicate-path.toml",
            ":8: account[1].path: path \"/weixin\" is already used by account[0]",
        ),
        ("syntax-error.toml", ":3: invalid TOML"),
    ] {
        let path = fixture(name);
        let o = check(&["--config", &path]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stdout(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(
            err.starts_with(&format!("{path}{want}")),
            "{name}: expected {path}{want}…, got {err}"
        );
        assert!(!stdout(&o).contains("OK"), "{name}: no OK on error");
    }
    let o = check(&["--config", "tests/fixtures/check/does-not-exist.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("tests/fixtures/check/does-not-exist.toml: cannot read"));
}

#[test]
fn usage() {
    let o = check(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("weixin-fcgi check [--quiet] [--config FILE]"));
    for args in [&["--bogus"][..], &["extra"][..], &["--config"][..]] {
        let o = check(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&o).lines().count(), 1);
    }
}

/// `--quiet` (what the systemd unit runs before every start): nothing for a clean file, only the
/// warnings for a file with warnings, the same exit 1 and error line for a broken one.
#[test]
fn quiet_prints_only_errors_and_warnings() {
    let o = check(&["--quiet", "--config", "examples/full.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).is_empty() && stderr(&o).is_empty(), "{o:?}");

    let f = fixture("shadowed.toml");
    let o = check(&["-q", "--config", &f]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).is_empty(), "no summary: {}", stdout(&o));
    let warnings: Vec<String> = stderr(&o).lines().map(str::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with(&format!("{f}:")) && w.contains(": warning: "))
    );

    let f = fixture("unknown-key.toml");
    let o = check(&["--quiet", "--config", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).starts_with(&format!("{f}:10: account[0].rule[0].contians: unknown key")));
}

#[test]
fn warns_about_unreachable_rules() {
    let f = fixture("shadowed.toml");
    assert_ok(
        &check(&["--config", &f]),
        &[],
        &[
            &format!(
                "{f}:15: warning: account shop, rule help: unreachable: rule texts (line 9) comes first, whose conditions are all among this rule's"
            ),
            &format!(
                "{f}:37: warning: account shop, rule click-news: unreachable: rule click (line 32)"
            ),
            &format!(
                "{f}:48: warning: account shop, rule late: unreachable: rule catch-all (line 44) comes first, which has no conditions"
            ),
        ],
    );
}

#[test]
fn warns_about_multi_article_news_to_user_messages() {
    let f = fixture("news-to-messages.toml");
    assert_ok(
        &check(&["--config", &f]),
        &["  2. menu (line 17): content=\"menu\" -> news, 2 articles: \"A\", \"B\""],
        &[&format!(
            "{f}:17: warning: account shop, rule menu: news reply has 2 articles, but WeChat shows only one"
        )],
    );
}

#[test]
fn warns_about_text_over_the_limit() {
    let f = fixture("long-text.toml");
    assert_ok(
        &check(&["--config", &f]),
        &[],
        &[
            &format!(
                "{f}:11: warning: account shop, rule fixed: text reply is 2100 bytes, over text_max_bytes (2048): it will be cut"
            ),
            &format!(
                "{f}:16: warning: account shop, rule with-field: text reply's literal text alone is 2100 bytes"
            ),
        ],
    );
    let f = fixture("long-text-cut.toml");
    assert_ok(
        &check(&["--config", &f]),
        &[],
        &[&format!(
            "{f}:9: warning: account shop, rule mid: text reply is 1500 bytes, over text_max_bytes (1000)"
        )],
    );
    let f = fixture("long-text-over-wechat.toml");
    assert_ok(
        &check(&["--config", &f]),
        &[],
        &[&format!(
            "{f}:9: warning: account shop, rule big: text reply is 3000 bytes, over WeChat's 2048-byte limit (text_max_bytes is 4096)"
        )],
    );
}

#[test]
fn warns_about_placeholders_no_message_has() {
    let f = fixture("unknown-placeholder.toml");
    assert_ok(
        &check(&["--config", &f]),
        &[],
        &[
            &format!(
                "{f}:8: warning: account shop, rule greet: reply.content: placeholder {{Nickname}} names a field no WeChat message has"
            ),
            "placeholder {content} names a field no WeChat message has; it renders empty (field names are case-sensitive: did you mean {Content}?)",
            &format!(
                "{f}:13: warning: account shop, rule scan: reply.articles[0].url: placeholder {{Foo}}"
            ),
        ],
    );
}

#[test]
fn checks_the_config_a_test_writes() {
    // `check` and the server agree: a config the responder starts with passes check.
    let dir = TempDir::new("cli-check");
    let path = dir.join("weixin-fcgi.toml");
    std::fs::write(
        &path,
        config_with_rules(
            "tok",
            "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\nreply = { type = \"text\", content = \"{Content}\" }\n",
        ),
    )
    .expect("write config");
    let o = check(&["--config", path.to_str().expect("utf-8")]);
    assert_ok(&o, &["account test: path /weixin, mode plain, 1 rule"], &[]);
}
