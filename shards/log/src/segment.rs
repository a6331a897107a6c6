//! One segment: a `.log` file of records starting at `base`, and its sparse offset index
//! ([`index`]: the `.index` file of a sealed segment, verified on open and on every read, rebuilt
//! when wrong). The active segment's index lives in memory and is rebuilt by scanning on open.
//!
//! Damage handling: a record whose length, magic, checksum or offset is wrong is a damaged span.
//! Scans and reads resynchronise after it (the next position where a whole record with a valid
//! checksum and a plausible offset starts), so a flipped byte costs only the records it hit;
//! the span is remembered so later reads jump over it. No read allocates more than
//! [`crate::record::MAX_RECORD`] for one record, nor reads past the segment's valid end
//! ([`reader`]).
//! A sealed segment whose file cannot be opened or read any more is reported once
//! ([`Segment::unreadable`]); the partition then treats its offsets as damaged.
//!
//! Space ahead: the active segment's file is extended with zeros ahead of its appends
//! ([`Segment::preallocate`]), so that an append rarely changes the file's size and its
//! `fdatasync` writes the data alone instead of also committing the inode through the file
//! system's journal (about half the cost of each sync on ext4). Records end where zeros begin:
//! a scan takes a tail of zeros for the end of the segment, not for damage. Sealing, a clean
//! stop and recovery cut the zeros off.

mod index;
mod reader;

use crate::fs::{Files, LogFile, FP_PREALLOCATE, FP_WRITE};
use crate::record::{Record, HEADER};
use crate::{Damage, DamageKind, LogError, Result};
use bytes::{Bytes, BytesMut};
#[cfg(test)]
pub(crate) use index::encode_index;
use index::index_path;
use reader::{At, Reader, SCAN_CHUNK};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The most zeros one append writes ahead of itself ([`Segment::preallocate`]).
pub const TOP_UP: u64 = 128 << 10;

pub(crate) struct Segment {
    pub base: u64,
    pub file: LogFile,
    /// Bytes in the file up to the end of the last valid record.
    pub size: u64,
    /// The file's length as this segment made it: `size`, or more once zeros were written
    /// ahead ([`Segment::preallocate`]).
    pub allocated: Cell<u64>,
    /// Whether writing zeros ahead failed (a full disk): not tried again in this segment.
    pub no_preallocation: Cell<bool>,
    /// Bytes known to be on disk (fsynced).
    pub synced: u64,
    /// Offset after the last record (or the partition's high watermark, if higher).
    pub next_offset: u64,
    /// `(offset - base, position)` pairs, ascending (rebuilt by reads that find it wrong).
    pub index: RefCell<Vec<(u32, u32)>>,
    /// One index entry per this many bytes.
    pub interval: u64,
    /// Log bytes since the last index entry.
    pub since_index: u64,
    /// Damaged spans known in this segment; reads jump over them.
    pub bad: RefCell<Vec<Damage>>,
    /// Whether the segment is sealed (its index file written or loaded).
    pub sealed: Cell<bool>,
    /// Whether a failure to open or read the file was reported already.
    pub unreadable_reported: Cell<bool>,
}

