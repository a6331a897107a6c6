//! Consumer groups on the Kafka backend: one membership per process, group and topic, each on
//! a thread of its own (librdkafka's consumer API blocks), shared by every subscribe and ack of
//! that group on every core. HTTP clients that come and go therefore cause no rebalance.
//!
//! The membership thread keeps a small read-ahead buffer and serves waiting fetches from it in
//! arrival order. With auto-ack, the offsets of what it hands out are committed to Kafka before
//! the next poll; with explicit acks only acknowledgements commit. A fetch whose requester went
//! away (its reply channel is closed) puts its records back. Records of partitions the group
//! rebalanced away are dropped from the buffer: the new owner reads them from the committed
//! offset. A membership unused for `kafka.group_idle_timeout` leaves the group.

use super::Kafka;
use super::{kafka_err, KafkaShared};
use bytes::Bytes;
use kateway_core::message::tags_match;
use kateway_core::{Delivered, Reset};
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::GroupConsumer;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request to a membership.
pub enum GroupReq {
    /// Up to `max` records (and about `max_bytes`), waiting until `deadline` for the first.
    Fetch(FetchReq),
    /// Commit `next` (the next offset to consume) on a partition; with `seek` also move the
    /// membership's position there (backwards too) if it holds the partition.
    Commit {
        partition: u32,
        next: u64,
        seek: bool,
        reply: flume::Sender<Result<(), Error>>,
    },
    /// Leased delivery: the committed offset of a partition and the checkpoint committed with
    /// it; if this membership holds the partition, it drops what it read ahead there and reads
    /// again from the committed offset.
    QueueRestore {
        partition: u32,
        reply: flume::Sender<Result<(Option<u64>, String), Error>>,
    },
    /// Leased delivery: commits `next` with a checkpoint, if this membership still holds the
    /// partition.
    QueueSave {
        partition: u32,
        next: u64,
        metadata: String,
        reply: flume::Sender<Result<(), Error>>,
    },
    /// The partitions this membership holds now.
    Assignment { reply: flume::Sender<Vec<u32>> },
    /// Leave the group now (at shutdown), so its partitions move to the other members at once
    /// instead of after the session timeout; answered once left.
    Leave { done: flume::Sender<()> },
}

/// A fetch waiting in a membership.
pub struct FetchReq {
    pub max: usize,
    pub max_bytes: usize,
    pub deadline: Instant,
    pub tags: Vec<Bytes>,
    pub auto_ack: bool,
    pub reply: flume::Sender<Result<Vec<Delivered>, Error>>,
}

fn key(group: &str, topic: &str) -> String {
    format!("{group}\n{topic}")
}

/// How long past its deadline a fetch waits for its membership: a membership stuck in a call to
/// an unresponsive broker gets its subscriber a 503 instead of holding it.
const GRACE: Duration = Duration::from_secs(2);

fn closed() -> Error {
    Error::new(
        ErrorKind::KafkaUnavailable,
        "consumer group membership closed",
    )
}

fn moved(partition: u32) -> Error {
    Error::new(
        ErrorKind::StaleLease,
        format!("partition {partition} moved to another member of the group"),
    )
}

/// Asks a group's membership something and waits for the answer.
async fn ask<T>(
    k: &Kafka,
    group: &str,
    topic: &str,
    reset: Reset,
    make: impl FnOnce(flume::Sender<T>) -> GroupReq,
) -> Result<T, Error> {
    let (reply, rx) = flume::bounded(1);
    send(k, group, topic, reset, make(reply))?;
    match monoio::time::timeout(Duration::from_secs(15), rx.recv_async()).await {
        Ok(r) => r.map_err(|_| closed()),
        Err(_) => Err(Error::new(
            ErrorKind::KafkaUnavailable,
            "kafka did not answer for this consumer group in time",
        )),
    }
}

/// Leased delivery: the committed offset of partition `p` with its checkpoint, the membership
/// reading again from there.
pub async fn queue_restore(
    k: &Kafka,
    topic: &str,
    group: &str,
    p: u32,
    reset: Reset,
) -> Result<(Option<u64>, String), Error> {
    ask(k, group, topic, reset, |reply| GroupReq::QueueRestore {
        partition: p,
        reply,
    })
    .await?
}

