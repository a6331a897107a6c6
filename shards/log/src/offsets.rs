//! Consumer-group offsets of one partition, kept as an append-only log of records
//! (key = group storage name, value = committed offset as u64 BE) in `offsets.log` next to the
//! partition's segments, and the partition's high-water mark of offsets handed out (the same
//! record under the reserved key [`HELD_KEY`], which no group name can be).
//!
//! Replay on open rebuilds the map (last record per group wins) and recovers like a segment: a
//! damaged span is skipped (the replay resynchronises on the next whole, checksummed record with
//! an 8-byte value, so every intact later commit is kept), a torn tail (no valid record after
//! the damage) is cut; both are reported as [`DamageKind::OffsetsLog`]. A file with a skipped
//! span is rewritten compacted at once, so the damage does not stay on disk (if that fails the
//! file is kept as it is, the replay skips the span again, and the rewrite is retried with the
//! next compaction).
//!
//! When the file outgrows the compaction threshold it is rewritten with one record per group
//! ([`crate::partition::replace_file`]: temporary file, fsync, rename, fsync the directory). A
//! failed compaction is not a failed write (the commits are in the old file already): it is
//! logged and counted, the old file is kept, and it is retried once the file grew by another
//! threshold or after [`COMPACT_RETRY`]. A failed write keeps the commits pending, so they are written once the
//! disk takes writes again (commits are idempotent: the last one per group wins).

use crate::fs::{ensure_dir, Files, LogFile, FP_OFFSETS_WRITE};
use crate::partition::replace_file_reporting_rename;
use crate::record::{self, Decoded, Record, HEADER, MAX_RECORD};
use crate::{Damage, DamageKind, Result};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The reserved key of the high-water-mark record ([`OffsetLog::hold`]). Group names are
/// `[A-Za-z0-9_.-]+`, so none can start with a NUL byte.
pub const HELD_KEY: &[u8] = b"\0held";

/// How long after a failed compaction it is retried at the earliest (unless the file grew by
/// another compaction threshold before).
pub const COMPACT_RETRY: Duration = Duration::from_secs(30);

/// The committed offsets of every group on one partition.
pub struct OffsetLog {
    path: PathBuf,
    files: Rc<Files>,
    file: LogFile,
    size: u64,
    seq: u64,
    generation: u64,
    unsynced: bool,
    pending: BytesMut,
    committed: BTreeMap<String, u64>,
    held: u64,
    compact_bytes: u64,
    /// The file holds a skipped damaged span: compact it even below the threshold.
    compact_wanted: bool,
    /// After a failed compaction: not again before the file reaches this size or this time.
    compact_backoff: Option<(u64, Instant)>,
    compact_failures: u64,
}

/// What replaying the file found.
#[derive(Default)]
struct Replay {
    committed: BTreeMap<String, u64>,
    held: u64,
    seq: u64,
    /// End of the last valid record.
    end: usize,
    /// Skipped spans and a cut tail, as damage.
    damage: Vec<Damage>,
    /// Whether a span in the middle was skipped (the file needs rewriting).
    skipped: bool,
}

impl OffsetLog {
    /// Opens or creates `dir/offsets.log`. Returns the log and the damage recovery found in it
    /// (each of kind [`DamageKind::OffsetsLog`]: skipped spans and a cut torn tail; empty when
    /// the file was intact). Fails only when the file cannot be opened or read, or `dir` is not
    /// a directory.
    pub fn open(dir: &Path, compact_bytes: u64, files: &Rc<Files>) -> Result<(Self, Vec<Damage>)> {
        ensure_dir(dir)?;
        let path = dir.join("offsets.log");
        let file = LogFile::open_or_create(files, path.clone())
            .map_err(|e| crate::LogError::io("open", &path, e))?;
        let data = std::fs::read(&path).map_err(|e| crate::LogError::io("read", &path, e))?;
        let len = data.len() as u64;
        let replay = replay(&Bytes::from(data));
        let mut log = Self {
            path,
            files: files.clone(),
            file,
            size: replay.end as u64,
            seq: replay.seq,
            generation: 0,
            unsynced: false,
            pending: BytesMut::new(),
            committed: replay.committed,
            held: replay.held,
            compact_bytes,
            compact_wanted: replay.skipped,
            compact_backoff: None,
            compact_failures: 0,
        };
        if replay.skipped && log.try_compact() {
            // Rewritten without the damage (the tail with it).
            return Ok((log, replay.damage));
        }
        if len > log.size {
            // A torn tail: cut it so that appends follow the last valid record.
            log.file
                .set_len(log.size)
                .and_then(|_| log.file.sync_data())
                .map_err(|e| crate::LogError::io("truncate", &log.path, e))?;
        }
        log.file.close();
        Ok((log, replay.damage))
    }

