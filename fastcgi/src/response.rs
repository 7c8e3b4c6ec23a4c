//! The CGI response a handler fills in, and its encoding as FastCGI records.

use crate::record::{self, kind, protocol_status};

const TEXT: &str = "text/plain; charset=utf-8";

/// The CGI response the handler fills in. Reused across requests by each worker.
#[derive(Debug)]
pub struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<u8>,
    /// The response body, sent exactly as is.
    pub body: Vec<u8>,
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

impl Response {
    pub fn new() -> Response {
        Response {
            status: 200,
            content_type: TEXT,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.status = 200;
        self.content_type = TEXT;
        self.headers.clear();
        self.body.clear();
    }

    /// Sets the HTTP status.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Sets the Content-Type; `""` sends none (the handler may add its own header line).
    pub fn set_content_type(&mut self, content_type: &'static str) {
        self.content_type = content_type;
    }

    /// Adds a header line. CR, LF and NUL are dropped from name and value so nothing can
    /// inject a header or end the head early.
    pub fn add_header(&mut self, name: &str, value: &str) {
        let clean = |b: &u8| !matches!(b, b'\r' | b'\n' | 0);
        self.headers
            .extend(name.bytes().filter(|b| clean(b) && *b != b':'));
        self.headers.extend_from_slice(b": ");
        self.headers.extend(value.bytes().filter(clean));
        self.headers.extend_from_slice(b"\r\n");
    }

    /// Sets status, a plain-text body, and its content type in one go (for errors).
    pub fn plain(&mut self, status: u16, text: &str) {
        self.status = status;
        self.content_type = TEXT;
        self.body.clear();
        self.body.extend_from_slice(text.as_bytes());
    }

    /// Appends the CGI head and body (`Status:`, `Content-Type:`, headers, blank line, body).
    #[cfg(test)]
    fn write_cgi(&self, out: &mut Vec<u8>) {
        self.write_head(out);
        out.extend_from_slice(&self.body);
    }

    /// Appends the CGI head: `Status:`, `Content-Type:`, `X-Content-Type-Options: nosniff`,
    /// the handler's headers, a blank line.
    fn write_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Status: ");
        match status_line(self.status) {
            Some(line) => out.extend_from_slice(line.as_bytes()),
            // A status of our own handlers is always in the table; any other is rare.
            None => out.extend_from_slice(format!("{} Status", self.status).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        if !self.content_type.is_empty() {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(self.content_type.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // Every body is what its Content-Type says; a browser must not guess (and, say, run a
        // reflected value as HTML).
        out.extend_from_slice(b"X-Content-Type-Options: nosniff\r\n");
        out.extend_from_slice(&self.headers);
        out.extend_from_slice(b"\r\n");
    }

    /// Gives back memory one unusual response grew.
    pub(crate) fn shrink(&mut self) {
        if self.body.capacity() > 64 * 1024 {
            self.body.clear();
            self.body.shrink_to(4096);
        }
    }
}

/// Appends `response` for request `id` to `out`: its CGI text as STDOUT, the empty STDOUT, and
/// END_REQUEST. `head` is scratch space (cleared). Head and body go out as two runs of STDOUT
/// records, so the body is copied once, straight into the records.
pub(crate) fn write_response(out: &mut Vec<u8>, head: &mut Vec<u8>, id: u16, response: &Response) {
    head.clear();
    response.write_head(head);
    record::write_stream(out, kind::STDOUT, id, head);
    record::write_stream(out, kind::STDOUT, id, &response.body);
    record::write_stream_end(out, kind::STDOUT, id);
    record::write_end_request(out, id, 0, protocol_status::REQUEST_COMPLETE);
}

/// `200 OK` and the other statuses a responder commonly sends.
fn status_line(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "200 OK",
        204 => "204 No Content",
        302 => "302 Found",
        400 => "400 Bad Request",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        413 => "413 Payload Too Large",
        429 => "429 Too Many Requests",
        500 => "500 Internal Server Error",
        502 => "502 Bad Gateway",
        503 => "503 Service Unavailable",
        504 => "504 Gateway Timeout",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgi(response: &Response) -> String {
        let mut out = Vec::new();
        response.write_cgi(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn head_and_body() {
        let mut r = Response::new();
        r.set_content_type("application/xml");
        r.add_header("X-A\r\n:", "b\r\nc\0");
        r.body.extend_from_slice(b"<xml/>");
        assert_eq!(
            cgi(&r),
            "Status: 200 OK\r\nContent-Type: application/xml\r\nX-Content-Type-Options: nosniff\r\nX-A: bc\r\n\r\n<xml/>"
        );
        r.plain(202, "later");
        assert!(cgi(&r).starts_with("Status: 202 Status\r\nContent-Type: text/plain"));
    }

    #[test]
    fn empty_content_type_sends_none() {
        let mut r = Response::new();
        r.set_status(302);
        r.set_content_type("");
        r.add_header("Location", "http://x/");
        assert_eq!(
            cgi(&r),
            "Status: 302 Found\r\nX-Content-Type-Options: nosniff\r\nLocation: http://x/\r\n\r\n"
        );
    }
}
