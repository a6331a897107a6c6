//! Receipts: the opaque handle a leased message is delivered with and acked, nacked, extended
//! or buried by, on any gateway and any core.
//!
//! It owns [`Receipt`] (what a receipt names: a group/topic fingerprint, the partition, the
//! offset, the attempt and the lease with its owner generation) and its text form: 58
//! URL-safe base64 characters (no padding) of a 27-byte payload and a 16-byte tag: SipHash-2-4
//! with its 128-bit output over a domain label and the payload, keyed with a [`ReceiptKey`] the
//! gateways share (derived from their pepper). SipHash is a keyed pseudorandom function made
//! for short inputs: a tag costs about 30 ns, where HMAC-SHA256 took 250 ns, and a leased
//! message makes two (its delivery and its settle). A client can neither forge nor alter a
//! receipt: any changed, missing or extra character is refused, and the tag is compared in
//! constant time.
//!
//! Payload (version 1, big-endian): `version u8 | fingerprint u32 | partition u32 |
//! offset u64 | attempt u16 | generation u32 | lease seq u32`.

use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;
use thiserror::Error;

use super::window::{Lease, LeaseId};

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 27;
const TAG_LEN: usize = 16;
const RAW_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// Characters of the text form: 43 bytes in base64 without padding.
pub const RECEIPT_LEN: usize = (RAW_LEN * 8).div_ceil(6);
const DOMAIN: &[u8] = b"kateway receipt v1\0";
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The secret receipts are tagged with: 128 bits of key.
#[derive(Clone)]
pub struct ReceiptKey {
    k0: u64,
    k1: u64,
}

impl ReceiptKey {
    /// A key from 16 or more secret bytes (the first 16 are used).
    pub fn new(secret: &[u8]) -> Self {
        let mut b = [0u8; 16];
        let n = secret.len().min(16);
        b[..n].copy_from_slice(&secret[..n]);
        Self {
            k0: u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
            k1: u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])),
        }
    }
}

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

/// What a receipt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The group and topic it belongs to: [`fingerprint`]`(topic, group)`.
    pub fingerprint: u32,
    /// The source partition.
    pub partition: u32,
    /// The message's offset.
    pub offset: u64,
    /// The delivery it was handed out with, from 1.
    pub attempt: u16,
    /// The lease, with the generation of the owner that granted it.
    pub lease: LeaseId,
}

/// Why a receipt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReceiptError {
    /// Not a receipt's length or alphabet.
    #[error("malformed receipt")]
    Malformed,
    /// Altered, forged, or made with another key.
    #[error("invalid receipt")]
    BadTag,
    /// Authentic, but of a format this gateway does not know.
    #[error("unknown receipt version {0}")]
    Version(u8),
}

/// A short fingerprint of a (topic, group): the first 4 bytes of SHA-256 over both names.
pub fn fingerprint(topic: &str, group: &str) -> u32 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(topic.len() as u64).to_be_bytes());
    ctx.update(topic.as_bytes());
    ctx.update(group.as_bytes());
    let d = ctx.finish();
    u32::from_be_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]])
}

impl Receipt {
    /// The receipt of a lease of `partition` in the group and topic of `fingerprint`.
    pub fn of_lease(fingerprint: u32, partition: u32, lease: &Lease) -> Self {
        Receipt {
            fingerprint,
            partition,
            offset: lease.offset,
            attempt: lease.attempt,
            lease: lease.id,
        }
    }

    /// The text form, tagged with `key`.
    pub fn encode(&self, key: &ReceiptKey) -> String {
        let payload = self.payload();
        let mut raw = [0u8; RAW_LEN];
        raw[..PAYLOAD_LEN].copy_from_slice(&payload);
        raw[PAYLOAD_LEN..].copy_from_slice(&tag(key, &payload));
        base64url(&raw)
    }

    /// Parses and authenticates a receipt made with `key`. The caller still checks that its
    /// fingerprint is the route's.
    pub fn decode(key: &ReceiptKey, text: &str) -> Result<Self, ReceiptError> {
        let raw = unbase64url(text.as_bytes()).ok_or(ReceiptError::Malformed)?;
        let (payload, presented) = raw.split_at(PAYLOAD_LEN);
        if !constant_time_eq(&tag(key, payload), presented) {
            return Err(ReceiptError::BadTag);
        }
        if payload[0] != VERSION {
            return Err(ReceiptError::Version(payload[0]));
        }
        let be4 = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap_or([0; 4]));
        Ok(Receipt {
            fingerprint: be4(1),
            partition: be4(5),
            offset: u64::from_be_bytes(payload[9..17].try_into().unwrap_or([0; 8])),
            attempt: u16::from_be_bytes([payload[17], payload[18]]),
            lease: LeaseId {
                generation: be4(19),
                seq: be4(23),
            },
        })
    }

    fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0] = VERSION;
        p[1..5].copy_from_slice(&self.fingerprint.to_be_bytes());
        p[5..9].copy_from_slice(&self.partition.to_be_bytes());
        p[9..17].copy_from_slice(&self.offset.to_be_bytes());
        p[17..19].copy_from_slice(&self.attempt.to_be_bytes());
        p[19..23].copy_from_slice(&self.lease.generation.to_be_bytes());
        p[23..27].copy_from_slice(&self.lease.seq.to_be_bytes());
        p
    }
}

