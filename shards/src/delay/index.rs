//! The index of one delay-log partition that this gateway holds: the pending delays due within
//! the memory horizon, in memory with their messages, soonest first; later ones in bucket files
//! under `<data>/delays/<partition>/` ([`kateway_core::delay::bucket_of`]), loaded as their
//! time comes. The files are a cache of the log for this process only: the index is rebuilt
//! from the delay log whenever the partition is opened, so nothing in them needs to survive a
//! crash.

use bytes::Bytes;
use kateway_core::delay::{bucket_of, Bucket, BucketEntry, Delay, Record};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A pending delay held in memory: its delay-log record as read (decoded when it fires), so
/// that one allocation holds it.
struct Pending {
    id: Bytes,
    offset: u64,
    raw: Bytes,
    /// Handed to the firing round now in flight.
    firing: bool,
}

impl Pending {
    fn delay(&self) -> Option<Delay> {
        match Record::decode(&self.raw) {
            Ok(Record::Delay(d)) => Some(d),
            _ => None,
        }
    }
}

/// The key of an id in [`Index::by_id`]: its hash (the entry it finds is checked against
/// the id itself; ids carry a MAC, so nobody can choose ids that collide).
fn hash(id: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// What one bucket file holds.
#[derive(Default, Clone, Copy)]
struct BucketInfo {
    min_offset: u64,
    entries: u64,
}

/// What became of a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending: it will not fire.
    Yes,
    /// It is firing now (or fired).
    Firing,
    /// Not pending here.
    NotPending,
}

/// One partition's index.
pub struct Index {
    dir: PathBuf,
    horizon: i64,
    mem: BTreeMap<(i64, u64), Pending>,
    by_id: FxHashMap<u64, (i64, u64)>,
    buckets: BTreeMap<Bucket, BucketInfo>,
    /// Entries not yet appended to their bucket files: written once per batch of records
    /// ([`Index::flush`]), and before a bucket is read.
    unwritten: RefCell<BTreeMap<Bucket, Vec<u8>>>,
    mem_bytes: usize,
    /// The next offset of the log to read into the index.
    pub next: u64,
    /// The log's end when the partition was opened: the index is complete (and may fire) once
    /// it has read that far.
    pub end_at_open: u64,
}

