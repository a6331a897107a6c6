//! Random bytes as a partition's consumer-offsets log: opening never panics, every committed
//! offset (and the high-water mark) comes from a whole, checksummed record of the input, the
//! damage reported lies within the input, and the log takes commits afterwards.
#![no_main]

use kateway_log::{DamageKind, Files, OffsetLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    std::fs::write(dir.path().join("offsets.log"), data).unwrap();
    let files = Files::new(4);
    let (mut o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).expect("open");
    let mut last_end = 0;
    for d in &damage {
        assert_eq!(d.kind, DamageKind::OffsetsLog);
        assert!(d.position >= last_end && d.bytes > 0, "{damage:?}");
        last_end = d.position + d.bytes;
        assert!(last_end as usize <= data.len(), "{damage:?}");
    }
    let in_input = |key: &[u8], off: u64| {
        // The record's own offset field is unknown; its key and value are in the input.
        let mut kv = key.to_vec();
        kv.extend_from_slice(&off.to_be_bytes());
        data.windows(kv.len()).any(|w| w == &kv[..])
    };
    for (g, off) in o.groups() {
        // (A key that is not UTF-8 is read lossily: only the value is certain to match.)
        assert!(data.windows(8).any(|w| w == off.to_be_bytes()), "{g}");
    }
    assert!(o.held() == 0 || in_input(kateway_log::offsets::HELD_KEY, o.held()));
    o.commit("a.g", 7);
    o.hold(9);
    o.write_pending().unwrap();
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!(o.get("a.g"), Some(7));
    assert!(o.held() >= 9);
    assert!(damage.is_empty(), "{damage:?}");
});
