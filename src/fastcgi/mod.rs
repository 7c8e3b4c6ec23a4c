//! FastCGI 1.0 responder transport. Knows nothing of WeChat.
//!
//! - [`record`]: record framing and name-value pairs over borrowed bytes.
//! - [`server`]: the worker pool that serves the RESPONDER role on a listening socket.
//! - [`client`]: a small blocking client (for `weixin-fcgi send`, tests and benchmarks).

pub mod client;
pub mod record;
pub mod server;

pub use server::{
    Handler, Listener, Outcome, Pending, Request, Response, Server, ServerConfig, ServerHandle,
    Stats, Stream,
};
