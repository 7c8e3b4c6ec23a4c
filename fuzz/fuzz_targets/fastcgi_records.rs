//! The FastCGI record/stream parser, driven through the real per-connection state machine.
//!
//! The server's connection loop (`fastcgi::server`) reads from a real socket with epoll and
//! deadlines, so it is not a pure function of its input. Rather than model it, this target
//! starts the real [`Server`] once, with the real [`App`] handler, on a Unix socket in a temp
//! directory, and for each input:
//! 1. walks the input with the codec (`parse_record`, `Pairs`, `BeginRequest::parse`) and
//!    checks its invariants in-process;
//! 2. connects, writes the input as the peer (nginx) would, half-closes, and reads until the
//!    server closes. The server must close (never hang: bounded by a read timeout well above
//!    `io_timeout`), and everything it sent must be well-formed FastCGI records.
//!
//! A panic in a worker thread aborts the process (libFuzzer's panic hook), so it is found too.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use weixin_fcgi::app::App;
use weixin_fcgi::config::Config;
use weixin_fcgi::fastcgi::record::{self, BeginRequest, Pairs, Parsed, kind};
use weixin_fcgi::fastcgi::{Listener, Server, ServerConfig};
use weixin_fcgi::logger::LogLevel;

/// The same accounts the seeds (`examples/gen_seeds.rs`) are signed for.
pub const CONFIG: &str = r#"
workers = 2
timestamp_window = 0
log_level = "error"

[[account]]
name = "plain"
path = "/weixin"
token = "pamtest"

[[account.rule]]
name = "echo"
msg_type = "text"
reply = { type = "text", content = "You said: {Content}" }

[[account.rule]]
name = "fallback"
reply = { type = "news", articles = [ { title = "{FromUserName}", description = "{Event}", pic_url = "", url = "" } ] }

[[account]]
name = "safe"
path = "/safe"
token = "pamtest"
app_id = "wxb11529c136998cb6"
aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

[[account.rule]]
name = "echo"
reply = { type = "text", content = "{Content}" }
"#;

struct Harness {
    socket: PathBuf,
    _server: Server,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        common::ignore_sigpipe();
        weixin_fcgi::logger::set_level(LogLevel::Error);
        let dir = std::env::temp_dir().join(format!("weixin-fcgi-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("fcgi.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let config = Config::parse(CONFIG, "fuzz.toml").expect("fuzz config");
        let server = Server::start(
            Listener::Unix(listener),
            ServerConfig {
                workers: 2,
                max_conns: 64,
                // Small caps so short inputs reach them.
                max_body: 2048,
                max_params: 2048,
                io_timeout: Duration::from_millis(250),
                idle_timeout: Duration::from_millis(250),
            },
            Arc::new(App::new(config)),
        )
        .expect("server");
        Harness {
            socket,
            _server: server,
        }
    })
}

/// Codec invariants on the raw input.
fn check_codec(mut buf: &[u8]) {
    loop {
        match record::parse_record(buf) {
            Err(_) => return,
            Ok(Parsed::Partial) => return,
            Ok(Parsed::Complete((h, content), used)) => {
                assert_eq!(used, h.record_len());
                assert!(used <= buf.len());
                assert_eq!(content.len(), h.content_len as usize);
                if h.kind == kind::BEGIN_REQUEST {
                    assert_eq!(BeginRequest::parse(content).is_ok(), content.len() >= 8);
                }
                let mut total = 0;
                for pair in Pairs::new(content) {
                    let Ok((n, v)) = pair else { break };
                    total += n.len() + v.len();
                    assert!(total <= content.len());
                }
                buf = &buf[used..];
            }
        }
    }
}

/// Everything the server sent must be whole, well-formed records of the kinds a responder
/// sends, and each STDOUT stream must start with a CGI `Status:` line.
fn check_output(out: &[u8]) {
    let mut rest = out;
    let mut stdout_started = std::collections::HashSet::new();
    while !rest.is_empty() {
        let (h, content, used) = match record::parse_record(rest) {
            Ok(Parsed::Complete((h, c), used)) => (h, c, used),
            other => panic!("server sent a bad or truncated record: {other:?}"),
        };
        match h.kind {
            kind::STDOUT => {
                if !content.is_empty() && stdout_started.insert(h.request_id) {
                    assert!(content.starts_with(b"Status: "), "CGI head missing");
                }
            }
            kind::END_REQUEST => {
                assert_eq!(content.len(), 8);
                stdout_started.remove(&h.request_id);
            }
            kind::GET_VALUES_RESULT | kind::UNKNOWN_TYPE | kind::STDERR => {}
            other => panic!("server sent record type {other}"),
        }
        rest = &rest[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    check_codec(data);

    let mut conn = UnixStream::connect(&h.socket).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The server may close early (malformed input): a failed write is fine.
    let _ = conn.write_all(data);
    let _ = conn.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match conn.read_to_end(&mut out) {
        Ok(_) => {}
        // Closed on us while we were still writing: what it sent before may be cut.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("server neither answered nor closed: {e}"),
    }
    check_output(&out);
});
