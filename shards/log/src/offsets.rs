//! Consumer-group offsets of one partition, kept as an append-only log of records
//! (key = group storage name, value = committed offset as u64 BE) in `offsets.log` next to the
//! partition's segments. Replay on open rebuilds the map (last record per group wins) and
//! truncates a torn tail. When the file outgrows the compaction threshold it is rewritten with
//! one record per group ([`replace_file`]: temporary file, fsync, rename, fsync the directory).

use crate::partition::replace_file;
use crate::record::{self, Decoded};
use crate::{LogError, Result};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The committed offsets of every group on one partition.
pub struct OffsetLog {
    path: PathBuf,
    file: File,
    size: u64,
    seq: u64,
    generation: u64,
    pending: BytesMut,
    committed: BTreeMap<String, u64>,
    compact_bytes: u64,
}

impl OffsetLog {
    /// Opens or creates `dir/offsets.log`.
    pub fn open(dir: &Path, compact_bytes: u64) -> Result<Self> {
        let path = dir.join("offsets.log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
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
        if (pos as u64) < data.len() as u64 {
            file.set_len(pos as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| LogError::io("truncate", &path, e))?;
        }
        Ok(Self {
            path,
            file,
            size: pos as u64,
            seq,
            generation: 0,
            pending: BytesMut::new(),
            committed,
            compact_bytes,
        })
    }

    /// The committed offset of `group`, if it has one.
    pub fn get(&self, group: &str) -> Option<u64> {
        self.committed.get(group).copied()
    }

    /// Every group with its committed offset.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u64)> {
        self.committed.iter().map(|(g, o)| (g.as_str(), *o))
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
    pub fn remove(&mut self, group: &str) {
        if self.committed.remove(group).is_some() {
            // A compaction drops its records; until then a tombstone is not needed because
            // deletion happens together with a compaction.
            let _ = self.compact();
        }
    }

    /// Whether commits are waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes pending commits; compacts the file when it has grown past the threshold.
    pub fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = self.pending.split();
        self.file
            .write_all_at(&data, self.size)
            .map_err(|e| LogError::io("write", &self.path, e))?;
        self.size += data.len() as u64;
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
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| LogError::io("open", &self.path, e))?;
        self.size = buf.len() as u64;
        self.seq = self.committed.len() as u64;
        self.generation += 1;
        Ok(())
    }

    /// A generation number that changes whenever the file is replaced, and the file, for fsync.
    pub fn file(&self) -> (u64, &File) {
        (self.generation, &self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn replay_torn_tail_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = OffsetLog::open(dir.path(), 4096).unwrap();
        assert_eq!(o.get("a.g"), None);
        o.commit("a.g", 5);
        o.commit("b.g", 7);
        o.commit("a.g", 9);
        o.write_pending().unwrap();
        drop(o);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("offsets.log"))
            .unwrap();
        f.write_all(&[0, 0, 0, 99, 1]).unwrap();
        let mut o = OffsetLog::open(dir.path(), 4096).unwrap();
        assert_eq!(o.get("a.g"), Some(9));
        assert_eq!(o.get("b.g"), Some(7));
        for i in 0..200 {
            o.commit("a.g", 10 + i);
            o.write_pending().unwrap();
        }
        assert!(o.file().0 > 0, "compacted at least once");
        assert!(
            std::fs::metadata(dir.path().join("offsets.log"))
                .unwrap()
                .len()
                <= 4096
        );
        drop(o);
        let o = OffsetLog::open(dir.path(), 4096).unwrap();
        assert_eq!(o.get("a.g"), Some(209));
        assert_eq!(o.get("b.g"), Some(7));
    }
}
