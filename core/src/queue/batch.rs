//! Batch receipts: one handle that settles every message of a leased batch, as an ack range
//! does for a Kafka share group. It names each message's partition, offset and lease (as the
//! batch's receipts do, one by one), in a compact form: a message that follows the previous
//! one of its partition in the same lease run (the next lease sequence number, a later offset)
//! takes one varint byte in the usual case. It is tagged like a receipt (SipHash-2-4, 64-bit
//! output, the same [`ReceiptKey`]), so one tag covers the whole batch: settling 100 messages
//! by it costs one tag check instead of a hundred, and its text is a fraction of theirs.
//!
//! Bytes (then URL-safe base64 without padding): `version u8 (0x42) | fingerprint u32 |
//! count varint | items | tag u64`, where each item starts with a varint `h`: `h` even is the
//! previous item's partition and generation, its lease sequence plus one, and its offset plus
//! `h / 2` (at least 1); `h` odd is `partition = h / 2`, then `generation`, `seq` and `offset`
//! as varints.

use super::receipt::{constant_time_eq, ReceiptError, ReceiptKey};
use super::varint;
use super::window::LeaseId;
use super::Receipt;
use base64::Engine;

const VERSION: u8 = 0x42;
const TAG_LEN: usize = 8;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One leased message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchItem {
    /// The source partition.
    pub partition: u32,
    /// The message's offset.
    pub offset: u64,
    /// The lease it was delivered with.
    pub lease: LeaseId,
}

/// The batch receipt of `items` (in the order they were delivered) of the group and topic of
/// `fingerprint`.
pub fn encode(key: &ReceiptKey, fingerprint: u32, items: &[BatchItem]) -> String {
    let mut b = Vec::with_capacity(16 + 2 * items.len());
    b.push(VERSION);
    b.extend_from_slice(&fingerprint.to_be_bytes());
    varint::put(&mut b, items.len() as u64);
    let mut prev: Option<BatchItem> = None;
    for it in items {
        match prev {
            Some(p)
                if p.partition == it.partition
                    && p.lease.generation == it.lease.generation
                    && p.lease.seq.checked_add(1) == Some(it.lease.seq)
                    && it.offset > p.offset =>
            {
                varint::put(&mut b, (it.offset - p.offset) << 1);
            }
            _ => {
                varint::put(&mut b, u64::from(it.partition) << 1 | 1);
                varint::put(&mut b, it.lease.generation.into());
                varint::put(&mut b, it.lease.seq.into());
                varint::put(&mut b, it.offset);
            }
        }
        prev = Some(*it);
    }
    let t = key.tag_bytes(&b);
    b.extend_from_slice(&t);
    B64.encode(b)
}

/// Parses and authenticates a batch receipt made with `key`: its fingerprint and its messages
/// as receipts (attempt 0: a settle does not use it). At most `max` messages.
pub fn decode(
    key: &ReceiptKey,
    text: &str,
    max: usize,
) -> Result<(u32, Vec<Receipt>), ReceiptError> {
    // A varint item takes at most 1 + 5 + 5 + 10 bytes: anything longer is not a batch of `max`.
    if text.len() > (8 + TAG_LEN + 21 * max) * 4 / 3 + 4 {
        return Err(ReceiptError::Malformed);
    }
    let raw = B64.decode(text).map_err(|_| ReceiptError::Malformed)?;
    if raw.len() < 1 + 4 + 1 + TAG_LEN {
        return Err(ReceiptError::Malformed);
    }
    let (body, presented) = raw.split_at(raw.len() - TAG_LEN);
    if !constant_time_eq(&key.tag_bytes(body), presented) {
        return Err(ReceiptError::BadTag);
    }
    if body[0] != VERSION {
        return Err(ReceiptError::Version(body[0]));
    }
    let fingerprint = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    let mut r = Reader(&body[5..]);
    let n = r.varint()?;
    if n == 0 || n > max as u64 {
        return Err(ReceiptError::Malformed);
    }
    let mut out: Vec<Receipt> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let h = r.varint()?;
        let rc = if h & 1 == 0 {
            let p = out.last().ok_or(ReceiptError::Malformed)?;
            let delta = h >> 1;
            Receipt {
                fingerprint,
                partition: p.partition,
                offset: p
                    .offset
                    .checked_add(delta)
                    .filter(|_| delta > 0)
                    .ok_or(ReceiptError::Malformed)?,
                attempt: 0,
                lease: LeaseId {
                    generation: p.lease.generation,
                    seq: p.lease.seq.checked_add(1).ok_or(ReceiptError::Malformed)?,
                },
            }
        } else {
            let u32_of = |v: u64| u32::try_from(v).map_err(|_| ReceiptError::Malformed);
            Receipt {
                fingerprint,
                partition: u32_of(h >> 1)?,
                lease: LeaseId {
                    generation: u32_of(r.varint()?)?,
                    seq: u32_of(r.varint()?)?,
                },
                offset: r.varint()?,
                attempt: 0,
            }
        };
        out.push(rc);
    }
    if !r.0.is_empty() {
        return Err(ReceiptError::Malformed);
    }
    Ok((fingerprint, out))
}

