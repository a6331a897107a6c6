//! Delayed messages, without I/O: a delay's id, the records of the delay log, the entries of
//! the on-disk index's bucket files, where an entry waits (in memory or in which bucket), and
//! the `delay=` / `X-Deliver-At` values.
//!
//! * **Id.** 26 bytes in unpadded base64url (35 characters): the delay-log partition (2 bytes),
//!   the delivery time in ms (8), a nonce (8) and an HMAC-SHA256 tag (8) over those and the
//!   target topic's storage name. Any gateway of a cluster checks an id without state, and an
//!   id names its topic: a forged id, or one of another topic, is unknown (404).
//! * **Records** of the delay log (keyed by the id): a delay (the message and its target), a
//!   cancel request, and the mark that a delay fired.
//! * **Buckets.** A pending delay due within the memory horizon is held in memory; later ones
//!   are appended to a bucket file of their minute (due within a day) or hour (later), loaded
//!   when the bucket's time comes: an hour bucket a day ahead (its entries go on into minute
//!   buckets), a minute bucket one horizon ahead.

use crate::error::{Error, ErrorKind};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a decoded id.
const ID_BYTES: usize = 26;
/// Characters of an id.
pub const ID_LEN: usize = 35;
/// A minute bucket's span, ms.
pub const MINUTE: i64 = 60_000;
/// An hour bucket's span, ms.
pub const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// The key delay ids are tagged with.
pub struct DelayKey(ring::hmac::Key);

impl DelayKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, topic: &str, head: &[u8]) -> [u8; 8] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(head);
        ctx.update(topic.as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&ctx.sign().as_ref()[..8]);
        out
    }
}

/// What a delay id says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayId {
    /// The delay-log partition holding it.
    pub partition: u16,
    /// When it is due (ms since the Unix epoch).
    pub deliver_at_ms: i64,
    pub nonce: u64,
}

impl DelayId {
    /// The id's text for target topic `topic` (its storage name).
    pub fn encode(&self, key: &DelayKey, topic: &str) -> String {
        let mut b = [0u8; ID_BYTES];
        b[..2].copy_from_slice(&self.partition.to_be_bytes());
        b[2..10].copy_from_slice(&self.deliver_at_ms.to_be_bytes());
        b[10..18].copy_from_slice(&self.nonce.to_be_bytes());
        let tag = key.tag(topic, &b[..18]);
        b[18..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The id `text` of a delay of `topic`; `None` for a text that is no such id.
    pub fn decode(key: &DelayKey, topic: &str, text: &str) -> Option<Self> {
        if text.len() != ID_LEN {
            return None;
        }
        let b = URL_SAFE_NO_PAD.decode(text).ok()?;
        if b.len() != ID_BYTES {
            return None;
        }
        let want = key.tag(topic, &b[..18]);
        // Constant time, so a tag cannot be guessed byte by byte.
        if want.iter().zip(&b[18..]).fold(0u8, |d, (x, y)| d | (x ^ y)) != 0 {
            return None;
        }
        Some(Self {
            partition: u16::from_be_bytes([b[0], b[1]]),
            deliver_at_ms: i64::from_be_bytes(b[2..10].try_into().ok()?),
            nonce: u64::from_be_bytes(b[10..18].try_into().ok()?),
        })
    }

    /// The partition and delivery time of an id already checked (a delay-log record's key),
    /// without its topic.
    pub fn peek(text: &[u8]) -> Option<(u16, i64)> {
        let b = URL_SAFE_NO_PAD.decode(text).ok()?;
        (b.len() == ID_BYTES).then(|| {
            (
                u16::from_be_bytes([b[0], b[1]]),
                i64::from_be_bytes(b[2..10].try_into().unwrap_or_default()),
            )
        })
    }
}

/// A delayed message: what fires, and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    pub deliver_at_ms: i64,
    /// When it was accepted.
    pub created_ms: i64,
    /// The target topic's storage name and partition.
    pub topic: String,
    pub partition: u32,
    pub key: Bytes,
    pub tags: Bytes,
    pub value: Bytes,
}

/// One record of the delay log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Delay(Delay),
    /// Cancel the delay with this record's key (if it is still pending).
    Cancel,
    /// The delay with this record's key fired.
    Fired,
}

const DELAY: u8 = 1;
const CANCEL: u8 = 2;
const FIRED: u8 = 3;

impl Record {
    /// The record's value.
    pub fn encode(&self) -> Bytes {
        match self {
            Record::Cancel => Bytes::from_static(&[CANCEL]),
            Record::Fired => Bytes::from_static(&[FIRED]),
            Record::Delay(d) => {
                let mut b = BytesMut::with_capacity(
                    31 + d.topic.len() + d.key.len() + d.tags.len() + d.value.len(),
                );
                b.put_u8(DELAY);
                b.put_i64(d.deliver_at_ms);
                b.put_i64(d.created_ms);
                b.put_u32(d.partition);
                b.put_u16(d.topic.len() as u16);
                b.put_slice(d.topic.as_bytes());
                b.put_u32(d.key.len() as u32);
                b.put_slice(&d.key);
                b.put_u32(d.tags.len() as u32);
                b.put_slice(&d.tags);
                b.put_slice(&d.value);
                b.freeze()
            }
        }
    }

