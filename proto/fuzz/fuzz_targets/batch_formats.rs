//! Fuzzes the batch publish parsers and the subscribe record decoder: never panic, and every
//! parsed binary batch re-encodes to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use kateway_proto::batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let _ = batch::parse_ndjson(&body, 1000, 1 << 16);
    if let Ok(items) = batch::parse_binary(&body, 1000, 1 << 16, 256) {
        let mut out = BytesMut::new();
        for it in &items {
            batch::encode_binary(&mut out, it.key.as_deref(), &it.value);
        }
        assert_eq!(&out[..], data);
    }
    let _ = batch::decode_records(data);
});
