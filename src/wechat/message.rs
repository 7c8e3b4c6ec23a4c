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
        todo!()
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
        let _ = body;
        todo!()
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
        let _ = name;
        todo!()
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
