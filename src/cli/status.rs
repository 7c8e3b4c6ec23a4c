//! `weixin-fcgi status`: fetch a running responder's status page over its FastCGI socket, as
//! `cgi-fcgi` users do for php-fpm's `pm.status_path` — no nginx needed.

use super::{Args, usage_error};
use crate::config::Config;
use crate::fastcgi::client::{self, Connection};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
weixin-fcgi status — print the status page of a running responder

USAGE:
    weixin-fcgi status [--to ADDR] [--config FILE] [--path PATH] [--json | --openmetrics]

Asks the responder over its FastCGI socket for the page at `status_path` (plain text, JSON or
OpenMetrics), as cgi-fcgi does for php-fpm's status page; nginx is not involved. Under socket
activation the request starts an idle service (and its counters start from zero).

OPTIONS:
    --to ADDR            unix:PATH, a socket path, or 127.0.0.1:PORT. Default: the config's
                         `listen`, else /run/weixin-fcgi.sock (the packaged socket)
    -c, --config FILE    where status_path and listen come from. Default:
                         /etc/weixin-fcgi/weixin-fcgi.toml if it exists (readable by root)
    --path PATH          the status path (default: the config's status_path)
    --json               the JSON page
    --openmetrics        the OpenMetrics (Prometheus) page
    --timeout SECS       connect/read timeout (default 5)
    -h, --help           this text

EXIT STATUS:
    0 page printed; 1 no status path, no answer, or a status other than 200; 2 usage error
";

/// The config the package installs.
const DEFAULT_CONFIG: &str = "/etc/weixin-fcgi/weixin-fcgi.toml";
/// The socket the package's unit listens on.
const DEFAULT_SOCKET: &str = "/run/weixin-fcgi.sock";

/// Entry point: `args` are the words after `status`.
pub fn main(args: &[String]) -> ExitCode {
    let parsed = match Args::parse(
        args,
        &["--to", "-c", "--config", "--path", "--timeout"],
        &["-h", "--help", "--json", "--openmetrics"],
    ) {
        Ok(a) => a,
        Err(e) => return usage_error("status", &e),
    };
    if parsed.has("-h") || parsed.has("--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if let Some(extra) = parsed.positional.first() {
        return usage_error(
            "status",
            &format!("unexpected argument {extra:?} (see --help)"),
        );
    }
    if parsed.has("--json") && parsed.has("--openmetrics") {
        return usage_error("status", "--json and --openmetrics exclude each other");
    }
    let timeout = match parsed.value("--timeout").map(str::parse::<u64>) {
        None => Duration::from_secs(5),
        Some(Ok(s)) if s > 0 => Duration::from_secs(s),
        Some(_) => return usage_error("status", "--timeout needs a positive number of seconds"),
    };
    let config_path = parsed.value("--config").or(parsed.value("-c"));
    let config = match config_path {
        Some(p) => Some(Config::load(Path::new(p))),
        None if parsed.value("--path").is_none() || parsed.value("--to").is_none() => {
            Path::new(DEFAULT_CONFIG)
                .exists()
                .then(|| Config::load(Path::new(DEFAULT_CONFIG)))
        }
        None => None,
    };
    let config = match config {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("weixin-fcgi status: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let path = match parsed
        .value("--path")
        .map(str::to_string)
        .or_else(|| config.as_ref().and_then(|c| c.status_path.clone()))
    {
        Some(p) => p,
        None => {
            eprintln!(
                "weixin-fcgi status: no status path: set status_path = \"/weixin-status\" in {} \
                 (then systemctl reload weixin-fcgi), or give --path",
                config
                    .as_ref()
                    .map_or(DEFAULT_CONFIG, |c| c.origin.as_str())
            );
            return ExitCode::FAILURE;
        }
    };
    let to = parsed
        .value("--to")
        .map(str::to_string)
        .or_else(|| config.as_ref().and_then(|c| c.listen.clone()))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    let query = if parsed.has("--json") {
        "json"
    } else if parsed.has("--openmetrics") {
        "openmetrics"
    } else {
        ""
    };
    match fetch(&to, &path, query, timeout) {
        Ok(body) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&body);
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weixin-fcgi status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GET `path?query` over FastCGI at `to`; the body of a 200.
fn fetch(to: &str, path: &str, query: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut conn =
        Connection::connect(to, timeout).map_err(|e| format!("cannot connect to {to}: {e}"))?;
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let params: [(&str, &[u8]); 6] = [
        ("REQUEST_METHOD", b"GET"),
        ("DOCUMENT_URI", path.as_bytes()),
        ("SCRIPT_NAME", path.as_bytes()),
        ("REQUEST_URI", uri.as_bytes()),
        ("QUERY_STRING", query.as_bytes()),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
    ];
    let response = client::request(&mut conn, 1, &params, b"", false)
        .map_err(|e| format!("no answer from {to}: {e}"))?;
    if response.status != 200 {
        let body = String::from_utf8_lossy(&response.body);
        return Err(format!(
            "{to} answered status {} for {path}: {} (is status_path set to {path:?}?)",
            response.status,
            body.lines().next().unwrap_or("").trim()
        ));
    }
    Ok(response.body)
}
