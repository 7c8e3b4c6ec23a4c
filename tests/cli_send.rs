//! `weixin-fcgi send` end to end: the real binary playing WeChat against a real responder,
//! over FastCGI to its socket and over HTTP through a real nginx with the repo snippet, in
//! plaintext and safe mode, for every KIND; safe-mode replies and requests checked by an
//! independent Python decryption (`tests/helpers/cli_decrypt.py`); refusals and bad replies
//! (from a fake responder written here) must exit 1.

pub mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Output, Stdio};

const TOKEN: &str = "pamtest";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APP_ID: &str = "wxb11529c136998cb6";

/// A safe-mode account (plaintext also accepted) with a rule for every KIND.
fn config() -> String {
    format!(
        r#"workers = 2
log_level = "info"

[[account]]
name = "vectors"
path = "/weixin"
token = "{TOKEN}"
app_id = "{APP_ID}"
aes_key = "{AES_KEY}"

[[account.rule]]
msg_type = "text"
reply = {{ type = "text", content = "You said: {{Content}}" }}

[[account.rule]]
msg_type = "image"
reply = {{ type = "image", media_id = "{{MediaId}}" }}

[[account.rule]]
msg_type = "voice"
reply = {{ type = "text", content = "Heard: {{Recognition}} ({{Format}})" }}

[[account.rule]]
msg_type = "location"
reply = {{ type = "text", content = "At {{Label}} ({{Location_X}}, {{Location_Y}}) scale {{Scale}}" }}

[[account.rule]]
msg_type = "link"
reply = {{ type = "text", content = "Link: {{Title}} {{Url}}" }}

[[account.rule]]
msg_type = "video"
reply = {{ type = "text", content = "Video {{MediaId}} thumb {{ThumbMediaId}}" }}

[[account.rule]]
event = "subscribe"
reply = {{ type = "text", content = "Welcome {{FromUserName}} {{EventKey}}" }}

[[account.rule]]
event = "unsubscribe"
reply = {{ type = "none" }}

[[account.rule]]
event = "CLICK"
event_key = "NEWS"
reply = {{ type = "news", articles = [
  {{ title = "First", description = "One", pic_url = "https://example.com/1.jpg", url = "https://example.com/1" }},
  {{ title = "Second", description = "Two", pic_url = "https://example.com/2.jpg", url = "https://example.com/2" }},
] }}

[[account.rule]]
event = "CLICK"
reply = {{ type = "text", content = "Clicked {{EventKey}}" }}

[[account.rule]]
event = "VIEW"
reply = {{ type = "text", content = "Viewed {{EventKey}}" }}

[[account.rule]]
event = "SCAN"
reply = {{ type = "text", content = "Scanned {{EventKey}} ticket {{Ticket}}" }}

[[account.rule]]
event = "LOCATION"
reply = {{ type = "text", content = "Lat {{Latitude}} Long {{Longitude}} Precision {{Precision}}" }}

[[account.rule]]
msg_type = "event"
reply = {{ type = "text", content = "Event {{Event}} key [{{EventKey}}]" }}
"#
    )
}

