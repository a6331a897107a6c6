//! A sealed segment whose log and index are both fuzzed (the first two bytes, little-endian,
//! say where the input splits into log and index), followed by an empty active segment: reads of the sealed one, from every offset, never panic and only
//! serve records that passed their checksum; the scrubber never panics either.
#![no_main]

#[path = "common.rs"]
mod common;

use kateway_log::{Files, Floor, Partition, PartitionConfig, RecoveryMode, ScrubCursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let rest = &data[2..];
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(rest.len());
    let (log, index) = rest.split_at(split);
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    std::fs::write(dir.path().join("00000000000000000000.log"), log).unwrap();
    std::fs::write(dir.path().join("00000000000000000000.index"), index).unwrap();
    std::fs::write(dir.path().join("00000000000001000000.log"), b"").unwrap();
    let files = Files::new(8);
    let cfg = PartitionConfig {
        segment_bytes: 1 << 20,
        index_interval: 64,
        preallocate: 0,
        recovery: RecoveryMode::TolerateCorruption,
    };
    let (p, _) = Partition::open(dir.path(), cfg, &files, Floor::default()).expect("tolerant open");
    for from in [0u64, 1, 7, 64, 1000] {
        let recs = p.read(from, 1000, 1 << 20).expect("tolerant read");
        common::check_records(&recs, &[log]);
        assert!(recs.first().is_none_or(|r| r.offset >= from));
    }
    let mut cur = ScrubCursor::default();
    for _ in 0..8 {
        let _ = p.scrub(&mut cur, 4096);
    }
});
