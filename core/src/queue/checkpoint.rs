//! The durable snapshot of one partition window, for crash recovery and ownership hand-over.
//!
//! It owns [`Checkpoint`] (what a window must remember beyond the committed offset) and its
//! byte format. [`PartitionQueue::checkpoint`] takes one and [`PartitionQueue::restore`]
//! rebuilds a window from one; the caller stores the bytes (a file of the embedded store; on
//! Kafka the committed offset's metadata, or a record of the state topic it names) and commits
//! the watermark as the group's offset with or right after them.
//!
//! A checkpoint holds:
//! * the owner generation that wrote it and its watermark (the offset committed with it);
//! * the offsets above the watermark that are done (acked or moved), as ranges;
//! * for every offset above the watermark that has been delivered at least once and is not done:
//!   its attempt count, the time it becomes deliverable again (or its lease deadline), whether it
//!   was leased, and when it was first read.
//!
//! Offsets it does not name are simply undelivered: they come back as fresh records.
//!
//! # Guarantee
//!
//! With a checkpoint written, then the watermark committed, every second or so (and on revoke),
//! a crash loses only what changed since the last checkpoint:
//! * acks since then: those messages are delivered again (duplicates, never losses);
//! * failed attempts (nacks, expiries) since then: an attempt count is low by at most the
//!   failures of that interval, so a message that crashes its consumers still reaches its
//!   maximum: counts are never reset to zero while the checkpoint is usable.
//!
//! A checkpoint is usable only when its watermark equals the committed offset and its
//! generation is not older than the commit's; otherwise the window starts clean from the
//! committed offset with every attempt count at 0 (see [`PartitionQueue::restore`]).
//!
//! # Format (version 1)
//!
//! `"KQC" | version u8 | generation | watermark | n_done | (gap, len)* | n_attempted |
//! (delta, attempt, flags, first_seen, at − first_seen)* | crc32c u32 LE`, every number an
//! unsigned LEB128 varint, times zigzag-encoded. A done range starts `gap` after the end of the
//! previous one (the watermark for the first); an attempted offset lies `delta` after the
//! previous one (the watermark for the first). The CRC-32C covers everything before it. The
//! size is a few bytes per done range plus about 12 per attempted offset.

use std::ops::Range;

use thiserror::Error;

use super::varint::{self, Short};
#[cfg(doc)]
use super::window::PartitionQueue;

const MAGIC: &[u8; 3] = b"KQC";
const VERSION: u8 = 1;
const FLAG_LEASED: u8 = 1;

/// The durable state of one partition window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The owner generation that took it.
    pub generation: u32,
    /// Everything below it is done: the offset committed with this checkpoint.
    pub watermark: u64,
    /// Done (acked or moved) offsets above the watermark: sorted, disjoint, non-adjacent,
    /// non-empty ranges, all above the watermark.
    pub done: Vec<Range<u64>>,
    /// Offsets delivered at least once and not done, in increasing order, none inside `done`.
    pub attempted: Vec<Attempted>,
}

/// One delivered, unfinished offset of a [`Checkpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// The message's offset.
    pub offset: u64,
    /// Deliveries so far.
    pub attempt: u16,
    /// When it was leased: the lease deadline; otherwise when it becomes deliverable again.
    pub at_ms: i64,
    /// When the gateway first read it.
    pub first_seen_ms: i64,
    /// Whether a lease was outstanding: it then counts as failed at `at_ms` unless acked.
    pub leased: bool,
}

/// Why checkpoint bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The bytes end early, or a count exceeds them.
    #[error("checkpoint truncated")]
    Truncated,
    /// Not a queue checkpoint at all.
    #[error("not a queue checkpoint")]
    BadMagic,
    /// A format version this code does not know.
    #[error("unknown checkpoint version {0}")]
    Version(u8),
    /// The CRC does not match: the bytes are damaged.
    #[error("checkpoint checksum mismatch")]
    Checksum,
    /// Valid bytes describing an impossible state (what is wrong).
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
}

