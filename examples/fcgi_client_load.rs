//! Sends N signed WeChat text messages to a responder over FastCGI, one connection each (as
//! nginx does without keepalive) or all on one kept-alive connection (`--keep`), and checks
//! every reply. Used to count instructions per request under callgrind:
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
    let nonce = "1234567";
    let sig = signature::sign(&mut [token.as_bytes(), ts.as_bytes(), nonce.as_bytes()]);
    let sig = String::from_utf8_lossy(&sig).into_owned();
    let msg = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>\
         <CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[hello benchmark]]></Content><MsgId>1234567890123456</MsgId></xml>"
    );
    let (query, body) = match &aes {
        None => (
            format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser"),
            msg.into_bytes(),
        ),
        Some((key, app_id)) => {
            let mut enc = Vec::new();
            crypto::encrypt(key, app_id, msg.as_bytes(), &mut enc).expect("encrypt");
            let enc = String::from_utf8(enc).expect("base64");
            let msig = signature::sign(&mut [
                token.as_bytes(),
                ts.as_bytes(),
                nonce.as_bytes(),
                enc.as_bytes(),
            ]);
            let msig = String::from_utf8_lossy(&msig).into_owned();
            (
                format!(
                    "signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={msig}"
                ),
                format!("<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>")
                    .into_bytes(),
            )
        }
    };
    let len = body.len().to_string();
    let params: Vec<(&str, &[u8])> = vec![
        ("QUERY_STRING", query.as_bytes()),
        ("REQUEST_METHOD", b"POST"),
        ("CONTENT_TYPE", b"text/xml"),
        ("CONTENT_LENGTH", len.as_bytes()),
        ("SCRIPT_NAME", b"/weixin"),
        ("REQUEST_URI", b"/weixin"),
        ("DOCUMENT_URI", b"/weixin"),
        ("DOCUMENT_ROOT", b"/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ("REQUEST_SCHEME", b"http"),
        ("GATEWAY_INTERFACE", b"CGI/1.1"),
        ("SERVER_SOFTWARE", b"nginx/1.22.1"),
        ("REMOTE_ADDR", b"127.0.0.1"),
        ("REMOTE_PORT", b"40000"),
        ("SERVER_ADDR", b"127.0.0.1"),
        ("SERVER_PORT", b"8080"),
        ("SERVER_NAME", b"localhost"),
        ("HTTP_HOST", b"127.0.0.1:8080"),
        ("HTTP_CONTENT_TYPE", b"text/xml"),
        ("HTTP_CONTENT_LENGTH", len.as_bytes()),
    ];
    let timeout = std::time::Duration::from_secs(5);
    let mut conn = None;
    let mut failures = 0;
    for i in 0..count {
        if conn.is_none() || !keep {
            conn = Some(Connection::connect(socket, timeout).expect("connect"));
        }
        let Some(c) = conn.as_mut() else { continue };
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
