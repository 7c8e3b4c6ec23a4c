//! The TOML configuration: global settings, accounts, and each account's ordered rules.
//!
//! Errors name the file, the line and the key (`weixin-fcgi.toml:12: account[0].rule[2].reply.type: …`)
//! and never include secrets (token, EncodingAESKey, AppSecret).
//!
//! The file is read as spanned TOML tables rather than serde structs so that every kind of
//! error (syntax, type, missing or unknown key, bad value, bad template) carries a line.
//! Unknown keys are errors everywhere except inside a rule's `fields`: a typo must not turn
//! into a silently ignored setting.

mod read;
mod toml_table;

pub use read::check_url;
use read::read_config;
use toml_table::{Doc, Table, toml_basic_string};

use crate::logger::LogLevel;
use crate::rules::Rule;
use crate::status::AccountCounters;
use crate::wechat::crypto::AesKey;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeTable;

/// The configuration used when no `--config` is given; `{TOKEN}` is replaced at load.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/default.toml");
/// Token of the embedded demo config when `WEIXIN_TOKEN` is unset (documented in the README).
pub const DEFAULT_DEMO_TOKEN: &str = "weixin-fcgi-demo";

/// A secret string (token, AppSecret). `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);
impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Global settings (`forward_slots`, `dedup_seconds`, `dedup_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSettings {
    pub slots: usize,
    /// 0 turns de-duplication off.
    pub dedup_seconds: u64,
    /// No longer used (answers are bounded in bytes by `state_memory_bytes`); still accepted.
    pub dedup_entries: usize,
    /// Menu OAuth's own pool and rate limit.
    pub oauth: OAuthSettings,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            slots: 8,
            dedup_seconds: 30,
            dedup_entries: 4096,
            oauth: OAuthSettings::default(),
        }
    }
}

/// `oauth_slots`, `oauth_rate`: menu OAuth's pool (see `forward::oauth_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthSettings {
    /// Threads doing OAuth exchanges; as many more may wait in the queue.
    pub slots: usize,
    /// Exchanges per second per account, and the burst.
    pub rate: u32,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings { slots: 2, rate: 10 }
    }
}

/// Global settings of late answers (`forward::late`). Fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateSettings {
    /// `late_keep_hours`: how long a kept answer waits for the user (default 48, WeChat's
    /// customer-service window).
    pub keep: Duration,
    /// `late_max_answers`: kept parts per account, at most (default 1000).
    pub max_parts: usize,
    /// `late_max_bytes`: bytes of kept parts per account, at most (default 1 MiB).
    pub max_bytes: usize,
    /// `wechat_attempt_ms`: how long WeChat waits for one attempt (5000; tests shorten it).
    pub attempt: Duration,
    /// `state_file`: where kept answers survive a restart (default
    /// `$STATE_DIRECTORY/late-answers` under systemd, set by `main`; none otherwise).
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for LateSettings {
    fn default() -> Self {
        LateSettings {
            keep: Duration::from_secs(48 * 3600),
            max_parts: 1000,
            max_bytes: 1 << 20,
            attempt: Duration::from_millis(5000),
            state_file: None,
        }
    }
}

/// Bounds of `late_timeout_ms`, and its default.
const DEFAULT_LATE_TIMEOUT_MS: u64 = 60_000;
const MIN_LATE_TIMEOUT_MS: u64 = 1_000;
const MAX_LATE_TIMEOUT_MS: u64 = 600_000;
/// Longest `more_hint`, in bytes.
const MAX_MORE_HINT: usize = 256;

