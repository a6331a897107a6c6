//! Settles across gateways (Kafka): the gateways of a cluster split a group's partitions, so a
//! receipt may reach a gateway whose membership does not hold its partition. That gateway
//! hands the settle on through the topic `kafka.queue_settle_topic`, which every gateway follows
//! from its end; the one holding the partition applies it (a receipt is the same, MAC and all,
//! on every gateway with the cluster's pepper), the others drop it. The client hears
//! `forwarded`: the settle is on its way, applied within the follower's latency.

use super::SettleCall;
use crate::backend::Backend;
use crate::node::Core;
use kateway_core::config::{Backend as Kind, Config};
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::metatopic::{self, MetaEvent};
use kateway_kafka_bridge::BridgeConfig;
use kateway_proto::command::SettleOp;
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A settle handed on to the gateway holding the partition.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub topic: String,
    pub group: String,
    pub op: String,
    pub receipts: Vec<String>,
    pub delay_ms: Option<u64>,
    pub visibility_ms: Option<u64>,
    pub error: Option<String>,
}

/// The follower of the settle topic, for core 0.
pub struct ForwardInit {
    rx: flume::Receiver<MetaEvent>,
    stop: Arc<AtomicBool>,
}

/// On Kafka: creates the settle topic if needed and starts following it from its end.
pub fn open(cfg: &Config, bridge: Option<&BridgeConfig>) -> Result<Option<ForwardInit>, String> {
    let (Kind::Kafka, Some(b)) = (cfg.store.backend, bridge) else {
        return Ok(None);
    };
    let topic = cfg.kafka.queue_settle_topic.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = flume::unbounded();
    // Created and followed off the start path: Kafka may not answer yet.
    let (b, s, replicas) = (b.clone(), stop.clone(), cfg.kafka.replication_factor);
    std::thread::Builder::new()
        .name("kateway-qsettle-start".into())
        .spawn(move || {
            if let Err(e) = metatopic::ensure_log(&b, &topic, replicas, 3_600_000) {
                tracing::warn!(
                    topic,
                    "cannot create the queue settle topic yet ({e}); following it anyway"
                );
            }
            if let Err(e) = metatopic::follow_new(&b, &topic, s, move |ev| tx.send(ev).is_ok()) {
                tracing::error!(topic, "cannot follow the queue settle topic: {e}");
            }
        })
        .map_err(|e| format!("cannot start the queue settle follower: {e}"))?;
    Ok(Some(ForwardInit { rx, stop }))
}

fn op_name(op: SettleOp) -> &'static str {
    match op {
        SettleOp::Ack => "ack",
        SettleOp::Nack => "nack",
        SettleOp::Extend => "extend",
        SettleOp::Bury => "bury",
    }
}

/// Hands a settle on (Kafka), durably.
pub async fn send(backend: &Backend, cfg: &Config, f: &Forwarded) -> Result<(), Error> {
    let Backend::Kafka(k) = backend else {
        return Err(Error::new(
            ErrorKind::Internal,
            "settles are handed on only between Kafka gateways",
        ));
    };
    let body = serde_json::to_vec(f).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    let unavailable = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::KafkaUnavailable,
            format!("the settle cannot be handed to the gateway holding the partition: {e}"),
        )
    };
    k.write_own(&cfg.kafka.queue_settle_topic, b"", &body)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

/// A settle of `op` on `receipts` to hand on.
pub fn record(c: &SettleCall, receipts: Vec<String>) -> Forwarded {
    Forwarded {
        topic: c.topic.clone(),
        group: c.group.clone(),
        op: op_name(c.op).to_owned(),
        receipts,
        delay_ms: c.delay.map(|d| d.as_millis() as u64),
        visibility_ms: c.visibility.map(|d| d.as_millis() as u64),
        error: c.error.clone(),
    }
}

/// Core 0: applies the settles other gateways hand on, on the core that keeps each queue
/// (those for partitions this gateway does not hold are dropped there).
pub async fn run(core: Rc<Core>, init: ForwardInit) {
    let shard = core.shard.clone();
    let seen = shard.stop_event.epoch();
    loop {
        let ev = monoio::select! {
            ev = init.rx.recv_async() => ev,
            _ = shard.stop_event.wait(seen) => break,
        };
        let Ok(ev) = ev else { break };
        let MetaEvent::Record {
            value: Some(value), ..
        } = ev
        else {
            continue;
        };
        let Ok(f) = serde_json::from_slice::<Forwarded>(&value) else {
            continue;
        };
        let Some(op) = SettleOp::parse(&f.op) else {
            continue;
        };
        let Ok(topic) = shard.topic(&f.topic) else {
            // A topic this gateway has not seen: it holds none of its partitions.
            continue;
        };
        let r = core
            .queues
            .settle(
                &shard,
                &core.backend,
                &topic,
                &f.group,
                op,
                &f.receipts,
                None,
                f.delay_ms.map(Duration::from_millis),
                f.visibility_ms.map(Duration::from_millis),
                f.error,
                true,
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(topic = %f.topic, group = %f.group, "a handed-on settle failed: {e}");
        }
    }
    init.stop.store(true, Ordering::Release);
}
