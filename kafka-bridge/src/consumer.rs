//! Consumer-group membership: one [`GroupConsumer`] per gateway process, group and topic,
//! shared by every request of that group, so HTTP clients that reconnect cause no rebalance.
//! Offsets are committed to Kafka explicitly (never automatically), so Kafka's own tools see
//! exactly what the gateway acknowledged. `poll` blocks for up to its wait: call it from a thread
//! dedicated to the membership, never from a reactor.

use crate::{BridgeConfig, BridgeError};
use bytes::Bytes;
use kateway_core::{Delivered, Reset};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// One membership of a Kafka consumer group on one topic.
pub struct GroupConsumer {
    consumer: BaseConsumer,
    topic: String,
    brokers: String,
}

impl GroupConsumer {
    /// Joins `group` (the Kafka group id, `<subscriber appid>.<group>`) on `topic`.
    pub fn join(
        cfg: &BridgeConfig,
        group: &str,
        topic: &str,
        reset: Reset,
    ) -> Result<Self, BridgeError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("{}-{group}", cfg.client_id))
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if reset == Reset::Oldest {
                    "earliest"
                } else {
                    "latest"
                },
            )
            .set(
                "session.timeout.ms",
                cfg.session_timeout.as_millis().max(1000).to_string(),
            )
            .set("queued.max.messages.kbytes", "8192")
            // A broker that hangs must not hold a membership's thread for a minute.
            .set(
                "socket.timeout.ms",
                cfg.request_timeout.as_millis().max(1000).to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "metadata.recovery.rebootstrap.trigger.ms",
                crate::REBOOTSTRAP_MS,
            )
            .create()
            .map_err(BridgeError::from_kafka)?;
        consumer
            .subscribe(&[topic])
            .map_err(BridgeError::from_kafka)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            brokers: cfg.brokers.clone(),
        })
    }

    /// Up to `max` records: waits up to `wait` for the first, then takes what is already there.
    pub fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BridgeError> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        while out.len() < max {
            let left = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.poll_one(left) {
                None if out.is_empty() && Instant::now() < deadline => continue,
                None => break,
                Some(Err(e)) => {
                    if out.is_empty() && !e.is_unavailable() {
                        return Err(e);
                    }
                    break;
                }
                Some(Ok(m)) => out.push(m),
            }
        }
        Ok(out)
    }

    /// One record, waiting up to `wait`; `None` when none arrived. Also serves the group's
    /// rebalance callbacks, so a membership must call it regularly even when idle.
    pub fn poll_one(&self, wait: Duration) -> Option<Result<Delivered, BridgeError>> {
        match self.consumer.poll(wait)? {
            Err(e) => Some(Err(BridgeError::from_kafka(e))),
            Ok(m) => {
                let tags = crate::producer::tags_of(&m);
                Some(Ok(Delivered {
                    partition: m.partition().max(0) as u32,
                    offset: m.offset().max(0) as u64,
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                    key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                    tags: Bytes::from(tags),
                    value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    leased: None,
                }))
            }
        }
    }

    /// Stops (`true`) or restarts fetching on every assigned partition, so that a membership
    /// with nobody to deliver to does not read ahead without bound.
    pub fn set_paused(&self, paused: bool) -> Result<(), BridgeError> {
        let tpl = self
            .consumer
            .assignment()
            .map_err(BridgeError::from_kafka)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        }
        .map_err(BridgeError::from_kafka)
    }

    /// Commits `next` (the next offset to consume) for `partition`, waiting for the broker.
    pub fn commit(&self, partition: u32, next: u64) -> Result<(), BridgeError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(next as i64))
            .map_err(BridgeError::from_kafka)?;
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(BridgeError::from_kafka)
    }

    /// Commits `next` on `partition` with `metadata` beside it (a queue's checkpoint), waiting
    /// for the broker. The group coordinator refuses it from a member of an older generation.
    pub fn commit_with_metadata(
        &self,
        partition: u32,
        next: u64,
        metadata: &str,
    ) -> Result<(), BridgeError> {
        let mut tpl = TopicPartitionList::new();
        let mut e = tpl.add_partition(&self.topic, partition as i32);
        e.set_offset(Offset::Offset(next as i64))
            .map_err(BridgeError::from_kafka)?;
        e.set_metadata(metadata);
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(BridgeError::from_kafka)
    }

    /// The group's committed offset on `partition` (`None` when it has none) and the metadata
    /// committed with it. Blocks for up to `timeout`.
    pub fn committed(
        &self,
        partition: u32,
        timeout: Duration,
    ) -> Result<(Option<u64>, String), BridgeError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition as i32);
        let got = self
            .consumer
            .committed_offsets(tpl, timeout)
            .map_err(BridgeError::from_kafka)?;
        Ok(match got.find_partition(&self.topic, partition as i32) {
            Some(e) => match e.offset() {
                Offset::Offset(o) if o >= 0 => (Some(o as u64), e.metadata().to_owned()),
                _ => (None, String::new()),
            },
            None => (None, String::new()),
        })
    }

    /// Commits `next` for each `(partition, next)` without waiting for the broker (auto-ack:
    /// a commit lost to an outage only means those records are delivered again).
    pub fn commit_async(&self, offsets: &[(u32, u64)]) -> Result<(), BridgeError> {
        let mut tpl = TopicPartitionList::new();
        for &(p, next) in offsets {
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(next as i64))
                .map_err(BridgeError::from_kafka)?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(BridgeError::from_kafka)
    }

    /// The offset after the last record of `partition` (its high watermark), asked of the
    /// partition's leader. Blocks for up to `timeout`.
    pub fn end_offset(&self, partition: u32, timeout: Duration) -> Result<u64, BridgeError> {
        self.watermarks(partition, timeout).map(|(_, hi)| hi)
    }

    /// The oldest and the next offset of `partition`. Blocks for up to `timeout`.
    pub fn watermarks(&self, partition: u32, timeout: Duration) -> Result<(u64, u64), BridgeError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition as i32, timeout)
            .map(|(lo, hi)| (lo.max(0) as u64, hi.max(0) as u64))
            .map_err(BridgeError::from_kafka)
    }

    /// Moves this membership's position on `partition` (which it must hold) to `next`.
    pub fn seek(&self, partition: u32, next: u64, timeout: Duration) -> Result<(), BridgeError> {
        self.consumer
            .seek(
                &self.topic,
                partition as i32,
                Offset::Offset(next as i64),
                timeout,
            )
            .map_err(BridgeError::from_kafka)
    }

    /// Gives the consumer its bootstrap brokers again, for a membership that stopped getting
    /// anything (see `native.rs`). Returns how many were new to it.
    pub fn rebootstrap(&self) -> i32 {
        crate::native::add_brokers(self.consumer.client(), &self.brokers)
    }

    /// The partitions this membership owns now.
    pub fn assignment(&self) -> Result<Vec<u32>, BridgeError> {
        let tpl = self
            .consumer
            .assignment()
            .map_err(BridgeError::from_kafka)?;
        let mut p: Vec<u32> = tpl
            .elements()
            .iter()
            .map(|e| e.partition().max(0) as u32)
            .collect();
        p.sort_unstable();
        Ok(p)
    }
}
