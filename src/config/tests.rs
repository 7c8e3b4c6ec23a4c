use super::*;

#[test]
fn restart_settings_name_exactly_what_changed() {
    let base = "[[account]]\npath = \"/w\"\ntoken = \"tok123\"\n";
    let old = Config::parse(base, "a.toml").expect("valid");
    let same = Config::parse(
        &format!("idle_exit = 5\nlog_level = \"debug\"\n{base}"),
        "b.toml",
    )
    .expect("valid");
    assert!(
        old.restart_settings()
            .changed_keys(&same.restart_settings())
            .is_empty()
    );
    let new = Config::parse(
        &format!("workers = 3\nio_timeout_ms = 100\ndedup_entries = 99\n{base}"),
        "c.toml",
    )
    .expect("valid");
    assert_eq!(
        old.restart_settings().changed_keys(&new.restart_settings()),
        ["workers", "io_timeout_ms", "dedup_entries"]
    );
}

#[test]
fn urls() {
    for ok in [
        "http://127.0.0.1:8080/base",
        "http://10.1.2.3/x",
        "http://192.168.1.1:1",
        "http://172.16.0.1/",
        "http://[::1]:80/a",
        "http://localhost:9000",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    for bad in [
        "https://127.0.0.1/",
        "http://8.8.8.8/",
        "http://example.com/",
        "http://127.0.0.1/?q",
        "http://u@127.0.0.1/",
        "ftp://127.0.0.1/",
    ] {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}

use crate::rules::{Action, ReplyTemplate};

const FULL: &str = include_str!("../../examples/full.toml");

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn reply_kind(action: &Action) -> &'static str {
    match action {
        Action::NoReply => "none",
        Action::Forward(_) => "forward",
        Action::Reply(ReplyTemplate::Text { .. }) => "text",
        Action::Reply(ReplyTemplate::Image { .. }) => "image",
        Action::Reply(ReplyTemplate::Voice { .. }) => "voice",
        Action::Reply(ReplyTemplate::Video { .. }) => "video",
        Action::Reply(ReplyTemplate::Music { .. }) => "music",
        Action::Reply(ReplyTemplate::News { .. }) => "news",
        Action::Reply(ReplyTemplate::TransferCustomerService { .. }) => "transfer",
    }
}

#[test]
fn menu_oauth_takes_one_of_menu_handler_or_redirect_url() {
    let account = |keys: &str| {
        format!(
            "oauth_api_base = \"http://127.0.0.1:8\"\n[[account]]\npath = \"/wx\"\ntoken = \"t\"\n\
             app_id = \"wxa\"\napp_secret = \"s\"\n\
             redirect_path = \"/wxoauth\"\n{keys}\n"
        )
    };
    let c = Config::parse(
        &account("redirect_url = \"http://127.0.0.1:9/o\""),
        "t.toml",
    )
    .expect("redirect_url alone");
    assert_eq!(
        c.accounts[0].redirect_url.as_deref(),
        Some("http://127.0.0.1:9/o")
    );
    assert!(c.accounts[0].menu_handler.is_none());
    let both = Config::parse(
        &account(
            "redirect_url = \"http://127.0.0.1:9/o\"\nmenu_handler = \"http://127.0.0.1:9/m\"",
        ),
        "t.toml",
    )
    .expect_err("both");
    assert!(both.to_string().contains("not both"), "{both}");
    let neither = Config::parse(&account(""), "t.toml").expect_err("neither");
    assert!(
        neither.to_string().contains("menu_handler or redirect_url"),
        "{neither}"
    );
    let public = Config::parse(&account("redirect_url = \"http://8.8.8.8/o\""), "t.toml")
        .expect_err("public address");
    assert!(public.to_string().contains("redirect_url"), "{public}");
}

#[test]
fn embedded_default_parses() {
    let c = Config::embedded(DEFAULT_DEMO_TOKEN);
    assert_eq!(c.origin, "<embedded>");
    assert_eq!(c.workers, 2);
    assert_eq!(c.accounts.len(), 1);
    let a = &c.accounts[0];
    assert_eq!((a.name.as_str(), a.path.as_str()), ("demo", "/weixin"));
    assert_eq!(a.token.expose(), DEFAULT_DEMO_TOKEN);
    assert!(a.aes_key.is_none() && !a.encrypted_only);
    let rules: Vec<_> = a.rules.iter().map(|r| (r.name.as_str(), r.line)).collect();
    assert_eq!(rules, [("welcome", 12), ("echo", 18)]);
    assert_eq!(a.rules[0].conditions.event.as_deref(), Some("subscribe"));
    assert_eq!(a.rules[1].conditions.msg_type.as_deref(), Some("text"));
    assert!(c.account_for_path("/weixin").is_some());
    assert!(c.account_for_path("/weixin/").is_none());
}

#[test]
fn embedded_inserts_any_token_verbatim() {
    for token in [
        "abc123",
        r#"quo"te"#,
        r"back\slash",
        r#"\""#,
        r#"""""#,
        "'single'",
        "{TOKEN}",
        "ünïcödé中文",
        r"\u0041",
    ] {
        let c = Config::embedded(token);
        assert_eq!(c.accounts[0].token.expose(), token, "token {token:?}");
    }
}

#[test]
fn embedded_refused_token_falls_back_to_demo() {
    for token in ["", "with space", "tab\there", "new\nline", "nul\0"] {
        let c = Config::embedded(token);
        assert_eq!(
            c.accounts[0].token.expose(),
            DEFAULT_DEMO_TOKEN,
            "token {token:?}"
        );
        assert_eq!(c.accounts[0].rules.len(), 2);
    }
}

#[test]
fn check_token_cases() {
    assert_eq!(check_token("abc"), Ok(()));
    assert_eq!(check_token(r#"a"b\c"#), Ok(()));
    assert!(check_token("").is_err());
    assert!(check_token("a b").is_err());
    assert!(check_token("a\u{7f}").is_err());
    assert!(check_token("a\u{3000}b").is_err()); // ideographic space
}

#[test]
fn full_example_parses() {
    let c = Config::parse(FULL, "full.toml").unwrap();
    assert_eq!(c.listen.as_deref(), Some("/run/weixin-fcgi.sock"));
    assert_eq!(c.socket_mode, 0o660);
    assert_eq!((c.workers, c.max_conns, c.max_body), (2, 256, 65536));
    assert_eq!(c.timestamp_window, 300);
    assert_eq!(c.io_timeout, Duration::from_millis(5000));
    assert_eq!(c.text_max_bytes, 2048);
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.idle_exit, 0);
    let a = &c.accounts[0];
    assert_eq!(
        (a.name.as_str(), a.path.as_str(), a.token.expose()),
        ("shop", "/weixin", "change-me")
    );
    let rules: Vec<_> = a
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.line, reply_kind(&r.action)))
        .collect();
    assert_eq!(
        rules,
        [
            ("welcome", 22, "text"),
            ("menu-news", 28, "news"),
            ("help", 37, "text"),
            ("price", 42, "text"),
            ("echo", 47, "text"),
            ("voice", 52, "text"),
            ("image-back", 57, "image"),
            ("agent", 62, "transfer"),
            ("ignore-unsubscribe", 67, "none"),
            ("fallback", 73, "text"),
        ]
    );
    let news = &a.rules[1];
    assert_eq!(news.conditions.event.as_deref(), Some("CLICK"));
    assert_eq!(news.conditions.event_key.as_deref(), Some("NEWS"));
    match &news.action {
        Action::Reply(ReplyTemplate::News { articles }) => {
            assert_eq!(articles.len(), 1);
            assert_eq!(articles[0].title.fixed_len(), Some("Today".len()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.rules[2].conditions.content.as_deref(), Some("help"));
    assert_eq!(a.rules[3].conditions.contains.as_deref(), Some("price"));
    assert_eq!(a.rules[4].conditions.prefix.as_deref(), Some("echo "));
    match &a.rules[6].action {
        Action::Reply(ReplyTemplate::Image { media_id }) => {
            assert_eq!(media_id.fields().collect::<Vec<_>>(), ["MediaId"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    match &a.rules[7].action {
        Action::Reply(ReplyTemplate::TransferCustomerService { kf_account }) => {
            assert!(kf_account.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
    let fallback = &a.rules[9].conditions;
    assert!(fallback.msg_type.is_none() && fallback.content.is_none());
    assert!(fallback.fields.is_empty());
}

#[test]
fn minimal_config_takes_defaults() {
    let c = Config::load(&fixture("minimal.toml")).unwrap();
    assert!(c.origin.ends_with("minimal.toml"));
    assert_eq!(c.listen, None);
    assert_eq!(c.socket_mode, 0o660);
    assert_eq!((c.workers, c.max_conns, c.max_body), (2, 256, 65536));
    assert_eq!(c.timestamp_window, 300);
    assert_eq!(c.io_timeout, Duration::from_millis(5000));
    assert_eq!(c.text_max_bytes, 2048);
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.idle_exit, 0);
    let a = &c.accounts[0];
    assert_eq!((a.name.as_str(), a.path.as_str()), ("/weixin", "/weixin"));
    assert!(a.app_id.is_none() && a.aes_key.is_none() && a.previous_aes_key.is_none());
    assert!(!a.encrypted_only && a.rules.is_empty());
}

#[test]
fn every_setting_and_rule_form() {
    let text = r#"
        listen = "127.0.0.1:9000"
        socket_mode = 0o600
        workers = 64
        max_conns = 1
        max_body = 512
        timestamp_window = 0
        io_timeout_ms = 100
        text_max_bytes = 65536
        log_level = "debug"
        idle_exit = 30

        [[account]]
        path = "/a"
        token = "tok"
        app_id = "wx0123"
        encrypted_only = false

        [[account.rule]]
        fields = { ScanType = "qrcode", "Odd Name" = "x" }
        event_key = ""
        [account.rule.reply]
        type = "video"
        media_id = "m"

        [[account.rule]]
        reply.type = "music"
        reply.thumb_media_id = "t"

        [[account.rule]]
        reply = { type = "voice", media_id = "{MediaId}" }

        [[account.rule]]
        reply = { type = "transfer_customer_service", kf_account = "kf@x" }

        [[account.rule]]
        msg_type = "event"
        reply = { type = "news", articles = [
            { title = "1" }, { title = "2" }, { title = "3" }, { title = "4" },
            { title = "5" }, { title = "6" }, { title = "7" }, { title = "8", url = "u" },
        ] }

        [[account]]
        name = "second"
        path = "/b"
        token = "tok2"
    "#;
    let c = Config::parse(text, "t.toml").unwrap();
    assert_eq!(c.listen.as_deref(), Some("127.0.0.1:9000"));
    assert_eq!(c.socket_mode, 0o600);
    assert_eq!((c.workers, c.max_conns, c.max_body), (64, 1, 512));
    assert_eq!((c.timestamp_window, c.idle_exit), (0, 30));
    assert_eq!(c.io_timeout, Duration::from_millis(100));
    assert_eq!(c.text_max_bytes, 65536);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.accounts.len(), 2);
    let a = &c.accounts[0];
    assert_eq!(a.app_id.as_deref(), Some("wx0123"));
    let kinds: Vec<_> = a.rules.iter().map(|r| reply_kind(&r.action)).collect();
    assert_eq!(kinds, ["video", "music", "voice", "transfer", "news"]);
    let names: Vec<_> = a.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["rule[0]", "rule[1]", "rule[2]", "rule[3]", "rule[4]"]
    );
    let lines: Vec<_> = a.rules.iter().map(|r| r.line).collect();
    assert_eq!(lines, [19, 26, 30, 33, 36]);
    let fields = &a.rules[0].conditions.fields;
    assert_eq!(
        fields,
        &[
            ("ScanType".to_string(), "qrcode".to_string()),
            ("Odd Name".into(), "x".into())
        ]
    );
    assert_eq!(a.rules[0].conditions.event_key.as_deref(), Some(""));
    match &a.rules[4].action {
        Action::Reply(ReplyTemplate::News { articles }) => assert_eq!(articles.len(), 8),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        c.account_for_path("/b").map(|a| a.name.as_str()),
        Some("second")
    );
}

#[test]
fn socket_mode_forms() {
    let cases: &[(&str, Option<u32>)] = &[
        (r#""0660""#, Some(0o660)),
        (r#""660""#, Some(0o660)),
        (r#""0""#, Some(0)),
        (r#""0777""#, Some(0o777)),
        ("0o640", Some(0o640)),
        (r#""999""#, None),
        (r#""1777""#, None),
        (r#""07777""#, None),
        (r#""""#, None),
        (r#""rw-rw----""#, None),
        (r#""0o660""#, None),
        ("660", None),
        ("0o1777", None),
        ("true", None),
    ];
    for &(value, want) in cases {
        let text = format!("socket_mode = {value}\n[[account]]\npath = \"/\"\ntoken = \"t\"\n");
        let got = Config::parse(&text, "t.toml");
        match want {
            Some(mode) => assert_eq!(got.unwrap().socket_mode, mode, "{value}"),
            None => {
                let e = got.unwrap_err();
                assert_eq!(
                    (e.line, e.key.as_deref()),
                    (Some(1), Some("socket_mode")),
                    "{value}"
                );
            }
        }
    }
}

/// One bad config: where the error must point and what it must say.
struct Bad {
    text: &'static str,
    line: Option<usize>,
    key: Option<&'static str>,
    message: &'static str,
}

/// Every secret in these texts starts with `S3cret`; no error may repeat it.
const BAD: &[Bad] = &[
    Bad {
        text: "[[account]]\npath = \"/w\"\n",
        line: Some(1),
        key: Some("account[0].token"),
        message: "missing required key",
    },
    Bad {
        text: "[[account]]\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("account[0].path"),
        message: "missing required key",
    },
    Bad {
        text: "workers = 2\n",
        line: None,
        key: Some("account"),
        message: "at least one [[account]] is required",
    },
    Bad {
        text: "account = []\n",
        line: Some(1),
        key: Some("account"),
        message: "at least one [[account]] is required",
    },
    Bad {
        text: "[account]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("account"),
        message: "expected an array of tables ([[account]]), found table",
    },
    Bad {
        text: "workers = 2\nworker = 3\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(2),
        key: Some("worker"),
        message: "unknown key (allowed here: listen, socket_mode,",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\ntokne = \"S3cretTypo\"\n",
        line: Some(4),
        key: Some("account[0].tokne"),
        message: "unknown key (allowed here: name, path, token,",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n\"my key\" = 1\n",
        line: Some(4),
        key: Some("account[0].\"my key\""),
        message: "unknown key",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "none" }
[[account.rule]]
name = "x"
msgtype = "text"
reply = { type = "none" }
"#,
        line: Some(8),
        key: Some("account[0].rule[1].msgtype"),
        message: "unknown key (allowed here: name, msg_type,",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "hi",
  media_id = "x" }
"#,
        line: Some(6),
        key: Some("account[0].rule[0].reply.media_id"),
        message: "unknown key (allowed here: type, content)",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
[account.rule.reply]
type = "text"
content = "hi"
colour = "red"
"#,
        line: Some(8),
        key: Some("account[0].rule[0].reply.colour"),
        message: "unknown key",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [
  { title = "a", link = "b" },
] }
"#,
        line: Some(6),
        key: Some("account[0].rule[0].reply.articles[0].link"),
        message: "unknown key (allowed here: title, description, pic_url, url)",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "txt", content = "hi" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.type"),
        message: "unknown reply type \"txt\" (expected one of: text, image,",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { content = "hi" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.type"),
        message: "missing required key",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"

[[account.rule]]
name = "no reply"
msg_type = "text"
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply"),
        message: "missing required key (write reply = { type = \"none\" }",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = "hello"
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply"),
        message: "expected a table, found string",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "You said: {Con tent" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.content"),
        message: "invalid template: invalid character ' ' in field name at character 15",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "image", media_id = "{MediaId" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.media_id"),
        message: "invalid template: unclosed \"{\" at character 1",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "text", content = "" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.content"),
        message: "must not be empty",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [] }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.articles"),
        message: "a news reply needs 1 to 8 articles",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [{ title = "1" }, { title = "2" }, { title = "3" },
  { title = "4" }, { title = "5" }, { title = "6" }, { title = "7" }, { title = "8" },
  { title = "9" }] }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.articles"),
        message: "a news reply needs 1 to 8 articles",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "news", articles = [{ url = "u" }] }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.articles[0].title"),
        message: "missing required key",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
reply = { type = "music", title = "t" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].reply.thumb_media_id"),
        message: "missing required key",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
[[account.rule]]
fields = { MsgId = 1 }
reply = { type = "none" }
"#,
        line: Some(5),
        key: Some("account[0].rule[0].fields.MsgId"),
        message: "expected a string, found integer",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
rule = "x"
"#,
        line: Some(4),
        key: Some("account[0].rule"),
        message: "expected an array of tables ([[account.rule]]), found string",
    },
    Bad {
        text: r#"[[account]]
name = "shop"
path = "/weixin"
token = "S3cretTok"

[[account]]
name = "blog"
path = "/weixin"
token = "S3cretTok2"
"#,
        line: Some(8),
        key: Some("account[1].path"),
        message: "path \"/weixin\" is already used by account[0] (\"shop\", line 3)",
    },
    Bad {
        text: "[[account]]\npath = \"weixin\"\ntoken = \"S3cretTok\"\n",
        line: Some(2),
        key: Some("account[0].path"),
        message: "must start with \"/\"",
    },
    Bad {
        text: "[[account]]\npath = \"/w?x=1\"\ntoken = \"S3cretTok\"\n",
        line: Some(2),
        key: Some("account[0].path"),
        message: "must be a plain path",
    },
    Bad {
        text: r#"[[account]]
name = "shop"
path = "/w"
token = "S3cretTok"
aes_key = "S3cretKeyabcdefghijklmnopqrstuvwxyz01234567"
"#,
        line: Some(5),
        key: Some("account[0].aes_key"),
        message: "aes_key requires app_id (account \"shop\")",
    },
    Bad {
        text: r#"[[account]]
path = "/w"
token = "S3cretTok"
app_id = "wx1"
previous_aes_key = "S3cretKeyabcdefghijklmnopqrstuvwxyz01234567"
"#,
        line: Some(5),
        key: Some("account[0].previous_aes_key"),
        message: "previous_aes_key requires aes_key (account \"/w\")",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\nencrypted_only = true\n",
        line: Some(4),
        key: Some("account[0].encrypted_only"),
        message: "encrypted_only = true requires aes_key",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\nencrypted_only = \"yes\"\n",
        line: Some(4),
        key: Some("account[0].encrypted_only"),
        message: "expected a boolean (true or false), found string",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"\"\n",
        line: Some(3),
        key: Some("account[0].token"),
        message: "token must not be empty",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cret Tok\"\n",
        line: Some(3),
        key: Some("account[0].token"),
        message: "token must not contain whitespace",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = 12345\n",
        line: Some(3),
        key: Some("account[0].token"),
        message: "expected a string, found integer",
    },
    Bad {
        text: "workers = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("workers"),
        message: "must be between 1 and 64",
    },
    Bad {
        text: "\n\nworkers = 65\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(3),
        key: Some("workers"),
        message: "must be between 1 and 64",
    },
    Bad {
        text: "workers = -1\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("workers"),
        message: "must be between 1 and 64",
    },
    Bad {
        text: "workers = \"2\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("workers"),
        message: "expected an integer, found string",
    },
    Bad {
        text: "workers = 2.0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("workers"),
        message: "expected an integer, found float",
    },
    Bad {
        text: "max_conns = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("max_conns"),
        message: "must be at least 1",
    },
    Bad {
        text: "max_body = 100\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("max_body"),
        message: "must be between 512 and 16777216",
    },
    Bad {
        text: "io_timeout_ms = 5\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("io_timeout_ms"),
        message: "must be at least 100",
    },
    Bad {
        text: "text_max_bytes = 0\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("text_max_bytes"),
        message: "must be between 1 and 65536",
    },
    Bad {
        text: "log_level = \"verbose\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("log_level"),
        message: "must be one of: error, warn, info, debug",
    },
    Bad {
        text: "socket_mode = \"999\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("socket_mode"),
        message: "must be an octal mode",
    },
    Bad {
        text: "listen = \"\"\n[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\n",
        line: Some(1),
        key: Some("listen"),
        message: "must not be empty",
    },
    Bad {
        text: "workers = 2\nlisten = \"/run/x.sock\n[[account]]\n",
        line: Some(2),
        key: None,
        message: "invalid TOML: ",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\"\ntoken = \"S3cretTok\"\n",
        line: Some(4),
        key: None,
        message: "invalid TOML: duplicate key",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cretTok\n",
        line: Some(3),
        key: None,
        message: "invalid TOML: ",
    },
    Bad {
        text: "[[account]]\npath = \"/w\"\ntoken = \"S3cret\\qTok\"\n",
        line: Some(3),
        key: None,
        message: "invalid TOML: ",
    },
];

#[test]
fn errors_name_line_and_key() {
    for (i, case) in BAD.iter().enumerate() {
        let e = match Config::parse(case.text, "test.toml") {
            Ok(_) => panic!("case {i} parsed:\n{}", case.text),
            Err(e) => e,
        };
        let shown = e.to_string();
        assert_eq!(e.file, "test.toml", "case {i}: {shown}");
        assert_eq!(e.line, case.line, "case {i}: {shown}");
        assert_eq!(e.key.as_deref(), case.key, "case {i}: {shown}");
        assert!(e.message.starts_with(case.message), "case {i}: {shown}");
        assert!(
            !shown.contains("S3cret"),
            "case {i} leaks a secret: {shown}"
        );
        assert!(
            !format!("{e:?}").contains("S3cret"),
            "case {i} leaks a secret: {e:?}"
        );
    }
}

/// One account with one rule whose reply is `reply` (and `top`, `account_extra`).
fn late_config(top: &str, account_extra: &str, reply: &str) -> String {
    format!(
        "{top}\n[[account]]\npath = \"/w\"\ntoken = \"t\"\n{account_extra}\n\
         [[account.rule]]\nname = \"bot\"\nreply = {reply}\n"
    )
}

fn late_of(c: &Config) -> &crate::rules::Late {
    match &c.accounts[0].rules[0].action {
        Action::Forward(f) => f.late.as_ref().expect("late"),
        _ => panic!("not a forward rule"),
    }
}

#[test]
fn late_keys_and_their_defaults() {
    use crate::rules::{Late, LateMode as Mode};
    let c = Config::parse(
        &late_config(
            "",
            "",
            r#"{ type = "forward", url = "http://127.0.0.1:9/x", late = "next_message" }"#,
        ),
        "t.toml",
    )
    .unwrap();
    let l = late_of(&c);
    assert_eq!(l.mode, Mode::NextMessage);
    assert_eq!(l.text_max_bytes(c.text_max_bytes), 2048);
    assert_eq!(l.more_hint, Late::DEFAULT_MORE_HINT);
    let ReplyTemplate::Text { content } = &l.pending else {
        panic!("pending is text")
    };
    assert_eq!(content.to_string(), Mode::NextMessage.default_pending());
    let Action::Forward(f) = &c.accounts[0].rules[0].action else {
        unreachable!()
    };
    assert_eq!(
        f.timeout,
        Duration::from_millis(60_000),
        "late_timeout_ms default"
    );
    assert_eq!(c.late, LateSettings::default());
    assert_eq!(c.api_base, "https://api.weixin.qq.com");

    let c = Config::parse(
        &late_config(
            "api_base = \"http://127.0.0.1:9/\"\nlate_keep_hours = 24\nlate_max_answers = 50\n\
             late_max_bytes = 65536\nwechat_attempt_ms = 1000\nstate_file = \"/var/lib/x/late\"",
            "app_id = \"wx1\"\napp_secret = \"S3cret\"",
            r#"{ type = "exec", command = ["/bin/true"], late = "customer_service", late_timeout_ms = 30000,
                 pending = { type = "image", media_id = "M" }, text_max_bytes = 1000, more_hint = "…" }"#,
        ),
        "t.toml",
    )
    .unwrap();
    let l = late_of(&c);
    assert_eq!(l.mode, Mode::CustomerService);
    assert_eq!(l.text_max_bytes(c.text_max_bytes), 1000);
    assert_eq!(l.more_hint, "…");
    assert!(matches!(l.pending, ReplyTemplate::Image { .. }));
    assert_eq!(c.api_base, "http://127.0.0.1:9");
    assert_eq!(c.late.keep, Duration::from_secs(24 * 3600));
    assert_eq!((c.late.max_parts, c.late.max_bytes), (50, 65536));
    assert_eq!(c.late.attempt, Duration::from_millis(1000));
    assert_eq!(
        c.late.state_file.as_deref(),
        Some(Path::new("/var/lib/x/late"))
    );
    // The old name still works.
    let c = Config::parse(
        &late_config(
            "oauth_api_base = \"http://10.0.0.1\"",
            "",
            r#"{ type = "none" }"#,
        ),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.api_base, "http://10.0.0.1");
    // `pending` as a plain string is a text template.
    let c = Config::parse(
        &late_config(
            "",
            "",
            r#"{ type = "forward", url = "http://127.0.0.1:9", late = "next_message", pending = "wait, {Content}" }"#,
        ),
        "t.toml",
    )
    .unwrap();
    assert!(
        matches!(&late_of(&c).pending, ReplyTemplate::Text { content } if content.to_string() == "wait, {Content}")
    );
}

#[test]
fn late_errors_name_the_key() {
    let fwd = |extra: &str| format!(r#"{{ type = "forward", url = "http://127.0.0.1:9"{extra} }}"#);
    let cases: &[(String, String, &str, &str)] = &[
        (
            String::new(),
            fwd(r#", late = "later""#),
            "account[0].rule[0].reply.late",
            "must be one of",
        ),
        (
            String::new(),
            fwd(r#", pending = "x""#),
            "account[0].rule[0].reply.pending",
            "only applies with late",
        ),
        (
            String::new(),
            fwd(r#", late = "next_message", timeout_ms = 4500"#),
            "account[0].rule[0].reply.timeout_ms",
            "with late, the call runs up to late_timeout_ms",
        ),
        (
            String::new(),
            fwd(r#", late = "next_message", late_timeout_ms = 999"#),
            "account[0].rule[0].reply.late_timeout_ms",
            "must be between 1000 and 600000",
        ),
        (
            String::new(),
            fwd(r#", late = "next_message", pending = { type = "none" }"#),
            "account[0].rule[0].reply.pending",
            "must be a reply",
        ),
        (
            String::new(),
            fwd(r#", late = "next_message", more_hint = "x", text_max_bytes = 63"#),
            "account[0].rule[0].reply.text_max_bytes",
            "must be between 64",
        ),
        (
            String::new(),
            fwd(r#", late = "customer_service""#),
            "account[0].rule[0].reply.late",
            "late = \"customer_service\" needs the account's app_id and app_secret",
        ),
        (
            "api_base = \"http://127.0.0.1\"\noauth_api_base = \"http://127.0.0.1\"".into(),
            r#"{ type = "none" }"#.into(),
            "oauth_api_base",
            "oauth_api_base is the old name of api_base",
        ),
        (
            "wechat_attempt_ms = 9000".into(),
            r#"{ type = "none" }"#.into(),
            "wechat_attempt_ms",
            "must be between 300 and 5000",
        ),
    ];
    for (top, reply, key, message) in cases {
        let e = Config::parse(&late_config(top, "", reply), "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some(*key), "{e}");
        assert!(e.message.starts_with(message), "{e}");
        assert!(e.line.is_some(), "{e}");
    }
    // A long hint: at most half of the split size.
    let e = Config::parse(
        &late_config(
            "",
            "",
            &fwd(&format!(
                r#", late = "next_message", text_max_bytes = 100, more_hint = "{}""#,
                "x".repeat(60)
            )),
        ),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("account[0].rule[0].reply.more_hint"));
    // customer_service over https needs TLS (this test build has none, unless --features tls).
    let r = Config::parse(
        &late_config(
            "",
            "app_id = \"wx1\"\napp_secret = \"S3cret\"",
            &fwd(r#", late = "customer_service""#),
        ),
        "t.toml",
    );
    assert_eq!(r.is_ok(), cfg!(feature = "tls"), "{r:?}");
    if let Err(e) = r {
        assert!(e.message.contains("no TLS"), "{e}");
        assert!(!e.to_string().contains("S3cret"));
    }
}

#[test]
fn error_display_is_one_line() {
    let e = Config::parse("[[account]]\npath = \"/w\"\n", "weixin-fcgi.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "weixin-fcgi.toml:1: account[0].token: missing required key"
    );
    let e = Config::parse("x = \n", "f.toml").unwrap_err();
    assert!(e.to_string().starts_with("f.toml:1: invalid TOML: "), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn load_reports_file_and_line() {
    let e = Config::load(Path::new("/nonexistent/weixin-fcgi.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/weixin-fcgi.toml");
    assert_eq!((e.line, e.key.as_deref()), (None, None));
    assert!(e.message.starts_with("cannot read: "), "{e}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/weixin-fcgi.toml: cannot read: "),
        "{e}"
    );

    let path = fixture("unknown-key.toml");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("account[0].tokne"))
    );

    let e = Config::load(&fixture("syntax-error.toml")).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(3), None));
    assert!(!e.to_string().contains("S3cret"), "{e}");
}

#[test]

fn aes_key_accepted() {
    let c = Config::load(&fixture("safe-mode.toml")).unwrap();
    let a = &c.accounts[0];
    assert_eq!(a.app_id.as_deref(), Some("wxb11529c136998cb6"));
    assert!(a.aes_key.is_some() && a.previous_aes_key.is_none() && a.encrypted_only);
    assert!(!format!("{c:?}").contains("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"));
    assert!(!format!("{c:?}").contains("pamtest"));
}

#[test]

fn bad_aes_key_never_shown() {
    let cases = [
        (
            "aes_key",
            "S3cretShort",
            "EncodingAESKey must be exactly 43 characters",
        ),
        (
            "aes_key",
            "S3cret!!abcdefghijklmnopqrstuvwxyz012345678",
            "EncodingAESKey must be base64",
        ),
        (
            "previous_aes_key",
            "S3cretShort",
            "EncodingAESKey must be exactly 43 characters",
        ),
    ];
    for (key, value, message) in cases {
        let mut text = String::from(
            "[[account]]\npath = \"/w\"\ntoken = \"t\"\napp_id = \"wx1\"\naes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n",
        );
        if key == "aes_key" {
            text = text.replace("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", value);
        } else {
            text.push_str(&format!("previous_aes_key = \"{value}\"\n"));
        }
        let e = Config::parse(&text, "t.toml").unwrap_err();
        let line = if key == "aes_key" { 5 } else { 6 };
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.key, Some(format!("account[0].{key}")), "{e}");
        assert!(e.message.starts_with(message), "{e}");
        assert!(!e.to_string().contains("S3cret"), "{e}");
    }
}

#[test]
fn exec_output_cap_is_larger_on_a_late_rule() {
    let max_output = |reply: &str| {
        let c = Config::parse(&late_config("", "", reply), "t.toml").unwrap();
        let Action::Forward(f) = &c.accounts[0].rules[0].action else {
            unreachable!()
        };
        let crate::rules::Target::Exec { max_output, .. } = &f.target else {
            unreachable!()
        };
        *max_output
    };
    // Without `late` an answer is one reply: 2048 bytes, WeChat's text limit.
    assert_eq!(
        max_output(r#"{ type = "exec", command = ["/bin/true"] }"#),
        2048
    );
    assert_eq!(
        max_output(r#"{ type = "exec", command = ["/bin/true"], late = "off" }"#),
        2048
    );
    // With `late` a long answer is split into parts, so the program may say more.
    assert_eq!(
        max_output(r#"{ type = "exec", command = ["/bin/true"], late = "next_message" }"#),
        65536
    );
    assert_eq!(
        max_output(
            r#"{ type = "exec", command = ["/bin/true"], late = "next_message", max_output = 100 }"#
        ),
        100
    );
}
