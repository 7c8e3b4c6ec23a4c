//! One connection's protocol state: bytes in, steps out.
//!
//! No socket, clock or thread here. [`Connection::advance`] takes the bytes read so far,
//! consumes every complete record, queues the protocol's own answers (END_REQUEST for an
//! abort or a refused role, GET_VALUES_RESULT, UNKNOWN_TYPE) in an output buffer, and says
//! what the caller must do next ([`Step`]). The worker pool (`pool.rs`) does the reading,
//! writing, deadlines and the handler call; this module is tested on byte strings alone.

use crate::record::{self, BeginRequest, Pairs, Parsed, kind, protocol_status};
use crate::response::{Response, write_response};

/// Most name-value pairs one request may carry.
const MAX_PAIRS: usize = 512;
/// Bytes of an oversized body read and discarded to still answer 413 in-protocol.
const MAX_DISCARD: usize = 16 * 1024 * 1024;

/// Caps applied while a request arrives.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// PARAMS stream cap in bytes; beyond it the connection is closed.
    pub max_params: usize,
    /// STDIN cap in bytes; a larger body is reported by [`Connection::oversized`].
    pub max_body: usize,
    /// The `FCGI_MAX_CONNS` / `FCGI_MAX_REQS` answered to GET_VALUES.
    pub max_conns: usize,
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every complete record is consumed: read more bytes.
    NeedInput,
    /// A RESPONDER request began (BEGIN_REQUEST accepted).
    Began,
    /// The request's PARAMS and STDIN are complete: answer it with [`Connection::request`] and
    /// [`Connection::respond`] (or [`Connection::hand_off`]).
    Request,
    /// A request ended without the handler (ABORT_REQUEST, or a role we do not serve): its
    /// END_REQUEST is queued. Keep the connection if [`Connection::keep_conn`].
    Ended,
    /// Close the connection: the input broke the protocol or a cap.
    Close(record::Error),
}

/// Where the current request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests.
    Idle,
    /// BEGIN_REQUEST seen; PARAMS arriving.
    Params,
    /// PARAMS ended; STDIN arriving.
    Stdin,
    /// STDIN ended; waiting for the caller to answer.
    Ready,
}

#[derive(Debug, Clone, Copy)]
struct ParamIndex {
    name: (u32, u32),
    value: (u32, u32),
}

/// The protocol state of one connection. Its buffers are reused from one connection to the
/// next (a worker owns one), growing only up to the caps.
pub struct Connection {
    limits: Limits,
    phase: Phase,
    id: u16,
    keep_conn: bool,
    /// Body bytes beyond `max_body` seen so far (the body is then answered 413).
    discarded: usize,
    params: Vec<u8>,
    index: Vec<ParamIndex>,
    body: Vec<u8>,
}

impl Connection {
    pub fn new(limits: Limits) -> Connection {
        Connection {
            limits,
            phase: Phase::Idle,
            id: 0,
            keep_conn: false,
            discarded: 0,
            params: Vec::with_capacity(2048),
            index: Vec::with_capacity(64),
            body: Vec::with_capacity(4096),
        }
    }

