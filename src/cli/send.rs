//! `weixin-fcgi send`: play WeChat's server against a responder, locally.
//!
//! Builds the request exactly as WeChat does (PROTOCOL.md §2–§5): `signature` over
//! `[token, timestamp, nonce]` with timestamp = now and a random nonce, `openid`, and in safe
//! mode `encrypt_type=aes`, `msg_signature` over `[token, timestamp, nonce, Encrypt]` and the
//! body `<xml><ToUserName>…</ToUserName><Encrypt>…</Encrypt></xml>`. Sends it over FastCGI
//! straight to the responder's socket, or over plain HTTP to nginx, then checks the reply:
//! status 200, the `MsgSignature` of an encrypted reply, decryption, and the reply XML.
//!
//! # Limitations
//! `https://` is not supported (no TLS client): send to nginx's plain-HTTP listener on
//! loopback, or to the FastCGI socket directly.

use super::{Args, random_digits, usage_error};
use crate::config::{Config, DEFAULT_DEMO_TOKEN, check_token};
use crate::fastcgi::client::{self, Connection};
use crate::logger::for_terminal;
use crate::wechat::crypto::{self, AesKey};
use crate::wechat::message::Message;
use crate::wechat::reply::write_cdata;
use crate::wechat::signature::{sign, verify_msg};
use crate::wechat::unix_time;
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const HELP: &str = "\
weixin-fcgi send — play WeChat's server: send a signed (and in safe mode encrypted) callback
to a responder and show its reply

USAGE:
    weixin-fcgi send [OPTIONS] KIND [ARGS…]

KINDS:
    verify                      the GET URL-verification handshake (checks echostr comes back)
    text \"CONTENT\"              a text message (write `text -- \"-1\"` for text starting with -)
    image                       an image message (--pic-url, --media-id)
    voice                       a voice message (--media-id, --recognition \"TEXT\")
    location                    a location message (Guangzhou, scale 20)
    link                        a link message
    event NAME [KEY]            an event: subscribe, unsubscribe, CLICK KEY, VIEW URL,
                                SCAN KEY, LOCATION, or any other name with an optional key
    xml FILE                    a hand-written message XML, sent as is (encrypted in safe mode)

OPTIONS:
    --to ADDR            unix:PATH, a socket path, or HOST:PORT (FastCGI), or
                         http://HOST:PORT[/PATH] (HTTP, e.g. through nginx; https is not
                         supported). Default: the config's `listen`, else
                         $XDG_RUNTIME_DIR/weixin-fcgi.sock, as the server does
    --path PATH          the account's URL path (default: the account's, else /weixin)
    -c, --config FILE    take token, aes_key, app_id and path from this config's account
    --account NAME       which account of --config (default: the first)
    --token T            the Token (default: $WEIXIN_TOKEN, else the demo token)
    --aes-key K          the EncodingAESKey (43 characters): use safe mode; needs --app-id
    --app-id A           the AppID
    --plain              send plaintext even when an aes_key is known
    --from OPENID        the user's OpenID (default o-test-user)
    --to-user NAME       the account's original ID (default gh_test)
    --recognition TEXT   voice: the speech-to-text result
    --media-id ID        image/voice: MediaId
    --pic-url URL        image: PicUrl
    --timeout SECS       bound on the whole request: connect, send, and the complete
                         reply (default 10)
    --raw                print the reply body exactly as received (otherwise control
                         characters in the reply are shown escaped, e.g. \u{1b})
    -h, --help           this text

EXIT STATUS:
    0 reply received and valid (or no reply, `success`); 1 refused (status other than 200),
    bad reply signature, undecryptable or malformed reply; 2 usage error
";

const WITH_VALUE: &[&str] = &[
    "--to",
    "--path",
    "-c",
    "--config",
    "--account",
    "--token",
    "--aes-key",
    "--app-id",
    "--from",
    "--to-user",
    "--recognition",
    "--media-id",
    "--pic-url",
    "--timeout",
];
const SWITCHES: &[&str] = &["--plain", "--raw", "-h", "--help"];

/// Default OpenID of the simulated user: obviously not a real one.
pub const DEFAULT_FROM: &str = "o-test-user";
/// Default original ID of the simulated account.
pub const DEFAULT_TO_USER: &str = "gh_test";
/// Largest reply ciphertext decrypted.
const MAX_REPLY: usize = 1024 * 1024;

