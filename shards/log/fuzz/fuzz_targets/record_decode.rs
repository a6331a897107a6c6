//! The record decoder on random bytes at a random position: never panics, never claims more
//! than the buffer holds, and a record it accepts re-encodes to exactly the bytes it read.
#![no_main]

use bytes::{Bytes, BytesMut};
use kateway_log::record::{self, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let pos = data[0] as usize % data.len();
    let buf = Bytes::copy_from_slice(data);
    match record::decode(&buf, pos) {
        Decoded::Record(r, n) => {
            assert!(pos + n <= data.len());
            let mut enc = BytesMut::new();
            record::encode(&mut enc, r.offset, r.timestamp, &r.key, &r.tags, &r.value);
            assert_eq!(&enc[..], &data[pos..pos + n]);
        }
        Decoded::Incomplete(need) => assert!(need <= record::MAX_RECORD),
        Decoded::Corrupt(_) => {}
    }
});