    /// Forgets any request in progress (a new connection starts).
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.keep_conn = false;
    }

    /// True between BEGIN_REQUEST and the request's answer.
    pub fn in_request(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// The current (or last) request's FCGI_KEEP_CONN flag.
    pub fn keep_conn(&self) -> bool {
        self.keep_conn
    }

    /// Where the current request stands, for a log line.
    pub fn reading(&self) -> &'static str {
        match self.phase {
            Phase::Idle => "reading a record",
            Phase::Params => "reading PARAMS",
            Phase::Stdin | Phase::Ready => "reading STDIN",
        }
    }

    /// Consumes complete records from the front of `input` until one needs the caller;
    /// returns the bytes consumed and that step. Protocol answers are appended to `out`.
    /// A partial record at the end is left unconsumed ([`Step::NeedInput`]).
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Step) {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let (header, content, len) = match record::parse_record(rest) {
                Ok(Parsed::Complete((header, content), len)) => (header, content, len),
                Ok(Parsed::Partial) => return (used, Step::NeedInput),
                Err(e) => return (used, Step::Close(e)),
            };
            used += len;
            if let Some(step) = self.on_record(header, content, out) {
                return (used, step);
            }
        }
    }

    fn on_record(
        &mut self,
        header: record::Header,
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let id = header.request_id;
        let active = self.phase != Phase::Idle && id == self.id;
        match header.kind {
            kind::BEGIN_REQUEST => {
                let begin = match BeginRequest::parse(content) {
                    Ok(b) => b,
                    Err(e) => return Some(Step::Close(e)),
                };
                if id == 0 || active {
                    return Some(Step::Close(record::Error::UnexpectedRecord));
                }
                if self.phase != Phase::Idle {
                    record::write_end_request(out, id, 0, protocol_status::CANT_MPX_CONN);
                    return None;
                }
                self.keep_conn = begin.keep_conn();
                if begin.role != record::ROLE_RESPONDER {
                    log::warn!("fastcgi: refusing role {} (only RESPONDER)", begin.role);
                    record::write_end_request(out, id, 0, protocol_status::UNKNOWN_ROLE);
                    return Some(Step::Ended);
                }
                self.phase = Phase::Params;
                self.id = id;
                self.discarded = 0;
                self.params.clear();
                self.index.clear();
                self.body.clear();
                Some(Step::Began)
            }
            kind::ABORT_REQUEST if active => {
                record::write_end_request(out, id, 1, protocol_status::REQUEST_COMPLETE);
                self.phase = Phase::Idle;
                Some(Step::Ended)
            }
            kind::PARAMS if active => {
                if self.phase != Phase::Params {
                    return Some(Step::Close(record::Error::UnexpectedRecord));
                }
                if content.is_empty() {
                    if let Err(e) = self.index_params() {
                        return Some(Step::Close(e));
                    }
                    self.phase = Phase::Stdin;
                    return None;
                }
                if self.params.len() + content.len() > self.limits.max_params {
                    return Some(Step::Close(record::Error::ParamsTooLarge));
                }
                self.params.extend_from_slice(content);
                None
            }
            kind::STDIN if active => {
                if self.phase != Phase::Stdin {
                    return Some(Step::Close(record::Error::UnexpectedRecord));
                }
                if content.is_empty() {
                    self.phase = Phase::Ready;
                    return Some(Step::Request);
                }
                if self.discarded > 0 || self.body.len() + content.len() > self.limits.max_body {
                    self.discarded += content.len();
                    if self.discarded > MAX_DISCARD {
                        return Some(Step::Close(record::Error::BodyFarTooLarge));
                    }
                    return None;
                }
                self.body.extend_from_slice(content);
                None
            }
            // Records of a request that is not active are ignored (FastCGI §3.3); DATA is for
            // the FILTER role, which we do not serve.
            kind::ABORT_REQUEST | kind::PARAMS | kind::STDIN | kind::DATA => None,
            kind::GET_VALUES => {
                self.get_values(content, out);
                None
            }
            other => {
                record::write_unknown_type(out, other);
                None
            }
        }
    }

    /// Answers FCGI_GET_VALUES with the variables we know; unknown names are left out (§4.1).
    fn get_values(&self, content: &[u8], out: &mut Vec<u8>) {
        let max = self.limits.max_conns.to_string();
        let mut result = Vec::with_capacity(64);
        for pair in Pairs::new(content) {
            let Ok((name, _)) = pair else { break };
            let value: &[u8] = match name {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => max.as_bytes(),
                b"FCGI_MPXS_CONNS" => b"0",
                _ => continue,
            };
            record::write_pair(&mut result, name, value);
        }
        result.truncate(record::MAX_CONTENT);
        record::write_header(out, kind::GET_VALUES_RESULT, 0, result.len() as u16, 0);
        out.extend_from_slice(&result);
    }

    fn index_params(&mut self) -> Result<(), record::Error> {
        let base = self.params.as_ptr() as usize;
        for pair in Pairs::new(&self.params) {
            let (name, value) = pair?;
            if self.index.len() >= MAX_PAIRS {
                return Err(record::Error::TooManyParams);
            }
            let offset = |s: &[u8]| {
                let start = (s.as_ptr() as usize - base) as u32;
                (start, start + s.len() as u32)
            };
            self.index.push(ParamIndex {
                name: offset(name),
                value: offset(value),
            });
        }
        Ok(())
    }

    /// The complete request, after [`Step::Request`].
    pub fn request(&self) -> Request<'_> {
        Request {
            stream: &self.params,
            index: &self.index,
            body: &self.body,
        }
    }

    /// After [`Step::Request`]: the whole body size when it was over `max_body` (answer 413
    /// without calling the handler; the body was not kept).
    pub fn oversized(&self) -> Option<usize> {
        (self.discarded > 0).then_some(self.body.len() + self.discarded)
    }

    /// Queues `response` (STDOUT and END_REQUEST) for the current request; the connection is
    /// then between requests. `cgi` is scratch space for the CGI head and body.
    pub fn respond(&mut self, response: &Response, cgi: &mut Vec<u8>, out: &mut Vec<u8>) {
        write_response(out, cgi, self.id, response);
        self.phase = Phase::Idle;
    }

    /// The current request is answered elsewhere: returns its id and FCGI_KEEP_CONN; the
    /// connection is then between requests.
    pub fn hand_off(&mut self) -> (u16, bool) {
        self.phase = Phase::Idle;
        (self.id, self.keep_conn)
    }

    /// Returns buffers one unusual request grew back to their usual size.
    pub fn shrink(&mut self) {
        for buf in [&mut self.params, &mut self.body] {
            if buf.capacity() > 64 * 1024 {
                buf.clear();
                buf.shrink_to(4096);
            }
        }
    }
}

