//! Consumer-group offsets of one partition, kept as an append-only log of records
//! (key = group storage name, value = committed offset as u64 BE) in `offsets.log` next to the
//! partition's segments. Replay on open rebuilds the map (last record per group wins) and
//! cuts a damaged tail, reporting it. When the file outgrows the compaction threshold it is
//! rewritten with one record per group ([`replace_file`]: temporary file, fsync, rename, fsync
//! the directory). A failed write keeps the commits pending, so they are written once the disk
//! takes writes again (commits are idempotent: the last one per group wins).

use crate::fs::{Files, LogFile, FP_OFFSETS_WRITE};
use crate::partition::replace_file;
use crate::record::{self, Decoded};
use crate::{LogError, Result};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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
    compact_bytes: u64,
}

impl OffsetLog {
    /// Opens or creates `dir/offsets.log`. Returns the log and the bytes cut from a damaged
    /// tail (0 when the file was intact).
    pub fn open(dir: &Path, compact_bytes: u64, files: &Rc<Files>) -> Result<(Self, u64)> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("mkdir", dir, e))?;
        let path = dir.join("offsets.log");
        let file = LogFile::open_or_create(files, path.clone())
            .map_err(|e| LogError::io("open", &path, e))?;
        let data = std::fs::read(&path).map_err(|e| LogError::io("read", &path, e))?;
        let data = Bytes::from(data);
        let mut committed = BTreeMap::new();
        let mut pos = 0;
        let mut seq = 0;
        while pos < data.len() {
            match record::decode(&data, pos) {
                Decoded::Record(r, n) if r.value.len() == 8 => {
                    let group = String::from_utf8_lossy(&r.key).into_owned();
                    let off = u64::from_be_bytes(r.value[..].try_into().expect("8 bytes"));
                    committed.insert(group, off);
                    seq = r.offset + 1;
                    pos += n;
                }
                _ => break,
            }
        }
        let cut = (data.len() - pos) as u64;
        if cut > 0 {
            file.set_len(pos as u64)
                .and_then(|_| file.sync_data())
                .map_err(|e| LogError::io("truncate", &path, e))?;
        }
        file.close();
        Ok((
            Self {
                path,
                files: files.clone(),
                file,
                size: pos as u64,
                seq,
                generation: 0,
                unsynced: false,
                pending: BytesMut::new(),
                committed,
                compact_bytes,
            },
            cut,
        ))
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
        if self.committed.get(group) == Some(&offset) {
            return false;
        }
        self.committed.insert(group.to_owned(), offset);
        record::encode(
            &mut self.pending,
            self.seq,
            0,
            group.as_bytes(),
            b"",
            &offset.to_be_bytes(),
        );
        self.seq += 1;
        true
    }

    /// Forgets a group (for example when it is deleted).
    pub fn remove(&mut self, group: &str) -> Result<()> {
        if self.committed.remove(group).is_some() {
            // The compaction drops its records, so no tombstone is needed.
            self.compact()?;
        }
        Ok(())
    }

    /// Whether commits are waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes pending commits; compacts the file when it has grown past the threshold. On
    /// failure the commits stay pending.
    pub fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all_at(FP_OFFSETS_WRITE, &self.pending, self.size)
        {
            let _ = self.file.set_len(self.size);
            return Err(LogError::io("write", &self.path, e));
        }
        self.size += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        if self.size > self.compact_bytes {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with one record per group. Synchronous: it runs rarely and the file is
    /// small (one record per group).
    pub fn compact(&mut self) -> Result<()> {
        let mut buf = BytesMut::new();
        for (i, (g, o)) in self.committed.iter().enumerate() {
            record::encode(&mut buf, i as u64, 0, g.as_bytes(), b"", &o.to_be_bytes());
        }
        replace_file(&self.path, &buf)?;
        // The commits still pending are in the new file already.
        self.pending.clear();
        self.file = LogFile::at(&self.files, self.path.clone());
        self.size = buf.len() as u64;
        self.seq = self.committed.len() as u64;
        self.generation += 1;
        self.unsynced = false;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    #[test]
    fn replay_torn_tail_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(8);
        let (mut o, cut) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
        assert_eq!(cut, 0);
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
        let (mut o, cut) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
        assert_eq!(cut, 5, "the damaged tail is cut and reported");
        assert_eq!(o.get("a.g"), Some(9));
        assert_eq!(o.get("b.g"), Some(7));
        let gen0 = o.generation;
        for i in 0..200 {
            o.commit("a.g", 10 + i);
            o.write_pending().unwrap();
        }
        assert!(o.generation > gen0, "compacted at least once");
        assert!(
            std::fs::metadata(dir.path().join("offsets.log"))
                .unwrap()
                .len()
                <= 4096
        );
        drop(o);
        let (o, _) = OffsetLog::open(dir.path(), 4096, &files).unwrap();
        assert_eq!(o.get("a.g"), Some(209));
        assert_eq!(o.get("b.g"), Some(7));
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
        let (o, cut) = OffsetLog::open(dir.path(), 1 << 20, &files).unwrap();
        assert_eq!((o.get("a.g"), cut), (Some(2), 0));
    }
}
