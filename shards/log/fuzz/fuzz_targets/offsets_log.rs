//! Random bytes as a partition's consumer-offsets log: opening never panics, every committed
//! offset comes from a whole, checksummed record, and the log takes commits afterwards.
#![no_main]

use kateway_log::{Files, OffsetLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    std::fs::write(dir.path().join("offsets.log"), data).unwrap();
    let files = Files::new(4);
    let (mut o, cut) = OffsetLog::open(dir.path(), 1 << 20, &files).expect("open");
    assert!(cut as usize <= data.len());
    let valid = &data[..data.len() - cut as usize];
    for (g, off) in o.groups() {
        let mut enc = bytes::BytesMut::new();
        kateway_log::record::encode(&mut enc, 0, 0, g.as_bytes(), b"", &off.to_be_bytes());
        // The record's own offset field differs; its key and value are in the file.
        assert!(valid.windows(8).any(|w| w == off.to_be_bytes()), "{g}");
    }
    o.commit("a.g", 7);
    o.write_pending().unwrap();
    drop(o);
    let (o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!(o.get("a.g"), Some(7));
});
