//! The status page: per-process counters and the three ways to show them.
//!
//! php-fpm users know `pm.status_path`, nginx users `stub_status`: a GET to the global
//! `status_path` (through an nginx location limited to 127.0.0.1) answers plain text, `?json`,
//! or `?openmetrics` (the Prometheus/OpenMetrics text format: `# TYPE` lines, `# EOF` last).
//! `weixin-fcgi status` fetches it over the socket.
//!
//! # Cost
//! Counting is a handful of relaxed atomic additions per request, on counters the request's
//! account already points to: no lock, no allocation, no map lookup. Rendering (cold) reads
//! them all once.
//!
//! # Limitations
//! Counters are per process: a restart or an idle exit starts them from zero, as php-fpm's do
//! (`weixin_fcgi_start_time_seconds` tells a scraper). The request duration is the time the
//! responder spent on the request; for `forward`/`exec` rules it ends at the hand-off to a
//! forward thread, whose outcome is counted in `weixin_fcgi_forward_results_total`.

use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// HTTP statuses counted one by one; anything else is counted as "other".
pub const STATUSES: [u16; 10] = [200, 302, 400, 403, 404, 405, 413, 500, 502, 503];
const OTHER_STATUS: usize = STATUSES.len();

/// Upper bounds of the request-duration histogram buckets, in microseconds (+Inf is implied).
pub const DURATION_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 5_000_000,
];

/// What a request ended with, as the per-request log line's `outcome` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A reply message (template or exec/forward answered at once).
    Reply,
    /// `success`: no rule matched or the rule replies nothing.
    Success,
    /// Refused: bad signature, stale timestamp, unparsable body, unknown path, … (4xx).
    Refused,
    /// The GET URL verification (echostr).
    Verify,
    /// Handed to a forward thread (`forward`/`exec`); see [`Forward`].
    Forward,
    /// A menu OAuth redirect.
    OAuth,
}

impl Reply {
    const ALL: [Reply; 6] = [
        Reply::Reply,
        Reply::Success,
        Reply::Refused,
        Reply::Verify,
        Reply::Forward,
        Reply::OAuth,
    ];
    fn label(self) -> &'static str {
        match self {
            Reply::Reply => "reply",
            Reply::Success => "success",
            Reply::Refused => "refused",
            Reply::Verify => "verify",
            Reply::Forward => "forward",
            Reply::OAuth => "oauth",
        }
    }
}

/// How a forwarded message (`forward`/`exec` rule) was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The backend's (or program's) answer.
    Ok,
    /// The rule's fallback: backend error, timeout, or every slot busy.
    Fallback,
}

impl Forward {
    const ALL: [Forward; 2] = [Forward::Ok, Forward::Fallback];
    fn label(self) -> &'static str {
        match self {
            Forward::Ok => "ok",
            Forward::Fallback => "fallback",
        }
    }
}

/// Requests of one account by status. Shared (`Arc`) by the account's config entry across
/// reloads, so a reload does not reset them.
#[derive(Debug, Default)]
pub struct AccountCounters {
    requests: [AtomicU64; STATUSES.len() + 1],
}

impl AccountCounters {
    /// Counts one request answered with `status`.
    #[inline]
    pub fn count(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(OTHER_STATUS);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (i, n) in self.requests.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let status = STATUSES.get(i).map_or("other".to_string(), u16::to_string);
                out.push((status, n));
            }
        }
        out
    }
}

/// The process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests for no account (unknown path): status 404 mostly.
    pub unrouted: AccountCounters,
    replies: [AtomicU64; Reply::ALL.len()],
    forward: [AtomicU64; Forward::ALL.len()],
    /// Retries answered from, or parked on, the retry table.
    retry_hits: AtomicU64,
    /// POSTs refused because their timestamp is outside `timestamp_window`.
    replay_rejects: AtomicU64,
    duration_buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    duration_sum_us: AtomicU64,
}

