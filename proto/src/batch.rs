//! Batch wire formats.
//!
//! Publish (request bodies):
//! * `application/x-ndjson`: one message per line; the line (without `\n` or `\r\n`) is the
//!   payload. Empty lines are skipped.
//! * `application/vnd.kateway.batch`: records `[key_len u16 BE][key][value_len u32 BE][value]`,
//!   back to back; `key_len = 0` means no key.
//!
//! Subscribe (response bodies):
//! * binary records `[partition i32 BE][offset i64 BE][length i32 BE][payload]` (the original
//!   kateway's format);
//! * JSON lines `{"partition":p,"offset":o,"timestamp":ms,"key":"k","tags":"a;b","value":"<base64>"}`.

use bytes::{BufMut, Bytes, BytesMut};

/// Content type of the ndjson batch format.
pub const NDJSON: &str = "application/x-ndjson";
/// Content type of the binary batch publish format.
pub const BINARY: &str = "application/vnd.kateway.batch";

/// One message of a publish batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// Partition key, if any.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
}

/// Why a batch body was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The body is malformed at message `index`.
    Invalid { index: usize, reason: &'static str },
    /// More messages than allowed.
    TooMany,
    /// A message is larger than allowed.
    MessageTooLarge { index: usize },
    /// No messages at all.
    Empty,
}

/// Splits an ndjson body into messages.
pub fn parse_ndjson(
    body: &Bytes,
    max_messages: usize,
    max_message: usize,
) -> Result<Vec<BatchItem>, BatchError> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = &body[..];
    while start < b.len() {
        // memchr compares a vector of bytes at a time: a byte-wise scan was a third of a
        // batch publish's instructions.
        let end = memchr::memchr(b'\n', &b[start..]).map_or(b.len(), |i| start + i);
        let mut line_end = end;
        if line_end > start && b[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        if line_end > start {
            if out.len() == max_messages {
                return Err(BatchError::TooMany);
            }
            if line_end - start > max_message {
                return Err(BatchError::MessageTooLarge { index: out.len() });
            }
            out.push(BatchItem {
                key: None,
                value: body.slice(start..line_end),
            });
        }
        start = end + 1;
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

/// Splits a binary batch body into messages.
pub fn parse_binary(
    body: &Bytes,
    max_messages: usize,
    max_message: usize,
    max_key: usize,
) -> Result<Vec<BatchItem>, BatchError> {
    let mut out = Vec::new();
    let b = &body[..];
    let mut i = 0;
    while i < b.len() {
        let index = out.len();
        let bad = |reason| BatchError::Invalid { index, reason };
        if index == max_messages {
            return Err(BatchError::TooMany);
        }
        let kl = b.get(i..i + 2).ok_or(bad("truncated key length"))?;
        let kl = u16::from_be_bytes([kl[0], kl[1]]) as usize;
        i += 2;
        if kl > max_key {
            return Err(bad("key too long"));
        }
        let key = (i + kl <= b.len())
            .then(|| body.slice(i..i + kl))
            .ok_or(bad("truncated key"))?;
        i += kl;
        let vl = b.get(i..i + 4).ok_or(bad("truncated value length"))?;
        let vl = u32::from_be_bytes([vl[0], vl[1], vl[2], vl[3]]) as usize;
        i += 4;
        if vl > max_message {
            return Err(BatchError::MessageTooLarge { index });
        }
        if vl == 0 {
            return Err(bad("empty message"));
        }
        if i + vl > b.len() {
            return Err(bad("truncated value"));
        }
        let value = body.slice(i..i + vl);
        i += vl;
        out.push(BatchItem {
            key: (kl > 0).then_some(key),
            value,
        });
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

/// Encodes a binary publish batch (used by clients, tests and the benchmark).
pub fn encode_binary(out: &mut BytesMut, key: Option<&[u8]>, value: &[u8]) {
    let key = key.unwrap_or(&[]);
    out.put_u16(key.len() as u16);
    out.put_slice(key);
    out.put_u32(value.len() as u32);
    out.put_slice(value);
}

/// Appends one subscribe record in the original's binary format.
pub fn put_record(out: &mut BytesMut, partition: u32, offset: u64, payload: &[u8]) {
    out.reserve(16 + payload.len());
    out.put_i32(partition as i32);
    out.put_i64(offset as i64);
    out.put_i32(payload.len() as i32);
    out.put_slice(payload);
}

/// Iterates over subscribe records in the original's binary format without copying:
/// `(partition, offset, payload)`. It stops at the end or at the first malformed record
/// (truncated, or a negative length); [`Records::is_malformed`] tells which.
pub fn records(b: &[u8]) -> Records<'_> {
    Records {
        rest: b,
        malformed: false,
    }
}

/// Iterator returned by [`records`].
pub struct Records<'a> {
    rest: &'a [u8],
    malformed: bool,
}

impl Records<'_> {
    /// Whether iteration stopped at a malformed record rather than at the end.
    pub fn is_malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u32, u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.rest;
        if b.is_empty() || self.malformed {
            return None;
        }
        let parsed = (|| {
            let head = b.get(..16)?;
            let p = i32::from_be_bytes(head[0..4].try_into().ok()?) as u32;
            let o = i64::from_be_bytes(head[4..12].try_into().ok()?) as u64;
            let l = i32::from_be_bytes(head[12..16].try_into().ok()?);
            let end = 16usize.checked_add(usize::try_from(l).ok()?)?;
            Some((p, o, b.get(16..end)?, end))
        })();
        match parsed {
            Some((p, o, payload, end)) => {
                self.rest = &b[end..];
                Some((p, o, payload))
            }
            None => {
                self.malformed = true;
                None
            }
        }
    }
}

