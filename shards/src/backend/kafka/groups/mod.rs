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
use kateway_core::{Delivered, Reset};
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::GroupConsumer;
use member::Member;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod member;

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
        .spawn(move || Member::new(consumer, rx, prefetch as usize).run(&shared, &id, idle))
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot start group thread: {e}"),
            )
        })?;
    Ok(tx)
}
