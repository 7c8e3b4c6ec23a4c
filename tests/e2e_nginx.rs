//! End to end through a real nginx that includes `nginx/weixin.conf` verbatim, talking to the
//! real binary over a Unix socket: WeChat → nginx → socket → weixin-fcgi → reply.

pub mod common;
use common::*;

const TOKEN: &str = "e2etoken";

fn echo_config() -> String {
    config_with_rules(
        TOKEN,
        r#"
[[account.rule]]
name = "welcome"
msg_type = "event"
event = "subscribe"
reply = { type = "text", content = "Welcome {FromUserName}" }

[[account.rule]]
name = "echo"
msg_type = "text"
reply = { type = "text", content = "You said: {Content}" }
"#,
    )
}

#[test]
fn verification_get_echoes_exactly_and_refuses_bad_signatures() {
    for keepalive in [false, true] {
        let r = Responder::start(&echo_config());
        let nginx = Nginx::start(&r.socket, keepalive);
        let ts = now().to_string();
        let sig = sign(&[TOKEN, &ts, "n0nce"]);
        let ok = nginx.request(
            "GET",
            &format!(
                "/weixin?signature={sig}&timestamp={ts}&nonce=n0nce&echostr=5837397520665436492"
            ),
            b"",
        );
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.body, b"5837397520665436492",
            "exactly echostr, nothing around it"
        );
        let bad = nginx.request(
            "GET",
            &format!(
                "/weixin?signature={}&timestamp={ts}&nonce=n0nce&echostr=leak",
                "0".repeat(40)
            ),
            b"",
        );
        assert_eq!(bad.status, 403);
        assert!(
            !bad.text().contains("leak"),
            "echostr must not be echoed on 403"
        );
    }
}

#[test]
fn text_message_is_answered_through_nginx() {
    let r = Responder::start(&echo_config());
    let nginx = Nginx::start(&r.socket, true);
    let resp = nginx.request(
        "POST",
        &format!("/weixin?{}", signed_query(TOKEN)),
        text_message("hi 你好 😀").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("Content-Type"),
        Some("application/xml; charset=utf-8")
    );
    let xml = resp.text();
    assert_eq!(
        xml_field(&xml, "Content").as_deref(),
        Some("You said: hi 你好 😀")
    );
    assert_eq!(xml_field(&xml, "ToUserName").as_deref(), Some("oUser"));
    assert_eq!(xml_field(&xml, "FromUserName").as_deref(), Some("gh_test"));
}

/// POSTs `body` to `path` signed for `token`.
fn post(nginx: &Nginx, path: &str, token: &str, body: &[u8]) -> HttpResponse {
    nginx.request("POST", &format!("{path}?{}", signed_query(token)), body)
}

/// Checks the common reply fields (roles swapped, CreateTime now in seconds, MsgType) and
/// returns the reply XML.
fn reply_xml(resp: &HttpResponse, msg_type: &str) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("Content-Type"),
        Some("application/xml; charset=utf-8")
    );
    let xml = resp.text();
    assert!(
        xml.starts_with("<xml>") && xml.ends_with("</xml>"),
        "exactly the reply XML, nothing around it: {xml:?}"
    );
    xml_leaves(&xml); // well-formed: every element closed, CDATA terminated
    assert_eq!(xml_field(&xml, "ToUserName").as_deref(), Some("oUser"));
    assert_eq!(xml_field(&xml, "FromUserName").as_deref(), Some("gh_test"));
    let created: u64 = xml_field(&xml, "CreateTime")
        .and_then(|t| t.parse().ok())
        .expect("CreateTime is a number");
    assert!(now().abs_diff(created) < 60, "CreateTime in seconds, now");
    assert_eq!(xml_field(&xml, "MsgType").as_deref(), Some(msg_type));
    xml
}

/// The reply's text Content, after checking it is a well-formed text reply.
fn text_reply(resp: &HttpResponse) -> String {
    let xml = reply_xml(resp, "text");
    assert_eq!(
        xml_elements(&xml),
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
    xml_leaves(&xml)
        .into_iter()
        .find(|(name, _)| name == "Content")
        .map(|(_, text)| text)
        .expect("Content")
}

fn assert_success(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.text());
    assert_eq!(
        resp.body, b"success",
        "{what}: no reply is exactly `success`"
    );
}