impl Checkpoint {
    /// The checkpoint's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * self.done.len() + 14 * self.attempted.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        varint::put(&mut out, u64::from(self.generation));
        varint::put(&mut out, self.watermark);
        varint::put(&mut out, self.done.len() as u64);
        let mut prev = self.watermark;
        for r in &self.done {
            varint::put(&mut out, r.start.wrapping_sub(prev));
            varint::put(&mut out, r.end.wrapping_sub(r.start));
            prev = r.end;
        }
        varint::put(&mut out, self.attempted.len() as u64);
        let mut prev = self.watermark;
        for a in &self.attempted {
            varint::put(&mut out, a.offset.wrapping_sub(prev));
            varint::put(&mut out, u64::from(a.attempt));
            out.push(if a.leased { FLAG_LEASED } else { 0 });
            varint::put(&mut out, zigzag(a.first_seen_ms));
            varint::put(&mut out, zigzag(a.at_ms.wrapping_sub(a.first_seen_ms)));
            prev = a.offset;
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses checkpoint bytes, refusing any damage: a bad checksum, a truncation, trailing
    /// bytes, an unknown version, or ranges and offsets out of order.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() < MAGIC.len() + 1 + 4 {
            return Err(CheckpointError::Truncated);
        }
        if &bytes[..3] != MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(CheckpointError::Checksum);
        }
        if body[3] != VERSION {
            return Err(CheckpointError::Version(body[3]));
        }
        let mut r = Reader { buf: &body[4..] };
        let generation =
            u32::try_from(r.varint()?).map_err(|_| CheckpointError::Malformed("generation"))?;
        let watermark = r.varint()?;
        let done = r.ranges(watermark)?;
        let attempted = r.attempted(watermark, &done)?;
        if !r.buf.is_empty() {
            return Err(CheckpointError::Malformed("trailing bytes"));
        }
        Ok(Checkpoint {
            generation,
            watermark,
            done,
            attempted,
        })
    }
}

