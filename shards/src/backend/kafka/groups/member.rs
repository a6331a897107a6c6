//! One membership's thread: reads ahead from its librdkafka consumer, serves waiting fetches in
//! arrival order, commits acknowledgements and seeks, and leaves the group when unused.

use super::{moved, FetchReq, GroupReq};
use crate::backend::kafka::{kafka_err, KafkaShared};
use kateway_core::message::tags_match;
use kateway_core::Delivered;
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::GroupConsumer;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub(super) struct Member {
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
    pub(super) fn new(
        consumer: GroupConsumer,
        rx: flume::Receiver<GroupReq>,
        prefetch: usize,
    ) -> Self {
        Member {
            consumer,
            rx,
            buf: VecDeque::new(),
            waiting: VecDeque::new(),
            prefetch,
            assigned: Vec::new(),
            paused: false,
            seen_end: HashMap::new(),
            last_record: Instant::now(),
            last_unstick: Instant::now(),
        }
    }

    pub(super) fn run(mut self, shared: &KafkaShared, id: &str, idle: Duration) {
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
