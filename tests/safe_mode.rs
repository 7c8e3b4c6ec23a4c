//! Safe mode and compatible mode (PROTOCOL.md §5) end to end through real nginx. Requests are
//! encrypted and replies decrypted and verified by an independent implementation,
//! `tests/helpers/wxcrypt.py` (Python `cryptography`), never by the project's own crypto.

pub mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The test vectors' account (`tests/fixtures/vectors/wechat-vectors.json`).
const TOKEN: &str = "pamtest";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wxb11529c136998cb6";
/// Another valid EncodingAESKey, for key rotation.
const NEW_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
const PYTHON: &str = "/usr/bin/python3";

/// `wxcrypt.py serve`, one line per request.
struct WxCrypt {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WxCrypt {
    fn start() -> WxCrypt {
        let mut child = Command::new(PYTHON)
            .arg(repo().join("tests/helpers/wxcrypt.py"))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 (with `cryptography`: bash tests/run.sh installs it)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        WxCrypt {
            child,
            stdin,
            stdout,
        }
    }

    fn call(
        &mut self,
        command: &str,
        key: &str,
        defect: Option<&str>,
        data: &[u8],
    ) -> Result<Vec<u8>, String> {
        let line = format!(
            "{command}\t{key}\t{APPID}\t{TOKEN}\t{}\t{}\n",
            defect.unwrap_or("-"),
            hex::encode(data)
        );
        self.stdin
            .write_all(line.as_bytes())
            .expect("write to wxcrypt.py");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read wxcrypt.py");
        match answer.trim_end().split_once('\t') {
            Some(("ok", out)) => Ok(hex::decode(out).expect("hex")),
            Some(("err", reason)) => Err(reason.to_string()),
            _ => {
                panic!("wxcrypt.py failed ({answer:?}); is `cryptography` installed for {PYTHON}?")
            }
        }
    }

    /// The base64 `Encrypt` value for `msg` under `key`, with an optional defect.
    fn encrypt(&mut self, key: &str, msg: &str, defect: Option<&str>) -> String {
        let out = self
            .call("encrypt", key, defect, msg.as_bytes())
            .expect("encrypt");
        String::from_utf8(out).expect("base64")
    }

    /// Checks the reply envelope (structure, TimeStamp in seconds, MsgSignature — in Python
    /// and here) and returns the decrypted reply XML.
    fn open_reply(&mut self, key: &str, resp: &HttpResponse) -> String {
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("Content-Type"),
            Some("application/xml; charset=utf-8")
        );
        let envelope = resp.text();
        assert_eq!(
            xml_elements(&envelope),
            ["xml", "Encrypt", "MsgSignature", "TimeStamp", "Nonce"],
            "{envelope}"
        );
        let field = |n| xml_field(&envelope, n).expect(n);
        let ts: u64 = field("TimeStamp").parse().expect("TimeStamp is a number");
        assert!(now().abs_diff(ts) < 60, "TimeStamp in seconds: {ts}");
        assert!(!field("Nonce").is_empty());
        assert_eq!(
            field("MsgSignature"),
            sign(&[
                TOKEN,
                &field("TimeStamp"),
                &field("Nonce"),
                &field("Encrypt")
            ])
        );
        let xml = self
            .call("open-reply", key, None, envelope.as_bytes())
            .unwrap_or_else(|e| panic!("wxcrypt.py refused the reply: {e}\n{envelope}"));
        String::from_utf8(xml).expect("reply XML is UTF-8")
    }
}

impl Drop for WxCrypt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn safe_config(account_extra: &str, rules: &str) -> String {
    config_toml(
        "",
        TOKEN,
        &format!("app_id = \"{APPID}\"\naes_key = \"{KEY}\"\n{account_extra}"),
        rules,
    )
}

/// The query WeChat sends in safe/compatible mode for `encrypt` (a fresh nonce each time, as
/// WeChat's: the replay cache refuses a signature reused with another body).
fn safe_query(encrypt: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ts = now().to_string();
    let nonce = format!(
        "safenonce{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let nonce = nonce.as_str();
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={}",
        sign(&[TOKEN, &ts, nonce]),
        sign(&[TOKEN, &ts, nonce, encrypt])
    )
}

