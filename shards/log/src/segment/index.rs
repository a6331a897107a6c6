//! A segment's sparse offset index: the `.index` file beside the log
//! (`magic u32 | size u64 | next_offset u64 | count u32 | (rel_offset u32, position u32)* |
//! crc32c u32`, the checksum over everything before it), written when the segment is sealed.
//!
//! An index is never trusted blindly. On open it must match its checksum and its log's size,
//! its `next_offset` must be the next segment's base, and its entries must strictly increase in
//! offset and position, with positions inside the log and offsets in `[base, next_offset)`;
//! otherwise the log is scanned and the index written again. On every read the record at the
//! entry the read starts from must be the one the entry names; if it is not, the index is
//! rebuilt from the log (reported once as [`DamageKind::BadIndex`]) and the read starts from
//! the rebuilt index, so an index can never make a read skip records.

use super::reader::{Reader, SCAN_CHUNK};
use super::{At, Segment};
use crate::{Damage, DamageKind, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const INDEX_MAGIC: u32 = 0x4b57_4932; // "KWI2"

pub(crate) fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index")
}

/// The bytes of an index file for a log of `size` bytes whose records end before `next`.
pub(crate) fn encode_index(size: u64, next: u64, entries: &[(u32, u32)]) -> Vec<u8> {
    let mut data = Vec::with_capacity(28 + entries.len() * 8);
    data.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
    data.extend_from_slice(&size.to_be_bytes());
    data.extend_from_slice(&next.to_be_bytes());
    data.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (o, p) in entries {
        data.extend_from_slice(&o.to_be_bytes());
        data.extend_from_slice(&p.to_be_bytes());
    }
    let crc = crc32c::crc32c(&data);
    data.extend_from_slice(&crc.to_be_bytes());
    data
}

impl Segment {
    /// Loads the index file if it is valid for a log of `len` bytes followed by a segment
    /// starting at `next_base` (see the module docs); returns whether it was.
    pub(super) fn load_index(&mut self, len: u64, next_base: u64) -> bool {
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
        // Sealing sets the next segment's base to this one's next offset; any other value would
        // make reads jump over records (too low) or distrust the next segment's (too high).
        if size != len || data.len() != 24 + count * 8 || next < self.base || next != next_base {
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
        let within = index.last().is_none_or(|&(o, p)| {
            u64::from(p) < size
                && self
                    .base
                    .checked_add(u64::from(o))
                    .is_some_and(|o| o < next)
        });
        if !ordered || !within {
            return false;
        }
        *self.index.get_mut() = index;
        self.size = size;
        self.next_offset = next;
        self.sealed.set(true);
        true
    }

    /// Writes the index file of a segment that will not change again. Best effort: without an
    /// index the segment is scanned on open.
    pub fn seal(&self) {
        self.sealed.set(true);
        let path = index_path(self.file.path());
        let data = encode_index(self.size, self.next_offset, &self.index.borrow());
        let res = std::fs::File::create(&path).and_then(|mut f| f.write_all(&data));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(path = %path.display(), "cannot write segment index (it will be rebuilt): {e}");
        }
    }

    /// Where a read of `from` starts: the position and offset of the last index entry at or
    /// before `from` (outside known damage), once the record there proved to be the one the
    /// entry names; the segment's start without one. An entry that names another record makes
    /// the index be rebuilt (reported in `found`, as is damage the rebuild meets).
    pub(super) fn start_at(
        &self,
        r: &mut Reader<'_>,
        from: u64,
        found: &mut Vec<Damage>,
    ) -> Result<(u64, u64)> {
        let rel = from.saturating_sub(self.base).min(u32::MAX as u64) as u32;
        for rebuilt in [false, true] {
            let Some((o, p)) = self.entry_before(rel) else {
                return Ok((0, self.base));
            };
            let (claimed, p) = (self.base + u64::from(o), u64::from(p));
            match r.record_at(p, self.base)? {
                At::Record(rec, _) if rec.offset == claimed => return Ok((p, claimed)),
                _ if rebuilt => break,
                _ => {}
            }
            self.rebuild_index(found)?;
            // A damaged record where a right entry points is data damage (the rebuild reported
            // it), not a wrong index.
            if self.known_bad(p).is_none() {
                tracing::warn!(path = %self.file.path().display(), offset = claimed, position = p,
                    "segment index entry does not match the log: index rebuilt");
                found.push(Damage {
                    segment: self.base,
                    position: p,
                    bytes: 0,
                    offsets: claimed..claimed,
                    kind: DamageKind::BadIndex,
                });
            }
        }
        // Even the rebuilt index does not match (the file changed under us): scan from the start.
        Ok((0, self.base))
    }

    /// The last entry at or before relative offset `rel` that is not inside known damage.
    fn entry_before(&self, rel: u32) -> Option<(u32, u32)> {
        let index = self.index.borrow();
        let mut i = index.partition_point(|&(o, _)| o <= rel);
        while i > 0 && self.known_bad(u64::from(index[i - 1].1)).is_some() {
            i -= 1;
        }
        i.checked_sub(1).map(|i| index[i])
    }

    /// Rebuilds the index from the log (one sequential pass; damage met is remembered and
    /// pushed to `found`) and, for a sealed segment, writes the index file again.
    fn rebuild_index(&self, found: &mut Vec<Damage>) -> Result<()> {
        let mut r = Reader::new(&self.file, self.size, SCAN_CHUNK);
        let mut index = Vec::new();
        let mut since = 0;
        let interval = self.interval;
        self.walk(&mut r, 0, self.base, u64::MAX, found, |rec| match rec {
            Some((pos, offset, n)) => {
                if since >= interval {
                    index.push(((offset - self.base) as u32, pos as u32));
                    since = 0;
                }
                since += n;
            }
            // The index must not point into a damaged span.
            None => since = interval,
        })?;
        *self.index.borrow_mut() = index;
        if self.sealed.get() {
            self.seal();
        }
        Ok(())
    }
}
