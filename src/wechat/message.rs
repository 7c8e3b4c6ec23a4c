//! Incoming message and event XML (PROTOCOL.md §3), parsed with quick-xml into fields that
//! borrow from the request body where they can.
//!
//! The document is `<xml>` with children; a few events nest one or two more levels
//! (`ScanCodeInfo/ScanType`, `SendPicsInfo/PicList/item/PicMd5Sum`, `SendLocationInfo/…`).
//! Fields are kept as a flat pre-order list of [`Node`]s: a container node (no value) is
//! followed by its children at `depth + 1`. Unknown elements are kept like known ones.
//!
//! Values are the text exactly as sent: not trimmed, line ends not normalised. Whitespace
//! between elements is layout and ignored, and so is any other text mixed in beside child
//! elements (WeChat never sends mixed content). Attributes are ignored.
//!
//! # Security
//! DOCTYPE (and so every entity declaration) is refused; only the five predefined entities and
//! numeric character references are decoded. Counts and depth are capped. Raw control characters
//! inside CDATA (WeChat delivers e.g. `\x1d`) are accepted as they are; the reply writer drops them.

use std::borrow::Cow;

use quick_xml::events::{BytesRef, Event};
use quick_xml::reader::Reader;

/// Most nodes a message may have (a `pic_*` event with many PicList items is the largest real one).
pub const MAX_NODES: usize = 256;
/// Deepest nesting below `<xml>` (0 = direct child). Real messages use at most 3.
pub const MAX_DEPTH: u8 = 4;

/// One element of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    /// Element name, e.g. `Content`.
    pub name: &'a str,
    /// Text (CDATA and/or text, entities decoded) for a leaf; `None` for a container
    /// element that has child elements.
    pub value: Option<Cow<'a, str>>,
    /// 0 for a direct child of `<xml>`.
    pub depth: u8,
}

/// Why a body is not an acceptable message. All map to HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The body declares a DOCTYPE (and so possibly entities): refused outright.
    DocType,
    /// The body is not valid UTF-8.
    InvalidUtf8,
    /// An entity reference other than the five predefined ones or a numeric reference.
    UnknownEntity,
    /// Root element is not `<xml>`, or there is content after it.
    NotXmlRoot,
    /// More than [`MAX_NODES`] elements.
    TooManyNodes,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not well-formed XML (unclosed or mismatched tags, truncated document, bad syntax).
    Malformed,
}