/// Decodes subscribe records in the original's binary format: `(partition, offset, payload)`;
/// `None` if any record is malformed.
pub fn decode_records(b: &[u8]) -> Option<Vec<(u32, u64, Vec<u8>)>> {
    let mut it = records(b);
    let out = it.by_ref().map(|(p, o, v)| (p, o, v.to_vec())).collect();
    (!it.is_malformed()).then_some(out)
}

/// Appends one subscribe record as a JSON line (with `receipt` and `attempt` for a leased
/// one).
pub fn put_json_line(out: &mut BytesMut, m: &kateway_core::Delivered) {
    let (partition, offset, timestamp_ms) = (m.partition, m.offset, m.timestamp);
    let (key, tags, payload) = (&m.key[..], &m.tags[..], &m.value[..]);
    use crate::http1::encode::{put_i64, put_u64};
    use base64::Engine;
    out.put_slice(b"{\"partition\":");
    put_u64(out, partition.into());
    out.put_slice(b",\"offset\":");
    put_u64(out, offset);
    out.put_slice(b",\"timestamp\":");
    put_i64(out, timestamp_ms);
    if !key.is_empty() {
        out.put_slice(b",\"key\":");
        crate::json::put_str(out, &String::from_utf8_lossy(key));
    }
    if !tags.is_empty() {
        out.put_slice(b",\"tags\":");
        crate::json::put_str(out, &String::from_utf8_lossy(tags));
    }
    if let Some(l) = &m.leased {
        out.put_slice(b",\"receipt\":\"");
        out.put_slice(&l.receipt);
        out.put_slice(b"\",\"attempt\":");
        put_u64(out, l.attempt.into());
    }
    out.put_slice(b",\"value\":\"");
    // Straight into the body, without a String per message.
    let at = out.len();
    out.resize(
        at + base64::encoded_len(payload.len(), true).unwrap_or(0),
        0,
    );
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(payload, &mut out[at..])
        .unwrap_or(0);
    out.truncate(at + n);
    out.put_slice(b"\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson() {
        let body = Bytes::from_static(b"a\nbb\r\n\n ccc\n");
        let items = parse_ndjson(&body, 10, 100).unwrap();
        let v: Vec<_> = items.iter().map(|i| i.value.to_vec()).collect();
        assert_eq!(v, vec![b"a".to_vec(), b"bb".to_vec(), b" ccc".to_vec()]);
        assert_eq!(parse_ndjson(&body, 2, 100), Err(BatchError::TooMany));
        assert_eq!(
            parse_ndjson(&body, 10, 2),
            Err(BatchError::MessageTooLarge { index: 2 })
        );
        assert_eq!(
            parse_ndjson(&Bytes::from_static(b"\n\n"), 10, 10),
            Err(BatchError::Empty)
        );
    }

    #[test]
    fn binary_round_trip_and_errors() {
        let mut b = BytesMut::new();
        encode_binary(&mut b, Some(b"k1"), b"hello");
        encode_binary(&mut b, None, b"world");
        let body = b.freeze();
        let items = parse_binary(&body, 10, 100, 10).unwrap();
        assert_eq!(items[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(&items[0].value[..], b"hello");
        assert_eq!(items[1].key, None);
        for cut in 1..body.len() {
            let r = parse_binary(&body.slice(..cut), 10, 100, 10);
            assert!(
                matches!(r, Err(BatchError::Invalid { .. }))
                    || r.as_ref().map(|v| v.len()) == Ok(1),
                "cut {cut}: {r:?}"
            );
        }
        assert_eq!(parse_binary(&body, 1, 100, 10), Err(BatchError::TooMany));
    }

    #[test]
    fn records_round_trip() {
        let mut out = BytesMut::new();
        put_record(&mut out, 3, 42, b"xyz");
        put_record(&mut out, 0, 0, b"");
        let recs = decode_records(&out).unwrap();
        let mut it = records(&out[..out.len() - 1]);
        assert_eq!(it.next(), Some((3, 42, &b"xyz"[..])));
        assert_eq!(
            it.next(),
            None,
            "the truncated second record is not yielded"
        );
        assert!(it.is_malformed());
        // A negative or overflowing length is rejected, not trusted (found by fuzzing).
        let mut neg = vec![0u8; 12];
        neg.extend_from_slice(&(-99i32).to_be_bytes());
        assert_eq!(decode_records(&neg), None);
        assert_eq!(recs, vec![(3, 42, b"xyz".to_vec()), (0, 0, vec![])]);
        let mut j = BytesMut::new();
        let mut m = kateway_core::Delivered {
            partition: 1,
            offset: 2,
            timestamp: 3,
            key: Bytes::from_static(b"k"),
            tags: Bytes::from_static(b"a;b"),
            value: Bytes::from_static(b"hi"),
            leased: None,
        };
        put_json_line(&mut j, &m);
        m.leased = Some(Box::new(kateway_core::Leased {
            receipt: [b'r'; kateway_core::queue::receipt::RECEIPT_LEN],
            attempt: 2,
            lease: kateway_core::queue::LeaseId {
                generation: 1,
                seq: 1,
            },
        }));
        put_json_line(&mut j, &m);
        let receipt = "r".repeat(kateway_core::queue::receipt::RECEIPT_LEN);
        let want = format!(
            "{{\"partition\":1,\"offset\":2,\"timestamp\":3,\"key\":\"k\",\"tags\":\"a;b\",\"value\":\"aGk=\"}}\n\
             {{\"partition\":1,\"offset\":2,\"timestamp\":3,\"key\":\"k\",\"tags\":\"a;b\",\"receipt\":\"{receipt}\",\"attempt\":2,\"value\":\"aGk=\"}}\n"
        );
        assert_eq!(&j[..], want.as_bytes());
    }
}
