//! The replayer: one task per core that drains the core's handoff logs to Kafka. For each
//! partition with a backlog it reads a batch from the durable replay cursor, sends it with
//! acks=all and the messages' original timestamps, and only after Kafka acknowledged every
//! message moves the cursor (an offsets-log entry the flusher fsyncs) and deletes segments left
//! wholly behind it. A crash between Kafka's acknowledgement and the cursor's fsync replays
//! those messages again: delivery is at least once, never lost.
//!
//! Buffered copies of messages whose original send is still out are not replayed yet (the
//! original may still arrive: replaying the copy could store the message twice); copies whose
//! original Kafka took are skipped ([`super::Shadow`]).
//!
//! A failed round keeps (or opens) the breaker and backs off; a successful one closes it. While
//! the breaker stays open the replayer says so every 30 s, and a producer that librdkafka put in
//! a fatal state is replaced.

use super::handoff::{replay_cursor, unreplayed, REPLAY_CURSOR};
use super::Kafka;
use super::Shadow;
use crate::logset::PartKey;
use crate::metrics;
use kateway_core::Ack;
use kateway_kafka_bridge::BridgeError;
use std::rc::Rc;
use std::time::Duration;

/// Largest payload one replay round reads from a partition.
const ROUND_BYTES: usize = 4 << 20;

enum Round {
    /// Nothing written yet to replay.
    Idle,
    /// The next record waits for its original send to finish.
    Waiting,
    Sent(usize),
    Failed(BridgeError),
}

/// How often the replayer says that Kafka is still unreachable.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(30);

