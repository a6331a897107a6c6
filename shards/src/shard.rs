//! One core's state: its copy of the topic catalog, the partitions it owns (logs, group
//! offsets, group cursors), the group-commit generations, the topic wake-up events of its parked
//! long polls, and its metrics. Everything here is touched by this core's thread only; other
//! cores reach it through [`crate::mesh`]. No `RefCell` borrow is held across an `.await`.

use crate::durability::{Durability, Ranges};
use crate::event::Event;
use crate::kafka::KafkaCore;
use crate::mesh::{Ack, Delivered, Fetch, Item, Mesh, PartitionInfo, Published, Reset};
use crate::metrics::{self, Metrics};
use crate::topics::{self, TopicMeta};
use kateway_core::config::Config;
use kateway_core::{Error, ErrorKind};
use kateway_log::{Damage, Files, LogError, OffsetLog, Partition, PartitionConfig};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Maps keyed by names the core already holds: Fx hashing instead of SipHash, since several
/// lookups happen per request and the tables' keys come from the catalog, not from clients.
pub type Map<K, V> = HashMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A partition this core owns.
pub struct OwnedPartition {
    pub log: Partition,
    pub offsets: OffsetLog,
    /// Next offset to hand out per group (ahead of the committed offset with explicit acks).
    pub cursors: Map<String, u64>,
    /// The group-commit generation of the latest offset commit: durable once it is synced.
    pub offsets_gen: u64,
    /// The last generation whose records (and commits) were written without failure.
    pub written_gen: u64,
    pub commit_written_gen: u64,
    /// Generations whose records (and commits) this partition failed to write.
    pub write_failed: Ranges,
    pub commit_failed: Ranges,
}

/// What a durability wait is for: a partition's records or its group commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Records,
    Commits,
}

/// A topic as one core sees it: the catalog entry and the partitions this core owns, computed
/// once when the topic is applied rather than on every publish and fetch.
pub struct LocalTopic {
    pub meta: TopicMeta,
    /// Partitions of the topic owned by this core, ascending.
    pub owned: Vec<u32>,
    /// Every core that owns a partition of the topic, ascending.
    pub owner_cores: Vec<usize>,
}

impl std::ops::Deref for LocalTopic {
    type Target = TopicMeta;

    fn deref(&self) -> &TopicMeta {
        &self.meta
    }
}

/// Key of an owned partition.
pub type PartKey = (Rc<str>, u32);

/// Records appended to a partition: where, and the generation that makes them durable.
pub struct Appended {
    pub part: Rc<RefCell<OwnedPartition>>,
    pub offsets: Vec<u64>,
    pub gen: u64,
}

/// The log engine's recovery mode for the configured one.
pub fn recovery_mode(m: kateway_core::config::RecoveryMode) -> kateway_log::RecoveryMode {
    use kateway_core::config::RecoveryMode as C;
    match m {
        C::TolerateCorruption => kateway_log::RecoveryMode::TolerateCorruption,
        C::TolerateTail => kateway_log::RecoveryMode::TolerateTail,
        C::Absolute => kateway_log::RecoveryMode::Absolute,
    }
}