#[test]
fn every_message_type_and_event_renders_its_own_fields() {
    for keepalive in [false, true] {
        let r = Responder::start(&config_with_rules(TOKEN, &rules_fixture("all-types.toml")));
        let nginx = Nginx::start(&r.socket, keepalive);
        for (fixture, expected) in ALL_TYPES_CASES {
            let resp = post(
                &nginx,
                "/weixin",
                TOKEN,
                message_fixture(fixture).as_bytes(),
            );
            assert_eq!(
                text_reply(&resp),
                *expected,
                "{fixture} (keepalive {keepalive})"
            );
        }
    }
}

#[test]
fn every_reply_type_field_by_field() {
    let r = Responder::start(&config_with_rules(TOKEN, &rules_fixture("reply.toml")));
    let nginx = Nginx::start(&r.socket, true);
    let send = |body: String| post(&nginx, "/weixin", TOKEN, body.as_bytes());
    let common = ["xml", "ToUserName", "FromUserName", "CreateTime", "MsgType"];
    let with = |rest: &[&str]| -> Vec<String> {
        common
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };

    assert_eq!(text_reply(&send(text_message("r-text"))), "T oUser");

    let xml = reply_xml(&send(text_message("r-image")), "image");
    assert_eq!(xml_elements(&xml), with(&["Image", "MediaId"]));
    assert_eq!(
        xml_field(&xml, "MediaId").as_deref(),
        Some("img-1234567890123456")
    );

    let xml = reply_xml(&send(text_message("r-voice")), "voice");
    assert_eq!(xml_elements(&xml), with(&["Voice", "MediaId"]));
    assert_eq!(xml_field(&xml, "MediaId").as_deref(), Some("voice-1"));

    let xml = reply_xml(&send(text_message("r-video")), "video");
    assert_eq!(
        xml_elements(&xml),
        with(&["Video", "MediaId", "Title", "Description"])
    );
    assert_eq!(xml_field(&xml, "MediaId").as_deref(), Some("vid-1"));
    assert_eq!(xml_field(&xml, "Title").as_deref(), Some("Video r-video"));
    assert_eq!(
        xml_field(&xml, "Description").as_deref(),
        Some("a <video> & more")
    );

    let xml = reply_xml(&send(text_message("r-music")), "music");
    let music = [
        "Music",
        "Title",
        "Description",
        "MusicUrl",
        "HQMusicUrl",
        "ThumbMediaId",
    ];
    assert_eq!(xml_elements(&xml), with(&music));
    for (name, value) in [
        ("Title", "Song"),
        ("Description", "by gh_test"),
        ("MusicUrl", "http://m/a.mp3"),
        ("HQMusicUrl", "http://m/a-hq.mp3"),
        ("ThumbMediaId", "thumb-1"),
    ] {
        assert_eq!(xml_field(&xml, name).as_deref(), Some(value), "{name}");
    }
    let xml = reply_xml(&send(text_message("r-music-min")), "music");
    assert_eq!(xml_field(&xml, "ThumbMediaId").as_deref(), Some("thumb-2"));
    assert_eq!(xml_field(&xml, "Title").as_deref(), Some(""));

    // A user message gets 1 article even when 3 are configured (WeChat shows only one).
    let xml = reply_xml(&send(text_message("r-news")), "news");
    let article = ["item", "Title", "Description", "PicUrl", "Url"];
    assert_eq!(
        xml_elements(&xml),
        with(&[&["ArticleCount", "Articles"][..], &article[..]].concat())
    );
    assert_eq!(xml_field(&xml, "ArticleCount").as_deref(), Some("1"));
    assert_eq!(xml_fields(&xml, "Title"), ["A1 r-news"]);
    assert_eq!(xml_fields(&xml, "Description"), ["d1"]);
    assert_eq!(xml_fields(&xml, "PicUrl"), ["http://p/1.jpg"]);
    assert_eq!(xml_fields(&xml, "Url"), ["http://u/1"]);

    // An event may get all of them, up to 8.
    let xml = reply_xml(&send(event_message("CLICK", Some("NEWS3"))), "news");
    assert_eq!(xml_field(&xml, "ArticleCount").as_deref(), Some("3"));
    assert_eq!(xml_fields(&xml, "Title"), ["A1 NEWS3", "A2", "A3"]);
    assert_eq!(
        xml_fields(&xml, "Url"),
        ["http://u/1", "http://u/2", "http://u/3"]
    );
    let xml = reply_xml(&send(event_message("CLICK", Some("NEWS9"))), "news");
    assert_eq!(xml_field(&xml, "ArticleCount").as_deref(), Some("8"));
    assert_eq!(xml_fields(&xml, "item").len(), 8);
    assert_eq!(
        xml_fields(&xml, "Title"),
        ["1", "2", "3", "4", "5", "6", "7", "8"]
    );
    assert_eq!(xml_fields(&xml, "Url")[7], "http://u/8");

    let xml = reply_xml(&send(text_message("r-kf")), "transfer_customer_service");
    assert_eq!(xml_elements(&xml), with(&[]));
    let xml = reply_xml(
        &send(text_message("r-kf-acct")),
        "transfer_customer_service",
    );
    assert_eq!(xml_elements(&xml), with(&["TransInfo", "KfAccount"]));
    assert_eq!(
        xml_field(&xml, "KfAccount").as_deref(),
        Some("kf2001@gh_test")
    );

    assert_success(&send(text_message("r-none")), "type = none");
    assert_success(&send(text_message("unmatched")), "no rule matched");
}