/// A request as the handler sees it: params and body borrowed from the connection's buffers.
pub struct Request<'a> {
    stream: &'a [u8],
    index: &'a [ParamIndex],
    /// The STDIN stream, complete.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The value of param `name` (last one wins if repeated, as in CGI environments).
    pub fn param(&self, name: &str) -> Option<&'a [u8]> {
        let stream = self.stream;
        self.index
            .iter()
            .rev()
            .find(|p| stream.get(p.name.0 as usize..p.name.1 as usize) == Some(name.as_bytes()))
            .and_then(|p| stream.get(p.value.0 as usize..p.value.1 as usize))
    }

    /// The value of param `name` when it is UTF-8.
    pub fn param_str(&self, name: &str) -> Option<&'a str> {
        self.param(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All params in arrival order.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        let stream = self.stream;
        self.index.iter().filter_map(move |p| {
            Some((
                stream.get(p.name.0 as usize..p.name.1 as usize)?,
                stream.get(p.value.0 as usize..p.value.1 as usize)?,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::encode_request;
    use crate::record::{FLAG_KEEP_CONN, ROLE_RESPONDER};

    const LIMITS: Limits = Limits {
        max_params: 4096,
        max_body: 64,
        max_conns: 7,
    };

    /// A whole request as nginx sends it: BEGIN_REQUEST, PARAMS, empty PARAMS, STDIN, empty STDIN.
    fn whole_request(body: &[u8]) -> Vec<u8> {
        encode_request(
            1,
            &[
                ("REQUEST_METHOD", b"POST".as_slice()),
                ("DOCUMENT_URI", b"/x"),
            ],
            body,
            true,
        )
    }

    /// Feeds `input` as the pool does (consuming records, keeping a partial tail); returns the
    /// steps other than `NeedInput`, and the bytes left unconsumed.
    fn feed(conn: &mut Connection, input: &[u8], out: &mut Vec<u8>) -> (Vec<Step>, usize) {
        let mut steps = Vec::new();
        let mut at = 0;
        loop {
            let (used, step) = conn.advance(&input[at..], out);
            at += used;
            match step {
                Step::NeedInput => return (steps, input.len() - at),
                Step::Request => {
                    steps.push(step);
                    conn.respond(&Response::new(), &mut Vec::new(), out);
                }
                Step::Close(_) => {
                    steps.push(step);
                    return (steps, input.len() - at);
                }
                _ => steps.push(step),
            }
        }
    }

    #[test]
    fn every_prefix_of_a_whole_request_is_partial() {
        let request = whole_request(b"<xml>hello</xml>");
        for cut in 0..request.len() {
            let mut conn = Connection::new(LIMITS);
            let mut out = Vec::new();
            let (steps, _) = feed(&mut conn, &request[..cut], &mut out);
            assert!(
                !steps.contains(&Step::Request)
                    && !steps.iter().any(|s| matches!(s, Step::Close(_))),
                "prefix of {cut} bytes gave {steps:?}"
            );
            assert!(out.is_empty(), "prefix of {cut} bytes queued output");
        }
        let mut conn = Connection::new(LIMITS);
        let (steps, left) = feed(&mut conn, &request, &mut Vec::new());
        assert_eq!(steps, [Step::Began, Step::Request]);
        assert_eq!(left, 0);
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let request = whole_request(b"body");
        let mut conn = Connection::new(LIMITS);
        let mut buf = Vec::new();
        let mut steps = Vec::new();
        for &b in &request {
            buf.push(b);
            let (used, step) = conn.advance(&buf, &mut Vec::new());
            buf.drain(..used);
            if step == Step::Request {
                let r = conn.request();
                assert_eq!(r.body, b"body");
                assert_eq!(r.param("REQUEST_METHOD"), Some(b"POST".as_slice()));
                assert_eq!(r.param_str("DOCUMENT_URI"), Some("/x"));
                assert_eq!(r.params().count(), 2);
            }
            if step != Step::NeedInput {
                steps.push(step);
            }
        }
        assert_eq!(steps, [Step::Began, Step::Request]);
        assert!(buf.is_empty());
        assert!(conn.keep_conn());
    }

    #[test]
    fn response_is_stdout_then_end_request() {
        let mut out = Vec::new();
        let mut response = Response::new();
        response.plain(404, "no\n");
        let mut conn = Connection::new(LIMITS);
        let request = whole_request(b"");
        let (used, step) = conn.advance(&request, &mut out);
        assert_eq!((used, step), (16, Step::Began));
        let (_, step) = conn.advance(&request[used..], &mut out);
        assert_eq!(step, Step::Request);
        conn.respond(&response, &mut Vec::new(), &mut out);
        assert!(!conn.in_request());
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut stdout = Vec::new();
        while let Ok(Parsed::Complete((h, content), n)) = record::parse_record(&out[at..]) {
            kinds.push(h.kind);
            if h.kind == kind::STDOUT {
                stdout.extend_from_slice(content);
            }
            at += n;
        }
        assert!(stdout.starts_with(b"Status: 404 Not Found\r\n"));
        assert!(stdout.ends_with(b"\r\n\r\nno\n"));
        // The head, then the body (copied once, straight into its records), then the end.
        assert_eq!(
            kinds,
            [kind::STDOUT, kind::STDOUT, kind::STDOUT, kind::END_REQUEST]
        );
    }

    #[test]
    fn oversized_body_is_reported_not_kept() {
        let mut conn = Connection::new(LIMITS);
        let (steps, _) = feed(&mut conn, &whole_request(&[b'a'; 100]), &mut Vec::new());
        assert_eq!(steps, [Step::Began, Step::Request]);
        let mut conn = Connection::new(LIMITS);
        let request = whole_request(&[b'a'; 100]);
        let mut at = 0;
        loop {
            let (used, step) = conn.advance(&request[at..], &mut Vec::new());
            at += used;
            if step == Step::Request {
                break;
            }
        }
        assert_eq!(conn.oversized(), Some(100));
        assert!(conn.request().body.len() <= LIMITS.max_body);
    }

    #[test]
    fn abort_unknown_role_and_multiplexing() {
        let mut out = Vec::new();
        let mut conn = Connection::new(LIMITS);
        let mut input = Vec::new();
        record::write_begin_request(&mut input, 1, ROLE_RESPONDER, FLAG_KEEP_CONN);
        record::write_begin_request(&mut input, 2, ROLE_RESPONDER, 0);
        record::write_header(&mut input, kind::ABORT_REQUEST, 1, 0, 0);
        record::write_begin_request(&mut input, 3, 2, 0);
        let (steps, left) = feed(&mut conn, &input, &mut out);
        assert_eq!(steps, [Step::Began, Step::Ended, Step::Ended]);
        assert_eq!(left, 0);
        let mut statuses = Vec::new();
        let mut at = 0;
        while let Ok(Parsed::Complete((h, content), n)) = record::parse_record(&out[at..]) {
            assert_eq!(h.kind, kind::END_REQUEST);
            statuses.push((h.request_id, content[4], content[3]));
            at += n;
        }
        assert_eq!(
            statuses,
            [
                (2, protocol_status::CANT_MPX_CONN, 0),
                (1, protocol_status::REQUEST_COMPLETE, 1),
                (3, protocol_status::UNKNOWN_ROLE, 0),
            ]
        );
        assert!(
            !conn.keep_conn(),
            "the last BEGIN_REQUEST had no FCGI_KEEP_CONN"
        );
    }

    #[test]
    fn out_of_order_and_oversized_params_close() {
        let mut input = Vec::new();
        record::write_begin_request(&mut input, 1, ROLE_RESPONDER, 0);
        record::write_stream(&mut input, kind::STDIN, 1, b"early");
        let mut conn = Connection::new(LIMITS);
        let (steps, _) = feed(&mut conn, &input, &mut Vec::new());
        assert_eq!(
            steps,
            [Step::Began, Step::Close(record::Error::UnexpectedRecord)]
        );

        let mut input = Vec::new();
        record::write_begin_request(&mut input, 1, ROLE_RESPONDER, 0);
        record::write_stream(&mut input, kind::PARAMS, 1, &[0u8; 5000]);
        let mut conn = Connection::new(LIMITS);
        let (steps, _) = feed(&mut conn, &input, &mut Vec::new());
        assert_eq!(
            steps,
            [Step::Began, Step::Close(record::Error::ParamsTooLarge)]
        );

        let mut conn = Connection::new(LIMITS);
        let (steps, _) = feed(&mut conn, &[2, 1, 0, 1, 0, 0, 0, 0], &mut Vec::new());
        assert_eq!(steps, [Step::Close(record::Error::Version)]);
    }

    #[test]
    fn get_values_and_unknown_types_need_no_request() {
        let mut input = Vec::new();
        let mut pairs = Vec::new();
        record::write_pair(&mut pairs, b"FCGI_MAX_CONNS", b"");
        record::write_pair(&mut pairs, b"FCGI_MPXS_CONNS", b"");
        record::write_pair(&mut pairs, b"OTHER", b"");
        record::write_header(&mut input, kind::GET_VALUES, 0, pairs.len() as u16, 0);
        input.extend_from_slice(&pairs);
        record::write_header(&mut input, 42, 0, 0, 0);
        let mut out = Vec::new();
        let mut conn = Connection::new(LIMITS);
        let (steps, left) = feed(&mut conn, &input, &mut out);
        assert!(steps.is_empty() && left == 0);
        let Ok(Parsed::Complete((h, content), n)) = record::parse_record(&out) else {
            panic!("no GET_VALUES_RESULT");
        };
        assert_eq!(h.kind, kind::GET_VALUES_RESULT);
        let got: Vec<_> = Pairs::new(content).map(|p| p.expect("pair")).collect();
        assert_eq!(
            got,
            [
                (b"FCGI_MAX_CONNS".as_slice(), b"7".as_slice()),
                (b"FCGI_MPXS_CONNS".as_slice(), b"0".as_slice())
            ]
        );
        let Ok(Parsed::Complete((h, content), _)) = record::parse_record(&out[n..]) else {
            panic!("no UNKNOWN_TYPE");
        };
        assert_eq!((h.kind, content[0]), (kind::UNKNOWN_TYPE, 42));
    }
}
