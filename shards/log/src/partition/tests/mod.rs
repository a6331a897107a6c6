//! Unit tests of partitions: appends and reads, recovery, damage found by reads and the
//! scrubber (wrong indexes and segments lost while running included), failed writes and
//! fsyncs; space written ahead of appends in `ahead.rs`. The helpers are shared with the
//! recovery tests.

use super::*;
use crate::{fail, DamageKind};
use std::io::Write;

pub(crate) const CFG: PartitionConfig = PartitionConfig {
    segment_bytes: 4096,
    index_interval: 256,
    preallocate: 0,
    recovery: RecoveryMode::TolerateCorruption,
};
/// Large enough that the tests' records stay in one segment.
pub(crate) const ONE_SEGMENT: PartitionConfig = PartitionConfig {
    segment_bytes: 1 << 20,
    index_interval: 256,
    preallocate: 0,
    recovery: RecoveryMode::TolerateCorruption,
};

pub(crate) fn floor(committed: u64, held: u64) -> Floor {
    Floor { committed, held }
}

pub(crate) fn files() -> Rc<Files> {
    Files::new(64)
}

pub(crate) fn open(dir: &Path, cfg: PartitionConfig) -> (Partition, RecoveryReport) {
    Partition::open(dir, cfg, &files(), Floor::default()).unwrap()
}

pub(crate) fn fill(p: &mut Partition, n: u64) {
    let first = p.next_offset();
    for i in 0..n {
        let off = p.append(
            i as i64,
            format!("k{i}").as_bytes(),
            b"t",
            format!("value-{i}").as_bytes(),
        );
        assert_eq!(off, first + i);
        if i % 7 == 0 {
            p.write_pending().unwrap();
        }
    }
    p.write_pending().unwrap();
}

pub(crate) fn offsets(p: &Partition) -> Vec<u64> {
    p.read(0, 100_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect()
}

pub(crate) fn seg_path(p: &Partition, i: usize) -> PathBuf {
    p.segments[i].file.path().to_path_buf()
}

#[test]
fn append_read_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, rep) = open(dir.path(), CFG);
    assert_eq!(rep.next_offset, 0);
    fill(&mut p, 500);
    assert!(p.segments.len() > 3, "rolled into several segments");
    let all = p.read(0, 10_000, usize::MAX).unwrap();
    assert_eq!(all.len(), 500);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value, format!("value-{i}").as_bytes());
    }
    // Reads from every offset, with small limits, start exactly there.
    for from in (0..500).step_by(37) {
        let rs = p.read(from, 3, usize::MAX).unwrap();
        assert_eq!(
            rs.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![from, from + 1, from + 2]
                .into_iter()
                .filter(|&o| o < 500)
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        p.read(1, 10, 1).unwrap().len(),
        1,
        "byte limit still yields one record"
    );
    drop(p);
    let (p, rep) = open(dir.path(), CFG);
    assert_eq!(rep.next_offset, 500);
    assert_eq!(rep.truncated_bytes, 0);
    assert!(rep.damage.is_empty());
    assert_eq!(p.read(0, 10_000, usize::MAX).unwrap().len(), 500);
    assert_eq!(
        p.read(499, 10, usize::MAX).unwrap()[0].value,
        &b"value-499"[..]
    );
}

#[test]
fn descriptors_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Files::new(4);
    let mut parts: Vec<Partition> = (0..20)
        .map(|i| {
            Partition::open(
                &dir.path().join(i.to_string()),
                CFG,
                &budget,
                Floor::default(),
            )
            .unwrap()
            .0
        })
        .collect();
    for p in parts.iter_mut() {
        fill(p, 200);
        assert!(budget.open_now() <= 4, "{}", budget.open_now());
    }
    for p in &parts {
        assert_eq!(offsets(p).len(), 200);
        assert!(budget.open_now() <= 4);
    }
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 50);
    let path = seg_path(&p, 0);
    drop(p);
    // A torn write: half a record's worth of garbage after the last good record.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0, 0, 0, 60, 1, 2, 3, 4, 1, 0, 0]).unwrap();
    drop(f);
    let (mut p, rep) = open(dir.path(), CFG);
    assert_eq!(rep.truncated_bytes, 11);
    assert_eq!(rep.next_offset, 50);
    assert_eq!(rep.damage.len(), 1);
    assert_eq!(rep.damage[0].kind, DamageKind::TornTail);
    assert_eq!(p.append(0, b"", b"", b"after"), 50);
    p.write_pending().unwrap();
    assert_eq!(p.read(50, 1, 100).unwrap()[0].value, &b"after"[..]);
}