#[test]
fn cdata_injection_comes_back_as_text() {
    let r = Responder::start(&echo_config());
    let nginx = Nginx::start(&r.socket, true);
    for evil in [
        "]]><evil/>",
        "a]]><evil>x</evil><![CDATA[b",
        "]]]]>>]]><Content>fake</Content>",
        "{FromUserName} {{Content}} {Content}",
        "<![CDATA[ & &amp; </xml>",
    ] {
        let resp = post(&nginx, "/weixin", TOKEN, text_message(evil).as_bytes());
        // text_reply checks the element list: no extra element got in.
        assert_eq!(text_reply(&resp), format!("You said: {evil}"), "{evil:?}");
    }
}

#[test]
fn unicode_and_emoji_round_trip() {
    let r = Responder::start(&echo_config());
    let nginx = Nginx::start(&r.socket, false);
    for s in [
        "你好，世界",
        "😀👍🏽👨‍👩‍👧‍👦🇨🇳",
        "مرحبا שלום",
        "e\u{301} ñ ü ß",
        "\u{200b}zero\u{feff}width",
        "tab\tand\nnewline",
    ] {
        let resp = post(&nginx, "/weixin", TOKEN, text_message(s).as_bytes());
        assert_eq!(text_reply(&resp), format!("You said: {s}"), "{s:?}");
    }
}

fn echo_only(top: &str) -> String {
    config_toml(
        top,
        TOKEN,
        "",
        "[[account.rule]]\nreply = { type = \"text\", content = \"{Content}\" }\n",
    )
}

#[test]
fn long_text_is_cut_to_2048_bytes_on_a_char_boundary() {
    let r = Responder::start(&echo_only(""));
    let nginx = Nginx::start(&r.socket, true);
    // 1 + 4 * 750 = 3001 bytes; the longest prefix within 2048 bytes is 1 + 4 * 511 = 2045.
    let long = format!("a{}", "😀".repeat(750));
    let got = text_reply(&post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message(&long).as_bytes(),
    ));
    assert_eq!(got.len(), 2045);
    assert!(long.starts_with(&got), "a prefix of the text");
    // 3-byte characters: 1000 x 3 = 3000 bytes -> 682 x 3 = 2046.
    let han = "你".repeat(1000);
    let got = text_reply(&post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message(&han).as_bytes(),
    ));
    assert_eq!(got, "你".repeat(682));
    // Exactly 2048 bytes is kept whole.
    let exact = "x".repeat(2048);
    let got = text_reply(&post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message(&exact).as_bytes(),
    ));
    assert_eq!(got, exact);

    let r = Responder::start(&echo_only("text_max_bytes = 10"));
    let nginx = Nginx::start(&r.socket, false);
    let got = text_reply(&post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message("你好世界").as_bytes(),
    ));
    assert_eq!(got, "你好世", "configured limit, on a char boundary");
}

#[test]
fn raw_control_characters_are_accepted_and_not_copied_into_the_reply() {
    let r = Responder::start(&echo_config());
    let nginx = Nginx::start(&r.socket, true);
    let resp = post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message("a\u{1d}b\u{1}c\u{8}d\u{1f}e").as_bytes(),
    );
    assert_eq!(text_reply(&resp), "You said: abcde");
    assert!(
        !resp
            .body
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')),
        "no control characters XML 1.0 forbids in the reply"
    );
}

