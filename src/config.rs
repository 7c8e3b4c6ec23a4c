//! The TOML configuration: global settings, accounts, and each account's ordered rules.
//!
//! Errors name the file, the line and the key (`weixin-fcgi.toml:12: account[0].rule[2].reply.type: …`)
//! and never include secrets (token, EncodingAESKey, AppSecret).

use crate::rules::Rule;
use crate::wechat::crypto::AesKey;
use std::path::Path;
use std::time::Duration;

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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let _ = path;
        todo!()
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let _ = (text, origin);
        todo!()
    }

    /// The embedded demo config with `token` substituted.
    pub fn embedded(token: &str) -> Config {
        let _ = token;
        todo!()
    }

    /// The account whose `path` equals `path` exactly.
    pub fn account_for_path(&self, path: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.path == path)
    }
}
