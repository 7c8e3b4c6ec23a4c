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

use crate::wechat::message::Message;
use crate::wechat::reply::{Envelope, Limits};

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

/// A news article template.
#[derive(Debug, Clone, Default)]
pub struct ArticleTemplate {
    pub title: Template,
    pub description: Template,
    pub pic_url: Template,
    pub url: Template,
}

/// A reply whose values are templates (`reply = { type = "text", content = "…" }`, …).
#[derive(Debug, Clone)]
pub enum ReplyTemplate {
    Text { content: Template },
    Image { media_id: Template },
    Voice { media_id: Template },
    Video { media_id: Template, title: Template, description: Template },
    Music {
        title: Template,
        description: Template,
        music_url: Template,
        hq_music_url: Template,
        thumb_media_id: Template,
    },
    News { articles: Vec<ArticleTemplate> },
    TransferCustomerService { kf_account: Option<Template> },
}

/// Template syntax error (unclosed `{`, empty or invalid field name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl Template {
    /// Parses `{FieldName}` placeholders; field names are `[A-Za-z0-9_]+`.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let _ = (src, &Piece::Literal(String::new()), &Piece::Field(String::new()));
        todo!()
    }

    /// Appends the rendered template to `out`.
    pub fn render_into(&self, msg: &Message<'_>, out: &mut String) {
        let _ = (msg, out);
        todo!()
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
        todo!()
    }
}

impl Conditions {
    /// True when every present condition holds for `msg`.
    pub fn matches(&self, msg: &Message<'_>) -> bool {
        let _ = msg;
        todo!()
    }
}

/// The first rule in `rules` whose conditions match `msg`.
pub fn find_rule<'r>(rules: &'r [Rule], msg: &Message<'_>) -> Option<&'r Rule> {
    rules.iter().find(|r| r.conditions.matches(msg))
}

impl ReplyTemplate {
    /// Renders the reply XML for `msg` into `out` (appending), using `scratch` for rendered
    /// values (cleared and reused). `limits.max_articles` is chosen by the caller.
    pub fn render(
        &self,
        msg: &Message<'_>,
        envelope: &Envelope<'_>,
        limits: &Limits,
        scratch: &mut String,
        out: &mut Vec<u8>,
    ) {
        let _ = (msg, envelope, limits, scratch, out);
        todo!()
    }
}
