//! The schema walk: each table of the file read into [`Config`](super::Config), its accounts,
//! rules and reply actions, with every value checked where it is read.

use super::toml_table::*;
use super::*;
use crate::logger::LogLevel;
use crate::rules::{
    Action, ArticleTemplate, Conditions, Forward, Late, ReplyTemplate, Rule, Target, Template,
};
use crate::wechat::crypto::AesKey;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeValue;

const TOP_KEYS: &[&str] = &[
    "listen",
    "socket_mode",
    "workers",
    "max_conns",
    "max_body",
    "timestamp_window",
    "io_timeout_ms",
    "conn_idle_timeout_ms",
    "text_max_bytes",
    "log_level",
    "idle_exit",
    "forward_slots",
    "dedup_seconds",
    "dedup_entries",
    "api_base",
    "oauth_api_base",
    "oauth_slots",
    "oauth_rate",
    "state_memory_bytes",
    "replay_cache_bytes",
    "shared_state",
    "status_path",
    "late_keep_hours",
    "late_max_answers",
    "late_max_bytes",
    "wechat_attempt_ms",
    "state_file",
    "account",
];

pub(super) fn read_config(top: &Table<'_>) -> Result<Config, ConfigError> {
    top.check_keys(TOP_KEYS)?;
    let listen = top.non_empty_str("listen")?.map(|(s, _)| s.to_string());
    let socket_mode = match top.get("socket_mode") {
        None => DEFAULT_SOCKET_MODE,
        Some(v) => socket_mode(top, v)?,
    };
    let workers = top.usize("workers", DEFAULT_WORKERS, 1, MAX_WORKERS)?;
    let max_conns = top.usize("max_conns", DEFAULT_MAX_CONNS, 1, u64::MAX)?;
    let max_body = top.usize("max_body", DEFAULT_MAX_BODY, MIN_MAX_BODY, MAX_MAX_BODY)?;
    let timestamp_window = top.uint("timestamp_window", DEFAULT_TIMESTAMP_WINDOW, 0, u64::MAX)?;
    let io_timeout_ms = top.uint(
        "io_timeout_ms",
        DEFAULT_IO_TIMEOUT_MS,
        MIN_IO_TIMEOUT_MS,
        u64::MAX,
    )?;
    let conn_idle_timeout_ms = top.uint(
        "conn_idle_timeout_ms",
        DEFAULT_CONN_IDLE_TIMEOUT_MS,
        MIN_IO_TIMEOUT_MS,
        u64::MAX,
    )?;
    let text_max_bytes = top.usize(
        "text_max_bytes",
        DEFAULT_TEXT_MAX_BYTES,
        1,
        MAX_TEXT_MAX_BYTES,
    )?;
    let log_level = match top.str("log_level")? {
        None => LogLevel::default(),
        Some((s, span)) => match s {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            _ => {
                let message = "must be one of: error, warn, info, debug";
                return Err(top.err_at("log_level", &span, message));
            }
        },
    };
    let idle_exit = top.uint("idle_exit", 0, 0, u64::MAX)?;
    let defaults = ForwardSettings::default();
    let forward = ForwardSettings {
        slots: top.usize("forward_slots", defaults.slots as u64, 1, 256)?,
        dedup_seconds: top.uint("dedup_seconds", defaults.dedup_seconds, 0, 3600)?,
        dedup_entries: top.usize("dedup_entries", defaults.dedup_entries as u64, 16, 1 << 20)?,
        oauth: OAuthSettings {
            slots: top.usize("oauth_slots", defaults.oauth.slots as u64, 1, 64)?,
            rate: top.uint("oauth_rate", defaults.oauth.rate.into(), 1, 10_000)? as u32,
        },
    };

    let state_memory_bytes = top.usize(
        "state_memory_bytes",
        DEFAULT_STATE_MEMORY_BYTES,
        MIN_TABLE_BYTES,
        MAX_TABLE_BYTES,
    )?;
    let replay_cache_bytes = top.usize(
        "replay_cache_bytes",
        DEFAULT_REPLAY_CACHE_BYTES,
        MIN_TABLE_BYTES,
        MAX_TABLE_BYTES,
    )?;
    // `oauth_api_base` is the old name of `api_base`; one of them, not both.
    let api_base_key = match (top.get("api_base"), top.get("oauth_api_base")) {
        (Some(_), Some(v)) => {
            let message = "oauth_api_base is the old name of api_base: keep only api_base";
            return Err(top.err_at("oauth_api_base", &v.span(), message));
        }
        (None, Some(_)) => "oauth_api_base",
        _ => "api_base",
    };
    let api_base = match top.non_empty_str(api_base_key)? {
        None => DEFAULT_API_BASE.to_string(),
        Some((s, span)) => {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                let message = "must start with https:// (or http:// for a local test API)";
                return Err(top.err_at(api_base_key, &span, message));
            }
            s.trim_end_matches('/').to_string()
        }
    };
    let shared_state = match top.non_empty_str("shared_state")? {
        None => None,
        Some((s, span)) => {
            crate::state::shared::check_url(s).map_err(|m| top.err_at("shared_state", &span, m))?;
            if !cfg!(feature = "redis") {
                let message = crate::state::shared::NO_REDIS;
                return Err(top.err_at("shared_state", &span, message));
            }
            Some(s.to_string())
        }
    };
    let late_defaults = LateSettings::default();
    let late = LateSettings {
        keep: Duration::from_secs(3600 * top.uint("late_keep_hours", 48, 1, 24 * 30)?),
        max_parts: top.usize(
            "late_max_answers",
            late_defaults.max_parts as u64,
            1,
            1_000_000,
        )?,
        max_bytes: top.usize(
            "late_max_bytes",
            late_defaults.max_bytes as u64,
            4096,
            64 << 20,
        )?,
        attempt: Duration::from_millis(top.uint("wechat_attempt_ms", 5000, 300, 5000)?),
        state_file: top
            .non_empty_str("state_file")?
            .map(|(s, _)| std::path::PathBuf::from(s)),
    };
    let status_path = match top.non_empty_str("status_path")? {
        None => None,
        Some((s, span)) => {
            if !s.starts_with('/') || s.contains(['?', '#']) {
                let message = "must be a plain path starting with \"/\"";
                return Err(top.err_at("status_path", &span, message));
            }
            Some((s.to_string(), span))
        }
    };
    let (tables, span) = top
        .tables("account")?
        .ok_or_else(|| top.err_here("account", "at least one [[account]] is required"))?;
    if tables.is_empty() {
        return Err(top.err_at("account", &span, "at least one [[account]] is required"));
    }
    let mut accounts: Vec<Account> = Vec::with_capacity(tables.len());
    let mut path_lines: Vec<usize> = Vec::with_capacity(tables.len());
    for t in &tables {
        let (account, path_span) = read_account(t)?;
        if (account.redirect_path.is_some() || account.user_info)
            && api_base.starts_with("https://")
            && !cfg!(feature = "tls")
        {
            let message = format!(
                "account {:?} uses menu OAuth or user_info but this build has no TLS for api_base {api_base:?} (build with --features tls)",
                account.name
            );
            let key = if account.redirect_path.is_some() {
                "redirect_path"
            } else {
                "user_info"
            };
            return Err(t.err_here(key, message));
        }
        check_late_rules(t, &account, &api_base, text_max_bytes)?;
        if let Some(j) = accounts.iter().position(|a| {
            a.redirect_path.as_deref() == Some(account.path.as_str())
                || account.redirect_path.as_deref() == Some(a.path.as_str())
                || (a.redirect_path.is_some() && a.redirect_path == account.redirect_path)
        }) {
            let message = format!("path or redirect_path collides with account[{j}]");
            return Err(t.err_here("redirect_path", message));
        }
        let path_line = t.doc.line_of(path_span.start);
        if let Some(j) = accounts.iter().position(|a| a.path == account.path) {
            let message = format!(
                "path {:?} is already used by account[{j}] ({:?}, line {}); each account needs its own path",
                account.path, accounts[j].name, path_lines[j]
            );
            return Err(t.err_at("path", &path_span, message));
        }
        accounts.push(account);
        path_lines.push(path_line);
    }
    let status_path = match status_path {
        Some((s, span)) => {
            if let Some(j) = accounts
                .iter()
                .position(|a| a.path == s || a.redirect_path.as_deref() == Some(s.as_str()))
            {
                let message = format!("collides with the path or redirect_path of account[{j}]");
                return Err(top.err_at("status_path", &span, message));
            }
            Some(s)
        }
        None => None,
    };

    Ok(Config {
        origin: top.doc.origin.to_string(),
        listen,
        socket_mode,
        workers,
        max_conns,
        max_body,
        timestamp_window,
        io_timeout: Duration::from_millis(io_timeout_ms),
        conn_idle_timeout: Duration::from_millis(conn_idle_timeout_ms),
        text_max_bytes,
        log_level,
        idle_exit,
        forward,
        state_memory_bytes,
        replay_cache_bytes,
        api_base,
        shared_state,
        status_path,
        late,
        accounts,
    })
}