impl Metrics {
    /// Counts one finished request: its outcome and how long it took.
    #[inline]
    pub fn request(&self, reply: Reply, micros: u64) {
        self.replies[reply as usize].fetch_add(1, Ordering::Relaxed);
        let bucket = DURATION_BUCKETS_US
            .iter()
            .position(|&le| micros <= le)
            .unwrap_or(DURATION_BUCKETS_US.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts how a forwarded message was answered.
    pub fn forward(&self, result: Forward) {
        self.forward[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry answered from (or parked on) the retry table.
    pub fn retry_hit(&self) {
        self.retry_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a POST refused as a possible replay.
    pub fn replay_reject(&self) {
        self.replay_rejects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the page shows, read once.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: &'static str,
    /// Unix seconds when the process started, and now.
    pub start_time: u64,
    pub now: u64,
    /// VmRSS of the process in bytes (0 when /proc is unreadable).
    pub resident_bytes: u64,
    pub open_conns: u64,
    pub max_conns: u64,
    /// Connections closed at accept because `max_conns` were open.
    pub max_conns_reached: u64,
    pub in_flight: u64,
    /// (account name, [(status, count)]), in config order; "-" for requests with no account.
    pub requests: Vec<(String, Vec<(String, u64)>)>,
    pub replies: Vec<(&'static str, u64)>,
    pub forward: Vec<(&'static str, u64)>,
    pub retry_entries: u64,
    pub retry_bytes: u64,
    pub retry_hits: u64,
    pub replay_rejects: u64,
    /// With `shared_state`: whether Redis answers (`false` while this instance's memory
    /// answers instead); `None` without it.
    pub shared_state_up: Option<bool>,
    /// Cumulative counts per bucket (le in microseconds; the last is +Inf), sum and count.
    pub duration_buckets: Vec<(Option<u64>, u64)>,
    pub duration_sum_us: u64,
    pub duration_count: u64,
}

impl Snapshot {
    /// Reads the counters of `metrics` and of the accounts given as (name, counters).
    pub fn read<'a>(
        metrics: &Metrics,
        accounts: impl IntoIterator<Item = (&'a str, &'a AccountCounters)>,
    ) -> Snapshot {
        let mut requests: Vec<(String, Vec<(String, u64)>)> = accounts
            .into_iter()
            .map(|(name, c)| (name.to_string(), c.snapshot()))
            .collect();
        let unrouted = metrics.unrouted.snapshot();
        if !unrouted.is_empty() {
            requests.push(("-".to_string(), unrouted));
        }
        let mut cumulative = 0;
        let mut duration_buckets = Vec::new();
        for (i, n) in metrics.duration_buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            duration_buckets.push((DURATION_BUCKETS_US.get(i).copied(), cumulative));
        }
        Snapshot {
            requests,
            replies: Reply::ALL
                .iter()
                .map(|r| {
                    (
                        r.label(),
                        metrics.replies[*r as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            forward: Forward::ALL
                .iter()
                .map(|r| {
                    (
                        r.label(),
                        metrics.forward[*r as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            retry_hits: metrics.retry_hits.load(Ordering::Relaxed),
            replay_rejects: metrics.replay_rejects.load(Ordering::Relaxed),
            duration_count: cumulative,
            duration_buckets,
            duration_sum_us: metrics.duration_sum_us.load(Ordering::Relaxed),
            ..Snapshot::default()
        }
    }

    fn total_requests(&self) -> u64 {
        self.requests
            .iter()
            .flat_map(|(_, by_status)| by_status.iter().map(|(_, n)| n))
            .sum()
    }
}

/// The three renderings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
    OpenMetrics,
}

impl Format {
    /// `?json`, `?openmetrics` (also as `format=json` / `format=openmetrics`), else plain.
    pub fn from_query(query: &[u8]) -> Format {
        let mut format = Format::Plain;
        for pair in query.split(|&b| b == b'&') {
            match pair {
                b"json" | b"format=json" => format = Format::Json,
                b"openmetrics" | b"format=openmetrics" => format = Format::OpenMetrics,
                _ => {}
            }
        }
        format
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Plain => "text/plain; charset=utf-8",
            Format::Json => "application/json",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Renders `s` in `format` into `out`.
pub fn render(s: &Snapshot, format: Format, out: &mut String) {
    match format {
        Format::Plain => plain(s, out),
        Format::Json => {
            out.push_str(&json(s).to_string());
            out.push('\n');
        }
        Format::OpenMetrics => openmetrics(s, out),
    }
}

fn plain(s: &Snapshot, out: &mut String) {
    let pairs = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "version:            weixin-fcgi {}", s.version);
    let _ = writeln!(out, "start time:         {}", s.start_time);
    let _ = writeln!(
        out,
        "start since:        {}",
        s.now.saturating_sub(s.start_time)
    );
    let _ = writeln!(out, "resident memory:    {}", s.resident_bytes);
    let _ = writeln!(out, "open connections:   {}", s.open_conns);
    let _ = writeln!(out, "max connections:    {}", s.max_conns);
    let _ = writeln!(out, "max reached:        {}", s.max_conns_reached);
    let _ = writeln!(out, "in flight:          {}", s.in_flight);
    let _ = writeln!(out, "requests:           {}", s.total_requests());
    for (account, by_status) in &s.requests {
        let by_status: Vec<(&str, u64)> = by_status.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let _ = writeln!(
            out,
            "requests {}: {}",
            plain_label(account),
            pairs(&by_status)
        );
    }
    let _ = writeln!(out, "replies:            {}", pairs(&s.replies));
    let _ = writeln!(out, "forward results:    {}", pairs(&s.forward));
    let _ = writeln!(
        out,
        "retry table:        {} entries, {} bytes, {} hits",
        s.retry_entries, s.retry_bytes, s.retry_hits
    );
    let _ = writeln!(out, "replay rejects:     {}", s.replay_rejects);
    if let Some(up) = s.shared_state_up {
        let state = if up {
            "up"
        } else {
            "unavailable (local memory answers)"
        };
        let _ = writeln!(out, "shared state:       {state}");
    }
    let mean = s.duration_sum_us.checked_div(s.duration_count).unwrap_or(0);
    let _ = writeln!(
        out,
        "request duration:   {} requests, mean {} us",
        s.duration_count, mean
    );
}

/// An account name on one plain-text line: control characters become `?`.
fn plain_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn json(s: &Snapshot) -> Value {
    let counts = |v: &[(&str, u64)]| -> Value {
        Value::Object(v.iter().map(|(k, n)| (k.to_string(), json!(n))).collect())
    };
    let requests: Map<String, Value> = s
        .requests
        .iter()
        .map(|(account, by_status)| {
            let by_status: Map<String, Value> = by_status
                .iter()
                .map(|(k, n)| (k.clone(), json!(n)))
                .collect();
            (account.clone(), Value::Object(by_status))
        })
        .collect();
    let buckets: Vec<Value> = s
        .duration_buckets
        .iter()
        .map(|(le, n)| json!({ "le_us": le, "count": n }))
        .collect();
    json!({
        "version": s.version,
        "start_time": s.start_time,
        "start_since": s.now.saturating_sub(s.start_time),
        "resident_memory_bytes": s.resident_bytes,
        "open_connections": s.open_conns,
        "max_connections": s.max_conns,
        "max_connections_reached": s.max_conns_reached,
        "in_flight": s.in_flight,
        "requests_total": s.total_requests(),
        "requests": requests,
        "replies": counts(&s.replies),
        "forward_results": counts(&s.forward),
        "retry_table": { "entries": s.retry_entries, "bytes": s.retry_bytes, "hits": s.retry_hits },
        "replay_rejects": s.replay_rejects,
        "shared_state_up": s.shared_state_up,
        "request_duration": {
            "count": s.duration_count,
            "sum_us": s.duration_sum_us,
            "buckets": buckets,
        },
    })
}

/// OpenMetrics text exposition (<https://openmetrics.io>): one `# TYPE`/`# HELP` per family,
/// counters' samples end in `_total`, label values escaped, `# EOF` last.
fn openmetrics(s: &Snapshot, out: &mut String) {
    family(out, "info", "info", "Version of the responder.");
    let _ = writeln!(
        out,
        "weixin_fcgi_info_info{{version=\"{}\"}} 1",
        label_value(s.version)
    );
    family(
        out,
        "start_time_seconds",
        "gauge",
        "Unix time the process started.",
    );
    let _ = writeln!(out, "weixin_fcgi_start_time_seconds {}", s.start_time);
    family(
        out,
        "resident_memory_bytes",
        "gauge",
        "Resident memory (VmRSS) of the process.",
    );
    let _ = writeln!(
        out,
        "weixin_fcgi_resident_memory_bytes {}",
        s.resident_bytes
    );
    family(
        out,
        "open_connections",
        "gauge",
        "FastCGI connections open now.",
    );
    let _ = writeln!(out, "weixin_fcgi_open_connections {}", s.open_conns);
    family(
        out,
        "max_connections",
        "gauge",
        "The max_conns setting: more connections are closed at accept.",
    );
    let _ = writeln!(out, "weixin_fcgi_max_connections {}", s.max_conns);
    family(
        out,
        "max_connections_reached",
        "counter",
        "Connections closed at accept because max_conns were open.",
    );
    let _ = writeln!(
        out,
        "weixin_fcgi_max_connections_reached_total {}",
        s.max_conns_reached
    );
    family(
        out,
        "requests_in_flight",
        "gauge",
        "Requests being answered now.",
    );
    let _ = writeln!(out, "weixin_fcgi_requests_in_flight {}", s.in_flight);
    family(
        out,
        "requests",
        "counter",
        "Requests answered, by account and HTTP status.",
    );
    for (account, by_status) in &s.requests {
        for (status, n) in by_status {
            let _ = writeln!(
                out,
                "weixin_fcgi_requests_total{{account=\"{}\",status=\"{status}\"}} {n}",
                label_value(account)
            );
        }
    }
    family(
        out,
        "request_duration_seconds",
        "histogram",
        "Time spent answering a request (until the hand-off for forward/exec rules).",
    );
    for (le, n) in &s.duration_buckets {
        let le = le.map_or("+Inf".to_string(), seconds);
        let _ = writeln!(
            out,
            "weixin_fcgi_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "weixin_fcgi_request_duration_seconds_count {}",
        s.duration_count
    );
    let _ = writeln!(
        out,
        "weixin_fcgi_request_duration_seconds_sum {}",
        seconds(s.duration_sum_us)
    );
    labelled_counter(
        out,
        "replies",
        "Requests by outcome: reply, success (no reply), refused, verify, forward, oauth.",
        "outcome",
        &s.replies,
    );
    labelled_counter(
        out,
        "forward_results",
        "Forwarded messages by result: the backend's answer (ok) or the rule's fallback.",
        "result",
        &s.forward,
    );
    family(
        out,
        "retry_table_entries",
        "gauge",
        "Forwarded messages held for WeChat's retries.",
    );
    let _ = writeln!(out, "weixin_fcgi_retry_table_entries {}", s.retry_entries);
    family(
        out,
        "retry_table_bytes",
        "gauge",
        "Bytes held by the retry table.",
    );
    let _ = writeln!(out, "weixin_fcgi_retry_table_bytes {}", s.retry_bytes);
    family(
        out,
        "retry_table_hits",
        "counter",
        "WeChat retries answered from, or parked on, the retry table.",
    );
    let _ = writeln!(out, "weixin_fcgi_retry_table_hits_total {}", s.retry_hits);
    family(
        out,
        "replay_rejects",
        "counter",
        "Requests refused as possible replays (timestamp outside timestamp_window, signature reused with another body, or replayed after the retry period).",
    );
    let _ = writeln!(out, "weixin_fcgi_replay_rejects_total {}", s.replay_rejects);
    if let Some(up) = s.shared_state_up {
        family(
            out,
            "shared_state_up",
            "gauge",
            "1 while the shared_state Redis answers; 0 while this instance's memory answers instead.",
        );
        let _ = writeln!(out, "weixin_fcgi_shared_state_up {}", u8::from(up));
    }
    out.push_str("# EOF\n");
}

/// A counter family with one sample per fixed label value.
fn labelled_counter(out: &mut String, name: &str, help: &str, label: &str, v: &[(&str, u64)]) {
    family(out, name, "counter", help);
    for (value, n) in v {
        let _ = writeln!(out, "weixin_fcgi_{name}_total{{{label}=\"{value}\"}} {n}");
    }
}

/// The `# TYPE` and `# HELP` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE weixin_fcgi_{name} {kind}");
    let _ = writeln!(out, "# HELP weixin_fcgi_{name} {help}");
}

/// Microseconds as decimal seconds, exactly ("0.0001", "5", "1.25").
fn seconds(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A label value with `\`, `"` and newlines escaped, as OpenMetrics requires.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// VmRSS of this process in bytes, from /proc/self/status (0 if unreadable).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let m = Metrics::default();
        let a = AccountCounters::default();
        let b = AccountCounters::default();
        for _ in 0..3 {
            a.count(200);
        }
        a.count(403);
        b.count(299);
        m.unrouted.count(404);
        m.request(Reply::Reply, 80);
        m.request(Reply::Refused, 1_000);
        m.request(Reply::Success, 7_000_000);
        m.forward(Forward::Fallback);
        m.retry_hit();
        m.replay_reject();
        let mut s = Snapshot::read(&m, [("shop", &a), ("quo\"te\\\n", &b)]);
        s.version = "0.1.0";
        s.start_time = 100;
        s.now = 160;
        s
    }

    #[test]
    fn counts_by_status_outcome_and_bucket() {
        let s = sample();
        assert_eq!(
            s.requests,
            [
                (
                    "shop".to_string(),
                    vec![("200".to_string(), 3), ("403".to_string(), 1)]
                ),
                ("quo\"te\\\n".to_string(), vec![("other".to_string(), 1)]),
                ("-".to_string(), vec![("404".to_string(), 1)]),
            ]
        );
        assert_eq!(s.total_requests(), 6);
        assert_eq!(
            &s.replies[..3],
            [("reply", 1), ("success", 1), ("refused", 1)]
        );
        assert_eq!(s.forward, [("ok", 0), ("fallback", 1)]);
        // 80 us in the first bucket (le 100 us), 1000 us in le 1 ms, 7 s only in +Inf.
        assert_eq!(s.duration_buckets[0], (Some(100), 1));
        assert_eq!(s.duration_buckets[3], (Some(1_000), 2));
        assert_eq!(s.duration_buckets.last(), Some(&(None, 3)));
        assert_eq!((s.duration_count, s.duration_sum_us), (3, 7_001_080));
    }

    #[test]
    fn openmetrics_escapes_labels_and_ends_with_eof() {
        let mut out = String::new();
        render(&sample(), Format::OpenMetrics, &mut out);
        assert!(out.ends_with("\n# EOF\n"), "{out}");
        assert!(out.contains(
            "weixin_fcgi_requests_total{account=\"quo\\\"te\\\\\\n\",status=\"other\"} 1\n"
        ));
        assert!(out.contains("weixin_fcgi_request_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(out.contains("weixin_fcgi_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("weixin_fcgi_request_duration_seconds_sum 7.00108\n"));
        // Every sample line's family has a # TYPE line before it.
        let mut typed = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    typed.iter().any(|t| name.starts_with(t.as_str())),
                    "{name} has no # TYPE"
                );
            }
        }
    }

    #[test]
    fn json_and_plain() {
        let mut out = String::new();
        render(&sample(), Format::Json, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["requests"]["shop"]["200"], 3);
        assert_eq!(v["requests_total"], 6);
        assert_eq!(v["start_since"], 60);
        let mut out = String::new();
        render(&sample(), Format::Plain, &mut out);
        assert!(out.contains("requests shop: 200 3, 403 1\n"), "{out}");
        assert!(out.contains("requests quo\"te\\?: other 1\n"), "{out}");
    }

    #[test]
    fn format_from_query() {
        assert_eq!(Format::from_query(b""), Format::Plain);
        assert_eq!(Format::from_query(b"json"), Format::Json);
        assert_eq!(Format::from_query(b"x=1&openmetrics"), Format::OpenMetrics);
        assert_eq!(Format::from_query(b"format=json"), Format::Json);
        assert_eq!(Format::from_query(b"jsonx"), Format::Plain);
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(100), "0.0001");
        assert_eq!(seconds(5_000_000), "5");
        assert_eq!(seconds(1_250_000), "1.25");
    }
}
