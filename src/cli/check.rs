//! `weixin-fcgi check`: validate a config without serving, print what it does, and warn about
//! rules that cannot work as written.
//!
//! Errors are the loader's own (`FILE:LINE: KEY: MESSAGE`, exit 1). Warnings (exit 0) are only
//! raised when they are certain, never on a guess:
//! - a rule is unreachable: an earlier rule's conditions are a subset of its own (each one also
//!   present in the later rule with the same value), so the earlier rule always wins;
//! - a news reply lists more than one article although the rule can answer a user message
//!   (WeChat shows one article in a passive reply to a message; only events get up to 8);
//! - a text template whose literal text alone exceeds `text_max_bytes` (cut when sent) or
//!   WeChat's 2048-byte limit;
//! - a `{Placeholder}` naming a field that no WeChat message or event has (it renders empty).
//!
//! # Security
//! Tokens and AES keys are never printed.

use super::{Args, usage_error};
use crate::config::{Account, Config, DEFAULT_DEMO_TOKEN};
use crate::rules::{Action, Conditions, ReplyTemplate, Rule, Template};
use crate::wechat::reply::DEFAULT_TEXT_MAX_BYTES;
use std::fmt::Write as _;
use std::process::ExitCode;

const HELP: &str = "\
weixin-fcgi check — validate a config without serving; print a summary and warnings

USAGE:
    weixin-fcgi check [--quiet] [--config FILE]

Without --config, checks the embedded demo config (as the server runs it with no --config).
Prints the listener, the accounts with their paths and modes, and the rules in match order with
what they reply; then warnings (unreachable rules, multi-article news replies to messages, text
that can exceed the size limit, placeholders no message has). Secrets are never printed.

OPTIONS:
    -c, --config FILE   the config to check
    -q, --quiet         print only errors and warnings (nothing for a clean file): the mode
                        the systemd unit uses before every start and reload
    -h, --help          this text

EXIT STATUS:
    0 valid (warnings allowed); 1 invalid, with FILE:LINE: KEY: MESSAGE on stderr; 2 usage error
";

/// Every field name a WeChat message or event carries (PROTOCOL.md §3), including nested ones.
pub const KNOWN_FIELDS: &[&str] = &[
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "MsgId",
    "MsgDataId",
    "Idx",
    "Content",
    "bizmsgmenuid",
    "PicUrl",
    "MediaId",
    "Format",
    "Recognition",
    "ThumbMediaId",
    "Location_X",
    "Location_Y",
    "Scale",
    "Label",
    "Title",
    "Description",
    "Url",
    "Event",
    "EventKey",
    "Ticket",
    "Latitude",
    "Longitude",
    "Precision",
    "MenuId",
    "ScanCodeInfo",
    "ScanType",
    "ScanResult",
    "SendPicsInfo",
    "Count",
    "PicList",
    "item",
    "PicMd5Sum",
    "SendLocationInfo",
    "Poiname",
    "Status",
    "TotalCount",
    "FilterCount",
    "SentCount",
    "ErrorCount",
    "MsgID",
];