#[test]
fn a_flipped_byte_costs_only_the_record_it_hit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 20);
    let path = seg_path(&p, 0);
    drop(p);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&path, &data).unwrap();
    let (p, rep) = open(dir.path(), CFG);
    assert_eq!(rep.next_offset, 20, "later records survive");
    assert_eq!(rep.damage.len(), 1, "{:?}", rep.damage);
    let d = &rep.damage[0];
    assert_eq!(d.kind, DamageKind::Corrupt);
    assert_eq!(d.records(), 1, "{d}");
    let got = offsets(&p);
    assert_eq!(got.len(), 19);
    assert!(!got.contains(&d.offsets.start));
    for r in p.read(0, 100, usize::MAX).unwrap() {
        assert_eq!(r.value, format!("value-{}", r.offset).as_bytes());
    }
}

#[test]
fn damage_in_a_sealed_segment_keeps_the_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), CFG);
    fill(&mut p, 500);
    let n = p.segments.len();
    assert!(n >= 4);
    let second = seg_path(&p, 1);
    let third = seg_path(&p, 2);
    let third_base = p.segments[2].base;
    let third_end = p.segments[2].next_offset;
    drop(p);
    // Five bytes cut from the end of a sealed segment, and a missing middle segment.
    let len = std::fs::metadata(&second).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    std::fs::remove_file(&third).unwrap();
    let (p, rep) = open(dir.path(), CFG);
    assert_eq!(rep.next_offset, 500);
    assert_eq!(p.segments.len(), n - 1, "only the missing segment is gone");
    let kinds: Vec<DamageKind> = rep.damage.iter().map(|d| d.kind).collect();
    assert!(kinds.contains(&DamageKind::TornTail), "{:?}", rep.damage);
    assert!(
        kinds.contains(&DamageKind::MissingSegment),
        "{:?}",
        rep.damage
    );
    let missing = rep
        .damage
        .iter()
        .find(|d| d.kind == DamageKind::MissingSegment)
        .unwrap();
    assert_eq!(missing.offsets.end, third_end);
    assert!(missing.offsets.start <= third_base);
    let got = offsets(&p);
    let lost: u64 = rep.damage.iter().map(Damage::records).sum();
    assert_eq!(got.len() as u64 + lost, 500, "{:?}", rep.damage);
    assert!(got.contains(&499), "records after the damage survive");
}

#[test]
fn offsets_are_not_reused_after_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 30);
    let path = seg_path(&p, 0);
    drop(p);
    // Damage to the last records; a consumer had committed up to offset 30.
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() - 40]).unwrap();
    let (mut p, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files(), floor(30, 0)).unwrap();
    assert_eq!(rep.next_offset, 30);
    assert_eq!(rep.damage[0].offsets.end, 30);
    assert!(rep.damage[0].records() >= 1);
    assert_eq!(p.append(0, b"", b"", b"new"), 30);
    p.write_pending().unwrap();
    assert_eq!(p.end(), 31);
    let r = p.read(29, 10, usize::MAX).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].offset, &r[0].value[..]), (30, &b"new"[..]));
    drop(p);
    let (p, rep) = open(dir.path(), ONE_SEGMENT);
    assert_eq!(rep.next_offset, 31, "the hole survives a restart");
    assert!(
        rep.damage.is_empty(),
        "a hole is not damage: {:?}",
        rep.damage
    );
    assert_eq!(
        p.read(0, 100, usize::MAX).unwrap().last().unwrap().offset,
        30
    );
}

#[test]
fn strict_modes_refuse_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 20);
    let path = seg_path(&p, 0);
    drop(p);
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 1;
    std::fs::write(&path, &data).unwrap();
    for mode in [RecoveryMode::TolerateTail, RecoveryMode::Absolute] {
        let cfg = PartitionConfig {
            recovery: mode,
            ..ONE_SEGMENT
        };
        let e = Partition::open(dir.path(), cfg, &files(), Floor::default())
            .err()
            .unwrap();
        assert!(e.damage().is_some(), "{e}");
        assert!(e.to_string().contains("00000000000000000000.log"), "{e}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        data,
        "refusing changes nothing"
    );
    // A torn tail alone: TolerateTail cuts it, Absolute refuses it.
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 5);
    let path = seg_path(&p, 0);
    drop(p);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0, 0, 0, 90, 9]).unwrap();
    let abs = PartitionConfig {
        recovery: RecoveryMode::Absolute,
        ..ONE_SEGMENT
    };
    assert!(Partition::open(dir.path(), abs, &files(), Floor::default()).is_err());
    let tail = PartitionConfig {
        recovery: RecoveryMode::TolerateTail,
        ..ONE_SEGMENT
    };
    let (_, rep) = Partition::open(dir.path(), tail, &files(), Floor::default()).unwrap();
    assert_eq!(rep.truncated_bytes, 5);
}

