//! weixin-fcgi: a FastCGI responder for WeChat Official Account message callbacks.
//!
//! Layers, each knowing nothing of the ones above it:
//! - the FastCGI transport is a crate of its own, [`fastcgi_responder`] (re-exported as
//!   [`fastcgi`]): records, the connection state machine, the worker pool, socket activation.
//!   It knows no WeChat word.
//! - [`wechat`]: the callback protocol (signature, message parsing, reply rendering, safe-mode
//!   crypto). No sockets. [`logger`]: the one-line logger behind the `log` facade. [`state`]:
//!   the key/value store interface and its in-process store; [`wxapi`] (→ state): the WeChat
//!   API client.
//! - [`rules`] (→ wechat): which rule answers a message, and its reply template or forward
//!   target; [`config`] (→ rules, wechat, logger): the TOML configuration.
//! - [`forward`] (→ config, rules, wechat, state, wxapi): answers from a backend or a program, on its own
//!   threads; it completes a request through a callback and never sees a FastCGI type.
//! - [`replay`] (→ state, logger): the replay cache of signed POSTs. [`allocator`]: tuning and
//!   trimming glibc's malloc.
//! - [`app`] (→ all of those and the transport): the FastCGI handler that wires a request
//!   through an account's rules. `main` and [`cli`] on top.
//!
//! `tests/layers.rs` reads the `use crate::` lines of `src/` and fails on a cycle or a
//! wrong-way import.
#![deny(clippy::undocumented_unsafe_blocks)]

pub use fastcgi_responder as fastcgi;

pub mod allocator;
pub mod app;
pub mod cli;
pub mod config;
pub mod forward;
pub mod logger;
pub mod query;
pub mod replay;
pub mod rules;
pub mod state;
pub mod status;
pub mod wechat;
pub mod wxapi;
