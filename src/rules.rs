//! Rules and reply templates: which rule answers a message, and what it says.
//!
//! A rule matches when every condition it names holds (first matching rule wins):
//! `msg_type` (exact), `event` (case-insensitive), `event_key` (exact), `content` (exact),
//! `contains` (substring of Content), `prefix` (Content starts with), and `fields`
//! (any incoming field by name, exact value). A rule with no conditions matches everything
//! (a fallback). Its action is a reply template, or "no reply".
//!
//! Templates: `{FieldName}` is replaced by the incoming field's value (a missing field renders
//! empty); `{{` and `}}` are literal braces. Templates are parsed once at config load into
//! pieces, and substitution is single-pass, so user text is never re-interpreted as a template.
//!
//! A `forward`/`exec` action only names its target here ([`Forward`]); `forward/` runs it.

use crate::wechat::message::Message;
use crate::wechat::reply::{self, Article, Envelope, Limits, Reply};
use std::time::Duration;

/// One rule of an account.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `name`, for logs (default `rule[N]`).
    pub name: String,
    /// 1-based line in the config where the rule starts (for `check` and logs).
    pub line: usize,
    pub conditions: Conditions,
    pub action: Action,
}

/// Match conditions; all present ones must hold.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub msg_type: Option<String>,
    pub event: Option<String>,
    pub event_key: Option<String>,
    pub content: Option<String>,
    pub contains: Option<String>,
    pub prefix: Option<String>,
    /// `fields = { Name = "value", … }`.
    pub fields: Vec<(String, String)>,
}

/// What a matched rule does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Render this reply.
    Reply(ReplyTemplate),
    /// Answer `success` (no reply).
    NoReply,
    /// Ask a backend or a program (`type = "forward"` / `"exec"`), on the forward pool.
    Forward(std::sync::Arc<Forward>),
}

/// A `forward` or `exec` action (from the config).
#[derive(Debug, Clone)]
pub struct Forward {
    pub target: Target,
    /// `timeout_ms`: deadline of one backend call or program run.
    pub timeout: Duration,
    /// `fallback`: the static reply when the backend fails; `None` answers `success`.
    pub fallback: Option<ReplyTemplate>,
    /// `late = …`: the answer may come after WeChat's attempts (see `forward::late`).
    pub late: Option<Late>,
}

/// How a late answer reaches the user (`late = "next_message" | "customer_service"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateMode {
    /// Kept for the user; their next message is answered with it.
    NextMessage,
    /// Pushed with the customer-service message API; kept (as `NextMessage`) when that fails.
    CustomerService,
}

impl LateMode {
    pub fn name(self) -> &'static str {
        match self {
            LateMode::NextMessage => "next_message",
            LateMode::CustomerService => "customer_service",
        }
    }

    /// The default `pending` text (the people who read it use WeChat in Chinese).
    pub fn default_pending(self) -> &'static str {
        match self {
            LateMode::NextMessage => "正在思考，请稍候片刻后发送任意消息获取回答。",
            LateMode::CustomerService => "正在思考，回答稍后会自动发送给您。",
        }
    }
}

/// A rule's `late` settings.
#[derive(Debug, Clone)]
pub struct Late {
    /// `late`.
    pub mode: LateMode,
    /// `pending`: the reply to WeChat's last attempt while the answer is not ready.
    pub pending: ReplyTemplate,
    /// `text_max_bytes` of the rule; 0: the global one. Longer text answers are split.
    pub text_max_bytes: usize,
    /// `more_hint`: appended to a part delivered on a message when more parts follow.
    pub more_hint: String,
}

impl Late {
    /// Default `more_hint`.
    pub const DEFAULT_MORE_HINT: &str = "\n（回复任意消息查看后续）";

    /// The split size: the rule's `text_max_bytes`, else `global`.
    pub fn text_max_bytes(&self, global: usize) -> usize {
        if self.text_max_bytes == 0 {
            global
        } else {
            self.text_max_bytes
        }
    }
}