/// Runs `weixin-fcgi send ARGS`.
fn send(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("send")
        .args(args)
        .env_remove("WEIXIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run weixin-fcgi send")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 0 and that every `want` line is printed.
fn assert_lines(o: &Output, want: &[&str], what: &str) {
    let out = stdout(o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: exit status; stdout:\n{out}\nstderr:\n{}",
        stderr(o)
    );
    let lines: Vec<&str> = out.lines().collect();
    for w in want {
        assert!(lines.contains(w), "{what}: line {w:?} missing from:\n{out}");
    }
}

/// Every KIND with the arguments it takes and the lines its reply prints.
fn kinds() -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (vec!["verify"], vec!["status 200"]),
        (
            vec!["text", "hi 你好 ]]> <b>&amp;"],
            vec![
                "type text",
                "ToUserName o-test-user",
                "FromUserName gh_test",
                "Content You said: hi 你好 ]]> <b>&amp;",
            ],
        ),
        (
            vec!["image"],
            vec!["type image", "Image", "  MediaId test-image-media-id"],
        ),
        (
            vec!["image", "--media-id", "m-42"],
            vec!["type image", "  MediaId m-42"],
        ),
        (
            vec!["voice", "--recognition", "turn on the light"],
            vec!["type text", "Content Heard: turn on the light (amr)"],
        ),
        (vec!["voice"], vec!["Content Heard:  (amr)"]),
        (
            vec!["location"],
            vec!["Content At Guangzhou Tower (23.134521, 113.358803) scale 20"],
        ),
        (
            vec!["link"],
            vec!["Content Link: Test link https://example.com/article"],
        ),
        (
            vec!["event", "subscribe"],
            vec!["type text", "Content Welcome o-test-user "],
        ),
        (
            vec!["event", "subscribe", "qrscene_7"],
            vec!["Content Welcome o-test-user qrscene_7"],
        ),
        (
            vec!["event", "unsubscribe"],
            vec!["status 200", "no reply (success)"],
        ),
        (
            vec!["event", "CLICK", "NEWS"],
            vec![
                "type news",
                "ArticleCount 2",
                "Articles",
                "  item",
                "    Title First",
                "    Url https://example.com/1",
                "    Title Second",
            ],
        ),
        (
            vec!["event", "CLICK", "MENU_1"],
            vec!["Content Clicked MENU_1"],
        ),
        (
            vec!["event", "VIEW", "https://example.com/menu"],
            vec!["Content Viewed https://example.com/menu"],
        ),
        (
            vec!["event", "SCAN", "123"],
            vec!["Content Scanned 123 ticket test-qrcode-ticket"],
        ),
        (
            vec!["event", "LOCATION"],
            vec!["Content Lat 23.137466 Long 113.352425 Precision 119.385040"],
        ),
        (
            vec!["event", "MASSSENDJOBFINISH"],
            vec!["Content Event MASSSENDJOBFINISH key []"],
        ),
        (
            vec!["event", "scancode_push", "k1"],
            vec!["Content Event scancode_push key [k1]"],
        ),
    ]
}

/// A hand-written video message for `xml FILE` (from and to other users than the defaults).
const VIDEO_XML: &str = "<xml><ToUserName><![CDATA[gh_custom]]></ToUserName>\
<FromUserName><![CDATA[o-xml-user]]></FromUserName><CreateTime>1700000000</CreateTime>\
<MsgType><![CDATA[video]]></MsgType><MediaId><![CDATA[vid-1]]></MediaId>\
<ThumbMediaId><![CDATA[thumb-1]]></ThumbMediaId><MsgId>42</MsgId></xml>";

/// Runs every KIND (and `xml FILE`) against `to`, with credential args `creds`.
fn every_kind(to: &str, creds: &[&str], mode_line: &str, what: &str) {
    let dir = TempDir::new("cli-send");
    let xml = dir.join("video.xml");
    std::fs::write(&xml, VIDEO_XML).expect("write xml");
    let xml = xml.to_str().expect("utf-8 path").to_string();
    let mut cases = kinds();
    cases.push((
        vec!["xml", &xml],
        vec![
            "type text",
            "ToUserName o-xml-user",
            "FromUserName gh_custom",
            "Content Video vid-1 thumb thumb-1",
        ],
    ));
    for (kind, want) in cases {
        let mut args = vec!["--to", to];
        args.extend_from_slice(creds);
        args.extend_from_slice(&kind);
        let o = send(&args);
        let label = format!("{what}: send {}", kind.join(" "));
        assert_lines(&o, &want, &label);
        let out = stdout(&o);
        if kind[0] == "verify" {
            assert!(out.contains("verify ok (echostr "), "{label}: {out}");
        } else if !out.contains("no reply (success)") {
            assert_lines(&o, &[mode_line], &label);
        }
    }
}

const SAFE: &str = "mode safe (reply signature ok, decrypted)";

#[test]
fn every_kind_over_fastcgi_plain_and_safe() {
    let r = Responder::start(&config());
    let to = format!("unix:{}", r.socket.display());
    every_kind(&to, &["--token", TOKEN], "mode plain", "fastcgi plain");
    every_kind(
        &to,
        &["--token", TOKEN, "--aes-key", AES_KEY, "--app-id", APP_ID],
        SAFE,
        "fastcgi safe",
    );
    // A bare socket path works as well as unix:PATH.
    let path = r.socket.to_str().expect("utf-8 path");
    let o = send(&["--to", path, "--token", TOKEN, "text", "bare"]);
    assert_lines(&o, &["Content You said: bare"], "bare path");
    // The responder logged safe-mode requests as such.
    assert!(r.stderr().contains("mode=aes"), "{}", r.stderr());
}