/// Everything the process needs to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for messages), e.g. `/etc/weixin-fcgi/weixin-fcgi.toml` or `<embedded>`.
    pub origin: String,
    /// `listen`: a Unix socket path or `host:port`; `None` when only an inherited socket may be used.
    pub listen: Option<String>,
    /// `socket_mode`: permission bits of a Unix socket we create (default 0o660). TOML: a string like "0660".
    pub socket_mode: u32,
    /// `workers`: FastCGI worker threads (default 2, 1..=64).
    pub workers: usize,
    /// `max_conns`: most open FastCGI connections (default 256); more are refused.
    pub max_conns: usize,
    /// `max_body`: request body cap in bytes (default 65536) → 413 beyond.
    pub max_body: usize,
    /// `timestamp_window`: seconds a request's timestamp may differ from now (default 300; 0 = off).
    pub timestamp_window: u64,
    /// `io_timeout_ms`: read/write timeout on a FastCGI connection (default 5000).
    pub io_timeout: Duration,
    /// `conn_idle_timeout_ms`: a kept-alive FastCGI connection with no request for this long is
    /// closed (default 10000: above the shipped nginx snippet's `keepalive_timeout 4s`).
    pub conn_idle_timeout: Duration,
    /// `text_max_bytes`: text reply Content cap (default 2048).
    pub text_max_bytes: usize,
    /// `log_level`: "error" | "warn" | "info" (default) | "debug".
    pub log_level: LogLevel,
    /// `idle_exit`: seconds without requests after which a socket-activated process exits (default 0 = off).
    pub idle_exit: u64,
    /// `forward_slots` (default 8, 1..=256), `dedup_seconds` (default 30, 0 = off, ..=3600),
    /// `dedup_entries` (default 4096, 16..=1048576): the forward pool and retry table. Fixed at
    /// start (a reload keeps the running pool). `oauth_slots` (default 2, 1..=64) and
    /// `oauth_rate` (default 10 per second per account, 1..=10000): menu OAuth's own pool.
    pub forward: ForwardSettings,
    /// `state_memory_bytes`: byte budget of the in-process state store (kept answers for
    /// WeChat's retries, …); default 4 MiB, oldest dropped first.
    pub state_memory_bytes: usize,
    /// `replay_cache_bytes`: byte budget of the replay cache (signature + body digest of each
    /// accepted POST for the timestamp window); default 4 MiB.
    pub replay_cache_bytes: usize,
    /// `api_base` (old name `oauth_api_base`, still accepted): the WeChat API for menu OAuth,
    /// `user_info` and customer-service messages (default `https://api.weixin.qq.com`; https
    /// needs the `tls` cargo feature).
    pub api_base: String,
    /// `shared_state`: `redis://HOST[:PORT][/DB]` or `redis+unix:///PATH[?db=N]` to share
    /// retries' claims and answers with other instances; `None`: this process's memory only.
    /// Fixed at start.
    pub shared_state: Option<String>,
    /// `status_path`: the request path of the status page (default none: no status page).
    pub status_path: Option<String>,
    /// `late_keep_hours`, `late_max_answers`, `late_max_bytes`, `wechat_attempt_ms`,
    /// `state_file`: late answers. Fixed at start.
    pub late: LateSettings,
    /// `[[account]]` tables, in file order.
    pub accounts: Vec<Account>,
}

/// The settings a reload cannot change: the socket, the FastCGI worker pool and its caps, the
/// forward pool, the late-answer store and where state is kept (`shared_state`). Everything
/// else (accounts, rules, `timestamp_window`, `text_max_bytes`, `log_level`, `idle_exit`,
/// `api_base`, `status_path`) takes effect at a SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartSettings {
    listen: Option<String>,
    socket_mode: u32,
    workers: usize,
    max_conns: usize,
    max_body: usize,
    io_timeout: Duration,
    conn_idle_timeout: Duration,
    forward: ForwardSettings,
    state_memory_bytes: usize,
    replay_cache_bytes: usize,
    late: LateSettings,
    shared_state: Option<String>,
}

impl RestartSettings {
    /// The config keys whose values differ between `self` (in force) and `new`.
    pub fn changed_keys(&self, new: &RestartSettings) -> Vec<&'static str> {
        let keys = [
            ("listen", self.listen != new.listen),
            ("socket_mode", self.socket_mode != new.socket_mode),
            ("workers", self.workers != new.workers),
            ("max_conns", self.max_conns != new.max_conns),
            ("max_body", self.max_body != new.max_body),
            ("io_timeout_ms", self.io_timeout != new.io_timeout),
            (
                "conn_idle_timeout_ms",
                self.conn_idle_timeout != new.conn_idle_timeout,
            ),
            ("forward_slots", self.forward.slots != new.forward.slots),
            (
                "dedup_seconds",
                self.forward.dedup_seconds != new.forward.dedup_seconds,
            ),
            (
                "dedup_entries",
                self.forward.dedup_entries != new.forward.dedup_entries,
            ),
            (
                "oauth_slots",
                self.forward.oauth.slots != new.forward.oauth.slots,
            ),
            (
                "oauth_rate",
                self.forward.oauth.rate != new.forward.oauth.rate,
            ),
            (
                "state_memory_bytes",
                self.state_memory_bytes != new.state_memory_bytes,
            ),
            (
                "replay_cache_bytes",
                self.replay_cache_bytes != new.replay_cache_bytes,
            ),
            ("late_keep_hours", self.late.keep != new.late.keep),
            (
                "late_max_answers",
                self.late.max_parts != new.late.max_parts,
            ),
            ("late_max_bytes", self.late.max_bytes != new.late.max_bytes),
            ("wechat_attempt_ms", self.late.attempt != new.late.attempt),
            ("state_file", self.late.state_file != new.late.state_file),
            ("shared_state", self.shared_state != new.shared_state),
        ];
        keys.iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| *key)
            .collect()
    }
}

