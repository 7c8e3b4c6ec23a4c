//! FastCGI 1.0 record framing and name-value pairs, over borrowed bytes.
//!
//! From the specification (§3.3):
//! ```text
//! typedef struct {
//!     unsigned char version;          // FCGI_VERSION_1
//!     unsigned char type;
//!     unsigned char requestIdB1, requestIdB0;
//!     unsigned char contentLengthB1, contentLengthB0;
//!     unsigned char paddingLength;
//!     unsigned char reserved;
//!     unsigned char contentData[contentLength];
//!     unsigned char paddingData[paddingLength];
//! } FCGI_Record;
//! ```
//! Name-value pairs (§3.4) carry each length in 1 byte when < 128, else in 4 bytes with the
//! high bit of the first set.
//!
//! Parsers never touch a socket: short input is [`Parsed::Partial`], not an error.

/// `FCGI_VERSION_1`.
pub const VERSION_1: u8 = 1;
/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content one record carries.
pub const MAX_CONTENT: usize = 0xffff;
/// Largest whole record (header, content, padding).
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CONTENT + 0xff;

/// Record types (§8).
pub mod kind {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const DATA: u8 = 8;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;
}

/// `FCGI_RESPONDER`, the only role served.
pub const ROLE_RESPONDER: u16 = 1;
/// `FCGI_KEEP_CONN` in BEGIN_REQUEST flags: keep the connection open after the request.
pub const FLAG_KEEP_CONN: u8 = 1;

/// END_REQUEST protocol status values.
pub mod protocol_status {
    pub const REQUEST_COMPLETE: u8 = 0;
    pub const CANT_MPX_CONN: u8 = 1;
    pub const OVERLOADED: u8 = 2;
    pub const UNKNOWN_ROLE: u8 = 3;
}

/// A parse result: a value and how many bytes it used, or "need more input".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T, usize),
    Partial,
}

/// Malformed input. Each closes the connection it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Record version is not 1.
    Version,
    /// A name-value pair's lengths run past the end of the PARAMS stream.
    BadPair,
    /// BEGIN_REQUEST content is shorter than its 8-byte body.
    BadBeginRequest,
    /// A record arrived that makes no sense in the request's state (e.g. STDIN before PARAMS ended).
    UnexpectedRecord,
    /// The PARAMS stream is larger than the configured cap.
    ParamsTooLarge,
    /// More name-value pairs than the configured cap.
    TooManyParams,
    /// STDIN far over the body cap (more than is read just to answer 413).
    BodyFarTooLarge,
}

impl Error {
    /// A fixed one-line reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::Version => "unsupported FastCGI version",
            Error::BadPair => "name-value pair runs past the end of PARAMS",
            Error::BadBeginRequest => "BEGIN_REQUEST body too short",
            Error::UnexpectedRecord => "record out of order for the request's state",
            Error::ParamsTooLarge => "PARAMS stream larger than the cap",
            Error::TooManyParams => "more params than the cap",
            Error::BodyFarTooLarge => "body far over max_body",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::error::Error for Error {}

/// A record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub request_id: u16,
    pub content_len: u16,
    pub padding_len: u8,
}

impl Header {
    /// Bytes of the whole record this header starts.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.content_len as usize + self.padding_len as usize
    }
}

/// Parses a record header.
pub fn parse_header(buf: &[u8]) -> Result<Parsed<Header>, Error> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Parsed::Partial);
    };
    if h[0] != VERSION_1 {
        return Err(Error::Version);
    }
    Ok(Parsed::Complete(
        Header {
            kind: h[1],
            request_id: u16::from_be_bytes([h[2], h[3]]),
            content_len: u16::from_be_bytes([h[4], h[5]]),
            padding_len: h[6],
        },
        HEADER_LEN,
    ))
}

/// Parses a whole record: its header and its content (padding skipped).
pub fn parse_record(buf: &[u8]) -> Result<Parsed<(Header, &[u8])>, Error> {
    let header = match parse_header(buf)? {
        Parsed::Complete(h, _) => h,
        Parsed::Partial => return Ok(Parsed::Partial),
    };
    let total = header.record_len();
    match buf.get(HEADER_LEN..HEADER_LEN + header.content_len as usize) {
        Some(content) if buf.len() >= total => Ok(Parsed::Complete((header, content), total)),
        _ => Ok(Parsed::Partial),
    }
}

