//! The TOML configuration: global settings, accounts, and each account's ordered rules.
//!
//! Errors name the file, the line and the key (`weixin-fcgi.toml:12: account[0].rule[2].reply.type: …`)
//! and never include secrets (token, EncodingAESKey, AppSecret).

use crate::rules::{Action, ArticleTemplate, Conditions, ReplyTemplate, Rule, Template};
use crate::wechat::crypto::AesKey;
use std::ops::Range;
use std::path::Path;
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

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    /// Includes personal data (message text, OpenIDs).
    Debug,
}

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
    /// `text_max_bytes`: text reply Content cap (default 2048).
    pub text_max_bytes: usize,
    /// `log_level`: "error" | "warn" | "info" (default) | "debug".
    pub log_level: LogLevel,
    /// `idle_exit`: seconds without requests after which a socket-activated process exits (default 0 = off).
    pub idle_exit: u64,
    /// `[[account]]` tables, in file order.
    pub accounts: Vec<Account>,
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
    /// `[[account.rule]]` tables in match order.
    pub rules: Vec<Rule>,
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
const DEFAULT_TEXT_MAX_BYTES: u64 = crate::wechat::reply::DEFAULT_TEXT_MAX_BYTES as u64;
const MAX_TEXT_MAX_BYTES: u64 = 65536;
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
        // Parsed into spanned tables (not serde structs) so that every error — syntax, type,
        // unknown key, bad value — can name its line and key path the same way.
        let root = DeTable::parse(text).map_err(|e| doc.syntax_error(&e))?;
        let top = Table {
            doc: &doc,
            table: root.get_ref(),
            path: String::new(),
            span: None,
        };
        read_config(&top)
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
            text_max_bytes: DEFAULT_TEXT_MAX_BYTES as usize,
            log_level: LogLevel::default(),
            idle_exit: 0,
            accounts: vec![Account {
                name: "demo".to_string(),
                path: "/weixin".to_string(),
                token: Secret(DEFAULT_DEMO_TOKEN.to_string()),
                app_id: None,
                aes_key: None,
                previous_aes_key: None,
                encrypted_only: false,
                rules: Vec::new(),
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
            return Err(self.type_error(key, v, &format!("an array of tables ([[{key}]])")));
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
    "text_max_bytes",
    "log_level",
    "idle_exit",
    "account",
];

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

    Ok(Config {
        origin: top.doc.origin.to_string(),
        listen,
        socket_mode,
        workers,
        max_conns,
        max_body,
        timestamp_window,
        io_timeout: Duration::from_millis(io_timeout_ms),
        text_max_bytes,
        log_level,
        idle_exit,
        accounts,
    })
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
        rules,
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