/// Entry point: `args` are the words after `check`.
pub fn main(args: &[String]) -> ExitCode {
    let parsed = match Args::parse(
        args,
        &["-c", "--config"],
        &["-h", "--help", "-q", "--quiet"],
    ) {
        Ok(a) => a,
        Err(e) => return usage_error("check", &e),
    };
    if parsed.has("-h") || parsed.has("--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if let Some(extra) = parsed.positional.first() {
        return usage_error(
            "check",
            &format!("unexpected argument {extra:?} (see --help)"),
        );
    }
    let config = match parsed.value("--config").or(parsed.value("-c")) {
        Some(path) => match Config::load(std::path::Path::new(path)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::embedded(DEFAULT_DEMO_TOKEN),
    };
    let quiet = parsed.has("-q") || parsed.has("--quiet");
    let (summary, warnings) = report(&config);
    if quiet {
        // Warnings still go out (to stderr, so the journal tags them): they are few and each
        // names a line to fix.
        for w in &warnings {
            eprintln!("{w}");
        }
        return ExitCode::SUCCESS;
    }
    print!("{summary}");
    for w in &warnings {
        println!("{w}");
    }
    let rules: usize = config.accounts.iter().map(|a| a.rules.len()).sum();
    println!(
        "OK: {}: {} account{}, {} rule{}, {} warning{}",
        config.origin,
        config.accounts.len(),
        plural(config.accounts.len()),
        rules,
        plural(rules),
        warnings.len(),
        plural(warnings.len())
    );
    ExitCode::SUCCESS
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The summary text and the warnings (`FILE:LINE: warning: …`) for a loaded config.
pub fn report(config: &Config) -> (String, Vec<String>) {
    let mut out = String::new();
    let _ = writeln!(out, "config {}", config.origin);
    match &config.listen {
        Some(l) if l.starts_with("unix:") || l.contains('/') => {
            let _ = writeln!(
                out,
                "listen {l} (socket mode {:04o}; ignored under socket activation)",
                config.socket_mode
            );
        }
        Some(l) => {
            let _ = writeln!(out, "listen {l} (ignored under socket activation)");
        }
        None => {
            let _ = writeln!(
                out,
                "listen not set (--listen, socket activation, or $XDG_RUNTIME_DIR/weixin-fcgi.sock)"
            );
        }
    }
    let _ = writeln!(
        out,
        "workers {}, max_conns {}, max_body {} bytes, timestamp_window {} s, io_timeout {} ms, \
         text_max_bytes {}, log_level {}, idle_exit {} s",
        config.workers,
        config.max_conns,
        config.max_body,
        config.timestamp_window,
        config.io_timeout.as_millis(),
        config.text_max_bytes,
        format!("{:?}", config.log_level).to_lowercase(),
        config.idle_exit
    );
    let mut warnings = Vec::new();
    for account in &config.accounts {
        let _ = writeln!(
            out,
            "account {}: path {}, mode {}, {} rule{}",
            account.name,
            account.path,
            mode(account),
            account.rules.len(),
            plural(account.rules.len())
        );
        for (i, rule) in account.rules.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. {} (line {}): {} -> {}",
                i + 1,
                rule.name,
                rule.line,
                describe_conditions(&rule.conditions),
                describe_action(&rule.action)
            );
        }
        for w in rule_warnings(config, account) {
            warnings.push(w);
        }
    }
    (out, warnings)
}

fn mode(account: &Account) -> String {
    let Some(_) = &account.aes_key else {
        return "plain".to_string();
    };
    let mut m = "safe".to_string();
    if account.previous_aes_key.is_some() {
        m.push_str("+previous key");
    }
    if account.encrypted_only {
        m.push_str(", encrypted_only");
    } else {
        m.push_str(" (plaintext also accepted)");
    }
    if let Some(app_id) = &account.app_id {
        let _ = write!(m, ", app_id {app_id}");
    }
    m
}

fn describe_conditions(c: &Conditions) -> String {
    let mut parts = Vec::new();
    let named = [
        ("msg_type", &c.msg_type),
        ("event", &c.event),
        ("event_key", &c.event_key),
        ("content", &c.content),
        ("contains", &c.contains),
        ("prefix", &c.prefix),
    ];
    for (name, value) in named {
        if let Some(v) = value {
            parts.push(format!("{name}={v:?}"));
        }
    }
    for (name, v) in &c.fields {
        parts.push(format!("{name}={v:?}"));
    }
    if parts.is_empty() {
        "any message".to_string()
    } else {
        parts.join(" ")
    }
}