#[test]
fn post_signature_is_checked() {
    let r = Responder::start(&echo_config());
    let nginx = Nginx::start(&r.socket, true);
    let body = text_message("hi");
    let ts = now().to_string();
    let good = sign(&[TOKEN, &ts, "n1"]);
    for query in [
        format!("signature={}&timestamp={ts}&nonce=n1", "0".repeat(40)),
        format!("timestamp={ts}&nonce=n1&openid=oUser"),
        String::new(),
        format!(
            "signature={}&timestamp={ts}&nonce=n1",
            sign(&["other", &ts, "n1"])
        ),
        format!("signature={good}&timestamp={ts}&nonce=n2"),
        format!("signature={}&timestamp={ts}&nonce=n1", good.to_uppercase()),
        format!("signature={}&timestamp={ts}&nonce=n1", &good[..39]),
    ] {
        let resp = nginx.request("POST", &format!("/weixin?{query}"), body.as_bytes());
        assert_eq!(resp.status, 403, "{query}: {}", resp.text());
        assert!(!resp.text().contains("You said"), "{query}");
    }
    let resp = nginx.request(
        "POST",
        &format!("/weixin?signature={good}&timestamp={ts}&nonce=n1"),
        body.as_bytes(),
    );
    assert_eq!(text_reply(&resp), "You said: hi");
}

#[test]
fn stale_timestamp_is_refused_unless_the_window_is_off() {
    let stale = (now() - 1000).to_string();
    let future = (now() + 1000).to_string();
    let q = |ts: &str| {
        format!(
            "/weixin?signature={}&timestamp={ts}&nonce=n",
            sign(&[TOKEN, ts, "n"])
        )
    };
    let body = text_message("hi");
    let r = Responder::start(&echo_only("timestamp_window = 300"));
    let nginx = Nginx::start(&r.socket, true);
    for ts in [&stale, &future, &"notanumber".to_string()] {
        assert_eq!(
            nginx.request("POST", &q(ts), body.as_bytes()).status,
            403,
            "{ts}"
        );
    }
    let fresh = (now() - 100).to_string();
    assert_eq!(
        text_reply(&nginx.request("POST", &q(&fresh), body.as_bytes())),
        "hi"
    );

    let r = Responder::start(&echo_only("timestamp_window = 0"));
    let nginx = Nginx::start(&r.socket, false);
    for ts in [&stale, &future] {
        assert_eq!(
            text_reply(&nginx.request("POST", &q(ts), body.as_bytes())),
            "hi"
        );
    }
}

#[test]
fn bad_bodies_are_refused_and_the_next_request_is_still_answered() {
    let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><ToUserName>gh_test</ToUserName><FromUserName>oUser</FromUserName><MsgType>text</MsgType><Content>&lol3;</Content></xml>"#;
    let external = r#"<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><MsgType>text</MsgType><Content>&x;</Content></xml>"#;
    let mut invalid_utf8 = text_message("ok").into_bytes();
    let at = invalid_utf8.len() - 40;
    invalid_utf8[at] = 0xff;
    let huge = text_message(&"x".repeat(70 * 1024)); // over nginx's client_max_body_size 64k
    let mut cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("broken XML", b"<xml><Content>unclosed</xml>".to_vec(), 400),
        (
            "truncated",
            text_message("hi").as_bytes()[..60].to_vec(),
            400,
        ),
        ("not XML", b"hello".to_vec(), 400),
        (
            "wrong root",
            b"<html><MsgType>text</MsgType></html>".to_vec(),
            400,
        ),
        ("billion laughs", billion_laughs.as_bytes().to_vec(), 400),
        ("external entity", external.as_bytes().to_vec(), 400),
        (
            "undeclared entity",
            b"<xml><MsgType>text</MsgType><Content>&lol;</Content></xml>".to_vec(),
            400,
        ),
        ("invalid UTF-8", invalid_utf8, 400),
        ("over 64 KiB", huge.into_bytes(), 413),
    ];
    for keepalive in [false, true] {
        let r = Responder::start(&echo_config());
        let nginx = Nginx::start(&r.socket, keepalive);
        for (what, body, status) in &cases {
            let resp = post(&nginx, "/weixin", TOKEN, body);
            assert_eq!(resp.status, *status, "{what}: {}", resp.text());
            assert!(!resp.text().contains("lol"), "{what}: nothing expanded");
            let ok = post(&nginx, "/weixin", TOKEN, text_message("next").as_bytes());
            assert_eq!(text_reply(&ok), "You said: next", "after {what}");
        }
    }
    // The responder's own cap (max_body), below nginx's.
    let r = Responder::start(&echo_only("max_body = 2048"));
    let nginx = Nginx::start(&r.socket, true);
    cases.clear();
    let resp = post(
        &nginx,
        "/weixin",
        TOKEN,
        text_message(&"y".repeat(4000)).as_bytes(),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    let ok = post(&nginx, "/weixin", TOKEN, text_message("next").as_bytes());
    assert_eq!(text_reply(&ok), "next");
}