    /// The committed offset of `group`, if it has one.
    pub fn get(&self, group: &str) -> Option<u64> {
        self.committed.get(group).copied()
    }

    /// Every group with its committed offset.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u64)> {
        self.committed.iter().map(|(g, o)| (g.as_str(), *o))
    }

    /// The highest committed offset of any group (0 without any): every offset below it was
    /// handed out, so the partition must never reuse one.
    pub fn max_committed(&self) -> u64 {
        self.committed.values().copied().max().unwrap_or(0)
    }

    /// Records a commit (no I/O). Returns false if it was already committed at that offset.
    pub fn commit(&mut self, group: &str, offset: u64) -> bool {
        debug_assert!(
            group.as_bytes() != HELD_KEY,
            "a reserved key is not a group"
        );
        if self.committed.get(group) == Some(&offset) {
            return false;
        }
        self.committed.insert(group.to_owned(), offset);
        self.push(group.as_bytes(), offset);
        true
    }

    /// Records (no I/O; written by [`OffsetLog::write_pending`] like a commit) that every offset
    /// below `next` was handed out, so that recovery never hands one out again even when the
    /// records are gone (a failed write left a hole; an offset was answered before its record
    /// was written). Returns false if the mark was already at or above `next` (it never goes
    /// down). The partition's owner calls it with the partition's next offset after a failed
    /// write, and ahead of answering offsets whose records are not written yet.
    pub fn hold(&mut self, next: u64) -> bool {
        if next <= self.held {
            return false;
        }
        self.held = next;
        self.push(HELD_KEY, next);
        true
    }

    /// The high-water mark of offsets handed out ([`OffsetLog::hold`]; 0 without one).
    pub fn held(&self) -> u64 {
        self.held
    }

    fn push(&mut self, key: &[u8], value: u64) {
        record::encode(
            &mut self.pending,
            self.seq,
            0,
            key,
            b"",
            &value.to_be_bytes(),
        );
        self.seq += 1;
    }

    /// Forgets a group (for example when it is deleted).
    pub fn remove(&mut self, group: &str) -> Result<()> {
        if self.committed.remove(group).is_some() {
            // The compaction drops its records, so no tombstone is needed. If it fails the
            // group's records stay in the file until a later compaction succeeds.
            self.compact_wanted = true;
            self.compact()?;
        }
        Ok(())
    }

    /// Whether commits are waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes pending commits; compacts the file when it has grown past the threshold. On
    /// failure the commits stay pending. A failed compaction is no failure of the write (it is
    /// logged, counted in [`OffsetLog::compaction_failures`] and retried later).
    pub fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all_at(FP_OFFSETS_WRITE, &self.pending, self.size)
        {
            let _ = self.file.set_len(self.size);
            return Err(crate::LogError::io("write", &self.path, e));
        }
        self.size += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        if (self.size > self.compact_bytes || self.compact_wanted) && self.compaction_due() {
            self.try_compact();
        }
        Ok(())
    }

    fn compaction_due(&self) -> bool {
        self.compact_backoff
            .is_none_or(|(size, at)| self.size >= size || Instant::now() >= at)
    }

    /// Compacts; on failure logs it, counts it and backs off. Returns whether it succeeded.
    fn try_compact(&mut self) -> bool {
        match self.compact() {
            Ok(()) => true,
            Err(e) => {
                self.compact_failures += 1;
                self.compact_backoff = Some((
                    self.size.saturating_add(self.compact_bytes.max(1)),
                    Instant::now() + COMPACT_RETRY,
                ));
                tracing::warn!(path = %self.path.display(),
                    "cannot compact the offsets log (kept as it is, retried later): {e}");
                false
            }
        }
    }

    /// Failed compactions since open (each kept the old file; see [`OffsetLog::write_pending`]).
    pub fn compaction_failures(&self) -> u64 {
        self.compact_failures
    }

    /// Rewrites the file with one record per group (and the high-water mark). Synchronous: it
    /// runs rarely and the file is small. On failure the old file stays in use.
    pub fn compact(&mut self) -> Result<()> {
        let mut buf = BytesMut::new();
        let mut seq = 0;
        for (g, o) in self.committed.iter() {
            record::encode(&mut buf, seq, 0, g.as_bytes(), b"", &o.to_be_bytes());
            seq += 1;
        }
        if self.held > 0 {
            record::encode(&mut buf, seq, 0, HELD_KEY, b"", &self.held.to_be_bytes());
            seq += 1;
        }
        let dir_unsynced = match replace_file_reporting_rename(&self.path, &buf) {
            Ok(()) => None,
            // Renamed, but the directory fsync failed: the new file is in place and is used.
            Err((e, true)) => Some(e),
            Err((e, false)) => return Err(e),
        };
        // The commits still pending are in the new file already.
        self.pending.clear();
        self.file = LogFile::at(&self.files, self.path.clone());
        self.size = buf.len() as u64;
        self.seq = seq;
        self.generation += 1;
        self.compact_wanted = false;
        self.compact_backoff = None;
        match dir_unsynced {
            None => {
                self.unsynced = false;
                Ok(())
            }
            Some(e) => {
                self.unsynced = true;
                Err(e)
            }
        }
    }

    /// The file, if it holds writes that are not synced yet, with a token for
    /// [`OffsetLog::synced`] naming what an fsync of it now covers.
    pub fn unsynced_file(&self) -> Option<((u64, u64), &LogFile)> {
        self.unsynced
            .then_some(((self.generation, self.size), &self.file))
    }

    /// An fsync covering `token` (from [`OffsetLog::unsynced_file`]) succeeded.
    pub fn synced(&mut self, token: (u64, u64)) {
        if token == (self.generation, self.size) {
            self.unsynced = false;
        }
    }

    /// Closes the file's descriptor (it is reopened when needed).
    pub fn close(&self) {
        self.file.close();
    }
}