/// A template for display: quoted, cut after 60 characters.
fn quote(t: &Template) -> String {
    let s = t.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn describe_action(action: &Action) -> String {
    let reply = match action {
        Action::NoReply => return "no reply (success)".to_string(),
        Action::Reply(r) => r,
        Action::Forward(f) => {
            let target = match &f.target {
                crate::rules::Target::Http { url } => format!("forward to {url}"),
                crate::rules::Target::Exec { command, .. } => {
                    format!("exec {}", command.first().map(String::as_str).unwrap_or(""))
                }
            };
            let fallback = match &f.fallback {
                Some(r) => describe_action(&Action::Reply(r.clone())),
                None => "no reply (success)".to_string(),
            };
            if let Some(late) = &f.late {
                let pending = describe_action(&Action::Reply(late.pending.clone()));
                return format!(
                    "{target}, late {} (up to {} ms; WeChat's last attempt gets {pending}), on failure {fallback}",
                    late.mode.name(),
                    f.timeout.as_millis()
                );
            }
            return format!(
                "{target} within {} ms, else {fallback}",
                f.timeout.as_millis()
            );
        }
    };
    match reply {
        ReplyTemplate::Text { content } => format!("text {}", quote(content)),
        ReplyTemplate::Image { media_id } => format!("image media_id={}", quote(media_id)),
        ReplyTemplate::Voice { media_id } => format!("voice media_id={}", quote(media_id)),
        ReplyTemplate::Video {
            media_id, title, ..
        } => format!("video media_id={} title={}", quote(media_id), quote(title)),
        ReplyTemplate::Music { title, .. } => format!("music title={}", quote(title)),
        ReplyTemplate::News { articles } => {
            let titles: Vec<String> = articles.iter().map(|a| quote(&a.title)).collect();
            format!(
                "news, {} article{}: {}",
                articles.len(),
                plural(articles.len()),
                titles.join(", ")
            )
        }
        ReplyTemplate::TransferCustomerService { kf_account } => match kf_account {
            Some(k) => format!("transfer_customer_service kf_account={}", quote(k)),
            None => "transfer_customer_service".to_string(),
        },
    }
}

/// Every template of a reply, with the key that holds it.
fn templates(reply: &ReplyTemplate) -> Vec<(String, &Template)> {
    let mut out: Vec<(String, &Template)> = Vec::new();
    match reply {
        ReplyTemplate::Text { content } => out.push(("content".into(), content)),
        ReplyTemplate::Image { media_id } | ReplyTemplate::Voice { media_id } => {
            out.push(("media_id".into(), media_id))
        }
        ReplyTemplate::Video {
            media_id,
            title,
            description,
        } => {
            out.push(("media_id".into(), media_id));
            out.push(("title".into(), title));
            out.push(("description".into(), description));
        }
        ReplyTemplate::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => {
            out.push(("title".into(), title));
            out.push(("description".into(), description));
            out.push(("music_url".into(), music_url));
            out.push(("hq_music_url".into(), hq_music_url));
            out.push(("thumb_media_id".into(), thumb_media_id));
        }
        ReplyTemplate::News { articles } => {
            for (i, a) in articles.iter().enumerate() {
                out.push((format!("articles[{i}].title"), &a.title));
                out.push((format!("articles[{i}].description"), &a.description));
                out.push((format!("articles[{i}].pic_url"), &a.pic_url));
                out.push((format!("articles[{i}].url"), &a.url));
            }
        }
        ReplyTemplate::TransferCustomerService { kf_account } => {
            if let Some(k) = kf_account {
                out.push(("kf_account".into(), k));
            }
        }
    }
    out
}

/// True when every condition of `earlier` is also in `later` with the same value, so any
/// message `later` matches, `earlier` matches first. (Deliberately no cleverer implication,
/// such as `contains` from `content`: a warning must never be wrong.)
pub fn shadows(earlier: &Conditions, later: &Conditions) -> bool {
    fn same(a: &Option<String>, b: &Option<String>) -> bool {
        match a {
            None => true,
            Some(a) => b.as_ref() == Some(a),
        }
    }
    same(&earlier.msg_type, &later.msg_type)
        && match &earlier.event {
            None => true,
            // Event matching is case-insensitive.
            Some(a) => later
                .event
                .as_ref()
                .is_some_and(|b| b.eq_ignore_ascii_case(a)),
        }
        && same(&earlier.event_key, &later.event_key)
        && same(&earlier.content, &later.content)
        && same(&earlier.contains, &later.contains)
        && same(&earlier.prefix, &later.prefix)
        && earlier.fields.iter().all(|f| later.fields.contains(f))
}

/// True when the rule can only match events (so news may carry up to 8 articles).
fn events_only(c: &Conditions) -> bool {
    c.msg_type.as_deref() == Some("event")
        || c.event.is_some()
        || c.event_key.is_some()
        || c.fields
            .iter()
            .any(|(n, v)| (n == "MsgType" && v == "event") || n == "Event" || n == "EventKey")
}

fn rule_warnings(config: &Config, account: &Account) -> Vec<String> {
    let file = &config.origin;
    let mut out = Vec::new();
    let warn = |out: &mut Vec<String>, rule: &Rule, msg: String| {
        out.push(format!(
            "{file}:{}: warning: account {}, rule {}: {msg}",
            rule.line, account.name, rule.name
        ));
    };
    for (j, rule) in account.rules.iter().enumerate() {
        if let Some(earlier) = account.rules[..j]
            .iter()
            .find(|e| shadows(&e.conditions, &rule.conditions))
        {
            let why = if shadows(&earlier.conditions, &Conditions::default()) {
                "which has no conditions and matches every message"
            } else {
                "whose conditions are all among this rule's"
            };
            warn(
                &mut out,
                rule,
                format!(
                    "unreachable: rule {} (line {}) comes first, {why}",
                    earlier.name, earlier.line
                ),
            );
        }
        let Action::Reply(reply) = &rule.action else {
            continue;
        };
        if let ReplyTemplate::News { articles } = reply {
            if articles.len() > 1 && !events_only(&rule.conditions) {
                warn(
                    &mut out,
                    rule,
                    format!(
                        "news reply has {} articles, but WeChat shows only one in a reply to a \
                         user message (only the first is sent; events get up to 8)",
                        articles.len()
                    ),
                );
            }
        }
        if let ReplyTemplate::Text { content } = reply {
            let (len, what) = match content.fixed_len() {
                Some(n) => (n, "text reply is"),
                None => (content.literal_len(), "text reply's literal text alone is"),
            };
            if len > config.text_max_bytes {
                warn(
                    &mut out,
                    rule,
                    format!(
                        "{what} {len} bytes, over text_max_bytes ({}): it will be cut",
                        config.text_max_bytes
                    ),
                );
            } else if len > DEFAULT_TEXT_MAX_BYTES {
                warn(
                    &mut out,
                    rule,
                    format!(
                        "{what} {len} bytes, over WeChat's {DEFAULT_TEXT_MAX_BYTES}-byte limit \
                         (text_max_bytes is {})",
                        config.text_max_bytes
                    ),
                );
            }
        }
        for (key, template) in templates(reply) {
            for field in template.fields() {
                if KNOWN_FIELDS.contains(&field) {
                    continue;
                }
                let hint = KNOWN_FIELDS
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(field))
                    .map(|k| format!(" (field names are case-sensitive: did you mean {{{k}}}?)"))
                    .unwrap_or_default();
                warn(
                    &mut out,
                    rule,
                    format!(
                        "reply.{key}: placeholder {{{field}}} names a field no WeChat message has; \
                         it renders empty{hint}"
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(f: impl FnOnce(&mut Conditions)) -> Conditions {
        let mut c = Conditions::default();
        f(&mut c);
        c
    }

    #[test]
    fn shadowing_is_subset_of_conditions() {
        let any = Conditions::default();
        let text = c(|c| c.msg_type = Some("text".into()));
        let help = c(|c| {
            c.msg_type = Some("text".into());
            c.content = Some("help".into());
        });
        let click = c(|c| c.event = Some("click".into()));
        let click_k = c(|c| {
            c.event = Some("CLICK".into());
            c.event_key = Some("K".into());
        });
        let contains = c(|c| c.contains = Some("help".into()));
        let cases = [
            (&any, &text, true),
            (&any, &any, true),
            (&text, &help, true),
            (&help, &text, false),
            (&click, &click_k, true),
            (&click_k, &click, false),
            (&text, &click, false),
            // `content = "help"` implies `contains = "help"`, but check stays literal.
            (&contains, &help, false),
        ];
        for (i, (a, b, want)) in cases.iter().enumerate() {
            assert_eq!(shadows(a, b), *want, "case {i}");
        }
    }

    #[test]
    fn events_only_rules() {
        assert!(events_only(&c(|c| c.msg_type = Some("event".into()))));
        assert!(events_only(&c(|c| c.event = Some("CLICK".into()))));
        assert!(!events_only(&Conditions::default()));
        assert!(!events_only(&c(|c| c.msg_type = Some("text".into()))));
    }
}
