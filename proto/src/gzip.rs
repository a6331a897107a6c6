//! Content coding: gzip request bodies (`Content-Encoding: gzip`), inflated with a limit on the
//! inflated size so that a small compressed body cannot become a large one (a decompression
//! bomb answers 413 after at most the limit plus one read), and gzip replies for clients that
//! accept them (`Accept-Encoding`) when the body is large enough to gain.

use crate::command::Parts;
use crate::reply::{Body, Reply, Value};
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use kateway_core::{Error, ErrorKind};
use std::borrow::Cow;
use std::io::{Read, Write};

/// The request body, inflated if it is gzip-coded; at most `max` bytes once inflated, and at
/// most `max` bytes as sent when it is not coded (413 either way).
pub fn body<'a>(parts: &'a impl Parts, max: usize) -> Result<Cow<'a, Bytes>, Error> {
    let raw = parts.body();
    let identity = |raw: &'a Bytes| {
        if raw.len() > max {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!("the body is larger than {max} bytes"),
            ));
        }
        Ok(Cow::Borrowed(raw))
    };
    let coding = match parts.header("content-encoding") {
        None => return identity(raw),
        Some(c) => c.trim_ascii(),
    };
    if coding.eq_ignore_ascii_case(b"identity") {
        return identity(raw);
    }
    if !coding.eq_ignore_ascii_case(b"gzip") && !coding.eq_ignore_ascii_case(b"x-gzip") {
        return Err(Error::new(
            ErrorKind::UnsupportedEncoding,
            format!(
                "unsupported Content-Encoding {:?}: use gzip or identity",
                String::from_utf8_lossy(coding)
            ),
        ));
    }
    let mut out = Vec::with_capacity((raw.len() * 4).min(max));
    // Every member (RFC 1952 §2.2: a gzip stream is a series of members); bytes after the last
    // member that are no member are an error, not ignored.
    let read = MultiGzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(e) => Err(Error::new(
            ErrorKind::InvalidBody,
            format!("the gzip body cannot be inflated: {e}"),
        )),
        Ok(n) if n > max => Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("the gzip body inflates to more than {max} bytes"),
        )),
        Ok(_) => Ok(Cow::Owned(Bytes::from(out))),
    }
}

/// Whether the client accepts gzip replies: `gzip`, `x-gzip` or `*` in `Accept-Encoding`
/// without `q=0`.
pub fn accepted(parts: &impl Parts) -> bool {
    let Some(v) = parts.header("accept-encoding") else {
        return false;
    };
    let Ok(v) = std::str::from_utf8(v) else {
        return false;
    };
    // (coding, acceptable) for each item; `q=0` refuses. A coding named refuses or accepts on
    // its own; `*` speaks only for codings not named (RFC 9110 §12.5.3).
    let items = v.split(',').map(|item| {
        let mut it = item.split(';');
        let coding = it.next().unwrap_or("").trim();
        let refused = it.any(|p| {
            let p = p.trim();
            let q = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="));
            q.and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding, !refused)
    });
    let mut star = None;
    let mut named = None;
    for (coding, ok) in items {
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            named = Some(named.unwrap_or(true) && ok);
        } else if coding == "*" {
            star = Some(ok);
        }
    }
    named.or(star).unwrap_or(false)
}

/// A reply's body being gzip-coded, a piece at a time (so a transport can let other work run
/// between pieces of a large body).
pub struct Gzip {
    enc: GzEncoder<Vec<u8>>,
    content_type: &'static str,
    data: Bytes,
    done: usize,
}

impl Gzip {
    /// Starts coding `reply` if it succeeded and its body has at least `min` bytes (0: never).
    pub fn of(reply: &Reply, min: usize) -> Option<Self> {
        if min == 0 || reply.status / 100 != 2 {
            return None;
        }
        let (content_type, data) = reply.body.encode()?;
        if data.len() < min {
            return None;
        }
        Some(Self {
            enc: GzEncoder::new(Vec::with_capacity(data.len() / 3), Compression::fast()),
            content_type,
            data,
            done: 0,
        })
    }

    /// Codes up to `n` more bytes of the body; true once all of it is in.
    pub fn step(&mut self, n: usize) -> bool {
        let end = self.done.saturating_add(n).min(self.data.len());
        // Writing into a Vec cannot fail.
        let _ = self.enc.write_all(&self.data[self.done..end]);
        self.done = end;
        self.done == self.data.len()
    }

