//! Replies: what a handler answers, as a value no transport owns: a status, headers, a body
//! (full bytes, or records that each transport frames its own way), whether the exchange ends
//! the connection, and a hold that the transport keeps until the reply is written (the shards
//! use it for the response-memory budget). [`Reply::error`] is the one place where an error
//! becomes an answer: status from its code, JSON body `{"errmsg","code"}`, `Retry-After` for
//! capacity and disk failures, `Allow` for 405.

use crate::batch;
use crate::json;
use bytes::{Bytes, BytesMut};
use kateway_core::{Delivered, Error, ErrorKind};
use std::any::Any;

/// A header value: bytes or a decimal integer (no formatting on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Bytes),
    Static(&'static str),
    Int(i64),
}

/// How records are framed in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// `[partition i32][offset i64][length i32][payload]`, big-endian (the original's format).
    Binary,
    /// One JSON object per line, payloads in base64.
    NdJson,
}

impl RecordFormat {
    /// The content type of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            RecordFormat::Binary => "application/octet-stream",
            RecordFormat::NdJson => batch::NDJSON,
        }
    }

    /// Appends one record in this format.
    pub fn put(self, out: &mut BytesMut, m: &Delivered) {
        match self {
            RecordFormat::Binary => batch::put_record(out, m.partition, m.offset, &m.value),
            RecordFormat::NdJson => batch::put_json_line(out, m),
        }
    }
}

/// A reply's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (204, 304, and answers whose status says it all).
    Empty,
    /// Bytes of a content type.
    Full {
        content_type: &'static str,
        data: Bytes,
    },
    /// Records, framed by the transport (HTTP/1.1: a chunked body).
    Records {
        format: RecordFormat,
        records: Vec<Delivered>,
    },
}

impl Body {
    /// The body as one piece of bytes and its content type (records framed in their format),
    /// for transports that frame a body by its length; `None` for no body.
    pub fn encode(&self) -> Option<(&'static str, Bytes)> {
        match self {
            Body::Empty => None,
            Body::Full { content_type, data } => Some((content_type, data.clone())),
            Body::Records { format, records } => {
                let size: usize = records.iter().map(|m| m.value.len() + 64).sum();
                let mut out = BytesMut::with_capacity(size);
                for m in records {
                    format.put(&mut out, m);
                }
                Some((format.content_type(), out.freeze()))
            }
        }
    }
}

/// An answer to a command.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, Value)>,
    pub body: Body,
    /// The connection (or stream's connection) should close after this reply.
    pub close: bool,
    /// Kept by the transport until the reply is written, then dropped.
    pub hold: Option<Box<dyn Any>>,
    /// The route that answered ([`crate::command::Command::route_name`]; `"none"` for a
    /// request that named none), the label its latency is counted under.
    pub route: &'static str,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("close", &self.close)
            .finish()
    }
}

impl Reply {
    /// A reply with no body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
            hold: None,
            route: "none",
        }
    }

    /// A reply with a body of `content_type`.
    pub fn bytes(status: u16, content_type: &'static str, data: impl Into<Bytes>) -> Self {
        Self {
            body: Body::Full {
                content_type,
                data: data.into(),
            },
            ..Self::empty(status)
        }
    }

    /// A JSON reply.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Self::bytes(status, "application/json", body)
    }

    /// A reply carrying records.
    pub fn records(status: u16, format: RecordFormat, records: Vec<Delivered>) -> Self {
        Self {
            body: Body::Records { format, records },
            ..Self::empty(status)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: Value) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds a header with an integer value.
    pub fn header_int(self, name: &'static str, value: i64) -> Self {
        self.header(name, Value::Int(value))
    }

    /// The reply for an error: status from the code, `{"errmsg","code"}`, `Retry-After` for
    /// failures that a retry can get past, `Allow` for 405. Errors after which the rest of the
    /// connection's bytes cannot be trusted (malformed HTTP, an oversized head, a timeout) or
    /// that mean "go away" (too many connections) close the connection.
    pub fn error(e: &Error) -> Self {
        let body = json::error_body(e.message(), e.kind().code()).freeze();
        let mut r = Self::json(e.status(), body);
        if let Some(s) = e.retry_after() {
            r = r.header_int("retry-after", s.into());
        }
        if let Some(a) = e.allow() {
            r = r.header("allow", Value::Static(a));
        }
        if e.kind() == ErrorKind::Unauthorized {
            r = r.header(
                "www-authenticate",
                Value::Static("Bearer realm=\"kateway\""),
            );
        }
        if let Some((policy, limit)) = e.rate_limit() {
            r = r
                .header(
                    "ratelimit-policy",
                    Value::Bytes(Bytes::from(policy.to_owned())),
                )
                .header("ratelimit", Value::Bytes(Bytes::from(limit.to_owned())));
        }
        r.close = matches!(
            e.kind(),
            ErrorKind::MalformedHttp
                | ErrorKind::HeadersTooLarge
                | ErrorKind::RequestTimeout
                | ErrorKind::NotImplemented
                | ErrorKind::TooManyConnections
        );
        r
    }

    /// The status class, 1 to 5.
    pub fn class(&self) -> u16 {
        self.status / 100
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Self {
        Reply::error(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_replies_in_one_place() {
        let r = Reply::error(&Error::new(ErrorKind::Overloaded, "busy"));
        assert_eq!(r.status, 429);
        assert_eq!(r.headers, vec![("retry-after", Value::Int(1))]);
        assert!(!r.close);
        let Body::Full { data, .. } = &r.body else {
            panic!()
        };
        assert_eq!(&data[..], b"{\"errmsg\":\"busy\",\"code\":42900}");
        let r = Reply::error(&Error::method_not_allowed("POST"));
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("allow", Value::Static("POST"))]);
        assert!(Reply::error(&Error::new(ErrorKind::MalformedHttp, "x")).close);
        assert_eq!(r.class(), 4);
    }
}