impl ParseError {
    /// A fixed one-line reason, for logs and the 400 body.
    pub fn as_str(&self) -> &'static str {
        match self {
            ParseError::DocType => "message XML declares a DOCTYPE",
            ParseError::InvalidUtf8 => "message body is not UTF-8",
            ParseError::UnknownEntity => {
                "message XML uses an entity other than the predefined ones"
            }
            ParseError::NotXmlRoot => "message root element is not <xml>, or content follows it",
            ParseError::TooManyNodes => "message has too many elements",
            ParseError::TooDeep => "message elements are nested too deeply",
            ParseError::Malformed => "message XML is not well-formed",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::error::Error for ParseError {}

/// A parsed message: the flat node list in document order.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    nodes: Vec<Node<'a>>,
}

impl<'a> Message<'a> {
    /// Parses a message body. Never panics; see [`ParseError`].
    pub fn parse(body: &'a [u8]) -> Result<Message<'a>, ParseError> {
        // Checked up front so the error is named, and so names can be re-sliced from `input`.
        let input = std::str::from_utf8(body).map_err(|_| ParseError::InvalidUtf8)?;
        let mut reader = Reader::from_reader(body);
        let config = reader.config_mut();
        // Values keep their whitespace; whitespace between elements is dropped below.
        config.trim_text(false);
        // End names are matched against our own open-element stack (needed anyway to attach
        // values), so quick-xml's identical check is redundant.
        config.check_end_names = false;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;

        let mut b = Builder::new();
        let mut first = true;
        loop {
            let event = reader.read_event().map_err(map_xml_error)?;
            let is_first = std::mem::replace(&mut first, false);
            match event {
                Event::Start(e) => b.start(reborrow(input, e.name().0)?)?,
                Event::Empty(e) => b.empty(reborrow(input, e.name().0)?)?,
                Event::End(e) => b.end(e.name().0)?,
                Event::Text(t) => b.text(t.into_inner())?,
                Event::CData(t) => b.piece(t.into_inner())?,
                Event::GeneralRef(r) => b.push_char(resolve_ref(&r)?)?,
                Event::DocType(_) => return Err(ParseError::DocType),
                Event::Decl(_) => {
                    // `<?xml …?>` only as the very first thing in the document.
                    if !is_first {
                        return Err(ParseError::Malformed);
                    }
                }
                Event::PI(_) | Event::Comment(_) => {}
                Event::Eof => return b.finish(),
            }
        }
    }

    /// A message from already-parsed nodes (used by tests and by the JSON side of forwarding).
    pub fn from_nodes(nodes: Vec<Node<'a>>) -> Message<'a> {
        Message { nodes }
    }

    /// All nodes in document order.
    pub fn nodes(&self) -> &[Node<'a>] {
        &self.nodes
    }

    /// Value of the first leaf named `name`, preferring a top-level (depth 0) one, then any
    /// depth in document order (so `{ScanResult}` finds the nested field). Case-sensitive.
    pub fn get(&self, name: &str) -> Option<&str> {
        let leaf = |n: &&Node<'a>| n.name == name && n.value.is_some();
        self.nodes
            .iter()
            .filter(|n| n.depth == 0)
            .find(leaf)
            .or_else(|| self.nodes.iter().find(leaf))
            .and_then(|n| n.value.as_deref())
    }

    /// `MsgType`, or "" when absent.
    pub fn msg_type(&self) -> &str {
        self.get("MsgType").unwrap_or("")
    }
    /// `Event`, or "" when absent.
    pub fn event(&self) -> &str {
        self.get("Event").unwrap_or("")
    }
    /// `ToUserName` (the account), or "".
    pub fn to_user(&self) -> &str {
        self.get("ToUserName").unwrap_or("")
    }
    /// `FromUserName` (the user's OpenID), or "".
    pub fn from_user(&self) -> &str {
        self.get("FromUserName").unwrap_or("")
    }
    /// True for `MsgType=event`.
    pub fn is_event(&self) -> bool {
        self.msg_type() == "event"
    }
}

/// Where the parser is relative to the root element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `<xml>`: only whitespace, the declaration, comments and PIs.
    Prolog,
    /// Inside `<xml>`.
    InRoot,
    /// After `</xml>`: only whitespace, comments and PIs.
    Epilog,
}

/// Open elements below `<xml>`: at most one per allowed depth.
const STACK: usize = MAX_DEPTH as usize + 1;

/// Turns the event stream into the flat node list.
struct Builder<'a> {
    nodes: Vec<Node<'a>>,
    phase: Phase,
    /// For each open element below `<xml>`: its index in `nodes` and whether it has children.
    open: [(usize, bool); STACK],
    /// How many entries of `open` are in use.
    depth: usize,
    /// Text collected so far for the innermost open element (while it has no children).
    value: Option<Cow<'a, str>>,
    /// Whether `value` is still meaningful: false in `<xml>` itself and in containers.
    collecting: bool,
}

impl<'a> Builder<'a> {
    fn new() -> Builder<'a> {
        Builder {
            // Enough for every common message without regrowing.
            nodes: Vec::with_capacity(16),
            phase: Phase::Prolog,
            open: [(0, false); STACK],
            depth: 0,
            value: None,
            collecting: false,
        }
    }

    /// Records a new element under the current one; `value` is `Some` for `<Empty/>`.
    fn push(&mut self, name: &'a str, value: Option<Cow<'a, str>>) -> Result<usize, ParseError> {
        match self.phase {
            Phase::InRoot => {}
            Phase::Prolog | Phase::Epilog => return Err(ParseError::NotXmlRoot),
        }
        if self.depth >= STACK {
            return Err(ParseError::TooDeep);
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(ParseError::TooManyNodes);
        }
        if let Some(parent) = self.depth.checked_sub(1).and_then(|i| self.open.get_mut(i)) {
            parent.1 = true;
        }
        // Text seen so far in the parent was indentation (or mixed content): dropped.
        self.value = None;
        self.collecting = false;
        let depth = u8::try_from(self.depth).map_err(|_| ParseError::TooDeep)?;
        self.nodes.push(Node { name, value, depth });
        Ok(self.nodes.len() - 1)
    }

    fn start(&mut self, name: &'a str) -> Result<(), ParseError> {
        if self.phase == Phase::Prolog {
            if name != "xml" {
                return Err(ParseError::NotXmlRoot);
            }
            self.phase = Phase::InRoot;
            return Ok(());
        }
        let index = self.push(name, None)?;
        let slot = self.open.get_mut(self.depth).ok_or(ParseError::TooDeep)?;
        *slot = (index, false);
        self.depth += 1;
        self.collecting = true;
        Ok(())
    }

    fn empty(&mut self, name: &'a str) -> Result<(), ParseError> {
        if self.phase == Phase::Prolog {
            if name != "xml" {
                return Err(ParseError::NotXmlRoot);
            }
            // `<xml/>`: a message with no fields.
            self.phase = Phase::Epilog;
            return Ok(());
        }
        self.push(name, Some(Cow::Borrowed(""))).map(|_| ())
    }

