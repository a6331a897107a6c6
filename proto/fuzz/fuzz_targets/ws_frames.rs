//! Fuzzes the WebSocket frame decoder: arbitrary bytes, fed whole and split at a fuzzer-chosen
//! point, must never panic, must decode the same both ways, and the fragments held must never
//! exceed `max_message`.
#![no_main]

use bytes::BytesMut;
use kateway_proto::ws::{CloseError, Decoder, Limits, Message};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_frame: 200, max_message: 500 };

fn run(parts: &[&[u8]]) -> (Vec<Message>, Option<CloseError>) {
    let mut d = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
        loop {
            let r = d.decode(&mut buf);
            assert!(d.held() <= LIMITS.max_message);
            match r {
                Ok(Some(m)) => {
                    if let Message::Text(t) = &m {
                        assert!(std::str::from_utf8(t).is_ok());
                    }
                    out.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.code, 1002 | 1007 | 1009));
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let rest = &data[1..];
    let split = (data[0] as usize).min(rest.len());
    let whole = run(&[rest]);
    let parts = run(&[&rest[..split], &rest[split..]]);
    assert_eq!(whole, parts);
});
