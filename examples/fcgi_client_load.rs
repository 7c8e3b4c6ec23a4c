//! Sends N signed WeChat text messages to a responder over FastCGI, one connection each (as
//! nginx does without keepalive) or all on one kept-alive connection (`--keep`), and checks
//! every reply. Each request has its own nonce, as WeChat's do (the responder's replay cache
//! refuses a signed request repeated after the retry period). Used to count instructions per
//! request under callgrind:
//!
//! ```sh
//! cargo run --release --example fcgi_client_load -- /path/to.sock TOKEN 1000 [--keep] [--aes KEY APPID]
//! ```

use std::time::{SystemTime, UNIX_EPOCH};
use weixin_fcgi::fastcgi::client::{self, Connection};
use weixin_fcgi::wechat::{crypto, signature};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: fcgi_client_load SOCKET TOKEN COUNT [--keep] [--aes KEY APPID]");
        std::process::exit(2);
    }
    let (socket, token) = (&args[1], &args[2]);
    let count: usize = args[3].parse().unwrap_or(1);
    let keep = args.iter().any(|a| a == "--keep");
    let aes = args.iter().position(|a| a == "--aes").and_then(|i| {
        let key = crypto::AesKey::from_encoding_aes_key(args.get(i + 1)?).ok()?;
        Some((key, args.get(i + 2)?.clone()))
    });
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ts = ts.to_string();
    let msg = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[hello benchmark]]></Content><MsgId>1234567890123456</MsgId></xml>"
    );
    let sign = |parts: &mut [&[u8]]| String::from_utf8_lossy(&signature::sign(parts)).into_owned();
    let build = |i: usize| -> (String, Vec<u8>) {
        let nonce = format!("{}{i}", std::process::id());
        let sig = sign(&mut [token.as_bytes(), ts.as_bytes(), nonce.as_bytes()]);
        match &aes {
            None => (
                format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser"),
                msg.clone().into_bytes(),
            ),
            Some((key, app_id)) => {
                let mut enc = Vec::new();
                crypto::encrypt(key, app_id, msg.as_bytes(), &mut enc).expect("encrypt");
                let enc = String::from_utf8(enc).expect("base64");
                let msig = sign(&mut [
                    token.as_bytes(),
                    ts.as_bytes(),
                    nonce.as_bytes(),
                    enc.as_bytes(),
                ]);
                (
                    format!(
                        "signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={msig}"
                    ),
                    format!("<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>")
                        .into_bytes(),
                )
            }
        }
    };
    let params = |query: &'_ str, len: &'_ str| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("QUERY_STRING", query.as_bytes().to_vec()),
            ("REQUEST_METHOD", b"POST".to_vec()),
            ("CONTENT_TYPE", b"text/xml".to_vec()),
            ("CONTENT_LENGTH", len.as_bytes().to_vec()),
            ("SCRIPT_NAME", b"/weixin".to_vec()),
            ("REQUEST_URI", b"/weixin".to_vec()),
            ("DOCUMENT_URI", b"/weixin".to_vec()),
            ("DOCUMENT_ROOT", b"/usr/share/nginx/html".to_vec()),
            ("SERVER_PROTOCOL", b"HTTP/1.1".to_vec()),
            ("REQUEST_SCHEME", b"http".to_vec()),
            ("GATEWAY_INTERFACE", b"CGI/1.1".to_vec()),
            ("SERVER_SOFTWARE", b"nginx/1.22.1".to_vec()),
            ("REMOTE_ADDR", b"127.0.0.1".to_vec()),
            ("REMOTE_PORT", b"40000".to_vec()),
            ("SERVER_ADDR", b"127.0.0.1".to_vec()),
            ("SERVER_PORT", b"8080".to_vec()),
            ("SERVER_NAME", b"localhost".to_vec()),
            ("HTTP_HOST", b"127.0.0.1:8080".to_vec()),
            ("HTTP_CONTENT_TYPE", b"text/xml".to_vec()),
            ("HTTP_CONTENT_LENGTH", len.as_bytes().to_vec()),
        ]
    };
    let timeout = std::time::Duration::from_secs(5);
    let mut conn = None;
    let mut failures = 0;
    for i in 0..count {
        if conn.is_none() || !keep {
            conn = Some(Connection::connect(socket, timeout).expect("connect"));
        }
        let Some(c) = conn.as_mut() else { continue };
        let (query, body) = build(i);
        let owned = params(&query, &body.len().to_string());
        let params: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        match client::request(c, 1, &params, &body, keep) {
            Ok(r) if r.status == 200 && r.body.starts_with(b"<xml>") => {}
            Ok(r) => {
                failures += 1;
                eprintln!(
                    "request {i}: status {} body {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            Err(e) => {
                failures += 1;
                eprintln!("request {i}: {e}");
                conn = None;
            }
        }
    }
    println!("{count} requests, {failures} failed");
    if failures > 0 {
        std::process::exit(1);
    }
}