#[test]
fn every_kind_through_nginx_plain_and_safe() {
    let r = Responder::start(&config());
    let nginx = Nginx::start(&r.socket, true);
    let to = format!("http://127.0.0.1:{}", nginx.port);
    every_kind(&to, &["--token", TOKEN], "mode plain", "nginx plain");
    every_kind(
        &to,
        &["--token", TOKEN, "--aes-key", AES_KEY, "--app-id", APP_ID],
        SAFE,
        "nginx safe",
    );
    // The path can be given in the URL.
    let o = send(&[
        "--to",
        &format!("{to}/weixin"),
        "--path",
        "/ignored",
        "--token",
        TOKEN,
        "text",
        "url path",
    ]);
    assert_lines(&o, &["Content You said: url path"], "url path");
}

#[test]
fn config_supplies_credentials_and_path_and_plain_forces_plaintext() {
    let r = Responder::start(&config());
    let to = format!("unix:{}", r.socket.display());
    let cfg = r.config.to_str().expect("utf-8 path");
    let o = send(&["--to", &to, "--config", cfg, "text", "from config"]);
    assert_lines(&o, &[SAFE, "Content You said: from config"], "--config");
    let o = send(&["--to", &to, "--config", cfg, "--plain", "text", "plain"]);
    assert_lines(&o, &["mode plain", "Content You said: plain"], "--plain");
    let o = send(&[
        "--to",
        &to,
        "-c",
        cfg,
        "--account",
        "vectors",
        "--from",
        "o-other",
        "--to-user",
        "gh_other",
        "text",
        "who",
    ]);
    assert_lines(
        &o,
        &["ToUserName o-other", "FromUserName gh_other"],
        "--from/--to-user",
    );
    let o = send(&[
        "--to",
        &to,
        "--config",
        cfg,
        "--account",
        "nope",
        "text",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no account \"nope\""), "{}", stderr(&o));
    // --path overrides the account's path: nothing is there.
    let o = send(&[
        "--to", &to, "--config", cfg, "--path", "/other", "text", "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refused: status 404"), "{}", stderr(&o));
}