/// Leased delivery: commits `next` with `metadata` on partition `p`.
pub async fn queue_save(
    k: &Kafka,
    topic: &str,
    group: &str,
    p: u32,
    next: u64,
    metadata: String,
) -> Result<(), Error> {
    ask(k, group, topic, Reset::Oldest, |reply| {
        GroupReq::QueueSave {
            partition: p,
            next,
            metadata,
            reply,
        }
    })
    .await?
}

/// The partitions of `topic` this gateway's membership of `group` holds.
pub async fn assignment(
    k: &Kafka,
    topic: &str,
    group: &str,
    reset: Reset,
) -> Result<Vec<u32>, Error> {
    ask(k, group, topic, reset, |reply| GroupReq::Assignment {
        reply,
    })
    .await
}

/// Asks the group's membership for records, which answers when it has some or at the deadline;
/// shutdown answers at once (the membership then keeps the records). The answer comes within
/// the deadline plus `GRACE` whatever Kafka does.
pub async fn fetch(
    k: &Kafka,
    topic: &crate::catalog::LocalTopic,
    f: crate::request::Fetch,
    deadline: Instant,
) -> Result<Vec<Delivered>, Error> {
    let shard = &k.shard;
    if shard.shutdown.get() {
        return Ok(Vec::new());
    }
    let (reply, rx) = flume::bounded(1);
    let req = GroupReq::Fetch(FetchReq {
        max: f.max,
        max_bytes: f.max_bytes,
        deadline,
        tags: f.tags,
        auto_ack: f.auto_ack,
        reply,
    });
    send(k, &f.group, &topic.name, f.reset, req)?;
    let seen = shard.shutdown_event.epoch();
    let limit = deadline.saturating_duration_since(Instant::now()) + GRACE;
    let got = monoio::select! {
        r = monoio::time::timeout(limit, rx.recv_async()) => match r {
            Ok(r) => r.map_err(|_| closed()),
            Err(_) => Err(Error::new(
                ErrorKind::KafkaUnavailable,
                "kafka did not answer for this consumer group in time",
            )),
        },
        _ = shard.shutdown_event.wait(seen) => Ok(Ok(Vec::new())),
    };
    let msgs = got??;
    crate::metrics::add(&shard.metrics.sub_messages_total, msgs.len() as u64);
    let bytes: usize = msgs.iter().map(|m| m.value.len()).sum();
    crate::metrics::add(&shard.metrics.sub_bytes_total, bytes as u64);
    topic.stats.delivered(msgs.len() as u64, bytes as u64);
    Ok(msgs)
}

/// Commits `next` for `group` on partition `p` through the group's membership (with `seek`,
/// also moving the membership's position there).
pub async fn commit(
    k: &Kafka,
    topic: &crate::catalog::LocalTopic,
    p: u32,
    group: &str,
    next: u64,
    seek: bool,
) -> Result<(), Error> {
    let (reply, rx) = flume::bounded(1);
    let req = GroupReq::Commit {
        partition: p,
        next,
        seek,
        reply,
    };
    send(k, group, &topic.name, Reset::Oldest, req)?;
    rx.recv_async().await.map_err(|_| closed())?
}

/// Makes this process's memberships of `topic` leave their groups (the topic was deleted: a
/// topic created again under its name is joined afresh), without waiting.
pub fn leave_topic(k: &Kafka, topic: &str) {
    let suffix = format!("\n{topic}");
    k.groups.borrow_mut().retain(|id, _| !id.ends_with(&suffix));
    let mut reg = k.shared.groups.lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<String> = reg
        .keys()
        .filter(|id| id.ends_with(&suffix))
        .cloned()
        .collect();
    for id in gone {
        if let Some(tx) = reg.remove(&id) {
            let (done, _) = flume::bounded(1);
            let _ = tx.try_send(GroupReq::Leave { done });
        }
    }
}

