//! Where a leased group's queue checkpoints live on Kafka. A checkpoint small enough rides in
//! the committed offset's metadata itself (`kgw1:` and base64, within the broker's default
//! `offset.metadata.max.bytes`). A larger one is written first to the compacted state topic
//! (`kafka.queue_state_topic`, keyed by topic, group and partition), and the commit's metadata
//! points at that record (`kgw2:<partition>:<offset>:<length>`).
//!
//! The commit is the fence: Kafka takes an offset commit only from a member of the group's
//! current generation, so a gateway that lost the partition in a rebalance may still write a
//! state record, but no committed offset ever points at it, and the next owner restores from
//! the record its predecessor's last accepted commit names. The topic keeps a record at least
//! [`MIN_LAG_MS`] before compaction may drop it for a later one of its key, which covers a
//! stale owner's late write until the new owner has saved its own.

use super::Kafka;
use kateway_core::config::Config;
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::{metatopic, BridgeConfig};

/// The most checkpoint bytes committed beside a leased group's offset: base64 of it stays
/// within the broker's default `offset.metadata.max.bytes` (4096).
pub const INLINE_BYTES: usize = 3000;

/// The most checkpoint bytes stored at all: a state record stays under the default
/// `message.max.bytes` of broker and producer.
pub const MAX_BYTES: usize = 900_000;

/// How long a state record is kept before a later one of its key may replace it.
pub const MIN_LAG_MS: u64 = 3_600_000;

/// What a leased group's commit metadata says about its checkpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// No checkpoint (a plain commit, or another program's metadata).
    None,
    /// The checkpoint itself.
    Inline(Vec<u8>),
    /// The state record at `offset` of the state topic's `partition`, of `len` bytes.
    At {
        partition: u32,
        offset: u64,
        len: usize,
    },
}

/// Commit metadata holding `checkpoint` inline.
pub fn inline(checkpoint: &[u8]) -> String {
    use base64::Engine;
    format!(
        "kgw1:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(checkpoint)
    )
}

/// Commit metadata pointing at a state record.
pub fn pointer(partition: u32, offset: u64, len: usize) -> String {
    format!("kgw2:{partition}:{offset}:{len}")
}

/// Reads commit metadata.
pub fn parse(meta: &str) -> Stored {
    use base64::Engine;
    if let Some(b64) = meta.strip_prefix("kgw1:") {
        return base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_or(Stored::None, Stored::Inline);
    }
    let Some(rest) = meta.strip_prefix("kgw2:") else {
        return Stored::None;
    };
    let mut it = rest.split(':');
    match (
        it.next().and_then(|s| s.parse().ok()),
        it.next().and_then(|s| s.parse().ok()),
        it.next().and_then(|s| s.parse().ok()),
        it.next(),
    ) {
        (Some(partition), Some(offset), Some(len), None) => Stored::At {
            partition,
            offset,
            len,
        },
        _ => Stored::None,
    }
}

/// The state record's key: names cannot hold a newline, so no two queues share one.
fn key(topic: &str, group: &str, p: u32) -> Vec<u8> {
    format!("{topic}\n{group}\n{p}").into_bytes()
}

/// On Kafka: creates the state topic off the start path (Kafka may not answer yet; a save
/// before it exists fails and is tried again at the next interval).
pub fn prepare(cfg: &Config, bridge: Option<&BridgeConfig>) {
    let Some(b) = bridge else { return };
    let (b, topic, replicas) = (
        b.clone(),
        cfg.kafka.queue_state_topic.clone(),
        cfg.kafka.replication_factor,
    );
    let _ = std::thread::Builder::new()
        .name("kateway-qstate-start".into())
        .spawn(move || {
            if let Err(e) = metatopic::ensure_compacted(&b, &topic, replicas, MIN_LAG_MS) {
                tracing::warn!(topic, "cannot create the queue state topic yet: {e}");
            }
        });
}

/// The commit metadata that stores `checkpoint` of `group`'s queue on partition `p`: inline,
/// or after writing it to the state topic (acknowledged by every in-sync replica).
pub async fn store(
    k: &Kafka,
    topic: &str,
    group: &str,
    p: u32,
    checkpoint: &[u8],
) -> Result<String, Error> {
    if checkpoint.len() <= INLINE_BYTES {
        return Ok(inline(checkpoint));
    }
    let state_topic = &k.shard.cfg().kafka.queue_state_topic;
    let unavailable = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::KafkaUnavailable,
            format!("the queue checkpoint cannot be written to {state_topic}: {e}"),
        )
    };
    let (partition, offset) = k
        .write_own(state_topic, &key(topic, group, p), checkpoint)
        .await
        .map_err(|e| unavailable(&e))?;
    if partition < 0 || offset < 0 {
        return Err(unavailable(&"no offset came back"));
    }
    Ok(pointer(partition as u32, offset as u64, checkpoint.len()))
}

/// The checkpoint that commit metadata `meta` names, read from the state topic when it points
/// there. A record that is gone or is not this queue's gives `None` (the window starts from the
/// committed offset alone), with a warning.
pub async fn load(
    k: &Kafka,
    topic: &str,
    group: &str,
    p: u32,
    meta: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let (partition, offset, len) = match parse(meta) {
        Stored::None => return Ok(None),
        Stored::Inline(b) => return Ok(Some(b)),
        Stored::At {
            partition,
            offset,
            len,
        } => (partition, offset, len),
    };
    let state_topic = k.shard.cfg().kafka.queue_state_topic.clone();
    let t = state_topic.clone();
    let got = k
        .shared
        .blocking(move |admin| admin.read_at(&t, partition, offset))
        .await?
        .map_err(super::kafka_err)?;
    let want = key(topic, group, p);
    match got {
        Some((k, v)) if k == want && v.len() == len => Ok(Some(v)),
        _ => {
            tracing::warn!(
                topic,
                group,
                partition = p,
                "the queue checkpoint at {state_topic}/{partition}@{offset} is gone: starting from the committed offset"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        assert_eq!(parse(&inline(b"abc")), Stored::Inline(b"abc".to_vec()));
        assert_eq!(
            parse(&pointer(0, 12345, 4000)),
            Stored::At {
                partition: 0,
                offset: 12345,
                len: 4000
            }
        );
        for other in ["", "x", "kgw1:!!", "kgw2:0:1", "kgw2:0:1:2:3", "kgw2:a:1:2"] {
            assert_eq!(parse(other), Stored::None, "{other}");
        }
        // The inline form stays under the broker's default offset.metadata.max.bytes.
        assert!(inline(&[0; INLINE_BYTES]).len() < 4096);
    }
}