impl Index {
    /// An empty index reading the log from `next`, its bucket files in `dir` (emptied).
    pub fn new(dir: PathBuf, horizon: i64, next: u64, end_at_open: u64) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot create the delay index directory: {e}");
        }
        Self {
            dir,
            horizon,
            mem: BTreeMap::new(),
            by_id: FxHashMap::default(),
            buckets: BTreeMap::new(),
            unwritten: RefCell::default(),
            mem_bytes: 0,
            next,
            end_at_open,
        }
    }

    /// Whether the index has read the log as far as it reached when opened.
    pub fn ready(&self) -> bool {
        self.next >= self.end_at_open
    }

    /// Pending delays held in memory.
    pub fn in_memory(&self) -> usize {
        self.mem.len()
    }

    /// Pending delays waiting in bucket files (cancelled ones not subtracted).
    pub fn on_disk(&self) -> u64 {
        self.buckets.values().map(|b| b.entries).sum()
    }

    /// Message bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.mem_bytes
    }

    fn drop_mem(&mut self, k: &(i64, u64)) {
        if let Some(p) = self.mem.remove(k) {
            self.mem_bytes -= p.raw.len();
        }
    }

    /// Where pending delay `id` is in memory.
    fn mem_key(&self, id: &[u8]) -> Option<(i64, u64)> {
        let k = *self.by_id.get(&hash(id))?;
        self.mem.get(&k).is_some_and(|p| p.id == id).then_some(k)
    }

    /// Adds a pending delay due at `due`, read at `offset` (its record's value `raw`).
    pub fn add(&mut self, now: i64, offset: u64, id: Bytes, due: i64, raw: Bytes) {
        match bucket_of(due, now, self.horizon) {
            None => {
                // Held until it fires: copied out of the read buffer it was sliced from, which
                // it would otherwise keep alive whole.
                let id = Bytes::copy_from_slice(&id);
                let raw = Bytes::copy_from_slice(&raw);
                if let Some(old) = self.mem_key(&id) {
                    // Read twice (a log read again from an earlier offset): keep one.
                    self.drop_mem(&old);
                }
                self.by_id.insert(hash(&id), (due, offset));
                self.mem_bytes += raw.len();
                self.mem.insert(
                    (due, offset),
                    Pending {
                        id,
                        offset,
                        raw,
                        firing: false,
                    },
                );
            }
            Some(b) => {
                let entry = BucketEntry::Pending {
                    offset,
                    id,
                    record: raw,
                };
                self.append(b, &entry);
                let info = self.buckets.entry(b).or_insert(BucketInfo {
                    min_offset: offset,
                    entries: 0,
                });
                info.min_offset = info.min_offset.min(offset);
                info.entries += 1;
            }
        }
    }

    /// Takes a pending delay out (cancelled, or marked fired): from memory, or with a removal
    /// entry in its bucket if it waits in one.
    pub fn remove(&mut self, id: &[u8], due: i64) -> Cancelled {
        if let Some(k) = self.mem_key(id) {
            if self.mem.get(&k).is_some_and(|p| p.firing) {
                return Cancelled::Firing;
            }
            self.by_id.remove(&hash(id));
            self.drop_mem(&k);
            return Cancelled::Yes;
        }
        let Some(b) = self.holder(due, id) else {
            return Cancelled::NotPending;
        };
        self.append(
            b,
            &BucketEntry::Removed {
                id: Bytes::copy_from_slice(id),
            },
        );
        Cancelled::Yes
    }

    /// The bucket that holds `id`, due at `due`, pending. A delay is in the hour bucket of its
    /// due time until that bucket is loaded, then in its minute bucket until that one is: not
    /// necessarily the bucket [`bucket_of`] names now, since buckets are loaded by the pump's
    /// next refill, a moment after their load time.
    fn holder(&self, due: i64, id: &[u8]) -> Option<Bucket> {
        let hour = Bucket {
            level: 1,
            n: due.div_euclid(kateway_core::delay::HOUR),
        };
        let minute = Bucket {
            level: 0,
            n: due.div_euclid(kateway_core::delay::MINUTE),
        };
        [hour, minute]
            .into_iter()
            .find(|&b| self.bucket_holds(b, id))
    }

    /// Whether bucket `b` holds `id` pending.
    fn bucket_holds(&self, b: Bucket, id: &[u8]) -> bool {
        if !self.buckets.contains_key(&b) {
            return false;
        }
        let mut pending = false;
        for e in self.read_bucket(b) {
            match e {
                BucketEntry::Pending { id: i, .. } if i == id => pending = true,
                BucketEntry::Removed { id: i } if i == id => pending = false,
                _ => {}
            }
        }
        pending
    }

    fn path(&self, b: Bucket) -> PathBuf {
        self.dir.join(b.file_name())
    }

    fn read_bucket(&self, b: Bucket) -> Vec<BucketEntry> {
        self.flush();
        match std::fs::read(self.path(b)) {
            Ok(data) => BucketEntry::read_all(Bytes::from(data)),
            Err(e) => {
                tracing::warn!(bucket = %b.file_name(), "cannot read a delay index bucket: {e}");
                Vec::new()
            }
        }
    }

    fn append(&self, b: Bucket, e: &BucketEntry) {
        e.write(self.unwritten.borrow_mut().entry(b).or_default());
    }

    /// Appends the entries added since the last flush to their bucket files.
    pub fn flush(&self) {
        let unwritten = std::mem::take(&mut *self.unwritten.borrow_mut());
        for (b, buf) in unwritten {
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(b))
                .and_then(|mut f| f.write_all(&buf));
            if let Err(e) = r {
                tracing::warn!(bucket = %b.file_name(), "cannot write a delay index bucket: {e}");
            }
        }
    }

    /// Moves the buckets whose time has come into memory (or on into nearer buckets).
    pub fn refill(&mut self, now: i64) {
        let due: Vec<Bucket> = self
            .buckets
            .keys()
            .copied()
            .filter(|b| b.load_at(self.horizon) <= now)
            .collect();
        for b in due {
            let entries = self.read_bucket(b);
            self.buckets.remove(&b);
            self.unwritten.borrow_mut().remove(&b);
            let _ = std::fs::remove_file(self.path(b));
            let removed: FxHashSet<Bytes> = entries
                .iter()
                .filter_map(|e| match e {
                    BucketEntry::Removed { id } => Some(id.clone()),
                    _ => None,
                })
                .collect();
            for e in entries {
                let BucketEntry::Pending { offset, id, record } = e else {
                    continue;
                };
                if removed.contains(&id) {
                    continue;
                }
                match Record::decode(&record) {
                    Ok(Record::Delay(d)) => self.add(now, offset, id, d.deliver_at_ms, record),
                    _ => tracing::warn!(offset, "a delay index bucket holds an unreadable record"),
                }
            }
        }
    }

    /// Up to `max` delays due by `now` that are not firing yet, marked firing.
    pub fn take_due(&mut self, now: i64, max: usize) -> Vec<(Bytes, u64, Delay)> {
        let mut out = Vec::new();
        for ((due, _), p) in self.mem.iter_mut() {
            if *due > now || out.len() >= max {
                break;
            }
            if !p.firing {
                p.firing = true;
                if let Some(d) = p.delay() {
                    out.push((p.id.clone(), p.offset, d));
                }
            }
        }
        out
    }

    /// A firing round ended: the delays it fired leave the index; the others wait again.
    pub fn fired(&mut self, ids: &[Bytes], ok: bool) {
        for id in ids {
            let Some(k) = self.mem_key(id) else {
                continue;
            };
            if ok {
                self.by_id.remove(&hash(id));
                self.drop_mem(&k);
            } else if let Some(p) = self.mem.get_mut(&k) {
                p.firing = false;
            }
        }
    }

    /// When the soonest delay in memory is due.
    pub fn next_due(&self) -> Option<i64> {
        self.mem
            .iter()
            .find(|(_, p)| !p.firing)
            .map(|((due, _), _)| *due)
    }

    /// The first offset of the log not yet finished: every pending delay is at or after it,
    /// so the index can be rebuilt from there.
    pub fn watermark(&self) -> u64 {
        let mem = self.mem.values().map(|p| p.offset).min();
        let disk = self.buckets.values().map(|b| b.min_offset).min();
        [Some(self.next), mem, disk]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next)
    }

    /// The pending delay `id`, from memory or its bucket.
    pub fn find(&self, id: &[u8], due: i64) -> Option<(u64, Delay)> {
        if let Some(k) = self.mem_key(id) {
            return self.mem.get(&k).and_then(|p| Some((p.offset, p.delay()?)));
        }
        let b = self.holder(due, id)?;
        let mut found = None;
        for e in self.read_bucket(b) {
            match e {
                BucketEntry::Pending {
                    id: i,
                    offset,
                    record,
                } if i == id => {
                    if let Ok(Record::Delay(d)) = Record::decode(&record) {
                        found = Some((offset, d));
                    }
                }
                BucketEntry::Removed { id: i } if i == id => found = None,
                _ => {}
            }
        }
        found
    }

    /// Up to `max` pending delays of `topic`, soonest first: `(id, delay)`.
    pub fn list(&self, topic: &str, max: usize) -> Vec<(Bytes, Delay)> {
        let mut out: Vec<(Bytes, Delay)> = self
            .mem
            .values()
            .filter_map(|p| Some((p.id.clone(), p.delay()?)))
            .filter(|(_, d)| d.topic == topic)
            .take(max)
            .collect();
        // Buckets by the time they cover (not by when they load: an hour bucket loads a day
        // early): the minute buckets, within a day, before the hour buckets beyond it. Their
        // spans do not overlap, so sorted buckets give sorted delays.
        let mut order: Vec<Bucket> = self.buckets.keys().copied().collect();
        order.sort_by_key(|b| match b.level {
            0 => b.n * kateway_core::delay::MINUTE,
            _ => b.n * kateway_core::delay::HOUR,
        });
        for b in order {
            if out.len() >= max {
                break;
            }
            let entries = self.read_bucket(b);
            let removed: FxHashSet<&Bytes> = entries
                .iter()
                .filter_map(|e| match e {
                    BucketEntry::Removed { id } => Some(id),
                    _ => None,
                })
                .collect();
            let mut found: Vec<(Bytes, Delay)> = entries
                .iter()
                .filter_map(|e| match e {
                    BucketEntry::Pending { id, record, .. } if !removed.contains(id) => {
                        match Record::decode(record) {
                            Ok(Record::Delay(d)) if d.topic == topic => Some((id.clone(), d)),
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .collect();
            found.sort_by_key(|(_, d)| d.deliver_at_ms);
            out.extend(found.into_iter().take(max - out.len()));
        }
        out
    }

    /// Removes the bucket files (the partition is closed here).
    pub fn close(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(due: i64, topic: &str) -> Delay {
        Delay {
            deliver_at_ms: due,
            created_ms: 0,
            topic: topic.into(),
            partition: 0,
            key: Bytes::new(),
            tags: Bytes::new(),
            value: Bytes::from_static(b"m"),
        }
    }

    fn add(ix: &mut Index, now: i64, offset: u64, id: &'static [u8], d: Delay) {
        let raw = Record::Delay(d.clone()).encode();
        ix.add(now, offset, Bytes::from_static(id), d.deliver_at_ms, raw);
    }

    #[test]
    fn far_delays_wait_on_disk_and_come_back_in_time() {
        let dir = std::env::temp_dir().join(format!("kgw-delay-ix-{}", std::process::id()));
        let day = 86_400_000;
        let now = 1_000 * day;
        let mut ix = Index::new(dir.clone(), 60_000, 0, 0);
        add(&mut ix, now, 0, b"near", delay(now + 1000, "a.t.v1"));
        add(&mut ix, now, 1, b"far", delay(now + 30 * day, "a.t.v1"));
        add(&mut ix, now, 2, b"gone", delay(now + 30 * day, "a.t.v1"));
        add(&mut ix, now, 3, b"other", delay(now + 32 * day, "a.u.v1"));
        ix.next = 4;
        assert_eq!(ix.in_memory(), 1);
        assert_eq!(ix.on_disk(), 3);
        assert_eq!(ix.watermark(), 0);
        assert_eq!(ix.remove(b"gone", now + 30 * day), Cancelled::Yes);
        assert_eq!(ix.remove(b"gone", now + 30 * day), Cancelled::NotPending);
        assert!(ix.find(b"far", now + 30 * day).is_some());
        let listed: Vec<Bytes> = ix.list("a.t.v1", 10).into_iter().map(|x| x.0).collect();
        assert_eq!(
            listed,
            vec![Bytes::from_static(b"near"), Bytes::from_static(b"far")]
        );
        // The near one fires.
        let due = ix.take_due(now + 1000, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(ix.remove(b"near", now + 1000), Cancelled::Firing);
        ix.fired(&[due[0].0.clone()], true);
        assert_eq!(ix.watermark(), 1);
        // Thirty days on, through the hour bucket and a minute bucket.
        let later = now + 30 * day;
        for step in [later - day, later - 50_000, later] {
            ix.refill(step);
        }
        let due = ix.take_due(later, 10);
        let ids: Vec<Bytes> = due.iter().map(|d| d.0.clone()).collect();
        assert_eq!(ids, vec![Bytes::from_static(b"far")]);
        ix.fired(&ids, true);
        assert_eq!(ix.watermark(), 3);
        ix.close();
        assert!(!dir.exists());
    }

    /// A delay past its hour bucket's load time, before the pump refilled that bucket, is
    /// still found and cancelled there (not only in the bucket its due time names now).
    #[test]
    fn a_cancel_before_the_refill_finds_the_delay_in_its_older_bucket() {
        let dir = std::env::temp_dir().join(format!("kgw-delay-ix2-{}", std::process::id()));
        let hour = 3_600_000;
        let now = 1_000 * 24 * hour;
        let mut ix = Index::new(dir.clone(), 60_000, 0, 0);
        let due = now + 25 * hour;
        add(&mut ix, now, 0, b"race", delay(due, "a.t.v1"));
        ix.next = 1;
        // Two hours on: the hour bucket's load time has passed, no refill yet.
        let later = now + 2 * hour;
        assert!(ix.find(b"race", due).is_some(), "a peek finds it");
        assert_eq!(ix.remove(b"race", due), Cancelled::Yes);
        assert!(ix.find(b"race", due).is_none());
        for step in [later, due - 50_000, due] {
            ix.refill(step);
        }
        assert!(
            ix.take_due(due, 10).is_empty(),
            "a cancelled delay never fires"
        );
        ix.close();
    }

    /// The list is soonest first across bucket kinds: a delay in a minute bucket (within a
    /// day) before one in an hour bucket that loads earlier than that minute bucket.
    #[test]
    fn the_list_is_soonest_first() {
        let dir = std::env::temp_dir().join(format!("kgw-delay-ix3-{}", std::process::id()));
        let hour = 3_600_000;
        let now = 1_000 * 24 * hour;
        let mut ix = Index::new(dir.clone(), 60_000, 0, 0);
        add(&mut ix, now, 0, b"in25h", delay(now + 25 * hour, "a.t.v1"));
        add(&mut ix, now, 1, b"in23h", delay(now + 23 * hour, "a.t.v1"));
        ix.next = 2;
        let first: Vec<Bytes> = ix.list("a.t.v1", 1).into_iter().map(|x| x.0).collect();
        assert_eq!(first, vec![Bytes::from_static(b"in23h")]);
        ix.close();
    }
}