    /// Reads a record's value.
    pub fn decode(v: &Bytes) -> Result<Self, &'static str> {
        let mut r = Reader { b: v, at: 0 };
        match r.u8()? {
            CANCEL => Ok(Record::Cancel),
            FIRED => Ok(Record::Fired),
            DELAY => {
                let deliver_at_ms = r.i64()?;
                let created_ms = r.i64()?;
                let partition = r.u32()?;
                let n = r.u16()? as usize;
                let topic = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| "topic is not UTF-8")?
                    .to_owned();
                let n = r.u32()? as usize;
                let key = r.bytes(n)?;
                let n = r.u32()? as usize;
                let tags = r.bytes(n)?;
                let value = v.slice(r.at..);
                Ok(Record::Delay(Delay {
                    deliver_at_ms,
                    created_ms,
                    topic,
                    partition,
                    key,
                    tags,
                    value,
                }))
            }
            _ => Err("unknown delay record type"),
        }
    }
}

struct Reader<'a> {
    b: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("truncated delay record")?;
        let s = self.b.get(self.at..end).ok_or("truncated delay record")?;
        self.at = end;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, &'static str> {
        let start = self.at;
        self.take(n)?;
        Ok(self.b.slice(start..start + n))
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn i64(&mut self) -> Result<i64, &'static str> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

/// A bucket of the on-disk index: minutes (`level` 0) or hours (1) since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    pub level: u8,
    pub n: i64,
}

impl Bucket {
    /// When the bucket is loaded: a minute bucket `horizon` ms before it starts, an hour
    /// bucket a day before.
    pub fn load_at(&self, horizon: i64) -> i64 {
        match self.level {
            0 => self.n * MINUTE - horizon,
            _ => self.n * HOUR - DAY,
        }
    }

    /// The bucket's file name.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.bucket",
            if self.level == 0 { "m" } else { "h" },
            self.n
        )
    }
}

/// Where a pending delay due at `due` waits at `now`: `None` in memory, else in a bucket
/// whose load time is still ahead.
pub fn bucket_of(due: i64, now: i64, horizon: i64) -> Option<Bucket> {
    let hour = Bucket {
        level: 1,
        n: due.div_euclid(HOUR),
    };
    if hour.load_at(horizon) > now {
        return Some(hour);
    }
    let minute = Bucket {
        level: 0,
        n: due.div_euclid(MINUTE),
    };
    (minute.load_at(horizon) > now).then_some(minute)
}

/// An entry of a bucket file: a pending delay (its log offset, id and record) or the removal
/// of one (cancelled or fired while in the bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketEntry {
    Pending {
        offset: u64,
        id: Bytes,
        record: Bytes,
    },
    Removed {
        id: Bytes,
    },
}

impl BucketEntry {
    /// Appends the entry, length-prefixed, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            BucketEntry::Pending { offset, id, record } => {
                out.put_u32((1 + 8 + 1 + id.len() + record.len()) as u32);
                out.put_u8(1);
                out.put_u64(*offset);
                out.put_u8(id.len() as u8);
                out.put_slice(id);
                out.put_slice(record);
            }
            BucketEntry::Removed { id } => {
                out.put_u32((1 + 1 + id.len()) as u32);
                out.put_u8(2);
                out.put_u8(id.len() as u8);
                out.put_slice(id);
            }
        }
    }

    /// Reads every entry of a bucket file's contents (a torn tail is dropped).
    pub fn read_all(file: Bytes) -> Vec<BucketEntry> {
        let mut out = Vec::new();
        let mut at = 0;
        while file.len() >= at + 4 {
            let n = u32::from_be_bytes(file[at..at + 4].try_into().unwrap_or_default()) as usize;
            let Some(body) = file.get(at + 4..at + 4 + n) else {
                break;
            };
            let start = at + 4;
            at += 4 + n;
            match body.first() {
                Some(1) if body.len() >= 10 => {
                    let offset = u64::from_be_bytes(body[1..9].try_into().unwrap_or_default());
                    let idn = body[9] as usize;
                    if body.len() < 10 + idn {
                        break;
                    }
                    out.push(BucketEntry::Pending {
                        offset,
                        id: file.slice(start + 10..start + 10 + idn),
                        record: file.slice(start + 10 + idn..start + n),
                    });
                }
                Some(2) if body.len() >= 2 => {
                    let idn = body[1] as usize;
                    if body.len() < 2 + idn {
                        break;
                    }
                    out.push(BucketEntry::Removed {
                        id: file.slice(start + 2..start + 2 + idn),
                    });
                }
                _ => break,
            }
        }
        out
    }
}

/// When a delay asked for `at` (ms since the epoch) fires: at most `max_ms` ahead of `now`
/// (else 400), and a time already past fires at once.
pub fn due(at: i64, now: i64, max_ms: i64) -> Result<i64, Error> {
    if at.saturating_sub(now) > max_ms {
        return Err(Error::new(
            ErrorKind::InvalidParam,
            format!(
                "a message may be delayed at most {} s (delay.max_delay)",
                max_ms / 1000
            ),
        ));
    }
    Ok(at.max(now))
}

