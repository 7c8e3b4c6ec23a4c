//! The test harness shared by the integration tests: temp dirs, process control (the real
//! binary on a temp socket, socket activation with a held socket, signals), a real nginx with
//! the repository's snippet, and WeChat-side helpers (signing, messages, reply checks).
//!
//! Test files include it as `pub mod common;`: each test binary uses part of it, and a `pub`
//! module is not reported as dead code for the parts one binary leaves out.
//! Tests needing nginx or cgi-fcgi expect them installed: `bash tests/run.sh` installs them.

pub mod fake_http;
mod nginx;
mod process;
mod redis;
mod wechat;
mod xml;

pub use nginx::*;
pub use process::*;
pub use redis::*;
pub use wechat::*;
pub use xml::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_weixin-fcgi")
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wxfcgi-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Fails with a clear message when a system tool is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).is_file();
    assert!(
        found,
        "{name} is not installed: run `bash tests/run.sh`, which installs it"
    );
}

/// Aborts the whole test binary if the test holding it is still running after `limit`, so a
/// hung signal or activation test fails loudly instead of stalling the suite. Dropping the
/// guard disarms it.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("test {name}: hard timeout of {limit:?} exceeded; aborting");
            std::process::exit(124);
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
