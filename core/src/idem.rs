//! Idempotent publish: the table of recent `Idempotency-Key`s and the records that build it.
//!
//! A publish with a key first **claims** it, publishes, then records the outcome (**done**:
//! where its messages landed), or **releases** the claim when the publish failed. The records
//! form one log (a file on the embedded store, a topic on Kafka that every gateway follows), and
//! every reader applies them in log order with the same rule, so every gateway agrees: the
//! first live claim of a key wins; a later claim of it is ignored; a done or a release counts
//! only from the claim's owner. A claim not done within the claim TTL (its gateway died) stops
//! counting, so the key can be claimed again. Entries expire after the window.
//!
//! No I/O and no clock: callers pass the time.

use std::collections::{HashMap, VecDeque};

/// Where a publish's messages landed: `(partition, offset)` per message.
pub type Results = Vec<(u32, i64)>;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Claim {
        key: String,
        hash: [u8; 32],
        owner: u64,
        at_ms: i64,
    },
    Done {
        key: String,
        hash: [u8; 32],
        owner: u64,
        at_ms: i64,
        results: Results,
    },
    Release {
        key: String,
        owner: u64,
    },
}

/// What a new request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No live entry: claim the key.
    Claim,
    /// Done before with the same request: answer these results.
    Replay(Results),
    /// Done or claimed before with a different request.
    Mismatch,
    /// Claimed by a request still in progress.
    InProgress,
}

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    owner: u64,
    at_ms: i64,
    done: Option<Results>,
}

/// The recent keys.
#[derive(Debug)]
pub struct Table {
    entries: HashMap<String, Entry>,
    /// Keys by the time their entry was made, for expiry.
    order: VecDeque<(i64, String)>,
    window_ms: i64,
    claim_ttl_ms: i64,
}

impl Table {
    pub fn new(window_ms: i64, claim_ttl_ms: i64) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
            claim_ttl_ms,
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn live(&self, key: &str, now_ms: i64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| {
            now_ms - e.at_ms < self.window_ms
                && (e.done.is_some() || now_ms - e.at_ms < self.claim_ttl_ms)
        })
    }

    /// What a request for `key` with body hash `hash` should do.
    pub fn decide(&self, key: &str, hash: &[u8; 32], now_ms: i64) -> Decision {
        match self.live(key, now_ms) {
            None => Decision::Claim,
            Some(e) if e.hash != *hash => Decision::Mismatch,
            Some(Entry { done: Some(r), .. }) => Decision::Replay(r.clone()),
            Some(_) => Decision::InProgress,
        }
    }

    /// The owner of the live entry of `key`, if any.
    pub fn owner(&self, key: &str, now_ms: i64) -> Option<u64> {
        self.live(key, now_ms).map(|e| e.owner)
    }

    /// Applies a record read from the log at `now_ms`.
    pub fn apply(&mut self, r: &Record, now_ms: i64) {
        match r {
            Record::Claim {
                key,
                hash,
                owner,
                at_ms,
            } => {
                if self.live(key, now_ms).is_none() {
                    self.insert(key, *hash, *owner, *at_ms, None);
                }
            }
            Record::Done {
                key,
                hash,
                owner,
                at_ms,
                results,
            } => {
                let mine = self.entries.get(key).is_some_and(|e| e.owner == *owner);
                if mine || self.live(key, now_ms).is_none() {
                    self.insert(key, *hash, *owner, *at_ms, Some(results.clone()));
                }
            }
            Record::Release { key, owner } => {
                if self
                    .entries
                    .get(key)
                    .is_some_and(|e| e.owner == *owner && e.done.is_none())
                {
                    self.entries.remove(key);
                }
            }
        }
    }

    fn insert(&mut self, key: &str, hash: [u8; 32], owner: u64, at_ms: i64, done: Option<Results>) {
        self.entries.insert(
            key.to_owned(),
            Entry {
                hash,
                owner,
                at_ms,
                done,
            },
        );
        self.order.push_back((at_ms, key.to_owned()));
    }

    /// Drops entries older than the window.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some((at, key)) = self.order.front() {
            if now_ms - at < self.window_ms {
                break;
            }
            if self
                .entries
                .get(key)
                .is_some_and(|e| now_ms - e.at_ms >= self.window_ms)
            {
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
    }

    /// The done entries as records (to compact a log).
    pub fn done_records(&self) -> Vec<Record> {
        self.entries
            .iter()
            .filter_map(|(k, e)| {
                e.done.as_ref().map(|r| Record::Done {
                    key: k.clone(),
                    hash: e.hash,
                    owner: e.owner,
                    at_ms: e.at_ms,
                    results: r.clone(),
                })
            })
            .collect()
    }
}