/// Replays `data`: applies every valid record, skips damaged spans followed by a valid record,
/// stops at a torn tail.
fn replay(data: &Bytes) -> Replay {
    let mut out = Replay::default();
    let mut pos = 0;
    let damage = |position: usize, bytes: usize| Damage {
        segment: 0,
        position: position as u64,
        bytes: bytes as u64,
        offsets: 0..0,
        kind: DamageKind::OffsetsLog,
    };
    while pos < data.len() {
        if let Some((r, n)) = entry_at(data, pos) {
            let value = u64::from_be_bytes(r.value[..].try_into().unwrap_or([0; 8]));
            if r.key[..] == *HELD_KEY {
                out.held = out.held.max(value);
            } else {
                let group = String::from_utf8_lossy(&r.key).into_owned();
                out.committed.insert(group, value);
            }
            out.seq = out.seq.max(r.offset.saturating_add(1));
            pos += n;
            out.end = pos;
            continue;
        }
        match (pos + 1..data.len()).find(|&q| entry_at(data, q).is_some()) {
            Some(q) => {
                out.damage.push(damage(pos, q - pos));
                out.skipped = true;
                pos = q;
            }
            None => {
                out.damage.push(damage(pos, data.len() - pos));
                break;
            }
        }
    }
    out
}

/// The commit record starting at `pos` (a whole record with a valid checksum and an 8-byte
/// value), and its length. The header is checked before the checksum, so that resynchronising
/// over garbage costs little.
fn entry_at(data: &Bytes, pos: usize) -> Option<(Record, usize)> {
    let h = data.get(pos..pos + HEADER)?;
    let total = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize + 4;
    let kl = u16::from_be_bytes([h[26], h[27]]) as usize;
    let tl = u16::from_be_bytes([h[28], h[29]]) as usize;
    let vl = u32::from_be_bytes([h[30], h[31], h[32], h[33]]) as usize;
    let plausible = vl == 8 && tl == 0 && HEADER + kl + 8 == total && total <= MAX_RECORD;
    if !plausible || h[8] != 1 || h[9] != 0 || pos + total > data.len() {
        return None;
    }
    match record::decode(data, pos) {
        Decoded::Record(r, n) if r.value.len() == 8 => Some((r, n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