/// Who signs, and how.
struct Credentials {
    token: String,
    /// Safe mode: the key and AppID.
    aes: Option<(AesKey, String)>,
}

/// Where the request goes.
#[derive(Debug)]
enum Target {
    FastCgi(String),
    Http { host_port: String },
}

/// A response, from either transport.
struct Received {
    status: u16,
    body: Vec<u8>,
}

/// Entry point: `args` are the words after `send`.
pub fn main(args: &[String]) -> ExitCode {
    let parsed = match Args::parse(args, WITH_VALUE, SWITCHES) {
        Ok(a) => a,
        Err(e) => return usage_error("send", &e),
    };
    if parsed.has("-h") || parsed.has("--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    match run(&parsed) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => usage_error("send", &e),
        Err(Failure::Failed(e)) => {
            eprintln!("weixin-fcgi send: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The request or reply failed (exit 1).
    Failed(String),
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}
fn failed(msg: impl Into<String>) -> Failure {
    Failure::Failed(msg.into())
}

fn run(args: &Args) -> Result<ExitCode, Failure> {
    let config = match args.value("--config").or(args.value("-c")) {
        Some(path) => {
            Some(Config::load(std::path::Path::new(path)).map_err(|e| usage(e.to_string()))?)
        }
        None => None,
    };
    let (creds, account_path) = credentials(args, config.as_ref())?;
    let path = args
        .value("--path")
        .map(str::to_string)
        .or(account_path)
        .unwrap_or_else(|| "/weixin".to_string());
    let to = match args.value("--to") {
        Some(t) => t.to_string(),
        None => config
            .as_ref()
            .and_then(|c| c.listen.clone())
            .unwrap_or_else(default_socket),
    };
    let (target, path) = target(&to, &path)?;
    let timeout = match args.value("--timeout") {
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| usage(format!("--timeout {t:?}: expected seconds, e.g. 10")))?,
        None => Duration::from_secs(10),
    };

    let (kind, rest) = args.positional.split_first().ok_or_else(|| {
        usage("missing KIND: verify, text, image, voice, location, link, event or xml (see --help)")
    })?;
    let timestamp = unix_time().to_string();
    let nonce = random_digits(10).map_err(failed)?;
    let signature = sign_str(&[&creds.token, &timestamp, &nonce]);
    let from = args.value("--from").unwrap_or(DEFAULT_FROM);
    let to_user = args.value("--to-user").unwrap_or(DEFAULT_TO_USER);

    if kind == "verify" {
        if !rest.is_empty() {
            return Err(usage("verify takes no arguments"));
        }
        let echostr = random_digits(19).map_err(failed)?;
        let query =
            format!("signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr={echostr}");
        let got = exchange(&target, &path, "GET", &query, b"", timeout)?;
        return finish_verify(&got, &echostr, args.has("--raw"));
    }

    let message = build_message(kind, rest, args, from, to_user)?;
    let mut query = format!(
        "signature={signature}&timestamp={timestamp}&nonce={nonce}&openid={}",
        crate::query::encode(from)
    );
    let safe = match &creds.aes {
        Some(aes) if !args.has("--plain") => Some(aes),
        _ => None,
    };
    let body = match safe {
        None => message,
        Some((key, app_id)) => {
            let mut encrypt = Vec::new();
            crypto::encrypt(key, app_id, &message, &mut encrypt)
                .map_err(|e| failed(format!("cannot encrypt the message: {e}")))?;
            let encrypt = String::from_utf8(encrypt)
                .map_err(|_| failed("encrypted message is not base64 text"))?;
            let msg_signature = sign_str(&[&creds.token, &timestamp, &nonce, &encrypt]);
            query.push_str(&format!("&encrypt_type=aes&msg_signature={msg_signature}"));
            // The outer ToUserName is the account, as WeChat sends it (from the message itself
            // for `xml FILE`).
            let outer_to = std::str::from_utf8(&message)
                .ok()
                .and_then(|m| {
                    Message::parse(m.as_bytes())
                        .ok()
                        .map(|p| p.to_user().to_string())
                })
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| to_user.to_string());
            let mut body = b"<xml><ToUserName>".to_vec();
            write_cdata(&mut body, &outer_to);
            body.extend_from_slice(b"</ToUserName><Encrypt><![CDATA[");
            body.extend_from_slice(encrypt.as_bytes());
            body.extend_from_slice(b"]]></Encrypt></xml>");
            body
        }
    };
    let got = exchange(&target, &path, "POST", &query, &body, timeout)?;
    finish_post(&got, &creds, safe.is_some(), args.has("--raw"))
}

/// Token and optional key from the flags or the config; also the account's path.
fn credentials(
    args: &Args,
    config: Option<&Config>,
) -> Result<(Credentials, Option<String>), Failure> {
    if let Some(config) = config {
        if args.has("--token") || args.has("--aes-key") || args.has("--app-id") {
            return Err(usage(
                "use either --config or --token/--aes-key/--app-id, not both",
            ));
        }
        let account = match args.value("--account") {
            Some(name) => config
                .accounts
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        config.accounts.iter().map(|a| a.name.as_str()).collect();
                    usage(format!(
                        "no account {name:?} in {} (accounts: {})",
                        config.origin,
                        names.join(", ")
                    ))
                })?,
            None => config
                .accounts
                .first()
                .ok_or_else(|| usage(format!("{} has no account", config.origin)))?,
        };
        let aes = match (&account.aes_key, &account.app_id) {
            (Some(k), Some(a)) => Some((k.clone(), a.clone())),
            _ => None,
        };
        let creds = Credentials {
            token: account.token.expose().to_string(),
            aes,
        };
        return Ok((creds, Some(account.path.clone())));
    }
    if args.has("--account") {
        return Err(usage("--account needs --config"));
    }
    let token = match args.value("--token") {
        Some(t) => t.to_string(),
        None => std::env::var("WEIXIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_DEMO_TOKEN.to_string()),
    };
    check_token(&token).map_err(|e| usage(format!("--token: {e}")))?;
    let aes = match (args.value("--aes-key"), args.value("--app-id")) {
        (Some(k), Some(a)) => {
            let key =
                AesKey::from_encoding_aes_key(k).map_err(|e| usage(format!("--aes-key: {e}")))?;
            if a.is_empty() {
                return Err(usage("--app-id must not be empty"));
            }
            Some((key, a.to_string()))
        }
        (None, None) => None,
        _ => {
            return Err(usage(
                "--aes-key and --app-id go together (safe mode needs both)",
            ));
        }
    };
    Ok((Credentials { token, aes }, None))
}