/// A `late = "customer_service"` rule needs the account's `app_id` and `app_secret` (for the
/// access token) and, for an https `api_base`, a build with TLS.
fn check_late_rules(
    t: &Table<'_>,
    account: &Account,
    api_base: &str,
    text_max_bytes: usize,
) -> Result<(), ConfigError> {
    use crate::rules::LateMode as Mode;
    for (i, rule) in account.rules.iter().enumerate() {
        let Action::Forward(f) = &rule.action else {
            continue;
        };
        let Some(late) = &f.late else { continue };
        let error = |key: &str, message: String| ConfigError {
            file: t.doc.origin.to_string(),
            line: Some(rule.line),
            key: Some(format!("{}.rule[{i}].reply.{key}", t.path)),
            message,
        };
        let limit = late.text_max_bytes(text_max_bytes);
        if late.more_hint.len() * 2 > limit {
            return Err(error(
                "more_hint",
                format!("must be at most half of text_max_bytes ({limit})"),
            ));
        }
        if late.mode != Mode::CustomerService {
            continue;
        }
        if account.app_id.is_none() || account.app_secret.is_none() {
            return Err(error(
                "late",
                format!(
                    "late = \"customer_service\" needs the account's app_id and app_secret (account {:?})",
                    account.name
                ),
            ));
        }
        if api_base.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(error(
                "late",
                format!(
                    "late = \"customer_service\" calls api_base {api_base:?} but this build has no TLS (build with --features tls)"
                ),
            ));
        }
    }
    Ok(())
}

