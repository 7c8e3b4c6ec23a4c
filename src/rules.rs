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
use crate::wechat::reply::{self, Article, Envelope, Limits, Reply};
use std::ops::Range;

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
    Text {
        content: Template,
    },
    Image {
        media_id: Template,
    },
    Voice {
        media_id: Template,
    },
    Video {
        media_id: Template,
        title: Template,
        description: Template,
    },
    Music {
        title: Template,
        description: Template,
        music_url: Template,
        hq_music_url: Template,
        thumb_media_id: Template,
    },
    News {
        articles: Vec<ArticleTemplate>,
    },
    TransferCustomerService {
        kf_account: Option<Template>,
    },
}

/// Template syntax error (unclosed `{`, empty or invalid field name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TemplateError {}

/// Most articles a news reply renders, whatever `limits.max_articles` says (WeChat's maximum).
const MAX_ARTICLES: usize = reply::MAX_ARTICLES_FOR_EVENT;

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

    /// True for the empty template (`""`), which always renders empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
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
        let Some(content) = msg.get("Content") else {
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

/// Renders `t` at the end of `scratch` and returns where it landed.
fn put(scratch: &mut String, t: &Template, msg: &Message<'_>) -> Range<usize> {
    let start = scratch.len();
    t.render_into(msg, scratch);
    start..scratch.len()
}

/// The rendered value at `r` (ranges come from [`put`], so always in bounds).
fn at<'s>(scratch: &'s str, r: &Range<usize>) -> &'s str {
    scratch.get(r.clone()).unwrap_or("")
}

impl ReplyTemplate {
    /// Renders the reply XML for `msg` into `out` (appending), using `scratch` for rendered
    /// values (cleared and reused). `limits.max_articles` is chosen by the caller.
    ///
    /// All values are rendered into the one `scratch` string first and then borrowed by range,
    /// so a reply costs no allocation once `scratch` and `out` have grown.
    pub fn render(
        &self,
        msg: &Message<'_>,
        envelope: &Envelope<'_>,
        limits: &Limits,
        scratch: &mut String,
        out: &mut Vec<u8>,
    ) {
        scratch.clear();
        let s = scratch;
        match self {
            ReplyTemplate::Text { content } => {
                let r = put(s, content, msg);
                let reply = Reply::Text { content: at(s, &r) };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::Image { media_id } => {
                let r = put(s, media_id, msg);
                let reply = Reply::Image {
                    media_id: at(s, &r),
                };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::Voice { media_id } => {
                let r = put(s, media_id, msg);
                let reply = Reply::Voice {
                    media_id: at(s, &r),
                };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::Video {
                media_id,
                title,
                description,
            } => {
                let r = [
                    put(s, media_id, msg),
                    put(s, title, msg),
                    put(s, description, msg),
                ];
                let reply = Reply::Video {
                    media_id: at(s, &r[0]),
                    title: at(s, &r[1]),
                    description: at(s, &r[2]),
                };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => {
                let r = [
                    put(s, title, msg),
                    put(s, description, msg),
                    put(s, music_url, msg),
                    put(s, hq_music_url, msg),
                    put(s, thumb_media_id, msg),
                ];
                let reply = Reply::Music {
                    title: at(s, &r[0]),
                    description: at(s, &r[1]),
                    music_url: at(s, &r[2]),
                    hq_music_url: at(s, &r[3]),
                    thumb_media_id: at(s, &r[4]),
                };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::News { articles } => {
                let n = articles.len().min(limits.max_articles).min(MAX_ARTICLES);
                let mut ranges: [[Range<usize>; 4]; MAX_ARTICLES] = Default::default();
                for (r, a) in ranges.iter_mut().zip(&articles[..n]) {
                    *r = [
                        put(s, &a.title, msg),
                        put(s, &a.description, msg),
                        put(s, &a.pic_url, msg),
                        put(s, &a.url, msg),
                    ];
                }
                let mut rendered = [Article::default(); MAX_ARTICLES];
                for (article, r) in rendered.iter_mut().zip(&ranges[..n]) {
                    *article = Article {
                        title: at(s, &r[0]),
                        description: at(s, &r[1]),
                        pic_url: at(s, &r[2]),
                        url: at(s, &r[3]),
                    };
                }
                let reply = Reply::News {
                    articles: &rendered[..n],
                };
                reply::render(&reply, envelope, limits, out);
            }
            ReplyTemplate::TransferCustomerService { kf_account } => {
                let r = kf_account.as_ref().map(|k| put(s, k, msg));
                let reply = Reply::TransferCustomerService {
                    kf_account: r.as_ref().map(|r| at(s, r)),
                };
                reply::render(&reply, envelope, limits, out);
            }
        }
    }
}
