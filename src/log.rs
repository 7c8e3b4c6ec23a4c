//! One-line logs to stderr (journald adds time and unit). Secrets never reach here.

use crate::config::LogLevel;
use std::sync::atomic::{AtomicU8, Ordering};

/// True when stderr is connected to the journal (systemd sets `$JOURNAL_STREAM`).
static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the global log level.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// True when messages at `level` are printed.
pub fn enabled(level: LogLevel) -> bool {
    (level as u8) <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level` (prefixed with the syslog priority journald understands).
pub fn write(level: LogLevel, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if !enabled(level) {
        return;
    }
    // journald reads a `<N>` priority prefix; on a terminal a word reads better.
    let journal = *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some());
    let prio = match (journal, level) {
        (true, LogLevel::Error) => "<3>",
        (true, LogLevel::Warn) => "<4>",
        (true, LogLevel::Info) => "<6>",
        (true, LogLevel::Debug) => "<7>",
        (false, LogLevel::Error) => "error: ",
        (false, LogLevel::Warn) => "warning: ",
        (false, LogLevel::Info) => "",
        (false, LogLevel::Debug) => "debug: ",
    };
    // One write(2) per line, so lines from several workers never interleave.
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        line.push_str(prio);
        let _ = std::fmt::Write::write_fmt(&mut *line, args);
        // One line: a newline inside a value must not forge a second log entry.
        if line[prio.len()..].contains(['\n', '\r']) {
            let body = line.split_off(prio.len()).replace(['\n', '\r'], " ");
            line.push_str(&body);
        }
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if line.capacity() > 4096 {
            line.shrink_to(1024);
        }
    });
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { if $crate::log::enabled($crate::config::LogLevel::Debug) { $crate::log::write($crate::config::LogLevel::Debug, format_args!($($t)*)) } } }