/// A cursor over a batch receipt's items.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, ReceiptError> {
        varint::take(&mut self.0).map_err(|_| ReceiptError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ReceiptKey {
        ReceiptKey::new(&[b; 32])
    }

    fn item(partition: u32, offset: u64, generation: u32, seq: u32) -> BatchItem {
        BatchItem {
            partition,
            offset,
            lease: LeaseId { generation, seq },
        }
    }

    fn sample() -> Vec<BatchItem> {
        let mut v = Vec::new();
        // Runs in two partitions, a gap, a redelivery of a lower offset, another generation,
        // and extreme values.
        for i in 0..30 {
            v.push(item(0, 1000 + i, 7, 50 + i as u32));
        }
        v.push(item(0, 1100, 7, 80));
        v.push(item(0, 900, 7, 81));
        for i in 0..20 {
            v.push(item(3, 5 + i, 8, 1 + i as u32));
        }
        v.push(item(3, 40, 9, 1));
        v.push(item(u32::MAX, u64::MAX, u32::MAX, u32::MAX));
        v
    }

    #[test]
    fn round_trips_and_is_small() {
        let k = key(1);
        let items = sample();
        let text = encode(&k, 0xdead_beef, &items);
        let (fp, got) = decode(&k, &text, 1000).unwrap();
        assert_eq!(fp, 0xdead_beef);
        let want: Vec<Receipt> = items
            .iter()
            .map(|i| Receipt {
                fingerprint: fp,
                partition: i.partition,
                offset: i.offset,
                attempt: 0,
                lease: i.lease,
            })
            .collect();
        assert_eq!(got, want);
        // 100 messages in order in one partition: about 2 characters each, where their
        // receipts take 48.
        let run: Vec<BatchItem> = (0..100)
            .map(|i| item(1, 10_000 + i, 3, 7 + i as u32))
            .collect();
        let t = encode(&k, 1, &run);
        assert!(t.len() < 160, "{} characters", t.len());
        assert_eq!(decode(&k, &t, 100).unwrap().1.len(), 100);
        assert_eq!(decode(&k, &t, 99), Err(ReceiptError::Malformed));
    }

    #[test]
    fn any_change_is_refused() {
        let k = key(1);
        let text = encode(&k, 5, &sample());
        let raw = B64.decode(&text).unwrap();
        for i in 0..raw.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut b = raw.clone();
                b[i] = b[i].wrapping_add(delta);
                assert!(
                    decode(&k, &B64.encode(&b), 1000).is_err(),
                    "byte {i} + {delta}"
                );
            }
        }
        let mut short = raw.clone();
        short.pop();
        assert!(decode(&k, &B64.encode(&short), 1000).is_err());
        let mut long = raw.clone();
        long.push(0);
        assert!(decode(&k, &B64.encode(&long), 1000).is_err());
        assert_eq!(decode(&key(2), &text, 1000), Err(ReceiptError::BadTag));
        for bad in ["", "A", "!!!!", &"A".repeat(100_000)] {
            assert!(decode(&k, bad, 1000).is_err(), "{bad:.10}");
        }
        // A single receipt is not a batch receipt.
        let single = Receipt {
            fingerprint: 5,
            partition: 0,
            offset: 1,
            attempt: 1,
            lease: LeaseId {
                generation: 1,
                seq: 1,
            },
        }
        .encode(&k);
        assert!(decode(&k, &single, 1000).is_err());
    }
}
