//! The TOML configuration: global settings, accounts, and each account's ordered rules.
//!
//! Errors name the file, the line and the key (`weixin-fcgi.toml:12: account[0].rule[2].reply.type: …`)
//! and never include secrets (token, EncodingAESKey, AppSecret).
//!
//! The file is read as spanned TOML tables rather than serde structs so that every kind of
//! error (syntax, type, missing or unknown key, bad value, bad template) carries a line.
//! Unknown keys are errors everywhere except inside a rule's `fields`: a typo must not turn
//! into a silently ignored setting.

use crate::logger::LogLevel;
use crate::rules::{
    Action, ArticleTemplate, Conditions, Forward, Late, ReplyTemplate, Rule, Target, Template,
};
use crate::status::AccountCounters;
use crate::wechat::crypto::AesKey;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The configuration used when no `--config` is given; `{TOKEN}` is replaced at load.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/default.toml");
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

/// `s` as a TOML basic string (quoted), so any token can be pasted into the embedded config.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text being parsed, for turning byte spans into errors.
struct Doc<'t> {
    text: &'t str,
    origin: &'t str,
}

impl Doc<'_> {
    /// 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: Option<&Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.origin.to_string(),
            line: span.map(|s| self.line_of(s.start)),
            key,
            message: message.into(),
        }
    }

    /// Only the parser's message is used: its `Display` quotes the offending line, which may
    /// hold a secret.
    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = format!("invalid TOML: {}", e.message());
        self.error(e.span().as_ref(), None, message)
    }
}

type Value<'a> = Spanned<DeValue<'a>>;
/// The tables of an array of tables, and where the array is.
type Tables<'a> = (Vec<Table<'a>>, Range<usize>);

/// A table being read, with its key path and location, so every error can say where it is.
struct Table<'a> {
    doc: &'a Doc<'a>,
    table: &'a DeTable<'a>,
    /// Dotted key path of this table; empty for the document root.
    path: String,
    /// Where the table starts (its header, or the inline table); `None` for the root.
    span: Option<Range<usize>>,
}

impl<'a> Table<'a> {
    fn key_path(&self, key: &str) -> String {
        let key = quote_key(key);
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn line(&self) -> usize {
        self.span.as_ref().map_or(1, |s| self.doc.line_of(s.start))
    }

    /// An error about the value (or key) of `key` at `span`.
    fn err_at(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        self.doc
            .error(Some(span), Some(self.key_path(key)), message)
    }

    /// An error about `key` located at this table (e.g. the key is missing).
    fn err_here(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.doc
            .error(self.span.as_ref(), Some(self.key_path(key)), message)
    }

    fn missing(&self, key: &str) -> ConfigError {
        self.err_here(key, "missing required key")
    }

    /// Refuses keys outside `allowed`, so a typo is an error rather than a silently ignored
    /// setting. Reports the first unknown key in file order.
    fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        let unknown = self
            .table
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !allowed.contains(&k.get_ref().as_ref()))
            .min_by_key(|k| k.span().start);
        match unknown {
            Some(k) => Err(self.err_at(
                k.get_ref(),
                &k.span(),
                format!("unknown key (allowed here: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value<'a>> {
        self.table.get(key)
    }

    fn type_error(&self, key: &str, value: &Value<'_>, expected: &str) -> ConfigError {
        let found = value.get_ref().type_str();
        self.err_at(
            key,
            &value.span(),
            format!("expected {expected}, found {found}"),
        )
    }

    fn str(&self, key: &str) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Ok(Some((s.as_ref(), v.span()))),
                _ => Err(self.type_error(key, v, "a string")),
            },
        }
    }

    fn required_str(&self, key: &str) -> Result<(&'a str, Range<usize>), ConfigError> {
        self.str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional string that, when present, must not be empty.
    fn non_empty_str(&self, key: &str) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        match self.str(key)? {
            Some(("", span)) => Err(self.err_at(key, &span, "must not be empty")),
            other => Ok(other),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<(bool, Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Ok(Some((*b, v.span()))),
                _ => Err(self.type_error(key, v, "a boolean (true or false)")),
            },
        }
    }