#[test]
fn damage_found_by_reads_is_skipped_or_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), CFG);
    fill(&mut p, 200);
    let path = seg_path(&p, 0);
    let sealed_end = p.segments[0].next_offset;
    drop(p);
    // Damage inside a sealed segment whose index still matches: found only by reading.
    let mut data = std::fs::read(&path).unwrap();
    data[200] ^= 0xff;
    // A length field claiming 2 GiB must not make the reader allocate it.
    data[1000..1004].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    std::fs::write(&path, &data).unwrap();
    let (p, rep) = open(dir.path(), CFG);
    assert!(rep.damage.is_empty(), "not scanned on open");
    let got = offsets(&p);
    let found = p.take_damage();
    assert!(!found.is_empty());
    let lost: u64 = found.iter().map(Damage::records).sum();
    assert_eq!(got.len() as u64 + lost, 200, "{found:?}");
    assert!(got.contains(&(sealed_end - 1)) && got.contains(&199));
    assert!(p.take_damage().is_empty(), "reported once");
    offsets(&p);
    assert!(
        p.take_damage().is_empty(),
        "known spans are skipped silently"
    );
    // Strict: a read hands out the records before the damage; the read that would need a
    // damaged offset fails, naming the offsets; a read that starts after them succeeds.
    let strict = PartitionConfig {
        recovery: RecoveryMode::TolerateTail,
        ..CFG
    };
    let (p, _) = Partition::open(dir.path(), strict, &files(), Floor::default()).unwrap();
    let before = p.read(0, 1000, usize::MAX).unwrap();
    let next = before.last().map_or(0, |r| r.offset + 1);
    let e = p.read(next, 1000, usize::MAX).unwrap_err();
    let d = e.damage().expect("damage error").clone();
    assert!(d.records() >= 1);
    let after = p.read(d.offsets.end, 1, usize::MAX).unwrap();
    assert_eq!(after[0].offset, d.offsets.end);
}

#[test]
fn scrubbing_finds_damage_in_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), CFG);
    fill(&mut p, 300);
    let path = seg_path(&p, 1);
    drop(p);
    let mut data = std::fs::read(&path).unwrap();
    data[300] ^= 0x10;
    std::fs::write(&path, &data).unwrap();
    let (p, _) = open(dir.path(), CFG);
    let mut cur = ScrubCursor::default();
    let mut total = 0;
    while total < p.size_bytes() * 2 {
        total += p.scrub(&mut cur, 1024).unwrap();
    }
    let found = p.take_damage();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].segment, p.segments[1].base);
}

#[test]
fn a_failed_write_leaves_nothing_and_the_next_one_succeeds() {
    let _g = fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), ONE_SEGMENT);
    fill(&mut p, 10);
    for spec in ["enospc", "eio", "short(50)"] {
        fail::configure(&format!("log::write=1*{spec}->off")).unwrap();
        let before = std::fs::metadata(seg_path(&p, 0)).unwrap().len();
        let o = p.append(0, b"", b"", b"lost");
        assert!(p.write_pending().is_err(), "{spec}");
        assert_eq!(p.pending_bytes(), 0);
        assert_eq!(
            std::fs::metadata(seg_path(&p, 0)).unwrap().len(),
            before,
            "{spec}: a partial write is cut"
        );
        assert!(p.read(o, 1, usize::MAX).unwrap().is_empty());
        let o2 = p.append(0, b"", b"", b"kept");
        assert!(o2 > o, "offsets of a failed write are not reused");
        p.write_pending().unwrap();
        assert_eq!(p.read(o, 1, usize::MAX).unwrap()[0].value, &b"kept"[..]);
    }
    fail::clear();
    drop(p);
    let (p, rep) = open(dir.path(), ONE_SEGMENT);
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    let values: Vec<_> = p
        .read(0, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values.len(), 13);
    assert!(values.iter().all(|v| &v[..] != b"lost"));
}

#[test]
fn sync_plans_and_rewrite_after_a_failed_fsync() {
    let _g = fail::test_lock();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(dir.path(), CFG);
    assert!(p.sync_plan().is_none());
    fill(&mut p, 100);
    let plan = p.sync_plan().expect("unsynced data");
    assert!(plan.files.len() >= 2, "sealed segments and the active one");
    p.sync_done(plan, false);
    let plan = p.sync_plan().expect("still unsynced after a failure");
    for f in &plan.files {
        f.sync_data().unwrap();
    }
    p.sync_done(plan, true);
    assert!(p.is_synced());
    assert!(p.sync_plan().is_none());
    fill(&mut p, 10);
    fail::configure("log::fsync=1*eio->off").unwrap();
    let plan = p.sync_plan().unwrap();
    let ok = plan.files.iter().all(|f| f.sync_data().is_ok());
    assert!(!ok);
    p.sync_done(plan, ok);
    assert!(!p.is_synced());
    assert!(p.rewrite_unsynced().unwrap().is_empty());
    assert!(p.is_synced());
    assert_eq!(offsets(&p).len(), 110);
}