/// Milliseconds since the epoch of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r)?;
        t.iter()
            .all(u8::is_ascii_digit)
            .then(|| t.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&mo) || !(1..=days_in_month).contains(&d) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut at = 19;
    let mut ms = 0i64;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let frac = &b[start..at.min(start + 3)];
        ms = frac.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'));
        ms *= 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |x: &u8| x.is_ascii_digit().then(|| i64::from(x - b'0'));
            let (oh, om) = (d(h1)? * 10 + d(h2)?, d(m1)? * 10 + d(m2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 60 + om;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from civil (H. Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + ms)
}

/// `ms` since the epoch as an RFC 3339 UTC time with milliseconds.
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::units::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_topic() {
        let k = DelayKey::new(b"0123456789abcdef0123456789abcdef");
        let id = DelayId {
            partition: 3,
            deliver_at_ms: 1_800_000_000_123,
            nonce: 42,
        };
        let text = id.encode(&k, "a.t.v1");
        assert_eq!(text.len(), ID_LEN);
        assert_eq!(DelayId::decode(&k, "a.t.v1", &text), Some(id));
        assert_eq!(DelayId::decode(&k, "a.u.v1", &text), None);
        assert_eq!(DelayId::peek(text.as_bytes()), Some((3, 1_800_000_000_123)));
        let other = DelayKey::new(b"another key, another cluster....");
        assert_eq!(DelayId::decode(&other, "a.t.v1", &text), None);
        // Every changed character is refused.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert_eq!(DelayId::decode(&k, "a.t.v1", &t), None, "char {i}");
        }
    }

    #[test]
    fn records_round_trip() {
        let d = Record::Delay(Delay {
            deliver_at_ms: 5,
            created_ms: 4,
            topic: "a.t.v1".into(),
            partition: 7,
            key: Bytes::from_static(b"k"),
            tags: Bytes::from_static(b"x;y"),
            value: Bytes::from_static(b"hello"),
        });
        assert_eq!(Record::decode(&d.encode()), Ok(d));
        assert_eq!(Record::decode(&Record::Cancel.encode()), Ok(Record::Cancel));
        assert_eq!(Record::decode(&Record::Fired.encode()), Ok(Record::Fired));
        assert!(Record::decode(&Bytes::from_static(&[1, 0, 0])).is_err());
        assert!(Record::decode(&Bytes::new()).is_err());
    }

    #[test]
    fn bucket_entries_round_trip_and_drop_a_torn_tail() {
        let a = BucketEntry::Pending {
            offset: 9,
            id: Bytes::from_static(b"id1"),
            record: Bytes::from_static(b"rec"),
        };
        let b = BucketEntry::Removed {
            id: Bytes::from_static(b"id1"),
        };
        let mut f = Vec::new();
        a.write(&mut f);
        b.write(&mut f);
        let whole = f.len();
        a.write(&mut f);
        f.truncate(f.len() - 2);
        let got = BucketEntry::read_all(Bytes::from(f));
        assert_eq!(got, vec![a, b]);
        assert!(whole > 0);
    }

    #[test]
    fn entries_wait_in_memory_minutes_or_hours() {
        let h = 60_000;
        let now = 1_000 * DAY;
        assert_eq!(bucket_of(now + 1000, now, h), None);
        let m = bucket_of(now + 10 * MINUTE, now, h).unwrap();
        assert_eq!(m.level, 0);
        assert!(m.load_at(h) > now);
        let far = bucket_of(now + 30 * DAY, now, h).unwrap();
        assert_eq!(far.level, 1);
        // Loaded a day ahead, its entries go on into minute buckets.
        let later = far.load_at(h);
        assert_eq!(bucket_of(now + 30 * DAY, later, h).unwrap().level, 0);
        // Never a bucket whose time has come.
        for due in (now..now + 3 * DAY).step_by(7_777) {
            if let Some(b) = bucket_of(due, now, h) {
                assert!(b.load_at(h) > now);
                assert!(b.load_at(h) <= due);
            }
        }
    }

    #[test]
    fn due_times() {
        let now = 1_000_000;
        assert_eq!(due(now + 90_000, now, DAY).unwrap(), now + 90_000);
        assert!(due(now + 2 * DAY, now, DAY).is_err());
        // A time in the past is due now.
        assert_eq!(due(0, now, DAY).unwrap(), now);
        assert_eq!(
            parse_rfc3339("2026-12-24T18:00:00Z"),
            Some(1_798_135_200_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-24T19:00:00.5+01:00"),
            Some(1_798_135_200_500)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-13-24T18:00:00Z"), None);
        for bad in [
            "2027-02-31T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2026-12-24T18:00:00+99:99",
            "2026-12-24T18:00:00+24:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert!(
            parse_rfc3339("2028-02-29T00:00:00Z").is_some(),
            "a leap day"
        );
        assert_eq!(parse_rfc3339("2026-12-24 18:00"), None);
        assert_eq!(
            format_rfc3339(1_798_135_200_500),
            "2026-12-24T18:00:00.500Z"
        );
    }
}
