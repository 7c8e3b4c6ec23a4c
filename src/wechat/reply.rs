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
pub struct Article<S> {
    pub title: S,
    pub description: S,
    pub pic_url: S,
    pub url: S,
}

/// A passive reply. Its values are `S`: templates in the config (`Reply<Template>`), owned
/// strings from a backend (`Reply<String>`), or borrowed text (`Reply<&str>`); all are
/// rendered by [`render_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<S> {
    Text {
        content: S,
    },
    Image {
        media_id: S,
    },
    Voice {
        media_id: S,
    },
    Video {
        media_id: S,
        title: S,
        description: S,
    },
    Music {
        title: S,
        description: S,
        music_url: S,
        hq_music_url: S,
        thumb_media_id: S,
    },
    News {
        articles: Vec<Article<S>>,
    },
    /// Hands the conversation to human agents; optional `TransInfo/KfAccount`.
    TransferCustomerService {
        kf_account: Option<S>,
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

/// Appends the reply XML (`<xml>…</xml>`, nothing before or after) to `out`, for a reply
/// whose values are text.
pub fn render<S: AsRef<str>>(
    reply: &Reply<S>,
    envelope: &Envelope<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) {
    let mut scratch = String::new();
    render_with(reply, envelope, limits, &mut scratch, out, |s, text| {
        text.push_str(s.as_ref())
    });
}

/// Appends the reply XML to `out`; `value` appends the text of each value to the string it is
/// given (`scratch`, cleared before each value and reused, so a reply costs no allocation once
/// `scratch` and `out` have grown). The one place every reply is rendered.
pub fn render_with<S>(
    reply: &Reply<S>,
    envelope: &Envelope<'_>,
    limits: &Limits,
    scratch: &mut String,
    out: &mut Vec<u8>,
    mut value: impl FnMut(&S, &mut String),
) {
    // The text of one value, in `scratch`.
    macro_rules! text_of {
        ($v:expr) => {{
            scratch.clear();
            value($v, scratch);
            scratch.as_str()
        }};
    }
    out.extend_from_slice(b"<xml>");
    cdata_field(out, "ToUserName", envelope.to_user);
    cdata_field(out, "FromUserName", envelope.from_user);
    out.extend_from_slice(b"<CreateTime>");
    write_u64(out, envelope.create_time);
    out.extend_from_slice(b"</CreateTime>");
    match reply {
        Reply::Text { content } => {
            msg_type(out, "text");
            let content = truncate_filtered(text_of!(content), limits.text_max_bytes);
            cdata_field(out, "Content", content);
        }
        Reply::Image { media_id } => {
            msg_type(out, "image");
            out.extend_from_slice(b"<Image>");
            cdata_field(out, "MediaId", text_of!(media_id));
            out.extend_from_slice(b"</Image>");
        }
        Reply::Voice { media_id } => {
            msg_type(out, "voice");
            out.extend_from_slice(b"<Voice>");
            cdata_field(out, "MediaId", text_of!(media_id));
            out.extend_from_slice(b"</Voice>");
        }
        Reply::Video {
            media_id,
            title,
            description,
        } => {
            msg_type(out, "video");
            out.extend_from_slice(b"<Video>");
            cdata_field(out, "MediaId", text_of!(media_id));
            cdata_field(out, "Title", text_of!(title));
            cdata_field(out, "Description", text_of!(description));
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
            cdata_field(out, "Title", text_of!(title));
            cdata_field(out, "Description", text_of!(description));
            cdata_field(out, "MusicUrl", text_of!(music_url));
            cdata_field(out, "HQMusicUrl", text_of!(hq_music_url));
            cdata_field(out, "ThumbMediaId", text_of!(thumb_media_id));
            out.extend_from_slice(b"</Music>");
        }
        Reply::News { articles } => {
            msg_type(out, "news");
            let n = articles
                .len()
                .min(limits.max_articles)
                .min(MAX_ARTICLES_FOR_EVENT);
            out.extend_from_slice(b"<ArticleCount>");
            write_u64(out, n as u64);
            out.extend_from_slice(b"</ArticleCount><Articles>");
            for a in articles.iter().take(n) {
                out.extend_from_slice(b"<item>");
                cdata_field(out, "Title", text_of!(&a.title));
                cdata_field(out, "Description", text_of!(&a.description));
                cdata_field(out, "PicUrl", text_of!(&a.pic_url));
                cdata_field(out, "Url", text_of!(&a.url));
                out.extend_from_slice(b"</item>");
            }
            out.extend_from_slice(b"</Articles>");
        }
        Reply::TransferCustomerService { kf_account } => {
            msg_type(out, "transfer_customer_service");
            if let Some(kf) = kf_account {
                out.extend_from_slice(b"<TransInfo>");
                cdata_field(out, "KfAccount", text_of!(kf));
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

/// Appends the decimal digits of `n`.
fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::message::Message;

    const ENV: Envelope<'static> = Envelope {
        to_user: "oUser",
        from_user: "gh_account",
        create_time: 1_700_000_000,
    };

    /// A parsed node as (name, value, depth), owned.
    type Flat = (String, Option<String>, u8);

    fn render_str(reply: &Reply<&str>, limits: &Limits) -> String {
        let mut out = b"left alone".to_vec();
        render(reply, &ENV, limits, &mut out);
        assert!(out.starts_with(b"left alone<xml><ToUserName>"));
        String::from_utf8(out.split_off(10)).unwrap()
    }

    fn cdata(value: &str) -> String {
        let mut out = Vec::new();
        write_cdata(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    /// (name, value, depth) of every node after the four common ones.
    fn body(xml: &str) -> Vec<Flat> {
        let m = Message::parse(xml.as_bytes()).unwrap_or_else(|e| panic!("{xml}: {e}"));
        assert_eq!(m.to_user(), "oUser");
        assert_eq!(m.from_user(), "gh_account");
        assert_eq!(m.get("CreateTime"), Some("1700000000"));
        m.nodes()[4..]
            .iter()
            .map(|n| {
                (
                    n.name.to_owned(),
                    n.value.as_ref().map(|v| v.to_string()),
                    n.depth,
                )
            })
            .collect()
    }

    fn leaf(name: &str, value: &str, depth: u8) -> Flat {
        (name.to_owned(), Some(value.to_owned()), depth)
    }

    fn node(name: &str) -> Flat {
        (name.to_owned(), None, 0)
    }

    #[test]
    fn text_exact_bytes() {
        assert_eq!(
            render_str(
                &Reply::Text {
                    content: "你好 <b>&amp;"
                },
                &Limits::default()
            ),
            "<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_account]]></FromUserName>\
             <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[你好 <b>&amp;]]></Content></xml>"
        );
    }

    #[test]
    fn every_reply_type_round_trips() {
        let articles = [
            Article {
                title: "T1",
                description: "D1",
                pic_url: "http://p/1.jpg",
                url: "http://u/1?a=1&b=2",
            },
            Article {
                title: "T2",
                description: "D2",
                pic_url: "http://p/2.jpg",
                url: "http://u/2",
            },
        ];
        let limits = Limits {
            max_articles: MAX_ARTICLES_FOR_EVENT,
            ..Limits::default()
        };
        let cases: Vec<(Reply<&str>, &str, Vec<Flat>)> = vec![
            (
                Reply::Text { content: "hello" },
                "text",
                vec![leaf("Content", "hello", 0)],
            ),
            (
                Reply::Image { media_id: "m1" },
                "image",
                vec![node("Image"), leaf("MediaId", "m1", 1)],
            ),
            (
                Reply::Voice { media_id: "m2" },
                "voice",
                vec![node("Voice"), leaf("MediaId", "m2", 1)],
            ),
            (
                Reply::Video {
                    media_id: "m3",
                    title: "t",
                    description: "d",
                },
                "video",
                vec![
                    node("Video"),
                    leaf("MediaId", "m3", 1),
                    leaf("Title", "t", 1),
                    leaf("Description", "d", 1),
                ],
            ),
            (
                Reply::Music {
                    title: "t",
                    description: "d",
                    music_url: "http://m",
                    hq_music_url: "http://hq",
                    thumb_media_id: "th",
                },
                "music",
                vec![
                    node("Music"),
                    leaf("Title", "t", 1),
                    leaf("Description", "d", 1),
                    leaf("MusicUrl", "http://m", 1),
                    leaf("HQMusicUrl", "http://hq", 1),
                    leaf("ThumbMediaId", "th", 1),
                ],
            ),
            (
                Reply::News {
                    articles: articles.to_vec(),
                },
                "news",
                vec![
                    leaf("ArticleCount", "2", 0),
                    node("Articles"),
                    (String::from("item"), None, 1),
                    leaf("Title", "T1", 2),
                    leaf("Description", "D1", 2),
                    leaf("PicUrl", "http://p/1.jpg", 2),
                    leaf("Url", "http://u/1?a=1&b=2", 2),
                    (String::from("item"), None, 1),
                    leaf("Title", "T2", 2),
                    leaf("Description", "D2", 2),
                    leaf("PicUrl", "http://p/2.jpg", 2),
                    leaf("Url", "http://u/2", 2),
                ],
            ),
            (
                Reply::TransferCustomerService { kf_account: None },
                "transfer_customer_service",
                vec![],
            ),
            (
                Reply::TransferCustomerService {
                    kf_account: Some("test1@test"),
                },
                "transfer_customer_service",
                vec![node("TransInfo"), leaf("KfAccount", "test1@test", 1)],
            ),
        ];
        for (reply, msg_type, want) in cases {
            let xml = render_str(&reply, &limits);
            assert!(xml.ends_with("</xml>"), "{xml}");
            let m = Message::parse(xml.as_bytes()).unwrap();
            assert_eq!(m.msg_type(), msg_type);
            assert_eq!(body(&xml), want, "{xml}");
        }
    }

    #[test]
    fn cdata_injection_comes_back_as_text() {
        let evil = "]]><evil/><![CDATA[x]]>]]]>>";
        let xml = render_str(&Reply::Text { content: evil }, &Limits::default());
        assert!(!xml.contains("]]><evil/>"), "{xml}");
        let m = Message::parse(xml.as_bytes()).unwrap();
        assert_eq!(m.get("Content"), Some(evil));
        assert_eq!(m.get("evil"), None);
        assert_eq!(m.nodes().len(), 5, "no extra element: {:?}", m.nodes());

        assert_eq!(cdata("]]>"), "<![CDATA[]]]]><![CDATA[>]]>");
        assert_eq!(
            cdata("a]]>b]]>"),
            "<![CDATA[a]]]]><![CDATA[>b]]]]><![CDATA[>]]>"
        );
        assert_eq!(cdata("]>]>>"), "<![CDATA[]>]>>]]>");
        assert_eq!(cdata(">"), "<![CDATA[>]]>");
        assert_eq!(cdata(""), "<![CDATA[]]>");
        // A dropped control character must not let `]]` and `>` meet.
        assert_eq!(cdata("]]\u{1}>"), "<![CDATA[]]]]><![CDATA[>]]>");
        assert_eq!(cdata("]\u{1}]\u{2}>"), "<![CDATA[]]]]><![CDATA[>]]>");
    }

    #[test]
    fn forbidden_characters_are_dropped() {
        let all_c0: String = (0u8..0x20).map(char::from).collect();
        assert_eq!(cdata(&all_c0), "<![CDATA[\t\n\r]]>");
        assert_eq!(
            cdata("a\u{FFFE}b\u{FFFF}c\u{FFFD}\u{1d}d\u{7f}"),
            "<![CDATA[abc\u{FFFD}d\u{7f}]]>"
        );
        assert_eq!(
            cdata("\u{EFFF}\u{FEFF}😀"),
            "<![CDATA[\u{EFFF}\u{FEFF}😀]]>"
        );
        let xml = render_str(
            &Reply::News {
                articles: vec![Article {
                    title: "a\u{0}b",
                    description: "\u{1d}",
                    pic_url: "",
                    url: "",
                }],
            },
            &Limits::default(),
        );
        let m = Message::parse(xml.as_bytes()).unwrap();
        assert_eq!(m.get("Title"), Some("ab"));
        assert_eq!(m.get("Description"), Some(""));
    }

    #[test]
    fn text_is_truncated_on_a_char_boundary() {
        let limits = Limits::default();
        let content_of = |content: &str| {
            let xml = render_str(&Reply::Text { content }, &limits);
            let m = Message::parse(xml.as_bytes()).unwrap();
            m.get("Content").unwrap().to_owned()
        };
        // Exactly at the limit: untouched.
        let exact = "a".repeat(2048);
        assert_eq!(content_of(&exact), exact);
        // A 3-byte char straddling the limit is dropped whole, at every offset.
        for pad in 0..4 {
            let s = format!("{}{}", "a".repeat(2046 + pad), "你".repeat(10));
            let got = content_of(&s);
            assert!(got.len() <= 2048 && got.len() > 2044, "{}", got.len());
            assert!(s.starts_with(&got));
        }
        // Emoji (4 bytes): 2048 = 4 * 512, so 512 fit exactly, then with a 1-byte offset 511.
        assert_eq!(content_of(&"😀".repeat(600)), "😀".repeat(512));
        assert_eq!(
            content_of(&format!("a{}", "😀".repeat(600))),
            format!("a{}", "😀".repeat(511))
        );
        // `]]>` splitting is markup, not content: 2048 bytes of `]]>…` survive whole.
        let brackets = "]]>".repeat(700);
        assert_eq!(content_of(&brackets), truncate_utf8(&brackets, 2048));
        // Dropped control characters do not count against the limit.
        let ctrl = format!("{}{}", "\u{1}".repeat(100), "b".repeat(2048));
        assert_eq!(content_of(&ctrl), "b".repeat(2048));
        let small = Limits {
            text_max_bytes: 5,
            ..limits
        };
        let xml = render_str(
            &Reply::Text {
                content: "ab\u{2}cd你",
            },
            &small,
        );
        assert!(xml.contains("<Content><![CDATA[abcd]]></Content>"), "{xml}");
        let zero = Limits {
            text_max_bytes: 0,
            ..limits
        };
        assert!(
            render_str(&Reply::Text { content: "abc" }, &zero)
                .contains("<Content><![CDATA[]]></Content>")
        );
    }

    #[test]
    fn truncate_utf8_cases() {
        assert_eq!(truncate_utf8("", 0), "");
        assert_eq!(truncate_utf8("abc", 0), "");
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("abc", 3), "abc");
        assert_eq!(truncate_utf8("abc", usize::MAX), "abc");
        assert_eq!(truncate_utf8("a你", 1), "a");
        assert_eq!(truncate_utf8("a你", 2), "a");
        assert_eq!(truncate_utf8("a你", 3), "a");
        assert_eq!(truncate_utf8("a你", 4), "a你");
        assert_eq!(truncate_utf8("😀😀", 7), "😀");
        assert_eq!(truncate_utf8("😀", 3), "");
    }

    #[test]
    fn news_article_cap() {
        let a = Article {
            title: "t",
            description: "d",
            pic_url: "p",
            url: "u",
        };
        let ten = [a; 10];
        for (n, max, want) in [
            (10, 1, 1),
            (10, 8, 8),
            (3, 8, 3),
            (1, 1, 1),
            (0, 1, 0),
            (3, 0, 0),
        ] {
            let limits = Limits {
                max_articles: max,
                ..Limits::default()
            };
            let xml = render_str(
                &Reply::News {
                    articles: ten[..n].to_vec(),
                },
                &limits,
            );
            let m = Message::parse(xml.as_bytes()).unwrap();
            let count = want.to_string();
            assert_eq!(m.get("ArticleCount"), Some(count.as_str()), "{xml}");
            assert_eq!(m.nodes().iter().filter(|n| n.name == "item").count(), want);
        }
    }

    #[test]
    fn create_time_digits() {
        for (n, s) in [
            (0u64, "0"),
            (7, "7"),
            (10, "10"),
            (1_700_000_000, "1700000000"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, s.as_bytes());
        }
    }
}