#[test]
fn refused_requests_exit_1() {
    let r = Responder::start(&config());
    let nginx = Nginx::start(&r.socket, false);
    let fcgi = format!("unix:{}", r.socket.display());
    let http = format!("http://127.0.0.1:{}", nginx.port);
    for to in [&fcgi, &http] {
        for kind in [&["verify"][..], &["text", "hi"][..]] {
            let mut args = vec!["--to", to.as_str(), "--token", "wrong-token"];
            args.extend_from_slice(kind);
            let o = send(&args);
            assert_eq!(o.status.code(), Some(1), "{to} {kind:?}: {}", stdout(&o));
            assert!(
                stderr(&o).contains("refused: status 403"),
                "{to} {kind:?}: {}",
                stderr(&o)
            );
        }
        // Right token, wrong AES key: the responder cannot decrypt (400).
        let o = send(&[
            "--to",
            to,
            "--token",
            TOKEN,
            "--aes-key",
            "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
            "--app-id",
            APP_ID,
            "text",
            "hi",
        ]);
        assert_eq!(o.status.code(), Some(1), "{to}: {}", stdout(&o));
        assert!(stderr(&o).contains("refused: status 400"), "{}", stderr(&o));
    }
    let o = send(&[
        "--to",
        "/nonexistent/weixin.sock",
        "--token",
        TOKEN,
        "verify",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot connect to /nonexistent/weixin.sock"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--to", "x.sock", "nonsense"][..],
        &["--to", "https://example.com", "text", "x"][..],
        &["--to", "x.sock", "text"][..],
        &["--to", "x.sock", "event", "CLICK"][..],
        &["--to", "x.sock", "--aes-key", AES_KEY, "text", "x"][..],
        &["--to", "x.sock", "--token", "has space", "text", "x"][..],
        &["--bogus"][..],
        &[][..],
    ] {
        let o = send(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_eq!(
            stderr(&o).lines().count(),
            1,
            "one-line error: {}",
            stderr(&o)
        );
    }
    let o = send(&["--to", "https://example.com", "text", "x"]);
    assert!(stderr(&o).contains("https is not supported"));
    let o = send(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("KINDS:") && stdout(&o).contains("xml FILE"));
}

/// Runs the independent decryption on `input`.
fn python_decrypt(input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/helpers/cli_decrypt.py"))
        .args([TOKEN, AES_KEY, APP_ID])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (with the cryptography module)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to python");
    child.wait_with_output().expect("python output")
}

#[test]
fn raw_safe_reply_matches_an_independent_decryption() {
    let r = Responder::start(&config());
    let nginx = Nginx::start(&r.socket, true);
    for to in [
        format!("unix:{}", r.socket.display()),
        format!("http://127.0.0.1:{}", nginx.port),
    ] {
        let creds = ["--token", TOKEN, "--aes-key", AES_KEY, "--app-id", APP_ID];
        let mut args = vec!["--to", to.as_str()];
        args.extend_from_slice(&creds);
        args.extend_from_slice(&["--raw", "text", "raw ]]> check 你好"]);
        let raw = send(&args);
        assert_eq!(raw.status.code(), Some(0), "{}", stderr(&raw));
        let envelope = stdout(&raw);
        assert!(
            envelope.starts_with("<xml><Encrypt><![CDATA["),
            "{envelope}"
        );
        assert!(
            !envelope.contains("raw ]]"),
            "raw output is the encrypted envelope"
        );
        let py = python_decrypt(&raw.stdout, &[]);
        assert!(py.status.success(), "python: {}", stderr(&py));
        let inner = stdout(&py);
        assert_eq!(
            xml_field(&inner, "Content").as_deref(),
            Some("You said: raw ]]> check 你好")
        );
        assert_eq!(
            xml_field(&inner, "ToUserName").as_deref(),
            Some("o-test-user")
        );
        assert_eq!(xml_field(&inner, "MsgType").as_deref(), Some("text"));

        // The readable output of the same exchange agrees with the independent decryption.
        let mut args = vec!["--to", to.as_str()];
        args.extend_from_slice(&creds);
        args.extend_from_slice(&["text", "raw ]]> check 你好"]);
        assert_lines(
            &send(&args),
            &[
                SAFE,
                "Content You said: raw ]]> check 你好",
                "ToUserName o-test-user",
            ],
            "readable",
        );
    }
}

// ---- A fake responder: records the request, answers a canned CGI response ----

/// What the fake responder received.
struct Captured {
    params: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    fn query(&self, name: &str) -> String {
        self.param("QUERY_STRING")
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    }
}

/// Serves one FastCGI request on `socket` with `stdout` (CGI head + body); FastCGI records
/// are encoded and decoded here by hand, independently of the project's codec.
fn fake_responder(socket: &std::path::Path, stdout: Vec<u8>) -> std::thread::JoinHandle<Captured> {
    let listener = UnixListener::bind(socket).expect("bind fake responder");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut params_stream = Vec::new();
        let mut body = Vec::new();
        loop {
            let mut h = [0u8; 8];
            conn.read_exact(&mut h).expect("record header");
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut content = vec![0u8; len + usize::from(h[6])];
            conn.read_exact(&mut content).expect("record content");
            content.truncate(len);
            match h[1] {
                4 => params_stream.extend_from_slice(&content),
                5 if len == 0 => break,
                5 => body.extend_from_slice(&content),
                _ => {}
            }
        }
        let mut params = Vec::new();
        let mut p = &params_stream[..];
        let read_len = |p: &mut &[u8]| -> usize {
            if p[0] & 0x80 == 0 {
                let n = usize::from(p[0]);
                *p = &p[1..];
                n
            } else {
                let n = u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]) as usize;
                *p = &p[4..];
                n
            }
        };
        while !p.is_empty() {
            let nl = read_len(&mut p);
            let vl = read_len(&mut p);
            let name = String::from_utf8_lossy(&p[..nl]).into_owned();
            let value = String::from_utf8_lossy(&p[nl..nl + vl]).into_owned();
            p = &p[nl + vl..];
            params.push((name, value));
        }
        let mut out = Vec::new();
        for chunk in stdout.chunks(65535).chain(std::iter::once(&[][..])) {
            let n = chunk.len() as u16;
            out.extend_from_slice(&[1, 6, 0, 1, (n >> 8) as u8, n as u8, 0, 0]);
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&[1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        conn.write_all(&out).expect("write response");
        Captured { params, body }
    })
}

