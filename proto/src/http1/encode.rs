//! HTTP/1.1 response encoding straight into the connection's write buffer. No intermediate
//! header map: a [`Response`] writes the status line, then each header as it is added, then the
//! framing headers and the body. [`write_reply`] frames a transport-neutral
//! [`crate::reply::Reply`] this way.

use crate::reply::{Body, Reply, Value};
use bytes::{BufMut, BytesMut};

/// The reason phrase for the statuses the gateway sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A response being written into `out`. Add headers, then finish with one of the `body*` calls.
pub struct Response<'a> {
    out: &'a mut BytesMut,
    status: u16,
}

impl<'a> Response<'a> {
    /// Starts a response: writes the status line and the `Server` and `Date` headers.
    pub fn new(out: &'a mut BytesMut, status: u16, date: &[u8]) -> Self {
        out.reserve(256);
        out.put_slice(b"HTTP/1.1 ");
        put_u64(out, status as u64);
        out.put_u8(b' ');
        out.put_slice(reason(status).as_bytes());
        out.put_slice(b"\r\nserver: kateway\r\ndate: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
        Self { out, status }
    }

    /// Adds a header.
    pub fn header(self, name: &str, value: &[u8]) -> Self {
        self.out.put_slice(name.as_bytes());
        self.out.put_slice(b": ");
        self.out.put_slice(value);
        self.out.put_slice(b"\r\n");
        self
    }

    /// Adds a header with a decimal integer value.
    pub fn header_int(self, name: &str, value: i64) -> Self {
        self.out.put_slice(name.as_bytes());
        self.out.put_slice(b": ");
        put_i64(self.out, value);
        self.out.put_slice(b"\r\n");
        self
    }

    /// Adds `connection: close` when `close` is set.
    pub fn close_if(self, close: bool) -> Self {
        if close {
            self.out.put_slice(b"connection: close\r\n");
        }
        self
    }

    /// Finishes with a body of known length (none for 1xx/204/304).
    pub fn body(self, content_type: &str, body: &[u8]) {
        let no_body = self.status == 204 || self.status == 304 || self.status < 200;
        if !no_body {
            if !body.is_empty() {
                self.out.put_slice(b"content-type: ");
                self.out.put_slice(content_type.as_bytes());
                self.out.put_slice(b"\r\n");
            }
            self.out.put_slice(b"content-length: ");
            put_u64(self.out, body.len() as u64);
            self.out.put_slice(b"\r\n");
        }
        self.out.put_slice(b"\r\n");
        if !no_body {
            self.out.put_slice(body);
        }
    }

    /// Finishes the head of a response to `HEAD`: the headers a `GET` would get, no body.
    pub fn head_only(self, content_type: &str, len: usize) {
        if len > 0 {
            self.out.put_slice(b"content-type: ");
            self.out.put_slice(content_type.as_bytes());
            self.out.put_slice(b"\r\n");
        }
        self.out.put_slice(b"content-length: ");
        put_u64(self.out, len as u64);
        self.out.put_slice(b"\r\n\r\n");
    }

    /// Finishes the head of a chunked response; the caller appends chunks with
    /// [`super::chunked::encode_chunk`] and ends with [`super::chunked::encode_last`].
    pub fn chunked(self, content_type: &str) {
        self.out.put_slice(b"content-type: ");
        self.out.put_slice(content_type.as_bytes());
        self.out
            .put_slice(b"\r\ntransfer-encoding: chunked\r\n\r\n");
    }
}

/// Writes `reply` as an HTTP/1.1 response: records become one chunk of a chunked body; `head`
/// (a `HEAD` request) writes the head alone; `close` adds `connection: close`. Returns the
/// bytes written.
pub fn write_reply(
    out: &mut BytesMut,
    reply: &Reply,
    date: &[u8],
    head: bool,
    close: bool,
) -> usize {
    let start = out.len();
    let mut r = Response::new(out, reply.status, date);
    for (name, v) in &reply.headers {
        r = match v {
            Value::Bytes(b) => r.header(name, b),
            Value::Static(s) => r.header(name, s.as_bytes()),
            Value::Int(i) => r.header_int(name, *i),
        };
    }
    let r = r.close_if(close);
    match &reply.body {
        Body::Empty => r.body("", b""),
        Body::Full { content_type, data } if head => r.head_only(content_type, data.len()),
        Body::Full { content_type, data } => r.body(content_type, data),
        Body::Records { format, .. } => {
            r.chunked(format.content_type());
            if !head {
                let (_, body) = reply.body.encode().unwrap_or_default();
                super::chunked::encode_chunk(out, &body);
                super::chunked::encode_last(out);
            }
        }
    }
    out.len() - start
}

/// Writes `100 Continue`.
pub fn write_continue(out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Appends the decimal form of `v`.
pub fn put_u64(out: &mut BytesMut, v: u64) {
    let mut b = [0u8; 20];
    let n = write_u64(&mut b, v);
    out.put_slice(&b[..n]);
}

/// Writes the decimal form of `v` at the start of `dst` (20 bytes hold any) and answers its
/// length: two digits at a time from a table (as `itoa` does), straight into place.
pub fn write_u64(dst: &mut [u8], v: u64) -> usize {
    let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    let (mut v, mut i) = (v, len);
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        dst[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        dst[i - 2..i].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        dst[i - 1] = b'0' + v as u8;
    }
    len
}

/// "00" to "99", back to back.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Appends the decimal form of `v`.
pub fn put_i64(out: &mut BytesMut, v: i64) {
    if v < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_error_status_has_its_reason_phrase() {
        for k in kateway_core::ErrorKind::ALL {
            let status = (k.code() / 100) as u16;
            assert_ne!(reason(status), "Unknown", "{k:?} ({status})");
        }
    }

    use super::*;

    #[test]
    fn encodes_head_and_body() {
        let mut out = BytesMut::new();
        Response::new(&mut out, 201, b"Mon, 30 Nov 2026 00:00:00 GMT")
            .header_int("x-offset", -1)
            .close_if(true)
            .body("application/json", b"{}");
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.starts_with("HTTP/1.1 201 Created\r\nserver: kateway\r\n"));
        assert!(s.contains("x-offset: -1\r\n"));
        assert!(s.contains("connection: close\r\n"));
        assert!(s.ends_with("content-length: 2\r\n\r\n{}"));
        let mut out = BytesMut::new();
        Response::new(&mut out, 204, b"d").body("x", b"ignored");
        assert!(out.ends_with(b"date: d\r\n\r\n"));
        let mut n = BytesMut::new();
        put_u64(&mut n, 0);
        put_i64(&mut n, -42);
        put_u64(&mut n, u64::MAX);
        assert_eq!(&n[..], b"0-4218446744073709551615");
        // Every length of number, and each side of every power of ten.
        let mut v = 1u64;
        for _ in 0..20 {
            for x in [v - 1, v, v + 1, v.wrapping_mul(7) / 3, v / 10 * 9 + 9] {
                let mut n = BytesMut::new();
                put_u64(&mut n, x);
                assert_eq!(&n[..], x.to_string().as_bytes());
            }
            v = v.saturating_mul(10);
        }
    }
}