impl Config {
    /// The settings of this config that only a restart changes.
    pub fn restart_settings(&self) -> RestartSettings {
        RestartSettings {
            listen: self.listen.clone(),
            socket_mode: self.socket_mode,
            workers: self.workers,
            max_conns: self.max_conns,
            max_body: self.max_body,
            io_timeout: self.io_timeout,
            conn_idle_timeout: self.conn_idle_timeout,
            forward: self.forward,
            state_memory_bytes: self.state_memory_bytes,
            replay_cache_bytes: self.replay_cache_bytes,
            late: self.late.clone(),
            shared_state: self.shared_state.clone(),
        }
    }
}

/// One Official Account.
#[derive(Debug, Clone)]
pub struct Account {
    /// `name`: label used in logs (default: the path).
    pub name: String,
    /// `path`: the exact request path (DOCUMENT_URI) this account answers, e.g. `/weixin`.
    pub path: String,
    /// `token`: the Token from the WeChat console.
    pub token: Secret,
    /// `app_id`: required with `aes_key`.
    pub app_id: Option<String>,
    /// `aes_key`: the EncodingAESKey (43 chars).
    pub aes_key: Option<AesKey>,
    /// `previous_aes_key`: the key before the last rotation, tried second.
    pub previous_aes_key: Option<AesKey>,
    /// `encrypted_only`: refuse plaintext POSTs (403) once the account is in safe mode.
    pub encrypted_only: bool,
    /// `app_secret`: the AppSecret, for menu OAuth (never logged).
    pub app_secret: Option<Secret>,
    /// `redirect_path`: request path receiving WeChat's OAuth redirect (`code`, `state`);
    /// requires `app_id`, `app_secret` and `menu_handler` or `redirect_url`.
    pub redirect_path: Option<String>,
    /// `menu_handler`: URL (http:// to a loopback or private address) that gets
    /// `{"appId", "openId", "state"}` and answers `{"h", "r", "c"}`.
    pub menu_handler: Option<String>,
    /// `redirect_url`: URL (http:// to a loopback or private address) that the menu OAuth
    /// redirect is reverse-proxied to (go-wx-gateway's `redirect-url`); excludes `menu_handler`.
    pub redirect_url: Option<String>,
    /// `user_info`: add the user's `cgi-bin/user/info` as `userInfo`/`userInfoError` to
    /// forwarded messages and `redirect_url` requests (go-wx-gateway's default); off by default:
    /// one WeChat API call per user and 10 minutes.
    pub user_info: bool,
    /// `[[account.rule]]` tables in match order.
    pub rules: Vec<Rule>,
    /// Its requests by status, for the status page. Not a config key: a reload hands the
    /// counters of an account to the new account of the same name ([`Config::keep_counters`]).
    pub counters: Arc<AccountCounters>,
}

/// A configuration error with its location. `Display` is one line: `FILE:LINE: KEY: MESSAGE`
/// (`FILE: MESSAGE` when there is no line, e.g. the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `account[0].rule[2].reply.type`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}
impl std::error::Error for ConfigError {}

/// `origin` of the embedded demo config.
pub const EMBEDDED_ORIGIN: &str = "<embedded>";

