//! Fuzzes the HTTP/2 control-frame scanner and the event-id parser: arbitrary bytes, fed whole
//! and split at a fuzzer-chosen point, must give the same verdict and never panic.
#![no_main]

use kateway_proto::h2scan::Scanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kateway_proto::sse::parse_id(data);
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let mut whole = Scanner::new(10, 20);
    let a = whole.feed(data, 0);
    let mut parts = Scanner::new(10, 20);
    let b = parts.feed(&data[..split], 0) | parts.feed(&data[split..], 0);
    assert_eq!(a, b);
});