    fn end(&mut self, name: &str) -> Result<(), ParseError> {
        if self.phase != Phase::InRoot {
            return Err(ParseError::Malformed);
        }
        let Some(top) = self.depth.checked_sub(1) else {
            if name != "xml" {
                return Err(ParseError::Malformed);
            }
            self.phase = Phase::Epilog;
            return Ok(());
        };
        let (index, has_children) = *self.open.get(top).ok_or(ParseError::Malformed)?;
        let node = self.nodes.get_mut(index).ok_or(ParseError::Malformed)?;
        if node.name != name {
            return Err(ParseError::Malformed);
        }
        let value = self.value.take();
        if !has_children {
            node.value = Some(value.unwrap_or(Cow::Borrowed("")));
        }
        self.depth = top;
        // Back in a parent that now has children: its further text is not a value.
        self.collecting = false;
        Ok(())
    }

    /// Character data between tags: whitespace between elements is ignored, anything else
    /// outside `<xml>` is an error.
    fn text(&mut self, text: Cow<'a, str>) -> Result<(), ParseError> {
        if !self.collecting
            && text
                .bytes()
                .all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Ok(());
        }
        self.piece(text)
    }

    /// Whether character data here is part of a value; outside `<xml>` it is an error.
    fn collecting(&self) -> Result<bool, ParseError> {
        match self.phase {
            Phase::Prolog | Phase::Epilog => Err(ParseError::NotXmlRoot),
            Phase::InRoot => Ok(self.collecting),
        }
    }

    /// One piece of a value (text or CDATA), appended to the current one. A single piece stays
    /// borrowed; only a value made of several is copied.
    fn piece(&mut self, piece: Cow<'a, str>) -> Result<(), ParseError> {
        if self.collecting()? {
            match &mut self.value {
                None => self.value = Some(piece),
                Some(value) => value.to_mut().push_str(&piece),
            }
        }
        Ok(())
    }

    /// A decoded character reference, appended to the current value.
    fn push_char(&mut self, c: char) -> Result<(), ParseError> {
        if self.collecting()? {
            self.value
                .get_or_insert(Cow::Owned(String::new()))
                .to_mut()
                .push(c);
        }
        Ok(())
    }

    fn finish(self) -> Result<Message<'a>, ParseError> {
        match self.phase {
            Phase::Epilog => Ok(Message { nodes: self.nodes }),
            Phase::InRoot => Err(ParseError::Malformed),
            Phase::Prolog => Err(ParseError::NotXmlRoot),
        }
    }
}

/// `part` (a slice of an event that borrowed from `input`) as a slice of `input` itself, so it
/// can outlive the event. A `part` outside `input` (an event that copied; the slice reader never
/// does) cannot overlap it, so it is reported as `Malformed` rather than mis-sliced.
fn reborrow<'a>(input: &'a str, part: &str) -> Result<&'a str, ParseError> {
    let offset = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    offset
        .checked_add(part.len())
        .and_then(|end| input.get(offset..end))
        .ok_or(ParseError::Malformed)
}

/// Decodes `&name;`: the five predefined entities and numeric references, nothing else.
fn resolve_ref(r: &BytesRef<'_>) -> Result<char, ParseError> {
    Ok(match &**r {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ if r.is_char_ref() => match r.resolve_char_ref() {
            // quick-xml refuses 0, surrogates and values above U+10FFFF.
            Ok(Some(c)) if c != '\0' => c,
            _ => return Err(ParseError::Malformed),
        },
        _ => return Err(ParseError::UnknownEntity),
    })
}

