//! One segment: a `.log` file of records starting at `base`, and its sparse `.index`
//! (`magic u32 | size u64 | next_offset u64 | count u32 | (rel_offset u32, position u32)* |
//! crc32c u32`, the checksum over everything before it), written when the segment is sealed.
//! An index that does not match its checksum or its log's size is ignored and the log scanned. The active segment's index lives in memory and is rebuilt
//! by scanning on open.
//!
//! Damage handling: a record whose length, magic, checksum or offset is wrong is a damaged span.
//! Scans and reads resynchronise after it (the next position where a whole record with a valid
//! checksum and a plausible offset starts), so a flipped byte costs only the records it hit;
//! the span is remembered so later reads jump over it. No read allocates more than
//! [`record::MAX_RECORD`] for one record, nor reads past the segment's valid end.

use crate::fs::{Files, LogFile, FP_WRITE};
use crate::record::{self, Decoded, Record, HEADER, MAX_RECORD};
use crate::{Damage, DamageKind, LogError, Result};
use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const INDEX_MAGIC: u32 = 0x4b57_4932; // "KWI2"
const SCAN_CHUNK: usize = 1 << 20;

pub(crate) struct Segment {
    pub base: u64,
    pub file: LogFile,
    /// Bytes in the file up to the end of the last valid record.
    pub size: u64,
    /// Bytes known to be on disk (fsynced).
    pub synced: u64,
    /// Offset after the last record (or the partition's high watermark, if higher).
    pub next_offset: u64,
    /// `(offset - base, position)` pairs, ascending.
    pub index: Vec<(u32, u32)>,
    /// Log bytes since the last index entry.
    pub since_index: u64,
    /// Damaged spans known in this segment; reads jump over them.
    pub bad: RefCell<Vec<Damage>>,
}

pub(crate) fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index")
}

/// Sequential access to a file region `[.., limit)` through one read buffer.
struct Reader<'a> {
    file: &'a LogFile,
    limit: u64,
    chunk: usize,
    buf: Bytes,
    at: u64,
}

/// What starts at a position.
enum At {
    Record(Record, u64),
    End,
    Bad,
}

impl<'a> Reader<'a> {
    fn new(file: &'a LogFile, limit: u64, chunk: usize) -> Self {
        Self {
            file,
            limit,
            chunk,
            buf: Bytes::new(),
            at: 0,
        }
    }

    /// `[pos, pos + n)`, which must lie within the limit.
    fn bytes(&mut self, pos: u64, n: usize) -> Result<Bytes> {
        let end = pos + n as u64;
        if pos < self.at || end > self.at + self.buf.len() as u64 {
            let want = (n.max(self.chunk) as u64).min(self.limit - pos) as usize;
            let mut v = vec![0u8; want];
            self.file
                .read_exact_at(&mut v, pos)
                .map_err(|e| LogError::io("read", self.file.path(), e))?;
            self.buf = Bytes::from(v);
            self.at = pos;
        }
        let s = (pos - self.at) as usize;
        Ok(self.buf.slice(s..s + n))
    }

    /// The record at `pos` if a valid one with offset ≥ `min_offset` starts there.
    fn record_at(&mut self, pos: u64, min_offset: u64) -> Result<At> {
        if pos >= self.limit {
            return Ok(At::End);
        }
        if self.limit - pos < HEADER as u64 {
            return Ok(At::Bad);
        }
        let head = self.bytes(pos, HEADER)?;
        let Some(total) = plausible(&head, min_offset) else {
            return Ok(At::Bad);
        };
        if pos + total as u64 > self.limit {
            return Ok(At::Bad);
        }
        let b = self.bytes(pos, total)?;
        Ok(match record::decode(&b, 0) {
            Decoded::Record(r, n) => At::Record(r, n as u64),
            _ => At::Bad,
        })
    }