/// `socket_mode`: an octal string ("0660"), or a TOML octal integer (`0o660`). A decimal
/// integer is refused: `660` would silently mean 0o1224.
fn socket_mode(top: &Table<'_>, v: &Value<'_>) -> Result<u32, ConfigError> {
    let key = "socket_mode";
    let mode = match v.get_ref() {
        DeValue::String(s) => {
            let s: &str = s.as_ref();
            let octal =
                !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
            if octal {
                u32::from_str_radix(s, 8).ok()
            } else {
                None
            }
        }
        DeValue::Integer(i) if i.radix() == 8 => u32::from_str_radix(i.as_str(), 8).ok(),
        DeValue::Integer(_) => {
            let message = "write the mode in octal, as a string like \"0660\" (or 0o660)";
            return Err(top.err_at(key, &v.span(), message));
        }
        _ => return Err(top.type_error(key, v, "a string like \"0660\"")),
    };
    match mode {
        Some(m) if m <= 0o777 => Ok(m),
        _ => Err(top.err_at(
            key,
            &v.span(),
            "must be an octal mode from \"0000\" to \"0777\", e.g. \"0660\"",
        )),
    }
}

const ACCOUNT_KEYS: &[&str] = &[
    "name",
    "path",
    "token",
    "app_id",
    "aes_key",
    "previous_aes_key",
    "encrypted_only",
    "app_secret",
    "redirect_path",
    "menu_handler",
    "redirect_url",
    "user_info",
    "rule",
];

