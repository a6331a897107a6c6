//! A partition: an ordered list of segments plus the pending (appended, not yet written) bytes.
//!
//! The owner calls [`Partition::append`] for each record (no I/O), [`Partition::write_pending`]
//! once per flush cycle (one positioned write), and syncs the handles it gets from
//! [`Partition::active_file`] and [`Partition::take_sealed`] for durability. Reads see records
//! up to [`Partition::end`], the offset after the last written record.

use crate::record;
use crate::segment::{self, Segment};
use crate::{LogError, Record, Result};
use bytes::BytesMut;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Per-partition settings.
#[derive(Debug, Clone, Copy)]
pub struct PartitionConfig {
    /// Roll the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// One index entry per this many bytes.
    pub index_interval: u64,
}

/// What recovery found when a partition was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Bytes dropped from torn or corrupt tails.
    pub truncated_bytes: u64,
    /// The first offset after recovery.
    pub next_offset: u64,
}

/// One partition of a topic.
pub struct Partition {
    dir: PathBuf,
    cfg: PartitionConfig,
    segments: Vec<Segment>,
    pending: BytesMut,
    /// `(offset, position in pending)` of records that start an index interval.
    pending_index: Vec<(u64, u32)>,
    since_index: u64,
    next_offset: u64,
    sealed_unsynced: Vec<File>,
}