impl Record {
    /// `tag u8 | key len u16 | key | owner u64 | then per kind`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let (tag, key, owner) = match self {
            Record::Claim { key, owner, .. } => (1u8, key, owner),
            Record::Done { key, owner, .. } => (2, key, owner),
            Record::Release { key, owner } => (3, key, owner),
        };
        b.push(tag);
        let k = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(k.len() as u16).to_be_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(&owner.to_be_bytes());
        match self {
            Record::Claim { hash, at_ms, .. } => {
                b.extend_from_slice(hash);
                b.extend_from_slice(&at_ms.to_be_bytes());
            }
            Record::Done {
                hash,
                at_ms,
                results,
                ..
            } => {
                b.extend_from_slice(hash);
                b.extend_from_slice(&at_ms.to_be_bytes());
                b.extend_from_slice(&(results.len() as u32).to_be_bytes());
                for (p, o) in results {
                    b.extend_from_slice(&p.to_be_bytes());
                    b.extend_from_slice(&o.to_be_bytes());
                }
            }
            Record::Release { .. } => {}
        }
        b
    }

    /// Decodes a record; `None` for bytes that are not one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let tag = r.take(1)?[0];
        let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(r.take(n)?).ok()?.to_owned();
        let owner = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let rec = match tag {
            1 | 2 => {
                let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
                let at_ms = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
                if tag == 1 {
                    Record::Claim {
                        key,
                        hash,
                        owner,
                        at_ms,
                    }
                } else {
                    let count = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
                    if count > r.0.len() / 12 {
                        return None;
                    }
                    let mut results = Vec::with_capacity(count);
                    for _ in 0..count {
                        let p = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
                        let o = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
                        results.push((p, o));
                    }
                    Record::Done {
                        key,
                        hash,
                        owner,
                        at_ms,
                        results,
                    }
                }
            }
            3 => Record::Release { key, owner },
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(key: &str, h: u8, owner: u64, at: i64) -> Record {
        Record::Claim {
            key: key.into(),
            hash: [h; 32],
            owner,
            at_ms: at,
        }
    }

    fn done(key: &str, h: u8, owner: u64, at: i64) -> Record {
        Record::Done {
            key: key.into(),
            hash: [h; 32],
            owner,
            at_ms: at,
            results: vec![(1, 42), (1, 43)],
        }
    }

    #[test]
    fn records_round_trip_and_junk_is_refused() {
        for r in [
            claim("t\nk", 1, 7, 100),
            done("t\nk", 2, 8, 200),
            Record::Release {
                key: "k".into(),
                owner: 9,
            },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
            let e = r.encode();
            assert_eq!(Record::decode(&e[..e.len() - 1]), None);
        }
        assert_eq!(Record::decode(b""), None);
        assert_eq!(Record::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn the_first_claim_wins_and_its_owner_alone_completes_it() {
        let mut t = Table::new(60_000, 10_000);
        assert_eq!(t.decide("k", &[1; 32], 0), Decision::Claim);
        t.apply(&claim("k", 1, 7, 0), 0);
        // A second gateway's claim, later in the log, loses.
        t.apply(&claim("k", 1, 8, 1), 1);
        assert_eq!(t.owner("k", 2), Some(7));
        assert_eq!(t.decide("k", &[1; 32], 2), Decision::InProgress);
        assert_eq!(t.decide("k", &[2; 32], 2), Decision::Mismatch);
        // The loser's done changes nothing; the owner's does.
        t.apply(&done("k", 1, 8, 3), 3);
        assert_eq!(t.decide("k", &[1; 32], 3), Decision::InProgress);
        t.apply(&done("k", 1, 7, 3), 3);
        assert_eq!(
            t.decide("k", &[1; 32], 4),
            Decision::Replay(vec![(1, 42), (1, 43)])
        );
        assert_eq!(t.decide("k", &[2; 32], 4), Decision::Mismatch);
    }

    #[test]
    fn stale_claims_releases_and_the_window() {
        let mut t = Table::new(60_000, 10_000);
        t.apply(&claim("a", 1, 7, 0), 0);
        // The owner died: after the claim TTL the key can be claimed again.
        assert_eq!(t.decide("a", &[1; 32], 10_000), Decision::Claim);
        t.apply(&claim("a", 1, 8, 10_000), 10_000);
        assert_eq!(t.owner("a", 10_001), Some(8));
        // A release by its owner frees the key at once; by anyone else, not.
        t.apply(
            &Record::Release {
                key: "a".into(),
                owner: 7,
            },
            10_002,
        );
        assert_eq!(t.owner("a", 10_002), Some(8));
        t.apply(
            &Record::Release {
                key: "a".into(),
                owner: 8,
            },
            10_002,
        );
        assert_eq!(t.decide("a", &[1; 32], 10_002), Decision::Claim);
        // Done entries last the window, then expire.
        t.apply(&done("b", 1, 9, 20_000), 20_000);
        assert!(matches!(
            t.decide("b", &[1; 32], 79_999),
            Decision::Replay(_)
        ));
        assert_eq!(t.decide("b", &[1; 32], 80_000), Decision::Claim);
        t.expire(80_000);
        assert!(t.done_records().is_empty());
    }
}