/// Makes every membership of this process leave its group, waiting at most `limit`.
pub fn leave_all(shared: &KafkaShared, limit: Duration) {
    let members: Vec<flume::Sender<GroupReq>> = shared
        .groups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let deadline = Instant::now() + limit;
    let waits: Vec<flume::Receiver<()>> = members
        .into_iter()
        .filter_map(|tx| {
            let (done, rx) = flume::bounded(1);
            tx.send(GroupReq::Leave { done }).ok().map(|()| rx)
        })
        .collect();
    for rx in waits {
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Sends `req` to the membership of `group` on `topic`, joining the group if this process is
/// not a member yet.
pub fn send(
    k: &Kafka,
    group: &str,
    topic: &str,
    reset: Reset,
    mut req: GroupReq,
) -> Result<(), Error> {
    let shard = &k.shard;
    let id = key(group, topic);
    for _ in 0..2 {
        let tx = k.groups.borrow().get(&id).cloned();
        let tx = match tx {
            Some(tx) => tx,
            None => {
                let tx = join(&k.shared, &id, group, topic, reset, &shard.cfg())?;
                let mut cache = k.groups.borrow_mut();
                if cache.len() >= shard.cfg().kafka.max_groups as usize {
                    // Forget memberships that have left since.
                    cache.retain(|_, tx| !tx.is_disconnected());
                }
                cache.insert(id.clone(), tx.clone());
                tx
            }
        };
        match tx.try_send(req) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Full(_)) => {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    "too many requests waiting for this group",
                ))
            }
            Err(flume::TrySendError::Disconnected(r)) => {
                // The membership left after being idle: join again.
                k.groups.borrow_mut().remove(&id);
                req = r;
            }
        }
    }
    Err(Error::new(
        ErrorKind::Internal,
        "group membership keeps closing",
    ))
}

/// The registry's membership for `id`, started if there is none.
fn join(
    shared: &Arc<KafkaShared>,
    id: &str,
    group: &str,
    topic: &str,
    reset: Reset,
    cfg: &kateway_core::config::Config,
) -> Result<flume::Sender<GroupReq>, Error> {
    let prefetch = cfg.subscribe.max_batch;
    let idle = cfg.kafka.group_idle_timeout.0;
    let mut reg = shared.groups.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = reg.get(id).filter(|tx| !tx.is_disconnected()) {
        return Ok(tx.clone());
    }
    if reg.len() >= cfg.kafka.max_groups as usize {
        return Err(Error::new(
            ErrorKind::Overloaded,
            format!(
                "this gateway already serves {} consumer groups (kafka.max_groups)",
                reg.len()
            ),
        ));
    }
    let consumer = GroupConsumer::join(&shared.bridge, group, topic, reset).map_err(kafka_err)?;
    let (tx, rx) = flume::bounded(1024);
    reg.insert(id.to_owned(), tx.clone());
    let shared = shared.clone();
    let id = id.to_owned();
    std::thread::Builder::new()
        .name("kateway-group".into())
        .spawn(move || {
            Member {
                consumer,
                rx,
                buf: VecDeque::new(),
                waiting: VecDeque::new(),
                prefetch: prefetch as usize,
                assigned: Vec::new(),
                paused: false,
                seen_end: HashMap::new(),
                last_record: Instant::now(),
                last_unstick: Instant::now(),
            }
            .run(&shared, &id, idle)
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot start group thread: {e}"),
            )
        })?;
    Ok(tx)
}

struct Member {
    consumer: GroupConsumer,
    rx: flume::Receiver<GroupReq>,
    buf: VecDeque<Delivered>,
    waiting: VecDeque<FetchReq>,
    prefetch: usize,
    assigned: Vec<u32>,
    paused: bool,
    /// Per partition, an offset known to be within it (one past the newest record read or
    /// found there).
    seen_end: HashMap<u32, u64>,
    /// When a record last arrived, and when the consumer was last given its bootstrap brokers
    /// again (a membership that gets nothing while subscribers wait may be one whose client
    /// forgot every broker after a broker hung).
    last_record: Instant,
    last_unstick: Instant,
}