    /// An integer in `min..=max`, or `default` when absent.
    fn uint(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.type_error(key, v, "an integer"));
        };
        match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ if max == u64::MAX => {
                Err(self.err_at(key, &v.span(), format!("must be at least {min}")))
            }
            _ => Err(self.err_at(key, &v.span(), format!("must be between {min} and {max}"))),
        }
    }

    fn usize(&self, key: &str, default: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
        let n = self.uint(key, default, min, max)?;
        usize::try_from(n).map_err(|_| self.err_here(key, "too large for this platform"))
    }

    fn sub_table(&self, key: &str) -> Result<Option<Table<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Ok(Some(Table {
                    doc: self.doc,
                    table: t,
                    path: self.key_path(key),
                    span: Some(v.span()),
                })),
                _ => Err(self.type_error(key, v, "a table")),
            },
        }
    }

    /// `[[key]]` tables (or an array of inline tables), each with path `key[i]`; `None` when
    /// absent, plus the array's location.
    fn tables(&self, key: &str) -> Result<Option<Tables<'a>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let DeValue::Array(items) = v.get_ref() else {
            let header = table_header(&self.key_path(key));
            return Err(self.type_error(key, v, &format!("an array of tables ([[{header}]])")));
        };
        let mut tables = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            match item.get_ref() {
                DeValue::Table(t) => tables.push(Table {
                    doc: self.doc,
                    table: t,
                    path,
                    span: Some(item.span()),
                }),
                other => {
                    let found = other.type_str();
                    let message = format!("expected a table, found {found}");
                    return Err(self.doc.error(Some(&item.span()), Some(path), message));
                }
            }
        }
        Ok(Some((tables, v.span())))
    }

    fn template(&self, key: &str) -> Result<Option<Template>, ConfigError> {
        match self.str(key)? {
            None => Ok(None),
            Some((s, span)) => Template::parse(s)
                .map(Some)
                .map_err(|e| self.err_at(key, &span, format!("invalid template: {}", e.0))),
        }
    }

    fn required_template(&self, key: &str) -> Result<Template, ConfigError> {
        let t = self.template(key)?.ok_or_else(|| self.missing(key))?;
        if t.is_empty() {
            let span = self.get(key).map(|v| v.span()).unwrap_or_default();
            return Err(self.err_at(key, &span, "must not be empty"));
        }
        Ok(t)
    }

    fn optional_template(&self, key: &str) -> Result<Template, ConfigError> {
        Ok(self.template(key)?.unwrap_or_default())
    }
}

