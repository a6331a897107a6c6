//! The embedded store: topics live in this host's log engine, in a [`LogSet`] under
//! `<data>/topics`. Each partition is owned by one core, its single writer; that core also keeps
//! every group's cursor (the next offset to hand out) and committed offset there, so any request
//! on any core continues where a group is, and two consumers of one group never get the same
//! message. What runs on the owner core is here; reaching the owner from another core is in
//! [`remote`]; retention and the scrubber in [`retention`] and [`scrub`].

mod queue;
pub mod remote;
pub mod retention;
pub mod scrub;

use crate::catalog::TopicMeta;
use crate::logset::{storage_err, LogSet, Written};
use crate::metrics::{self, Stage};
use crate::request::{Fetch, Fetched};
use crate::shard::Shard;
use kateway_core::message::tags_match;
use kateway_core::{
    Ack, Delivered, Error, ErrorKind, Groups, Item, PartitionInfo, Published, Reset,
};
use std::rc::Rc;
use std::time::Instant;

/// How many bytes of records one fetch may look at past those a tag filter rejects before it
/// returns (saying there is more), so that a rare tag in a long log neither holds the core nor
/// leaves the subscriber waiting for new data while matching records are stored.
const SCAN_BYTES: usize = 4 << 20;

/// What a fetch collected so far.
#[derive(Default)]
struct Scan {
    out: Vec<Delivered>,
    bytes: usize,
    scanned: usize,
    more: bool,
}

/// One core's part of the embedded store.
pub struct Store {
    pub logs: Rc<LogSet>,
}

/// Partitions a core opens for a topic before it serves other tasks again.
const OPEN_BETWEEN_YIELDS: u32 = 8;

impl Store {
    pub fn new(shard: Rc<Shard>, open_files: usize) -> Self {
        let root = crate::backend::data_root(&shard.cfg());
        let segment = shard.cfg().store.segment_bytes.0;
        Self {
            logs: Rc::new(LogSet::new(shard, "topics", root, segment, open_files)),
        }
    }

    fn shard(&self) -> &Rc<Shard> {
        &self.logs.shard
    }

    /// Opens the partitions of `meta` this core owns (recovering them).
    pub async fn apply_topic(&self, meta: &TopicMeta) -> Result<(), Error> {
        let shard = self.shard();
        let name = shard
            .interned(&meta.name)
            .unwrap_or_else(|| Rc::from(meta.name.as_str()));
        let mut opened = 0;
        for p in 0..meta.partitions {
            if meta.owner(p, shard.cores()) == shard.id && self.logs.get(&name, p).is_none() {
                self.logs.open(&name, p)?;
                opened += 1;
                // Opening a partition makes its directory and files (about half a millisecond):
                // a topic of thousands lets the core serve in between.
                if opened % OPEN_BETWEEN_YIELDS == 0 {
                    crate::event::yield_now().await;
                }
            }
        }
        Ok(())
    }

    /// Publishes to a partition this core owns: appends and waits for the durability asked.
    pub async fn publish(
        &self,
        topic: &str,
        p: u32,
        items: &[Item],
        ack: Ack,
    ) -> Result<Published, Error> {
        let t0 = Instant::now();
        let a = self.logs.append(topic, p, items)?;
        let appended = Instant::now();
        let shard = self.shard();
        let m = &shard.metrics;
        m.stage(Stage::Append, appended - t0);
        let bytes = items.iter().map(|i| i.value.len() as u64).sum();
        metrics::add(&m.pub_messages_total, items.len() as u64);
        metrics::add(&m.pub_bytes_total, bytes);
        if let Ok(t) = shard.topic(topic) {
            t.stats.published(items.len() as u64, bytes);
        }
        self.logs
            .wait_durable(&a.part, Written::Records, a.gen, ack)
            .await?;
        if ack != Ack::Async {
            let now = (ack == Ack::All).then(Instant::now);
            let written = self
                .logs
                .dur
                .written_time(a.gen)
                .or(now)
                .unwrap_or_else(Instant::now)
                .max(appended);
            m.stage(Stage::WriteWait, written - appended);
            if let Some(now) = now {
                m.stage(Stage::SyncWait, now.saturating_duration_since(written));
            }
        }
        Ok(Published {
            offsets: a.offsets.into_iter().map(|o| o as i64).collect(),
            buffered: false,
        })
    }

    /// Hands out messages of a group from this core's partitions of a topic, advancing the
    /// group's cursors (and committing them with auto-ack). A partition that fails to read
    /// costs only itself: its error is returned when no other partition had records, and
    /// nothing is committed past what is handed out.
    pub fn fetch(&self, f: &Fetch) -> Result<Fetched, Error> {
        let shard = self.shard();
        let topic = shard.topic(&f.topic)?;
        let mine = &topic.owned;
        let mut scan = Scan::default();
        let mut failed = None;
        let start = shard.turn();
        for i in 0..mine.len() {
            if scan.out.len() >= f.max || scan.bytes >= f.max_bytes {
                break;
            }
            if scan.scanned >= SCAN_BYTES {
                scan.more = true;
                break;
            }
            let p = mine[(start + i) % mine.len()];
            if let Err(e) = self.fetch_partition(f, p, &mut scan) {
                failed.get_or_insert(e);
            }
        }
        metrics::add(&shard.metrics.sub_messages_total, scan.out.len() as u64);
        metrics::add(&shard.metrics.sub_bytes_total, scan.bytes as u64);
        topic
            .stats
            .delivered(scan.out.len() as u64, scan.bytes as u64);
        match failed {
            Some(e) if scan.out.is_empty() => Err(e),
            _ => Ok(Fetched {
                records: scan.out,
                more: scan.more,
            }),
        }
    }

