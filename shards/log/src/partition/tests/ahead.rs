//! Space written ahead of appends: zeros past the last record are no damage, are cut when a
//! segment is sealed or recovered, and are written a piece at a time.

use super::*;

/// Segments that roll at 64 KiB, with zeros written 16 KiB ahead of their appends.
const AHEAD: PartitionConfig = PartitionConfig {
    segment_bytes: 64 << 10,
    index_interval: 256,
    preallocate: 16 << 10,
    recovery: RecoveryMode::TolerateTail,
};

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn space_written_ahead_is_no_damage_and_is_cut_when_sealed_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), AHEAD);
    fill(&mut p, 10);
    let active = seg_path(&p, 0);
    let size = p.segments[0].size;
    assert!(
        file_len(&active) >= 16 << 10,
        "zeros ahead: {} for {size} bytes of records",
        file_len(&active)
    );
    // A crash now (nothing trimmed): the zeros read as the end of the segment, not as a torn
    // tail; the strictest tail mode accepts them, and recovery cuts them.
    drop(p);
    let (mut p, rep) = open(dir.path(), AHEAD);
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    assert_eq!(offsets(&p), (0..10).collect::<Vec<_>>());
    assert_eq!(file_len(&active), size);
    let absolute = PartitionConfig {
        recovery: RecoveryMode::Absolute,
        ..AHEAD
    };
    fill(&mut p, 4000);
    assert!(p.segments.len() > 2, "rolled");
    for i in 0..p.segments.len() - 1 {
        assert_eq!(
            file_len(&seg_path(&p, i)),
            p.segments[i].size,
            "a sealed segment ends with its last record"
        );
    }
    p.trim();
    let last = p.segments.len() - 1;
    assert_eq!(file_len(&seg_path(&p, last)), p.segments[last].size);
    drop(p);
    let (p, rep) = open(dir.path(), absolute);
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    assert_eq!(offsets(&p), (0..4010).collect::<Vec<_>>());
}

#[test]
fn a_torn_record_before_the_zeros_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), AHEAD);
    fill(&mut p, 10);
    let active = seg_path(&p, 0);
    let size = p.segments[0].size;
    drop(p);
    // The first bytes of a record, as a crash in the middle of its write leaves them.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0, 0, 0, 200, 0xde, 0xad, 1, 0], size).unwrap();
    drop(f);
    let (p, rep) = open(dir.path(), AHEAD);
    assert_eq!(rep.damage.len(), 1, "{:?}", rep.damage);
    assert_eq!(rep.damage[0].kind, DamageKind::TornTail);
    assert_eq!(offsets(&p), (0..10).collect::<Vec<_>>());
    assert_eq!(file_len(&active), size);
    // Records after a zeroed gap are not a tail of zeros: damage, and the records are kept.
    drop(p);
    let (mut p, _) = open(dir.path(), AHEAD);
    fill(&mut p, 5);
    drop(p);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0; 40], size).unwrap();
    drop(f);
    let tolerant = PartitionConfig {
        recovery: RecoveryMode::TolerateCorruption,
        ..AHEAD
    };
    let (p, rep) = open(dir.path(), tolerant);
    assert_eq!(rep.damage.len(), 1, "{:?}", rep.damage);
    assert_eq!(rep.damage[0].kind, DamageKind::Corrupt);
    assert!(
        offsets(&p).ends_with(&[11, 12, 13, 14]),
        "{:?}",
        offsets(&p)
    );
}

#[test]
fn when_zeros_cannot_be_written_ahead_appends_grow_the_file() {
    let _g = fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), AHEAD);
    fail::configure("log::preallocate=short(100)").unwrap();
    fill(&mut p, 10);
    fail::clear();
    let active = seg_path(&p, 0);
    assert_eq!(
        file_len(&active),
        p.segments[0].size,
        "the space given back, the records written"
    );
    fill(&mut p, 10);
    assert_eq!(file_len(&active), p.segments[0].size, "not tried again");
    drop(p);
    let (p, rep) = open(dir.path(), AHEAD);
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    assert_eq!(offsets(&p), (0..20).collect::<Vec<_>>());
}

/// Segments of 4 MiB with zeros kept 1 MiB ahead (the default distance).
const FAR_AHEAD: PartitionConfig = PartitionConfig {
    segment_bytes: 4 << 20,
    preallocate: 1 << 20,
    ..AHEAD
};

/// Appends `records` records of 1000 bytes to the first segment and writes them: the file's
/// length before and after, and where the records end.
fn flush_of(p: &mut Partition, records: i64) -> (u64, u64, u64) {
    let active = seg_path(p, 0);
    let before = file_len(&active);
    for i in 0..records {
        p.append(i, b"k", b"", &[7u8; 1000]);
    }
    p.write_pending().unwrap();
    (before, file_len(&active), p.segments[0].size)
}

#[test]
fn appends_larger_than_a_piece_of_zeros_still_land_in_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), FAR_AHEAD);
    // Flushes of about 200 KiB, more than one piece of zeros (128 KiB): after the first, each
    // lands in zeros written by a flush before it, so the file does not grow with the data.
    let mut grown_by_data = 0;
    for flush in 0..12 {
        let (before, after, size) = flush_of(&mut p, 200);
        assert!(after > size, "zeros ahead after flush {flush}");
        if flush > 0 && size > before {
            grown_by_data += 1;
        }
    }
    assert_eq!(grown_by_data, 0, "appends that grew the file");
}

#[test]
fn zeros_ahead_are_written_a_piece_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), FAR_AHEAD);
    // Small flushes: no flush writes more zeros than one piece, however far ahead the zeros
    // are kept; over many flushes they reach half of `preallocate` ahead.
    let mut most = 0;
    let mut ahead = 0;
    for _ in 0..3000 {
        let (before, after, size) = flush_of(&mut p, 1);
        most = most.max(after.saturating_sub(before));
        ahead = after - size;
    }
    // One piece, and the record itself when the first flush starts the zeros.
    assert!(
        most <= crate::segment::TOP_UP + 2048,
        "{most} bytes at once"
    );
    assert!(ahead >= 512 << 10, "{ahead} bytes ahead");
}
