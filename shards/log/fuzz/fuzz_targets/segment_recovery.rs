//! Random bytes (with real records spliced in, from the corpus) as the only, active segment of
//! a partition: opening it in every recovery mode never panics, the tolerant mode always opens,
//! and whatever is read back passed its checksum.
#![no_main]

#[path = "common.rs"]
mod common;

use kateway_log::{Files, Floor, Partition, PartitionConfig, RecoveryMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let seg = dir.path().join("00000000000000000000.log");
    std::fs::write(&seg, data).unwrap();
    let files = Files::new(8);
    for mode in [RecoveryMode::Absolute, RecoveryMode::TolerateTail] {
        let cfg = PartitionConfig { segment_bytes: 1 << 20, index_interval: 256, preallocate: 0, recovery: mode };
        if let Ok((p, _)) = Partition::open(dir.path(), cfg, &files, Floor::default()) {
            if let Ok(recs) = p.read(0, 100_000, usize::MAX) {
                common::check_records(&recs, &[data]);
            }
            drop(p);
            // Refusing must not have changed the file; tolerating a torn tail may cut it.
            std::fs::write(&seg, data).unwrap();
        }
    }
    let cfg = PartitionConfig {
        segment_bytes: 1 << 20,
        index_interval: 256,
        preallocate: 0,
        recovery: RecoveryMode::TolerateCorruption,
    };
    let (mut p, rep) = Partition::open(dir.path(), cfg, &files, Floor::default()).expect("tolerant open");
    let recs = p.read(0, 100_000, usize::MAX).expect("tolerant read");
    common::check_records(&recs, &[data]);
    assert!(rep.next_offset >= recs.last().map_or(0, |r| r.offset + 1));
    // The partition keeps working: an append after recovery gets a fresh offset.
    let o = p.append(0, b"k", b"", b"after");
    p.write_pending().unwrap();
    assert!(recs.last().is_none_or(|r| o > r.offset));
    assert_eq!(p.read(o, 1, usize::MAX).unwrap()[0].value, &b"after"[..]);
});
