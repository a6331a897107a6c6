//! HTTP/1.1 request decoding. [`Decoder::decode`] takes bytes from the connection's read buffer
//! and yields [`Event`]s: a complete [`Request`] (head plus whole body), or a request to send
//! `100 Continue`. It keeps state between calls, so any split of the input decodes the same.
//!
//! Limits: a head over `max_head` bytes is [`HttpError::HeadersTooLarge`] and one with more than
//! [`MAX_HEADERS`] fields [`HttpError::TooManyHeaders`] (both 431); a body over `max_body` is
//! [`HttpError::BodyTooLarge`] (413), detected from `Content-Length` before the body is read;
//! anything malformed is [`HttpError::Malformed`] (400).
//!
//! Strictness, against request smuggling: requests with both `Content-Length` and
//! `Transfer-Encoding`, with conflicting lengths, or with `chunked` applied more than once are
//! rejected (RFC 9112 §6.1, §6.3). Lines of the head must end in CRLF: RFC 9112 §2.2 lets a
//! recipient accept a bare LF, but a gateway that reads line ends differently from a proxy in
//! front of it is how smuggling starts, so a bare LF is a 400.

use super::chunked::{ChunkedDecoder, ChunkedError};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// The most header fields a request may carry.
pub const MAX_HEADERS: usize = 100;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head (request line and headers).
    pub max_head: usize,
    /// Largest body.
    pub max_body: usize,
}

/// Request methods the gateway distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other,
}

impl Method {
    /// The method of a request-line token (any protocol's method name).
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// A decoding failure; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 400: the request is not valid HTTP/1.1.
    Malformed(&'static str),
    /// 431: the head is over the limit.
    HeadersTooLarge,
    /// 431: more header fields than the limit (which it names).
    TooManyHeaders(usize),
    /// 413: the body is over the limit.
    BodyTooLarge,
    /// 501: a transfer coding other than chunked.
    UnsupportedTransferEncoding,
    /// The first line is no HTTP request line at all (no `HTTP/` version): the peer speaks
    /// another protocol (an invalid HTTP/2 preface, say), so it gets no HTTP/1.1 answer.
    NotHttp,
}

impl HttpError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::NotHttp => 400,
            HttpError::HeadersTooLarge | HttpError::TooManyHeaders(_) => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedTransferEncoding => 501,
        }
    }
}

/// A complete request. Header names and values are ranges into `head`, so decoding a request
/// allocates only the header table.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// HTTP minor version (0 or 1).
    pub minor: u8,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    head: Bytes,
    path: Range<usize>,
    /// After the `?`; empty when there is none.
    query: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The whole request body.
    pub body: Bytes,
}

impl Request {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.ascii(self.path.clone())
    }

    /// The raw query string (after `?`), or "".
    pub fn query(&self) -> &str {
        self.ascii(self.query.clone())
    }

    fn ascii(&self, r: Range<usize>) -> &str {
        // The target was checked to be ASCII when the head was parsed.
        std::str::from_utf8(&self.head[r]).unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.head[v.clone()])
    }

    /// The first value of header `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header as `(name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }
}

impl crate::command::Parts for Request {
    fn method(&self) -> Method {
        self.method
    }
    fn path(&self) -> &str {
        Request::path(self)
    }
    fn query(&self) -> &str {
        Request::query(self)
    }
    fn header_first(&self, name: &str) -> (Option<&[u8]>, bool) {
        let mut first = None;
        for (n, v) in &self.headers {
            if self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()) {
                if first.is_some() {
                    return (first, true);
                }
                first = Some(&self.head[v.clone()]);
            }
        }
        (first, false)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        Request::header(self, name)
    }
    fn body(&self) -> &Bytes {
        &self.body
    }
}

/// What the decoder produced.
#[derive(Debug)]
pub enum Event {
    /// The client sent `Expect: 100-continue` and is waiting; write `100 Continue`.
    Continue,
    /// A complete request.
    Request(Request),
}

