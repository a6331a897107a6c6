//! Unit tests of recovery: the floor and lost tails, offsets held across a failed write, index
//! validation on open, stray directory entries.

use crate::partition::tests::{files, fill, floor, offsets, open, seg_path, CFG, ONE_SEGMENT};
use crate::partition::{Floor, Partition, PartitionConfig};
use crate::{fail, segment, Damage, DamageKind, OffsetLog, RecoveryMode};

#[test]
fn a_log_cut_at_a_record_boundary_below_the_commits_is_a_lost_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 25);
    let path = seg_path(&p, 0);
    let at25 = std::fs::metadata(&path).unwrap().len();
    fill(&mut p, 5);
    drop(p);
    // The last five records are gone without a trace; a consumer had committed 30.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(at25).unwrap();
    let (mut p, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files(), floor(30, 0)).unwrap();
    let lost = Damage {
        segment: 0,
        position: at25,
        bytes: 0,
        offsets: 25..30,
        kind: DamageKind::LostTail,
    };
    assert_eq!(rep.damage, vec![lost.clone()]);
    assert_eq!(rep.next_offset, 30);
    assert_eq!(p.append(0, b"", b"", b"new"), 30);
    p.write_pending().unwrap();
    drop(p);
    // Offsets below `held` were handed out: only those above it can still be lost.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(at25)
        .unwrap();
    let (_, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files(), floor(30, 28)).unwrap();
    assert_eq!(rep.damage[0].offsets, 28..30);
    let (_, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files(), floor(30, 30)).unwrap();
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    assert_eq!(rep.next_offset, 30);
    // Absolute refuses it; TolerateTail takes it like a torn tail.
    let mode = |recovery| PartitionConfig {
        recovery,
        ..ONE_SEGMENT
    };
    let e = Partition::open(
        dir.path(),
        mode(RecoveryMode::Absolute),
        &files(),
        floor(30, 0),
    )
    .err()
    .unwrap();
    assert_eq!(e.damage(), Some(&lost));
    let (_, rep) = Partition::open(
        dir.path(),
        mode(RecoveryMode::TolerateTail),
        &files(),
        floor(30, 0),
    )
    .unwrap();
    assert_eq!(rep.damage, vec![lost]);
}

#[test]
fn offsets_of_a_failed_write_are_not_reused_after_a_restart() {
    let _g = fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let files = files();
    let (mut o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    let (mut p, _) = Partition::open(dir.path(), ONE_SEGMENT, &files, Floor::of(&o)).unwrap();
    fill(&mut p, 10);
    // An offset answered before its write, which then fails.
    fail::configure("log::write=1*eio->off").unwrap();
    let answered = p.append(0, b"", b"", b"answered");
    assert!(p.write_pending().is_err());
    fail::clear();
    assert!(o.hold(p.next_offset()));
    o.write_pending().unwrap();
    drop((p, o));
    let (o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!(
        Floor::of(&o),
        Floor {
            committed: 0,
            held: answered + 1
        }
    );
    let (mut p, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files, Floor::of(&o)).unwrap();
    assert!(
        rep.damage.is_empty(),
        "a hole is no damage: {:?}",
        rep.damage
    );
    assert!(p.append(0, b"", b"", b"other") > answered);
}

#[test]
fn an_index_that_does_not_fit_its_log_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), CFG);
    fill(&mut p, 500);
    let s = &p.segments[1];
    let (base, next, size) = (s.base, s.next_offset, s.size);
    let entries = s.index.borrow().clone();
    let index = seg_path(&p, 1).with_extension("index");
    drop(p);
    let last = entries.len() - 1;
    let mut beyond = entries.clone();
    beyond[last].0 = (next - base) as u32 + 5;
    let below: Vec<(u32, u32)> = entries[..last].to_vec();
    let low_next = base + u64::from(below[below.len() - 1].0) + 1;
    // Valid checksums: an entry past the segment's offsets; a next offset below the next
    // segment's base (reads of the offsets above it would skip to the next segment).
    for bad in [
        segment::encode_index(size, next, &beyond),
        segment::encode_index(size, low_next, &below),
    ] {
        std::fs::write(&index, &bad).unwrap();
        let (p, rep) = open(dir.path(), CFG);
        assert!(rep.damage.is_empty(), "{:?}", rep.damage);
        assert_ne!(std::fs::read(&index).unwrap(), bad, "written again");
        for from in base..next {
            assert_eq!(p.read(from, 1, usize::MAX).unwrap()[0].offset, from);
        }
        assert!(p.take_damage().is_empty());
        assert_eq!(offsets(&p).len(), 500);
    }
}

#[test]
fn entries_named_like_segments_that_are_not_files_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 100);
    assert!(p.segments[0].size > CFG.segment_bytes);
    drop(p);
    // A directory where the next segment (after a roll at 100) goes, and one named like an
    // index.
    let log = dir.path().join(format!("{:020}.log", 100));
    let index = dir.path().join(format!("{:020}.index", 50));
    std::fs::create_dir(&log).unwrap();
    std::fs::create_dir(&index).unwrap();
    let (mut p, mut rep) = open(dir.path(), CFG);
    rep.stray.sort();
    assert_eq!(rep.stray, vec![index.clone(), log.clone()]);
    assert!(rep.damage.is_empty());
    assert_eq!(rep.next_offset, 100);
    p.append(0, b"", b"", b"rolls");
    p.write_pending().unwrap();
    assert_eq!(p.segments.len(), 2, "rolled to a new segment at 100");
    assert_eq!(p.read(100, 1, usize::MAX).unwrap()[0].value, &b"rolls"[..]);
    assert!(dir.path().join(format!("{:020}.log.stray", 100)).is_dir());
    assert!(dir.path().join(format!("{:020}.index.stray", 50)).is_dir());
    // A regular file where the partition's directory should be.
    let file = dir.path().join("1");
    std::fs::write(&file, b"x").unwrap();
    let e = Partition::open(&file, CFG, &files(), Floor::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert_eq!(
        e.os_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotADirectory)
    );
}
