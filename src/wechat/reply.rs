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
    Text {
        content: &'a str,
    },
    Image {
        media_id: &'a str,
    },
    Voice {
        media_id: &'a str,
    },
    Video {
        media_id: &'a str,
        title: &'a str,
        description: &'a str,
    },
    Music {
        title: &'a str,
        description: &'a str,
        music_url: &'a str,
        hq_music_url: &'a str,
        thumb_media_id: &'a str,
    },
    News {
        articles: &'a [Article<'a>],
    },
    /// Hands the conversation to human agents; optional `TransInfo/KfAccount`.
    TransferCustomerService {
        kf_account: Option<&'a str>,
    },
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
        Limits {
            text_max_bytes: DEFAULT_TEXT_MAX_BYTES,
            max_articles: MAX_ARTICLES_FOR_MESSAGE,
        }
    }
}

/// Appends the reply XML (`<xml>…</xml>`, nothing before or after) to `out`.
pub fn render(reply: &Reply<'_>, envelope: &Envelope<'_>, limits: &Limits, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<xml>");
    cdata_field(out, "ToUserName", envelope.to_user);
    cdata_field(out, "FromUserName", envelope.from_user);
    out.extend_from_slice(b"<CreateTime>");
    write_u64(out, envelope.create_time);
    out.extend_from_slice(b"</CreateTime>");
    match reply {
        Reply::Text { content } => {
            msg_type(out, "text");
            let content = truncate_filtered(content, limits.text_max_bytes);
            cdata_field(out, "Content", content);
        }
        Reply::Image { media_id } => {
            msg_type(out, "image");
            out.extend_from_slice(b"<Image>");
            cdata_field(out, "MediaId", media_id);
            out.extend_from_slice(b"</Image>");
        }
        Reply::Voice { media_id } => {
            msg_type(out, "voice");
            out.extend_from_slice(b"<Voice>");
            cdata_field(out, "MediaId", media_id);
            out.extend_from_slice(b"</Voice>");
        }
        Reply::Video {
            media_id,
            title,
            description,
        } => {
            msg_type(out, "video");
            out.extend_from_slice(b"<Video>");
            cdata_field(out, "MediaId", media_id);
            cdata_field(out, "Title", title);
            cdata_field(out, "Description", description);
            out.extend_from_slice(b"</Video>");
        }
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => {
            msg_type(out, "music");
            out.extend_from_slice(b"<Music>");
            cdata_field(out, "Title", title);
            cdata_field(out, "Description", description);
            cdata_field(out, "MusicUrl", music_url);
            cdata_field(out, "HQMusicUrl", hq_music_url);
            cdata_field(out, "ThumbMediaId", thumb_media_id);
            out.extend_from_slice(b"</Music>");
        }
        Reply::News { articles } => {
            msg_type(out, "news");
            let articles = articles.get(..limits.max_articles).unwrap_or(articles);
            out.extend_from_slice(b"<ArticleCount>");
            write_u64(out, articles.len() as u64);
            out.extend_from_slice(b"</ArticleCount><Articles>");
            for a in articles {
                out.extend_from_slice(b"<item>");
                cdata_field(out, "Title", a.title);
                cdata_field(out, "Description", a.description);
                cdata_field(out, "PicUrl", a.pic_url);
                cdata_field(out, "Url", a.url);
                out.extend_from_slice(b"</item>");
            }
            out.extend_from_slice(b"</Articles>");
        }
        Reply::TransferCustomerService { kf_account } => {
            msg_type(out, "transfer_customer_service");
            if let Some(kf) = kf_account {
                out.extend_from_slice(b"<TransInfo>");
                cdata_field(out, "KfAccount", kf);
                out.extend_from_slice(b"</TransInfo>");
            }
        }
    }
    out.extend_from_slice(b"</xml>");
}

/// Appends `<![CDATA[value]]>` to `out`, splitting `]]>` and dropping forbidden characters.
pub fn write_cdata(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(b"<![CDATA[");
    // Start of the current CDATA section's content in `out`: a `]]>` is looked for in what was
    // written, so a dropped character between `]]` and `>` cannot reassemble one.
    let mut section = out.len();
    let bytes = value.as_bytes();
    let mut run = 0; // start of the pending run of bytes to copy as they are
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        let skip = match c {
            b'>' => {
                out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
                run = i;
                if out.get(section..).is_some_and(|s| s.ends_with(b"]]")) {
                    out.extend_from_slice(b"]]><![CDATA[");
                    section = out.len();
                }
                0
            }
            c if is_forbidden_ascii(c) => 1,
            // U+FFFE and U+FFFF are EF BF BE / EF BF BF.
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                3
            }
            _ => 0,
        };
        if skip > 0 {
            out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
            run = i + skip;
            i += skip;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
    out.extend_from_slice(b"]]>");
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// C0 controls XML 1.0 forbids (all but tab, LF, CR).
fn is_forbidden_ascii(c: u8) -> bool {
    matches!(c, 0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F)
}

/// Characters [`write_cdata`] drops.
fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// The longest prefix of `s` whose kept characters (after dropping forbidden ones) fit in `max`
/// bytes, so the limit counts what the user will see, not what gets filtered out.
fn truncate_filtered(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut kept = 0;
    for (i, c) in s.char_indices() {
        if is_forbidden(c) {
            continue;
        }
        kept += c.len_utf8();
        if kept > max {
            return s.get(..i).unwrap_or_default();
        }
    }
    s
}

/// `<name><![CDATA[value]]></name>`.
fn cdata_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    write_cdata(out, value);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn msg_type(out: &mut Vec<u8>, t: &str) {
    cdata_field(out, "MsgType", t);
}

/// Decimal digits of `n`, without going through `fmt`.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}
