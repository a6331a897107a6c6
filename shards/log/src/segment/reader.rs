//! Bounded sequential reads of a segment file: [`Reader`] reads a region through one buffer,
//! tells what starts at a position ([`At`]) and resynchronises after damage. No read allocates
//! more than [`MAX_RECORD`] for one record, nor reads past the region's limit.

use crate::fs::LogFile;
use crate::record::{self, Decoded, Record, HEADER, MAX_RECORD};
use crate::{LogError, Result};
use bytes::Bytes;

/// Bytes read at once by scans.
pub(crate) const SCAN_CHUNK: usize = 1 << 20;

/// Sequential access to a file region `[.., limit)` through one read buffer.
pub(crate) struct Reader<'a> {
    file: &'a LogFile,
    limit: u64,
    chunk: usize,
    buf: Bytes,
    at: u64,
}

/// What starts at a position.
pub(crate) enum At {
    /// A valid record and its length.
    Record(Record, u64),
    /// The end of the region.
    End,
    /// No valid record (damage, or a record that does not fit the region).
    Bad,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &'a LogFile, limit: u64, chunk: usize) -> Self {
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
    pub(crate) fn record_at(&mut self, pos: u64, min_offset: u64) -> Result<At> {
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

    /// Whether every byte from `pos` to the limit is zero (space written ahead of appends).
    pub(crate) fn zeros_from(&mut self, pos: u64) -> Result<bool> {
        let mut at = pos;
        while at < self.limit {
            let n = ((self.limit - at) as usize).min(self.chunk.max(SCAN_CHUNK));
            if self.bytes(at, n)?.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// The first position at or after `from` where a valid record with offset ≥ `min_offset`
    /// starts, and that record; `None` if there is none before the limit.
    pub(crate) fn resync(&mut self, from: u64, min_offset: u64) -> Result<Option<(u64, Record)>> {
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