    /// The first position at or after `from` where a valid record with offset ≥ `min_offset`
    /// starts, and that record; `None` if there is none before the limit.
    fn resync(&mut self, from: u64, min_offset: u64) -> Result<Option<(u64, Record)>> {
        let mut pos = from;
        while pos + HEADER as u64 <= self.limit {
            // Scan the buffered bytes for a plausible header; verify candidates whole.
            let avail = (self.limit - pos).min(self.chunk.max(SCAN_CHUNK) as u64) as usize;
            let window = self.bytes(pos, avail)?;
            let mut i = 0;
            while i + HEADER <= window.len() {
                if let Some(total) = plausible(&window[i..i + HEADER], min_offset) {
                    let c = pos + i as u64;
                    if c + total as u64 <= self.limit {
                        let rec = if i + total <= window.len() {
                            match record::decode(&window.slice(i..i + total), 0) {
                                Decoded::Record(r, _) => Some(r),
                                _ => None,
                            }
                        } else {
                            match self.record_at(c, min_offset)? {
                                At::Record(r, _) => Some(r),
                                _ => None,
                            }
                        };
                        if let Some(r) = rec {
                            return Ok(Some((c, r)));
                        }
                    }
                }
                i += 1;
            }
            pos += (window.len() + 1 - HEADER) as u64;
        }
        Ok(None)
    }
}

/// The total length of the record whose header is `h`, if the header could be one: a length
/// within bounds that matches its field lengths, the magic byte, no flags, and an offset not
/// below `min_offset`.
fn plausible(h: &[u8], min_offset: u64) -> Option<usize> {
    let total = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize + 4;
    if !(HEADER..=MAX_RECORD).contains(&total) || h[8] != 1 || h[9] != 0 {
        return None;
    }
    let kl = u16::from_be_bytes([h[26], h[27]]) as usize;
    let tl = u16::from_be_bytes([h[28], h[29]]) as usize;
    let vl = u32::from_be_bytes([h[30], h[31], h[32], h[33]]) as usize;
    if HEADER + kl + tl + vl != total {
        return None;
    }
    let off = u64::from_be_bytes(h[10..18].try_into().expect("8 bytes"));
    (off >= min_offset).then_some(total)
}

impl Segment {
    pub fn create(files: &Rc<Files>, dir: &Path, base: u64) -> Result<Self> {
        let path = log_path(dir, base);
        let file =
            LogFile::create(files, path.clone()).map_err(|e| LogError::io("create", &path, e))?;
        Ok(Self::empty(base, file))
    }

    fn empty(base: u64, file: LogFile) -> Self {
        Self {
            base,
            file,
            size: 0,
            synced: 0,
            next_offset: base,
            index: Vec::new(),
            since_index: 0,
            bad: RefCell::new(Vec::new()),
        }
    }

    /// Opens an existing segment without changing it. A sealed segment with a matching index is
    /// trusted (damage inside it is found when it is read or scrubbed); otherwise the file is
    /// scanned from `min_offset` on. Returns the damage found, the file's length (a tail past
    /// [`Segment::size`] is cut by [`Segment::cut_tail`]) and whether the index was trusted.
    pub fn open(
        files: &Rc<Files>,
        path: PathBuf,
        base: u64,
        trust_index: bool,
        interval: u64,
        min_offset: u64,
    ) -> Result<(Self, Vec<Damage>, u64, bool)> {
        let len = std::fs::metadata(&path)
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let file = LogFile::at(files, path);
        let mut seg = Self::empty(base, file);
        if trust_index && min_offset <= base && seg.load_index(len) {
            seg.synced = seg.size;
            return Ok((seg, Vec::new(), len, true));
        }
        let damage = seg.scan(len, interval, min_offset.max(base))?;
        seg.synced = seg.size;
        seg.file.close();
        Ok((seg, damage, len, false))
    }

