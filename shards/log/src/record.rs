//! The record format (all integers big-endian):
//!
//! ```text
//! len u32 | crc32c u32 | magic u8 = 1 | flags u8 | offset u64 | timestamp_ms i64
//!         | key_len u16 | tags_len u16 | value_len u32 | key | tags | value
//! ```
//!
//! `len` counts the bytes after itself; the CRC covers everything after the CRC field. The
//! offset is stored so that recovery and reads can verify they are where they think they are.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of fixed header per record.
pub const HEADER: usize = 34;
/// The largest record the engine writes or accepts: a 64 MiB value (the gateway's largest
/// message limit) plus the largest key and tags and the header. A length field claiming more is
/// damage, so no read ever allocates more than this for one record.
pub const MAX_RECORD: usize = (64 << 20) + 2 * 65535 + HEADER;
const MAGIC: u8 = 1;

/// A record read from the log. Key, tags and value share one read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub timestamp: i64,
    /// Partition key (empty for none).
    pub key: Bytes,
    /// Tags as sent in `X-Tag` (empty for none).
    pub tags: Bytes,
    /// The payload.
    pub value: Bytes,
}

/// Encoded size of a record.
pub fn encoded_len(key: &[u8], tags: &[u8], value: &[u8]) -> usize {
    HEADER + key.len() + tags.len() + value.len()
}

/// Appends an encoded record to `out`.
pub fn encode(
    out: &mut BytesMut,
    offset: u64,
    timestamp: i64,
    key: &[u8],
    tags: &[u8],
    value: &[u8],
) {
    let total = encoded_len(key, tags, value);
    out.reserve(total);
    // The header is made whole on the stack: one copy of each part into `out`, no capacity
    // check per field. The CRC is taken once over the record's bytes in place (one call:
    // `crc32c_append` per part costs more than the bytes it covers at these sizes).
    let start = out.len();
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&((total - 4) as u32).to_be_bytes());
    h[8] = MAGIC;
    h[10..18].copy_from_slice(&offset.to_be_bytes());
    h[18..26].copy_from_slice(&timestamp.to_be_bytes());
    h[26..28].copy_from_slice(&(key.len() as u16).to_be_bytes());
    h[28..30].copy_from_slice(&(tags.len() as u16).to_be_bytes());
    h[30..34].copy_from_slice(&(value.len() as u32).to_be_bytes());
    out.put_slice(&h);
    out.put_slice(key);
    out.put_slice(tags);
    out.put_slice(value);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Result of decoding at a position.
#[derive(Debug)]
pub enum Decoded {
    /// A valid record and the bytes it occupies.
    Record(Record, usize),
    /// The buffer ends inside a record that needs this many bytes in total.
    Incomplete(usize),
    /// The bytes are not a valid record.
    Corrupt(&'static str),
}

/// Decodes the record starting at `pos` of `buf`.
pub fn decode(buf: &Bytes, pos: usize) -> Decoded {
    let b = &buf[pos..];
    if b.len() < 4 {
        return Decoded::Incomplete(HEADER);
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len < HEADER - 4 {
        return Decoded::Corrupt("record length too small");
    }
    if len + 4 > MAX_RECORD {
        return Decoded::Corrupt("record length too large");
    }
    let total = len + 4;
    if b.len() < total {
        if b.len() >= HEADER && b[8] != MAGIC {
            return Decoded::Corrupt("bad magic");
        }
        return Decoded::Incomplete(total);
    }
    let crc = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    if crc32c::crc32c(&b[8..total]) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    if b[8] != MAGIC {
        return Decoded::Corrupt("bad magic");
    }
    if b[9] != 0 {
        return Decoded::Corrupt("unknown flags");
    }
    let offset = u64::from_be_bytes(b[10..18].try_into().expect("8 bytes"));
    let timestamp = i64::from_be_bytes(b[18..26].try_into().expect("8 bytes"));
    let kl = u16::from_be_bytes([b[26], b[27]]) as usize;
    let tl = u16::from_be_bytes([b[28], b[29]]) as usize;
    let vl = u32::from_be_bytes([b[30], b[31], b[32], b[33]]) as usize;
    if HEADER + kl + tl + vl != total {
        return Decoded::Corrupt("field lengths do not add up");
    }
    let k0 = pos + HEADER;
    let t0 = k0 + kl;
    let v0 = t0 + tl;
    Decoded::Record(
        Record {
            offset,
            timestamp,
            key: buf.slice(k0..t0),
            tags: buf.slice(t0..v0),
            value: buf.slice(v0..v0 + vl),
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut out = BytesMut::new();
        encode(&mut out, 7, 1234, b"k", b"a;b", b"hello");
        encode(&mut out, 8, 1235, b"", b"", b"x");
        let buf = out.freeze();
        let Decoded::Record(r, n) = decode(&buf, 0) else {
            panic!()
        };
        assert_eq!(
            (r.offset, r.timestamp, &r.key[..], &r.tags[..], &r.value[..]),
            (7, 1234, &b"k"[..], &b"a;b"[..], &b"hello"[..])
        );
        let Decoded::Record(r2, _) = decode(&buf, n) else {
            panic!()
        };
        assert_eq!(r2.offset, 8);
        for cut in 0..n {
            assert!(
                matches!(decode(&buf.slice(..cut), 0), Decoded::Incomplete(_)),
                "cut {cut}"
            );
        }
        let mut bad = buf.to_vec();
        bad[HEADER + 2] ^= 0xff;
        assert!(matches!(decode(&Bytes::from(bad), 0), Decoded::Corrupt(_)));
        let mut huge = buf.to_vec();
        huge[0] = 0x7f;
        assert!(
            matches!(decode(&Bytes::from(huge), 0), Decoded::Corrupt(_)),
            "a length beyond MAX_RECORD is damage, not a record to wait for"
        );
    }
}