/// BEGIN_REQUEST body: role and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: u16,
    pub flags: u8,
}

impl BeginRequest {
    pub fn parse(content: &[u8]) -> Result<BeginRequest, Error> {
        match content.first_chunk::<8>() {
            Some(b) => Ok(BeginRequest {
                role: u16::from_be_bytes([b[0], b[1]]),
                flags: b[2],
            }),
            None => Err(Error::BadBeginRequest),
        }
    }

    pub fn keep_conn(&self) -> bool {
        self.flags & FLAG_KEEP_CONN != 0
    }
}

/// Parses one name-value pair at the start of `buf`. A pair cut short is `Partial`, which
/// callers holding a complete stream treat as [`Error::BadPair`].
pub fn parse_pair(buf: &[u8]) -> Parsed<(&[u8], &[u8])> {
    fn length(buf: &[u8], at: usize) -> Option<(usize, usize)> {
        let first = *buf.get(at)?;
        if first & 0x80 == 0 {
            return Some((first as usize, 1));
        }
        let b = buf.get(at..at + 4)?;
        let n = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]);
        Some((n as usize, 4))
    }
    let Some((name_len, a)) = length(buf, 0) else {
        return Parsed::Partial;
    };
    let Some((value_len, b)) = length(buf, a) else {
        return Parsed::Partial;
    };
    let start = a + b;
    let Some(name_end) = start.checked_add(name_len) else {
        return Parsed::Partial;
    };
    let Some(end) = name_end.checked_add(value_len) else {
        return Parsed::Partial;
    };
    match (buf.get(start..name_end), buf.get(name_end..end)) {
        (Some(name), Some(value)) => Parsed::Complete((name, value), end),
        _ => Parsed::Partial,
    }
}

/// Iterates over the pairs of a complete PARAMS stream.
pub struct Pairs<'a> {
    rest: &'a [u8],
}

impl<'a> Pairs<'a> {
    pub fn new(stream: &'a [u8]) -> Pairs<'a> {
        Pairs { rest: stream }
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match parse_pair(self.rest) {
            Parsed::Complete(pair, used) => {
                self.rest = &self.rest[used..];
                Some(Ok(pair))
            }
            Parsed::Partial => {
                self.rest = &[];
                Some(Err(Error::BadPair))
            }
        }
    }
}

/// Appends a record header.
pub fn write_header(out: &mut Vec<u8>, kind: u8, request_id: u16, content_len: u16, padding: u8) {
    let id = request_id.to_be_bytes();
    let len = content_len.to_be_bytes();
    out.extend_from_slice(&[VERSION_1, kind, id[0], id[1], len[0], len[1], padding, 0]);
}

/// Appends `data` as records of `kind`, split at [`MAX_CONTENT`]; no terminating empty record.
pub fn write_stream(out: &mut Vec<u8>, kind: u8, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        write_header(out, kind, request_id, chunk.len() as u16, 0);
        out.extend_from_slice(chunk);
    }
}

/// Appends the empty record that ends a stream.
pub fn write_stream_end(out: &mut Vec<u8>, kind: u8, request_id: u16) {
    write_header(out, kind, request_id, 0, 0);
}

/// Appends END_REQUEST.
pub fn write_end_request(out: &mut Vec<u8>, request_id: u16, app_status: u32, protocol_status: u8) {
    write_header(out, kind::END_REQUEST, request_id, 8, 0);
    let s = app_status.to_be_bytes();
    out.extend_from_slice(&[s[0], s[1], s[2], s[3], protocol_status, 0, 0, 0]);
}

/// Appends UNKNOWN_TYPE for a record type we do not handle.
pub fn write_unknown_type(out: &mut Vec<u8>, unknown: u8) {
    write_header(out, kind::UNKNOWN_TYPE, 0, 8, 0);
    out.extend_from_slice(&[unknown, 0, 0, 0, 0, 0, 0, 0]);
}

/// Appends BEGIN_REQUEST (used by the client side).
pub fn write_begin_request(out: &mut Vec<u8>, request_id: u16, role: u16, flags: u8) {
    write_header(out, kind::BEGIN_REQUEST, request_id, 8, 0);
    let r = role.to_be_bytes();
    out.extend_from_slice(&[r[0], r[1], flags, 0, 0, 0, 0, 0]);
}