/// One core's shard.
pub struct Shard {
    pub id: usize,
    pub cfg: Rc<Config>,
    pub mesh: Mesh,
    /// The Kafka backend's per-core state; `None` with the embedded store.
    pub kafka: Option<Rc<KafkaCore>>,
    pub topics: RefCell<Map<Rc<str>, Rc<LocalTopic>>>,
    pub parts: RefCell<Map<PartKey, Rc<RefCell<OwnedPartition>>>>,
    /// Owned partitions written since the last flush.
    pub dirty: RefCell<Vec<PartKey>>,
    /// Appended bytes not yet written.
    pub pending_bytes: Cell<usize>,
    pub dur: Durability,
    /// This core's budget of open log files.
    pub files: Rc<Files>,
    /// Damage found on this core's partitions, newest last (bounded).
    pub damage: RefCell<std::collections::VecDeque<DamageEntry>>,
    /// Response bytes held for clients that have not read them yet.
    pub response_bytes: Cell<usize>,
    /// Long-poll wake-ups per topic.
    pub topic_events: RefCell<Map<Rc<str>, Rc<Event>>>,
    /// Long polls parked on this core per topic.
    pub parked: RefCell<Map<Rc<str>, usize>>,
    /// Per topic, how many parked polls each core has (as owner of partitions).
    pub interest: RefCell<Map<Rc<str>, Vec<i64>>>,
    pub rr: Cell<usize>,
    pub metrics: Metrics,
    pub shutdown: Cell<bool>,
    pub shutdown_event: Event,
    pub stop_event: Event,
    pub started: std::time::Instant,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A storage failure as clients see it: what failed, never a server path (logged instead).
pub fn storage_err(topic: &str, p: u32, e: &LogError) -> Error {
    if let Some(d) = e.damage() {
        return Error::new(
            ErrorKind::DamagedData,
            format!(
                "partition {topic}/{p}: {d} in segment file {:020}.log, which store.recovery_mode does not skip; move a group past them with PUT /v1/offset/...?offset={}",
                d.segment, d.offsets.end
            ),
        );
    }
    tracing::error!(topic, partition = p, "storage: {e}");
    Error::new(
        ErrorKind::StorageFailed,
        format!(
            "storage of partition {topic}/{p} failed: {}",
            crate::durability::reason(e)
        ),
    )
}

/// Damage found on a partition, as status reports it.
#[derive(Debug, Clone)]
pub struct DamageEntry {
    pub topic: String,
    pub partition: u32,
    pub damage: Damage,
    /// How it was found: "recovery", "read" or "scrub".
    pub found_by: &'static str,
    pub at_ms: i64,
}

/// Damage entries a core keeps for status.
const DAMAGE_KEPT: usize = 64;

/// Response bytes held against the core's `limits.max_response_bytes_per_core` until the
/// answer is written to the client (or the connection is gone).
pub struct Held {
    shard: Rc<Shard>,
    bytes: usize,
}

impl Held {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead (the size of the answer once it is built).
    pub fn resize(&mut self, bytes: usize) {
        let r = &self.shard.response_bytes;
        r.set(r.get() - self.bytes + bytes);
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let r = &self.shard.response_bytes;
        r.set(r.get().saturating_sub(self.bytes));
    }
}

impl Shard {
    pub fn new(
        id: usize,
        cfg: Rc<Config>,
        mesh: Mesh,
        kafka: Option<Rc<KafkaCore>>,
        open_files: usize,
    ) -> Self {
        let dur = Durability::new();
        Self {
            files: Files::new(open_files),
            damage: Default::default(),
            response_bytes: Cell::new(0),
            id,
            cfg,
            mesh,
            kafka,
            topics: Default::default(),
            parts: Default::default(),
            dirty: Default::default(),
            pending_bytes: Cell::new(0),
            dur,
            topic_events: Default::default(),
            parked: Default::default(),
            interest: Default::default(),
            rr: Cell::new(id),
            metrics: Metrics::default(),
            shutdown: Cell::new(false),
            shutdown_event: Event::default(),
            stop_event: Event::default(),
            started: std::time::Instant::now(),
        }
    }

    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// The topic's metadata, or 404.
    pub fn topic(&self, name: &str) -> Result<Rc<LocalTopic>, Error> {
        self.topics
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::UnknownTopic, format!("unknown topic {name}")))
    }

    /// The topic's interned name (the catalog's key), so lookups need no allocation.
    pub fn interned(&self, topic: &str) -> Option<Rc<str>> {
        self.topics
            .borrow()
            .get_key_value(topic)
            .map(|(k, _)| k.clone())
    }

    /// The topic of `(appid, topic, ver)`, validated and looked up without allocating.
    pub fn lookup(&self, appid: &str, topic: &str, ver: &str) -> Result<Rc<LocalTopic>, Error> {
        use kateway_core::names::{validate_part, validate_ver};
        validate_part("appid", appid)?;
        validate_part("topic", topic)?;
        validate_ver(ver)?;
        thread_local! {
            static NAME: RefCell<String> = const { RefCell::new(String::new()) };
        }
        NAME.with(|n| {
            let mut n = n.borrow_mut();
            n.clear();
            n.push_str(appid);
            n.push('.');
            n.push_str(topic);
            n.push('.');
            n.push_str(ver);
            self.topic(&n)
        })
    }

    /// The topic of `(appid, topic, ver)`. With the Kafka backend, a topic this gateway has not
    /// seen yet is looked up in Kafka (it may have been created through another gateway) and
    /// added to the catalog.
    pub async fn resolve(
        &self,
        appid: &str,
        topic: &str,
        ver: &str,
    ) -> Result<Rc<LocalTopic>, Error> {
        match self.lookup(appid, topic, ver) {
            Err(e) if e.kind() == ErrorKind::UnknownTopic && self.kafka.is_some() => {
                crate::kafka::topics::learn(self, &format!("{appid}.{topic}.{ver}")).await?;
                self.lookup(appid, topic, ver)
            }
            r => r,
        }
    }

    /// An owned partition, or 404.
    pub fn part(&self, topic: &str, p: u32) -> Result<Rc<RefCell<OwnedPartition>>, Error> {
        let found = self
            .interned(topic)
            .and_then(|key| self.parts.borrow().get(&(key, p)).cloned());
        found.ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownTopic,
                format!("unknown partition {topic}/{p}"),
            )
        })
    }

    /// Directory of partition `p` of `topic` (a log, or with the Kafka backend a handoff log).
    fn part_dir(&self, topic: &str, p: u32) -> std::path::PathBuf {
        topics::partition_dir(&topics::root(&self.cfg), topic, p)
    }

    /// Opens partition `p` of `name`, owned by this core: recovers it, or creates it empty.
    pub fn open_part(&self, name: &Rc<str>, p: u32) -> Result<Rc<RefCell<OwnedPartition>>, Error> {
        let key = (name.clone(), p);
        if let Some(part) = self.parts.borrow().get(&key) {
            return Ok(part.clone());
        }
        let pcfg = PartitionConfig {
            segment_bytes: match self.kafka {
                Some(_) => self.cfg.kafka.handoff_segment_bytes.0,
                None => self.cfg.store.segment_bytes.0,
            },
            index_interval: self.cfg.store.index_interval_bytes.0,
            recovery: recovery_mode(self.cfg.store.recovery_mode),
        };
        let dir = self.part_dir(name, p);
        let (offsets, cut) =
            OffsetLog::open(&dir, self.cfg.store.offsets_compact_bytes.0, &self.files)
                .map_err(|e| storage_err(name, p, &e))?;
        if cut > 0 {
            tracing::warn!(core = self.id, topic = %name, partition = p, cut_bytes = cut,
                "recovery cut a damaged tail of the consumer-offsets log: the groups' last commits may be lost (they resume earlier)");
            metrics::add(&self.metrics.log_damaged_bytes_total, cut);
        }
        // Offsets are never reused: the log continues at least where any group has committed.
        let (log, report) = Partition::open(&dir, pcfg, &self.files, offsets.max_committed())
            .map_err(|e| {
                if e.damage().is_some() {
                    tracing::error!(core = self.id, topic = %name, partition = p,
                        "recovery refused damage (store.recovery_mode): {e}");
                }
                storage_err(name, p, &e)
            })?;
        for d in report.damage {
            self.report_damage(name, p, d, "recovery");
        }
        let part = Rc::new(RefCell::new(OwnedPartition {
            log,
            offsets,
            cursors: Map::default(),
            offsets_gen: 0,
            written_gen: 0,
            commit_written_gen: 0,
            write_failed: Ranges::default(),
            commit_failed: Ranges::default(),
        }));
        self.parts.borrow_mut().insert(key, part.clone());
        Ok(part)
    }

    /// Logs, counts and keeps (for status) damage found on partition `p` of `topic`.
    pub fn report_damage(&self, topic: &str, p: u32, d: Damage, found_by: &'static str) {
        tracing::error!(
            core = self.id,
            topic,
            partition = p,
            found_by,
            "log damage: {d}"
        );
        metrics::add(&self.metrics.log_damaged_records_total, d.records());
        metrics::add(&self.metrics.log_damaged_bytes_total, d.bytes);
        let mut kept = self.damage.borrow_mut();
        if kept.len() == DAMAGE_KEPT {
            kept.pop_front();
        }
        kept.push_back(DamageEntry {
            topic: topic.to_owned(),
            partition: p,
            damage: d,
            found_by,
            at_ms: now_ms(),
        });
    }

    /// Installs a topic and opens the partitions this core owns (recovering them). With the
    /// Kafka backend only handoff logs that exist on disk are opened now; the others are
    /// created when a publish first needs buffering.
    pub fn apply_topic(&self, meta: TopicMeta) -> Result<(), Error> {
        let name: Rc<str> = Rc::from(meta.name.as_str());
        for p in 0..meta.partitions {
            if meta.owner(p, self.cores()) != self.id {
                continue;
            }
            if self.kafka.is_some() && !self.part_dir(&name, p).exists() {
                continue;
            }
            self.open_part(&name, p)?;
        }
        let owned = (0..meta.partitions)
            .filter(|&p| meta.owner(p, self.cores()) == self.id)
            .collect();
        let mut owner_cores: Vec<usize> = (0..meta.partitions)
            .map(|p| meta.owner(p, self.cores()))
            .collect();
        owner_cores.sort_unstable();
        owner_cores.dedup();
        let topic = LocalTopic {
            meta,
            owned,
            owner_cores,
        };
        self.topics.borrow_mut().insert(name, Rc::new(topic));
        Ok(())
    }

    /// Forgets a topic and closes this core's partitions of it (core 0 then removes the files).
    pub fn drop_topic(&self, name: &str) {
        self.topics.borrow_mut().remove(name);
        let keys: Vec<PartKey> = self
            .parts
            .borrow()
            .keys()
            .filter(|(t, _)| &**t == name)
            .cloned()
            .collect();
        for k in keys {
            self.forget_part(&k);
        }
        self.topic_event(name).notify();
    }

    /// Closes an owned partition (dropping what was appended but not written).
    fn forget_part(&self, key: &PartKey) {
        if let Some(part) = self.parts.borrow_mut().remove(key) {
            let pending = part.borrow().log.pending_bytes();
            self.pending_bytes
                .set(self.pending_bytes.get().saturating_sub(pending));
        }
        self.dirty.borrow_mut().retain(|d| d != key);
    }

    /// Closes an owned partition and deletes its directory.
    pub fn remove_part(&self, key: &PartKey) {
        self.forget_part(key);
        let dir = self.part_dir(&key.0, key.1);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(core = self.id, dir = %dir.display(), "cannot remove partition: {e}");
        }
    }

    /// Picks the partition for a keyless publish: one this core owns if it has any.
    pub fn pick_partition(&self, topic: &LocalTopic) -> u32 {
        let n = self.rr.get();
        self.rr.set(n.wrapping_add(1));
        match topic.owned.len() {
            0 => (n % topic.partitions as usize) as u32,
            owned => topic.owned[n % owned],
        }
    }

    /// Runs `local(arg)` when `core` is this core; otherwise sends `core` the request that
    /// `remote(arg, reply)` builds and waits for its answer. `arg` goes to whichever runs.
    pub async fn on_core<A, T, F>(
        &self,
        core: usize,
        arg: A,
        local: impl FnOnce(A) -> F,
        remote: impl FnOnce(A, crate::mesh::Reply<T>) -> crate::mesh::Msg,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = T>,
    {
        if core == self.id {
            return Ok(local(arg).await);
        }
        metrics::inc(&self.metrics.mesh_messages_total);
        self.mesh.call(core, |reply| remote(arg, reply)).await
    }

    /// Refuses writes when the core's storage is faulted or it has too much unwritten data.
    pub fn admit_write(&self) -> Result<(), Error> {
        if self.dur.fault.borrow().active() {
            return Err(self.dur.fault_error("write refused"));
        }
        if self.pending_bytes.get() > self.cfg.limits.max_pending_bytes_per_core.0 as usize {
            return Err(Error::new(
                ErrorKind::Overloaded,
                "too much unwritten data on this core",
            ));
        }
        Ok(())
    }

    /// Appends to an owned partition (no I/O); returns the partition, the offsets and the
    /// generation to wait for.
    pub fn append_local(&self, topic: &str, p: u32, items: &[Item]) -> Result<Appended, Error> {
        let r = self.append_records(topic, p, items)?;
        let bytes: usize = items.iter().map(|i| i.value.len()).sum();
        metrics::add(&self.metrics.pub_messages_total, items.len() as u64);
        metrics::add(&self.metrics.pub_bytes_total, bytes as u64);
        Ok(r)
    }

    /// [`Shard::append_local`] without counting the messages as published (the handoff log
    /// holds messages already counted).
    pub fn append_records(&self, topic: &str, p: u32, items: &[Item]) -> Result<Appended, Error> {
        self.admit_write()?;
        let part = self.part(topic, p)?;
        let ts = now_ms();
        let mut offsets = Vec::with_capacity(items.len());
        {
            let mut st = part.borrow_mut();
            let before = st.log.pending_bytes();
            for it in items {
                offsets.push(st.log.append(ts, &it.key, &it.tags, &it.value));
            }
            self.pending_bytes
                .set(self.pending_bytes.get() + st.log.pending_bytes() - before);
        }
        self.mark_dirty(topic, p);
        Ok(Appended {
            part,
            offsets,
            gen: self.dur.next.get(),
        })
    }

    /// Queues a partition for the flusher.
    pub fn mark_dirty(&self, topic: &str, p: u32) {
        let mut d = self.dirty.borrow_mut();
        if !d.iter().any(|(t, q)| *q == p && &**t == topic) {
            let key = self.interned(topic).unwrap_or_else(|| Rc::from(topic));
            d.push((key, p));
        }
        self.dur.work.notify();
    }

    /// Waits until generation `gen` of `part`'s records (or commits) reached the durability
    /// `ack` asks for; 503 if writing or syncing them failed.
    pub async fn wait_durable(
        &self,
        part: &RefCell<OwnedPartition>,
        what: Written,
        gen: u64,
        ack: Ack,
    ) -> Result<(), Error> {
        if ack == Ack::All && self.dur.sync_wanted.get() < gen {
            self.dur.sync_wanted.set(gen);
            self.dur.work.notify();
        }
        loop {
            {
                let st = part.borrow();
                let failed = match what {
                    Written::Records => &st.write_failed,
                    Written::Commits => &st.commit_failed,
                };
                if failed.contains(gen) {
                    return Err(self.dur.fault_error("not stored"));
                }
            }
            match ack {
                Ack::Async => return Ok(()),
                Ack::Local if self.dur.written.get() >= gen => return Ok(()),
                Ack::All => {
                    if self.dur.sync_failed.borrow().contains(gen) {
                        return Err(self.dur.fault_error("not durable"));
                    }
                    if self.dur.synced.get() >= gen {
                        return Ok(());
                    }
                }
                Ack::Local => {}
            }
            let seen = self.dur.progress.epoch();
            self.dur.progress.wait(seen).await;
        }
    }

    /// Publishes to a partition this core owns: appends to the log and waits for durability,
    /// or with the Kafka backend sends to Kafka (or the handoff log).
    pub async fn publish_local(
        self: &Rc<Self>,
        topic: &str,
        p: u32,
        items: Vec<Item>,
        ack: Ack,
    ) -> Result<Published, Error> {
        if self.kafka.is_some() {
            return crate::kafka::handoff::publish(self, topic, p, items, ack).await;
        }
        let a = self.append_local(topic, p, &items)?;
        self.wait_durable(&a.part, Written::Records, a.gen, ack)
            .await?;
        Ok(Published {
            offsets: a.offsets.into_iter().map(|o| o as i64).collect(),
            buffered: false,
        })
    }

    /// Hands out messages of a group from this core's partitions of a topic.
    pub fn fetch_local(&self, f: &Fetch) -> Result<Vec<Delivered>, Error> {
        let topic = self.topic(&f.topic)?;
        let mine = &topic.owned;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if mine.is_empty() {
            return Ok(out);
        }
        let start = self.rr.get();
        self.rr.set(start.wrapping_add(1));
        for i in 0..mine.len() {
            if out.len() >= f.max || bytes >= f.max_bytes {
                break;
            }
            let p = mine[(start + i) % mine.len()];
            let part = self.part(&f.topic, p)?;
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
            if cursor < end {
                let read = st.log.read(cursor, f.max - out.len(), f.max_bytes - bytes);
                for d in st.log.take_damage() {
                    self.report_damage(&f.topic, p, d, "read");
                }
                let recs = read.map_err(|e| storage_err(&f.topic, p, &e))?;
                for r in recs {
                    cursor = r.offset + 1;
                    if !f.tags.is_empty() && !tags_match(&r.tags, &f.tags) {
                        continue;
                    }
                    bytes += r.value.len();
                    out.push(Delivered {
                        partition: p,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        tags: r.tags,
                        value: r.value,
                    });
                }
            }
            st.cursors.insert(f.group.clone(), cursor);
            if f.auto_ack && st.offsets.commit(&f.group, cursor) {
                st.offsets_gen = self.dur.next.get();
                self.mark_dirty(&f.topic, p);
            }
        }
        metrics::add(&self.metrics.sub_messages_total, out.len() as u64);
        metrics::add(&self.metrics.sub_bytes_total, bytes as u64);
        Ok(out)
    }

    /// Commits a group's offset (the next offset to consume) and waits until it is durable.
    /// With `seek` the offset may also move backwards (to any offset from the oldest stored on)
    /// and the group's read position moves with it.
    pub async fn commit_local(
        &self,
        topic: &str,
        p: u32,
        group: &str,
        offset: u64,
        seek: bool,
    ) -> Result<(), Error> {
        self.admit_write()?;
        let part = self.part(topic, p)?;
        let gen = {
            let mut st = part.borrow_mut();
            let (start, end) = (st.log.start(), st.log.end());
            if offset > end {
                return Err(Error::new(
                    ErrorKind::InvalidAck,
                    format!(
                        "offset {} is beyond the end of partition {p} ({end})",
                        offset.saturating_sub(1)
                    ),
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
            if st.offsets.commit(group, offset) {
                st.offsets_gen = self.dur.next.get();
                self.mark_dirty(topic, p);
            }
            // Already committed at this offset: answer once that commit is durable (a retried
            // acknowledgement must not be answered before the first one is on disk).
            st.offsets_gen
        };
        self.wait_durable(&part, Written::Commits, gen, Ack::All)
            .await
    }

    /// Offsets of this core's partitions of a topic and of the groups with the given prefix.
    pub fn info_local(&self, topic: &str, group_prefix: &str) -> Vec<PartitionInfo> {
        let parts = self.parts.borrow();
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
                        .filter(|(g, _)| g.starts_with(group_prefix))
                        .map(|(g, o)| (g.to_owned(), o))
                        .collect(),
                }
            })
            .collect();
        out.sort_by_key(|i| i.partition);
        out
    }

    /// The wake-up event of a topic on this core.
    pub fn topic_event(&self, topic: &str) -> Rc<Event> {
        if let Some(e) = self.topic_events.borrow().get(topic) {
            return e.clone();
        }
        let e = Rc::new(Event::default());
        self.topic_events
            .borrow_mut()
            .insert(Rc::from(topic), e.clone());
        e
    }

    /// Records that `core` has `delta` more (or fewer) polls parked on `topic`.
    pub fn add_interest(&self, topic: &str, core: usize, delta: i64) {
        let mut m = self.interest.borrow_mut();
        let v = m
            .entry(Rc::from(topic))
            .or_insert_with(|| vec![0; self.cores()]);
        v[core] += delta;
        if v.iter().all(|&c| c <= 0) {
            m.remove(topic);
        }
    }

    /// Holds up to `want` response bytes (at least one byte is granted, or 503 when the core's
    /// budget for unread answers is used up).
    pub fn hold_response(self: &Rc<Self>, want: usize) -> Result<Held, Error> {
        let cap = self.cfg.limits.max_response_bytes_per_core.0 as usize;
        let free = cap.saturating_sub(self.response_bytes.get());
        if free == 0 {
            metrics::inc(&self.metrics.http_responses_refused_total);
            return Err(Error::new(
                ErrorKind::ResponsesBuffered,
                "this core holds its limit of answers that clients have not read yet",
            ));
        }
        let bytes = want.min(free).max(1);
        self.response_bytes.set(self.response_bytes.get() + bytes);
        Ok(Held {
            shard: self.clone(),
            bytes,
        })
    }

    /// Counts `bytes` of an answer already built against the budget (it may go over it).
    pub fn account_response(self: &Rc<Self>, bytes: usize) -> Held {
        self.response_bytes.set(self.response_bytes.get() + bytes);
        Held {
            shard: self.clone(),
            bytes,
        }
    }

    /// Starts shutdown: no new connections or long polls; parked polls wake up and answer 204.
    pub fn begin_shutdown(&self) {
        self.shutdown.set(true);
        self.shutdown_event.notify();
        for e in self.topic_events.borrow().values() {
            e.notify();
        }
    }
}

/// Whether a message's `;`-separated tags contain one of the wanted tags.
pub fn tags_match(tags: &[u8], wanted: &[bytes::Bytes]) -> bool {
    tags.split(|&b| b == b';')
        .map(|t| t.trim_ascii())
        .any(|t| !t.is_empty() && wanted.iter().any(|w| &w[..] == t))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tag_matching() {
        let w = vec![
            bytes::Bytes::from_static(b"b"),
            bytes::Bytes::from_static(b"z"),
        ];
        assert!(super::tags_match(b"a;b", &w));
        assert!(super::tags_match(b" z ", &w));
        assert!(!super::tags_match(b"a;bb", &w));
        assert!(!super::tags_match(b"", &w));
    }
}
