//! The binary under test as a process: on a temp socket ([`Responder`]), or socket-activated
//! on a socket the test holds as systemd would ([`HeldSocket`], [`spawn_on`]).

use super::{TempDir, bin, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `weixin-fcgi` on a temp Unix socket, killed on drop.
pub struct Responder {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Responder {
    /// Writes `config_toml` and starts the binary with `--config` and `--listen`.
    pub fn start(config_toml: &str) -> Responder {
        let dir = TempDir::new("responder");
        let config = dir.join("weixin-fcgi.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let socket = dir.join("weixin-fcgi.sock");
        let log = dir.join("stderr.log");
        let child = Command::new(bin())
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn weixin-fcgi");
        let r = Responder {
            child,
            socket,
            config,
            log,
            dir,
        };
        assert!(
            // The file appears at bind(), just before listen(): wait for a connect to succeed.
            wait_for(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&r.socket).is_ok()
            }),
            "weixin-fcgi did not create its socket; stderr:\n{}",
            r.stderr()
        );
        r
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        kill(self.pid(), rustix::process::Signal::TERM);
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS and VmHWM (peak) of `pid` in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A listening Unix socket held by the test, as systemd holds the `.socket` unit's socket
/// across service restarts: connections queue in the kernel while no process serves it.
pub struct HeldSocket {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
}

impl HeldSocket {
    pub fn bind(dir: &TempDir) -> HeldSocket {
        let path = dir.join("held.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind held socket");
        HeldSocket { listener, path }
    }

    /// A new descriptor for the same socket, to hand to a child.
    pub fn fd(&self) -> std::os::fd::OwnedFd {
        self.listener.try_clone().expect("dup held socket").into()
    }

    /// True when a connection is waiting in the accept queue (within `timeout`).
    pub fn pending(&self, timeout: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
    }
}

/// A spawned process with its stderr in a file; killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn term(&self) {
        kill(self.pid(), rustix::process::Signal::TERM);
    }

    pub fn hup(&self) {
        kill(self.pid(), rustix::process::Signal::HUP);
    }

    /// Waits up to `timeout` for the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary as systemd socket activation does: `fd` as fd 3, `LISTEN_FDS=1` and
/// `LISTEN_PID` = the binary's own pid.
///
/// `LISTEN_PID` must equal the pid of the process that reads it, which is only known after
/// fork. Rather than setting it in a `pre_exec` hook (the environment is not async-signal-safe
/// to touch there), a `/bin/sh` does it: `fd` arrives as the shell's stdin (plain `Stdio`, no
/// unsafe code), the shell moves it to fd 3, points stdin at /dev/null, exports
/// `LISTEN_PID=$$` and `exec`s the binary, which keeps the shell's pid.
pub fn spawn_activated(
    fd: impl Into<Stdio>,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
    log: &Path,
) -> Proc {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec 3<&0 </dev/null; LISTEN_PID=$$; LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(fd)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn activated weixin-fcgi");
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// [`spawn_activated`] on `held` with `--config config`.
pub fn spawn_on(held: &HeldSocket, config: &Path, log: &Path) -> Proc {
    spawn_activated(
        held.fd(),
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
        &[],
        log,
    )
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}
