//! A partition: an ordered list of segments plus the pending (appended, not yet written) bytes.
//!
//! The owner calls [`Partition::append`] for each record (no I/O), [`Partition::write_pending`]
//! once per flush cycle (one positioned write), and syncs the files of a [`SyncPlan`] for
//! durability. Reads see records up to [`Partition::end`], the offset after the last written
//! record.
//!
//! Recovery ([`Partition::open`], in the `recovery` module) scans what it cannot trust, skips
//! damaged spans, cuts a torn tail, keeps every segment after a damaged or missing one, and
//! never lets an offset be used twice: the next offset is at least the [`Floor`] the caller
//! knows was reached. Reads and the scrubber report what they find ([`Partition::take_damage`]),
//! including a sealed segment whose file disappeared or fails while running.

use crate::fs::{Files, FP_REPLACE};
use crate::offsets::OffsetLog;
use crate::record;
use crate::segment::{self, Segment};
use crate::{Damage, LogError, LogFile, Record, RecoveryMode, Result};
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
    /// Zeros written ahead of the active segment's appends, in steps of this many bytes (0 =
    /// none): see the `segment` module.
    pub preallocate: u64,
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
    /// Every damaged span, missing segment, torn tail and lost tail found.
    pub damage: Vec<Damage>,
    /// The first offset after recovery.
    pub next_offset: u64,
    /// Entries named like segment or index files that are not regular files (directories,
    /// dangling links): skipped, and moved aside to `<name>.stray` where possible.
    pub stray: Vec<PathBuf>,
}

/// What the caller knows about offsets used before, from the partition's offsets log: recovery
/// never hands out an offset below [`Floor::next`] again, and reports records missing below
/// `committed` ([`crate::DamageKind::LostTail`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    /// The highest offset any consumer group committed ([`OffsetLog::max_committed`]): every
    /// offset below it was handed out and its record read (or it was a hole).
    pub committed: u64,
    /// The high-water mark of offsets handed out ([`OffsetLog::held`]): every offset below it
    /// was handed out, whether or not its record reached the file.
    pub held: u64,
}

impl Floor {
    /// The floor an offsets log records.
    pub fn of(offsets: &OffsetLog) -> Self {
        Self {
            committed: offsets.max_committed(),
            held: offsets.held(),
        }
    }

    /// The least next offset: above every offset known to be handed out.
    pub fn next(&self) -> u64 {
        self.committed.max(self.held)
    }
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
        active.preallocate(
            active.size + data.len() as u64,
            self.cfg.preallocate,
            self.cfg.segment_bytes,
        );
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
        let seg = Segment::create(&self.files, &self.dir, base, self.cfg.index_interval)?;
        let old = self.segments.last().expect("one segment");
        old.trim();
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
    /// ([`LogError::Damaged`]) until the reader moves past it. A sealed segment whose file
    /// cannot be opened or read is such damage too (reported once, as
    /// [`crate::DamageKind::MissingSegment`] over its whole range; its file is tried again by
    /// later reads). An I/O error of the active segment is an error.
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
                let res = seg.read(
                    from,
                    max_records,
                    max_bytes,
                    &mut out,
                    &mut bytes,
                    &mut found,
                    strict,
                );
                let reached_end = match res {
                    Err(e) if e.damage().is_none() && i + 1 < self.segments.len() => {
                        let d = self.unreadable(seg, &e, &mut found);
                        if strict {
                            return Err(LogError::Damaged {
                                path: seg.file.path().display().to_string(),
                                damage: d,
                            });
                        }
                        true
                    }
                    r => r?,
                };
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
    /// [`Partition::take_damage`] (a segment that cannot be read as by [`Partition::read`]).
    /// Returns the bytes verified (at least 1, so that a caller's budget always advances).
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
        let (pos, done) = match seg.verify(cursor.pos, max_bytes, &mut found) {
            Ok(pos) => (pos, pos - cursor.pos.min(pos)),
            Err(e) => {
                // Reported like a read finds it; the scrubber moves on to the next segment.
                self.unreadable(seg, &e, &mut found);
                (seg.size, 0)
            }
        };
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

    /// The damage a sealed segment whose file failed with `e` is; pushed to `found` (and logged)
    /// the first time only.
    fn unreadable(&self, seg: &Segment, e: &LogError, found: &mut Vec<Damage>) -> Damage {
        let (d, first) = seg.unreadable();
        if first {
            tracing::warn!(dir = %self.dir.display(), segment = seg.base,
                "a sealed segment cannot be read (offsets {}..{} are unavailable): {e}",
                d.offsets.start, d.offsets.end);
            found.push(d.clone());
        }
        d
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

    /// Cuts the zeros written ahead of the active segment's appends (a clean stop).
    pub fn trim(&self) {
        self.segments.last().expect("one segment").trim();
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
/// failure leaves the old content and no temporary file (except a failed directory fsync after
/// the rename: the new content is in place then, but its name may not be durable).
pub fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    replace_file_reporting_rename(path, data).map_err(|(e, _)| e)
}

/// [`replace_file`] for a secret: the new file is readable and writable by its owner only.
pub fn replace_private_file(path: &Path, data: &[u8]) -> Result<()> {
    replace_with_mode(path, data, 0o600).map_err(|(e, _)| e)
}

/// [`replace_file`], telling on failure whether the new content is in place (the rename
/// succeeded and only the directory fsync failed).
pub(crate) fn replace_file_reporting_rename(
    path: &Path,
    data: &[u8],
) -> std::result::Result<(), (LogError, bool)> {
    // What `File::create` asks for: the umask decides.
    replace_with_mode(path, data, 0o666)
}

/// [`replace_file_reporting_rename`], creating the new file with `mode` (before the umask).
fn replace_with_mode(
    path: &Path,
    data: &[u8],
    mode: u32,
) -> std::result::Result<(), (LogError, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        if let Some(a) = crate::fail::eval(FP_REPLACE) {
            return Err(a.error());
        }
        // A temporary file a crash left behind would keep its mode: made afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err((LogError::io("write", &tmp, e), false));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err((LogError::io("rename", path, e), false));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
    .map_err(|e| (e, true))
}

mod recovery;
#[cfg(test)]
mod tests;