/// The `[[header]]` that defines the tables at `path`: the path without its `[N]` indexes.
fn table_header(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// A key as written in a dotted path: bare when it can be, quoted otherwise.
fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

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

/// Default `api_base`.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";

fn read_config(top: &Table<'_>) -> Result<Config, ConfigError> {
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
    let max_output = t.usize("max_output", DEFAULT_EXEC_MAX_OUTPUT, 1, 1 << 20)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_settings_name_exactly_what_changed() {
        let base = "[[account]]\npath = \"/w\"\ntoken = \"tok123\"\n";
        let old = Config::parse(base, "a.toml").expect("valid");
        let same = Config::parse(
            &format!("idle_exit = 5\nlog_level = \"debug\"\n{base}"),
            "b.toml",
        )
        .expect("valid");
        assert!(
            old.restart_settings()
                .changed_keys(&same.restart_settings())
                .is_empty()
        );
        let new = Config::parse(
            &format!("workers = 3\nio_timeout_ms = 100\ndedup_entries = 99\n{base}"),
            "c.toml",
        )
        .expect("valid");
        assert_eq!(
            old.restart_settings().changed_keys(&new.restart_settings()),
            ["workers", "io_timeout_ms", "dedup_entries"]
        );
    }

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:8080/base",
            "http://10.1.2.3/x",
            "http://192.168.1.1:1",
            "http://172.16.0.1/",
            "http://[::1]:80/a",
            "http://localhost:9000",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://127.0.0.1/",
            "http://8.8.8.8/",
            "http://example.com/",
            "http://127.0.0.1/?q",
            "http://u@127.0.0.1/",
            "ftp://127.0.0.1/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    use crate::rules::{Action, ReplyTemplate};

    const FULL: &str = include_str!("../examples/full.toml");

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(name)
    }

    fn reply_kind(action: &Action) -> &'static str {
        match action {
            Action::NoReply => "none",
            Action::Forward(_) => "forward",
            Action::Reply(ReplyTemplate::Text { .. }) => "text",
            Action::Reply(ReplyTemplate::Image { .. }) => "image",
            Action::Reply(ReplyTemplate::Voice { .. }) => "voice",
            Action::Reply(ReplyTemplate::Video { .. }) => "video",
            Action::Reply(ReplyTemplate::Music { .. }) => "music",
            Action::Reply(ReplyTemplate::News { .. }) => "news",
            Action::Reply(ReplyTemplate::TransferCustomerService { .. }) => "transfer",
        }
    }

    #[test]
    fn menu_oauth_takes_one_of_menu_handler_or_redirect_url() {
        let account = |keys: &str| {
            format!(
                "oauth_api_base = \"http://127.0.0.1:8\"\n[[account]]\npath = \"/wx\"\ntoken = \"t\"\n\
                 app_id = \"wxa\"\napp_secret = \"s\"\n\
                 redirect_path = \"/wxoauth\"\n{keys}\n"
            )
        };
        let c = Config::parse(
            &account("redirect_url = \"http://127.0.0.1:9/o\""),
            "t.toml",
        )
        .expect("redirect_url alone");
        assert_eq!(
            c.accounts[0].redirect_url.as_deref(),
            Some("http://127.0.0.1:9/o")
        );
        assert!(c.accounts[0].menu_handler.is_none());
        let both = Config::parse(
            &account(
                "redirect_url = \"http://127.0.0.1:9/o\"\nmenu_handler = \"http://127.0.0.1:9/m\"",
            ),
            "t.toml",
        )
        .expect_err("both");
        assert!(both.to_string().contains("not both"), "{both}");
        let neither = Config::parse(&account(""), "t.toml").expect_err("neither");
        assert!(
            neither.to_string().contains("menu_handler or redirect_url"),
            "{neither}"
        );
        let public = Config::parse(&account("redirect_url = \"http://8.8.8.8/o\""), "t.toml")
            .expect_err("public address");
        assert!(public.to_string().contains("redirect_url"), "{public}");
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded(DEFAULT_DEMO_TOKEN);
        assert_eq!(c.origin, "<embedded>");
        assert_eq!(c.workers, 2);
        assert_eq!(c.accounts.len(), 1);
        let a = &c.accounts[0];
        assert_eq!((a.name.as_str(), a.path.as_str()), ("demo", "/weixin"));
        assert_eq!(a.token.expose(), DEFAULT_DEMO_TOKEN);
        assert!(a.aes_key.is_none() && !a.encrypted_only);
        let rules: Vec<_> = a.rules.iter().map(|r| (r.name.as_str(), r.line)).collect();
        assert_eq!(rules, [("welcome", 12), ("echo", 18)]);
        assert_eq!(a.rules[0].conditions.event.as_deref(), Some("subscribe"));
        assert_eq!(a.rules[1].conditions.msg_type.as_deref(), Some("text"));
        assert!(c.account_for_path("/weixin").is_some());
        assert!(c.account_for_path("/weixin/").is_none());
    }

    #[test]
    fn embedded_inserts_any_token_verbatim() {
        for token in [
            "abc123",
            r#"quo"te"#,
            r"back\slash",
            r#"\""#,
            r#"""""#,
            "'single'",
            "{TOKEN}",
            "ünïcödé中文",
            r"\u0041",
        ] {
            let c = Config::embedded(token);
            assert_eq!(c.accounts[0].token.expose(), token, "token {token:?}");
        }
    }

    #[test]
    fn embedded_refused_token_falls_back_to_demo() {
        for token in ["", "with space", "tab\there", "new\nline", "nul\0"] {
            let c = Config::embedded(token);
            assert_eq!(
                c.accounts[0].token.expose(),
                DEFAULT_DEMO_TOKEN,
                "token {token:?}"
            );
            assert_eq!(c.accounts[0].rules.len(), 2);
        }
    }

    #[test]
    fn check_token_cases() {
        assert_eq!(check_token("abc"), Ok(()));
        assert_eq!(check_token(r#"a"b\c"#), Ok(()));
        assert!(check_token("").is_err());
        assert!(check_token("a b").is_err());
        assert!(check_token("a\u{7f}").is_err());
        assert!(check_token("a\u{3000}b").is_err()); // ideographic space
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(FULL, "full.toml").unwrap();
        assert_eq!(c.listen.as_deref(), Some("/run/weixin-fcgi.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!((c.workers, c.max_conns, c.max_body), (2, 256, 65536));
        assert_eq!(c.timestamp_window, 300);
        assert_eq!(c.io_timeout, Duration::from_millis(5000));
        assert_eq!(c.text_max_bytes, 2048);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.idle_exit, 0);
        let a = &c.accounts[0];
        assert_eq!(
            (a.name.as_str(), a.path.as_str(), a.token.expose()),
            ("shop", "/weixin", "change-me")
        );
        let rules: Vec<_> = a
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.line, reply_kind(&r.action)))
            .collect();
        assert_eq!(
            rules,
            [
                ("welcome", 22, "text"),
                ("menu-news", 28, "news"),
                ("help", 37, "text"),
                ("price", 42, "text"),
                ("echo", 47, "text"),
                ("voice", 52, "text"),
                ("image-back", 57, "image"),
                ("agent", 62, "transfer"),
                ("ignore-unsubscribe", 67, "none"),
                ("fallback", 73, "text"),
            ]
        );
        let news = &a.rules[1];
        assert_eq!(news.conditions.event.as_deref(), Some("CLICK"));
        assert_eq!(news.conditions.event_key.as_deref(), Some("NEWS"));
        match &news.action {
            Action::Reply(ReplyTemplate::News { articles }) => {
                assert_eq!(articles.len(), 1);
                assert_eq!(articles[0].title.fixed_len(), Some("Today".len()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(a.rules[2].conditions.content.as_deref(), Some("help"));
        assert_eq!(a.rules[3].conditions.contains.as_deref(), Some("price"));
        assert_eq!(a.rules[4].conditions.prefix.as_deref(), Some("echo "));
        match &a.rules[6].action {
            Action::Reply(ReplyTemplate::Image { media_id }) => {
                assert_eq!(media_id.fields().collect::<Vec<_>>(), ["MediaId"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &a.rules[7].action {
            Action::Reply(ReplyTemplate::TransferCustomerService { kf_account }) => {
                assert!(kf_account.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        let fallback = &a.rules[9].conditions;
        assert!(fallback.msg_type.is_none() && fallback.content.is_none());
        assert!(fallback.fields.is_empty());
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::load(&fixture("minimal.toml")).unwrap();
        assert!(c.origin.ends_with("minimal.toml"));
        assert_eq!(c.listen, None);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!((c.workers, c.max_conns, c.max_body), (2, 256, 65536));
        assert_eq!(c.timestamp_window, 300);
        assert_eq!(c.io_timeout, Duration::from_millis(5000));
        assert_eq!(c.text_max_bytes, 2048);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.idle_exit, 0);
        let a = &c.accounts[0];
        assert_eq!((a.name.as_str(), a.path.as_str()), ("/weixin", "/weixin"));
        assert!(a.app_id.is_none() && a.aes_key.is_none() && a.previous_aes_key.is_none());
        assert!(!a.encrypted_only && a.rules.is_empty());
    }

    #[test]
    fn every_setting_and_rule_form() {
        let text = r#"
            listen = "127.0.0.1:9000"
            socket_mode = 0o600
            workers = 64
            max_conns = 1
            max_body = 512
            timestamp_window = 0
            io_timeout_ms = 100
            text_max_bytes = 65536
            log_level = "debug"
            idle_exit = 30

            [[account]]
            path = "/a"
            token = "tok"
            app_id = "wx0123"
            encrypted_only = false

            [[account.rule]]
            fields = { ScanType = "qrcode", "Odd Name" = "x" }
            event_key = ""
            [account.rule.reply]
            type = "video"
            media_id = "m"

            [[account.rule]]
            reply.type = "music"
            reply.thumb_media_id = "t"

            [[account.rule]]
            reply = { type = "voice", media_id = "{MediaId}" }

            [[account.rule]]
            reply = { type = "transfer_customer_service", kf_account = "kf@x" }

            [[account.rule]]
            msg_type = "event"
            reply = { type = "news", articles = [
                { title = "1" }, { title = "2" }, { title = "3" }, { title = "4" },
                { title = "5" }, { title = "6" }, { title = "7" }, { title = "8", url = "u" },
            ] }

            [[account]]
            name = "second"
            path = "/b"
            token = "tok2"
        "#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!((c.workers, c.max_conns, c.max_body), (64, 1, 512));
        assert_eq!((c.timestamp_window, c.idle_exit), (0, 30));
        assert_eq!(c.io_timeout, Duration::from_millis(100));
        assert_eq!(c.text_max_bytes, 65536);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.accounts.len(), 2);
        let a = &c.accounts[0];
        assert_eq!(a.app_id.as_deref(), Some("wx0123"));
        let kinds: Vec<_> = a.rules.iter().map(|r| reply_kind(&r.action)).collect();
        assert_eq!(kinds, ["video", "music", "voice", "transfer", "news"]);
        let names: Vec<_> = a.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["rule[0]", "rule[1]", "rule[2]", "rule[3]", "rule[4]"]
        );
        let lines: Vec<_> = a.rules.iter().map(|r| r.line).collect();
        assert_eq!(lines, [19, 26, 30, 33, 36]);
        let fields = &a.rules[0].conditions.fields;
        assert_eq!(
            fields,
            &[
                ("ScanType".to_string(), "qrcode".to_string()),
                ("Odd Name".into(), "x".into())
            ]
        );
        assert_eq!(a.rules[0].conditions.event_key.as_deref(), Some(""));
        match &a.rules[4].action {
            Action::Reply(ReplyTemplate::News { articles }) => assert_eq!(articles.len(), 8),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            c.account_for_path("/b").map(|a| a.name.as_str()),
            Some("second")
        );
    }

    #[test]
    fn socket_mode_forms() {
        let cases: &[(&str, Option<u32>)] = &[
            (r#""0660""#, Some(0o660)),
            (r#""660""#, Some(0o660)),
            (r#""0""#, Some(0)),
            (r#""0777""#, Some(0o777)),
            ("0o640", Some(0o640)),
            (r#""999""#, None),
            (r#""1777""#, None),
            (r#""07777""#, None),
            (r#""""#, None),
            (r#""rw-rw----""#, None),
            (r#""0o660""#, None),
            ("660", None),
            ("0o1777", None),
            ("true", None),
        ];
        for &(value, want) in cases {
            let text = format!("socket_mode = {value}\n[[account]]\npath = \"/\"\ntoken = \"t\"\n");
            let got = Config::parse(&text, "t.toml");
            match want {
                Some(mode) => assert_eq!(got.unwrap().socket_mode, mode, "{value}"),
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(
                        (e.line, e.key.as_deref()),
                        (Some(1), Some("socket_mode")),
                        "{value}"
                    );
                }
            }
        }
    }

    /// One bad config: where the error must point and what it must say.
    struct Bad {
        text: &'static str,
        line: Option<usize>,
        key: Option<&'static str>,
        message: &'static str,
    }

    /// Every secret in these texts starts with `S3cret`; no error may repeat it.
    const BAD: &[Bad] = &[
        Bad {
            text: "[[account]]\npath = \"/w\"\n",
            line: Some(1),
            key: Some("account[0].token"),
            message: "missing required key",
        },
        Bad {
            text: "[[account]]\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("account[0].path"),
            message: "missing required key",
        },
        Bad {
            text: "workers = 2\n",
            line: None,
            key: Some("account"),
            message: "at least one [[account]] is required",
        },
        Bad {
            text: "account = []\n",
            line: Some(1),
            key: Some("account"),
            message: "at least one [[account]] is required",
        },
        Bad {
            text: "[account]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("account"),
            message: "expected an array of tables ([[account]]), found table",
        },
        Bad {
            text: "workers = 2\nworker = 3\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(2),
            key: Some("worker"),
            message: "unknown key (allowed here: listen, socket_mode,",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\ntokne = \"S3cretTypo\"\n",
            line: Some(4),
            key: Some("account[0].tokne"),
            message: "unknown key (allowed here: name, path, token,",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n\"my key\" = 1\n",
            line: Some(4),
            key: Some("account[0].\"my key\""),
            message: "unknown key",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "none" }
[[account.rule]]
name = "x"
msgtype = "text"
reply = { type = "none" }
"#,
            line: Some(8),
            key: Some("account[0].rule[1].msgtype"),
            message: "unknown key (allowed here: name, msg_type,",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "hi",
  media_id = "x" }
"#,
            line: Some(6),
            key: Some("account[0].rule[0].reply.media_id"),
            message: "unknown key (allowed here: type, content)",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
[account.rule.reply]
type = "text"
content = "hi"
colour = "red"
"#,
            line: Some(8),
            key: Some("account[0].rule[0].reply.colour"),
            message: "unknown key",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [
  { title = "a", link = "b" },
] }
"#,
            line: Some(6),
            key: Some("account[0].rule[0].reply.articles[0].link"),
            message: "unknown key (allowed here: title, description, pic_url, url)",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "txt", content = "hi" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.type"),
            message: "unknown reply type \"txt\" (expected one of: text, image,",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { content = "hi" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.type"),
            message: "missing required key",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"

[[account.rule]]
name = "no reply"
msg_type = "text"
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply"),
            message: "missing required key (write reply = { type = \"none\" }",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = "hello"
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply"),
            message: "expected a table, found string",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "You said: {Con tent" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.content"),
            message: "invalid template: invalid character ' ' in field name at character 15",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "image", media_id = "{MediaId" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.media_id"),
            message: "invalid template: unclosed \"{\" at character 1",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.content"),
            message: "must not be empty",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [] }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.articles"),
            message: "a news reply needs 1 to 8 articles",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [{ title = "1" }, { title = "2" }, { title = "3" },
  { title = "4" }, { title = "5" }, { title = "6" }, { title = "7" }, { title = "8" },
  { title = "9" }] }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.articles"),
            message: "a news reply needs 1 to 8 articles",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [{ url = "u" }] }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.articles[0].title"),
            message: "missing required key",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "music", title = "t" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].reply.thumb_media_id"),
            message: "missing required key",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
fields = { MsgId = 1 }
reply = { type = "none" }
"#,
            line: Some(5),
            key: Some("account[0].rule[0].fields.MsgId"),
            message: "expected a string, found integer",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
rule = "x"
"#,
            line: Some(4),
            key: Some("account[0].rule"),
            message: "expected an array of tables ([[account.rule]]), found string",
        },
        Bad {
            text: r#"[[account]]
name = "shop"
path = "/weixin"
token = "S3cretTok"

[[account]]
name = "blog"
path = "/weixin"
token = "S3cretTok2"
"#,
            line: Some(8),
            key: Some("account[1].path"),
            message: "path \"/weixin\" is already used by account[0] (\"shop\", line 3)",
        },
        Bad {
            text: "[[account]]\npath = \"weixin\"\ntoken = \"S3cretTok\"\n",
            line: Some(2),
            key: Some("account[0].path"),
            message: "must start with \"/\"",
        },
        Bad {
            text: "[[account]]\npath = \"/w?x=1\"\ntoken = \"S3cretTok\"\n",
            line: Some(2),
            key: Some("account[0].path"),
            message: "must be a plain path",
        },
        Bad {
            text: r#"[[account]]
name = "shop"
path = "/w"
token = "S3cretTok"
aes_key = "S3cretKeyabcdefghijklmnopqrstuvwxyz01234567"
"#,
            line: Some(5),
            key: Some("account[0].aes_key"),
            message: "aes_key requires app_id (account \"shop\")",
        },
        Bad {
            text: r#"[[account]]
path = "/w"
token = "S3cretTok"
app_id = "wx1"
previous_aes_key = "S3cretKeyabcdefghijklmnopqrstuvwxyz01234567"
"#,
            line: Some(5),
            key: Some("account[0].previous_aes_key"),
            message: "previous_aes_key requires aes_key (account \"/w\")",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\nencrypted_only = true\n",
            line: Some(4),
            key: Some("account[0].encrypted_only"),
            message: "encrypted_only = true requires aes_key",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\nencrypted_only = \"yes\"\n",
            line: Some(4),
            key: Some("account[0].encrypted_only"),
            message: "expected a boolean (true or false), found string",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"\"\n",
            line: Some(3),
            key: Some("account[0].token"),
            message: "token must not be empty",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cret Tok\"\n",
            line: Some(3),
            key: Some("account[0].token"),
            message: "token must not contain whitespace",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = 12345\n",
            line: Some(3),
            key: Some("account[0].token"),
            message: "expected a string, found integer",
        },
        Bad {
            text: "workers = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("workers"),
            message: "must be between 1 and 64",
        },
        Bad {
            text: "\n\nworkers = 65\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(3),
            key: Some("workers"),
            message: "must be between 1 and 64",
        },
        Bad {
            text: "workers = -1\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("workers"),
            message: "must be between 1 and 64",
        },
        Bad {
            text: "workers = \"2\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("workers"),
            message: "expected an integer, found string",
        },
        Bad {
            text: "workers = 2.0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("workers"),
            message: "expected an integer, found float",
        },
        Bad {
            text: "max_conns = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("max_conns"),
            message: "must be at least 1",
        },
        Bad {
            text: "max_body = 100\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("max_body"),
            message: "must be between 512 and 16777216",
        },
        Bad {
            text: "io_timeout_ms = 5\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("io_timeout_ms"),
            message: "must be at least 100",
        },
        Bad {
            text: "text_max_bytes = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("text_max_bytes"),
            message: "must be between 1 and 65536",
        },
        Bad {
            text: "log_level = \"verbose\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("log_level"),
            message: "must be one of: error, warn, info, debug",
        },
        Bad {
            text: "socket_mode = \"999\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("socket_mode"),
            message: "must be an octal mode",
        },
        Bad {
            text: "listen = \"\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
            line: Some(1),
            key: Some("listen"),
            message: "must not be empty",
        },
        Bad {
            text: "workers = 2\nlisten = \"/run/x.sock\n[[account]]\n",
            line: Some(2),
            key: None,
            message: "invalid TOML: ",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\ntoken = \"S3cretTok\"\n",
            line: Some(4),
            key: None,
            message: "invalid TOML: duplicate key",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\n",
            line: Some(3),
            key: None,
            message: "invalid TOML: ",
        },
        Bad {
            text: "[[account]]\npath = \"/w\"\ntoken = \"S3cret\\qTok\"\n",
            line: Some(3),
            key: None,
            message: "invalid TOML: ",
        },
    ];

    #[test]
    fn errors_name_line_and_key() {
        for (i, case) in BAD.iter().enumerate() {
            let e = match Config::parse(case.text, "test.toml") {
                Ok(_) => panic!("case {i} parsed:\n{}", case.text),
                Err(e) => e,
            };
            let shown = e.to_string();
            assert_eq!(e.file, "test.toml", "case {i}: {shown}");
            assert_eq!(e.line, case.line, "case {i}: {shown}");
            assert_eq!(e.key.as_deref(), case.key, "case {i}: {shown}");
            assert!(e.message.starts_with(case.message), "case {i}: {shown}");
            assert!(
                !shown.contains("S3cret"),
                "case {i} leaks a secret: {shown}"
            );
            assert!(
                !format!("{e:?}").contains("S3cret"),
                "case {i} leaks a secret: {e:?}"
            );
        }
    }

    /// One account with one rule whose reply is `reply` (and `top`, `account_extra`).
    fn late_config(top: &str, account_extra: &str, reply: &str) -> String {
        format!(
            "{top}\n[[account]]\npath = \"/w\"\ntoken = \"t\"\n{account_extra}\n\
             [[account.rule]]\nname = \"bot\"\nreply = {reply}\n"
        )
    }

    fn late_of(c: &Config) -> &crate::rules::Late {
        match &c.accounts[0].rules[0].action {
            Action::Forward(f) => f.late.as_ref().expect("late"),
            _ => panic!("not a forward rule"),
        }
    }

    #[test]
    fn late_keys_and_their_defaults() {
        use crate::rules::{Late, LateMode as Mode};
        let c = Config::parse(
            &late_config(
                "",
                "",
                r#"{ type = "forward", url = "http://127.0.0.1:9/x", late = "next_message" }"#,
            ),
            "t.toml",
        )
        .unwrap();
        let l = late_of(&c);
        assert_eq!(l.mode, Mode::NextMessage);
        assert_eq!(l.text_max_bytes(c.text_max_bytes), 2048);
        assert_eq!(l.more_hint, Late::DEFAULT_MORE_HINT);
        let ReplyTemplate::Text { content } = &l.pending else {
            panic!("pending is text")
        };
        assert_eq!(content.to_string(), Mode::NextMessage.default_pending());
        let Action::Forward(f) = &c.accounts[0].rules[0].action else {
            unreachable!()
        };
        assert_eq!(
            f.timeout,
            Duration::from_millis(60_000),
            "late_timeout_ms default"
        );
        assert_eq!(c.late, LateSettings::default());
        assert_eq!(c.api_base, "https://api.weixin.qq.com");

        let c = Config::parse(
            &late_config(
                "api_base = \"http://127.0.0.1:9/\"\nlate_keep_hours = 24\nlate_max_answers = 50\n\
                 late_max_bytes = 65536\nwechat_attempt_ms = 1000\nstate_file = \"/var/lib/x/late\"",
                "app_id = \"wx1\"\napp_secret = \"S3cret\"",
                r#"{ type = "exec", command = ["/bin/true"], late = "customer_service", late_timeout_ms = 30000,
                     pending = { type = "image", media_id = "M" }, text_max_bytes = 1000, more_hint = "…" }"#,
            ),
            "t.toml",
        )
        .unwrap();
        let l = late_of(&c);
        assert_eq!(l.mode, Mode::CustomerService);
        assert_eq!(l.text_max_bytes(c.text_max_bytes), 1000);
        assert_eq!(l.more_hint, "…");
        assert!(matches!(l.pending, ReplyTemplate::Image { .. }));
        assert_eq!(c.api_base, "http://127.0.0.1:9");
        assert_eq!(c.late.keep, Duration::from_secs(24 * 3600));
        assert_eq!((c.late.max_parts, c.late.max_bytes), (50, 65536));
        assert_eq!(c.late.attempt, Duration::from_millis(1000));
        assert_eq!(
            c.late.state_file.as_deref(),
            Some(Path::new("/var/lib/x/late"))
        );
        // The old name still works.
        let c = Config::parse(
            &late_config(
                "oauth_api_base = \"http://10.0.0.1\"",
                "",
                r#"{ type = "none" }"#,
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.api_base, "http://10.0.0.1");
        // `pending` as a plain string is a text template.
        let c = Config::parse(
            &late_config(
                "",
                "",
                r#"{ type = "forward", url = "http://127.0.0.1:9", late = "next_message", pending = "wait, {Content}" }"#,
            ),
            "t.toml",
        )
        .unwrap();
        assert!(
            matches!(&late_of(&c).pending, ReplyTemplate::Text { content } if content.to_string() == "wait, {Content}")
        );
    }

    #[test]
    fn late_errors_name_the_key() {
        let fwd =
            |extra: &str| format!(r#"{{ type = "forward", url = "http://127.0.0.1:9"{extra} }}"#);
        let cases: &[(String, String, &str, &str)] = &[
            (
                String::new(),
                fwd(r#", late = "later""#),
                "account[0].rule[0].reply.late",
                "must be one of",
            ),
            (
                String::new(),
                fwd(r#", pending = "x""#),
                "account[0].rule[0].reply.pending",
                "only applies with late",
            ),
            (
                String::new(),
                fwd(r#", late = "next_message", timeout_ms = 4500"#),
                "account[0].rule[0].reply.timeout_ms",
                "with late, the call runs up to late_timeout_ms",
            ),
            (
                String::new(),
                fwd(r#", late = "next_message", late_timeout_ms = 999"#),
                "account[0].rule[0].reply.late_timeout_ms",
                "must be between 1000 and 600000",
            ),
            (
                String::new(),
                fwd(r#", late = "next_message", pending = { type = "none" }"#),
                "account[0].rule[0].reply.pending",
                "must be a reply",
            ),
            (
                String::new(),
                fwd(r#", late = "next_message", more_hint = "x", text_max_bytes = 63"#),
                "account[0].rule[0].reply.text_max_bytes",
                "must be between 64",
            ),
            (
                String::new(),
                fwd(r#", late = "customer_service""#),
                "account[0].rule[0].reply.late",
                "late = \"customer_service\" needs the account's app_id and app_secret",
            ),
            (
                "api_base = \"http://127.0.0.1\"\noauth_api_base = \"http://127.0.0.1\"".into(),
                r#"{ type = "none" }"#.into(),
                "oauth_api_base",
                "oauth_api_base is the old name of api_base",
            ),
            (
                "wechat_attempt_ms = 9000".into(),
                r#"{ type = "none" }"#.into(),
                "wechat_attempt_ms",
                "must be between 300 and 5000",
            ),
        ];
        for (top, reply, key, message) in cases {
            let e = Config::parse(&late_config(top, "", reply), "t.toml").unwrap_err();
            assert_eq!(e.key.as_deref(), Some(*key), "{e}");
            assert!(e.message.starts_with(message), "{e}");
            assert!(e.line.is_some(), "{e}");
        }
        // A long hint: at most half of the split size.
        let e = Config::parse(
            &late_config(
                "",
                "",
                &fwd(&format!(
                    r#", late = "next_message", text_max_bytes = 100, more_hint = "{}""#,
                    "x".repeat(60)
                )),
            ),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("account[0].rule[0].reply.more_hint"));
        // customer_service over https needs TLS (this test build has none, unless --features tls).
        let r = Config::parse(
            &late_config(
                "",
                "app_id = \"wx1\"\napp_secret = \"S3cret\"",
                &fwd(r#", late = "customer_service""#),
            ),
            "t.toml",
        );
        assert_eq!(r.is_ok(), cfg!(feature = "tls"), "{r:?}");
        if let Err(e) = r {
            assert!(e.message.contains("no TLS"), "{e}");
            assert!(!e.to_string().contains("S3cret"));
        }
    }

    #[test]
    fn error_display_is_one_line() {
        let e = Config::parse("[[account]]\npath = \"/w\"\n", "weixin-fcgi.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "weixin-fcgi.toml:1: account[0].token: missing required key"
        );
        let e = Config::parse("x = \n", "f.toml").unwrap_err();
        assert!(e.to_string().starts_with("f.toml:1: invalid TOML: "), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn load_reports_file_and_line() {
        let e = Config::load(Path::new("/nonexistent/weixin-fcgi.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/weixin-fcgi.toml");
        assert_eq!((e.line, e.key.as_deref()), (None, None));
        assert!(e.message.starts_with("cannot read: "), "{e}");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/weixin-fcgi.toml: cannot read: "),
            "{e}"
        );

        let path = fixture("unknown-key.toml");
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.file, path.display().to_string());
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("account[0].tokne"))
        );

        let e = Config::load(&fixture("syntax-error.toml")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), None));
        assert!(!e.to_string().contains("S3cret"), "{e}");
    }

    #[test]

    fn aes_key_accepted() {
        let c = Config::load(&fixture("safe-mode.toml")).unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.app_id.as_deref(), Some("wxb11529c136998cb6"));
        assert!(a.aes_key.is_some() && a.previous_aes_key.is_none() && a.encrypted_only);
        assert!(!format!("{c:?}").contains("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"));
        assert!(!format!("{c:?}").contains("pamtest"));
    }

    #[test]

    fn bad_aes_key_never_shown() {
        let cases = [
            (
                "aes_key",
                "S3cretShort",
                "EncodingAESKey must be exactly 43 characters",
            ),
            (
                "aes_key",
                "S3cret!!abcdefghijklmnopqrstuvwxyz012345678",
                "EncodingAESKey must be base64",
            ),
            (
                "previous_aes_key",
                "S3cretShort",
                "EncodingAESKey must be exactly 43 characters",
            ),
        ];
        for (key, value, message) in cases {
            let mut text = String::from(
                "[[account]]\npath = \"/w\"\ntoken = \"t\"\napp_id = \"wx1\"\naes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n",
            );
            if key == "aes_key" {
                text = text.replace("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", value);
            } else {
                text.push_str(&format!("previous_aes_key = \"{value}\"\n"));
            }
            let e = Config::parse(&text, "t.toml").unwrap_err();
            let line = if key == "aes_key" { 5 } else { 6 };
            assert_eq!(e.line, Some(line), "{e}");
            assert_eq!(e.key, Some(format!("account[0].{key}")), "{e}");
            assert!(e.message.starts_with(message), "{e}");
            assert!(!e.to_string().contains("S3cret"), "{e}");
        }
    }
}
