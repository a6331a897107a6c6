//! A partition: an ordered list of segments plus the pending (appended, not yet written) bytes.
//!
//! The owner calls [`Partition::append`] for each record (no I/O), [`Partition::write_pending`]
//! once per flush cycle (one positioned write), and syncs the files of a [`SyncPlan`] for
//! durability. Reads see records up to [`Partition::end`], the offset after the last written
//! record.
//!
//! Recovery ([`Partition::open`]) scans what it cannot trust, skips damaged spans, cuts a torn
//! tail, keeps every segment after a damaged or missing one, and never lets an offset be used
//! twice: the next offset is at least the `floor` the caller knows was reached (the highest
//! offset any consumer committed).

use crate::fs::{Files, FP_REPLACE};
use crate::record;
use crate::segment::{self, Segment};
use crate::{Damage, DamageKind, LogError, LogFile, Record, RecoveryMode, Result};
use bytes::BytesMut;
use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Per-partition settings.
#[derive(Debug, Clone, Copy)]
pub struct PartitionConfig {
    /// Roll the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// One index entry per this many bytes.
    pub index_interval: u64,
    /// How much damage to tolerate.
    pub recovery: RecoveryMode,
}

/// What recovery found when a partition was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Bytes cut from torn or damaged tails.
    pub truncated_bytes: u64,
    /// Every damaged span, missing segment and torn tail found.
    pub damage: Vec<Damage>,
    /// The first offset after recovery.
    pub next_offset: u64,
}

/// What one group-commit fsync of a partition covers.
pub struct SyncPlan {
    /// The files to fsync.
    pub files: Vec<LogFile>,
    sealed: Vec<u64>,
    active: (u64, u64),
}

/// Where the scrubber is: a sealed segment and a position in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubCursor {
    segment: u64,
    pos: u64,
}

/// One partition of a topic.
pub struct Partition {
    dir: PathBuf,
    cfg: PartitionConfig,
    files: Rc<Files>,
    segments: Vec<Segment>,
    pending: BytesMut,
    /// `(offset, position in pending)` of records that start an index interval.
    pending_index: Vec<(u64, u32)>,
    since_index: u64,
    next_offset: u64,
    /// Base offsets of segments sealed since the last sync; each needs one final fsync.
    sealed_unsynced: Vec<u64>,
    /// Damage found by reads and the scrubber since [`Partition::take_damage`].
    found: RefCell<Vec<Damage>>,
}