/// Opens a partition of several segments, lets `spoil` rewrite the index file of the second
/// (given the segment's size, next offset and index entries), and opens it again.
fn with_spoiled_index(
    dir: &Path,
    spoil: impl FnOnce(&Path, u64, u64, &[(u32, u32)]),
) -> (Partition, u64, u64) {
    let (mut p, _) = open(dir, CFG);
    fill(&mut p, 500);
    let s = &p.segments[1];
    let (base, next, size) = (s.base, s.next_offset, s.size);
    let entries = s.index.borrow().clone();
    assert!(entries.len() >= 3 && entries[0].0 >= 3, "{entries:?}");
    let path = seg_path(&p, 1).with_extension("index");
    drop(p);
    spoil(&path, size, next, &entries);
    let (p, rep) = open(dir, CFG);
    assert!(rep.damage.is_empty(), "{:?}", rep.damage);
    (p, base, next)
}

#[test]
fn an_index_that_names_the_wrong_records_is_rebuilt_and_skips_nothing() {
    // Entries naming records three offsets before the ones they point at; entries pointing
    // into the middle of records. Both with a valid checksum, so trusted on open.
    type Spoil = fn(&(u32, u32)) -> (u32, u32);
    let spoils: [Spoil; 2] = [|&(o, p)| (o - 3, p), |&(o, p)| (o, p + 1)];
    for spoil in spoils {
        let dir = tempfile::tempdir().unwrap();
        let (p, base, next) = with_spoiled_index(dir.path(), |path, size, next, entries| {
            let wrong: Vec<(u32, u32)> = entries.iter().map(spoil).collect();
            std::fs::write(path, segment::encode_index(size, next, &wrong)).unwrap();
        });
        for from in base..next {
            let r = p.read(from, 1, usize::MAX).unwrap();
            assert_eq!(r[0].offset, from, "a read from {from} skipped records");
        }
        let found = p.take_damage();
        let kinds: Vec<DamageKind> = found.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            vec![DamageKind::BadIndex],
            "reported once: {found:?}"
        );
        assert_eq!((found[0].segment, found[0].records()), (base, 0));
        drop(p);
        // The index was written again: trusted on open, and right.
        let (p, rep) = open(dir.path(), CFG);
        assert!(rep.damage.is_empty());
        for from in base..next {
            assert_eq!(p.read(from, 1, usize::MAX).unwrap()[0].offset, from);
        }
        assert!(p.take_damage().is_empty());
        assert_eq!(offsets(&p).len(), 500);
    }
}

#[test]
fn a_sealed_segment_lost_while_running_is_damage_reported_once() {
    for replace_with_dir in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = open(dir.path(), CFG);
        fill(&mut p, 500);
        let s = &p.segments[1];
        let lost = Damage {
            segment: s.base,
            position: 0,
            bytes: s.size,
            offsets: s.base..s.next_offset,
            kind: DamageKind::MissingSegment,
        };
        p.close_files();
        let path = seg_path(&p, 1);
        std::fs::remove_file(&path).unwrap();
        if replace_with_dir {
            std::fs::create_dir(&path).unwrap();
        }
        let got = offsets(&p);
        assert_eq!(got.len() as u64 + lost.records(), 500);
        assert!(got.iter().all(|o| !lost.offsets.contains(o)));
        assert!(got.contains(&499), "later segments are read");
        assert_eq!(p.take_damage(), vec![lost.clone()]);
        offsets(&p);
        let mut cur = ScrubCursor::default();
        let mut total = 0;
        while total < p.size_bytes() * 2 {
            total += p.scrub(&mut cur, 1024).unwrap();
        }
        assert!(p.take_damage().is_empty(), "reported once");
    }
    // Strict: records before the segment are handed out, a read that needs it fails naming
    // its offsets, a read after them succeeds.
    let dir = tempfile::tempdir().unwrap();
    let strict = PartitionConfig {
        recovery: RecoveryMode::TolerateTail,
        ..CFG
    };
    let (mut p, _) = Partition::open(dir.path(), strict, &files(), Floor::default()).unwrap();
    fill(&mut p, 500);
    let (base, next) = (p.segments[1].base, p.segments[1].next_offset);
    p.close_files();
    std::fs::remove_file(seg_path(&p, 1)).unwrap();
    let before = p.read(0, 1000, usize::MAX).unwrap();
    assert_eq!(before.last().unwrap().offset + 1, base);
    let e = p.read(base, 1000, usize::MAX).unwrap_err();
    let d = e.damage().expect("damage error");
    assert_eq!(
        (d.kind, d.offsets.clone()),
        (DamageKind::MissingSegment, base..next)
    );
    assert_eq!(p.read(next, 1, usize::MAX).unwrap()[0].offset, next);
    assert_eq!(p.take_damage().len(), 1);
}

mod ahead;