/// Where the server creates its socket by default.
fn default_socket() -> String {
    let dir = std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ".".to_string());
    format!("{dir}/weixin-fcgi.sock")
}

/// Parses `--to`; an `http://` URL with a path overrides `path`.
fn target(to: &str, path: &str) -> Result<(Target, String), Failure> {
    if to.starts_with("https://") {
        return Err(usage(
            "https is not supported: send to nginx's plain-HTTP port (http://127.0.0.1:PORT) or to the FastCGI socket",
        ));
    }
    if let Some(rest) = to.strip_prefix("http://") {
        let (host_port, url_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host_port.is_empty() {
            return Err(usage(format!("--to {to:?}: no host")));
        }
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:80")
        };
        let path = if url_path.is_empty() || url_path == "/" {
            path.to_string()
        } else {
            url_path.to_string()
        };
        return Ok((Target::Http { host_port }, path));
    }
    if to.contains("://") {
        return Err(usage(format!(
            "--to {to:?}: expected unix:PATH, a socket path, HOST:PORT or http://HOST:PORT"
        )));
    }
    // A bare file name is a socket in the current directory, not a host.
    let addr = if !to.contains('/') && !to.contains(':') {
        format!("unix:{to}")
    } else {
        to.to_string()
    };
    Ok((Target::FastCgi(addr), path.to_string()))
}

/// `sign` over strings, as a String.
fn sign_str(parts: &[&str]) -> String {
    let mut bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    String::from_utf8_lossy(&sign(&mut bytes)).into_owned()
}