/// Appends one name-value pair (4-byte lengths when ≥ 128). Lengths are capped at 2³¹−1 by
/// the format; callers never come near it.
pub fn write_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&((len as u32 & 0x7fff_ffff) | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut v = Vec::new();
        write_header(&mut v, kind, id, content.len() as u16, padding);
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0, padding as usize));
        v
    }

    #[test]
    fn header_round_trip() {
        let v = record(kind::STDIN, 0x1234, b"hello", 3);
        let Ok(Parsed::Complete((h, c), used)) = parse_record(&v) else {
            panic!("{v:?}")
        };
        assert_eq!(
            h,
            Header {
                kind: kind::STDIN,
                request_id: 0x1234,
                content_len: 5,
                padding_len: 3
            }
        );
        assert_eq!(c, b"hello");
        assert_eq!(used, 16);
    }

    #[test]
    fn every_prefix_is_partial() {
        let v = record(kind::PARAMS, 1, b"0123456789", 6);
        for n in 0..v.len() {
            assert_eq!(parse_record(&v[..n]), Ok(Parsed::Partial), "prefix {n}");
        }
    }

    #[test]
    fn wrong_version_is_an_error() {
        let mut v = record(kind::STDIN, 1, b"", 0);
        v[0] = 2;
        assert_eq!(parse_header(&v), Err(Error::Version));
    }

    #[test]
    fn pairs_short_and_long_lengths() {
        let long_value = vec![b'v'; 300];
        let long_name = vec![b'n'; 128];
        let mut s = Vec::new();
        write_pair(&mut s, b"REQUEST_METHOD", b"POST");
        write_pair(&mut s, b"QUERY_STRING", &long_value);
        write_pair(&mut s, &long_name, b"");
        write_pair(&mut s, b"", b"");
        let got: Vec<_> = Pairs::new(&s).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (&b"REQUEST_METHOD"[..], &b"POST"[..]));
        assert_eq!(got[1].1.len(), 300);
        assert_eq!(got[2].0.len(), 128);
        assert_eq!(got[3], (&b""[..], &b""[..]));
        // The long forms really are 4 bytes.
        assert_eq!(s[20 + 1], 0x80, "second pair's value length");
    }

    #[test]
    fn truncated_or_huge_pairs_are_errors() {
        let mut s = Vec::new();
        write_pair(&mut s, b"NAME", b"VALUE");
        for n in 1..s.len() {
            let got: Vec<_> = Pairs::new(&s[..n]).collect();
            assert_eq!(got, vec![Err(Error::BadPair)], "prefix {n}");
        }
        // A 4-byte length claiming 2 GiB.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x01, b'a', b'b'];
        assert_eq!(Pairs::new(&huge).next(), Some(Err(Error::BadPair)));
    }

    #[test]
    fn begin_request_body() {
        let mut v = Vec::new();
        write_begin_request(&mut v, 7, ROLE_RESPONDER, FLAG_KEEP_CONN);
        let Ok(Parsed::Complete((h, c), _)) = parse_record(&v) else {
            panic!()
        };
        assert_eq!((h.kind, h.request_id), (kind::BEGIN_REQUEST, 7));
        let b = BeginRequest::parse(c).unwrap();
        assert_eq!(b.role, ROLE_RESPONDER);
        assert!(b.keep_conn());
        assert_eq!(BeginRequest::parse(&c[..7]), Err(Error::BadBeginRequest));
    }

    #[test]
    fn streams_split_at_max_content() {
        let data = vec![7u8; MAX_CONTENT + 10];
        let mut v = Vec::new();
        write_stream(&mut v, kind::STDOUT, 1, &data);
        write_stream_end(&mut v, kind::STDOUT, 1);
        write_end_request(&mut v, 1, 0, protocol_status::REQUEST_COMPLETE);
        let mut rest = &v[..];
        let mut lens = Vec::new();
        while let Ok(Parsed::Complete((h, _), used)) = parse_record(rest) {
            lens.push((h.kind, h.content_len as usize));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(
            lens,
            vec![
                (kind::STDOUT, MAX_CONTENT),
                (kind::STDOUT, 10),
                (kind::STDOUT, 0),
                (kind::END_REQUEST, 8)
            ]
        );
    }
}
