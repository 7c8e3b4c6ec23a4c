//! Passive reply XML (PROTOCOL.md §4), written into a caller-owned, reused buffer.
//!
//! Every string value goes through [`write_cdata`]: `]]>` is split as `]]]]><![CDATA[>` so user
//! text can never close the CDATA section, and characters XML 1.0 forbids (C0 controls other than
//! tab/CR/LF, U+FFFE, U+FFFF) are dropped. Numbers are written bare. "No reply" is not a
//! [`Reply`]: callers answer the literal `success` ([`NO_REPLY`]) instead — never an XML with an
//! empty Content, which WeChat shows the user as "该公众号暂时无法提供服务".

/// The body that tells WeChat "no reply".
pub const NO_REPLY: &[u8] = b"success";
/// WeChat's documented limit for a text reply's Content, in bytes.
pub const DEFAULT_TEXT_MAX_BYTES: usize = 2048;
/// Articles WeChat shows for a passive news reply to a user message.
pub const MAX_ARTICLES_FOR_MESSAGE: usize = 1;
/// Articles allowed for a news reply triggered by an event.
pub const MAX_ARTICLES_FOR_EVENT: usize = 8;

/// One news article.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Article<'a> {
    pub title: &'a str,
    pub description: &'a str,
    pub pic_url: &'a str,
    pub url: &'a str,
}

/// A reply, with every value already rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    Text { content: &'a str },
    Image { media_id: &'a str },
    Voice { media_id: &'a str },
    Video { media_id: &'a str, title: &'a str, description: &'a str },
    Music {
        title: &'a str,
        description: &'a str,
        music_url: &'a str,
        hq_music_url: &'a str,
        thumb_media_id: &'a str,
    },
    News { articles: &'a [Article<'a>] },
    /// Hands the conversation to human agents; optional `TransInfo/KfAccount`.
    TransferCustomerService { kf_account: Option<&'a str> },
}

/// Who the reply is from and to, and when. Roles are already swapped by the caller:
/// `to_user` = the incoming FromUserName, `from_user` = the incoming ToUserName.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub to_user: &'a str,
    pub from_user: &'a str,
    pub create_time: u64,
}

/// Limits applied while rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Text Content is cut to the longest prefix of at most this many bytes that ends on a
    /// UTF-8 character boundary (counted after dropping forbidden control characters).
    pub text_max_bytes: usize,
    /// News articles beyond this count are dropped (1 for user messages, 8 for events).
    pub max_articles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { text_max_bytes: DEFAULT_TEXT_MAX_BYTES, max_articles: MAX_ARTICLES_FOR_MESSAGE }
    }
}

/// Appends the reply XML (`<xml>…</xml>`, nothing before or after) to `out`.
pub fn render(reply: &Reply<'_>, envelope: &Envelope<'_>, limits: &Limits, out: &mut Vec<u8>) {
    let _ = (reply, envelope, limits, out);
    todo!()
}

/// Appends `<![CDATA[value]]>` to `out`, splitting `]]>` and dropping forbidden characters.
pub fn write_cdata(out: &mut Vec<u8>, value: &str) {
    let _ = (out, value);
    todo!()
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    let _ = (s, max);
    todo!()
}