/// The plaintext message XML for `kind`.
fn build_message(
    kind: &str,
    rest: &[String],
    args: &Args,
    from: &str,
    to_user: &str,
) -> Result<Vec<u8>, Failure> {
    let arity = |n: std::ops::RangeInclusive<usize>, what: &str| {
        if n.contains(&rest.len()) {
            Ok(())
        } else {
            Err(usage(format!("{kind}: expected {what}")))
        }
    };
    let msg_id = || -> Result<String, Failure> { random_digits(16).map_err(failed) };
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let msg_type = match kind {
        "xml" => {
            arity(1..=1, "a FILE")?;
            let file = &rest[0];
            let xml =
                std::fs::read(file).map_err(|e| usage(format!("xml {file}: cannot read: {e}")))?;
            return Ok(xml);
        }
        "text" => {
            arity(1..=1, "the text, e.g. text \"hello\"")?;
            fields.push(("Content", Value::Text(rest[0].clone())));
            fields.push(("MsgId", Value::Number(msg_id()?)));
            "text"
        }
        "image" => {
            arity(0..=0, "no arguments (use --pic-url, --media-id)")?;
            let pic = args
                .value("--pic-url")
                .unwrap_or("https://example.com/test.jpg");
            let media = args.value("--media-id").unwrap_or("test-image-media-id");
            fields.push(("PicUrl", Value::Text(pic.to_string())));
            fields.push(("MediaId", Value::Text(media.to_string())));
            fields.push(("MsgId", Value::Number(msg_id()?)));
            "image"
        }
        "voice" => {
            arity(
                0..=0,
                "no arguments (use --recognition \"TEXT\", --media-id)",
            )?;
            let media = args.value("--media-id").unwrap_or("test-voice-media-id");
            fields.push(("MediaId", Value::Text(media.to_string())));
            fields.push(("Format", Value::Text("amr".to_string())));
            if let Some(r) = args.value("--recognition") {
                fields.push(("Recognition", Value::Text(r.to_string())));
            }
            fields.push(("MsgId", Value::Number(msg_id()?)));
            "voice"
        }
        "location" => {
            arity(0..=0, "no arguments")?;
            fields.push(("Location_X", Value::Number("23.134521".to_string())));
            fields.push(("Location_Y", Value::Number("113.358803".to_string())));
            fields.push(("Scale", Value::Number("20".to_string())));
            fields.push(("Label", Value::Text("Guangzhou Tower".to_string())));
            fields.push(("MsgId", Value::Number(msg_id()?)));
            "location"
        }
        "link" => {
            arity(0..=0, "no arguments")?;
            fields.push(("Title", Value::Text("Test link".to_string())));
            fields.push((
                "Description",
                Value::Text("A link sent by weixin-fcgi send".to_string()),
            ));
            fields.push((
                "Url",
                Value::Text("https://example.com/article".to_string()),
            ));
            fields.push(("MsgId", Value::Number(msg_id()?)));
            "link"
        }
        "event" => {
            arity(
                1..=2,
                "an event name and an optional key, e.g. event CLICK MENU_KEY",
            )?;
            let name = rest[0].as_str();
            let key = rest.get(1).cloned();
            fields.push(("Event", Value::Text(name.to_string())));
            match name {
                "SCAN" | "subscribe" if key.is_some() => {
                    let key = key.unwrap_or_default();
                    fields.push(("EventKey", Value::Text(key)));
                    fields.push(("Ticket", Value::Text("test-qrcode-ticket".to_string())));
                }
                "LOCATION" => {
                    if key.is_some() {
                        return Err(usage("event LOCATION takes no key"));
                    }
                    fields.push(("Latitude", Value::Number("23.137466".to_string())));
                    fields.push(("Longitude", Value::Number("113.352425".to_string())));
                    fields.push(("Precision", Value::Number("119.385040".to_string())));
                }
                "CLICK" | "VIEW" | "SCAN" if key.is_none() => {
                    return Err(usage(format!(
                        "event {name} needs a key, e.g. event {name} KEY"
                    )));
                }
                _ => {
                    if let Some(key) = key {
                        fields.push(("EventKey", Value::Text(key)));
                    }
                }
            }
            "event"
        }
        other => {
            return Err(usage(format!(
                "unknown KIND {other:?}: expected verify, text, image, voice, location, link, event or xml"
            )));
        }
    };
    let mut out = b"<xml><ToUserName>".to_vec();
    write_cdata(&mut out, to_user);
    out.extend_from_slice(b"</ToUserName><FromUserName>");
    write_cdata(&mut out, from);
    out.extend_from_slice(
        format!(
            "</FromUserName><CreateTime>{}</CreateTime><MsgType>",
            unix_time()
        )
        .as_bytes(),
    );
    write_cdata(&mut out, msg_type);
    out.extend_from_slice(b"</MsgType>");
    for (name, value) in fields {
        out.extend_from_slice(format!("<{name}>").as_bytes());
        match value {
            Value::Text(t) => write_cdata(&mut out, &t),
            Value::Number(n) => out.extend_from_slice(n.as_bytes()),
        }
        out.extend_from_slice(format!("</{name}>").as_bytes());
    }
    out.extend_from_slice(b"</xml>");
    Ok(out)
}

