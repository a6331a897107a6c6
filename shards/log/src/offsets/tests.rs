//! Unit tests of the offsets log: replay, damage, the high-water mark, compaction.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("offsets.log")).unwrap().len()
}

/// Commits `(group, offset)` pairs, one write each; returns the file's length after each.
fn commit_each(o: &mut OffsetLog, commits: &[(&str, u64)]) -> Vec<u64> {
    commits
        .iter()
        .map(|&(g, off)| {
            o.commit(g, off);
            o.write_pending().unwrap();
            o.size
        })
        .collect()
}

#[test]
fn replay_torn_tail_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, damage) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
    assert!(damage.is_empty());
    assert_eq!(o.get("a.g"), None);
    o.commit("a.g", 5);
    o.commit("b.g", 7);
    o.commit("a.g", 9);
    o.write_pending().unwrap();
    assert_eq!(o.max_committed(), 9);
    drop(o);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join("offsets.log"))
        .unwrap();
    f.write_all(&[0, 0, 0, 99, 1]).unwrap();
    let len = file_len(dir.path());
    let (mut o, damage) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
    assert_eq!(damage.len(), 1, "the damaged tail is cut and reported");
    let d = &damage[0];
    assert_eq!(
        (d.kind, d.position, d.bytes),
        (DamageKind::OffsetsLog, len - 5, 5)
    );
    assert_eq!(file_len(dir.path()), len - 5);
    assert_eq!(o.get("a.g"), Some(9));
    assert_eq!(o.get("b.g"), Some(7));
    let gen0 = o.generation;
    for i in 0..200 {
        o.commit("a.g", 10 + i);
        o.write_pending().unwrap();
    }
    assert!(o.generation > gen0, "compacted at least once");
    assert!(file_len(dir.path()) <= 4096);
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
    assert!(damage.is_empty());
    assert_eq!(o.get("a.g"), Some(209));
    assert_eq!(o.get("b.g"), Some(7));
}

#[test]
fn a_damaged_record_costs_only_itself_and_is_rewritten_away() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    let ends = commit_each(
        &mut o,
        &[("a.g", 1), ("b.g", 2), ("a.g", 3), ("c.g", 4), ("d.g", 5)],
    );
    o.hold(40);
    o.write_pending().unwrap();
    drop(o);
    // A flipped byte in the first record, and one in the fourth (c.g = 4).
    let path = dir.path().join("offsets.log");
    let mut data = std::fs::read(&path).unwrap();
    data[10] ^= 0x40;
    data[ends[2] as usize + 20] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let (o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!(o.get("a.g"), Some(3), "the later commit of a.g is kept");
    assert_eq!(o.get("b.g"), Some(2));
    assert_eq!(o.get("c.g"), None, "only the damaged commit is lost");
    assert_eq!(o.get("d.g"), Some(5), "commits after the damage are kept");
    assert_eq!(o.held(), 40);
    let spans: Vec<(u64, u64)> = damage.iter().map(|d| (d.position, d.bytes)).collect();
    assert_eq!(spans, vec![(0, ends[0]), (ends[2], ends[3] - ends[2])]);
    assert!(damage
        .iter()
        .all(|d| d.kind == DamageKind::OffsetsLog && d.segment == 0 && d.records() == 0));
    assert_eq!(o.generation, 1, "rewritten without the damage");
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert!(
        damage.is_empty(),
        "the damage is gone from disk: {damage:?}"
    );
    assert_eq!(
        (o.get("a.g"), o.get("b.g"), o.get("d.g"), o.held()),
        (Some(3), Some(2), Some(5), 40)
    );
}