#[test]
fn each_account_answers_at_its_own_path_with_its_own_token_and_rules() {
    let config = format!(
        "{}\n[[account]]\nname = \"second\"\npath = \"/wx2\"\ntoken = \"token-two\"\n\n\
         [[account.rule]]\nreply = {{ type = \"text\", content = \"two: {{Content}}\" }}\n",
        echo_config()
    );
    let r = Responder::start(&config);
    let extra = "location = /wx2 { include fastcgi_params; fastcgi_pass weixin_fcgi; fastcgi_keep_conn on; }\n\
                 location = /nobody { include fastcgi_params; fastcgi_pass weixin_fcgi; }";
    let nginx = Nginx::start_with(&r.socket, true, extra);
    let body = text_message("hi");
    let b = body.as_bytes();
    assert_eq!(
        text_reply(&post(&nginx, "/weixin", TOKEN, b)),
        "You said: hi"
    );
    assert_eq!(text_reply(&post(&nginx, "/wx2", "token-two", b)), "two: hi");
    // Each token only opens its own account.
    assert_eq!(post(&nginx, "/weixin", "token-two", b).status, 403);
    assert_eq!(post(&nginx, "/wx2", TOKEN, b).status, 403);
    // `location =`: nginx itself answers 404 for anything but the exact path.
    for path in ["/weixin2", "/weixin/x", "/weixinfoo", "/wx"] {
        let resp = post(&nginx, path, TOKEN, b);
        assert_eq!(resp.status, 404, "{path}");
        assert!(!resp.text().contains("You said"), "{path}");
    }
    // A path nginx routes but no account has: the responder's own 404.
    let resp = post(&nginx, "/nobody", TOKEN, b);
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("no account"), "{}", resp.text());
    // GET verification per account too.
    let ts = now().to_string();
    let q = |token: &str| {
        format!(
            "signature={}&timestamp={ts}&nonce=n&echostr=e2",
            sign(&[token, &ts, "n"])
        )
    };
    assert_eq!(
        nginx
            .request("GET", &format!("/wx2?{}", q("token-two")), b"")
            .body,
        b"e2"
    );
    assert_eq!(
        nginx
            .request("GET", &format!("/wx2?{}", q(TOKEN)), b"")
            .status,
        403
    );
}

#[test]
fn rules_match_end_to_end() {
    for keepalive in [false, true] {
        let r = Responder::start(&config_with_rules(TOKEN, &rules_fixture("match.toml")));
        let nginx = Nginx::start(&r.socket, keepalive);
        for (what, body, expected) in match_cases() {
            let resp = post(&nginx, "/weixin", TOKEN, body.as_bytes());
            match expected {
                Some(content) => assert_eq!(text_reply(&resp), content, "{what}"),
                None => assert_success(&resp, what),
            }
        }
    }
}

#[test]
fn keepalive_pool_larger_than_the_workers_does_not_starve() {
    // nginx keeps up to 8 idle connections; the responder has 1 worker. Idle kept-alive
    // connections must not pin it.
    let config = config_with_rules(
        TOKEN,
        "[[account.rule]]\nreply = { type = \"text\", content = \"ok {Content}\" }\n",
    )
    .replace("workers = 2", "workers = 1");
    assert!(config.contains("workers = 1"));
    let r = Responder::start(&config);
    let nginx = Nginx::start(&r.socket, true);
    let port = nginx.port;
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..20 {
                    let body = text_message(&format!("{t}-{i}"));
                    match try_http(
                        port,
                        "POST",
                        &format!("/weixin?{}", signed_query(TOKEN)),
                        body.as_bytes(),
                    ) {
                        Ok(resp)
                            if resp.status == 200
                                && xml_field(&resp.text(), "Content").as_deref()
                                    == Some(&format!("ok {t}-{i}")) => {}
                        Ok(resp) => {
                            failures.push(format!("{t}-{i}: {} {}", resp.status, resp.text()))
                        }
                        Err(e) => failures.push(format!("{t}-{i}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 640 failed, e.g. {:?}; nginx error.log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        nginx.error_log()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "640 requests took {:?}",
        started.elapsed()
    );
}
