//! Shared test harness: temp dirs, the real `weixin-fcgi` binary on a temp socket, a real
//! nginx on a free loopback port that includes the repo's `nginx/weixin.conf` verbatim (logs
//! redirected to its temp dir) and the log format of `nginx/weixin-upstream.conf`, a
//! minimal HTTP/1.1 client, and WeChat request signing.
//!
//! Tests needing nginx or cgi-fcgi expect them installed: `bash tests/run.sh` installs them.
#![allow(dead_code)]

pub mod fake_http;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// VmRSS / VmHWM of the process in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        rss_kib(self.pid())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "kill -{sig} failed"
        );
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

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A real nginx on 127.0.0.1 with the repo's `nginx/weixin.conf` included verbatim (logs
/// redirected to its temp dir), the `log_format` of `nginx/weixin-upstream.conf`, and an
/// upstream `weixin_fcgi` pointing at `socket`.
pub struct Nginx {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
}

impl Nginx {
    /// `keepalive`: the upstream keeps idle connections (as the shipped weixin-upstream.conf);
    /// without it every request opens a new connection.
    pub fn start(socket: &Path, keepalive: bool) -> Nginx {
        Self::start_with(socket, keepalive, "")
    }

    /// Like [`Nginx::start`], with extra directives in the `server {}` block.
    pub fn start_with(socket: &Path, keepalive: bool, extra_server: &str) -> Nginx {
        require_tool("nginx");
        let dir = TempDir::new("nginx");
        let port = free_port();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        // The snippet says `include fastcgi_params;`, resolved next to nginx.conf, as in /etc/nginx.
        std::fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params"))
            .expect("/etc/nginx/fastcgi_params (Debian's nginx-common)");
        let snippet = nginx_snippet(&dir);
        let log_format = nginx_log_format();
        let keep = if keepalive {
            "keepalive 8; keepalive_timeout 4s;"
        } else {
            ""
        };
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    # Like Debian's nginx.conf: every server logs in nginx's default (combined) format.
    access_log {dir}/logs/access.log;
    {log_format}
    client_body_temp_path {dir}/tmp/body;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    proxy_temp_path {dir}/tmp/proxy;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream weixin_fcgi {{ server unix:{socket}; {keep} }}
    server {{
        listen 127.0.0.1:{port};
        {extra_server}
        include {snippet};
    }}
}}
",
            dir = dir.path().display(),
            socket = socket.display(),
            snippet = snippet.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let n = Nginx { port, dir, child };
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nginx did not start; error.log:\n{}",
            n.error_log()
        );
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// nginx's access log (the snippet's location logs here, in its own format).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }

    /// Sends an HTTP request to `path_and_query`.
    pub fn request(&self, method: &str, path_and_query: &str, body: &[u8]) -> HttpResponse {
        http(self.port, method, path_and_query, body)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repo's `nginx/weixin.conf`, copied into `dir` with only `/var/log/nginx/` pointed at
/// `dir/logs/` (a test must not write to, or need, the system's log directory).
fn nginx_snippet(dir: &TempDir) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("nginx/weixin.conf")).expect("weixin.conf");
    let logs = format!("{}/logs/", dir.path().display());
    let copy = dir.join("weixin.conf");
    std::fs::write(&copy, text.replace("/var/log/nginx/", &logs)).expect("write snippet");
    copy
}