/// Where the answer comes from.
#[derive(Debug, Clone)]
pub enum Target {
    /// `url`: base URL, `http://` to a loopback or private address.
    Http { url: String },
    /// `command`: program and arguments; `max_output`: stdout cap in bytes.
    Exec {
        command: Vec<String>,
        max_output: usize,
    },
}

/// A `{Field}` template parsed into pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(String),
}

/// A news article whose values are templates.
pub type ArticleTemplate = Article<Template>;

/// A reply whose values are templates (`reply = { type = "text", content = "…" }`, …).
pub type ReplyTemplate = Reply<Template>;

/// Template syntax error (unclosed `{`, empty or invalid field name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TemplateError {}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Template {
    /// Parses `{FieldName}` placeholders; field names are `[A-Za-z0-9_]+`.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        // Positions in messages are 1-based characters, as a user counts them in the config.
        let at = |i: usize| src[..i].chars().count() + 1;
        let bytes = src.as_bytes();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1)) {
                (b'{', Some(b'{')) => {
                    literal.push('{');
                    i += 2;
                }
                (b'}', Some(b'}')) => {
                    literal.push('}');
                    i += 2;
                }
                (b'{', _) => {
                    let start = i + 1;
                    let end = start
                        + bytes[start..]
                            .iter()
                            .take_while(|&&b| is_name_byte(b))
                            .count();
                    match bytes.get(end) {
                        Some(b'}') if end > start => {
                            if !literal.is_empty() {
                                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                            }
                            pieces.push(Piece::Field(src[start..end].to_string()));
                            i = end + 1;
                        }
                        Some(b'}') => {
                            return Err(TemplateError(format!(
                                "empty field name \"{{}}\" at character {} (write \"{{{{\" for a literal \"{{\")",
                                at(i)
                            )));
                        }
                        None => {
                            return Err(TemplateError(format!(
                                "unclosed \"{{\" at character {} (write \"{{{{\" for a literal \"{{\")",
                                at(i)
                            )));
                        }
                        Some(_) => {
                            let c = src[end..].chars().next().unwrap_or_default();
                            return Err(TemplateError(format!(
                                "invalid character {c:?} in field name at character {} (names are letters, digits and _; write \"{{{{\" for a literal \"{{\")",
                                at(end)
                            )));
                        }
                    }
                }
                (b'}', _) => {
                    return Err(TemplateError(format!(
                        "unmatched \"}}\" at character {} (write \"}}}}\" for a literal \"}}\")",
                        at(i)
                    )));
                }
                _ => {
                    let run = src[i..].find(['{', '}']).unwrap_or(src.len() - i);
                    literal.push_str(&src[i..i + run]);
                    i += run;
                }
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template { pieces })
    }

    /// Appends the rendered template to `out`.
    pub fn render_into(&self, msg: &Message<'_>, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Field(name) => out.push_str(msg.get(name).unwrap_or("")),
            }
        }
    }

    /// Field names used by the template (for `check`).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Upper bound of the rendered length when no field is used, else `None` (for `check`).
    pub fn fixed_len(&self) -> Option<usize> {
        self.pieces.iter().try_fold(0, |len, p| match p {
            Piece::Literal(s) => Some(len + s.len()),
            Piece::Field(_) => None,
        })
    }

    /// Bytes of the literal pieces alone: a lower bound of the rendered length (for `check`).
    pub fn literal_len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(s) => s.len(),
                Piece::Field(_) => 0,
            })
            .sum()
    }

    /// True for the empty template (`""`), which always renders empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

