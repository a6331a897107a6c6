//! One segment: a `.log` file of records starting at `base`, and its sparse `.index`
//! (`magic u32 | size u64 | next_offset u64 | count u32 | (rel_offset u32, position u32)*`),
//! written when the segment is sealed. The active segment's index lives in memory and is rebuilt
//! by scanning on open.

use crate::record::{self, Decoded};
use crate::{LogError, Result};
use bytes::{Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const INDEX_MAGIC: u32 = 0x4b57_4958; // "KWIX"
const SCAN_CHUNK: usize = 1 << 20;

pub(crate) struct Segment {
    pub base: u64,
    pub file: File,
    pub path: PathBuf,
    /// Bytes in the file (all of them valid records).
    pub size: u64,
    /// Offset after the last record.
    pub next_offset: u64,
    /// `(offset - base, position)` pairs, ascending.
    pub index: Vec<(u32, u32)>,
    /// Log bytes since the last index entry.
    pub since_index: u64,
}

pub(crate) fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index")
}

impl Segment {
    pub fn create(dir: &Path, base: u64) -> Result<Self> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io("create", &path, e))?;
        Ok(Self::empty(base, file, path))
    }

    fn empty(base: u64, file: File, path: PathBuf) -> Self {
        Self {
            base,
            file,
            path,
            size: 0,
            next_offset: base,
            index: Vec::new(),
            since_index: 0,
        }
    }

    /// Opens an existing segment. A sealed segment with a matching index is trusted; otherwise
    /// the file is scanned and a torn or corrupt tail truncated. Returns the bytes dropped.
    pub fn open(path: PathBuf, base: u64, sealed: bool, interval: u64) -> Result<(Self, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let mut seg = Self::empty(base, file, path);
        if sealed && seg.load_index(len) {
            return Ok((seg, 0));
        }
        seg.scan(len, interval)?;
        let dropped = len - seg.size;
        if dropped > 0 {
            seg.file
                .set_len(seg.size)
                .map_err(|e| LogError::io("truncate", &seg.path, e))?;
            seg.file
                .sync_all()
                .map_err(|e| LogError::io("fsync", &seg.path, e))?;
        }
        Ok((seg, dropped))
    }

    fn load_index(&mut self, len: u64) -> bool {
        let Ok(data) = std::fs::read(index_path(&self.path)) else {
            return false;
        };
        if data.len() < 24
            || u32::from_be_bytes(data[0..4].try_into().unwrap_or([0; 4])) != INDEX_MAGIC
        {
            return false;
        }
        let size = u64::from_be_bytes(data[4..12].try_into().unwrap_or([0; 8]));
        let next = u64::from_be_bytes(data[12..20].try_into().unwrap_or([0; 8]));
        let count = u32::from_be_bytes(data[20..24].try_into().unwrap_or([0; 4])) as usize;
        if size != len || data.len() != 24 + count * 8 || next < self.base {
            return false;
        }
        self.index = data[24..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        self.size = size;
        self.next_offset = next;
        true
    }

    fn scan(&mut self, len: u64, interval: u64) -> Result<()> {
        let mut pos: u64 = 0;
        let mut expect = self.base;
        'outer: while pos < len {
            let want = SCAN_CHUNK.min((len - pos) as usize);
            let chunk = self.read_chunk(pos, want)?;
            let mut at = 0usize;
            loop {
                match record::decode(&chunk, at) {
                    Decoded::Record(r, n) => {
                        if r.offset != expect {
                            break 'outer;
                        }
                        if self.since_index >= interval {
                            self.index
                                .push(((expect - self.base) as u32, (pos + at as u64) as u32));
                            self.since_index = 0;
                        }
                        self.since_index += n as u64;
                        expect += 1;
                        at += n;
                        self.size = pos + at as u64;
                        if at == chunk.len() {
                            break;
                        }
                    }
                    Decoded::Incomplete(need) => {
                        if at == 0 {
                            // A record larger than the chunk: read it whole if the file has it.
                            if pos + need as u64 > len {
                                break 'outer;
                            }
                            let big = self.read_chunk(pos, need)?;
                            match record::decode(&big, 0) {
                                Decoded::Record(r, n) if r.offset == expect => {
                                    expect += 1;
                                    self.since_index += n as u64;
                                    self.size = pos + n as u64;
                                }
                                _ => break 'outer,
                            }
                        }
                        break;
                    }
                    Decoded::Corrupt(_) => break 'outer,
                }
            }
            pos = self.size;
        }
        self.next_offset = expect;
        Ok(())
    }

    fn read_chunk(&self, pos: u64, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read", &self.path, e))?;
        Ok(Bytes::from(buf))
    }

    /// Writes `data` (records `self.next_offset..next_offset`) at the end of the file and adds
    /// the index entries, given as `(offset, position within data)`.
    pub fn append(&mut self, data: &[u8], next_offset: u64, index: &[(u64, u32)]) -> Result<()> {
        self.file
            .write_all_at(data, self.size)
            .map_err(|e| LogError::io("write", &self.path, e))?;
        for &(off, p) in index {
            self.index
                .push(((off - self.base) as u32, (self.size + p as u64) as u32));
        }
        self.size += data.len() as u64;
        self.next_offset = next_offset;
        Ok(())
    }

    /// Writes the index file of a segment that will not change again.
    pub fn seal(&self) -> Result<()> {
        let path = index_path(&self.path);
        let mut data = Vec::with_capacity(24 + self.index.len() * 8);
        data.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        data.extend_from_slice(&self.size.to_be_bytes());
        data.extend_from_slice(&self.next_offset.to_be_bytes());
        data.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        for (o, p) in &self.index {
            data.extend_from_slice(&o.to_be_bytes());
            data.extend_from_slice(&p.to_be_bytes());
        }
        let mut f = File::create(&path).map_err(|e| LogError::io("create", &path, e))?;
        f.write_all(&data)
            .map_err(|e| LogError::io("write", &path, e))?;
        Ok(())
    }

    /// Reads records from `from` (which must be within this segment) until `max_records` or
    /// about `max_bytes` of payload, appending to `out`. Returns true if it reached the end.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<crate::Record>,
        bytes: &mut usize,
    ) -> Result<bool> {
        let rel = (from - self.base) as u32;
        let i = self.index.partition_point(|&(o, _)| o <= rel);
        let mut pos = if i == 0 {
            0
        } else {
            self.index[i - 1].1 as u64
        };
        while pos < self.size {
            // Read about what the caller can take (guessing 256 bytes a record), not the whole
            // byte budget: a reader far behind the end would otherwise copy megabytes per call.
            // The loop reads on if the guess was short.
            let left = max_records.saturating_sub(out.len());
            let want = left
                .saturating_mul(256)
                .saturating_add(record::HEADER)
                .min(
                    max_bytes
                        .saturating_sub(*bytes)
                        .saturating_add(record::HEADER),
                )
                .clamp(4 << 10, 4 << 20)
                .min((self.size - pos) as usize);
            let chunk = self.read_chunk(pos, want)?;
            let mut at = 0usize;
            while at < chunk.len() {
                match record::decode(&chunk, at) {
                    Decoded::Record(r, n) => {
                        at += n;
                        if r.offset < from {
                            continue;
                        }
                        *bytes += r.value.len();
                        out.push(r);
                        if out.len() >= max_records || *bytes >= max_bytes {
                            return Ok(false);
                        }
                    }
                    Decoded::Incomplete(need) => {
                        if at == 0 {
                            let big = self.read_chunk(pos, need)?;
                            if let Decoded::Record(r, n) = record::decode(&big, 0) {
                                at = n;
                                if r.offset >= from {
                                    *bytes += r.value.len();
                                    out.push(r);
                                    if out.len() >= max_records || *bytes >= max_bytes {
                                        return Ok(false);
                                    }
                                }
                            } else {
                                return Err(self.corrupt(pos));
                            }
                        }
                        break;
                    }
                    Decoded::Corrupt(_) => return Err(self.corrupt(pos + at as u64)),
                }
            }
            pos += at as u64;
        }
        Ok(true)
    }

    fn corrupt(&self, pos: u64) -> LogError {
        LogError::Corrupt {
            path: self.path.display().to_string(),
            reason: format!("invalid record at position {pos}"),
        }
    }

    pub fn remove(self) -> Result<()> {
        let idx = index_path(&self.path);
        let _ = std::fs::remove_file(&idx);
        std::fs::remove_file(&self.path).map_err(|e| LogError::io("remove", &self.path, e))
    }
}

/// Reads `len` bytes from the start of a buffer of pending records.
pub(crate) fn freeze_pending(pending: &mut BytesMut) -> Bytes {
    pending.split().freeze()
}