/// A message field: CDATA text or a bare number, as WeChat writes them.
enum Value {
    Text(String),
    Number(String),
}

/// Sends one request and returns the status and body.
fn exchange(
    target: &Target,
    path: &str,
    method: &str,
    query: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Received, Failure> {
    match target {
        Target::FastCgi(addr) => {
            let deadline = Instant::now() + timeout;
            let conn = connect(addr, deadline)
                .map_err(|e| failed(format!("cannot connect to {addr}: {e}")))?;
            let mut conn = Deadline {
                stream: conn,
                deadline,
            };
            let uri = format!("{path}?{query}");
            let length = body.len().to_string();
            let content_type: &[u8] = if method == "POST" { b"text/xml" } else { b"" };
            let params: [(&str, &[u8]); 10] = [
                ("REQUEST_METHOD", method.as_bytes()),
                ("QUERY_STRING", query.as_bytes()),
                ("CONTENT_TYPE", content_type),
                ("CONTENT_LENGTH", length.as_bytes()),
                ("DOCUMENT_URI", path.as_bytes()),
                ("SCRIPT_NAME", path.as_bytes()),
                ("REQUEST_URI", uri.as_bytes()),
                ("SERVER_PROTOCOL", b"HTTP/1.1"),
                ("GATEWAY_INTERFACE", b"CGI/1.1"),
                ("REMOTE_ADDR", b"127.0.0.1"),
            ];
            let resp = client::request(&mut conn, 1, &params, body, false)
                .map_err(|e| failed(format!("FastCGI request to {addr} failed: {e}")))?;
            Ok(Received {
                status: resp.status,
                body: resp.body,
            })
        }
        Target::Http { host_port } => {
            http(host_port, method, &format!("{path}?{query}"), body, timeout)
                .map_err(|e| failed(format!("HTTP request to {host_port} failed: {e}")))
        }
    }
}

/// A stream on which every read and write waits at most until `deadline`, so `--timeout`
/// bounds the whole exchange, not each read (a peer trickling one byte at a time cannot keep
/// us waiting).
struct Deadline<S> {
    stream: S,
    deadline: Instant,
}

impl Deadline<Connection> {
    /// Arms the stream's timeouts with what is left, or fails once nothing is.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "--timeout reached before the whole reply arrived",
            ));
        }
        match &self.stream {
            Connection::Unix(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
            Connection::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
        }
    }
}