/// The tag of a payload.
fn tag(key: &ReceiptKey, payload: &[u8]) -> [u8; TAG_LEN] {
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(DOMAIN);
    h.write(payload);
    h.finish128().as_bytes()
}

/// Whether `a == b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

fn base64url(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// Each byte's value in the alphabet, or 0xff.
const SEXTETS: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn sextet(c: u8) -> Option<u32> {
    match SEXTETS[c as usize] {
        0xff => None,
        v => Some(u32::from(v)),
    }
}

/// The bytes of a receipt's text: exactly [`RECEIPT_LEN`] characters of the alphabet, the
/// unused low bits of the last one zero (so that each receipt has one spelling).
fn unbase64url(text: &[u8]) -> Option<[u8; RAW_LEN]> {
    if text.len() != RECEIPT_LEN {
        return None;
    }
    let mut out = [0u8; RAW_LEN];
    let mut at = 0;
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        if n & (0x00ff_ffff >> (8 * bytes)) != 0 {
            return None;
        }
        for i in 0..bytes {
            out[at] = (n >> (16 - 8 * i)) as u8;
            at += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ReceiptKey {
        ReceiptKey::new(&[b; 32])
    }

    fn sample() -> Receipt {
        Receipt {
            fingerprint: fingerprint("orders", "billing"),
            partition: 17,
            offset: 1_234_567_890_123,
            attempt: 3,
            lease: LeaseId {
                generation: 42,
                seq: 987_654,
            },
        }
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let r = sample();
        let text = r.encode(&k);
        assert_eq!(text.len(), RECEIPT_LEN);
        assert_eq!(RECEIPT_LEN, 58);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(Receipt::decode(&k, &text), Ok(r));
        let extreme = Receipt {
            fingerprint: u32::MAX,
            partition: u32::MAX,
            offset: u64::MAX,
            attempt: u16::MAX,
            lease: LeaseId {
                generation: u32::MAX,
                seq: u32::MAX,
            },
        };
        assert_eq!(Receipt::decode(&k, &extreme.encode(&k)), Ok(extreme));
        let zero = Receipt {
            fingerprint: 0,
            partition: 0,
            offset: 0,
            attempt: 0,
            lease: LeaseId {
                generation: 0,
                seq: 0,
            },
        };
        assert_eq!(Receipt::decode(&k, &zero.encode(&k)), Ok(zero));
    }

    #[test]
    fn of_lease() {
        let lease = Lease {
            offset: 9,
            id: LeaseId {
                generation: 2,
                seq: 5,
            },
            attempt: 1,
            deadline_ms: 100,
            first_seen_ms: 0,
        };
        let r = Receipt::of_lease(11, 3, &lease);
        assert_eq!((r.fingerprint, r.partition, r.offset), (11, 3, 9));
        assert_eq!((r.attempt, r.lease), (1, lease.id));
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let k = key(7);
        let text = sample().encode(&k);
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for c in 0..=255u8 {
                if c == bytes[i] {
                    continue;
                }
                let mut b = bytes.to_vec();
                b[i] = c;
                let Ok(t) = String::from_utf8(b) else {
                    continue;
                };
                assert!(Receipt::decode(&k, &t).is_err(), "char {i} set to {c}");
            }
        }
    }

    #[test]
    fn every_single_byte_change_of_the_raw_form_is_refused() {
        let k = key(7);
        let raw = unbase64url(sample().encode(&k).as_bytes()).unwrap();
        for i in 0..RAW_LEN {
            for delta in 1..=255u8 {
                let mut b = raw;
                b[i] = b[i].wrapping_add(delta);
                let err = Receipt::decode(&k, &base64url(&b)).unwrap_err();
                assert_eq!(err, ReceiptError::BadTag, "byte {i} + {delta}");
            }
        }
    }

    #[test]
    fn truncated_extended_or_foreign_receipts_are_refused() {
        let k = key(7);
        let text = sample().encode(&k);
        for len in 0..text.len() {
            assert_eq!(
                Receipt::decode(&k, &text[..len]),
                Err(ReceiptError::Malformed)
            );
        }
        assert_eq!(
            Receipt::decode(&k, &format!("{text}A")),
            Err(ReceiptError::Malformed)
        );
        assert_eq!(Receipt::decode(&key(8), &text), Err(ReceiptError::BadTag));
        // An authentic payload of another version.
        let mut raw = [0u8; RAW_LEN];
        raw[..PAYLOAD_LEN].copy_from_slice(&sample().payload());
        raw[0] = 2;
        let t = tag(&k, &raw[..PAYLOAD_LEN]);
        raw[PAYLOAD_LEN..].copy_from_slice(&t);
        assert_eq!(
            Receipt::decode(&k, &base64url(&raw)),
            Err(ReceiptError::Version(2))
        );
    }

    #[test]
    fn fingerprints_separate_names() {
        assert_ne!(fingerprint("ab", "c"), fingerprint("a", "bc"));
        assert_ne!(
            fingerprint("orders", "billing"),
            fingerprint("billing", "orders")
        );
        assert_eq!(fingerprint("orders", "billing"), sample().fingerprint);
    }

    #[test]
    fn base64url_round_trips() {
        let raw: [u8; RAW_LEN] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        assert_eq!(unbase64url(base64url(&raw).as_bytes()), Some(raw));
    }
}