impl Partition {
    /// Opens (creating if needed) the partition in `dir`, recovering its segments. The next
    /// offset is at least `floor`. Descriptors come from `files` and are not kept open.
    pub fn open(
        dir: &Path,
        cfg: PartitionConfig,
        files: &Rc<Files>,
        floor: u64,
    ) -> Result<(Self, RecoveryReport)> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("mkdir", dir, e))?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| LogError::io("readdir", dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut report = RecoveryReport {
            segments: bases.len(),
            ..Default::default()
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut opened = Vec::with_capacity(bases.len());
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let prev_next = segments.last().map(|s: &Segment| s.next_offset);
            if let Some(prev) = prev_next.filter(|&p| p < base) {
                // A hole in the offsets between two segments: a segment file is missing.
                report.damage.push(Damage {
                    segment: base,
                    position: 0,
                    bytes: 0,
                    offsets: prev..base,
                    kind: DamageKind::MissingSegment,
                });
            }
            let min_offset = prev_next.unwrap_or(base).max(base);
            let (seg, damage, len, trusted) = Segment::open(
                files,
                segment::log_path(dir, base),
                base,
                i + 1 < count,
                cfg.index_interval,
                min_offset,
            )?;
            report.damage.extend(damage);
            opened.push((len, trusted));
            segments.push(seg);
        }
        // What the damage cost in offsets is bounded by the next segment's base, or for the
        // last segment by the floor.
        let hwm = segments.last().map_or(floor, |s| s.next_offset.max(floor));
        // (A missing segment right after a torn tail already counts the offsets between them.)
        let missing_from: Vec<u64> = report
            .damage
            .iter()
            .filter(|d| d.kind == DamageKind::MissingSegment)
            .map(|d| d.offsets.start)
            .collect();
        for d in report.damage.iter_mut() {
            if d.kind == DamageKind::TornTail && !missing_from.contains(&d.offsets.start) {
                let next_base = segments
                    .iter()
                    .map(|s| s.base)
                    .find(|&b| b > d.segment)
                    .unwrap_or(hwm);
                d.offsets.end = d.offsets.end.max(next_base);
            }
        }
        Self::check_mode(dir, &cfg, &report, &segments)?;
        let n = segments.len();
        for (i, (seg, (len, trusted))) in segments.iter_mut().zip(opened).enumerate() {
            if len > seg.size {
                report.truncated_bytes += len - seg.size;
                seg.cut_tail()?;
            }
            if i + 1 < n && !trusted {
                // A sealed segment that had to be scanned: write its index again.
                seg.seal();
            }
        }
        if segments.is_empty() {
            segments.push(Segment::create(files, dir, floor)?);
            sync_dir(dir)?;
        }
        let last = segments.last_mut().expect("one segment");
        // Offsets are never reused: not those of a cut tail that a consumer had already
        // committed past, nor those of records that were written after the last one found.
        last.next_offset = last.next_offset.max(floor);
        let next_offset = last.next_offset;
        let since_index = last.since_index;
        last.file.close();
        report.next_offset = next_offset;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                cfg,
                files: files.clone(),
                segments,
                pending: BytesMut::new(),
                pending_index: Vec::new(),
                since_index,
                next_offset,
                sealed_unsynced: Vec::new(),
                found: RefCell::new(Vec::new()),
            },
            report,
        ))
    }

    fn check_mode(
        dir: &Path,
        cfg: &PartitionConfig,
        report: &RecoveryReport,
        segments: &[Segment],
    ) -> Result<()> {
        let active = segments.last().map(|s| s.base);
        let refused = report.damage.iter().find(|d| match cfg.recovery {
            RecoveryMode::TolerateCorruption => false,
            RecoveryMode::TolerateTail => {
                !(d.kind == DamageKind::TornTail && Some(d.segment) == active)
            }
            RecoveryMode::Absolute => true,
        });
        match refused {
            Some(d) => Err(LogError::Damaged {
                path: segment::log_path(dir, d.segment).display().to_string(),
                damage: d.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Appends a record to the pending buffer and returns its offset. No I/O.
    pub fn append(&mut self, timestamp: i64, key: &[u8], tags: &[u8], value: &[u8]) -> u64 {
        let offset = self.next_offset;
        if self.since_index >= self.cfg.index_interval {
            self.pending_index.push((offset, self.pending.len() as u32));
            self.since_index = 0;
        }
        let before = self.pending.len();
        record::encode(&mut self.pending, offset, timestamp, key, tags, value);
        self.since_index += (self.pending.len() - before) as u64;
        self.next_offset += 1;
        offset
    }

    /// Bytes appended but not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes the pending records to the active segment (rolling it first if it is full).
    /// Returns the bytes written. On failure the pending records are dropped (never written,
    /// never visible; their offsets are not reused) and whatever part of the write reached the
    /// file is cut, so the partition stays consistent and a later write can succeed.
    pub fn write_pending(&mut self) -> Result<usize> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let res = self.try_write();
        if res.is_err() {
            let active = self.segments.last_mut().expect("one segment");
            active.cut_partial();
            active.next_offset = self.next_offset;
            self.pending.clear();
            self.pending_index.clear();
            self.since_index = active.since_index;
        }
        res
    }

    fn try_write(&mut self) -> Result<usize> {
        let active = self.segments.last().expect("one segment");
        if active.size > 0 && active.size + self.pending.len() as u64 > self.cfg.segment_bytes {
            self.roll()?;
        }
        let data = segment::freeze_pending(&mut self.pending);
        let index = std::mem::take(&mut self.pending_index);
        let next = self.next_offset;
        let active = self.segments.last_mut().expect("one segment");
        if let Err(e) = active.append(&data, next, &index) {
            // Keep the records pending for write_pending to drop them consistently.
            self.pending = BytesMut::from(&data[..]);
            return Err(e);
        }
        active.since_index = self.since_index;
        Ok(data.len())
    }

    fn roll(&mut self) -> Result<()> {
        let base = self.segments.last().expect("one segment").next_offset;
        let seg = Segment::create(&self.files, &self.dir, base)?;
        let old = self.segments.last().expect("one segment");
        old.seal();
        if old.synced < old.size {
            self.sealed_unsynced.push(old.base);
        }
        old.file.close();
        self.segments.push(seg);
        self.since_index = 0;
        // Offsets in pending_index are absolute, positions relative to pending: still valid.
        sync_dir(&self.dir)
    }

    /// What an fsync must cover now for everything written so far to be durable; `None` when
    /// everything is.
    pub fn sync_plan(&mut self) -> Option<SyncPlan> {
        let active = self.segments.last().expect("one segment");
        let sealed = std::mem::take(&mut self.sealed_unsynced);
        let mut files: Vec<LogFile> = sealed
            .iter()
            .filter_map(|b| self.segments.iter().find(|s| s.base == *b))
            .map(|s| s.file.clone())
            .collect();
        if active.synced < active.size {
            files.push(active.file.clone());
        }
        if files.is_empty() {
            return None;
        }
        Some(SyncPlan {
            files,
            sealed,
            active: (active.base, active.size),
        })
    }

    /// Records the outcome of a plan's fsyncs. After a failure the sealed files stay to be
    /// synced, and the active segment's unsynced bytes stay unsynced.
    pub fn sync_done(&mut self, plan: SyncPlan, ok: bool) {
        if !ok {
            self.sealed_unsynced.extend(plan.sealed);
            return;
        }
        for s in self.segments.iter_mut() {
            if plan.sealed.contains(&s.base) {
                s.synced = s.size;
            } else if s.base == plan.active.0 {
                s.synced = s.synced.max(plan.active.1.min(s.size));
            }
        }
    }

    /// Whether everything written is known to be on disk.
    pub fn is_synced(&self) -> bool {
        let a = self.segments.last().expect("one segment");
        self.sealed_unsynced.is_empty() && a.synced >= a.size
    }

    /// After a failed fsync: re-reads what was written since the last good sync, writes the
    /// records that are still intact again and syncs them (blocking), cutting those that are
    /// not. Returns the damage found.
    pub fn rewrite_unsynced(&mut self) -> Result<Vec<Damage>> {
        let mut damage = Vec::new();
        let bases = self.sealed_unsynced.clone();
        let last_base = self.segments.last().expect("one segment").base;
        for s in self.segments.iter_mut() {
            let last = s.base == last_base;
            if bases.contains(&s.base) || (last && s.synced < s.size) {
                damage.extend(s.rewrite_unsynced()?);
            }
        }
        self.sealed_unsynced.clear();
        Ok(damage)
    }

    /// The oldest offset still stored.
    pub fn start(&self) -> u64 {
        self.segments.first().expect("one segment").base
    }

    /// The offset after the last written (readable) record.
    pub fn end(&self) -> u64 {
        self.segments.last().expect("one segment").next_offset
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Bytes stored in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Reads written records from `from` (clamped to [`Partition::start`]), at most
    /// `max_records` and about `max_bytes` of payload (always at least one record if any).
    /// Damaged spans are skipped and reported through [`Partition::take_damage`]; in the strict
    /// recovery modes damage that may hide a wanted offset is an error
    /// ([`LogError::Damaged`]) until the reader moves past it.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut from = from.max(self.start());
        let mut bytes = 0usize;
        if max_records == 0 {
            return Ok(out);
        }
        let strict = self.cfg.recovery != RecoveryMode::TolerateCorruption;
        let mut found = Vec::new();
        let res: Result<()> = (|| {
            while from < self.end() {
                let i = self.segments.partition_point(|s| s.base <= from);
                let i = i.saturating_sub(1);
                let seg = &self.segments[i];
                if from >= seg.next_offset {
                    // In a hole between segments: continue with the next one.
                    match self.segments.get(i + 1) {
                        Some(next) => {
                            from = next.base;
                            continue;
                        }
                        None => break,
                    }
                }
                let reached_end = seg.read(
                    from,
                    max_records,
                    max_bytes,
                    &mut out,
                    &mut bytes,
                    &mut found,
                    strict,
                )?;
                if !reached_end || i + 1 == self.segments.len() {
                    break;
                }
                from = self.segments[i + 1].base.max(seg.next_offset);
            }
            Ok(())
        })();
        self.found.borrow_mut().extend(found);
        match res {
            // Refused damage after some records: hand those out; the next read, from after
            // them, meets the damage first.
            Err(e) if e.damage().is_some() && !out.is_empty() => Ok(out),
            r => r.map(|()| out),
        }
    }

    /// Damage found by reads and [`Partition::scrub`] since the last call.
    pub fn take_damage(&self) -> Vec<Damage> {
        std::mem::take(&mut *self.found.borrow_mut())
    }

    /// Verifies the checksums of about `max_bytes` of sealed segments from `cursor` on, and
    /// moves the cursor (wrapping around). Damage is reported through
    /// [`Partition::take_damage`]. Returns the bytes verified.
    pub fn scrub(&self, cursor: &mut ScrubCursor, max_bytes: u64) -> Result<u64> {
        let sealed = &self.segments[..self.segments.len() - 1];
        let Some(i) = sealed
            .iter()
            .position(|s| s.base >= cursor.segment)
            .or((!sealed.is_empty()).then_some(0))
        else {
            return Ok(0);
        };
        let seg = &sealed[i];
        if seg.base != cursor.segment {
            *cursor = ScrubCursor {
                segment: seg.base,
                pos: 0,
            };
        }
        let mut found = Vec::new();
        let pos = seg.verify(cursor.pos, max_bytes, &mut found)?;
        let done = pos - cursor.pos.min(pos);
        self.found.borrow_mut().extend(found);
        if pos >= seg.size {
            *cursor = ScrubCursor {
                segment: seg.base + 1,
                pos: 0,
            };
            if i + 1 == sealed.len() {
                *cursor = ScrubCursor::default();
            }
        } else {
            cursor.pos = pos;
        }
        Ok(done.max(1))
    }

    /// Deletes whole sealed segments beyond `max_bytes` (0 = unlimited) or last written more
    /// than `max_age` ago (`None` = unlimited). Returns how many were removed.
    pub fn enforce_retention(
        &mut self,
        max_bytes: u64,
        max_age: Option<Duration>,
    ) -> Result<usize> {
        let mut removed = 0;
        let now = SystemTime::now();
        while self.segments.len() > 1 {
            let total = self.size_bytes();
            let oldest = &self.segments[0];
            let too_big = max_bytes > 0 && total > max_bytes;
            let too_old = max_age.is_some_and(|age| {
                oldest
                    .file
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|d| d > age)
            });
            if !(too_big || too_old) {
                break;
            }
            let seg = self.segments.remove(0);
            self.sealed_unsynced.retain(|&b| b != seg.base);
            seg.remove()?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Seals the active segment and starts a new one, if it holds records and nothing is
    /// pending; lets [`Partition::drop_before`] reclaim a log whose records were all consumed.
    pub fn roll_if_written(&mut self) -> Result<bool> {
        let active = self.segments.last().expect("one segment");
        if active.size == 0 || !self.pending.is_empty() {
            return Ok(false);
        }
        self.roll()?;
        Ok(true)
    }

    /// Deletes whole sealed segments whose records all lie below `offset` (records a consumer
    /// such as the handoff replayer no longer needs). Returns how many were removed.
    pub fn drop_before(&mut self, offset: u64) -> Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].next_offset <= offset {
            let seg = self.segments.remove(0);
            self.sealed_unsynced.retain(|&b| b != seg.base);
            seg.remove()?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Closes every descriptor of the partition (it reopens what it needs).
    pub fn close_files(&self) {
        for s in &self.segments {
            s.file.close();
        }
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// fsyncs a directory so that created, renamed or removed entries are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync dir", dir, e))
}

/// Replaces `path` with `data` atomically and durably: write a temporary file beside it, fsync,
/// rename over `path`, fsync the directory. A crash leaves either the old or the new content; a
/// failure leaves the old content and no temporary file.
pub fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        if let Some(a) = crate::fail::eval(FP_REPLACE) {
            return Err(a.error());
        }
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(LogError::io("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| LogError::io("rename", path, e))?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fail, DamageKind};
    use std::io::Write;

    const CFG: PartitionConfig = PartitionConfig {
        segment_bytes: 4096,
        index_interval: 256,
        recovery: RecoveryMode::TolerateCorruption,
    };
    /// Large enough that the tests' records stay in one segment.
    const ONE_SEGMENT: PartitionConfig = PartitionConfig {
        segment_bytes: 1 << 20,
        index_interval: 256,
        recovery: RecoveryMode::TolerateCorruption,
    };

    fn files() -> Rc<Files> {
        Files::new(64)
    }

    fn open(dir: &Path, cfg: PartitionConfig) -> (Partition, RecoveryReport) {
        Partition::open(dir, cfg, &files(), 0).unwrap()
    }

    fn fill(p: &mut Partition, n: u64) {
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

    fn offsets(p: &Partition) -> Vec<u64> {
        p.read(0, 100_000, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect()
    }

    fn seg_path(p: &Partition, i: usize) -> PathBuf {
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
                Partition::open(&dir.path().join(i.to_string()), CFG, &budget, 0)
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
        let (mut p, rep) = Partition::open(dir.path(), ONE_SEGMENT, &files(), 30).unwrap();
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
            let e = Partition::open(dir.path(), cfg, &files(), 0).err().unwrap();
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
        assert!(Partition::open(dir.path(), abs, &files(), 0).is_err());
        let tail = PartitionConfig {
            recovery: RecoveryMode::TolerateTail,
            ..ONE_SEGMENT
        };
        let (_, rep) = Partition::open(dir.path(), tail, &files(), 0).unwrap();
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
        let (p, _) = Partition::open(dir.path(), strict, &files(), 0).unwrap();
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
}
