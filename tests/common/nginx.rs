//! A real nginx on a free loopback port with the repository's `nginx/weixin.conf` included
//! verbatim (only its log directory pointed at the test's own) and the `log_format` of
//! `nginx/weixin-upstream.conf`, and an HTTP client (ureq) to talk to it.

use super::{TempDir, repo, require_tool, wait_for};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A real nginx on 127.0.0.1 with the repo's `nginx/weixin.conf` included verbatim (logs
/// redirected to its temp dir), the `log_format` of `nginx/weixin-upstream.conf`, and an
/// upstream `weixin_fcgi` pointing at `socket` (or several, [`Nginx::start_upstream`]).
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
        Self::start_with_snippets(socket, keepalive, extra_server, &[])
    }

    /// Like [`Nginx::start_with`], also including the repo's `nginx/NAME` for each of
    /// `snippets` (e.g. `weixin-oauth.conf`), verbatim but for the log directory.
    pub fn start_with_snippets(
        socket: &Path,
        keepalive: bool,
        extra_server: &str,
        snippets: &[&str],
    ) -> Nginx {
        Self::start_servers(&[socket], keepalive, extra_server, snippets)
    }

    /// Like [`Nginx::start`], with one upstream server per socket: nginx takes them in turn
    /// (round robin), as for several instances behind one upstream.
    pub fn start_upstream(sockets: &[&Path], keepalive: bool) -> Nginx {
        Self::start_servers(sockets, keepalive, "", &[])
    }

    fn start_servers(
        sockets: &[&Path],
        keepalive: bool,
        extra_server: &str,
        snippets: &[&str],
    ) -> Nginx {
        require_tool("nginx");
        let dir = TempDir::new("nginx");
        let port = free_port();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        // The snippet says `include fastcgi_params;`, resolved next to nginx.conf, as in /etc/nginx.
        std::fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params"))
            .expect("/etc/nginx/fastcgi_params (Debian's nginx-common)");
        let snippet = snippet_copy(&dir, "weixin.conf");
        let mut extra_server = extra_server.to_string();
        for name in snippets {
            extra_server.push_str(&format!(
                "\n        include {};",
                snippet_copy(&dir, name).display()
            ));
        }
        let log_format = log_format();
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
    upstream weixin_fcgi {{ {servers} {keep} }}
    server {{
        listen 127.0.0.1:{port};
        {extra_server}
        include {snippet};
    }}
}}
",
            dir = dir.path().display(),
            servers = sockets
                .iter()
                .map(|s| format!("server unix:{};", s.display()))
                .collect::<String>(),
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

/// The repo's `nginx/NAME`, copied into `dir` with only `/var/log/nginx/` pointed at
/// `dir/logs/` (a test must not write to, or need, the system's log directory).
fn snippet_copy(dir: &TempDir, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("nginx").join(name)).expect("nginx snippet");
    let logs = format!("{}/logs/", dir.path().display());
    let copy = dir.join(name);
    std::fs::write(&copy, text.replace("/var/log/nginx/", &logs)).expect("write snippet");
    copy
}

/// The `log_format` statement of the repo's `nginx/weixin-upstream.conf`, verbatim (the rest of
/// that file names the deployment's socket, which the tests replace); empty if it has none.
fn log_format() -> String {
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

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The first value of header `name` (any case) in `headers`.
pub fn header_in<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One HTTP request to 127.0.0.1:`port` (`Content-Type: text/xml`, the body as given).
pub fn http(port: u16, method: &str, path_and_query: &str, body: &[u8]) -> HttpResponse {
    try_http(port, method, path_and_query, body).expect("HTTP request")
}

/// Like [`http`], returning errors instead of panicking (for load loops).
pub fn try_http(
    port: u16,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<HttpResponse, ureq::Error> {
    try_http_within(port, method, path_and_query, body, Duration::from_secs(10))
}

/// One attempt as WeChat makes it: `message` POSTed to `/weixin` through the nginx on `port`,
/// signed with `token`, given up after `wait` (WeChat's 5 s, shortened by the tests). The
/// status and the reply's Content (`None` for "success" or an error page); `None` when nothing
/// came in time.
pub fn wechat_attempt(
    port: u16,
    token: &str,
    message: &str,
    wait: Duration,
) -> Option<(u16, Option<String>)> {
    let query = format!("/weixin?{}", crate::common::signed_query(token));
    let resp = try_http_within(port, "POST", &query, message.as_bytes(), wait).ok()?;
    // A reply is XML; anything else ("success", nginx's error pages) has no Content.
    let text = resp.text();
    let content = (resp.status == 200 && text.starts_with("<xml>"))
        .then(|| crate::common::xml_field(&text, "Content"))
        .flatten();
    Some((resp.status, content))
}

/// Like [`try_http`], given up after `timeout`.
pub fn try_http_within(
    port: u16,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path_and_query}"))
        .header("Content-Type", "text/xml")
        .body(body.to_vec())?;
    let mut response = agent.run(request)?;
    let headers = (response.headers().iter())
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()?;
    Ok(HttpResponse {
        status: response.status().as_u16(),
        headers,
        body,
    })
}
