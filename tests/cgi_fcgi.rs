//! A second real FastCGI client: Debian's `cgi-fcgi -bind -connect SOCKET` (libfcgi-bin)
//! talks to the responder's socket directly. Its environment becomes the FastCGI params, its
//! stdin the request body, and it prints the CGI response (headers, blank line, body).

pub mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "cgitoken";

struct CgiResponse {
    /// `Status:` code (200 when the responder sends none, as CGI says).
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// Runs `cgi-fcgi` against `socket` with the given CGI params and body.
fn cgi_fcgi(socket: &std::path::Path, params: &[(&str, &str)], body: &[u8]) -> CgiResponse {
    require_tool("cgi-fcgi");
    let mut cmd = Command::new("cgi-fcgi");
    cmd.arg("-bind")
        .arg("-connect")
        .arg(socket)
        .env_clear()
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in params {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn cgi-fcgi");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write body");
    assert!(
        wait_for(Duration::from_secs(10), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "cgi-fcgi did not finish within 10 s"
    );
    let out = child.wait_with_output().expect("cgi-fcgi output");
    assert!(
        out.status.success(),
        "cgi-fcgi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = out.stdout;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("CGI headers end with a blank line");
    let headers = String::from_utf8(raw[..end].to_vec()).expect("headers are ASCII");
    let status = headers
        .lines()
        .find_map(|l| l.strip_prefix("Status:"))
        .map(|s| s.trim()[..3].parse().expect("status code"))
        .unwrap_or(200);
    CgiResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn responder() -> Responder {
    started(Responder::start(&config_with_rules(
        TOKEN,
        "[[account.rule]]\nmsg_type = \"text\"\nreply = { type = \"text\", content = \"cgi: {Content}\" }\n",
    )))
}

/// Waits until the socket accepts connections: the socket file appears at bind(), a moment
/// before listen(), and cgi-fcgi (unlike nginx, started later) would connect in between.
fn started(r: Responder) -> Responder {
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&r.socket).is_ok()
        }),
        "responder socket never accepted a connection: {}",
        r.stderr()
    );
    r
}

fn params<'a>(method: &'a str, query: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", method),
        ("QUERY_STRING", query),
        ("SCRIPT_NAME", "/weixin"),
        ("DOCUMENT_URI", "/weixin"),
        ("REQUEST_URI", "/weixin"),
        ("CONTENT_TYPE", "text/xml"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]
}

#[test]
fn get_verification_echoes_exactly() {
    let r = responder();
    let ts = now().to_string();
    let query = format!(
        "signature={}&timestamp={ts}&nonce=42&echostr=hello-cgi",
        sign(&[TOKEN, &ts, "42"])
    );
    let resp = cgi_fcgi(&r.socket, &params("GET", &query), b"");
    assert_eq!(resp.status, 200, "{}", resp.headers);
    assert_eq!(resp.body, b"hello-cgi");
}

#[test]
fn signed_text_message_is_answered() {
    let r = responder();
    let query = signed_query(TOKEN);
    let body = text_message("via libfcgi 你好");
    let resp = cgi_fcgi(&r.socket, &params("POST", &query), body.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.headers);
    assert!(
        resp.headers
            .to_ascii_lowercase()
            .contains("content-type: application/xml; charset=utf-8"),
        "{}",
        resp.headers
    );
    let xml = String::from_utf8(resp.body).expect("UTF-8 reply");
    assert_eq!(
        xml_field(&xml, "Content").as_deref(),
        Some("cgi: via libfcgi 你好")
    );
    assert_eq!(xml_field(&xml, "ToUserName").as_deref(), Some("oUser"));
    assert_eq!(xml_field(&xml, "FromUserName").as_deref(), Some("gh_test"));
    assert_eq!(xml_field(&xml, "MsgType").as_deref(), Some("text"));
}

#[test]
fn bad_signature_is_403_and_unknown_path_404() {
    let r = responder();
    let ts = now().to_string();
    let query = format!("signature={}&timestamp={ts}&nonce=1", "f".repeat(40));
    let body = text_message("hi");
    let resp = cgi_fcgi(&r.socket, &params("POST", &query), body.as_bytes());
    assert_eq!(resp.status, 403, "{}", resp.headers);
    assert!(!String::from_utf8_lossy(&resp.body).contains("cgi: hi"));
    let resp = cgi_fcgi(
        &r.socket,
        &params("GET", &format!("{query}&echostr=leak")),
        b"",
    );
    assert_eq!(resp.status, 403);
    assert!(!String::from_utf8_lossy(&resp.body).contains("leak"));

    let mut p = params("POST", "");
    for (k, v) in p.iter_mut() {
        if *k == "DOCUMENT_URI" || *k == "SCRIPT_NAME" {
            *v = "/elsewhere";
        }
    }
    let resp = cgi_fcgi(&r.socket, &p, body.as_bytes());
    assert_eq!(resp.status, 404, "{}", resp.headers);
    // The responder is still fine afterwards.
    let resp = cgi_fcgi(
        &r.socket,
        &params("POST", &signed_query(TOKEN)),
        body.as_bytes(),
    );
    assert_eq!(resp.status, 200);
}
