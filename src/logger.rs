//! Our logger behind the [`log`] facade: one line per event on stderr (journald adds time and
//! unit), with the syslog priority prefix journald understands. Secrets never reach here.
//!
//! Every layer logs through `log::error!` … `log::debug!` (the FastCGI crate included); the
//! `log_error!` … `log_debug!` macros of this crate are short names for them.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

// ---- Untrusted values in log lines and on terminals; throttled warnings ----

/// A value from a message (MsgType, Event, FromUserName, …) for a `key=value` log line: written
/// bare when it is a plain word (`text`, `subscribe`, `CLICK`, an OpenID), otherwise quoted
/// with every quote, backslash, control and other invisible or line-breaking character escaped
/// as Rust does (`"x status=200\u{1b}"`), as `content=` already is. So a value can neither end
/// the line nor pass for another field.
pub struct LogValue<'a>(pub &'a str);

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self.0.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
            });
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// True for characters that move the cursor, end a line, or reorder text on a terminal:
/// C0/C1 controls (ESC, BEL, NEL, …), LINE/PARAGRAPH SEPARATOR, and the bidirectional controls.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every character [`unsafe_on_terminal`] written as a Rust escape (`\n`, `\u{1b}`);
/// everything else, Chinese included, as is. Borrowed when nothing needed escaping.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_on_terminal) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_on_terminal(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// How often a throttled warning is written at most.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one warning through per interval and counts the rest.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// When the last line was let through, and how many events came since (including it).
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WARNING_INTERVAL)
    }
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one event. `Some(n)`: write the line now, standing for `n` events (this one and
    /// those suppressed since the previous line); `None`: stay quiet.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        let due = last.is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if due {
            *last = Some(now);
            Some(std::mem::take(count))
        } else {
            None
        }
    }
}

/// Lines about repeated events, per reason: the first [`Bursts::BURST`] of a reason in a
/// window are written (an operator sees what is refused and why); the rest are counted, and
/// the count is told with the reason's first line of a later window or by [`Bursts::flush`].
/// Reasons are `'static` strings (a fixed set in the code); the table holds at most
/// [`Bursts::REASONS`] of them, the rest sharing the last slot.
#[derive(Debug, Default)]
pub struct Bursts {
    slots: Mutex<Vec<BurstSlot>>,
}

#[derive(Debug)]
struct BurstSlot {
    reason: &'static str,
    window_start: Instant,
    written: u32,
    left_out: u64,
}

impl Bursts {
    /// Lines of one reason written per window.
    pub const BURST: u32 = 5;
    /// The window.
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Distinct reasons tracked.
    pub const REASONS: usize = 64;

    /// Records one event of `reason`. `Some(n)`: write its line now, adding that `n` earlier
    /// ones were left out (0: none); `None`: stay quiet (counted).
    pub fn hit(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let i = match slots.iter().position(|s| s.reason == reason) {
            Some(i) => i,
            None if slots.len() < Self::REASONS => {
                slots.push(BurstSlot {
                    reason,
                    window_start: now,
                    written: 0,
                    left_out: 0,
                });
                slots.len() - 1
            }
            None => slots.len() - 1,
        };
        let slot = &mut slots[i];
        let mut told = 0;
        if now.saturating_duration_since(slot.window_start) >= Self::WINDOW {
            told = std::mem::take(&mut slot.left_out);
            slot.window_start = now;
            slot.written = 0;
        }
        if slot.written < Self::BURST {
            slot.written += 1;
            Some(told)
        } else {
            slot.left_out += told + 1;
            None
        }
    }

    /// Reasons whose window ended with events left out, with their counts (reset): for a
    /// summary line when the events stopped (called about once a second).
    pub fn flush(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for slot in slots.iter_mut() {
            if slot.left_out > 0 && now.saturating_duration_since(slot.window_start) >= Self::WINDOW
            {
                due.push((slot.reason, std::mem::take(&mut slot.left_out)));
                slot.window_start = now;
                slot.written = 0;
            }
        }
        due
    }
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

    #[test]
    fn bursts_write_the_first_lines_of_a_reason_and_count_the_rest() {
        let b = Bursts::default();
        let t0 = Instant::now();
        for _ in 0..Bursts::BURST {
            assert_eq!(b.hit("bad signature", t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(b.hit("bad signature", t0), None);
        }
        // Another reason has its own burst.
        assert_eq!(b.hit("stale timestamp", t0), Some(0));
        // Nothing due before the window ends.
        assert!(b.flush(t0 + Duration::from_secs(59)).is_empty());
        // The next window's first line tells the 7 left out.
        let t1 = t0 + Bursts::WINDOW;
        assert_eq!(b.hit("bad signature", t1), Some(7));
        for _ in 1..Bursts::BURST {
            assert_eq!(b.hit("bad signature", t1), Some(0));
        }
        assert_eq!(b.hit("bad signature", t1), None);
        assert_eq!(b.hit("bad signature", t1), None);
        // Quiet since: the summary tells the 2, once.
        let t2 = t1 + Bursts::WINDOW;
        assert_eq!(b.flush(t2), vec![("bad signature", 2)]);
        assert!(b.flush(t2 + Bursts::WINDOW).is_empty());
    }

    #[test]
    fn bursts_bound_the_reasons_they_track() {
        let b = Bursts::default();
        let t0 = Instant::now();
        let reasons: Vec<&'static str> = (0..Bursts::REASONS + 10)
            .map(|i| &*Box::leak(format!("reason {i}").into_boxed_str()))
            .collect();
        for r in &reasons {
            b.hit(r, t0);
        }
        assert_eq!(b.slots.lock().unwrap().len(), Bursts::REASONS);
    }
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

    #[test]
    fn log_values() {
        for plain in [
            "text",
            "event",
            "subscribe",
            "CLICK",
            "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
        ] {
            assert_eq!(LogValue(plain).to_string(), plain);
        }
        let cases = [
            (
                "x status=200 user=deadbeef",
                r#""x status=200 user=deadbeef""#,
            ),
            ("a\u{1b}[2Jb", r#""a\u{1b}[2Jb""#),
            ("\u{7}\u{b}\u{c}", r#""\u{7}\u{b}\u{c}""#),
            ("a\u{2028}b\u{85}c", r#""a\u{2028}b\u{85}c""#),
            ("q\"uote\\", r#""q\"uote\\""#),
            ("line\nbreak\r", r#""line\nbreak\r""#),
            ("", r#""""#),
            ("中文", r#""中文""#),
        ];
        for (value, logged) in cases {
            assert_eq!(LogValue(value).to_string(), logged, "{value:?}");
        }
    }

    #[test]
    fn terminal() {
        assert!(matches!(for_terminal("你好 <b>"), Cow::Borrowed(_)));
        assert_eq!(
            for_terminal("a\u{1b}[31mred\u{7}\nnext\u{202e}\u{85}\u{2028}"),
            r"a\u{1b}[31mred\u{7}\nnext\u{202e}\u{85}\u{2028}"
        );
    }

    #[test]
    fn throttle_writes_one_line_per_interval_with_the_count() {
        let t0 = Instant::now();
        let th = Throttle::new(Duration::from_secs(10));
        assert_eq!(th.hit(t0), Some(1), "the first event is written at once");
        for i in 1..=999 {
            assert_eq!(th.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            th.hit(t0 + Duration::from_secs(10)),
            Some(1000),
            "the next line stands for everything since"
        );
        assert_eq!(th.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(th.hit(t0 + Duration::from_secs(30)), Some(2));
    }
}