#[test]
fn a_damaged_span_is_kept_when_the_rewrite_fails_and_replayed_again() {
    let _g = crate::fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    commit_each(&mut o, &[("a.g", 1), ("b.g", 2)]);
    drop(o);
    let path = dir.path().join("offsets.log");
    let mut data = std::fs::read(&path).unwrap();
    data[5] ^= 1;
    std::fs::write(&path, &data).unwrap();
    crate::fail::configure("log::replace=eio").unwrap();
    let (mut o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!((damage.len(), o.get("b.g")), (1, Some(2)));
    assert_eq!(o.compaction_failures(), 1);
    o.commit("c.g", 3);
    o.write_pending().unwrap();
    crate::fail::clear();
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!(damage.len(), 1, "still on disk, skipped again");
    assert_eq!((o.get("b.g"), o.get("c.g")), (Some(2), Some(3)));
    assert_eq!(o.generation, 1, "rewritten this time");
}

#[test]
fn the_high_water_mark_persists_apart_from_the_groups() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, _) = OffsetLog::open(dir.path(), 300, &files).unwrap();
    assert_eq!(o.held(), 0);
    o.commit("a.g", 5);
    assert!(o.hold(100));
    assert!(!o.hold(90), "the mark never goes down");
    assert!(!o.hold(100));
    assert!(o.has_pending());
    o.write_pending().unwrap();
    assert_eq!((o.held(), o.max_committed()), (100, 5));
    drop(o);
    let (mut o, _) = OffsetLog::open(dir.path(), 300, &files).unwrap();
    assert_eq!(o.held(), 100);
    assert_eq!(o.max_committed(), 5, "the mark is no commit");
    assert_eq!(o.get("\0held"), None);
    assert_eq!(o.groups().collect::<Vec<_>>(), vec![("a.g", 5)]);
    // Compaction keeps it.
    let gen0 = o.generation;
    for i in 0..20 {
        o.commit("a.g", 6 + i);
        o.write_pending().unwrap();
    }
    assert!(o.generation > gen0);
    o.hold(150);
    o.write_pending().unwrap();
    o.remove("a.g").unwrap();
    drop(o);
    let (o, _) = OffsetLog::open(dir.path(), 300, &files).unwrap();
    assert_eq!((o.held(), o.groups().count()), (150, 0));
}

#[test]
fn a_failed_compaction_is_no_failed_write_and_is_retried_later() {
    let _g = crate::fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, _) = OffsetLog::open(dir.path(), 400, &files).unwrap();
    let mut next = 0;
    let mut commit = |o: &mut OffsetLog| {
        next += 1;
        o.commit("a.g", next);
        o.write_pending()
    };
    while o.size <= 400 - 60 {
        commit(&mut o).unwrap();
    }
    crate::fail::configure("log::replace=eio").unwrap();
    while o.size <= 400 {
        commit(&mut o).expect("the commits were written: no failure");
    }
    assert_eq!((o.compaction_failures(), o.generation), (1, 0));
    let big = o.size;
    assert!(
        o.unsynced_file().is_some(),
        "the old file is kept, to be synced"
    );
    // Backed off: no new attempt until the file grew by another threshold.
    while o.size < big + 400 {
        assert_eq!(o.compaction_failures(), 1);
        commit(&mut o).unwrap();
    }
    assert_eq!(o.compaction_failures(), 2, "retried once grown");
    crate::fail::clear();
    let grown = o.size;
    while o.size >= grown {
        commit(&mut o).unwrap();
    }
    assert_eq!(o.generation, 1, "compacted once the disk took it");
    assert!(file_len(dir.path()) < 400);
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 400, &files).unwrap();
    assert!(damage.is_empty());
    assert_eq!(o.get("a.g"), Some(next));
}

#[test]
fn a_failed_write_keeps_the_commits_pending() {
    let _g = crate::fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(8);
    let (mut o, _) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    o.commit("a.g", 1);
    o.write_pending().unwrap();
    o.commit("a.g", 2);
    crate::fail::configure("log::offsets_write=1*short(10)->off").unwrap();
    assert!(o.write_pending().is_err());
    assert!(o.has_pending());
    o.write_pending().unwrap();
    crate::fail::clear();
    let (token, f) = o.unsynced_file().unwrap();
    f.sync_data().unwrap();
    o.synced(token);
    assert!(o.unsynced_file().is_none());
    drop(o);
    let (o, damage) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
    assert_eq!((o.get("a.g"), damage.len()), (Some(2), 0));
}

#[test]
fn a_file_where_the_directory_should_be_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("7");
    std::fs::write(&path, b"x").unwrap();
    let e = OffsetLog::open(&path, 1 << 20, &Files::new(8))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert_eq!(
        e.os_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotADirectory)
    );
}