#[derive(Debug)]
enum Body {
    Length(usize),
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
struct Pending {
    req: Request,
    body: Body,
    expect_continue: bool,
}

/// Decoder state for one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    pending: Option<Pending>,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            pending: None,
        }
    }

    /// Enforces `limits` from the next request on (a configuration reload); the request being
    /// decoded, if any, keeps the limits it started under.
    pub fn set_limits(&mut self, limits: Limits) {
        if self.pending.is_none() {
            self.limits = limits;
        }
    }

    /// Whether part of a request has been received (the head, or some of its bytes).
    pub fn in_progress(&self, buf: &BytesMut) -> bool {
        self.pending.is_some() || !buf.is_empty()
    }

    /// Bytes of a chunked body decoded so far and held here until the body is complete (the
    /// head and a `Content-Length` body stay in the caller's buffer).
    pub fn held(&self) -> usize {
        match &self.pending {
            Some(Pending {
                body: Body::Chunked(c),
                ..
            }) => c.held(),
            _ => 0,
        }
    }

    /// Decodes the next event from `buf`, consuming the bytes it used. `Ok(None)` means more
    /// input is needed. After an error the connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, HttpError> {
        if self.pending.is_none() {
            // Tolerate CRLFs between pipelined requests (RFC 9112 §2.2).
            while buf.len() >= 2 && &buf[..2] == b"\r\n" {
                let _ = buf.split_to(2);
            }
            match self.decode_head(buf)? {
                Some(p) => self.pending = Some(p),
                None => return Ok(None),
            }
        }
        let p = self.pending.as_mut().expect("pending request");
        let done = match &mut p.body {
            Body::Length(n) => {
                if buf.len() >= *n {
                    p.req.body = buf.split_to(*n).freeze();
                    true
                } else {
                    false
                }
            }
            Body::Chunked(c) => match c.decode(buf) {
                Ok(true) => {
                    p.req.body = c.take_body().freeze();
                    true
                }
                Ok(false) => false,
                Err(ChunkedError::TooLarge) => return Err(HttpError::BodyTooLarge),
                Err(ChunkedError::Invalid(m)) => return Err(HttpError::Malformed(m)),
            },
        };
        if done {
            let p = self.pending.take().expect("pending request");
            return Ok(Some(Event::Request(p.req)));
        }
        if p.expect_continue {
            p.expect_continue = false;
            return Ok(Some(Event::Continue));
        }
        Ok(None)
    }

    fn decode_head(&mut self, buf: &mut BytesMut) -> Result<Option<Pending>, HttpError> {
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hdrs);
        let n = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > self.limits.max_head {
                    return Err(HttpError::HeadersTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders(MAX_HEADERS))
            }
            Err(httparse::Error::Version) => {
                let line = buf[..].split(|&b| b == b'\n').next().unwrap_or(&[]);
                let version = line.trim_ascii().rsplit(|&b| b == b' ').next();
                if !version.is_some_and(|v| v.starts_with(b"HTTP/")) {
                    return Err(HttpError::NotHttp);
                }
                return Err(HttpError::Malformed("unsupported HTTP version"));
            }
            Err(_) => return Err(HttpError::Malformed("malformed request head")),
        };
        if n > self.limits.max_head {
            return Err(HttpError::HeadersTooLarge);
        }
        if has_bare_lf(&buf[..n]) {
            return Err(HttpError::Malformed("bare LF line ending (use CRLF)"));
        }
        let base = buf.as_ptr() as usize;
        let range_of = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let method = Method::parse(req.method.unwrap_or(""));
        let minor = req.version.unwrap_or(1);
        let path = req.path.unwrap_or("");
        if !path.starts_with('/') && path != "*" {
            return Err(HttpError::Malformed("request target must be origin-form"));
        }
        if path.contains('#') {
            // A fragment is never sent (RFC 9110 §4.2.5): taking it as data would put it into
            // a key or a name.
            return Err(HttpError::Malformed("request target must not contain '#'"));
        }
        let target = range_of(path.as_bytes());
        let (path, query) = match path.find('?') {
            Some(i) => (
                target.start..target.start + i,
                target.start + i + 1..target.end,
            ),
            None => (target.clone(), target.end..target.end),
        };
        let mut headers = Vec::with_capacity(req.headers.len());
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value;
            headers.push((range_of(name), range_of(value)));
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = std::str::from_utf8(value)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or(HttpError::Malformed("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != v) {
                    return Err(HttpError::Malformed("conflicting Content-Length"));
                }
                content_length = Some(v);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                let codings: Vec<&str> = v.split(',').map(str::trim).collect();
                if codings.iter().any(|&c| c != "chunked") {
                    return Err(HttpError::UnsupportedTransferEncoding);
                }
                if has_te || codings.len() > 1 {
                    return Err(HttpError::Malformed(
                        "chunked transfer coding applied twice",
                    ));
                }
                has_te = true;
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for tok in value.split(|&b| b == b',') {
                    let tok = tok.trim_ascii();
                    if tok.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = minor >= 1;
                } else {
                    return Err(HttpError::Malformed("unsupported Expect"));
                }
            }
        }
        if has_te && content_length.is_some() {
            return Err(HttpError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if has_te && minor == 0 {
            return Err(HttpError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        if let Some(len) = content_length {
            if len > self.limits.max_body {
                return Err(HttpError::BodyTooLarge);
            }
        }
        let keep_alive = if minor == 0 {
            conn_keep_alive && !conn_close
        } else {
            !conn_close
        };
        let head = buf.split_to(n).freeze();
        let body = if chunked {
            Body::Chunked(ChunkedDecoder::new(self.limits.max_body))
        } else {
            Body::Length(content_length.unwrap_or(0))
        };
        let no_body = matches!(body, Body::Length(0));
        Ok(Some(Pending {
            req: Request {
                method,
                minor,
                keep_alive,
                head,
                path,
                query,
                headers,
                body: Bytes::new(),
            },
            body,
            expect_continue: expect_continue && !no_body,
        }))
    }
}

/// Whether a line of the head ends in a bare LF (one not preceded by CR).
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

#[cfg(test)]
mod tests;