/// A cursor over checkpoint bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, CheckpointError> {
        varint::take(&mut self.buf).map_err(|e| match e {
            Short::Overflow => CheckpointError::Malformed("varint overflow"),
            Short::Truncated => CheckpointError::Truncated,
        })
    }

    fn byte(&mut self) -> Result<u8, CheckpointError> {
        let (&b, rest) = self.buf.split_first().ok_or(CheckpointError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    /// A count of items of at least `min_size` bytes each, refused if the rest cannot hold them
    /// (so that a forged count cannot make us allocate).
    fn count(&mut self, min_size: usize) -> Result<usize, CheckpointError> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.buf.len() => Ok(n),
            _ => Err(CheckpointError::Truncated),
        }
    }

    fn ranges(&mut self, watermark: u64) -> Result<Vec<Range<u64>>, CheckpointError> {
        let n = self.count(2)?;
        let mut done = Vec::with_capacity(n);
        let mut prev = watermark;
        for _ in 0..n {
            let gap = self.varint()?;
            let len = self.varint()?;
            // Ranges are maximal and above the watermark (which stops at the first offset
            // not done): at least one offset lies before each.
            if len == 0 || gap == 0 {
                return Err(CheckpointError::Malformed("done ranges"));
            }
            let start = prev
                .checked_add(gap)
                .ok_or(CheckpointError::Malformed("done ranges"))?;
            let end = start
                .checked_add(len)
                .ok_or(CheckpointError::Malformed("done ranges"))?;
            done.push(start..end);
            prev = end;
        }
        Ok(done)
    }

    fn attempted(
        &mut self,
        watermark: u64,
        done: &[Range<u64>],
    ) -> Result<Vec<Attempted>, CheckpointError> {
        let n = self.count(5)?;
        let mut out = Vec::with_capacity(n);
        let mut prev = watermark;
        let mut ranges = done.iter().peekable();
        for i in 0..n {
            let delta = self.varint()?;
            if i > 0 && delta == 0 {
                return Err(CheckpointError::Malformed("attempted offsets out of order"));
            }
            let offset = prev
                .checked_add(delta)
                .ok_or(CheckpointError::Malformed("attempted offset"))?;
            while ranges.next_if(|r| r.end <= offset).is_some() {}
            if ranges.peek().is_some_and(|r| r.start <= offset) {
                return Err(CheckpointError::Malformed(
                    "attempted offset inside a done range",
                ));
            }
            let attempt = u16::try_from(self.varint()?)
                .ok()
                .filter(|&a| a > 0)
                .ok_or(CheckpointError::Malformed("attempt"))?;
            let flags = self.byte()?;
            if flags & !FLAG_LEASED != 0 {
                return Err(CheckpointError::Malformed("flags"));
            }
            let first_seen_ms = unzigzag(self.varint()?);
            let at_ms = first_seen_ms.wrapping_add(unzigzag(self.varint()?));
            out.push(Attempted {
                offset,
                attempt,
                at_ms,
                first_seen_ms,
                leased: flags & FLAG_LEASED != 0,
            });
            prev = offset;
        }
        Ok(out)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            generation: 7,
            watermark: 1_000,
            done: vec![1_002..1_005, 1_010..1_011, 5_000..9_000],
            attempted: vec![
                Attempted {
                    offset: 1_000,
                    attempt: 3,
                    at_ms: 1_700_000_030_000,
                    first_seen_ms: 1_700_000_000_000,
                    leased: true,
                },
                Attempted {
                    offset: 1_007,
                    attempt: 1,
                    at_ms: 1_699_999_999_000,
                    first_seen_ms: 1_700_000_000_500,
                    leased: false,
                },
                Attempted {
                    offset: 9_000,
                    attempt: u16::MAX,
                    at_ms: i64::MIN,
                    first_seen_ms: i64::MAX,
                    leased: false,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let cp = sample();
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(cp));
        let empty = Checkpoint::default();
        assert_eq!(Checkpoint::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn compact() {
        // 1 000 attempted offsets and 1 000 done ranges take about 16 bytes each pair.
        let mut cp = Checkpoint {
            generation: 1,
            watermark: 50_000_000,
            ..Checkpoint::default()
        };
        for i in 0..1_000u64 {
            let o = 50_000_000 + 1 + 3 * i;
            cp.done.push(o..o + 1);
            cp.attempted.push(Attempted {
                offset: o + 1,
                attempt: 2,
                at_ms: 1_700_000_005_000,
                first_seen_ms: 1_700_000_000_000,
                leased: false,
            });
        }
        let bytes = cp.encode();
        assert!(bytes.len() < 16 * 1_000, "{} bytes", bytes.len());
        assert_eq!(Checkpoint::decode(&bytes), Ok(cp));
    }

    #[test]
    fn refuses_damage() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Checkpoint::decode(&b).is_err(),
                    "flip at byte {i} bit {bit}"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                Checkpoint::decode(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
    }

    /// Bytes with a valid checksum over a body the encoder would never write.
    fn forged(body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn refuses_inconsistent_content() {
        let head = [b'K', b'Q', b'C', VERSION, 1, 10];
        // Version 2.
        let mut v2 = head;
        v2[3] = 2;
        assert_eq!(
            Checkpoint::decode(&forged(&[&v2[..], &[0, 0]].concat())),
            Err(CheckpointError::Version(2))
        );
        // A done range starting at the watermark (the watermark would have advanced).
        let at_watermark = [&head[..], &[1, 0, 1, 0]].concat();
        assert!(Checkpoint::decode(&forged(&at_watermark)).is_err());
        // An empty range.
        assert!(Checkpoint::decode(&forged(&[&head[..], &[1, 1, 0, 0]].concat())).is_err());
        // An attempted offset inside a done range: range 11..13, offset 12.
        let inside = [&head[..], &[1, 1, 2, 1, 2, 1, 0, 0, 0]].concat();
        assert!(Checkpoint::decode(&forged(&inside)).is_err());
        // Attempt 0.
        let zero = [&head[..], &[0, 1, 2, 0, 0, 0, 0]].concat();
        assert!(Checkpoint::decode(&forged(&zero)).is_err());
        // The same offset twice.
        let twice = [&head[..], &[0, 2, 2, 1, 0, 0, 0, 0, 1, 0, 0, 0]].concat();
        assert!(Checkpoint::decode(&forged(&twice)).is_err());
        // A count larger than the bytes that follow.
        let huge = [&head[..], &[0xff, 0xff, 0xff, 0xff, 0x0f]].concat();
        assert_eq!(
            Checkpoint::decode(&forged(&huge)),
            Err(CheckpointError::Truncated)
        );
        // A well-formed one of the same shape is accepted.
        let fine = [&head[..], &[1, 1, 2, 1, 4, 1, 0, 0, 0]].concat();
        let cp = Checkpoint::decode(&forged(&fine)).unwrap();
        assert_eq!(cp.done, [Range { start: 11, end: 13 }]);
        assert_eq!(cp.attempted[0].offset, 14);
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN, 1_700_000_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
