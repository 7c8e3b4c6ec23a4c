//! End to end through a real nginx that includes `nginx/weixin.conf` verbatim, talking to the
//! real binary over a Unix socket: WeChat → nginx → socket → weixin-fcgi → reply.

mod common;
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