/// One `[[account]]`, and the location of its `path` (for the duplicate check).
fn read_account(t: &Table<'_>) -> Result<(Account, Range<usize>), ConfigError> {
    t.check_keys(ACCOUNT_KEYS)?;
    let (path, path_span) = t.required_str("path")?;
    if !path.starts_with('/') {
        return Err(t.err_at(
            "path",
            &path_span,
            "must start with \"/\" (the request path, e.g. \"/weixin\")",
        ));
    }
    if path
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        let message = "must be a plain path without query, fragment, whitespace or control characters (it is compared with DOCUMENT_URI)";
        return Err(t.err_at("path", &path_span, message));
    }
    let name = match t.non_empty_str("name")? {
        Some((s, _)) => s.to_string(),
        None => path.to_string(),
    };
    // The token's value never goes into a message.
    let (token, token_span) = t.required_str("token")?;
    check_token(token).map_err(|m| t.err_at("token", &token_span, m))?;

    let app_id = match t.non_empty_str("app_id")? {
        Some((s, span)) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(t.err_at(
                "app_id",
                &span,
                "must not contain whitespace or control characters",
            ));
        }
        other => other.map(|(s, _)| s.to_string()),
    };
    // Safe mode checks the AppID inside every decrypted message, so a key without it is useless.
    let aes_key = match t.str("aes_key")? {
        None => None,
        Some((_, span)) if app_id.is_none() => {
            let message = format!("aes_key requires app_id (account {name:?})");
            return Err(t.err_at("aes_key", &span, message));
        }
        Some((s, span)) => Some(decode_key(t, "aes_key", s, &span)?),
    };
    let previous_aes_key = match t.str("previous_aes_key")? {
        None => None,
        Some((_, span)) if aes_key.is_none() => {
            let message = format!("previous_aes_key requires aes_key (account {name:?})");
            return Err(t.err_at("previous_aes_key", &span, message));
        }
        Some((s, span)) => Some(decode_key(t, "previous_aes_key", s, &span)?),
    };
    let encrypted_only = match t.bool("encrypted_only")? {
        Some((true, span)) if aes_key.is_none() => {
            let message = format!("encrypted_only = true requires aes_key (account {name:?})");
            return Err(t.err_at("encrypted_only", &span, message));
        }
        Some((b, _)) => b,
        None => false,
    };

    let app_secret = t
        .non_empty_str("app_secret")?
        .map(|(s, _)| Secret(s.to_string()));
    let menu_handler = match t.non_empty_str("menu_handler")? {
        None => None,
        Some((s, span)) => {
            check_url(s).map_err(|m| t.err_at("menu_handler", &span, m))?;
            Some(s.to_string())
        }
    };
    let redirect_url = match t.non_empty_str("redirect_url")? {
        None => None,
        Some((s, span)) => {
            check_url(s).map_err(|m| t.err_at("redirect_url", &span, m))?;
            if menu_handler.is_some() {
                let message = "set either menu_handler (the seed's {h, r, c} protocol) or redirect_url (reverse proxy), not both";
                return Err(t.err_at("redirect_url", &span, message));
            }
            Some(s.to_string())
        }
    };
    let user_info = match t.bool("user_info")? {
        Some((true, span)) if app_id.is_none() || app_secret.is_none() => {
            let message = "user_info = true requires app_id and app_secret";
            return Err(t.err_at("user_info", &span, message));
        }
        Some((b, _)) => b,
        None => false,
    };
    let redirect_path = match t.non_empty_str("redirect_path")? {
        None => None,
        Some((s, span)) => {
            if !s.starts_with('/') || s == path || s.contains(['?', '#']) {
                let message = "must be a plain path starting with \"/\", other than path";
                return Err(t.err_at("redirect_path", &span, message));
            }
            if app_id.is_none()
                || app_secret.is_none()
                || (menu_handler.is_none() && redirect_url.is_none())
            {
                let message =
                    "redirect_path requires app_id, app_secret and menu_handler or redirect_url";
                return Err(t.err_at("redirect_path", &span, message));
            }
            Some(s.to_string())
        }
    };

    let mut rules = Vec::new();
    if let Some((tables, _)) = t.tables("rule")? {
        rules.reserve(tables.len());
        for (i, rt) in tables.iter().enumerate() {
            rules.push(read_rule(rt, i)?);
        }
    }

    let account = Account {
        name,
        path: path.to_string(),
        token: Secret(token.to_string()),
        app_id,
        aes_key,
        previous_aes_key,
        encrypted_only,
        app_secret,
        redirect_path,
        menu_handler,
        redirect_url,
        user_info,
        rules,
        counters: Arc::default(),
    };
    Ok((account, path_span))
}

