//! A small blocking FastCGI client: one request at a time over any stream. Used by
//! `weixin-fcgi send`, the tests and the benchmarks to talk to a responder directly.

use crate::record::{self, Parsed, kind};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Largest response accepted (a reply is a few KiB; this only bounds a misbehaving peer).
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// A parsed CGI response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientResponse {
    /// From the `Status:` header (200 when absent).
    pub status: u16,
    /// Header lines other than `Status:`, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// FCGI_STDERR content, if any.
    pub stderr: Vec<u8>,
    /// END_REQUEST appStatus and protocolStatus.
    pub app_status: u32,
    pub protocol_status: u8,
}

impl ClientResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A connected stream to a responder.
pub enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection {
    /// Connects to `unix:PATH`, a path containing `/`, or `host:port`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Connection> {
        let conn = if let Some(path) = addr.strip_prefix("unix:") {
            Connection::Unix(UnixStream::connect(path)?)
        } else if addr.contains('/') {
            Connection::Unix(UnixStream::connect(addr)?)
        } else {
            Connection::Tcp(TcpStream::connect(addr)?)
        };
        match &conn {
            Connection::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
            Connection::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
        }
        Ok(conn)
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes a whole RESPONDER request (BEGIN_REQUEST, PARAMS, STDIN) into bytes.
pub fn encode_request(
    request_id: u16,
    params: &[(&str, &[u8])],
    body: &[u8],
    keep_conn: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1024);
    let flags = if keep_conn { record::FLAG_KEEP_CONN } else { 0 };
    record::write_begin_request(&mut out, request_id, record::ROLE_RESPONDER, flags);
    let mut stream = Vec::with_capacity(512);
    for (name, value) in params {
        record::write_pair(&mut stream, name.as_bytes(), value);
    }
    record::write_stream(&mut out, kind::PARAMS, request_id, &stream);
    record::write_stream_end(&mut out, kind::PARAMS, request_id);
    record::write_stream(&mut out, kind::STDIN, request_id, body);
    record::write_stream_end(&mut out, kind::STDIN, request_id);
    out
}

/// Sends one request and reads its response up to END_REQUEST.
pub fn request<S: Read + Write>(
    stream: &mut S,
    request_id: u16,
    params: &[(&str, &[u8])],
    body: &[u8],
    keep_conn: bool,
) -> io::Result<ClientResponse> {
    stream.write_all(&encode_request(request_id, params, body, keep_conn))?;
    read_response(stream, request_id)
}

/// Reads records until END_REQUEST for `request_id`, and parses the CGI response.
pub fn read_response<S: Read>(stream: &mut S, request_id: u16) -> io::Result<ClientResponse> {
    let mut buf = Vec::with_capacity(8192);
    let mut stdout = Vec::new();
    let mut response = ClientResponse::default();
    let mut chunk = [0u8; 8192];
    loop {
        while let Parsed::Complete((h, content), used) =
            record::parse_record(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if h.request_id == request_id {
                match h.kind {
                    kind::STDOUT => stdout.extend_from_slice(content),
                    kind::STDERR => response.stderr.extend_from_slice(content),
                    kind::END_REQUEST => {
                        let b = content.get(..5).ok_or_else(|| bad("short END_REQUEST"))?;
                        response.app_status = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        response.protocol_status = b[4];
                        parse_cgi(&stdout, &mut response)?;
                        return Ok(response);
                    }
                    _ => {}
                }
            }
            buf.drain(..used);
        }
        if buf.len() + stdout.len() > MAX_RESPONSE {
            return Err(bad("response too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before END_REQUEST",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_cgi(stdout: &[u8], response: &mut ClientResponse) -> io::Result<()> {
    response.status = 200;
    if stdout.is_empty() {
        return Ok(());
    }
    // The head ends at the first blank line, whichever line ending it uses.
    let crlf = find(stdout, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(stdout, b"\n\n").map(|i| (i, 2));
    let (at, sep) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Err(bad("CGI response without a blank line after the headers")),
    };
    let (head, body) = (&stdout[..at], &stdout[at + sep..]);
    let head = std::str::from_utf8(head).map_err(|_| bad("CGI headers are not UTF-8"))?;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("CGI header line without ':'"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code = value.split(' ').next().unwrap_or("");
            response.status = code.parse().map_err(|_| bad("bad Status header"))?;
        } else {
            response.headers.push((name.to_string(), value.to_string()));
        }
    }
    response.body = body.to_vec();
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgi_heads() {
        let mut r = ClientResponse::default();
        parse_cgi(
            b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno",
            &mut r,
        )
        .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.body, b"no");
        let mut r = ClientResponse::default();
        parse_cgi(b"Content-Type: a\n\nbody\r\n\r\n", &mut r).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"body\r\n\r\n"[..]));
        assert!(parse_cgi(b"no blank line", &mut ClientResponse::default()).is_err());
    }
}