pub(crate) fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl Segment {
    pub fn create(files: &Rc<Files>, dir: &Path, base: u64, interval: u64) -> Result<Self> {
        let path = log_path(dir, base);
        let file =
            LogFile::create(files, path.clone()).map_err(|e| LogError::io("create", &path, e))?;
        Ok(Self::empty(base, file, interval))
    }

    fn empty(base: u64, file: LogFile, interval: u64) -> Self {
        Self {
            base,
            file,
            size: 0,
            allocated: Cell::new(0),
            no_preallocation: Cell::new(false),
            synced: 0,
            next_offset: base,
            index: RefCell::new(Vec::new()),
            interval,
            since_index: 0,
            bad: RefCell::new(Vec::new()),
            sealed: Cell::new(false),
            unreadable_reported: Cell::new(false),
        }
    }

    /// Opens an existing segment without changing it. A sealed segment (one followed by a
    /// segment starting at `next_base`) with a valid index is trusted (damage inside it is found
    /// when it is read or scrubbed); otherwise the file is scanned from `min_offset` on.
    /// Returns the damage found, the file's length (a tail past [`Segment::size`] is cut by
    /// [`Segment::cut_tail`]) and whether the index was trusted.
    pub fn open(
        files: &Rc<Files>,
        path: PathBuf,
        base: u64,
        next_base: Option<u64>,
        interval: u64,
        min_offset: u64,
    ) -> Result<(Self, Vec<Damage>, u64, bool)> {
        let len = std::fs::metadata(&path)
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let file = LogFile::at(files, path);
        let mut seg = Self::empty(base, file, interval);
        seg.allocated.set(len);
        if let Some(next_base) = next_base.filter(|_| min_offset <= base) {
            if seg.load_index(len, next_base) {
                seg.synced = seg.size;
                return Ok((seg, Vec::new(), len, true));
            }
        }
        let damage = seg.scan(len, interval, min_offset.max(base))?;
        seg.synced = seg.size;
        seg.file.close();
        Ok((seg, damage, len, false))
    }

    /// Scans the whole file, rebuilding the index; damaged spans followed by valid records are
    /// skipped (and remembered), a damaged tail is left beyond `size`.
    fn scan(&mut self, len: u64, interval: u64, min_offset: u64) -> Result<Vec<Damage>> {
        let file = self.file.clone();
        let mut r = Reader::new(&file, len, SCAN_CHUNK);
        let mut damage = Vec::new();
        let mut pos: u64 = 0;
        let mut expect = min_offset;
        loop {
            match r.record_at(pos, expect)? {
                At::End => break,
                At::Record(rec, n) => {
                    if self.since_index >= interval {
                        self.index
                            .get_mut()
                            .push(((rec.offset - self.base) as u32, pos as u32));
                        self.since_index = 0;
                    }
                    self.since_index += n;
                    expect = rec.offset + 1;
                    pos += n;
                    self.size = pos;
                }
                // Zeros to the end: space written ahead of appends, not damage.
                At::Bad if r.zeros_from(pos)? => break,
                At::Bad => match r.resync(pos + 1, expect)? {
                    Some((q, rec)) => {
                        let d = Damage {
                            segment: self.base,
                            position: pos,
                            bytes: q - pos,
                            offsets: expect..rec.offset,
                            kind: DamageKind::Corrupt,
                        };
                        self.bad.borrow_mut().push(d.clone());
                        damage.push(d);
                        // The index must not point into the damaged span.
                        self.since_index = interval;
                        pos = q;
                    }
                    None => {
                        damage.push(Damage {
                            segment: self.base,
                            position: pos,
                            bytes: len - pos,
                            offsets: expect..expect,
                            kind: DamageKind::TornTail,
                        });
                        break;
                    }
                },
            }
        }
        self.next_offset = expect;
        Ok(damage)
    }

    /// Cuts the file to [`Segment::size`] (dropping a damaged tail) and syncs it.
    pub fn cut_tail(&mut self) -> Result<()> {
        let path = self.file.path().to_path_buf();
        self.file
            .set_len(self.size)
            .map_err(|e| LogError::io("truncate", &path, e))?;
        self.allocated.set(self.size);
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", &path, e))
    }

    /// Writes `data` (records up to `next_offset`) at the end of the file and adds the index
    /// entries, given as `(offset, position within data)`. On failure nothing changes in memory;
    /// the caller cuts what a short write may have left ([`Segment::cut_partial`]).
    pub fn append(&mut self, data: &[u8], next_offset: u64, index: &[(u64, u32)]) -> Result<()> {
        self.file
            .write_all_at(FP_WRITE, data, self.size)
            .map_err(|e| LogError::io("write", self.file.path(), e))?;
        for &(off, p) in index {
            self.index
                .get_mut()
                .push(((off - self.base) as u32, (self.size + p as u64) as u32));
        }
        self.size += data.len() as u64;
        self.allocated.set(self.allocated.get().max(self.size));
        self.next_offset = next_offset;
        Ok(())
    }

    /// Keeps zeros written `step` bytes ahead of `end` (where the coming append ends), but not
    /// past `cap` (the segment's roll size); nothing when `step` is 0, when `end` is past `cap`,
    /// or after a failure. Once less than half of `step` is left ahead, one piece is added
    /// past what was written ahead (or past `end`, if the append reaches further; the append
    /// itself covers up to `end`): [`TOP_UP`], or twice the append if that is more, so that
    /// large appends land in zeros too instead of growing the file each time. The zeros cost
    /// a copy as large as the data, spread over the writes, instead of one long write every
    /// `step` bytes that the requests of that flush would wait behind. A failure (a full disk)
    /// gives the space back; appends then grow the file as they would without it.
    pub fn preallocate(&self, end: u64, step: u64, cap: u64) {
        let have = self.allocated.get().max(self.size);
        if step == 0 || end > cap || self.no_preallocation.get() || have >= end + step / 2 {
            return;
        }
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut pos = have.max(end);
        let piece = step.min(TOP_UP).max(2 * end.saturating_sub(self.size));
        let target = (pos + piece).min(end + step).min(cap);
        if target <= pos {
            return;
        }
        while pos < target {
            let n = ((target - pos) as usize).min(ZEROS.len());
            if let Err(e) = self.file.write_all_at(FP_PREALLOCATE, &ZEROS[..n], pos) {
                tracing::warn!(path = %self.file.path().display(), "cannot write space ahead of appends ({e}): appending without");
                self.no_preallocation.set(true);
                let _ = self.file.set_len(have);
                return;
            }
            pos += n as u64;
        }
        self.allocated.set(target);
    }

    /// Cuts the zeros written ahead (sealing, a clean stop): the file ends with its last record.
    pub fn trim(&self) {
        if self.allocated.get() <= self.size {
            return;
        }
        match self.file.set_len(self.size) {
            Ok(()) => self.allocated.set(self.size),
            Err(e) => {
                tracing::warn!(path = %self.file.path().display(), "cannot cut the space written ahead: {e}")
            }
        }
    }

    /// After a failed write: removes whatever part of it reached the file (best effort; a
    /// leftover is a damaged tail that recovery cuts).
    pub fn cut_partial(&self) {
        match self.file.set_len(self.size) {
            Ok(()) => self.allocated.set(self.size),
            Err(e) => {
                tracing::warn!(path = %self.file.path().display(), "cannot cut a failed write: {e}")
            }
        }
    }

    /// Reads records from `from` (which must be within this segment) until `max_records` or
    /// about `max_bytes` of payload, appending to `out`. Returns true if it reached the end.
    /// Damage met on the way is pushed to `found` (once per span, and a wrong index once); with
    /// `strict`, damage that may hide an offset at or after `from` is an error instead of being
    /// skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
        bytes: &mut usize,
        found: &mut Vec<Damage>,
        strict: bool,
    ) -> Result<bool> {
        // Read about what the caller can take (guessing 256 bytes a record), not the whole
        // byte budget: a reader far behind the end would otherwise copy megabytes per call.
        let left = max_records.saturating_sub(out.len());
        let chunk = left
            .saturating_mul(256)
            .saturating_add(HEADER)
            .min(max_bytes.saturating_sub(*bytes).saturating_add(HEADER))
            .clamp(4 << 10, 4 << 20);
        let mut r = Reader::new(&self.file, self.size, chunk);
        let (mut pos, mut min_off) = self.start_at(&mut r, from, found)?;
        while pos < self.size {
            let d = match self.known_bad(pos) {
                Some(d) => d,
                None => match r.record_at(pos, min_off)? {
                    At::End => break,
                    At::Record(rec, n) => {
                        pos += n;
                        min_off = rec.offset + 1;
                        if rec.offset < from {
                            continue;
                        }
                        *bytes += rec.value.len();
                        out.push(rec);
                        if out.len() >= max_records || *bytes >= max_bytes {
                            return Ok(false);
                        }
                        continue;
                    }
                    At::Bad => {
                        let d = self.damage_at(&mut r, pos, min_off)?;
                        found.push(d.clone());
                        d
                    }
                },
            };
            if strict && d.offsets.end > from {
                return Err(LogError::Damaged {
                    path: self.file.path().display().to_string(),
                    damage: d,
                });
            }
            pos = d.position + d.bytes;
            min_off = min_off.max(d.offsets.end);
        }
        Ok(true)
    }

    /// The known damaged span that contains `pos`.
    fn known_bad(&self, pos: u64) -> Option<Damage> {
        self.bad
            .borrow()
            .iter()
            .find(|d| d.position <= pos && pos < d.position + d.bytes)
            .cloned()
    }

    /// Measures (and remembers) the damaged span starting at `pos`: up to the next valid record
    /// or the segment's end.
    fn damage_at(&self, r: &mut Reader<'_>, pos: u64, min_off: u64) -> Result<Damage> {
        let (end, lost_to) = match r.resync(pos + 1, min_off)? {
            Some((q, rec)) => (q, rec.offset),
            None => (self.size, self.next_offset),
        };
        let d = Damage {
            segment: self.base,
            position: pos,
            bytes: end - pos,
            offsets: min_off..lost_to.max(min_off),
            kind: DamageKind::Corrupt,
        };
        self.bad.borrow_mut().push(d.clone());
        Ok(d)
    }

    /// Verifies (checksums) up to about `max_bytes` of records from `pos`, a record boundary;
    /// returns the position after what was verified. New damage is pushed to `found`.
    pub fn verify(&self, pos: u64, max_bytes: u64, found: &mut Vec<Damage>) -> Result<u64> {
        let mut r = Reader::new(&self.file, self.size, SCAN_CHUNK);
        let stop = pos.saturating_add(max_bytes);
        self.walk(&mut r, pos, self.base, stop, found, |_| {})
    }

    /// Walks the records from `pos` (a record boundary, where offsets of at least `min_off`
    /// are expected) until the end or about `stop`: jumps over known damaged spans, measures
    /// and remembers new ones (pushed to `found`), and calls `each` with
    /// `(position, offset, length)` of every valid record, or `None` after a damaged span.
    /// Returns the position reached.
    fn walk(
        &self,
        r: &mut Reader<'_>,
        mut pos: u64,
        mut min_off: u64,
        stop: u64,
        found: &mut Vec<Damage>,
        mut each: impl FnMut(Option<(u64, u64, u64)>),
    ) -> Result<u64> {
        while pos < self.size && pos < stop {
            if let Some(d) = self.known_bad(pos) {
                pos = d.position + d.bytes;
                min_off = min_off.max(d.offsets.end);
                each(None);
                continue;
            }
            match r.record_at(pos, min_off)? {
                At::End => break,
                At::Record(rec, n) => {
                    each(Some((pos, rec.offset, n)));
                    min_off = rec.offset + 1;
                    pos += n;
                }
                At::Bad => {
                    let d = self.damage_at(r, pos, min_off)?;
                    pos = d.position + d.bytes;
                    min_off = min_off.max(d.offsets.end);
                    found.push(d);
                    each(None);
                }
            }
        }
        Ok(pos)
    }

    /// The damage a sealed segment is once its file cannot be opened or read (deleted, replaced,
    /// failing): its whole range, as [`DamageKind::MissingSegment`]. The second value is true
    /// the first time only (report it then).
    pub fn unreadable(&self) -> (Damage, bool) {
        let d = Damage {
            segment: self.base,
            position: 0,
            bytes: self.size,
            offsets: self.base..self.next_offset,
            kind: DamageKind::MissingSegment,
        };
        (d, !self.unreadable_reported.replace(true))
    }

    /// After a failed fsync the kernel may have dropped the written pages: reads back what was
    /// written since the last good sync, keeps the valid records, writes them again and syncs.
    /// Records that did not survive are cut (their offsets stay used).
    pub fn rewrite_unsynced(&mut self) -> Result<Vec<Damage>> {
        let path = self.file.path().to_path_buf();
        let from = self.synced.min(self.size);
        let mut damage = Vec::new();
        if from < self.size {
            let mut r = Reader::new(&self.file, self.size, SCAN_CHUNK);
            let mut pos = from;
            let mut min_off = self.base;
            while pos < self.size {
                match r.record_at(pos, min_off)? {
                    At::Record(rec, n) => {
                        min_off = rec.offset + 1;
                        pos += n;
                    }
                    At::End => break,
                    At::Bad => {
                        damage.push(Damage {
                            segment: self.base,
                            position: pos,
                            bytes: self.size - pos,
                            offsets: min_off..self.next_offset,
                            kind: DamageKind::TornTail,
                        });
                        break;
                    }
                }
            }
            let mut data = BytesMut::zeroed((pos - from) as usize);
            self.file
                .read_exact_at(&mut data, from)
                .map_err(|e| LogError::io("read", &path, e))?;
            self.file
                .write_all_at(FP_WRITE, &data, from)
                .map_err(|e| LogError::io("write", &path, e))?;
            if pos < self.size {
                self.size = pos;
                self.index.get_mut().retain(|&(_, p)| (p as u64) < pos);
                self.file
                    .set_len(pos)
                    .map_err(|e| LogError::io("truncate", &path, e))?;
                self.allocated.set(pos);
            }
        }
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", &path, e))?;
        self.synced = self.size;
        Ok(damage)
    }

    pub fn remove(self) -> Result<()> {
        self.file.close();
        let idx = index_path(self.file.path());
        let _ = std::fs::remove_file(&idx);
        std::fs::remove_file(self.file.path())
            .map_err(|e| LogError::io("remove", self.file.path(), e))
    }
}

/// Takes the pending records out of the buffer.
pub(crate) fn freeze_pending(pending: &mut BytesMut) -> Bytes {
    pending.split().freeze()
}