/// Decodes an EncodingAESKey; the error names the problem, never the key.
fn decode_key(
    t: &Table<'_>,
    key: &str,
    value: &str,
    span: &Range<usize>,
) -> Result<AesKey, ConfigError> {
    AesKey::from_encoding_aes_key(value).map_err(|e| t.err_at(key, span, e.to_string()))
}

const RULE_KEYS: &[&str] = &[
    "name",
    "msg_type",
    "event",
    "event_key",
    "content",
    "contains",
    "prefix",
    "fields",
    "reply",
];

fn read_rule(t: &Table<'_>, index: usize) -> Result<Rule, ConfigError> {
    t.check_keys(RULE_KEYS)?;
    let name = match t.non_empty_str("name")? {
        Some((s, _)) => s.to_string(),
        None => format!("rule[{index}]"),
    };
    let cond = |key: &str| -> Result<Option<String>, ConfigError> {
        Ok(t.str(key)?.map(|(s, _)| s.to_string()))
    };
    let mut conditions = Conditions {
        msg_type: cond("msg_type")?,
        event: cond("event")?,
        event_key: cond("event_key")?,
        content: cond("content")?,
        contains: cond("contains")?,
        prefix: cond("prefix")?,
        fields: Vec::new(),
    };
    if let Some(fields) = t.sub_table("fields")? {
        let mut entries: Vec<_> = fields.table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (k, v) in entries {
            let field: &str = k.get_ref();
            if field.is_empty() {
                return Err(fields.err_at(field, &k.span(), "field name must not be empty"));
            }
            match v.get_ref() {
                DeValue::String(s) => conditions.fields.push((field.to_string(), s.to_string())),
                _ => return Err(fields.type_error(field, v, "a string")),
            }
        }
    }
    let reply = t.sub_table("reply")?.ok_or_else(|| {
        t.err_here(
            "reply",
            "missing required key (write reply = { type = \"none\" } for no reply)",
        )
    })?;
    let action = read_action(&reply)?;
    Ok(Rule {
        name,
        line: t.line(),
        conditions,
        action,
    })
}

/// One `reply.type`: the keys it takes besides `type`, and how to build its action.
/// A new kind of action (e.g. `forward`, `exec`) is one entry here plus its builder.
struct ReplyKind {
    name: &'static str,
    keys: &'static [&'static str],
    build: fn(&Table<'_>) -> Result<Action, ConfigError>,
}

const REPLY_KINDS: &[ReplyKind] = &[
    ReplyKind {
        name: "text",
        keys: &["content"],
        build: build_text,
    },
    ReplyKind {
        name: "image",
        keys: &["media_id"],
        build: build_image,
    },
    ReplyKind {
        name: "voice",
        keys: &["media_id"],
        build: build_voice,
    },
    ReplyKind {
        name: "video",
        keys: &["media_id", "title", "description"],
        build: build_video,
    },
    ReplyKind {
        name: "music",
        keys: &[
            "title",
            "description",
            "music_url",
            "hq_music_url",
            "thumb_media_id",
        ],
        build: build_music,
    },
    ReplyKind {
        name: "news",
        keys: &["articles"],
        build: build_news,
    },
    ReplyKind {
        name: "transfer_customer_service",
        keys: &["kf_account"],
        build: build_transfer,
    },
    ReplyKind {
        name: "none",
        keys: &[],
        build: build_none,
    },
    ReplyKind {
        name: "forward",
        keys: &[
            "url",
            "timeout_ms",
            "fallback",
            "late",
            "late_timeout_ms",
            "pending",
            "text_max_bytes",
            "more_hint",
        ],
        build: build_forward,
    },
    ReplyKind {
        name: "exec",
        keys: &[
            "command",
            "timeout_ms",
            "max_output",
            "fallback",
            "late",
            "late_timeout_ms",
            "pending",
            "text_max_bytes",
            "more_hint",
        ],
        build: build_exec,
    },
];