impl Partition {
    /// Opens (creating if needed) the partition in `dir`, recovering its segments.
    pub fn open(dir: &Path, cfg: PartitionConfig) -> Result<(Self, RecoveryReport)> {
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
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let sealed = i + 1 < count;
            let (seg, dropped) = Segment::open(
                segment::log_path(dir, base),
                base,
                sealed,
                cfg.index_interval,
            )?;
            report.truncated_bytes += dropped;
            if let Some(prev) = segments.last() {
                if prev.next_offset != seg.base {
                    // Everything from the gap on is unreachable; a sealed segment can only be
                    // short if its tail was corrupted, so later segments cannot be trusted.
                    report.truncated_bytes += seg.size;
                    seg.remove()?;
                    continue;
                }
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
            sync_dir(dir)?;
        }
        let last = segments.last().expect("one segment");
        let next_offset = last.next_offset;
        let since_index = last.since_index;
        report.next_offset = next_offset;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                cfg,
                segments,
                pending: BytesMut::new(),
                pending_index: Vec::new(),
                since_index,
                next_offset,
                sealed_unsynced: Vec::new(),
            },
            report,
        ))
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
    /// Returns the bytes written.
    pub fn write_pending(&mut self) -> Result<usize> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let active = self.segments.last().expect("one segment");
        if active.size > 0 && active.size + self.pending.len() as u64 > self.cfg.segment_bytes {
            self.roll()?;
        }
        let data = segment::freeze_pending(&mut self.pending);
        let index = std::mem::take(&mut self.pending_index);
        let next = self.next_offset;
        let active = self.segments.last_mut().expect("one segment");
        // On failure nothing after this write may be acknowledged: the caller stops writing.
        active.append(&data, next, &index)?;
        active.since_index = self.since_index;
        Ok(data.len())
    }

    fn roll(&mut self) -> Result<()> {
        let base = self.segments.last().expect("one segment").next_offset;
        let old = self.segments.last().expect("one segment");
        old.seal()?;
        let handle = old
            .file
            .try_clone()
            .map_err(|e| LogError::io("dup", &old.path, e))?;
        self.sealed_unsynced.push(handle);
        self.segments.push(Segment::create(&self.dir, base)?);
        self.since_index = 0;
        // Offsets in pending_index are absolute, positions relative to pending: still valid.
        sync_dir(&self.dir)
    }

    /// The active segment's base offset (changes when it rolls) and its file, for fsync.
    pub fn active_file(&self) -> (u64, &File) {
        let s = self.segments.last().expect("one segment");
        (s.base, &s.file)
    }

    /// Files of segments sealed since the last call; each needs one final fsync.
    pub fn take_sealed(&mut self) -> Vec<File> {
        std::mem::take(&mut self.sealed_unsynced)
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
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut from = from.max(self.start());
        let mut bytes = 0usize;
        if max_records == 0 {
            return Ok(out);
        }
        while from < self.end() {
            let i = self.segments.partition_point(|s| s.base <= from) - 1;
            let seg = &self.segments[i];
            if from >= seg.next_offset {
                break;
            }
            let reached_end = seg.read(from, max_records, max_bytes, &mut out, &mut bytes)?;
            if !reached_end || i + 1 == self.segments.len() {
                break;
            }
            from = seg.next_offset;
        }
        Ok(out)
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
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|d| d > age)
            });
            if !(too_big || too_old) {
                break;
            }
            self.segments.remove(0).remove()?;
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
            self.segments.remove(0).remove()?;
            removed += 1;
        }
        Ok(removed)
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
/// rename over `path`, fsync the directory. A crash leaves either the old or the new content.
pub fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| LogError::io("create", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| LogError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LogError::io("rename", path, e))?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CFG: PartitionConfig = PartitionConfig {
        segment_bytes: 4096,
        index_interval: 256,
    };
    /// Large enough that the tests' records stay in one segment.
    const ONE_SEGMENT: PartitionConfig = PartitionConfig {
        segment_bytes: 1 << 20,
        index_interval: 256,
    };

    fn fill(p: &mut Partition, n: u64) {
        for i in 0..n {
            let off = p.append(
                i as i64,
                format!("k{i}").as_bytes(),
                b"t",
                format!("value-{i}").as_bytes(),
            );
            assert_eq!(off, i);
            if i % 7 == 0 {
                p.write_pending().unwrap();
            }
        }
        p.write_pending().unwrap();
    }

    #[test]
    fn append_read_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, rep) = Partition::open(dir.path(), CFG).unwrap();
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
        let (p, rep) = Partition::open(dir.path(), CFG).unwrap();
        assert_eq!(rep.next_offset, 500);
        assert_eq!(rep.truncated_bytes, 0);
        assert_eq!(p.read(0, 10_000, usize::MAX).unwrap().len(), 500);
        assert_eq!(
            p.read(499, 10, usize::MAX).unwrap()[0].value,
            &b"value-499"[..]
        );
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = Partition::open(dir.path(), ONE_SEGMENT).unwrap();
        fill(&mut p, 50);
        let path = p.segments.last().unwrap().path.clone();
        drop(p);
        // A torn write: half a record's worth of garbage after the last good record.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0, 0, 0, 60, 1, 2, 3, 4, 1, 0, 0]).unwrap();
        drop(f);
        let (mut p, rep) = Partition::open(dir.path(), CFG).unwrap();
        assert_eq!(rep.truncated_bytes, 11);
        assert_eq!(rep.next_offset, 50);
        assert_eq!(p.append(0, b"", b"", b"after"), 50);
        p.write_pending().unwrap();
        assert_eq!(p.read(50, 1, 100).unwrap()[0].value, &b"after"[..]);
    }

    #[test]
    fn corrupt_record_in_the_middle_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = Partition::open(dir.path(), ONE_SEGMENT).unwrap();
        fill(&mut p, 20);
        let path = p.segments.last().unwrap().path.clone();
        let size = p.segments.last().unwrap().size;
        drop(p);
        let mut data = std::fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(&path, &data).unwrap();
        let (p, rep) = Partition::open(dir.path(), CFG).unwrap();
        assert!(rep.truncated_bytes > 0 && rep.truncated_bytes < size);
        assert!(rep.next_offset < 20);
        assert_eq!(
            p.read(0, 100, usize::MAX).unwrap().len() as u64,
            rep.next_offset
        );
    }

    #[test]
    fn retention_by_size_keeps_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = Partition::open(dir.path(), CFG).unwrap();
        fill(&mut p, 500);
        let before = p.segments.len();
        let removed = p.enforce_retention(9000, None).unwrap();
        assert!(removed > 0 && p.segments.len() == before - removed);
        assert!(p.size_bytes() <= 9000 + CFG.segment_bytes);
        assert!(p.start() > 0);
        let rs = p.read(0, 1, usize::MAX).unwrap();
        assert_eq!(rs[0].offset, p.start(), "reads below start begin at start");
        assert_eq!(
            p.enforce_retention(0, Some(Duration::from_secs(3600)))
                .unwrap(),
            0
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            p.enforce_retention(0, Some(Duration::from_millis(10)))
                .unwrap()
                > 0
        );
        assert_eq!(p.segments.len(), 1);
    }
}
