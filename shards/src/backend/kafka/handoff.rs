//! Publishing on the Kafka backend, with hinted handoff. On the partition's owner core:
//!
//! * normally the messages go to this core's producer (`ack=all`: acks=all and idempotence;
//!   `ack=local`: acks=1), and the answer carries Kafka's partition and offset;
//! * when Kafka is unreachable, the breaker is open (a produce or replay failed, or librdkafka
//!   failed to connect to the brokers) or a produce is not acknowledged within
//!   `kafka.produce_timeout`, the messages are appended to the partition's handoff log instead
//!   (fsynced for `ack=all`, written for `ack=local`) and answered 201 with `X-Offset: -1` and
//!   `X-Kateway-Buffered: 1`;
//! * a produce the gateway stopped waiting for is not abandoned: librdkafka keeps it (it never
//!   times a message out) and may still deliver it, so its buffered copy is *shadowed* until
//!   the original's fate is known: delivered, the replayer skips the copy; failed, it sends the
//!   copy. No message is stored twice because of a timeout (only a gateway crash while an
//!   original is out can store one twice: at least once);
//! * while a partition has a backlog in the handoff log, or a publish of it is on its way into
//!   the log, new publishes of that partition go to the log too, behind it, so order holds;
//! * past the disk budget, a publish that would be buffered is refused with 503 + Retry-After.
//!
//! The [`super::Lane`] tickets make each partition's publishes complete in the order they
//! started, whichever way each one went.

use super::{kafka_err, Kafka, Shadow};
use crate::logset::{LogPart, PartKey, Written};
use crate::metrics;
use kateway_core::{Ack, Error, ErrorKind, Item, Published};
use kateway_kafka_bridge::{BridgeError, Delivery};
use std::rc::Rc;
use std::time::Instant;

/// The offsets-log entry holding a handoff partition's replay cursor (next offset to replay).
pub const REPLAY_CURSOR: &str = "replay";

/// The next offset of a handoff log to replay.
pub fn replay_cursor(st: &LogPart) -> u64 {
    st.offsets
        .get(REPLAY_CURSOR)
        .unwrap_or(0)
        .max(st.log.start())
}

/// Messages still waiting in a handoff log (appended, pending ones included, not replayed).
pub fn unreplayed(st: &LogPart) -> u64 {
    st.log.next_offset().saturating_sub(replay_cursor(st))
}

/// [`unreplayed`] of an owned partition; 0 when it has no handoff log.
pub fn backlog(k: &Kafka, topic: &str, p: u32) -> u64 {
    k.buffer
        .get(topic, p)
        .map_or(0, |part| unreplayed(&part.borrow()))
}

/// Publishes `items` to partition `p` (owned by this core). With `async=1` the answer does not
/// wait: delivery, or buffering on failure, continues in the background.
pub async fn publish(
    k: &Rc<Kafka>,
    topic: &str,
    p: u32,
    items: Vec<Item>,
    ack: Ack,
) -> Result<Published, Error> {
    let shard = &k.shard;
    let t = shard.topic(topic)?;
    let (name, owned) = (t.name.clone(), t.owned.contains(&p));
    if !owned {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("partition {topic}/{p} is not owned by core {}", shard.id),
        ));
    }
    let key = (name, p);
    let lane = k.lane(&key);
    let ticket = lane.ticket();
    let n = items.len();
    let bytes: usize = items.iter().map(|i| i.value.len()).sum();
    metrics::add(&shard.metrics.pub_messages_total, n as u64);
    metrics::add(&shard.metrics.pub_bytes_total, bytes as u64);
    t.stats.published(n as u64, bytes as u64);
    // Finish in a task of its own, so that a caller that goes away cannot leave the lane
    // waiting for a ticket that never finishes.
    let k = k.clone();
    let topic: Rc<str> = key.0.clone();
    let task = monoio::spawn(async move {
        let lane = lane.clone();
        let r = complete(&k, &lane, ticket, &topic, p, items, ack).await;
        if let Err(e) = &r {
            if ack == Ack::Async {
                tracing::error!(core = k.shard.id, topic = %topic, partition = p, "async publish lost: {e}");
            }
        }
        r
    });
    if ack == Ack::Async {
        return Ok(Published {
            offsets: vec![-1; n],
            buffered: false,
        });
    }
    task.await
}