fn read_action(reply: &Table<'_>) -> Result<Action, ConfigError> {
    let (kind_name, span) = reply.required_str("type")?;
    let Some(kind) = REPLY_KINDS.iter().find(|k| k.name == kind_name) else {
        let names: Vec<&str> = REPLY_KINDS.iter().map(|k| k.name).collect();
        let message = format!(
            "unknown reply type {kind_name:?} (expected one of: {})",
            names.join(", ")
        );
        return Err(reply.err_at("type", &span, message));
    };
    let mut allowed = Vec::with_capacity(kind.keys.len() + 1);
    allowed.push("type");
    allowed.extend_from_slice(kind.keys);
    reply.check_keys(&allowed)?;
    (kind.build)(reply)
}

fn build_text(t: &Table<'_>) -> Result<Action, ConfigError> {
    // An empty text reply makes WeChat show "该公众号暂时无法提供服务"; `none` is the way to stay silent.
    let content = t.required_template("content")?;
    Ok(Action::Reply(ReplyTemplate::Text { content }))
}

fn build_image(t: &Table<'_>) -> Result<Action, ConfigError> {
    let media_id = t.required_template("media_id")?;
    Ok(Action::Reply(ReplyTemplate::Image { media_id }))
}

fn build_voice(t: &Table<'_>) -> Result<Action, ConfigError> {
    let media_id = t.required_template("media_id")?;
    Ok(Action::Reply(ReplyTemplate::Voice { media_id }))
}

fn build_video(t: &Table<'_>) -> Result<Action, ConfigError> {
    Ok(Action::Reply(ReplyTemplate::Video {
        media_id: t.required_template("media_id")?,
        title: t.optional_template("title")?,
        description: t.optional_template("description")?,
    }))
}

fn build_music(t: &Table<'_>) -> Result<Action, ConfigError> {
    // WeChat requires ThumbMediaId for music; the rest is optional.
    Ok(Action::Reply(ReplyTemplate::Music {
        title: t.optional_template("title")?,
        description: t.optional_template("description")?,
        music_url: t.optional_template("music_url")?,
        hq_music_url: t.optional_template("hq_music_url")?,
        thumb_media_id: t.required_template("thumb_media_id")?,
    }))
}

const ARTICLE_KEYS: &[&str] = &["title", "description", "pic_url", "url"];

fn build_news(t: &Table<'_>) -> Result<Action, ConfigError> {
    let (tables, span) = t.tables("articles")?.ok_or_else(|| t.missing("articles"))?;
    if tables.is_empty() || tables.len() > MAX_NEWS_ARTICLES {
        let message = format!("a news reply needs 1 to {MAX_NEWS_ARTICLES} articles");
        return Err(t.err_at("articles", &span, message));
    }
    let mut articles = Vec::with_capacity(tables.len());
    for a in &tables {
        a.check_keys(ARTICLE_KEYS)?;
        articles.push(ArticleTemplate {
            title: a.required_template("title")?,
            description: a.optional_template("description")?,
            pic_url: a.optional_template("pic_url")?,
            url: a.optional_template("url")?,
        });
    }
    Ok(Action::Reply(ReplyTemplate::News { articles }))
}

fn build_transfer(t: &Table<'_>) -> Result<Action, ConfigError> {
    let kf_account = match t.template("kf_account")? {
        Some(k) if k.is_empty() => {
            let span = t.get("kf_account").map(|v| v.span()).unwrap_or_default();
            let message = "must not be empty (omit kf_account to let WeChat pick an agent)";
            return Err(t.err_at("kf_account", &span, message));
        }
        other => other,
    };
    Ok(Action::Reply(ReplyTemplate::TransferCustomerService {
        kf_account,
    }))
}

