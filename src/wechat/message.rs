//! Incoming message and event XML (PROTOCOL.md §3), parsed with quick-xml into fields that
//! borrow from the request body where they can.
//!
//! The document is `<xml>` with children; a few events nest one or two more levels
//! (`ScanCodeInfo/ScanType`, `SendPicsInfo/PicList/item/PicMd5Sum`, `SendLocationInfo/…`).
//! Fields are kept as a flat pre-order list of [`Node`]s: a container node (no value) is
//! followed by its children at `depth + 1`. Unknown elements are kept like known ones.
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
        // End names are matched against our own open-element stack, which already holds the
        // names; quick-xml's own check would keep a second, allocated copy of them.
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
                Event::GeneralRef(r) => {
                    let c = resolve_ref(&r)?;
                    b.piece(Cow::Owned(String::from(c)))?
                }
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

    /// One piece of a value (text, CDATA or a decoded reference), appended to the current one.
    fn piece(&mut self, piece: Cow<'a, str>) -> Result<(), ParseError> {
        match self.phase {
            Phase::Prolog | Phase::Epilog => return Err(ParseError::NotXmlRoot),
            Phase::InRoot if !self.collecting => return Ok(()),
            Phase::InRoot => {}
        }
        match &mut self.value {
            None => self.value = Some(piece),
            Some(value) => value.to_mut().push_str(&piece),
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
/// can outlive the event. `None` would mean the event did not borrow; the slice reader always does.
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