    fn load_index(&mut self, len: u64) -> bool {
        let Ok(data) = std::fs::read(index_path(self.file.path())) else {
            return false;
        };
        if data.len() < 28
            || u32::from_be_bytes(data[0..4].try_into().unwrap_or([0; 4])) != INDEX_MAGIC
        {
            return false;
        }
        let (data, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(data).to_be_bytes() != crc {
            return false;
        }
        let size = u64::from_be_bytes(data[4..12].try_into().unwrap_or([0; 8]));
        let next = u64::from_be_bytes(data[12..20].try_into().unwrap_or([0; 8]));
        let count = u32::from_be_bytes(data[20..24].try_into().unwrap_or([0; 4])) as usize;
        if size != len || data.len() != 24 + count * 8 || next < self.base {
            return false;
        }
        let index: Vec<(u32, u32)> = data[24..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let ordered = index.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        if !ordered || index.last().is_some_and(|&(_, p)| u64::from(p) >= size) {
            return false;
        }
        self.index = index;
        self.size = size;
        self.next_offset = next;
        true
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
                            .push(((rec.offset - self.base) as u32, pos as u32));
                        self.since_index = 0;
                    }
                    self.since_index += n;
                    expect = rec.offset + 1;
                    pos += n;
                    self.size = pos;
                }
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
                .push(((off - self.base) as u32, (self.size + p as u64) as u32));
        }
        self.size += data.len() as u64;
        self.next_offset = next_offset;
        Ok(())
    }

    /// After a failed write: removes whatever part of it reached the file (best effort; a
    /// leftover is a damaged tail that recovery cuts).
    pub fn cut_partial(&self) {
        if let Err(e) = self.file.set_len(self.size) {
            tracing::warn!(path = %self.file.path().display(), "cannot cut a failed write: {e}");
        }
    }

    /// Writes the index file of a segment that will not change again. Best effort: without an
    /// index the segment is scanned on open.
    pub fn seal(&self) {
        let path = index_path(self.file.path());
        let mut data = Vec::with_capacity(28 + self.index.len() * 8);
        data.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        data.extend_from_slice(&self.size.to_be_bytes());
        data.extend_from_slice(&self.next_offset.to_be_bytes());
        data.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        for (o, p) in &self.index {
            data.extend_from_slice(&o.to_be_bytes());
            data.extend_from_slice(&p.to_be_bytes());
        }
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_be_bytes());
        let res = std::fs::File::create(&path).and_then(|mut f| f.write_all(&data));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(path = %path.display(), "cannot write segment index (it will be rebuilt): {e}");
        }
    }

    /// Reads records from `from` (which must be within this segment) until `max_records` or
    /// about `max_bytes` of payload, appending to `out`. Returns true if it reached the end.
    /// Damage met on the way is pushed to `found` (once per span); with `strict`, damage that
    /// may hide an offset at or after `from` is an error instead of being skipped.
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
        let rel = from.saturating_sub(self.base).min(u32::MAX as u64) as u32;
        let i = self.index.partition_point(|&(o, _)| o <= rel);
        let (mut pos, mut min_off) = if i == 0 {
            (0, self.base)
        } else {
            let (o, p) = self.index[i - 1];
            (p as u64, self.base + o as u64)
        };
        // Read about what the caller can take (guessing 256 bytes a record), not the whole
        // byte budget: a reader far behind the end would otherwise copy megabytes per call.
        let left = max_records.saturating_sub(out.len());
        let chunk = left
            .saturating_mul(256)
            .saturating_add(HEADER)
            .min(max_bytes.saturating_sub(*bytes).saturating_add(HEADER))
            .clamp(4 << 10, 4 << 20);
        let mut r = Reader::new(&self.file, self.size, chunk);
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
        let mut pos = pos;
        let stop = pos.saturating_add(max_bytes);
        let mut min_off = self.base;
        while pos < self.size && pos < stop {
            if let Some(d) = self.known_bad(pos) {
                pos = d.position + d.bytes;
                min_off = min_off.max(d.offsets.end);
                continue;
            }
            match r.record_at(pos, min_off)? {
                At::End => break,
                At::Record(rec, n) => {
                    min_off = rec.offset + 1;
                    pos += n;
                }
                At::Bad => {
                    let d = self.damage_at(&mut r, pos, min_off)?;
                    pos = d.position + d.bytes;
                    min_off = min_off.max(d.offsets.end);
                    found.push(d);
                }
            }
        }
        Ok(pos)
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
                self.index.retain(|&(_, p)| (p as u64) < pos);
                self.file
                    .set_len(pos)
                    .map_err(|e| LogError::io("truncate", &path, e))?;
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