fn map_xml_error(e: quick_xml::Error) -> ParseError {
    match e {
        quick_xml::Error::Encoding(_) => ParseError::InvalidUtf8,
        _ => ParseError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text message from PROTOCOL.md §3.
    const TEXT: &str = "<xml><ToUserName><![CDATA[gh_account]]></ToUserName><FromUserName><![CDATA[oOpenId]]></FromUserName>\n<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>";

    fn parse(s: &str) -> Result<Message<'_>, ParseError> {
        Message::parse(s.as_bytes())
    }

    fn common(msg_type: &str, rest: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[gh_account]]></ToUserName>\
             <FromUserName><![CDATA[oUser]]></FromUserName>\
             <CreateTime>1348831860</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{rest}</xml>"
        )
    }

    /// A (name, value) a test expects `get` to return.
    type Field<'a> = (&'a str, &'a str);

    fn event(event: &str, rest: &str) -> String {
        common(
            "event",
            &format!("<Event><![CDATA[{event}]]></Event>{rest}"),
        )
    }

    /// One sample of every message and event type of PROTOCOL.md §3, with the fields a rule
    /// would read (`name`, expected value) — nested ones found through `get`.
    #[test]
    fn every_message_and_event_type() {
        let pics = "<SendPicsInfo><Count>3</Count><PicList>\
            <item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>\
            <item><PicMd5Sum><![CDATA[2b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>\
            <item><PicMd5Sum><![CDATA[3b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>\
            </PicList></SendPicsInfo>";
        let scan = "<EventKey><![CDATA[6]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>\
            <ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo>";
        // (body, MsgType, Event, fields to check)
        let cases: Vec<(String, &str, &str, Vec<Field>)> = vec![
            (
                common(
                    "text",
                    "<Content><![CDATA[hi]]></Content><MsgId>1</MsgId><bizmsgmenuid>101</bizmsgmenuid>",
                ),
                "text",
                "",
                vec![("Content", "hi"), ("MsgId", "1"), ("bizmsgmenuid", "101")],
            ),
            (
                common(
                    "image",
                    "<PicUrl><![CDATA[http://x/p.jpg]]></PicUrl><MediaId><![CDATA[m1]]></MediaId><MsgId>2</MsgId>",
                ),
                "image",
                "",
                vec![
                    ("PicUrl", "http://x/p.jpg"),
                    ("MediaId", "m1"),
                    ("MsgId", "2"),
                ],
            ),
            (
                common(
                    "voice",
                    "<MediaId><![CDATA[m2]]></MediaId><Format><![CDATA[amr]]></Format>\
                     <Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>3</MsgId>",
                ),
                "voice",
                "",
                vec![("Format", "amr"), ("Recognition", "腾讯微信团队")],
            ),
            (
                common(
                    "video",
                    "<MediaId><![CDATA[m3]]></MediaId><ThumbMediaId><![CDATA[t3]]></ThumbMediaId><MsgId>4</MsgId>",
                ),
                "video",
                "",
                vec![("MediaId", "m3"), ("ThumbMediaId", "t3")],
            ),
            (
                common(
                    "shortvideo",
                    "<MediaId><![CDATA[m4]]></MediaId><ThumbMediaId><![CDATA[t4]]></ThumbMediaId><MsgId>5</MsgId>",
                ),
                "shortvideo",
                "",
                vec![("MediaId", "m4"), ("ThumbMediaId", "t4")],
            ),
            (
                common(
                    "location",
                    "<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y>\
                     <Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>6</MsgId>",
                ),
                "location",
                "",
                vec![
                    ("Location_X", "23.134521"),
                    ("Location_Y", "113.358803"),
                    ("Scale", "20"),
                    ("Label", "位置信息"),
                ],
            ),
            (
                common(
                    "link",
                    "<Title><![CDATA[公众平台官网链接]]></Title><Description><![CDATA[d]]></Description>\
                     <Url><![CDATA[https://example.com/?a=1&b=2]]></Url><MsgId>7</MsgId>",
                ),
                "link",
                "",
                vec![
                    ("Title", "公众平台官网链接"),
                    ("Url", "https://example.com/?a=1&b=2"),
                ],
            ),
            (
                event(
                    "subscribe",
                    "<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
                ),
                "event",
                "subscribe",
                vec![("EventKey", "qrscene_123123"), ("Ticket", "TICKET")],
            ),
            (
                event("unsubscribe", "<EventKey><![CDATA[]]></EventKey>"),
                "event",
                "unsubscribe",
                vec![("EventKey", "")],
            ),
            (
                event(
                    "SCAN",
                    "<EventKey><![CDATA[SCENE_VALUE]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
                ),
                "event",
                "SCAN",
                vec![("EventKey", "SCENE_VALUE"), ("Ticket", "TICKET")],
            ),
            (
                event(
                    "LOCATION",
                    "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
                ),
                "event",
                "LOCATION",
                vec![
                    ("Latitude", "23.137466"),
                    ("Longitude", "113.352425"),
                    ("Precision", "119.385040"),
                ],
            ),
            (
                event(
                    "CLICK",
                    "<EventKey><![CDATA[V1001_TODAY_MUSIC]]></EventKey>",
                ),
                "event",
                "CLICK",
                vec![("EventKey", "V1001_TODAY_MUSIC")],
            ),
            (
                event(
                    "VIEW",
                    "<EventKey><![CDATA[www.qq.com]]></EventKey><MenuId>MENUID</MenuId>",
                ),
                "event",
                "VIEW",
                vec![("EventKey", "www.qq.com"), ("MenuId", "MENUID")],
            ),
            (
                event("scancode_push", scan),
                "event",
                "scancode_push",
                vec![
                    ("EventKey", "6"),
                    ("ScanType", "qrcode"),
                    ("ScanResult", "1"),
                ],
            ),
            (
                event("scancode_waitmsg", scan),
                "event",
                "scancode_waitmsg",
                vec![("ScanType", "qrcode"), ("ScanResult", "1")],
            ),
            (
                event(
                    "pic_sysphoto",
                    &format!("<EventKey><![CDATA[6]]></EventKey>{pics}"),
                ),
                "event",
                "pic_sysphoto",
                vec![
                    ("Count", "3"),
                    ("PicMd5Sum", "1b5f7c23b5bf75682a53e7b6d163e185"),
                ],
            ),
            (
                event(
                    "pic_photo_or_album",
                    &format!("<EventKey><![CDATA[6]]></EventKey>{pics}"),
                ),
                "event",
                "pic_photo_or_album",
                vec![("Count", "3")],
            ),
            (
                event(
                    "pic_weixin",
                    &format!("<EventKey><![CDATA[6]]></EventKey>{pics}"),
                ),
                "event",
                "pic_weixin",
                vec![("Count", "3")],
            ),
            (
                event(
                    "location_select",
                    "<EventKey><![CDATA[6]]></EventKey><SendLocationInfo>\
                    <Location_X><![CDATA[23]]></Location_X><Location_Y><![CDATA[113]]></Location_Y>\
                    <Scale><![CDATA[15]]></Scale><Label><![CDATA[ 广州市海珠区 ]]></Label><Poiname><![CDATA[]]></Poiname>\
                    </SendLocationInfo>",
                ),
                "event",
                "location_select",
                vec![
                    ("Location_X", "23"),
                    ("Label", " 广州市海珠区 "),
                    ("Poiname", ""),
                ],
            ),
            (
                event(
                    "MASSSENDJOBFINISH",
                    "<MsgID>1988</MsgID><Status><![CDATA[sendsuccess]]></Status>\
                    <TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount>",
                ),
                "event",
                "MASSSENDJOBFINISH",
                vec![
                    ("MsgID", "1988"),
                    ("Status", "sendsuccess"),
                    ("ErrorCount", "5"),
                ],
            ),
            (
                event(
                    "TEMPLATESENDJOBFINISH",
                    "<MsgID>200163836</MsgID><Status><![CDATA[success]]></Status>",
                ),
                "event",
                "TEMPLATESENDJOBFINISH",
                vec![("Status", "success")],
            ),
            (
                common(
                    "miniprogrampage",
                    "<Title><![CDATA[t]]></Title><AppId><![CDATA[wx1]]></AppId>\
                     <FutureThing><Deep><Deeper>x</Deeper></Deep></FutureThing><Flag/>",
                ),
                "miniprogrampage",
                "",
                vec![("AppId", "wx1"), ("Deeper", "x"), ("Flag", "")],
            ),
        ];
        for (xml, msg_type, event, fields) in &cases {
            let m = parse(xml).unwrap_or_else(|e| panic!("{xml}: {e}"));
            assert_eq!(m.msg_type(), *msg_type, "{xml}");
            assert_eq!(m.event(), *event, "{xml}");
            assert_eq!(m.is_event(), *msg_type == "event");
            assert_eq!(m.to_user(), "gh_account");
            assert_eq!(m.from_user(), "oUser");
            assert_eq!(m.get("CreateTime"), Some("1348831860"));
            for (name, value) in fields {
                assert_eq!(m.get(name), Some(*value), "{name} in {xml}");
            }
            // Every value here is a single piece of the input: nothing was copied.
            for n in m.nodes() {
                assert!(!matches!(n.value, Some(Cow::Owned(_))), "{n:?} copied");
            }
        }
    }

    #[test]
    fn nested_nodes_are_flat_pre_order() {
        let xml = event(
            "pic_weixin",
            "<SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum><![CDATA[a]]></PicMd5Sum></item>\
             <item><PicMd5Sum><![CDATA[b]]></PicMd5Sum></item></PicList></SendPicsInfo>",
        );
        let m = parse(&xml).unwrap();
        let tail: Vec<(&str, Option<&str>, u8)> = m.nodes()[5..]
            .iter()
            .map(|n| (n.name, n.value.as_deref(), n.depth))
            .collect();
        assert_eq!(
            tail,
            [
                ("SendPicsInfo", None, 0),
                ("Count", Some("2"), 1),
                ("PicList", None, 1),
                ("item", None, 2),
                ("PicMd5Sum", Some("a"), 3),
                ("item", None, 2),
                ("PicMd5Sum", Some("b"), 3),
            ]
        );
        // Containers have no value, so `get` skips them.
        assert_eq!(m.get("SendPicsInfo"), None);
        assert_eq!(m.get("PicMd5Sum"), Some("a"));
    }

    #[test]
    fn protocol_example_and_layout_whitespace() {
        let m = parse(TEXT).unwrap();
        assert_eq!(m.nodes().len(), 6);
        assert_eq!(m.get("Content"), Some("this is a test"));
        assert_eq!(m.get("MsgId"), Some("1234567890123456"));
        // Pretty-printed, with declaration, comments and CRLF: the layout is not content.
        let pretty = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<!-- hi -->\r\n<xml>\r\n  \
            <ToUserName><![CDATA[gh]]></ToUserName>\r\n  <SendLocationInfo>\r\n    <Scale>15</Scale>\r\n  \
            </SendLocationInfo>\r\n  <Content>  two  spaces </Content>\r\n</xml>\r\n<!-- bye -->\r\n";
        let m = parse(pretty).unwrap();
        let got: Vec<_> = m
            .nodes()
            .iter()
            .map(|n| (n.name, n.value.as_deref(), n.depth))
            .collect();
        assert_eq!(
            got,
            [
                ("ToUserName", Some("gh"), 0),
                ("SendLocationInfo", None, 0),
                ("Scale", Some("15"), 1),
                ("Content", Some("  two  spaces "), 0),
            ]
        );
    }

    #[test]
    fn empty_elements_are_empty_leaves() {
        for xml in [
            "<xml><EventKey/></xml>",
            "<xml><EventKey /></xml>",
            "<xml><EventKey></EventKey></xml>",
            "<xml><EventKey><![CDATA[]]></EventKey></xml>",
        ] {
            let m = parse(xml).unwrap();
            assert_eq!(
                m.nodes(),
                [Node {
                    name: "EventKey",
                    value: Some(Cow::Borrowed("")),
                    depth: 0
                }]
            );
            assert_eq!(m.get("EventKey"), Some(""), "{xml}");
        }
        assert!(parse("<xml/>").unwrap().nodes().is_empty());
        assert!(parse("<xml></xml>").unwrap().nodes().is_empty());
        assert!(parse("<xml>\n</xml>").unwrap().nodes().is_empty());
    }

    #[test]
    fn values_join_text_cdata_and_references() {
        let cases: &[(&str, &str, bool)] = &[
            ("<c>plain</c>", "plain", false),
            (
                "<c>a &lt;b&gt; &amp; &apos;c&apos; &quot;d&quot;</c>",
                "a <b> & 'c' \"d\"",
                true,
            ),
            ("<c>&#123;&#x1F600;&#x4f60;</c>", "{😀你", true),
            ("<c>&#1;x</c>", "\u{1}x", true),
            ("<c>x<![CDATA[<y>]]>z</c>", "x<y>z", true),
            ("<c><![CDATA[a]]><![CDATA[b]]></c>", "ab", true),
            ("<c><![CDATA[a]]]]><![CDATA[>b]]></c>", "a]]>b", true),
            ("<c>a<!-- note -->b</c>", "ab", true),
            ("<c> <![CDATA[x]]> </c>", " x ", true),
            ("<c>&amp;</c>", "&", true),
            ("<c>]]&gt;</c>", "]]>", true),
            ("<c>a\r\nb</c>", "a\r\nb", false),
        ];
        for (inner, want, owned) in cases {
            let xml = format!("<xml>{inner}</xml>");
            let m = parse(&xml).unwrap_or_else(|e| panic!("{xml}: {e}"));
            assert_eq!(m.get("c"), Some(*want), "{xml}");
            let value = m.nodes()[0].value.as_ref().unwrap();
            assert_eq!(matches!(value, Cow::Owned(_)), *owned, "{xml}");
        }
    }

    #[test]
    fn raw_control_characters_are_accepted() {
        // WeChat sends e.g. \x1d (group separator) inside CDATA; XML 1.0 forbids it, we keep it.
        for c in (1u8..0x20).chain([0x7f]) {
            let xml = [
                b"<xml><Content><![CDATA[a".as_slice(),
                &[c],
                b"b]]></Content><T>x",
                &[c],
                b"</T></xml>",
            ]
            .concat();
            let m = Message::parse(&xml).unwrap_or_else(|e| panic!("byte {c:#x}: {e}"));
            let want = format!("a{}b", c as char);
            assert_eq!(m.get("Content"), Some(want.as_str()));
        }
        // NUL: either answer is fine, as long as nothing panics.
        let _ = Message::parse(b"<xml><Content><![CDATA[a\0b]]></Content></xml>");
        let _ = Message::parse(b"<xml><Content>a\0b</Content></xml>");
        let _ = Message::parse(b"<xml\0><Content>a</Content></xml>");
        let _ = Message::parse(b"\0");
    }

    #[test]
    fn errors() {
        use ParseError::*;
        let cases: &[(&[u8], ParseError)] = &[
            (b"", NotXmlRoot),
            (b"  \n", NotXmlRoot),
            (b"<!-- only a comment -->", NotXmlRoot),
            (b"hello", NotXmlRoot),
            (b"success", NotXmlRoot),
            (b"<root><a>1</a></root>", NotXmlRoot),
            (b"<XML><a>1</a></XML>", NotXmlRoot),
            (b"<xml><a>1</a></xml><xml></xml>", NotXmlRoot),
            (b"<xml><a>1</a></xml>junk", NotXmlRoot),
            (b"<xml><a>1</a></xml><![CDATA[x]]>", NotXmlRoot),
            (b"<xml><a>1</a></xml>&amp;", NotXmlRoot),
            (b"<xml><a>1</a></xml><b/>", NotXmlRoot),
            (b"junk<xml><a>1</a></xml>", NotXmlRoot),
            (b"<!DOCTYPE xml><xml><a>1</a></xml>", DocType),
            (
                b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>",
                DocType,
            ),
            (b"<xml><!DOCTYPE x><a>1</a></xml>", DocType),
            (b"<xml><a>1</a></xml><!DOCTYPE x>", DocType),
            (b"<xml><a>&e;</a></xml>", UnknownEntity),
            (b"<xml><a>&nbsp;</a></xml>", UnknownEntity),
            (b"<xml><a>&;</a></xml>", UnknownEntity),
            (b"<xml><a>&#0;</a></xml>", Malformed),
            (b"<xml><a>&#x0;</a></xml>", Malformed),
            (b"<xml><a>&#xD800;</a></xml>", Malformed),
            (b"<xml><a>&#x110000;</a></xml>", Malformed),
            (b"<xml><a>&#99999999999;</a></xml>", Malformed),
            (b"<xml><a>&#X41;</a></xml>", Malformed),
            (b"<xml><a>&#-1;</a></xml>", Malformed),
            (b"<xml><a>&#xZZ;</a></xml>", Malformed),
            (b"<xml><a>a & b</a></xml>", Malformed),
            (b"<xml><a>1</b></xml>", Malformed),
            (b"<xml><a>1</a></b></xml>", Malformed),
            (b"<xml><a>1</a></xml></xml>", Malformed),
            (b"<xml><a>1</a>", Malformed),
            (b"<xml><a>1", Malformed),
            (b"<xml><a><b>1</a></b></xml>", Malformed),
            (b"<xml><a>1</a></XML>", Malformed),
            (b"<xml><a>1</a><?xml version=\"1.0\"?></xml>", Malformed),
            (b"<xml><a><![CDATA[1</a></xml>", Malformed),
            (b"<xml><a>1</a><</xml>", Malformed),
            (b"<xml><a>1</a></xml", Malformed),
            (b"<xml><a>\xff</a></xml>", InvalidUtf8),
            (b"<xml><a><![CDATA[\xc3]]></a></xml>", InvalidUtf8),
            (b"\xef\xbb<xml/>", InvalidUtf8),
        ];
        for (xml, want) in cases {
            assert_eq!(
                Message::parse(xml).map(|m| m.nodes().len()),
                Err(*want),
                "{}",
                String::from_utf8_lossy(xml)
            );
        }
    }

    #[test]
    fn attributes_and_processing_instructions_are_ignored() {
        let m = parse("<?xml version=\"1.0\"?><xml a=\"1\"><?pi x?><Content x='&lt;' y=\"&unknown;\">hi</Content></xml>")
            .unwrap();
        assert_eq!(
            m.nodes(),
            [Node {
                name: "Content",
                value: Some(Cow::Borrowed("hi")),
                depth: 0
            }]
        );
    }

    #[test]
    fn duplicates_are_kept_and_top_level_wins() {
        let m = parse("<xml><A><B>nested</B></A><B>first</B><B>second</B></xml>").unwrap();
        assert_eq!(m.nodes().len(), 4);
        assert_eq!(m.get("B"), Some("first"));
        assert_eq!(m.get("b"), None, "case-sensitive");
        assert_eq!(m.get("A"), None, "containers have no value");
        assert_eq!(m.get("Missing"), None);
        let m = parse("<xml><A><B>nested</B></A></xml>").unwrap();
        assert_eq!(m.get("B"), Some("nested"));
        assert_eq!(Message::default().msg_type(), "");
    }

    #[test]
    fn mixed_content_text_is_not_a_value() {
        let m = parse("<xml>stray<A>lead<B>1</B>tail</A>more</xml>").unwrap();
        let got: Vec<_> = m
            .nodes()
            .iter()
            .map(|n| (n.name, n.value.as_deref()))
            .collect();
        assert_eq!(got, [("A", None), ("B", Some("1"))]);
    }

    #[test]
    fn node_and_depth_caps() {
        let body = |n: usize| format!("<xml>{}</xml>", "<A>1</A>".repeat(n));
        assert_eq!(parse(&body(MAX_NODES)).unwrap().nodes().len(), MAX_NODES);
        assert_eq!(
            parse(&body(MAX_NODES + 1)).unwrap_err(),
            ParseError::TooManyNodes
        );
        let empty = format!("<xml>{}</xml>", "<A/>".repeat(MAX_NODES + 1));
        assert_eq!(parse(&empty).unwrap_err(), ParseError::TooManyNodes);

        let nested = |levels: usize| {
            format!(
                "<xml>{}x{}</xml>",
                "<A>".repeat(levels),
                "</A>".repeat(levels)
            )
        };
        let deepest = nested(usize::from(MAX_DEPTH) + 1);
        let deepest = parse(&deepest).unwrap();
        assert_eq!(deepest.nodes().last().map(|n| n.depth), Some(MAX_DEPTH));
        assert_eq!(deepest.get("A"), Some("x"));
        assert_eq!(
            parse(&nested(usize::from(MAX_DEPTH) + 2)).unwrap_err(),
            ParseError::TooDeep
        );
        let deep_empty = format!("<xml>{}<B/>{}</xml>", "<A>".repeat(5), "</A>".repeat(5));
        assert_eq!(parse(&deep_empty).unwrap_err(), ParseError::TooDeep);
        // Deep garbage is refused at the cap, long before its end.
        assert_eq!(
            parse(&"<A>".repeat(100_000).replacen("<A>", "<xml>", 1)).unwrap_err(),
            ParseError::TooDeep
        );
    }

    /// httparse's `partial_permutations`: every strict prefix of a valid message is refused
    /// (never accepted as a shorter message, never a panic).
    #[test]
    fn every_strict_prefix_is_an_error() {
        let nested = event(
            "scancode_push",
            "<ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult>a&amp;b&#x4f60;</ScanResult></ScanCodeInfo><E/>",
        );
        for full in [
            TEXT,
            nested.as_str(),
            "<?xml version=\"1.0\"?><xml><A>1</A></xml>",
        ] {
            assert!(parse(full).is_ok());
            for end in 0..full.len() {
                let prefix = &full.as_bytes()[..end];
                if let Ok(m) = Message::parse(prefix) {
                    panic!("prefix {end} accepted: {m:?}");
                }
            }
        }
    }

    /// Every single-byte substitution of real messages: whatever the answer, no panic.
    #[test]
    fn mutations_never_panic() {
        let base = [
            TEXT.as_bytes().to_vec(),
            event("VIEW", "<EventKey>&lt;u&gt;</EventKey><A><B/></A>").into_bytes(),
        ];
        for msg in &base {
            for i in 0..msg.len() {
                for b in [
                    b'<', b'>', b'&', b'/', b'!', b'?', b'[', b']', b'#', b';', b' ', b'"', 0,
                    0x80, 0xff,
                ] {
                    let mut m = msg.clone();
                    m[i] = b;
                    let _ = Message::parse(&m);
                    m.truncate(i + 1);
                    let _ = Message::parse(&m);
                }
            }
        }
    }

    /// Cost probe, not a check. The release profile strips symbols, so count instructions of
    /// the whole release test binary under `valgrind --tool=callgrind` with `PARSE_COST_N=0` and
    /// `PARSE_COST_N=10000` (`… parse_cost --ignored --test-threads=1`) and divide the difference
    /// by 10000; `PARSE_COST_FLOOR=1` measures bare quick-xml reading the same document.
    #[test]
    #[ignore]
    fn parse_cost() {
        let n: usize = std::env::var("PARSE_COST_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        if std::env::var("PARSE_COST_FLOOR").is_ok() {
            for _ in 0..n {
                let mut r = Reader::from_reader(std::hint::black_box(TEXT.as_bytes()));
                while !matches!(
                    std::hint::black_box(r.read_event()),
                    Ok(Event::Eof) | Err(_)
                ) {}
            }
            return;
        }
        for _ in 0..n {
            let m = Message::parse(std::hint::black_box(TEXT.as_bytes()));
            std::hint::black_box(&m);
        }
    }

    #[test]
    fn error_messages_are_fixed() {
        assert_eq!(
            ParseError::DocType.to_string(),
            "message XML declares a DOCTYPE"
        );
        assert_eq!(
            ParseError::TooManyNodes.as_str(),
            "message has too many elements"
        );
    }
}