    /// `reply` with the coded body and its `content-encoding` (unchanged if coding failed).
    pub fn into_reply(self, mut reply: Reply) -> Reply {
        let Ok(zipped) = self.enc.finish() else {
            return reply;
        };
        reply.body = Body::Full {
            content_type: self.content_type,
            data: Bytes::from(zipped),
        };
        reply
            .header("content-encoding", Value::Static("gzip"))
            .header("vary", Value::Static("accept-encoding"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{Decoder, Event, Limits, Request};
    use bytes::BytesMut;

    fn request(head: &str, body: &[u8]) -> Request {
        let mut raw =
            BytesMut::from(format!("{head}content-length: {}\r\n\r\n", body.len()).as_bytes());
        raw.extend_from_slice(body);
        let limits = Limits {
            max_head: 8192,
            max_body: 1 << 20,
        };
        match Decoder::new(limits).decode(&mut raw).unwrap() {
            Some(Event::Request(r)) => r,
            _ => panic!("no request"),
        }
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bodies_inflate_within_the_limit_and_bombs_are_refused() {
        let plain = b"hello hello hello".repeat(10);
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: gzip\r\n", &gz(&plain));
        assert_eq!(&body(&r, 1000).unwrap()[..], &plain[..]);
        // 64 MiB of zeros compress to about 64 KiB: refused once the inflated size passes
        // the limit, without inflating the rest.
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100 << 10);
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: gzip\r\n", &bomb);
        let e = body(&r, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
        // Members one after another are all inflated; bytes after them that are no member
        // are an error.
        let mut two = gz(b"hello ");
        two.extend(gz(b"world"));
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: gzip\r\n", &two);
        assert_eq!(&body(&r, 1000).unwrap()[..], b"hello world");
        let mut tail = gz(b"hello");
        tail.extend_from_slice(b"GARBAGE");
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: gzip\r\n", &tail);
        assert_eq!(body(&r, 1000).unwrap_err().kind(), ErrorKind::InvalidBody);
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: gzip\r\n", b"not gzip");
        assert_eq!(body(&r, 1000).unwrap_err().kind(), ErrorKind::InvalidBody);
        let r = request("POST / HTTP/1.1\r\ncontent-encoding: br\r\n", b"x");
        assert_eq!(body(&r, 1000).unwrap_err().status(), 415);
        let r = request("POST / HTTP/1.1\r\n", b"plain");
        assert!(matches!(body(&r, 1000).unwrap(), Cow::Borrowed(_)));
        // The limit holds for a body that is not coded, too.
        for head in [
            "POST / HTTP/1.1\r\n",
            "POST / HTTP/1.1\r\ncontent-encoding: identity\r\n",
        ] {
            let r = request(head, &[b' '; 1001]);
            assert_eq!(
                body(&r, 1000).unwrap_err().kind(),
                ErrorKind::PayloadTooLarge
            );
            let r = request(head, &[b' '; 1000]);
            assert!(body(&r, 1000).is_ok());
        }
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        let accepts = |v: &str| {
            accepted(&request(
                &format!("GET / HTTP/1.1\r\naccept-encoding: {v}\r\n"),
                b"",
            ))
        };
        assert!(accepts("gzip"));
        assert!(accepts("br, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(
            !accepts("gzip;q=0.0, *"),
            "* does not cover a coding refused by name"
        );
        assert!(!accepts("*;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepted(&request("GET / HTTP/1.1\r\n", b"")));
    }

    /// `reply` coded all at once, when [`Gzip::of`] would code it.
    fn compress(reply: Reply, min: usize) -> Reply {
        match Gzip::of(&reply, min) {
            None => reply,
            Some(mut g) => {
                g.step(usize::MAX);
                g.into_reply(reply)
            }
        }
    }

    #[test]
    fn large_successful_replies_are_compressed() {
        let big = Reply::json(200, vec![b'a'; 5000]);
        let z = compress(big, 1024);
        assert!(z
            .headers
            .contains(&("content-encoding", Value::Static("gzip"))));
        let Body::Full { data, content_type } = &z.body else {
            panic!()
        };
        assert_eq!(*content_type, "application/json");
        let mut out = Vec::new();
        MultiGzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, vec![b'a'; 5000]);
        assert!(compress(Reply::json(200, vec![b'a'; 100]), 1024)
            .headers
            .is_empty());
        assert!(compress(Reply::json(400, vec![b'a'; 5000]), 1024)
            .headers
            .is_empty());
        assert!(compress(Reply::json(200, vec![b'a'; 5000]), 0)
            .headers
            .is_empty());
    }
}