fn build_none(_: &Table<'_>) -> Result<Action, ConfigError> {
    Ok(Action::NoReply)
}

/// Default and bounds of a forward/exec `timeout_ms` (WeChat waits 5 s per try, and retries
/// twice: de-duplication lets a backend use up to ~14 s).
const DEFAULT_FORWARD_TIMEOUT_MS: u64 = 4500;
const MAX_FORWARD_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_EXEC_MAX_OUTPUT: u64 = 2048;
/// On a rule with `late`, long answers are split into parts rather than cut: the program may
/// say more.
const DEFAULT_LATE_EXEC_MAX_OUTPUT: u64 = 64 * 1024;

/// `reply = { type = "forward", url = "http://127.0.0.1:8080/wx", timeout_ms = 4500,
/// fallback = { type = "text", content = "…" } }`.
fn build_forward(t: &Table<'_>) -> Result<Action, ConfigError> {
    let (url, span) = t.required_str("url")?;
    check_url(url).map_err(|m| t.err_at("url", &span, m))?;
    forward_action(
        t,
        Target::Http {
            url: url.to_string(),
        },
    )
}

/// `reply = { type = "exec", command = ["/usr/local/bin/bot", "--flag"], timeout_ms = 4500,
/// max_output = 2048, fallback = { … } }`.
fn build_exec(t: &Table<'_>) -> Result<Action, ConfigError> {
    let key = "command";
    let v = t.get(key).ok_or_else(|| t.missing(key))?;
    let DeValue::Array(items) = v.get_ref() else {
        return Err(t.type_error(key, v, "an array of strings ([\"/path/prog\", \"arg\"])"));
    };
    let mut command = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) if !s.contains('\0') => command.push(s.to_string()),
            _ => return Err(t.err_at(key, &item.span(), "expected strings without NUL")),
        }
    }
    match command.first() {
        Some(p) if p.starts_with('/') => {}
        _ => {
            let message = "must start with the program's absolute path (no shell is used)";
            return Err(t.err_at(key, &v.span(), message));
        }
    }
    let default = match t.str("late")? {
        None | Some(("off", _)) => DEFAULT_EXEC_MAX_OUTPUT,
        Some(_) => DEFAULT_LATE_EXEC_MAX_OUTPUT,
    };
    let max_output = t.usize("max_output", default, 1, 1 << 20)?;
    forward_action(
        t,
        Target::Exec {
            command,
            max_output,
        },
    )
}

fn forward_action(t: &Table<'_>, target: Target) -> Result<Action, ConfigError> {
    let late = late_action(t)?;
    let timeout_ms = match &late {
        Some((_, ms)) => *ms,
        None => t.uint(
            "timeout_ms",
            DEFAULT_FORWARD_TIMEOUT_MS,
            1,
            MAX_FORWARD_TIMEOUT_MS,
        )?,
    };
    let fallback = match t.sub_table("fallback")? {
        None => None,
        Some(f) => Some(static_reply(t, &f, "fallback")?),
    }
    .flatten();
    Ok(Action::Forward(std::sync::Arc::new(Forward {
        target,
        timeout: Duration::from_millis(timeout_ms),
        fallback,
        late: late.map(|(l, _)| l),
    })))
}

/// Checks a forward base URL: `http://` to a loopback or private IP address (or
/// `localhost`), with an optional port and path, no query or fragment.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with http:// (plain HTTP to a loopback or private address)".into());
    };
    let authority = rest.split('/').next().unwrap_or("");
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain a query, fragment, whitespace or control characters".into());
    }
    if authority.contains('@') {
        return Err("must not contain user information".into());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let private = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => host == "localhost",
    };
    if private {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not a loopback or private IP address (or localhost)"
        ))
    }
}