fn cgi(body: &str) -> Vec<u8> {
    format!("Status: 200 OK\r\nContent-Type: application/xml\r\n\r\n{body}").into_bytes()
}

#[test]
fn request_is_built_as_wechat_builds_it() {
    let dir = TempDir::new("cli-fake");
    let socket = dir.join("fake.sock");
    let server = fake_responder(&socket, cgi("success"));
    let o = send(&[
        "--to",
        socket.to_str().expect("utf-8"),
        "--token",
        TOKEN,
        "--aes-key",
        AES_KEY,
        "--app-id",
        APP_ID,
        "--path",
        "/wx/shop",
        "text",
        "independent ]]> check",
    ]);
    assert_lines(&o, &["status 200", "no reply (success)"], "success");
    let got = server.join().expect("fake responder");
    for (name, want) in [
        ("REQUEST_METHOD", "POST"),
        ("CONTENT_TYPE", "text/xml"),
        ("DOCUMENT_URI", "/wx/shop"),
        ("SCRIPT_NAME", "/wx/shop"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
    ] {
        assert_eq!(got.param(name), want, "{name}");
    }
    assert_eq!(got.param("CONTENT_LENGTH"), got.body.len().to_string());
    assert_eq!(
        got.param("REQUEST_URI"),
        format!("/wx/shop?{}", got.param("QUERY_STRING"))
    );
    let (ts, nonce) = (got.query("timestamp"), got.query("nonce"));
    assert!(now().abs_diff(ts.parse::<u64>().expect("numeric timestamp")) < 60);
    assert!(!nonce.is_empty());
    assert_eq!(got.query("signature"), sign(&[TOKEN, &ts, &nonce]));
    assert_eq!(got.query("openid"), "o-test-user");
    assert_eq!(got.query("encrypt_type"), "aes");
    let body = String::from_utf8(got.body.clone()).expect("utf-8 body");
    assert!(
        body.starts_with("<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA["),
        "{body}"
    );
    // msg_signature and the ciphertext, checked by the independent implementation.
    let py = python_decrypt(&got.body, &[&ts, &nonce, &got.query("msg_signature")]);
    assert!(py.status.success(), "python: {}", stderr(&py));
    let inner = stdout(&py);
    assert_eq!(
        xml_field(&inner, "Content").as_deref(),
        Some("independent ]]> check")
    );
    assert_eq!(xml_field(&inner, "MsgType").as_deref(), Some("text"));
    assert_eq!(
        xml_field(&inner, "FromUserName").as_deref(),
        Some("o-test-user")
    );
    assert_eq!(xml_field(&inner, "ToUserName").as_deref(), Some("gh_test"));
    assert!(xml_field(&inner, "MsgId").is_some_and(|id| id.len() == 16));
}

#[test]
fn bad_replies_exit_1() {
    let safe = ["--token", TOKEN, "--aes-key", AES_KEY, "--app-id", APP_ID];
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "<xml><Encrypt><![CDATA[AAAA]]></Encrypt><MsgSignature><![CDATA[0000000000000000000000000000000000000000]]></MsgSignature><TimeStamp>1</TimeStamp><Nonce><![CDATA[2]]></Nonce></xml>",
            &safe,
            "bad reply signature",
        ),
        (
            "<xml><MsgType>text",
            &["--token", TOKEN],
            "malformed reply XML",
        ),
        (
            "<xml><Content>no type</Content></xml>",
            &["--token", TOKEN],
            "no MsgType",
        ),
        (
            "<xml><MsgType><![CDATA[text]]></MsgType><Content>plain</Content></xml>",
            &safe,
            "not encrypted although the request was",
        ),
        (
            "<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>",
            &["--token", TOKEN],
            "encrypted but the request was plaintext",
        ),
    ];
    for (i, (reply, creds, want)) in cases.iter().enumerate() {
        let dir = TempDir::new("cli-bad");
        let socket = dir.join("fake.sock");
        let server = fake_responder(&socket, cgi(reply));
        let mut args = vec!["--to", socket.to_str().expect("utf-8")];
        args.extend_from_slice(creds);
        args.extend_from_slice(&["text", "x"]);
        let o = send(&args);
        server.join().expect("fake responder");
        assert_eq!(o.status.code(), Some(1), "case {i}: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "case {i}: {}", stderr(&o));
    }
    // An encrypted reply with a valid signature over garbage ciphertext: undecryptable.
    let ts = "1700000000";
    let nonce = "12345";
    let encrypt = "AAAAAAAAAAAAAAAAAAAAAA==";
    let sig = sign(&[TOKEN, ts, nonce, encrypt]);
    let reply = format!(
        "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature><TimeStamp>{ts}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
    );
    let dir = TempDir::new("cli-bad");
    let socket = dir.join("fake.sock");
    let server = fake_responder(&socket, cgi(&reply));
    let mut args = vec!["--to", socket.to_str().expect("utf-8")];
    args.extend_from_slice(&safe);
    args.extend_from_slice(&["event", "subscribe"]);
    let o = send(&args);
    server.join().expect("fake responder");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot decrypt the reply"),
        "{}",
        stderr(&o)
    );
}