const DEFAULT_SOCKET_MODE: u32 = 0o660;
const DEFAULT_WORKERS: u64 = 2;
const MAX_WORKERS: u64 = 64;
const DEFAULT_MAX_CONNS: u64 = 256;
const DEFAULT_MAX_BODY: u64 = 65536;
const MIN_MAX_BODY: u64 = 512;
const MAX_MAX_BODY: u64 = 16 * 1024 * 1024;
const DEFAULT_TIMESTAMP_WINDOW: u64 = 300;
const DEFAULT_IO_TIMEOUT_MS: u64 = 5000;
const MIN_IO_TIMEOUT_MS: u64 = 100;
const DEFAULT_CONN_IDLE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_TEXT_MAX_BYTES: u64 = crate::wechat::reply::DEFAULT_TEXT_MAX_BYTES as u64;
const MAX_TEXT_MAX_BYTES: u64 = 65536;
/// Byte budgets of the in-memory tables: together far below the unit's MemoryMax=32M.
const DEFAULT_STATE_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
const DEFAULT_REPLAY_CACHE_BYTES: u64 = 4 * 1024 * 1024;
const MIN_TABLE_BYTES: u64 = 64 * 1024;
const MAX_TABLE_BYTES: u64 = 1 << 30;
/// Most articles a news reply may list (WeChat's limit for event-triggered news).
const MAX_NEWS_ARTICLES: usize = crate::wechat::reply::MAX_ARTICLES_FOR_EVENT;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &origin),
            Err(e) => Err(ConfigError {
                file: origin,
                line: None,
                key: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = Doc { text, origin };
        let root = DeTable::parse(text).map_err(|e| doc.syntax_error(&e))?;
        let top = Table {
            doc: &doc,
            table: root.get_ref(),
            path: String::new(),
            span: None,
        };
        read_config(&top)
    }

    /// Takes over the request counters of `old`'s accounts for the accounts of the same name,
    /// so that a reload does not reset the status page's figures.
    pub fn keep_counters(&mut self, old: &Config) {
        for account in &mut self.accounts {
            if let Some(o) = old.accounts.iter().find(|o| o.name == account.name) {
                account.counters = Arc::clone(&o.counters);
            }
        }
    }

    /// The embedded demo config with `token` substituted.
    ///
    /// Never fails: a token the config would reject (empty, whitespace or control characters)
    /// falls back to [`DEFAULT_DEMO_TOKEN`]. Callers that take the token from the user should
    /// check it with [`check_token`] first so that such a token is refused loudly instead.
    pub fn embedded(token: &str) -> Config {
        let parse_with = |token: &str| {
            let text = EMBEDDED_DEFAULT.replace("\"{TOKEN}\"", &toml_basic_string(token));
            Config::parse(&text, EMBEDDED_ORIGIN)
        };
        parse_with(token)
            .or_else(|_| parse_with(DEFAULT_DEMO_TOKEN))
            .unwrap_or_else(|_| Config::fallback_demo())
    }

    /// The account whose `path` equals `path` exactly.
    pub fn account_for_path(&self, path: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.path == path)
    }

    /// Last resort of [`Config::embedded`] should the embedded text ever stop parsing: the
    /// demo account without rules (every message is answered "success").
    fn fallback_demo() -> Config {
        Config {
            origin: EMBEDDED_ORIGIN.to_string(),
            listen: None,
            socket_mode: DEFAULT_SOCKET_MODE,
            workers: DEFAULT_WORKERS as usize,
            max_conns: DEFAULT_MAX_CONNS as usize,
            max_body: DEFAULT_MAX_BODY as usize,
            timestamp_window: DEFAULT_TIMESTAMP_WINDOW,
            io_timeout: Duration::from_millis(DEFAULT_IO_TIMEOUT_MS),
            conn_idle_timeout: Duration::from_millis(DEFAULT_CONN_IDLE_TIMEOUT_MS),
            text_max_bytes: DEFAULT_TEXT_MAX_BYTES as usize,
            log_level: LogLevel::default(),
            idle_exit: 0,
            forward: ForwardSettings::default(),
            state_memory_bytes: DEFAULT_STATE_MEMORY_BYTES as usize,
            replay_cache_bytes: DEFAULT_REPLAY_CACHE_BYTES as usize,
            api_base: DEFAULT_API_BASE.to_string(),
            shared_state: None,
            status_path: None,
            late: LateSettings::default(),
            accounts: vec![Account {
                name: "demo".to_string(),
                path: "/weixin".to_string(),
                token: Secret(DEFAULT_DEMO_TOKEN.to_string()),
                app_id: None,
                aes_key: None,
                previous_aes_key: None,
                encrypted_only: false,
                app_secret: None,
                redirect_path: None,
                menu_handler: None,
                redirect_url: None,
                user_info: false,
                rules: Vec::new(),
                counters: Arc::default(),
            }],
        }
    }
}

/// Checks a Token as the config does: non-empty, no whitespace or control characters.
/// The message never contains the token.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        Err("token must not be empty")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("token must not contain whitespace or control characters")
    } else {
        Ok(())
    }
}

/// Default `api_base`.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";

#[cfg(test)]
mod tests;