impl Read for Deadline<Connection> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl Write for Deadline<Connection> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Connects to `unix:PATH`, a path containing `/`, or `host:port` (as
/// [`Connection::connect`]), a TCP connect bounded by `deadline`.
fn connect(addr: &str, deadline: Instant) -> io::Result<Connection> {
    use std::os::unix::net::UnixStream;
    if let Some(path) = addr.strip_prefix("unix:") {
        return Ok(Connection::Unix(UnixStream::connect(path)?));
    }
    if addr.contains('/') {
        return Ok(Connection::Unix(UnixStream::connect(addr)?));
    }
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for sock in std::net::ToSocketAddrs::to_socket_addrs(addr)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "--timeout reached"));
        }
        match std::net::TcpStream::connect_timeout(&sock, left) {
            Ok(s) => return Ok(Connection::Tcp(s)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One HTTP request (ureq: no proxy, no redirects, the whole exchange under `timeout`).
fn http(
    host_port: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Received, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .user_agent("weixin-fcgi-send")
        .build()
        .into();
    let url = format!("http://{host_port}{uri}");
    let sent = if method == "POST" {
        agent
            .post(&url)
            .header("Content-Type", "text/xml")
            .send(body)
    } else {
        agent.get(&url).call()
    };
    let mut response = sent.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_REPLY as u64 + 64 * 1024)
        .read_to_vec()
        .map_err(|e| format!("while reading the response: {e}"))?;
    Ok(Received { status, body })
}

fn refused(got: &Received) -> Failure {
    let reason = String::from_utf8_lossy(&got.body);
    let reason = reason.trim();
    let reason = reason.lines().next().unwrap_or("");
    failed(format!(
        "refused: status {}{}{}",
        got.status,
        if reason.is_empty() { "" } else { ": " },
        for_terminal(reason)
    ))
}

fn finish_verify(got: &Received, echostr: &str, raw: bool) -> Result<ExitCode, Failure> {
    if raw {
        std::io::stdout().write_all(&got.body).ok();
    }
    if got.status != 200 {
        return Err(refused(got));
    }
    if got.body != echostr.as_bytes() {
        return Err(failed(format!(
            "verify: the body is not exactly the echostr sent ({echostr}): got {:?}",
            String::from_utf8_lossy(&got.body)
        )));
    }
    if !raw {
        println!("status 200\nverify ok (echostr {echostr} echoed back)");
    }
    Ok(ExitCode::SUCCESS)
}

fn finish_post(
    got: &Received,
    creds: &Credentials,
    safe: bool,
    raw: bool,
) -> Result<ExitCode, Failure> {
    if raw {
        std::io::stdout().write_all(&got.body).ok();
        std::io::stdout().flush().ok();
    }
    if got.status != 200 {
        return Err(refused(got));
    }
    let trimmed = got.body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"success" {
        if !raw {
            println!("status 200\nno reply (success)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outer =
        Message::parse(&got.body).map_err(|e| failed(format!("malformed reply XML: {e}")))?;
    let mut plain = Vec::new();
    let (mode, reply) = match outer.get("Encrypt") {
        Some(encrypt) => {
            let Some((key, app_id)) = creds.aes.as_ref().filter(|_| safe) else {
                return Err(failed(
                    "the reply is encrypted but the request was plaintext",
                ));
            };
            let ts = outer.get("TimeStamp").unwrap_or("");
            let nonce = outer.get("Nonce").unwrap_or("");
            let sig = outer.get("MsgSignature").unwrap_or("");
            if !verify_msg(
                creds.token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                encrypt.as_bytes(),
                sig.as_bytes(),
            ) {
                return Err(failed(
                    "bad reply signature: MsgSignature does not match sha1(sort(token, TimeStamp, Nonce, Encrypt))",
                ));
            }
            let inner_xml = crypto::decrypt(key, app_id, encrypt.as_bytes(), MAX_REPLY, &mut plain)
                .map_err(|e| failed(format!("cannot decrypt the reply: {e}")))?;
            let inner = Message::parse(inner_xml)
                .map_err(|e| failed(format!("malformed decrypted reply XML: {e}")))?;
            ("safe (reply signature ok, decrypted)", inner)
        }
        None if safe => {
            return Err(failed(
                "the reply is not encrypted although the request was",
            ));
        }
        None => ("plain", outer),
    };
    if reply.get("MsgType").is_none_or(str::is_empty) {
        return Err(failed("malformed reply: no MsgType"));
    }
    if !raw {
        // Escaped: a reply is untrusted text and must not drive the terminal.
        let mut out = format!(
            "status 200\nmode {mode}\ntype {}\n",
            for_terminal(reply.msg_type())
        );
        for node in reply.nodes() {
            if node.depth == 0 && node.name == "MsgType" {
                continue;
            }
            let indent = "  ".repeat(usize::from(node.depth));
            let name = for_terminal(node.name);
            match &node.value {
                Some(v) => out.push_str(&format!("{indent}{name} {}\n", for_terminal(v))),
                None => out.push_str(&format!("{indent}{name}\n")),
            }
        }
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(
            matches!(target("x.sock", "/w").unwrap().0, Target::FastCgi(a) if a == "unix:x.sock")
        );
        assert!(
            matches!(target("/run/x.sock", "/w").unwrap().0, Target::FastCgi(a) if a == "/run/x.sock")
        );
        assert!(
            matches!(target("127.0.0.1:9000", "/w").unwrap().0, Target::FastCgi(a) if a == "127.0.0.1:9000")
        );
        let (t, p) = target("http://127.0.0.1:8080/wx", "/weixin").unwrap();
        assert!(matches!(t, Target::Http { host_port } if host_port == "127.0.0.1:8080"));
        assert_eq!(p, "/wx");
        let (t, p) = target("http://localhost", "/weixin").unwrap();
        assert!(matches!(t, Target::Http { host_port } if host_port == "localhost:80"));
        assert_eq!(p, "/weixin");
        assert!(target("https://x", "/w").is_err());
        assert!(target("ftp://x", "/w").is_err());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(crate::query::encode("o-test_user.1~"), "o-test_user.1~");
        assert_eq!(crate::query::encode("a b&c"), "a%20b%26c");
    }
}
