//! A small FastCGI 1.0 responder for a fixed pool of threads behind nginx.
//!
//! # Description
//! [`Server::start`] serves the RESPONDER role on a listening Unix or TCP socket with a fixed
//! number of worker threads sharing one epoll instance. Each request reaches a [`Handler`] as
//! a [`Request`] (params and the complete body, borrowed from the worker's buffers) and is
//! answered with a [`Response`] (status, content type, headers, body) written back as CGI
//! output, or later from another thread through a [`Pending`]. Nothing here knows what the
//! application does with the request.
//!
//! Modules: [`record`] (record framing, name-value pairs), [`connection`] (one connection's
//! protocol state: bytes in, steps out, no sockets), [`pool`] (the epoll worker pool),
//! [`socket`] (listeners and streams), [`listen`] (where the listening socket comes from:
//! systemd socket activation, fd 0 as spawn-fcgi passes it, or a path / loopback address),
//! [`notify`] (systemd's `sd_notify`), [`client`] (a blocking client for tools and tests).
//!
//! # Protocol subset
//! - Roles: RESPONDER only. BEGIN_REQUEST for AUTHORIZER or FILTER is answered END_REQUEST
//!   with `FCGI_UNKNOWN_ROLE`; DATA records are ignored.
//! - One request per connection at a time (`FCGI_MPXS_CONNS=0`, as nginx uses FastCGI): a
//!   BEGIN_REQUEST for another id while one is active is answered `FCGI_CANT_MPX_CONN`.
//! - `FCGI_KEEP_CONN` is honoured: a kept-alive connection with nothing to read is parked in
//!   epoll, so idle connections never hold a worker.
//! - FCGI_GET_VALUES is answered for `FCGI_MAX_CONNS`, `FCGI_MAX_REQS` (both `max_conns`) and
//!   `FCGI_MPXS_CONNS` (`0`); other names are left out. Unknown management record types are
//!   answered FCGI_UNKNOWN_TYPE.
//! - ABORT_REQUEST for the active request ends it with appStatus 1 without calling the
//!   handler (a request already handed to the handler is answered normally).
//! - The handler sees the request only when STDIN is complete. The response is sent as
//!   STDOUT (never STDERR), then END_REQUEST with appStatus 0, `FCGI_REQUEST_COMPLETE`.
//!
//! # Limits
//! - `max_body` caps STDIN: a larger body is read (up to 16 MiB, then the connection is closed)
//!   and discarded, and the request is answered 413 without calling the handler.
//! - `max_params` caps the PARAMS stream in bytes, and at most 512 params are accepted; beyond
//!   either, or on malformed records (wrong version, pairs running past their stream, records
//!   out of order, a short BEGIN_REQUEST), the connection is closed and logged.
//! - `max_conns` caps open connections; further ones are closed on accept.
//! - `io_timeout` bounds reading the rest of a started request and writing a response: a peer
//!   that stalls mid-request holds a worker at most that long. (Through nginx, which buffers
//!   whole requests, this never happens.)
//! - Buffers are per worker, reused, and shrunk back after an unusually large request.
//!
//! # Logging
//! Through the [`log`] facade, one line per event, prefixed `fastcgi:`; the application
//! chooses the logger.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod connection;
pub mod listen;
pub mod notify;
pub mod pool;
pub mod record;
pub mod response;
pub mod socket;

pub use connection::Request;
pub use pool::{Handler, Outcome, Pending, Server, ServerConfig, ServerHandle, Stats};
pub use response::Response;
pub use socket::{Listener, Stream};
