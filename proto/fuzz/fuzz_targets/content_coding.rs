//! Fuzzes content coding: an arbitrary body declared gzip must inflate or fail cleanly, never
//! past the limit; arbitrary Accept-Encoding values must parse without panicking.
#![no_main]

use bytes::BytesMut;
use kateway_proto::http1::{Decoder, Event, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_head: 8192, max_body: 1 << 16 };
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (accept, body) = data.split_at(split);
    let mut raw = BytesMut::from(&b"POST /v1/msgs/t/v1 HTTP/1.1\r\ncontent-encoding: gzip\r\naccept-encoding: "[..]);
    raw.extend_from_slice(&accept.iter().map(|&b| if b == b'\r' { b' ' } else { b }).collect::<Vec<_>>());
    raw.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    raw.extend_from_slice(body);
    if let Ok(Some(Event::Request(r))) = Decoder::new(LIMITS).decode(&mut raw) {
        let _ = kateway_proto::gzip::accepted(&r);
        if let Ok(b) = kateway_proto::gzip::body(&r, MAX) {
            assert!(b.len() <= MAX);
        }
    }
});
