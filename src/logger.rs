//! Our logger behind the [`log`] facade: one line per event on stderr (journald adds time and
//! unit), with the syslog priority prefix journald understands. Secrets never reach here.
//!
//! Every layer logs through `log::error!` … `log::debug!` (the FastCGI crate included); the
//! `log_error!` … `log_debug!` macros of this crate are short names for them.

use std::sync::OnceLock;

/// Log verbosity (`log_level` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    /// Includes personal data (message text, OpenIDs).
    Debug,
}

impl LogLevel {
    fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

/// Installs the logger (once) and sets the level; later calls only change the level.
pub fn set_level(level: LogLevel) {
    // Fails only when a logger is already installed — ours, by an earlier call.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.filter());
}

/// True when messages at `level` are printed.
pub fn enabled(level: LogLevel) -> bool {
    level.filter() <= log::max_level()
}

struct OneLine;

static LOGGER: OneLine = OneLine;

/// True when stderr is connected to the journal (systemd sets `$JOURNAL_STREAM`).
static JOURNAL: OnceLock<bool> = OnceLock::new();

impl log::Log for OneLine {
    /// Only our own crates log: a dependency's debug lines (an HTTP client's request URIs,
    /// say) could carry secrets and are not written in our one-line style.
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let target = metadata.target();
        metadata.level() <= log::max_level()
            && (target.starts_with("weixin_fcgi") || target.starts_with("fastcgi_responder"))
    }

    fn log(&self, record: &log::Record<'_>) {
        use std::io::Write;
        if !self.enabled(record.metadata()) {
            return;
        }
        // journald reads a `<N>` priority prefix; on a terminal a word reads better.
        let journal = *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some());
        let prio = match (journal, record.level()) {
            (true, log::Level::Error) => "<3>",
            (true, log::Level::Warn) => "<4>",
            (true, log::Level::Info) => "<6>",
            (true, log::Level::Debug | log::Level::Trace) => "<7>",
            (false, log::Level::Error) => "error: ",
            (false, log::Level::Warn) => "warning: ",
            (false, log::Level::Info) => "",
            (false, log::Level::Debug | log::Level::Trace) => "debug: ",
        };
        // One write(2) per line, so lines from several workers never interleave.
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            line.push_str(prio);
            let _ = std::fmt::Write::write_fmt(&mut *line, *record.args());
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

    fn flush(&self) {}
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { ::log::error!($($t)*) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { ::log::warn!($($t)*) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { ::log::info!($($t)*) } }
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { ::log::debug!($($t)*) } }

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn only_our_crates_log() {
        set_level(LogLevel::Debug);
        let meta = |target| {
            log::Metadata::builder()
                .level(log::Level::Debug)
                .target(target)
                .build()
        };
        assert!(LOGGER.enabled(&meta("weixin_fcgi::forward")));
        assert!(LOGGER.enabled(&meta("fastcgi_responder::pool")));
        assert!(!LOGGER.enabled(&meta("ureq::run")));
        set_level(LogLevel::Info);
        assert!(!LOGGER.enabled(&meta("weixin_fcgi::app")));
    }
}