/// The template as it would be written in the config (`{Field}`, literal braces doubled).
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => f.write_str(&s.replace('{', "{{").replace('}', "}}"))?,
                Piece::Field(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl Conditions {
    /// True when every present condition holds for `msg`.
    ///
    /// A condition on a field the message lacks never holds (so `content` never matches an
    /// event); `event_key = ""` does match an empty `<EventKey>`.
    pub fn matches(&self, msg: &Message<'_>) -> bool {
        fn check(cond: &Option<String>, value: Option<&str>, test: fn(&str, &str) -> bool) -> bool {
            match cond {
                None => true,
                Some(want) => value.is_some_and(|v| test(v, want)),
            }
        }
        check(&self.msg_type, msg.get("MsgType"), |v, w| v == w)
            && check(&self.event, msg.get("Event"), |v, w| {
                v.eq_ignore_ascii_case(w)
            })
            && check(&self.event_key, msg.get("EventKey"), |v, w| v == w)
            && self.matches_content(msg)
            && self
                .fields
                .iter()
                .all(|(name, want)| msg.get(name) == Some(want.as_str()))
    }

    fn matches_content(&self, msg: &Message<'_>) -> bool {
        if self.content.is_none() && self.contains.is_none() && self.prefix.is_none() {
            return true;
        }
        // Content belongs to a typed user message: a body without MsgType never matches.
        let Some(content) = msg.get("Content").filter(|_| !msg.msg_type().is_empty()) else {
            return false;
        };
        self.content.as_ref().is_none_or(|w| content == w)
            && self
                .contains
                .as_ref()
                .is_none_or(|w| content.contains(w.as_str()))
            && self
                .prefix
                .as_ref()
                .is_none_or(|w| content.starts_with(w.as_str()))
    }
}

/// The first rule in `rules` whose conditions match `msg`.
pub fn find_rule<'r>(rules: &'r [Rule], msg: &Message<'_>) -> Option<&'r Rule> {
    rules.iter().find(|r| r.conditions.matches(msg))
}

impl ReplyTemplate {
    /// Renders the reply XML for `msg` into `out` (appending), each template rendered into
    /// `scratch` (reused). `limits.max_articles` is chosen by the caller.
    pub fn render(
        &self,
        msg: &Message<'_>,
        envelope: &Envelope<'_>,
        limits: &Limits,
        scratch: &mut String,
        out: &mut Vec<u8>,
    ) {
        reply::render_with(self, envelope, limits, scratch, out, |t, text| {
            t.render_into(msg, text)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::message::Node;

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.to_string())
    }
    fn field(s: &str) -> Piece {
        Piece::Field(s.to_string())
    }

    /// A flat message from (name, value) pairs, all at depth 0.
    fn msg<'a>(fields: &[(&'a str, &'a str)]) -> Message<'a> {
        let nodes = fields
            .iter()
            .map(|&(name, value)| Node {
                name,
                value: Some(value.into()),
                depth: 0,
            })
            .collect();
        Message::from_nodes(nodes)
    }

    #[test]
    fn template_parse_ok() {
        let cases: &[(&str, Vec<Piece>)] = &[
            ("", vec![]),
            ("plain text", vec![lit("plain text")]),
            ("{Content}", vec![field("Content")]),
            (
                "You said: {Content}",
                vec![lit("You said: "), field("Content")],
            ),
            ("{A}{B_2}", vec![field("A"), field("B_2")]),
            ("a{{b}}c", vec![lit("a{b}c")]),
            ("{{Content}}", vec![lit("{Content}")]),
            ("{{{Content}}}", vec![lit("{"), field("Content"), lit("}")]),
            ("x{{}}y{Z}", vec![lit("x{}y"), field("Z")]),
            (
                "中文{FromUserName}！",
                vec![lit("中文"), field("FromUserName"), lit("！")],
            ),
            ("{_}", vec![field("_")]),
        ];
        for (src, pieces) in cases {
            let t = Template::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(&t.pieces, pieces, "{src:?}");
        }
    }

    #[test]
    fn template_parse_errors() {
        let cases = [
            (
                "{Con tent",
                "invalid character ' ' in field name at character 5",
            ),
            ("{Content", "unclosed \"{\" at character 1"),
            ("ab{", "unclosed \"{\" at character 3"),
            ("中{", "unclosed \"{\" at character 2"),
            ("{}", "empty field name \"{}\" at character 1"),
            (
                "{a-b}",
                "invalid character '-' in field name at character 3",
            ),
            (
                "{中}",
                "invalid character '中' in field name at character 2",
            ),
            ("{{a}", "unmatched \"}\" at character 4"),
            ("a } b", "unmatched \"}\" at character 3"),
            (
                "{a{b}}",
                "invalid character '{' in field name at character 3",
            ),
        ];
        for (src, want) in cases {
            match Template::parse(src) {
                Ok(t) => panic!("{src:?} parsed as {t:?}"),
                Err(e) => assert!(e.0.starts_with(want), "{src:?}: {e}"),
            }
        }
    }

    /// Every string of up to 6 characters from a brace-heavy alphabet: no panic, and a
    /// template without fields renders to its `fixed_len`.
    #[test]
    fn template_parse_never_panics() {
        const ALPHABET: [char; 5] = ['{', '}', 'a', ' ', '中'];
        let mut src = String::new();
        for len in 0..=6u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                src.clear();
                for _ in 0..len {
                    src.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                if let Ok(t) = Template::parse(&src) {
                    if let Some(len) = t.fixed_len() {
                        let mut out = String::new();
                        t.render_into(&msg(&[]), &mut out);
                        assert_eq!(out.len(), len, "{src:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn template_fixed_len_and_fields() {
        let cases: &[(&str, Option<usize>, &[&str])] = &[
            ("", Some(0), &[]),
            ("abc", Some(3), &[]),
            ("a{{b}}", Some(4), &[]),
            ("中文", Some(6), &[]),
            ("x{Content}", None, &["Content"]),
            ("{A}-{B}-{A}", None, &["A", "B", "A"]),
        ];
        for &(src, len, fields) in cases {
            let t = Template::parse(src).unwrap();
            assert_eq!(t.fixed_len(), len, "{src:?}");
            assert_eq!(t.fields().collect::<Vec<_>>(), fields, "{src:?}");
            assert_eq!(t.is_empty(), src.is_empty(), "{src:?}");
        }
    }

    #[test]
    fn render_literal_only() {
        let mut out = String::from("keep:");
        Template::parse("a{{b}}c")
            .unwrap()
            .render_into(&msg(&[]), &mut out);
        assert_eq!(out, "keep:a{b}c");
    }

    #[test]

    fn render_fields() {
        let m = msg(&[
            ("ToUserName", "gh_account"),
            ("FromUserName", "oUser"),
            ("MsgType", "text"),
            ("Content", "{Content}{{x}} ]]> {FromUserName}"),
        ]);
        let cases = [
            (
                "You said: {Content}",
                "You said: {Content}{{x}} ]]> {FromUserName}",
            ),
            ("{FromUserName}/{ToUserName}", "oUser/gh_account"),
            ("[{Missing}]", "[]"),
            (
                "{{Content}} = {Content}",
                "{Content} = {Content}{{x}} ]]> {FromUserName}",
            ),
            ("{MsgType}{MsgType}", "texttext"),
            ("", ""),
        ];
        for (src, want) in cases {
            let mut out = String::new();
            Template::parse(src).unwrap().render_into(&m, &mut out);
            assert_eq!(out, want, "{src:?}");
        }
    }

    #[test]

    fn render_nested_field() {
        let m = Message::from_nodes(vec![
            Node {
                name: "MsgType",
                value: Some("event".into()),
                depth: 0,
            },
            Node {
                name: "ScanCodeInfo",
                value: None,
                depth: 0,
            },
            Node {
                name: "ScanType",
                value: Some("qrcode".into()),
                depth: 1,
            },
            Node {
                name: "ScanResult",
                value: Some("https://x".into()),
                depth: 1,
            },
        ]);
        let mut out = String::new();
        Template::parse("{ScanType}: {ScanResult}")
            .unwrap()
            .render_into(&m, &mut out);
        assert_eq!(out, "qrcode: https://x");
    }

    fn cond(f: impl FnOnce(&mut Conditions)) -> Conditions {
        let mut c = Conditions::default();
        f(&mut c);
        c
    }
    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]

    fn conditions_table() {
        let text = msg(&[("MsgType", "text"), ("Content", "echo hello price")]);
        let empty_text = msg(&[("MsgType", "text"), ("Content", "")]);
        let subscribe = msg(&[
            ("MsgType", "event"),
            ("Event", "subscribe"),
            ("EventKey", ""),
        ]);
        let click = msg(&[
            ("MsgType", "event"),
            ("Event", "CLICK"),
            ("EventKey", "NEWS"),
            ("MenuId", "7"),
        ]);
        let image = msg(&[("MsgType", "image"), ("MediaId", "m1")]);
        let scan = Message::from_nodes(vec![
            Node {
                name: "MsgType",
                value: Some("event".into()),
                depth: 0,
            },
            Node {
                name: "Event",
                value: Some("scancode_push".into()),
                depth: 0,
            },
            Node {
                name: "ScanCodeInfo",
                value: None,
                depth: 0,
            },
            Node {
                name: "ScanType",
                value: Some("qrcode".into()),
                depth: 1,
            },
        ]);
        let all = [&text, &empty_text, &subscribe, &click, &image, &scan];

        // Each condition set, and which of `all` it matches.
        let cases: Vec<(&str, Conditions, [bool; 6])> = vec![
            ("none (fallback)", Conditions::default(), [true; 6]),
            (
                "msg_type",
                cond(|c| c.msg_type = s("text")),
                [true, true, false, false, false, false],
            ),
            (
                "msg_type is exact",
                cond(|c| c.msg_type = s("Text")),
                [false; 6],
            ),
            (
                "event",
                cond(|c| c.event = s("subscribe")),
                [false, false, true, false, false, false],
            ),
            (
                "event ignores case",
                cond(|c| c.event = s("click")),
                [false, false, false, true, false, false],
            ),
            (
                "event ignores case 2",
                cond(|c| c.event = s("SUBSCRIBE")),
                [false, false, true, false, false, false],
            ),
            (
                "event_key",
                cond(|c| c.event_key = s("NEWS")),
                [false, false, false, true, false, false],
            ),
            (
                "event_key is exact",
                cond(|c| c.event_key = s("news")),
                [false; 6],
            ),
            (
                "event_key empty",
                cond(|c| c.event_key = s("")),
                [false, false, true, false, false, false],
            ),
            (
                "content exact",
                cond(|c| c.content = s("echo hello price")),
                [true, false, false, false, false, false],
            ),
            (
                "content not substring",
                cond(|c| c.content = s("echo")),
                [false; 6],
            ),
            (
                "content empty",
                cond(|c| c.content = s("")),
                [false, true, false, false, false, false],
            ),
            (
                "contains",
                cond(|c| c.contains = s("price")),
                [true, false, false, false, false, false],
            ),
            (
                "contains empty needs Content",
                cond(|c| c.contains = s("")),
                [true, true, false, false, false, false],
            ),
            (
                "prefix",
                cond(|c| c.prefix = s("echo ")),
                [true, false, false, false, false, false],
            ),
            (
                "prefix not suffix",
                cond(|c| c.prefix = s("price")),
                [false; 6],
            ),
            (
                "fields",
                cond(|c| c.fields = vec![("MediaId".into(), "m1".into())]),
                [false, false, false, false, true, false],
            ),
            (
                "fields absent never match",
                cond(|c| c.fields = vec![("MediaId".into(), "".into())]),
                [false; 6],
            ),
            (
                "fields nested",
                cond(|c| c.fields = vec![("ScanType".into(), "qrcode".into())]),
                [false, false, false, false, false, true],
            ),
            (
                "fields all must hold",
                cond(|c| {
                    c.fields = vec![
                        ("EventKey".into(), "NEWS".into()),
                        ("MenuId".into(), "8".into()),
                    ]
                }),
                [false; 6],
            ),
            (
                "msg_type + event + event_key",
                cond(|c| {
                    c.msg_type = s("event");
                    c.event = s("CLICK");
                    c.event_key = s("NEWS");
                }),
                [false, false, false, true, false, false],
            ),
            (
                "msg_type + prefix + contains",
                cond(|c| {
                    c.msg_type = s("text");
                    c.prefix = s("echo");
                    c.contains = s("hello");
                }),
                [true, false, false, false, false, false],
            ),
            (
                "combination fails on one",
                cond(|c| {
                    c.msg_type = s("text");
                    c.prefix = s("echo");
                    c.contains = s("bye");
                }),
                [false; 6],
            ),
            (
                "event on a message",
                cond(|c| c.msg_type = s("event")),
                [false, false, true, true, false, true],
            ),
        ];
        for (name, c, want) in &cases {
            for (i, m) in all.iter().enumerate() {
                assert_eq!(c.matches(m), want[i], "{name}: message {i}");
            }
        }
    }

    fn rule(name: &str, conditions: Conditions) -> Rule {
        Rule {
            name: name.to_string(),
            line: 1,
            conditions,
            action: Action::NoReply,
        }
    }

    #[test]

    fn first_match_wins() {
        let rules = [
            rule("welcome", cond(|c| c.event = s("subscribe"))),
            rule("help", cond(|c| c.content = s("help"))),
            rule("echo", cond(|c| c.msg_type = s("text"))),
            rule("fallback", Conditions::default()),
            rule("never", Conditions::default()),
        ];
        let cases = [
            (msg(&[("MsgType", "text"), ("Content", "help")]), "help"),
            (msg(&[("MsgType", "text"), ("Content", "hi")]), "echo"),
            (
                msg(&[("MsgType", "event"), ("Event", "subscribe")]),
                "welcome",
            ),
            (msg(&[("MsgType", "voice")]), "fallback"),
            (msg(&[]), "fallback"),
        ];
        for (m, want) in &cases {
            assert_eq!(find_rule(&rules, m).map(|r| r.name.as_str()), Some(*want));
        }
        assert!(find_rule(&rules[..3], &msg(&[("MsgType", "image")])).is_none());
        assert!(find_rule(&[], &msg(&[("MsgType", "text")])).is_none());
    }

    /// Issue 11, finding 10: `Content` alone does not make a user message.
    #[test]
    fn content_rules_need_a_msg_type() {
        for c in [
            cond(|c| c.content = s("help")),
            cond(|c| c.contains = s("el")),
            cond(|c| c.prefix = s("he")),
        ] {
            assert!(c.matches(&msg(&[("MsgType", "text"), ("Content", "help")])));
            assert!(!c.matches(&msg(&[("Content", "help")])));
            assert!(!c.matches(&msg(&[("MsgType", ""), ("Content", "help")])));
        }
    }

    fn envelope() -> Envelope<'static> {
        Envelope {
            to_user: "oUser",
            from_user: "gh_account",
            create_time: 1_700_000_000,
        }
    }

    fn render(reply: &ReplyTemplate, m: &Message<'_>, limits: &Limits) -> String {
        let mut scratch = String::from("stale");
        let mut out = b"prefix|".to_vec();
        reply.render(m, &envelope(), limits, &mut scratch, &mut out);
        let out = String::from_utf8(out).unwrap();
        out.strip_prefix("prefix|").unwrap().to_string()
    }

    fn t(src: &str) -> Template {
        Template::parse(src).unwrap()
    }

    #[test]

    fn reply_text_renders_through_cdata() {
        let m = msg(&[("MsgType", "text"), ("Content", "a]]><x/>{Content}")]);
        let reply = ReplyTemplate::Text {
            content: t("You said: {Content}"),
        };
        let xml = render(&reply, &m, &Limits::default());
        assert!(xml.starts_with("<xml>") && xml.ends_with("</xml>"), "{xml}");
        assert!(
            xml.contains("<ToUserName><![CDATA[oUser]]></ToUserName>"),
            "{xml}"
        );
        assert!(
            xml.contains("<FromUserName><![CDATA[gh_account]]></FromUserName>"),
            "{xml}"
        );
        assert!(xml.contains("<MsgType><![CDATA[text]]></MsgType>"), "{xml}");
        assert!(
            xml.contains("<Content><![CDATA[You said: a]]]]><![CDATA[><x/>{Content}]]></Content>"),
            "{xml}"
        );
        assert!(!xml.contains("<x/>]]"), "{xml}");
    }

    #[test]

    fn reply_every_kind() {
        let m = msg(&[("MsgType", "image"), ("MediaId", "m1"), ("Title", "T")]);
        let cases: Vec<(ReplyTemplate, &[&str])> = vec![
            (
                ReplyTemplate::Image {
                    media_id: t("{MediaId}"),
                },
                &[
                    "<MsgType><![CDATA[image]]>",
                    "<Image>",
                    "<MediaId><![CDATA[m1]]></MediaId>",
                ],
            ),
            (
                ReplyTemplate::Voice {
                    media_id: t("v{MediaId}"),
                },
                &[
                    "<MsgType><![CDATA[voice]]>",
                    "<Voice>",
                    "<MediaId><![CDATA[vm1]]></MediaId>",
                ],
            ),
            (
                ReplyTemplate::Video {
                    media_id: t("{MediaId}"),
                    title: t("{Title}!"),
                    description: t("d"),
                },
                &[
                    "<MsgType><![CDATA[video]]>",
                    "<MediaId><![CDATA[m1]]></MediaId>",
                    "<Title><![CDATA[T!]]></Title>",
                    "<Description><![CDATA[d]]></Description>",
                ],
            ),
            (
                ReplyTemplate::Music {
                    title: t("t"),
                    description: t("d"),
                    music_url: t("u"),
                    hq_music_url: t("hq"),
                    thumb_media_id: t("{MediaId}"),
                },
                &[
                    "<MsgType><![CDATA[music]]>",
                    "<MusicUrl><![CDATA[u]]></MusicUrl>",
                    "<HQMusicUrl><![CDATA[hq]]></HQMusicUrl>",
                    "<ThumbMediaId><![CDATA[m1]]></ThumbMediaId>",
                ],
            ),
            (
                ReplyTemplate::TransferCustomerService {
                    kf_account: Some(t("kf@{Title}")),
                },
                &[
                    "<MsgType><![CDATA[transfer_customer_service]]>",
                    "<KfAccount><![CDATA[kf@T]]></KfAccount>",
                ],
            ),
        ];
        for (reply, wants) in &cases {
            let xml = render(reply, &m, &Limits::default());
            for want in *wants {
                assert!(xml.contains(want), "{reply:?}: missing {want} in {xml}");
            }
        }
    }

    #[test]

    fn reply_news_respects_max_articles() {
        let article = |n: &str| ArticleTemplate {
            title: t(&format!("{n} {{Event}}")),
            description: t("d"),
            pic_url: t("p"),
            url: t("u"),
        };
        let articles: Vec<_> = ["1", "2", "3", "4", "5", "6", "7", "8"].map(article).into();
        let reply = ReplyTemplate::News { articles };
        let m = msg(&[("MsgType", "event"), ("Event", "CLICK")]);
        for (max, count) in [(1, 1), (3, 3), (8, 8), (20, 8)] {
            let limits = Limits {
                text_max_bytes: 2048,
                max_articles: max,
            };
            let xml = render(&reply, &m, &limits);
            assert!(
                xml.contains(&format!("<ArticleCount>{count}</ArticleCount>")),
                "{xml}"
            );
            assert_eq!(xml.matches("<item>").count(), count, "{xml}");
            assert!(xml.contains("<Title><![CDATA[1 CLICK]]></Title>"), "{xml}");
        }
    }

    #[test]

    fn reply_reuses_scratch() {
        let m = msg(&[("MsgType", "text"), ("Content", "hi")]);
        let reply = ReplyTemplate::Text {
            content: t("{Content}"),
        };
        let mut scratch = String::with_capacity(64);
        let mut out = Vec::new();
        reply.render(&m, &envelope(), &Limits::default(), &mut scratch, &mut out);
        reply.render(&m, &envelope(), &Limits::default(), &mut scratch, &mut out);
        assert_eq!(scratch, "hi");
        assert_eq!(
            String::from_utf8(out)
                .unwrap()
                .matches("<Content><![CDATA[hi]]></Content>")
                .count(),
            2
        );
    }
}