/// How long a membership may get nothing while subscribers wait before it bootstraps again.
const STALL: Duration = Duration::from_secs(5);

impl Member {
    fn run(mut self, shared: &KafkaShared, id: &str, idle: Duration) {
        tracing::debug!(group = %id.replace('\n', " "), "joined consumer group");
        let mut last_used = Instant::now();
        loop {
            let first = if self.waiting.is_empty() {
                self.rx.recv_timeout(Duration::from_millis(20)).ok()
            } else {
                self.rx.try_recv().ok()
            };
            let mut next = first;
            while let Some(req) = next {
                last_used = Instant::now();
                match req {
                    GroupReq::Fetch(f) => self.waiting.push_back(f),
                    GroupReq::Leave { done } => {
                        shared
                            .groups
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(id);
                        // Dropping the consumer closes it: librdkafka leaves the group.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    GroupReq::QueueRestore { partition, reply } => {
                        let _ = reply.send(self.queue_restore(partition));
                    }
                    GroupReq::QueueSave {
                        partition,
                        next,
                        metadata,
                        reply,
                    } => {
                        let r = if self.assigned.contains(&partition) {
                            self.consumer
                                .commit_with_metadata(partition, next, &metadata)
                                .map_err(kafka_err)
                        } else {
                            Err(moved(partition))
                        };
                        let _ = reply.send(r);
                    }
                    GroupReq::Assignment { reply } => {
                        // Served after a poll, so a rebalance since is seen.
                        self.fill();
                        let _ = reply.send(self.assigned.clone());
                    }
                    GroupReq::Commit {
                        partition,
                        next,
                        seek,
                        reply,
                    } => {
                        let r = if seek {
                            self.seek(partition, next)
                        } else {
                            self.commit(partition, next)
                        };
                        let _ = reply.send(r);
                    }
                }
                next = self.rx.try_recv().ok();
            }
            if !self.waiting.is_empty() {
                last_used = Instant::now();
            }
            self.fill();
            self.serve();
            if self.waiting.is_empty() && last_used.elapsed() > idle {
                let mut reg = shared.groups.lock().unwrap_or_else(|e| e.into_inner());
                if self.rx.is_empty() {
                    reg.remove(id);
                    drop(reg);
                    tracing::debug!(group = %id.replace('\n', " "), "left idle consumer group");
                    return;
                }
            }
        }
    }

    /// Polls Kafka: reads ahead while the buffer is short or someone waits, and always serves
    /// rebalances.
    fn fill(&mut self) {
        let want = !self.waiting.is_empty() || self.buf.len() < self.prefetch;
        if want == self.paused && self.consumer.set_paused(!want).is_ok() {
            self.paused = !want;
        }
        let wait = if self.waiting.is_empty() || !self.buf.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        let mut got = self.consumer.poll_one(wait);
        let mut n = 0;
        while let Some(r) = got {
            match r {
                Ok(rec) => {
                    self.last_record = Instant::now();
                    let end = self.seen_end.entry(rec.partition).or_insert(0);
                    *end = (*end).max(rec.offset + 1);
                    self.buf.push_back(rec);
                }
                Err(e) => {
                    tracing::debug!("consumer poll: {e}");
                    break;
                }
            }
            n += 1;
            if n >= self.prefetch.max(1) {
                break;
            }
            got = self.consumer.poll_one(Duration::ZERO);
        }
        if self.waiting.is_empty() {
            self.last_record = Instant::now();
        } else if self.last_record.elapsed() > STALL && self.last_unstick.elapsed() > STALL {
            self.last_unstick = Instant::now();
            if self.consumer.rebootstrap() > 0 {
                tracing::debug!("consumer got nothing for {STALL:?} while subscribers wait: gave it its bootstrap brokers again");
            }
        }
        if let Ok(now) = self.consumer.assignment() {
            if now != self.assigned {
                // Rebalanced: partitions given away are read by their new owner from the
                // committed offset.
                self.buf.retain(|r| now.contains(&r.partition));
                self.assigned = now;
                if self.paused {
                    let _ = self.consumer.set_paused(true);
                }
            }
        }
    }

