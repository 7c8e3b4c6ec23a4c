//! Late and long answers: a `forward`/`exec` rule with `late = "next_message"` or
//! `"customer_service"` lets the backend run past WeChat's three 5-second attempts, answers the
//! last attempt with `pending`, and delivers the answer afterwards — on the user's next message
//! or through the customer-service message API — split into parts when it is longer than a
//! text message may be.
//!
//! This file holds the settings (from the config); the delivery logic is in [`hub`].

use crate::rules::{ReplyTemplate, Template};
use std::path::PathBuf;
use std::time::Duration;

pub mod hub;
pub mod persist;

/// How a late answer reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kept for the user; their next message is answered with it.
    NextMessage,
    /// Pushed with the customer-service message API; kept (as `NextMessage`) when that fails.
    CustomerService,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NextMessage => "next_message",
            Mode::CustomerService => "customer_service",
        }
    }
}

/// A rule's `late` settings.
#[derive(Debug, Clone)]
pub struct Late {
    /// `late`.
    pub mode: Mode,
    /// `pending`: the reply to WeChat's last attempt while the answer is not ready.
    pub pending: ReplyTemplate,
    /// `text_max_bytes` of the rule; 0: the global one. Longer text answers are split.
    pub text_max_bytes: usize,
    /// `more_hint`: appended to a part delivered on a message when more parts follow.
    pub more_hint: String,
}

impl Late {
    /// The split size: the rule's `text_max_bytes`, else `global`.
    pub fn text_max_bytes(&self, global: usize) -> usize {
        if self.text_max_bytes == 0 {
            global
        } else {
            self.text_max_bytes
        }
    }
}

/// Default `pending` text per mode (the people who read it use WeChat in Chinese).
pub fn default_pending(mode: Mode) -> &'static str {
    match mode {
        Mode::NextMessage => "正在思考，请稍候片刻后发送任意消息获取回答。",
        Mode::CustomerService => "正在思考，回答稍后会自动发送给您。",
    }
}

/// Default `more_hint`.
pub const DEFAULT_MORE_HINT: &str = "\n（回复任意消息查看后续）";
/// Longest `more_hint`, in bytes.
pub const MAX_MORE_HINT: usize = 256;
/// Default and bounds of `late_timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Global settings of late answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
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
    /// `$STATE_DIRECTORY/late-answers` under systemd; none otherwise).
    pub state_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keep: Duration::from_secs(48 * 3600),
            max_parts: 1000,
            max_bytes: 1 << 20,
            attempt: Duration::from_millis(5000),
            state_file: None,
        }
    }
}

/// A `pending` given as a plain string: a text reply.
pub fn text_template(text: &str) -> Result<ReplyTemplate, String> {
    Template::parse(text)
        .map(|content| ReplyTemplate::Text { content })
        .map_err(|e| e.0)
}