/// A safe-mode body: only ToUserName and Encrypt.
fn safe_body(encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

/// A compatible-mode body: a plaintext message (`decoy`) that also carries `Encrypt`.
fn compat_body(decoy: &str, encrypt: &str) -> String {
    let cut = decoy.rfind("</xml>").expect("</xml>");
    format!(
        "{}<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>",
        &decoy[..cut]
    )
}

fn post_safe(nginx: &Nginx, encrypt: &str, body: &str) -> HttpResponse {
    nginx.request(
        "POST",
        &format!("/weixin?{}", safe_query(encrypt)),
        body.as_bytes(),
    )
}

/// The Content of a decrypted text reply, after checking its envelope fields.
fn text_content(xml: &str) -> String {
    assert_eq!(
        xml_elements(xml),
        [
            "xml",
            "ToUserName",
            "FromUserName",
            "CreateTime",
            "MsgType",
            "Content"
        ],
        "{xml}"
    );
    assert_eq!(xml_field(xml, "ToUserName").as_deref(), Some("oUser"));
    assert_eq!(xml_field(xml, "FromUserName").as_deref(), Some("gh_test"));
    assert_eq!(xml_field(xml, "MsgType").as_deref(), Some("text"));
    let created: u64 = xml_field(xml, "CreateTime").unwrap().parse().unwrap();
    assert!(now().abs_diff(created) < 60);
    xml_leaves(xml)
        .into_iter()
        .find(|(n, _)| n == "Content")
        .map(|(_, t)| t)
        .expect("Content")
}

/// (timestamp, nonce, msg_signature, body) of every `safe_mode_incoming` vector.
fn vectors() -> Vec<[String; 4]> {
    let path = repo().join("tests/fixtures/vectors/wechat-vectors.json");
    let text = std::fs::read_to_string(&path).expect("the vector fixture");
    let v: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
    let cases = v["safe_mode_incoming"]
        .as_array()
        .expect("safe_mode_incoming");
    cases
        .iter()
        .map(|c| {
            ["timestamp", "nonce", "msg_signature", "body"]
                .map(|k| c[k].as_str().expect("a string field").to_string())
        })
        .collect()
}

#[test]
fn every_vector_is_answered_with_an_encrypted_reply() {
    let rules = r#"
[[account.rule]]
msg_type = "text"
reply = { type = "text", content = "{Content}" }
[[account.rule]]
event = "subscribe"
reply = { type = "text", content = "Welcome {FromUserName}" }
"#;
    // The vectors' timestamps are from 2014.
    let config = config_toml(
        "timestamp_window = 0",
        TOKEN,
        &format!("app_id = \"{APPID}\"\naes_key = \"{KEY}\"\nencrypted_only = true"),
        rules,
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let mut py = WxCrypt::start();
    let expected = [
        "hello 你好 😀",
        "Welcome oUser",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    let vectors = vectors();
    assert_eq!(vectors.len(), expected.len());
    for ([ts, nonce, msg_signature, body], want) in vectors.iter().zip(expected) {
        let query = format!(
            "signature={}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={msg_signature}",
            sign(&[TOKEN, ts, nonce])
        );
        let resp = nginx.request("POST", &format!("/weixin?{query}"), body.as_bytes());
        let xml = py.open_reply(KEY, &resp);
        assert_eq!(text_content(&xml), want);
    }
}

/// Every case of the plaintext tests (all message types, all rule kinds), encrypted.
fn all_cases() -> Vec<(String, Option<String>)> {
    let mut cases: Vec<(String, Option<String>)> = ALL_TYPES_CASES
        .iter()
        .map(|(f, want)| (message_fixture(f), Some(want.to_string())))
        .collect();
    for (_, body, want) in match_cases() {
        cases.push((body, want.map(str::to_string)));
    }
    cases
}

#[test]
fn every_rule_in_safe_and_compatible_mode() {
    // match.toml first: its cases must not fall into all-types.toml's catch-all...
    let match_r = Responder::start(&safe_config("", &rules_fixture("match.toml")));
    let types_r = Responder::start(&safe_config("", &rules_fixture("all-types.toml")));
    let match_n = Nginx::start(&match_r.socket, true);
    let types_n = Nginx::start(&types_r.socket, false);
    let mut py = WxCrypt::start();
    let n_types = ALL_TYPES_CASES.len();
    for (i, (msg, want)) in all_cases().into_iter().enumerate() {
        let nginx = if i < n_types { &types_n } else { &match_n };
        let encrypt = py.encrypt(KEY, &msg, None);
        let decoy = text_message("DECOY plaintext copy");
        for (mode, body) in [
            ("safe", safe_body(&encrypt)),
            ("compatible", compat_body(&decoy, &encrypt)),
        ] {
            let resp = post_safe(nginx, &encrypt, &body);
            match &want {
                Some(content) => {
                    let xml = py.open_reply(KEY, &resp);
                    assert_eq!(&text_content(&xml), content, "{mode}: {msg}");
                }
                None => {
                    assert_eq!(resp.status, 200, "{mode}: {}", resp.text());
                    assert_eq!(resp.body, b"success", "{mode}: no reply stays `success`");
                }
            }
        }
    }
}

#[test]
fn compatible_mode_follows_the_ciphertext_not_the_plaintext_copy() {
    let rules = r#"
[[account.rule]]
content = "admin"
reply = { type = "text", content = "SECRET" }
[[account.rule]]
reply = { type = "text", content = "echo:{Content}|{FromUserName}" }
"#;
    let r = Responder::start(&safe_config("", rules));
    let nginx = Nginx::start(&r.socket, true);
    let mut py = WxCrypt::start();
    let encrypt = py.encrypt(KEY, &text_message("harmless"), None);
    let decoy = text_message("admin").replace("oUser", "oAttacker");
    let xml = py.open_reply(
        KEY,
        &post_safe(&nginx, &encrypt, &compat_body(&decoy, &encrypt)),
    );
    assert_eq!(text_content(&xml), "echo:harmless|oUser");
}

#[test]
fn reply_mode_follows_the_request() {
    let rules = "[[account.rule]]\nreply = { type = \"text\", content = \"re:{Content}\" }\n";
    let r = Responder::start(&safe_config("", rules));
    let nginx = Nginx::start(&r.socket, true);
    // A plaintext request to an account with a key gets a plaintext reply.
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        text_message("plain").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let xml = resp.text();
    assert!(!xml.contains("<Encrypt>"), "{xml}");
    assert_eq!(text_content(&xml), "re:plain");
    // An encrypted one gets an encrypted reply.
    let mut py = WxCrypt::start();
    let encrypt = py.encrypt(KEY, &text_message("secret"), None);
    let xml = py.open_reply(KEY, &post_safe(&nginx, &encrypt, &safe_body(&encrypt)));
    assert_eq!(text_content(&xml), "re:secret");
}

#[test]
fn encrypted_only_refuses_plaintext_posts() {
    let rules = "[[account.rule]]\nreply = { type = \"text\", content = \"re:{Content}\" }\n";
    let r = Responder::start(&safe_config("encrypted_only = true", rules));
    let nginx = Nginx::start(&r.socket, true);
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        text_message("plain").as_bytes(),
    );
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(!resp.text().contains("re:plain"));
    // GET verification still works (WeChat verifies the URL with a plain GET in every mode).
    let ts = now().to_string();
    let get = nginx.request(
        "GET",
        &format!(
            "/weixin?signature={}&timestamp={ts}&nonce=n&echostr=abc",
            sign(&[TOKEN, &ts, "n"])
        ),
        b"",
    );
    assert_eq!(get.body, b"abc");
    let mut py = WxCrypt::start();
    let encrypt = py.encrypt(KEY, &text_message("secret"), None);
    let xml = py.open_reply(KEY, &post_safe(&nginx, &encrypt, &safe_body(&encrypt)));
    assert_eq!(text_content(&xml), "re:secret");
}

#[test]
fn previous_key_is_accepted_and_the_reply_uses_it() {
    let rules = "[[account.rule]]\nreply = { type = \"text\", content = \"re:{Content}\" }\n";
    let config = config_toml(
        "",
        TOKEN,
        &format!("app_id = \"{APPID}\"\naes_key = \"{NEW_KEY}\"\nprevious_aes_key = \"{KEY}\""),
        rules,
    );
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let mut py = WxCrypt::start();

    let old = py.encrypt(KEY, &text_message("old key"), None);
    let resp = post_safe(&nginx, &old, &safe_body(&old));
    let xml = py.open_reply(KEY, &resp);
    assert_eq!(text_content(&xml), "re:old key");
    let enc = xml_field(&resp.text(), "Encrypt").unwrap();
    assert!(
        py.call("decrypt", NEW_KEY, None, enc.as_bytes()).is_err(),
        "the reply to an old-key message is encrypted with the old key"
    );

    let new = py.encrypt(NEW_KEY, &text_message("new key"), None);
    let resp = post_safe(&nginx, &new, &safe_body(&new));
    assert_eq!(text_content(&py.open_reply(NEW_KEY, &resp)), "re:new key");

    // A third key is refused.
    let other = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvuG";
    let bad = py.encrypt(other, &text_message("x"), None);
    assert_eq!(post_safe(&nginx, &bad, &safe_body(&bad)).status, 400);
}

#[test]
fn bad_encrypted_input_is_refused_and_the_next_request_is_still_answered() {
    let rules = "[[account.rule]]\nreply = { type = \"text\", content = \"re:{Content}\" }\n";
    let r = Responder::start(&safe_config("", rules));
    let nginx = Nginx::start(&r.socket, true);
    let mut py = WxCrypt::start();
    let msg = text_message("a message long enough to span several AES blocks, 你好");

    let good = |py: &mut WxCrypt| {
        let e = py.encrypt(KEY, &text_message("next"), None);
        let resp = post_safe(&nginx, &e, &safe_body(&e));
        assert_eq!(text_content(&py.open_reply(KEY, &resp)), "re:next");
    };
    good(&mut py);

    let encrypt = py.encrypt(KEY, &msg, None);
    let ts = now().to_string();
    let sig = sign(&[TOKEN, &ts, "n"]);
    let msg_sig = sign(&[TOKEN, &ts, "n", &encrypt]);
    let body = safe_body(&encrypt);
    for (what, query) in [
        (
            "wrong msg_signature",
            format!(
                "signature={sig}&timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature={}",
                "0".repeat(40)
            ),
        ),
        (
            "msg_signature over other ciphertext",
            format!(
                "signature={sig}&timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature={}",
                sign(&[TOKEN, &ts, "n", "other"])
            ),
        ),
        (
            "missing msg_signature",
            format!("signature={sig}&timestamp={ts}&nonce=n&encrypt_type=aes"),
        ),
        (
            "good msg_signature, wrong signature",
            format!(
                "signature={}&timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature={msg_sig}",
                "1".repeat(40)
            ),
        ),
    ] {
        let resp = nginx.request("POST", &format!("/weixin?{query}"), body.as_bytes());
        assert_eq!(resp.status, 403, "{what}: {}", resp.text());
        good(&mut py);
    }

    for defect in [
        "tamper-base64",
        "truncate-base64",
        "truncate",
        "not-multiple-16",
        "bad-padding-zero",
        "bad-padding-33",
        "length-beyond",
        "wrong-appid",
        "invalid-utf8",
    ] {
        let e = py.encrypt(KEY, &msg, Some(defect));
        // Python's own decrypt refuses it too: the defect is real.
        assert!(py.call("decrypt", KEY, None, e.as_bytes()).is_err() || defect == "invalid-utf8");
        let resp = post_safe(&nginx, &e, &safe_body(&e));
        assert_eq!(resp.status, 400, "{defect}: {}", resp.text());
        assert!(!resp.text().contains("re:"), "{defect}");
        good(&mut py);
    }

    // encrypt_type=aes without an Encrypt element, and an empty one.
    let resp = post_safe(&nginx, "", &text_message("no Encrypt"));
    assert_eq!(resp.status, 400, "{}", resp.text());
    let resp = post_safe(&nginx, "", &safe_body(""));
    assert!((400..500).contains(&resp.status), "{}", resp.status);
    good(&mut py);
    assert!(!r.stderr().contains(KEY), "keys never appear in logs");
}

#[test]
fn encrypted_request_to_an_account_without_a_key_is_refused() {
    let rules = "[[account.rule]]\nreply = { type = \"text\", content = \"re:{Content}\" }\n";
    let r = Responder::start(&config_toml("", TOKEN, "", rules));
    let nginx = Nginx::start(&r.socket, false);
    let mut py = WxCrypt::start();
    let e = py.encrypt(KEY, &text_message("x"), None);
    let resp = post_safe(&nginx, &e, &safe_body(&e));
    assert_eq!(resp.status, 400, "{}", resp.text());
}

/// The same message answered in plaintext and in safe mode gives the same reply XML (apart
/// from CreateTime), for every rule set of the plaintext tests, every reply type included.
#[test]
fn encrypted_replies_equal_plaintext_replies() {
    let mut py = WxCrypt::start();
    let sets: [(&str, Vec<String>); 3] = [
        ("reply.toml", reply_triggers()),
        (
            "all-types.toml",
            ALL_TYPES_CASES
                .iter()
                .map(|(f, _)| message_fixture(f))
                .collect(),
        ),
        (
            "match.toml",
            match_cases().into_iter().map(|(_, m, _)| m).collect(),
        ),
    ];
    let strip_time = |xml: &str| -> String {
        let a = xml.find("<CreateTime>").expect("CreateTime");
        let b = xml.find("</CreateTime>").expect("CreateTime");
        format!("{}{}", &xml[..a], &xml[b..])
    };
    for (rules, messages) in sets {
        let r = Responder::start(&safe_config("", &rules_fixture(rules)));
        let nginx = Nginx::start(&r.socket, true);
        for msg in messages {
            let plain = nginx.request(
                "POST",
                &format!("/weixin?{}", signed_query(TOKEN)),
                msg.as_bytes(),
            );
            assert_eq!(plain.status, 200, "{msg}: {}", plain.text());
            let e = py.encrypt(KEY, &msg, None);
            let safe = post_safe(&nginx, &e, &safe_body(&e));
            if plain.body == b"success" {
                assert_eq!(safe.status, 200);
                assert_eq!(safe.body, b"success", "{msg}: no reply stays `success`");
                continue;
            }
            let xml = py.open_reply(KEY, &safe);
            xml_leaves(&xml);
            assert_eq!(strip_time(&xml), strip_time(&plain.text()), "{msg}");
        }
    }
}