/// Runs until the core stops.
pub async fn run(k: Rc<Kafka>) {
    let shard = k.shard.clone();
    let backoff = shard
        .cfg()
        .kafka
        .replay_backoff
        .0
        .max(Duration::from_millis(10));
    let mut last_said = std::time::Instant::now();
    loop {
        if shard.stopping() {
            return;
        }
        let seen = k.replay_wake.epoch();
        close_idle(&k);
        let work: Vec<PartKey> = k
            .buffer
            .parts
            .borrow()
            .iter()
            .filter(|(_, part)| unreplayed(&part.borrow()) > 0)
            .map(|(key, _)| key.clone())
            .collect();
        if work.is_empty() {
            if k.breaker_open.get() {
                // Nothing buffered to probe Kafka with: let the next publish try it directly.
                shard.sleep(backoff).await;
                k.close_breaker();
                continue;
            }
            let _ = monoio::time::timeout(Duration::from_secs(1), k.replay_wake.wait(seen)).await;
            continue;
        }
        let mut sent = 0;
        let mut waiting = false;
        let mut failure = None;
        for (topic, p) in &work {
            match round(&k, topic, *p).await {
                Round::Idle => {}
                Round::Waiting => waiting = true,
                Round::Sent(n) => sent += n,
                Round::Failed(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            k.unstick();
            k.open_breaker(&e.to_string());
            if last_said.elapsed() >= STILL_DOWN_EVERY {
                last_said = std::time::Instant::now();
                let backlog: u64 = k
                    .buffer
                    .parts
                    .borrow()
                    .values()
                    .map(|p| unreplayed(&p.borrow()))
                    .sum();
                tracing::warn!(
                    core = shard.id,
                    backlog,
                    "kafka still unreachable, replay failing: {e}"
                );
            }
            shard.sleep(backoff).await;
        } else if sent > 0 {
            k.close_breaker();
            k.last_progress.set(std::time::Instant::now());
            last_said = std::time::Instant::now();
        } else if waiting {
            k.unstick();
            // Originals still out: they resolve (and wake us) once Kafka answers.
            let _ = monoio::time::timeout(Duration::from_secs(1), k.replay_wake.wait(seen)).await;
        } else {
            // Buffered but not yet written by the flusher: look again shortly.
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The producers' watchdog, one per core: while messages wait (a backlog, or originals still
/// out) and nothing reached Kafka for a while, [`super::Kafka::unstick`] them. Runs beside
/// the replayer because a replay round may itself be waiting on a stuck producer.
pub async fn watchdog(k: Rc<Kafka>) {
    let shard = k.shard.clone();
    while !shard.sleep(Duration::from_secs(1)).await {
        let waiting = k.shadows.borrow().values().any(|m| !m.is_empty())
            || k.buffer
                .parts
                .borrow()
                .values()
                .any(|p| unreplayed(&p.borrow()) > 0);
        if waiting {
            k.unstick();
        } else {
            k.last_progress.set(std::time::Instant::now());
        }
    }
}

/// Closes and deletes handoff logs that have had nothing to replay for
/// `kafka.handoff_idle_close`, so that the files of an outage do not stay open for good.
fn close_idle(k: &Kafka) {
    let after = k.shard.cfg().kafka.handoff_idle_close.0;
    let now = std::time::Instant::now();
    let parts: Vec<(PartKey, bool)> = k
        .buffer
        .parts
        .borrow()
        .iter()
        .map(|(key, part)| {
            let busy = unreplayed(&part.borrow()) > 0
                || k.lanes.borrow().get(key).is_some_and(|l| l.buffering());
            (key.clone(), busy)
        })
        .collect();
    let mut drained = k.drained.borrow_mut();
    for (key, busy) in parts {
        if busy {
            drained.remove(&key);
            continue;
        }
        let since = *drained.entry(key.clone()).or_insert(now);
        if now.duration_since(since) < after {
            continue;
        }
        drained.remove(&key);
        // Everything in it reached Kafka: nothing here needs to survive, not even the cursor
        // (a new log starts with an empty backlog).
        k.buffer.remove(&key);
    }
    drained.retain(|key, _| k.buffer.parts.borrow().contains_key(key));
}

/// Replays one batch of one partition.
async fn round(k: &Rc<Kafka>, topic: &str, p: u32) -> Round {
    let shard = &k.shard;
    let Ok(part) = k.buffer.part(topic, p) else {
        return Round::Idle;
    };
    let batch = shard.cfg().kafka.replay_batch as usize;
    let recs = {
        let st = part.borrow();
        let read = st.log.read(replay_cursor(&st), batch, ROUND_BYTES);
        for d in st.log.take_damage() {
            k.buffer.report_damage(topic, p, d, "replay");
        }
        match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    core = shard.id,
                    topic,
                    partition = p,
                    "handoff log read failed: {e}"
                );
                return Round::Failed(BridgeError::Unavailable(format!("handoff read: {e}")));
            }
        }
    };
    if recs.is_empty() {
        return Round::Idle;
    }
    // Up to the first record whose original send is still out; copies of delivered originals
    // are not sent again.
    let key = (
        shard
            .interned(topic)
            .unwrap_or_else(|| std::rc::Rc::from(topic)),
        p,
    );
    let (take, skip): (usize, Vec<u64>) = {
        let shadows = k.shadows.borrow();
        let sh = shadows.get(&key);
        let take = recs
            .iter()
            .position(|r| sh.and_then(|m| m.get(&r.offset)) == Some(&Shadow::Outstanding))
            .unwrap_or(recs.len());
        let skip = recs[..take]
            .iter()
            .filter(|r| sh.and_then(|m| m.get(&r.offset)) == Some(&Shadow::Delivered))
            .map(|r| r.offset)
            .collect();
        (take, skip)
    };
    if take == 0 {
        return Round::Waiting;
    }
    let recs = &recs[..take];
    let last = recs[take - 1].offset;
    let producer = k.producer();
    let sends: Vec<_> = recs
        .iter()
        .filter(|r| !skip.contains(&r.offset))
        .map(|r| {
            producer.send_at(
                topic,
                Some(p as i32),
                &r.key,
                &r.tags,
                &r.value,
                Some(r.timestamp),
                Ack::All,
            )
        })
        .collect();
    let mut first_err = None;
    for s in sends {
        let r = match s {
            Ok(d) => d.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.is_unavailable() || matches!(e, BridgeError::UnknownTopic(_)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                // Kafka will never take this message (too large for the broker, ...): keeping
                // it would block the partition forever.
                metrics::inc(&shard.metrics.handoff_dropped_total);
                tracing::error!(
                    core = shard.id,
                    topic,
                    partition = p,
                    "kafka refused a buffered message, dropping it: {e}"
                );
            }
        }
    }
    if let Some(e) = first_err {
        return Round::Failed(e);
    }
    let n = recs.len() - skip.len();
    metrics::add(&shard.metrics.handoff_deduplicated_total, skip.len() as u64);
    if let Some(m) = k.shadows.borrow_mut().get_mut(&key) {
        m.retain(|&o, _| o > last);
    }
    {
        let mut st = part.borrow_mut();
        k.buffer.commit(topic, p, &mut st, REPLAY_CURSOR, last + 1);
        if st.log.next_offset() == last + 1 {
            // Drained: start a fresh segment so the replayed one can go.
            if let Err(e) = st.log.roll_if_written() {
                tracing::warn!(
                    core = shard.id,
                    topic,
                    partition = p,
                    "cannot roll handoff log: {e}"
                );
            }
        }
        if let Err(e) = st.log.drop_before(last + 1) {
            tracing::warn!(
                core = shard.id,
                topic,
                partition = p,
                "cannot delete replayed segments: {e}"
            );
        }
    }
    metrics::add(&shard.metrics.handoff_replayed_messages_total, n as u64);
    Round::Sent(n)
}
