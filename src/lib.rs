//! weixin-fcgi: a FastCGI responder for WeChat Official Account message callbacks.
//!
//! Layers, each knowing nothing of the ones above it:
//! - [`fastcgi`]: FastCGI 1.0 responder transport (records, params, worker pool). No WeChat.
//! - [`wechat`]: the callback protocol (signature, message parsing, reply rendering, safe-mode
//!   crypto). No sockets.
//! - [`config`] and [`rules`]: the TOML configuration and the rule/template engine between them.
//! - [`app`]: the FastCGI handler that wires a request through an account's rules.

pub mod app;
pub mod cli;
pub mod config;
pub mod escape;
pub mod fastcgi;
pub mod forward;
pub mod listener;
pub mod log;
pub mod memory;
pub mod notify;
pub mod query;
pub mod ratelimit;
pub mod replay;
pub mod rules;
pub mod state;
pub mod wechat;
pub mod wxapi;