    /// Answers waiting fetches, oldest first.
    fn serve(&mut self) {
        let now = Instant::now();
        while let Some(f) = self.waiting.front() {
            if f.reply.is_disconnected() {
                self.waiting.pop_front();
                continue;
            }
            if self.buf.is_empty() && now < f.deadline {
                return;
            }
            let f = self.waiting.pop_front().expect("front");
            let mut out = Vec::new();
            let mut taken = Vec::new();
            let mut bytes = 0;
            while out.len() < f.max && bytes < f.max_bytes {
                let Some(r) = self.buf.pop_front() else { break };
                let keep = f.tags.is_empty() || tags_match(&r.tags, &f.tags);
                if keep {
                    bytes += r.value.len();
                    out.push(r.clone());
                }
                taken.push(r);
            }
            if out.is_empty() && !taken.is_empty() && now < f.deadline {
                // Only filtered-out messages: consumed for this group, keep waiting.
                self.commit_taken(&taken, f.auto_ack);
                self.waiting.push_front(f);
                continue;
            }
            if f.reply.send(Ok(out)).is_err() {
                // The requester went away: the records go back, uncommitted.
                for r in taken.into_iter().rev() {
                    self.buf.push_front(r);
                }
                continue;
            }
            self.commit_taken(&taken, f.auto_ack);
        }
    }

    /// Commits an acknowledgement, refusing one beyond the partition's end as the embedded
    /// store does. Offsets up to what this membership has read need no question to Kafka.
    fn commit(&mut self, partition: u32, next: u64) -> Result<(), Error> {
        let seen = self.seen_end.get(&partition).copied().unwrap_or(0);
        if next > seen {
            let end = self
                .consumer
                .end_offset(partition, Duration::from_secs(5))
                .map_err(kafka_err)?;
            if next > end {
                return Err(Error::new(
                    ErrorKind::InvalidAck,
                    format!(
                        "offset {} is beyond the end of partition {partition} ({end})",
                        next - 1
                    ),
                ));
            }
            self.seen_end.insert(partition, end);
        }
        self.consumer.commit(partition, next).map_err(kafka_err)
    }

    /// Moves the group to `next` on `partition`: commits it, and if this membership holds the
    /// partition, drops what it read ahead there and fetches from `next` on.
    fn seek(&mut self, partition: u32, next: u64) -> Result<(), Error> {
        let (lo, hi) = self
            .consumer
            .watermarks(partition, Duration::from_secs(5))
            .map_err(kafka_err)?;
        if next > hi {
            return Err(Error::new(
                ErrorKind::InvalidAck,
                format!("offset {next} is beyond the end of partition {partition} ({hi})"),
            ));
        }
        if next < lo {
            return Err(Error::new(
                ErrorKind::InvalidAck,
                format!("offset {next} is before the oldest stored offset of partition {partition} ({lo})"),
            ));
        }
        self.consumer.commit(partition, next).map_err(kafka_err)?;
        if self.assigned.contains(&partition) {
            self.buf.retain(|r| r.partition != partition);
            self.consumer
                .seek(partition, next, Duration::from_secs(5))
                .map_err(kafka_err)?;
        }
        Ok(())
    }

    fn queue_restore(&mut self, partition: u32) -> Result<(Option<u64>, String), Error> {
        let (next, meta) = self
            .consumer
            .committed(partition, Duration::from_secs(10))
            .map_err(kafka_err)?;
        if let Some(next) = next {
            if self.assigned.contains(&partition) {
                self.buf.retain(|r| r.partition != partition);
                self.consumer
                    .seek(partition, next, Duration::from_secs(5))
                    .map_err(kafka_err)?;
            }
        }
        Ok((next, meta))
    }

    fn commit_taken(&self, taken: &[Delivered], auto_ack: bool) {
        if !auto_ack {
            return;
        }
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for r in taken {
            let e = next.entry(r.partition).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        let offsets: Vec<(u32, u64)> = next.into_iter().collect();
        if let Err(e) = self.consumer.commit_async(&offsets) {
            tracing::warn!("auto-ack commit failed: {e}");
        }
    }
}