async fn complete(
    k: &Rc<Kafka>,
    lane: &super::Lane,
    ticket: u64,
    topic: &str,
    p: u32,
    items: Vec<Item>,
    ack: Ack,
) -> Result<Published, Error> {
    let shard = &k.shard;
    let n = items.len();
    let producer = k.producer();
    if producer.take_brokers_down() {
        k.open_breaker("librdkafka cannot connect to the brokers");
    }
    let direct = !k.breaker_open.get() && !lane.buffering() && backlog(k, topic, p) == 0;
    if !direct {
        lane.begin_buffering();
        lane.turn(ticket).await;
        let r = buffer(k, topic, p, &items, ack).await;
        lane.end_buffering();
        lane.finish(ticket);
        r?;
        return Ok(Published {
            offsets: vec![-1; n],
            buffered: true,
        });
    }
    let kack = if ack == Ack::All {
        Ack::All
    } else {
        Ack::Local
    };
    let sends: Vec<_> = items
        .iter()
        .map(|it| producer.send(topic, Some(p as i32), &it.key, &it.tags, &it.value, kack))
        .collect();
    let deadline = Instant::now() + shard.cfg().kafka.produce_timeout.0;
    let mut offsets = vec![-1; n];
    // Sends that failed for good while Kafka was unreachable, and sends still out at the
    // deadline: both are buffered; the second kind is shadowed (see `Shadow`).
    let mut failed: Vec<usize> = Vec::new();
    let mut late: Vec<(usize, Delivery)> = Vec::new();
    let mut refused: Option<BridgeError> = None;
    let mut delivered = false;
    for (i, s) in sends.into_iter().enumerate() {
        let r = match s {
            Ok(mut d) => match monoio::time::timeout_at(deadline.into(), &mut d).await {
                Ok(r) => r,
                Err(_elapsed) => {
                    late.push((i, d));
                    continue;
                }
            },
            Err(e) => Err(e),
        };
        match r {
            Ok((_, o)) => {
                offsets[i] = o;
                delivered = true;
            }
            Err(e) if e.is_unavailable() => failed.push(i),
            Err(e) => {
                metrics::inc(&shard.metrics.kafka_produce_errors_total);
                refused.get_or_insert(e);
            }
        }
    }
    if delivered {
        k.last_progress.set(Instant::now());
    }
    let buffered = !failed.is_empty() || !late.is_empty();
    if buffered {
        k.unstick();
        let why = if late.is_empty() {
            "a produce failed"
        } else {
            "a produce timed out"
        };
        k.open_breaker(why);
        lane.begin_buffering();
    }
    lane.turn(ticket).await;
    let r = if buffered {
        let mut again: Vec<usize> = failed
            .iter()
            .copied()
            .chain(late.iter().map(|l| l.0))
            .collect();
        again.sort_unstable();
        let copies: Vec<Item> = again.iter().map(|&i| items[i].clone()).collect();
        let shadows: Vec<(usize, Delivery)> = late
            .into_iter()
            .map(|(i, d)| (again.binary_search(&i).expect("buffered"), d))
            .collect();
        let r = buffer_shadowed(k, topic, p, &copies, ack, shadows).await;
        lane.end_buffering();
        r.map(|_| ())
    } else {
        Ok(())
    };
    lane.finish(ticket);
    r?;
    if let Some(e) = refused {
        return Err(kafka_err(e));
    }
    Ok(Published { offsets, buffered })
}

/// Follows the original send of a buffered message: if Kafka takes it after all, the replayer
/// skips the buffered copy; if it fails, the replayer sends the copy.
fn shadow(k: &Rc<Kafka>, key: PartKey, at: u64, d: Delivery) {
    k.shadows
        .borrow_mut()
        .entry(key.clone())
        .or_default()
        .insert(at, Shadow::Outstanding);
    let k = k.clone();
    monoio::spawn(async move {
        let delivered = d.await.is_ok();
        let mut all = k.shadows.borrow_mut();
        if let Some(m) = all.get_mut(&key) {
            if delivered {
                m.insert(at, Shadow::Delivered);
            } else {
                m.remove(&at);
            }
        }
        drop(all);
        k.replay_wake.notify();
    });
}

/// Bytes this core's handoff logs hold on disk and in memory.
pub fn handoff_bytes(k: &Kafka) -> u64 {
    k.buffer
        .parts
        .borrow()
        .values()
        .map(|p| {
            let st = p.borrow();
            st.log.size_bytes() + st.log.pending_bytes() as u64
        })
        .sum()
}

/// Appends to the handoff log at the durability `ack` asks for; returns the handoff offsets.
async fn buffer(
    k: &Rc<Kafka>,
    topic: &str,
    p: u32,
    items: &[Item],
    ack: Ack,
) -> Result<Vec<u64>, Error> {
    buffer_shadowed(k, topic, p, items, ack, Vec::new()).await
}

/// [`buffer`], shadowing the copies `(index in items, original send)` as soon as they are
/// appended: before the replayer can read them.
async fn buffer_shadowed(
    k: &Rc<Kafka>,
    topic: &str,
    p: u32,
    items: &[Item],
    ack: Ack,
    originals: Vec<(usize, Delivery)>,
) -> Result<Vec<u64>, Error> {
    let shard = &k.shard;
    if k.budget > 0 && handoff_bytes(k) >= k.budget {
        metrics::add(&shard.metrics.handoff_rejected_total, items.len() as u64);
        return Err(Error::new(
            ErrorKind::HandoffFull,
            "kafka is unreachable and the local handoff buffer is full",
        ));
    }
    let name = shard
        .interned(topic)
        .ok_or_else(|| Error::new(ErrorKind::UnknownTopic, format!("unknown topic {topic}")))?;
    k.buffer.open(&name, p)?;
    let a = k.buffer.append(topic, p, items)?;
    for (i, d) in originals {
        shadow(k, (name.clone(), p), a.offsets[i], d);
    }
    metrics::add(
        &shard.metrics.handoff_buffered_messages_total,
        items.len() as u64,
    );
    k.replay_wake.notify();
    let level = if ack == Ack::All {
        Ack::All
    } else {
        Ack::Local
    };
    k.buffer
        .wait_durable(&a.part, Written::Records, a.gen, level)
        .await?;
    Ok(a.offsets)
}
