//! A real `redis-server` (Debian's package, installed by tests/run.sh) for shared state.

use super::{TempDir, free_port, require_tool, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
/// A `redis-server` of its own on a free loopback port and a Unix socket in a temp dir, without
/// persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        require_tool("redis-server");
        let mut r = RedisServer {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The Unix socket path (for `redis+unix://`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts the server again (same port and socket) after [`RedisServer::stop`]: empty, as
    /// nothing is persisted.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--unixsocket")
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_for(Duration::from_secs(10), || redis_ping(port)),
            "redis-server did not answer PING on port {port}; log:\n{}",
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// Kills the server (SIGKILL: as if the host went away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when a Redis on 127.0.0.1:`port` answers PING.
pub fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .map(|n| &buf[..n] == b"+PONG\r\n")
            .unwrap_or(false)
}