    /// Reads partition `p` for a fetch: past records a tag filter rejects, until the fetch has
    /// its records, the partition's end, or the scan budget.
    fn fetch_partition(&self, f: &Fetch, p: u32, scan: &mut Scan) -> Result<(), Error> {
        let part = self.logs.part(&f.topic, p)?;
        let mut st = part.borrow_mut();
        let st = &mut *st;
        let (oldest, end) = (st.log.start(), st.log.end());
        let cursor = match st.cursors.get(&f.group) {
            Some(&c) => c,
            None => match st.offsets.get(&f.group) {
                Some(c) => c,
                None => match f.reset {
                    Reset::Oldest => oldest,
                    Reset::Newest => end,
                },
            },
        };
        // After retention removed the head, clamp.
        let mut cursor = cursor.clamp(oldest, end);
        let mut failed = None;
        while cursor < end && scan.out.len() < f.max && scan.bytes < f.max_bytes {
            let read = st
                .log
                .read(cursor, f.max - scan.out.len(), f.max_bytes - scan.bytes);
            for d in st.log.take_damage() {
                self.logs.report_damage(&f.topic, p, d, "read");
            }
            let recs = match read {
                Ok(recs) if !recs.is_empty() => recs,
                Ok(_) => break,
                Err(e) => {
                    failed = Some(storage_err(&f.topic, p, &e));
                    break;
                }
            };
            for r in recs {
                cursor = r.offset + 1;
                scan.scanned += r.value.len() + r.key.len() + r.tags.len();
                if !f.tags.is_empty() && !tags_match(&r.tags, &f.tags) {
                    continue;
                }
                scan.bytes += r.value.len();
                scan.out.push(Delivered {
                    partition: p,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    tags: r.tags,
                    value: r.value,
                    leased: None,
                });
            }
            if f.tags.is_empty() {
                break;
            }
            if scan.scanned >= SCAN_BYTES {
                scan.more |= cursor < end;
                break;
            }
        }
        // Only what was handed out (or skipped by the filter) moves the group.
        st.cursors.insert(f.group.clone(), cursor);
        if f.auto_ack {
            self.logs.commit(&f.topic, p, st, &f.group, cursor);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Commits a group's offset (the next offset to consume) on a partition this core owns and
    /// waits until it is durable. With `seek` the offset may also move backwards (down to the
    /// oldest offset stored) and the group's read position moves with it.
    pub async fn commit(
        &self,
        topic: &str,
        p: u32,
        group: &str,
        offset: u64,
        seek: bool,
    ) -> Result<(), Error> {
        self.logs.admit_write()?;
        let part = self.logs.part(topic, p)?;
        let gen = {
            let mut st = part.borrow_mut();
            let (start, end) = (st.log.start(), st.log.end());
            if offset > end {
                // An acknowledgement names the last processed offset, a seek the next one.
                let named = if seek { offset } else { offset - 1 };
                return Err(Error::new(
                    ErrorKind::InvalidAck,
                    format!("offset {named} is beyond the end of partition {p} ({end})"),
                ));
            }
            if seek && offset < start {
                return Err(Error::new(
                    ErrorKind::InvalidAck,
                    format!("offset {offset} is before the oldest stored offset of partition {p} ({start})"),
                ));
            }
            if seek || st.cursors.get(group).is_none_or(|&c| c < offset) {
                st.cursors.insert(group.to_owned(), offset);
            }
            // Already committed at this offset: answer once that commit is durable (a retried
            // acknowledgement must not be answered before the first one is on disk).
            self.logs.commit(topic, p, &mut st, group, offset)
        };
        self.logs
            .wait_durable(&part, Written::Commits, gen, Ack::All)
            .await
    }

    /// Offsets of this core's partitions of a topic, and of the groups asked about.
    pub fn info(&self, topic: &str, groups: &Groups) -> Vec<PartitionInfo> {
        let parts = self.logs.parts.borrow();
        let mut out: Vec<PartitionInfo> = parts
            .iter()
            .filter(|((t, _), _)| &**t == topic)
            .map(|((_, p), st)| {
                let st = st.borrow();
                PartitionInfo {
                    partition: *p,
                    oldest: st.log.start(),
                    newest: st.log.end(),
                    groups: st
                        .offsets
                        .groups()
                        .filter(|(g, _)| groups.wants(g))
                        .map(|(g, o)| (g.to_owned(), o))
                        .collect(),
                }
            })
            .collect();
        out.sort_by_key(|i| i.partition);
        out
    }

    /// Starts the store's tasks: the flusher (returned: the core ends when it has flushed),
    /// the storage recovery, retention and the scrubber.
    pub fn spawn(&self, tasks: &crate::tasks::Tasks) {
        tasks.spawn("flusher", crate::logset::flusher::run(self.logs.clone()));
        tasks.spawn(
            "storage recovery",
            crate::logset::durability::recover(self.logs.clone()),
        );
        tasks.spawn("retention", retention::run(self.logs.clone()));
        tasks.spawn("scrubber", scrub::run(self.logs.clone()));
    }
}