// ---- Issue 11, finding 9 ----

/// A responder that reads the request, then trickles a valid response one byte every 0.5 s.
fn trickling_responder(socket: &std::path::Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).expect("bind trickling responder");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        loop {
            let mut h = [0u8; 8];
            if conn.read_exact(&mut h).is_err() {
                return;
            }
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut content = vec![0u8; len + usize::from(h[6])];
            if conn.read_exact(&mut content).is_err() {
                return;
            }
            if h[1] == 5 && len == 0 {
                break;
            }
        }
        let body = cgi("success");
        let mut out = vec![1, 6, 0, 1, 0, body.len() as u8, 0, 0];
        out.extend_from_slice(&body);
        // At most 60 bytes (30 s), stopping as soon as the client is gone.
        for b in out.iter().take(60) {
            if conn.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    })
}

/// `--timeout` bounds the whole request, not each read.
#[test]
fn timeout_bounds_the_whole_request() {
    use std::time::{Duration, Instant};
    let dir = TempDir::new("cli-trickle");
    let socket = dir.join("trickle.sock");
    let server = trickling_responder(&socket);
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["send", "--timeout", "2", "--token", TOKEN, "--to"])
        .arg(&socket)
        .args(["text", "hi"])
        .env_remove("WEIXIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weixin-fcgi send");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    println!("send --timeout 2 against a trickling responder: exited after {took:?}: {err}");
    let status = status.expect("still running after 10 s with --timeout 2");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(err.contains("--timeout reached"), "{err}");
    server.join().expect("trickling responder");
}

/// Control characters in a reply are shown escaped; `--raw` prints the bytes as received.
#[test]
fn control_bytes_in_replies_are_escaped_unless_raw() {
    let reply = "<xml><ToUserName><![CDATA[o-test-user]]></ToUserName>\
                 <FromUserName><![CDATA[gh_test]]></FromUserName><CreateTime>1</CreateTime>\
                 <MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[red\u{1b}[31m bell\u{7} sep\u{2028} rtl\u{202e} nel\u{85} 你好]]></Content></xml>";
    for raw in [false, true] {
        let dir = TempDir::new("cli-ctl");
        let socket = dir.join("fake.sock");
        let server = fake_responder(&socket, cgi(reply));
        let mut args = vec!["--to", socket.to_str().expect("utf-8"), "--token", TOKEN];
        if raw {
            args.push("--raw");
        }
        args.extend_from_slice(&["text", "x"]);
        let o = send(&args);
        server.join().expect("fake responder");
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
        if raw {
            assert_eq!(o.stdout, reply.as_bytes());
        } else {
            for bad in ['\u{1b}', '\u{7}', '\u{2028}', '\u{202e}', '\u{85}'] {
                assert!(!out.contains(bad), "raw {bad:?} printed:\n{out:?}");
            }
            assert!(
                out.lines().any(|l| l
                    == r"Content red\u{1b}[31m bell\u{7} sep\u{2028} rtl\u{202e} nel\u{85} 你好"),
                "{out}"
            );
        }
    }
}
