//! The metadata topic: one partition, compacted, which every gateway of a cluster reads from the
//! start ([`follow`]) and writes its validated changes to (through a core's [`crate::Producer`],
//! keyed by entity, so compaction keeps each entity's latest record). It carries key hashes,
//! never secrets.

use crate::{Admin, BridgeConfig, BridgeError};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the follower reports.
#[derive(Debug)]
pub enum MetaEvent {
    /// A record at `offset` (`None`: a tombstone).
    Record { offset: i64, value: Option<Vec<u8>> },
    /// Everything up to the end offset seen when following began has been reported.
    CaughtUp,
    /// The topic cannot be read (yet): why. The follower keeps trying.
    Trouble(String),
}

/// Creates the compacted metadata topic if it does not exist.
pub fn ensure(cfg: &BridgeConfig, topic: &str, replicas: i32) -> Result<(), BridgeError> {
    ensure_compacted(cfg, topic, replicas, 60_000)
}

/// Creates a one-partition compacted topic if it does not exist: a record stays at least
/// `min_lag_ms` before a later one of its key may replace it.
pub fn ensure_compacted(
    cfg: &BridgeConfig,
    topic: &str,
    replicas: i32,
    min_lag_ms: u64,
) -> Result<(), BridgeError> {
    let admin = Admin::new(cfg)?;
    let lag = min_lag_ms.to_string();
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(replicas))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", &lag)
        .set("delete.retention.ms", "604800000");
    match futures_executor::block_on(admin.create(&t)) {
        Ok(()) | Err(BridgeError::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a one-partition log topic keeping its records `retention_ms` (such as the
/// idempotency topic) if it does not exist.
pub fn ensure_log(
    cfg: &BridgeConfig,
    topic: &str,
    replicas: i32,
    retention_ms: u64,
) -> Result<(), BridgeError> {
    let admin = Admin::new(cfg)?;
    let retention = retention_ms.to_string();
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(replicas))
        .set("cleanup.policy", "delete")
        .set("retention.ms", &retention);
    match futures_executor::block_on(admin.create(&t)) {
        Ok(()) | Err(BridgeError::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads `topic` from its first record on a thread of its own, handing every record to `tx`, and
/// [`MetaEvent::CaughtUp`] once it reached the end offset seen at the start; runs until `stop`.
pub fn follow(
    cfg: &BridgeConfig,
    topic: &str,
    stop: Arc<AtomicBool>,
    tx: impl Fn(MetaEvent) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, BridgeError> {
    follow_at(cfg, topic, Offset::Beginning, stop, tx)
}

/// [`follow`] from the end of `topic`: only records written from now on.
pub fn follow_new(
    cfg: &BridgeConfig,
    topic: &str,
    stop: Arc<AtomicBool>,
    tx: impl Fn(MetaEvent) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, BridgeError> {
    follow_at(cfg, topic, Offset::End, stop, tx)
}

fn follow_at(
    cfg: &BridgeConfig,
    topic: &str,
    start: Offset,
    stop: Arc<AtomicBool>,
    tx: impl Fn(MetaEvent) -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, BridgeError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-meta", cfg.client_id))
        // Required by librdkafka, never joined: partitions are assigned by hand and nothing is
        // committed.
        .set("group.id", format!("{}-meta-reader", cfg.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("reconnect.backoff.max.ms", "1000")
        .set(
            "metadata.recovery.rebootstrap.trigger.ms",
            crate::REBOOTSTRAP_MS,
        )
        .create()
        .map_err(BridgeError::from_kafka)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, start)
        .map_err(BridgeError::from_kafka)?;
    consumer.assign(&tpl).map_err(BridgeError::from_kafka)?;
    let topic = topic.to_owned();
    let timeout = cfg.request_timeout;
    std::thread::Builder::new()
        .name("kateway-meta".into())
        .spawn(move || run(consumer, &topic, timeout, &stop, tx))
        .map_err(|e| BridgeError::Config(e.to_string()))
}

fn run(
    consumer: BaseConsumer,
    topic: &str,
    timeout: Duration,
    stop: &AtomicBool,
    tx: impl Fn(MetaEvent) -> bool,
) {
    // The end to reach before the gateway may serve: asked until Kafka answers.
    let end = loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match consumer.fetch_watermarks(topic, 0, timeout) {
            Ok((_, high)) => break high,
            Err(e) => {
                if !tx(MetaEvent::Trouble(e.to_string())) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let mut caught_up = end == 0;
    if caught_up && !tx(MetaEvent::CaughtUp) {
        return;
    }
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let offset = m.offset();
                let value = m.payload().map(<[u8]>::to_vec);
                if !tx(MetaEvent::Record { offset, value }) {
                    return;
                }
                if !caught_up && offset + 1 >= end {
                    caught_up = true;
                    if !tx(MetaEvent::CaughtUp) {
                        return;
                    }
                }
            }
            Some(Err(e)) if !tx(MetaEvent::Trouble(e.to_string())) => return,
            Some(Err(_)) => {}
        }
    }
}
