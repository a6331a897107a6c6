//! Decoder tests: framing, smuggling defences, limits, pipelining.

use super::*;

const LIMITS: Limits = Limits {
    max_head: 8192,
    max_body: 1 << 20,
};

/// Feeds `input` split at every byte boundary (in two parts) and checks that every split
/// decodes to the same requests as feeding it whole.
fn decode_all_splits(input: &[u8]) -> Vec<(Method, String, String, Vec<u8>, bool)> {
    let mut reference: Option<Vec<_>> = None;
    for split in 0..=input.len() {
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&input[..split], &input[split..]] {
            buf.extend_from_slice(part);
            while let Some(ev) = d.decode(&mut buf).unwrap() {
                if let Event::Request(r) = ev {
                    out.push((
                        r.method,
                        r.path().to_string(),
                        r.query().to_string(),
                        r.body.to_vec(),
                        r.keep_alive,
                    ));
                }
            }
        }
        assert!(buf.is_empty(), "split {split}: leftover {:?}", buf);
        match &reference {
            None => reference = Some(out),
            Some(r) => assert_eq!(r, &out, "split {split}"),
        }
    }
    reference.unwrap()
}

#[test]
fn pipelined_requests_at_every_split() {
    let input = b"POST /v1/msgs/t/v1?key=a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /alive HTTP/1.1\r\nHost: x\r\n\r\n\
POST /v1/msgs/t/v1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    let reqs = decode_all_splits(input);
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].0, Method::Post);
    assert_eq!(reqs[0].1, "/v1/msgs/t/v1");
    assert_eq!(reqs[0].2, "key=a");
    assert_eq!(reqs[0].3, b"hello");
    assert_eq!(reqs[1].1, "/alive");
    assert_eq!(reqs[2].3, b"abc");
    assert!(reqs[2].4);
    assert!(!reqs[3].4);
}

#[test]
fn http10_defaults_to_close() {
    let reqs = decode_all_splits(
        b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(!reqs[0].4);
    assert!(reqs[1].4);
}

#[test]
fn expect_continue_is_signalled_once() {
    let mut d = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(
        &b"POST /v1/msgs/t/v1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"[..],
    );
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Continue))));
    assert!(matches!(d.decode(&mut buf), Ok(None)));
    buf.extend_from_slice(b"abc");
    match d.decode(&mut buf) {
        Ok(Some(Event::Request(r))) => assert_eq!(&r.body[..], b"abc"),
        other => panic!("{other:?}"),
    }
}

fn err_of(input: &[u8]) -> HttpError {
    let mut d = Decoder::new(Limits {
        max_head: 256,
        max_body: 16,
    });
    let mut buf = BytesMut::from(input);
    loop {
        match d.decode(&mut buf) {
            Err(e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
        }
    }
}

#[test]
fn limits_and_malformed_input() {
    assert!(matches!(
        err_of(b"GARBAGE\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    assert!(matches!(
        err_of(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    assert!(matches!(
        err_of(b"POST /v1/msgs/t/v1?key=abc#frag HTTP/1.1\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
    assert_eq!(err_of(big.as_bytes()), HttpError::HeadersTooLarge);
    let partial_big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300));
    assert_eq!(err_of(partial_big.as_bytes()), HttpError::HeadersTooLarge);
    assert_eq!(
        err_of(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n"),
        HttpError::BodyTooLarge
    );
    assert_eq!(
        err_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n"),
        HttpError::BodyTooLarge
    );
    assert!(matches!(
        err_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"),
        HttpError::Malformed(_)
    ));
    assert!(matches!(
        err_of(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    assert!(matches!(
        err_of(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    assert!(matches!(
        err_of(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        HttpError::Malformed(_)
    ));
    assert_eq!(
        err_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
        HttpError::UnsupportedTransferEncoding
    );
    for twice in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"[..],
    ] {
        assert!(matches!(err_of(twice), HttpError::Malformed(_)));
    }
    for bare in [
        &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: x\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: x\r\n\n"[..],
    ] {
        assert!(
            matches!(err_of(bare), HttpError::Malformed(_)),
            "{:?}",
            String::from_utf8_lossy(bare)
        );
    }
}

#[test]
fn header_count_limit_is_its_own_error() {
    let mut d = Decoder::new(LIMITS);
    let ok: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{ok}\r\n").as_bytes());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Event::Request(_)))));
    let over: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{over}\r\n").as_bytes());
    assert_eq!(
        d.decode(&mut buf).unwrap_err(),
        HttpError::TooManyHeaders(MAX_HEADERS)
    );
}

#[test]
fn headers_are_case_insensitive() {
    let mut d = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-Tag: a;b\r\nappid: app1\r\n\r\n"[..]);
    let Ok(Some(Event::Request(r))) = d.decode(&mut buf) else {
        panic!()
    };
    assert_eq!(r.header("x-tag"), Some(&b"a;b"[..]));
    assert_eq!(r.header_str("AppId"), Some("app1"));
    assert_eq!(r.headers().count(), 2);
}

#[test]
fn head_over_limit_in_pieces_is_431() {
    let input = format!("GET /alive HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let mut d = Decoder::new(Limits {
        max_head: 8192,
        max_body: 1 << 20,
    });
    let mut buf = BytesMut::new();
    let mut res = Ok(None);
    for chunk in input.as_bytes().chunks(4096) {
        buf.extend_from_slice(chunk);
        res = d.decode(&mut buf);
        if res.is_err() {
            break;
        }
    }
    assert_eq!(res.unwrap_err(), HttpError::HeadersTooLarge);
}

#[test]
fn a_line_without_an_http_version_is_not_http() {
    let decode = |raw: &[u8]| Decoder::new(LIMITS).decode(&mut BytesMut::from(raw));
    // An invalid HTTP/2 preface (what h2spec sends): no HTTP answer is due.
    assert_eq!(
        decode(b"INVALID CONNECTION PREFACE\r\n\r\n").unwrap_err(),
        HttpError::NotHttp
    );
    // An HTTP request with a version the gateway does not speak still gets its 400.
    assert_eq!(
        decode(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(),
        HttpError::Malformed("unsupported HTTP version")
    );
}
