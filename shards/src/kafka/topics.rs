//! Topics on the Kafka backend. Kafka is the source of truth: topics are created, grown,
//! re-configured and deleted there first, then recorded in the gateway's catalog (which opens
//! the handoff logs of the partitions each core owns). A topic created through another gateway
//! is learnt on first use, and core 0 refreshes partition counts every
//! `kafka.metadata_refresh`. Partition offsets and group offsets are read from Kafka.

use super::kafka_err;
use crate::mesh::{AdminOp, Msg, PartitionInfo};
use crate::shard::{now_ms, Shard};
use crate::topics::TopicMeta;
use kateway_core::{Error, ErrorKind};
use std::rc::Rc;
use std::time::Duration;

fn shared(shard: &Shard) -> &std::sync::Arc<super::KafkaShared> {
    &shard.kafka.as_ref().expect("kafka backend").shared
}

/// Looks `name` up in Kafka and records it in the catalog; 404 if Kafka does not know it.
pub async fn learn(shard: &Shard, name: &str) -> Result<(), Error> {
    let n = name.to_owned();
    let partitions = shared(shard)
        .blocking(move |a| a.partitions(&n))
        .await?
        .map_err(kafka_err)?;
    let meta = TopicMeta {
        name: name.to_owned(),
        partitions,
        retention_hours: None,
        retention_bytes: None,
        created_ms: now_ms(),
    };
    shard
        .mesh
        .call(0, move |reply| Msg::Admin {
            op: AdminOp::Learn(meta),
            reply,
        })
        .await??;
    Ok(())
}

/// Applies a topic administration call to Kafka, then returns the call to apply to the
/// catalog.
pub async fn administer(shard: &Shard, op: AdminOp) -> Result<AdminOp, Error> {
    let k = shared(shard).clone();
    let hours = |h: Option<u64>| h.filter(|&h| h > 0).map(|h| Duration::from_secs(h * 3600));
    match op {
        AdminOp::Create(meta) => {
            k.admin
                .create_topic(
                    &meta.name,
                    meta.partitions,
                    k.replication,
                    hours(meta.retention_hours),
                    meta.retention_bytes.filter(|&b| b > 0),
                )
                .await
                .map_err(kafka_err)?;
            Ok(AdminOp::Learn(meta))
        }
        AdminOp::Alter {
            name,
            partitions,
            retention_hours,
            retention_bytes,
        } => {
            let now = shard.topic(&name)?;
            if let Some(p) = partitions {
                if p < now.partitions {
                    return Err(Error::param(format!(
                        "partitions can only grow (now {})",
                        now.partitions
                    )));
                }
                if p > now.partitions {
                    k.admin.add_partitions(&name, p).await.map_err(kafka_err)?;
                }
            }
            if retention_hours.is_some() || retention_bytes.is_some() {
                let h = retention_hours.or(now.retention_hours);
                let b = retention_bytes.or(now.retention_bytes);
                k.admin
                    .set_retention(&name, hours(h), b.filter(|&b| b > 0))
                    .await
                    .map_err(kafka_err)?;
            }
            Ok(AdminOp::Alter {
                name,
                partitions,
                retention_hours,
                retention_bytes,
            })
        }
        AdminOp::Delete(name) => {
            k.admin.delete_topic(&name).await.map_err(kafka_err)?;
            Ok(AdminOp::Delete(name))
        }
        AdminOp::Learn(meta) => Ok(AdminOp::Learn(meta)),
    }
}

/// Partition offsets from Kafka, with the committed offsets of group `prefix` (`exact`), of
/// every group whose id starts with `prefix`, or of none when `prefix` is `"\0"`.
pub async fn info(
    shard: &Shard,
    meta: &TopicMeta,
    prefix: &str,
    exact: bool,
) -> Result<Vec<PartitionInfo>, Error> {
    let name = meta.name.clone();
    let prefix = prefix.to_owned();
    let r = shared(shard)
        .blocking(
            move |a| -> Result<Vec<PartitionInfo>, kateway_kafka_bridge::BridgeError> {
                let marks = a.watermarks(&name)?;
                let groups = if exact {
                    vec![prefix]
                } else if prefix == "\u{0}" {
                    Vec::new()
                } else {
                    a.groups(&prefix)?
                };
                let mut infos: Vec<PartitionInfo> = marks
                    .iter()
                    .enumerate()
                    .map(|(p, &(lo, hi))| PartitionInfo {
                        partition: p as u32,
                        oldest: lo.max(0) as u64,
                        newest: hi.max(0) as u64,
                        groups: Vec::new(),
                    })
                    .collect();
                for g in groups {
                    let committed = a.committed(&g, &name, marks.len() as u32)?;
                    for (i, c) in committed.into_iter().enumerate() {
                        if let Some(c) = c {
                            infos[i].groups.push((g.clone(), c.max(0) as u64));
                        }
                    }
                }
                Ok(infos)
            },
        )
        .await?;
    r.map_err(kafka_err)
}

/// Core 0: refreshes partition counts of catalog topics from Kafka, and forgets topics Kafka
/// no longer has (deleted through another gateway or Kafka's own tools).
pub async fn refresh(shard: Rc<Shard>) {
    let every = shard
        .cfg
        .kafka
        .metadata_refresh
        .0
        .max(Duration::from_secs(1));
    loop {
        monoio::time::sleep(every).await;
        if shard.stop_event.epoch() > 0 {
            return;
        }
        let names: Vec<(String, u32)> = shard
            .topics
            .borrow()
            .values()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        for (name, had) in names {
            let n = name.clone();
            let Ok(found) = shared(&shard).blocking(move |a| a.partitions(&n)).await else {
                return;
            };
            let op = match found {
                Ok(p) if p > had => AdminOp::Alter {
                    name,
                    partitions: Some(p),
                    retention_hours: None,
                    retention_bytes: None,
                },
                Err(kateway_kafka_bridge::BridgeError::UnknownTopic(_)) => AdminOp::Delete(name),
                _ => continue,
            };
            if let Err(e) = crate::api::apply_admin(&shard, op).await {
                if e.kind() != ErrorKind::UnknownTopic {
                    tracing::warn!("metadata refresh: {e}");
                }
            }
        }
    }
}