/// A `pending` given as a plain string: a text reply.
fn text_template(text: &str) -> Result<ReplyTemplate, String> {
    Template::parse(text)
        .map(|content| ReplyTemplate::Text { content })
        .map_err(|e| e.0)
}

/// A static reply table (`fallback`, `pending`); `None` for `type = "none"`.
fn static_reply(
    t: &Table<'_>,
    reply: &Table<'_>,
    key: &str,
) -> Result<Option<ReplyTemplate>, ConfigError> {
    match read_action(reply)? {
        Action::Reply(template) => Ok(Some(template)),
        Action::NoReply => Ok(None),
        Action::Forward(_) => {
            let message = format!("the {key} must be a static reply (text, image, …, or none)");
            Err(t.err_here(key, message))
        }
    }
}

/// `late`, `late_timeout_ms`, `pending`, `text_max_bytes`, `more_hint` of a forward/exec rule,
/// and the call's deadline in ms. `None` for `late = "off"` (the default).
fn late_action(t: &Table<'_>) -> Result<Option<(Late, u64)>, ConfigError> {
    use crate::rules::LateMode as Mode;
    const LATE_KEYS: [&str; 4] = ["late_timeout_ms", "pending", "text_max_bytes", "more_hint"];
    let mode = match t.str("late")? {
        None | Some(("off", _)) => None,
        Some(("next_message", _)) => Some(Mode::NextMessage),
        Some(("customer_service", _)) => Some(Mode::CustomerService),
        Some((_, span)) => {
            let message = "must be one of: \"off\", \"next_message\", \"customer_service\"";
            return Err(t.err_at("late", &span, message));
        }
    };
    let Some(mode) = mode else {
        if let Some(key) = LATE_KEYS.iter().find(|k| t.get(k).is_some()) {
            let span = t.get(key).map(|v| v.span()).unwrap_or_default();
            let message = "only applies with late = \"next_message\" or \"customer_service\"";
            return Err(t.err_at(key, &span, message));
        }
        return Ok(None);
    };
    if let Some(v) = t.get("timeout_ms") {
        let message = "with late, the call runs up to late_timeout_ms: use that instead";
        return Err(t.err_at("timeout_ms", &v.span(), message));
    }
    let timeout_ms = t.uint(
        "late_timeout_ms",
        DEFAULT_LATE_TIMEOUT_MS,
        MIN_LATE_TIMEOUT_MS,
        MAX_LATE_TIMEOUT_MS,
    )?;
    let pending = match t.get("pending") {
        None => text_template(mode.default_pending()).map_err(|e| t.err_here("pending", e))?,
        Some(v) => match v.get_ref() {
            DeValue::String(text) => {
                if text.is_empty() {
                    return Err(t.err_at("pending", &v.span(), "must not be empty"));
                }
                text_template(text)
                    .map_err(|e| t.err_at("pending", &v.span(), format!("invalid template: {e}")))?
            }
            DeValue::Table(_) => {
                let Some(table) = t.sub_table("pending")? else {
                    return Err(t.missing("pending"));
                };
                static_reply(t, &table, "pending")?.ok_or_else(|| {
                    let message =
                        "must be a reply (a \"none\" pending would show WeChat's failure notice)";
                    t.err_at("pending", &v.span(), message)
                })?
            }
            _ => return Err(t.type_error("pending", v, "a string or a reply table")),
        },
    };
    // 0 = the global text_max_bytes, filled in by the caller.
    let text_max_bytes = t.usize("text_max_bytes", 0, 64, MAX_TEXT_MAX_BYTES)?;
    let more_hint = match t.str("more_hint")? {
        None => Late::DEFAULT_MORE_HINT.to_string(),
        Some((s, span)) if s.len() > MAX_MORE_HINT => {
            let message = format!("must be at most {MAX_MORE_HINT} bytes");
            return Err(t.err_at("more_hint", &span, message));
        }
        Some((s, _)) => s.to_string(),
    };
    let late = Late {
        mode,
        pending,
        text_max_bytes,
        more_hint,
    };
    Ok(Some((late, timeout_ms)))
}