/// The `log_format` statement of the repo's `nginx/weixin-upstream.conf`, verbatim (the rest of
/// that file names the deployment's socket, which the tests replace); empty if it has none.
fn nginx_log_format() -> String {
    let text = std::fs::read_to_string(repo().join("nginx/weixin-upstream.conf"))
        .expect("weixin-upstream.conf");
    let Some(start) = text
        .lines()
        .position(|l| l.trim_start().starts_with("log_format "))
    else {
        return String::new();
    };
    let rest: String = text.lines().skip(start).collect::<Vec<_>>().join("\n");
    let end = rest.find(';').expect("log_format ends with ;");
    rest[..=end].to_string()
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.to_string())
        })
        .map(|l| l.split_whitespace().nth(1) == Some("0"))
        .unwrap_or(false)
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close` to 127.0.0.1:`port`.
pub fn http(port: u16, method: &str, path_and_query: &str, body: &[u8]) -> HttpResponse {
    try_http(port, method, path_and_query, body).expect("HTTP request")
}

/// Like [`http`], returning errors instead of panicking (for load loops).
pub fn try_http(
    port: u16,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Seconds since the epoch, as WeChat sends `timestamp`.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `hex(sha1(concat(sort(parts))))`, computed here with the `sha1` crate directly (not the
/// project's own function), so a sorting or hex bug in the project cannot cancel out.
pub fn sign(parts: &[&str]) -> String {
    use sha1::{Digest, Sha1};
    let mut v: Vec<&str> = parts.to_vec();
    v.sort();
    let mut h = Sha1::new();
    for p in v {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A query string WeChat would send for a POST to an account with `token`: a fresh nonce each
/// time, as WeChat's (the replay cache refuses a signature reused with another body).
pub fn signed_query(token: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let ts = now().to_string();
    let nonce = format!(
        "{}{:06}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let sig = sign(&[token, &ts, &nonce]);
    format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser")
}

/// A text message from `oUser` to `gh_test` as WeChat sends it.
pub fn text_message(content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{}]]></Content><MsgId>1234567890123456</MsgId></xml>",
        now(),
        content.replace("]]>", "]]]]><![CDATA[>")
    )
}

/// An event message (`Event` = `event`, optional `EventKey`).
pub fn event_message(event: &str, key: Option<&str>) -> String {
    let key = key
        .map(|k| format!("<EventKey><![CDATA[{k}]]></EventKey>"))
        .unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event>{key}</xml>",
        now()
    )
}

/// Value of the first `<name>` element in `xml` (CDATA sections joined), for checking replies.
/// Deliberately independent of the project's parser.
pub fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let inner = &xml[start..end];
    let mut out = String::new();
    let mut rest = inner;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let e = r.find("]]>")?;
            out.push_str(&r[..e]);
            rest = &r[e + 3..];
        } else {
            let e = rest.find("<![CDATA[").unwrap_or(rest.len());
            out.push_str(&rest[..e]);
            rest = &rest[e..];
        }
    }
    Some(out)
}

/// A minimal config with one account at `/weixin` and the given rules appended.
pub fn config_with_rules(token: &str, rules: &str) -> String {
    format!(
        "workers = 2\nlog_level = \"info\"\n\n[[account]]\nname = \"test\"\npath = \"/weixin\"\n\
         token = \"{token}\"\n\n{rules}"
    )
}

// ---- Added for the message, reply and safe-mode end-to-end tests ----

/// A message from `tests/fixtures/messages/` (see its README), as WeChat sends it.
pub fn message_fixture(name: &str) -> String {
    let path = repo().join("tests/fixtures/messages").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One rule per message type and event of PROTOCOL.md §3, each answering a text that renders
/// that type's own fields; the last one (no conditions) catches unknown future types.
pub const ALL_TYPES_RULES: &str = r#"
[[account.rule]]
name = "text"
msg_type = "text"
reply = { type = "text", content = "text:{Content}|{MsgId}" }
[[account.rule]]
name = "image"
msg_type = "image"
reply = { type = "text", content = "image:{PicUrl}|{MediaId}" }
[[account.rule]]
name = "voice"
msg_type = "voice"
reply = { type = "text", content = "voice:{Format}|{Recognition}|{MediaId}" }
[[account.rule]]
name = "video"
msg_type = "video"
reply = { type = "text", content = "video:{MediaId}|{ThumbMediaId}" }
[[account.rule]]
name = "shortvideo"
msg_type = "shortvideo"
reply = { type = "text", content = "shortvideo:{MediaId}|{ThumbMediaId}" }
[[account.rule]]
name = "location"
msg_type = "location"
reply = { type = "text", content = "location:{Location_X},{Location_Y}|{Scale}|{Label}" }
[[account.rule]]
name = "link"
msg_type = "link"
reply = { type = "text", content = "link:{Title}|{Description}|{Url}" }
[[account.rule]]
name = "subscribe"
msg_type = "event"
event = "subscribe"
reply = { type = "text", content = "subscribe:{EventKey}|{Ticket}" }
[[account.rule]]
name = "unsubscribe"
msg_type = "event"
event = "unsubscribe"
reply = { type = "text", content = "unsubscribe:{FromUserName}|{EventKey}" }
[[account.rule]]
name = "scan"
msg_type = "event"
event = "SCAN"
reply = { type = "text", content = "scan:{EventKey}|{Ticket}" }
[[account.rule]]
name = "location-event"
msg_type = "event"
event = "LOCATION"
reply = { type = "text", content = "location-event:{Latitude},{Longitude},{Precision}" }
[[account.rule]]
name = "click"
msg_type = "event"
event = "CLICK"
reply = { type = "text", content = "click:{EventKey}" }
[[account.rule]]
name = "view"
msg_type = "event"
event = "VIEW"
reply = { type = "text", content = "view:{EventKey}|{MenuId}" }
[[account.rule]]
name = "scancode_push"
msg_type = "event"
event = "scancode_push"
reply = { type = "text", content = "scancode_push:{EventKey}|{ScanType}|{ScanResult}" }
[[account.rule]]
name = "scancode_waitmsg"
msg_type = "event"
event = "scancode_waitmsg"
reply = { type = "text", content = "scancode_waitmsg:{EventKey}|{ScanType}|{ScanResult}" }
[[account.rule]]
name = "pic_sysphoto"
event = "pic_sysphoto"
reply = { type = "text", content = "pic_sysphoto:{EventKey}|{Count}|{PicMd5Sum}" }
[[account.rule]]
name = "pic_photo_or_album"
event = "pic_photo_or_album"
reply = { type = "text", content = "pic_photo_or_album:{EventKey}|{Count}|{PicMd5Sum}" }
[[account.rule]]
name = "pic_weixin"
event = "pic_weixin"
reply = { type = "text", content = "pic_weixin:{EventKey}|{Count}|{PicMd5Sum}" }
[[account.rule]]
name = "location_select"
event = "location_select"
reply = { type = "text", content = "location_select:{EventKey}|{Location_X},{Location_Y}|{Scale}|{Label}|{Poiname}" }
[[account.rule]]
name = "mass"
event = "MASSSENDJOBFINISH"
reply = { type = "text", content = "mass:{MsgID}|{Status}|{TotalCount}|{FilterCount}|{SentCount}|{ErrorCount}" }
[[account.rule]]
name = "template"
event = "TEMPLATESENDJOBFINISH"
reply = { type = "text", content = "template:{MsgID}|{Status}" }
[[account.rule]]
name = "fallback"
reply = { type = "text", content = "fallback:{MsgType}|{Title}|{PagePath}|{Nested}|{Missing}." }
"#;

/// (fixture, expected reply Content) for [`ALL_TYPES_RULES`]: every fixture in
/// `tests/fixtures/messages/`.
pub const ALL_TYPES_CASES: &[(&str, &str)] = &[
    ("text.xml", "text:this is a test|1234567890123456"),
    (
        "image.xml",
        "image:http://mmbiz.qpic.cn/pic.jpg|img_media_1",
    ),
    ("voice.xml", "voice:amr|腾讯微信团队|voice_media_1"),
    ("video.xml", "video:video_media_1|video_thumb_1"),
    ("shortvideo.xml", "shortvideo:short_media_1|short_thumb_1"),
    (
        "location.xml",
        "location:23.134521,113.358803|20|广州市天河区",
    ),
    (
        "link.xml",
        "link:公众平台官网链接|a description|https://mp.weixin.qq.com/x",
    ),
    (
        "event-subscribe-qrscene.xml",
        "subscribe:qrscene_123123|TICKET_SUB",
    ),
    ("event-unsubscribe.xml", "unsubscribe:oUser|"),
    ("event-scan.xml", "scan:123123|TICKET_SCAN"),
    (
        "event-location.xml",
        "location-event:23.137466,113.352425,119.385040",
    ),
    ("event-click.xml", "click:V1001_TODAY_MUSIC"),
    ("event-view.xml", "view:https://example.com/menu|208379533"),
    (
        "event-scancode-push.xml",
        "scancode_push:6|qrcode|push-result-1",
    ),
    (
        "event-scancode-waitmsg.xml",
        "scancode_waitmsg:7|barcode|EAN_13,6901234567892",
    ),
    ("event-pic-sysphoto.xml", "pic_sysphoto:p1|2|md5firstp1"),
    (
        "event-pic-photo-or-album.xml",
        "pic_photo_or_album:p2|2|md5firstp2",
    ),
    ("event-pic-weixin.xml", "pic_weixin:p3|2|md5firstp3"),
    (
        "event-location-select.xml",
        "location_select:6|23,113|15|广州市海珠区|Canton Tower",
    ),
    (
        "event-masssendjobfinish.xml",
        "mass:1000001625|sendsuccess|100|80|75|5",
    ),
    (
        "event-templatesendjobfinish.xml",
        "template:200163836|failed:user block",
    ),
    (
        "unknown-future.xml",
        "fallback:miniprogrampage|mini|pages/index?id=1|deep|.",
    ),
];

/// Rules exercising every kind of condition; order matters (first match wins). Used with
/// [`match_cases`] in plaintext, safe and compatible mode.
pub const MATCH_RULES: &str = r#"
[[account.rule]]
name = "exact"
content = "hello"
reply = { type = "text", content = "exact" }
[[account.rule]]
name = "contains"
contains = "price"
reply = { type = "text", content = "contains:{Content}" }
[[account.rule]]
name = "prefix"
prefix = "echo "
reply = { type = "text", content = "prefix:{Content}" }
[[account.rule]]
name = "event-ci"
msg_type = "event"
event = "subscribe"
reply = { type = "text", content = "event-ci:{Event}" }
[[account.rule]]
name = "click-k1"
event = "CLICK"
event_key = "K1"
reply = { type = "text", content = "click-k1" }
[[account.rule]]
name = "click-any"
event = "click"
reply = { type = "text", content = "click-any:{EventKey}" }
[[account.rule]]
name = "fields"
fields = { MsgType = "image", PicUrl = "http://x/a.jpg" }
reply = { type = "text", content = "fields:{MediaId}" }
[[account.rule]]
name = "second"
contains = "hello"
reply = { type = "text", content = "second:{Content}" }
[[account.rule]]
name = "silent"
content = "quiet"
reply = { type = "none" }
"#;

/// An image message with `pic_url` (for the `fields` rule of [`MATCH_RULES`]).
pub fn image_message(pic_url: &str, media_id: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[image]]></MsgType>\
         <PicUrl><![CDATA[{pic_url}]]></PicUrl><MediaId><![CDATA[{media_id}]]></MediaId>\
         <MsgId>1234567890123499</MsgId></xml>",
        now()
    )
}

/// (what is checked, message body, expected reply Content or `None` for `success`) for
/// [`MATCH_RULES`].
pub fn match_cases() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("exact content", text_message("hello"), Some("exact")),
        (
            "first match wins over a later contains",
            text_message("hello"),
            Some("exact"),
        ),
        (
            "exact is not contains",
            text_message("hello world"),
            Some("second:hello world"),
        ),
        (
            "contains",
            text_message("what is the price?"),
            Some("contains:what is the price?"),
        ),
        (
            "contains wins (earlier) over a later contains",
            text_message("hello price"),
            Some("contains:hello price"),
        ),
        (
            "prefix",
            text_message("echo 回声"),
            Some("prefix:echo 回声"),
        ),
        ("prefix is not contains", text_message("say echo x"), None),
        (
            "event is case-insensitive",
            event_message("SUBSCRIBE", None),
            Some("event-ci:SUBSCRIBE"),
        ),
        (
            "event_key",
            event_message("CLICK", Some("K1")),
            Some("click-k1"),
        ),
        (
            "other event_key falls to the next rule",
            event_message("CLICK", Some("K2")),
            Some("click-any:K2"),
        ),
        (
            "fields",
            image_message("http://x/a.jpg", "m1"),
            Some("fields:m1"),
        ),
        (
            "fields must all match",
            image_message("http://x/b.jpg", "m2"),
            None,
        ),
        ("no reply rule", text_message("quiet"), None),
        ("no rule matched", text_message("nothing"), None),
        (
            "no rule matched (event)",
            event_message("VIEW", Some("https://x")),
            None,
        ),
    ]
}

/// Names of the elements of `xml` in document order (CDATA content skipped), for checking that
/// a reply has exactly the expected structure. Independent of the project's parser.
pub fn xml_elements(xml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r.find("]]>").expect("unterminated CDATA");
            rest = &r[end + 3..];
        } else if rest.starts_with("</") {
            rest = &rest[2..];
        } else {
            let end = rest
                .find(|c: char| c == '>' || c == '/' || c.is_whitespace())
                .expect("unterminated tag");
            names.push(rest[1..end].to_string());
            rest = &rest[end..];
        }
    }
    names
}

/// Values of every `<name>` element of `xml` (CDATA joined), in document order.
pub fn xml_fields(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let v = xml_field(&rest[i..], name).expect("closed element");
        out.push(v);
        rest = &rest[i + open.len()..];
    }
    out
}

/// A config with top-level settings `top`, one account `test` at `/weixin` with `token`
/// (plus `account_extra` lines) and `rules`.
pub fn config_toml(top: &str, token: &str, account_extra: &str, rules: &str) -> String {
    format!(
        "log_level = \"info\"\n{top}\n\n[[account]]\nname = \"test\"\npath = \"/weixin\"\n\
         token = \"{token}\"\n{account_extra}\n\n{rules}"
    )
}

/// (element name, text) of every element of `xml` in document order, CDATA-aware (a `<tag>`
/// or `</tag>` inside CDATA is text); a container's text is what lies directly in it.
/// Independent of the project's parser; panics on a malformed document.
pub fn xml_leaves(xml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut rest = xml;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r.find("]]>").expect("unterminated CDATA");
            let i = *open.last().expect("CDATA outside an element");
            out[i].1.push_str(&r[..end]);
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r.find('>').expect("unterminated end tag");
            let i = open.pop().expect("end tag without start");
            assert_eq!(out[i].0, &r[..end], "mismatched end tag in {xml}");
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('<') {
            let end = r.find('>').expect("unterminated tag");
            let tag = &r[..end];
            let (name, empty) = match tag.strip_suffix('/') {
                Some(n) => (n.trim(), true),
                None => (tag, false),
            };
            out.push((name.to_string(), String::new()));
            if !empty {
                open.push(out.len() - 1);
            }
            rest = &r[end + 1..];
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            if let Some(&i) = open.last() {
                out[i].1.push_str(&rest[..end]);
            } else {
                assert!(rest[..end].trim().is_empty(), "text outside the root");
            }
            rest = &rest[end..];
        }
    }
    assert!(open.is_empty(), "unclosed elements in {xml}");
    out
}

/// One rule per reply type of PROTOCOL.md §4 (and "no reply"), each triggered by a text
/// message or a CLICK event; see [`reply_triggers`].
pub const REPLY_RULES: &str = r#"
[[account.rule]]
content = "r-text"
reply = { type = "text", content = "T {FromUserName}" }
[[account.rule]]
content = "r-image"
reply = { type = "image", media_id = "img-{MsgId}" }
[[account.rule]]
content = "r-voice"
reply = { type = "voice", media_id = "voice-1" }
[[account.rule]]
content = "r-video"
reply = { type = "video", media_id = "vid-1", title = "Video {Content}", description = "a <video> & more" }
[[account.rule]]
content = "r-music"
reply = { type = "music", title = "Song", description = "by {ToUserName}", music_url = "http://m/a.mp3", hq_music_url = "http://m/a-hq.mp3", thumb_media_id = "thumb-1" }
[[account.rule]]
content = "r-music-min"
reply = { type = "music", thumb_media_id = "thumb-2" }
[[account.rule]]
name = "news3"
content = "r-news"
reply = { type = "news", articles = [
  { title = "A1 {Content}", description = "d1", pic_url = "http://p/1.jpg", url = "http://u/1" },
  { title = "A2", description = "d2", pic_url = "http://p/2.jpg", url = "http://u/2" },
  { title = "A3", description = "d3", pic_url = "http://p/3.jpg", url = "http://u/3" },
] }
[[account.rule]]
event = "CLICK"
event_key = "NEWS3"
reply = { type = "news", articles = [
  { title = "A1 {EventKey}", description = "d1", pic_url = "http://p/1.jpg", url = "http://u/1" },
  { title = "A2", description = "d2", pic_url = "http://p/2.jpg", url = "http://u/2" },
  { title = "A3", description = "d3", pic_url = "http://p/3.jpg", url = "http://u/3" },
] }
[[account.rule]]
event = "CLICK"
event_key = "NEWS9"
reply = { type = "news", articles = [
  { title = "1" }, { title = "2" }, { title = "3" }, { title = "4" },
  { title = "5" }, { title = "6" }, { title = "7" }, { title = "8", url = "http://u/8" },
] }
[[account.rule]]
content = "r-kf"
reply = { type = "transfer_customer_service" }
[[account.rule]]
content = "r-kf-acct"
reply = { type = "transfer_customer_service", kf_account = "kf2001@gh_test" }
[[account.rule]]
content = "r-none"
reply = { type = "none" }
"#;

/// A message triggering each rule of [`REPLY_RULES`].
pub fn reply_triggers() -> Vec<String> {
    let mut v: Vec<String> = [
        "r-text",
        "r-image",
        "r-voice",
        "r-video",
        "r-music",
        "r-music-min",
        "r-news",
        "r-kf",
        "r-kf-acct",
        "r-none",
        "unmatched",
    ]
    .iter()
    .map(|c| text_message(c))
    .collect();
    v.push(event_message("CLICK", Some("NEWS3")));
    v.push(event_message("CLICK", Some("NEWS9")));
    v
}
// ---------------------------------------------------------------------------------------------
// Socket activation, signals and process-lifecycle helpers (tests/activation.rs, restart.rs,
// reload.rs, idle_exit.rs).

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

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    pub fn term(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    pub fn hup(&self) {
        self.signal(rustix::process::Signal::HUP);
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

/// One signed text message straight to the responder over FastCGI (no nginx), returning the
/// reply's `Content`.
pub fn fcgi_text(socket: &Path, token: &str, content: &str) -> std::io::Result<(u16, String)> {
    use weixin_fcgi::fastcgi::client;
    let mut conn = client::Connection::connect(
        socket.to_str().expect("utf-8 path"),
        Duration::from_secs(10),
    )?;
    let query = signed_query(token);
    let body = text_message(content);
    let len = body.len().to_string();
    let params: Vec<(&str, &[u8])> = vec![
        ("REQUEST_METHOD", b"POST"),
        ("DOCUMENT_URI", b"/weixin"),
        ("SCRIPT_NAME", b"/weixin"),
        ("REQUEST_URI", b"/weixin"),
        ("QUERY_STRING", query.as_bytes()),
        ("CONTENT_TYPE", b"text/xml"),
        ("CONTENT_LENGTH", len.as_bytes()),
    ];
    let resp = client::request(&mut conn, 1, &params, body.as_bytes(), false)?;
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    Ok((resp.status, xml_field(&text, "Content").unwrap_or(text)))
}

/// A signed text message through nginx; `Ok(Content)` only for a 200 with a reply.
pub fn nginx_text(port: u16, token: &str, content: &str) -> Result<String, String> {
    let resp = try_http(
        port,
        "POST",
        &format!("/weixin?{}", signed_query(token)),
        text_message(content).as_bytes(),
    )
    .map_err(|e| format!("transport: {e}"))?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    xml_field(&resp.text(), "Content").ok_or_else(|| format!("no Content in {}", resp.text()))
}

/// A config whose one rule answers every text with `"{prefix}: {Content}"`; `top` goes before
/// the account (e.g. `idle_exit = 1`).
pub fn prefix_config(token: &str, prefix: &str, top: &str) -> String {
    format!(
        "{top}\n{}",
        config_with_rules(
            token,
            &format!(
                "[[account.rule]]\nname = \"echo\"\nmsg_type = \"text\"\n\
                 reply = {{ type = \"text\", content = \"{prefix}: {{Content}}\" }}\n"
            ),
        )
    )
}
