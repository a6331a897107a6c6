//! Fuzzes the HTTP/1.1 request decoder: arbitrary bytes, fed whole and split at a
//! fuzzer-chosen point, must never panic, and both feeds must decode to the same requests.
#![no_main]

use bytes::BytesMut;
use kateway_proto::http1::{Decoder, Event, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_head: 8192, max_body: 1 << 16 };

fn run(parts: &[&[u8]]) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut d = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(Event::Request(r))) => out.push((r.path().to_owned(), r.body.to_vec())),
                Ok(Some(Event::Continue)) => {}
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let whole = run(&[&data[1..]]);
    let rest = &data[1..];
    let split = split.min(rest.len());
    let parts = run(&[&rest[..split], &rest[split..]]);
    assert_eq!(whole, parts);
});
