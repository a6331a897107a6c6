//! Topics on the Kafka backend. Kafka is the source of truth: topics are created, grown,
//! re-configured and deleted there first, then recorded in the gateway's catalog (which opens
//! the handoff logs of the partitions each core owns). A topic created through another gateway
//! is learnt on first use, and core 0 refreshes partition counts every
//! `kafka.metadata_refresh`. Partition offsets and group offsets are read from Kafka.

use super::{kafka_err, Kafka};
use crate::catalog::{AdminOp, TopicMeta};
use crate::request::{Answer, Request};
use crate::shard::now_ms;
use kateway_core::{Error, ErrorKind, Groups, PartitionInfo};
use std::rc::Rc;
use std::time::Duration;

/// Has core 0 apply `op` to the catalog.
async fn apply(k: &Kafka, op: AdminOp) -> Result<TopicMeta, Error> {
    match k.shard.mesh.call(0, Request::Admin(op)).await? {
        Answer::Topic(r) => r,
        _ => Err(Error::new(
            ErrorKind::Internal,
            "unexpected answer from core 0",
        )),
    }
}

/// Looks `name` up in Kafka and records it in the catalog; 404 if Kafka does not know it.
pub async fn learn(k: &Kafka, name: &str) -> Result<(), Error> {
    let n = name.to_owned();
    let partitions = k
        .shared
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
    apply(k, AdminOp::Learn(meta)).await?;
    Ok(())
}

/// Waits (up to the request timeout) until every partition of a topic just created or grown
/// has a leader, so that the answer is not followed by reads that fail; says so when they did
/// not all appear in time (the call itself succeeded).
async fn visible(kafka: &Kafka, name: &str, from: u32, partitions: u32) {
    let n = name.to_owned();
    let seen = kafka
        .shared
        .blocking(move |a| a.await_partitions(&n, from, partitions))
        .await;
    if !matches!(seen, Ok(true)) {
        tracing::warn!(
            topic = name,
            partitions,
            "Kafka has not shown every partition with a leader yet"
        );
    }
}

/// Applies a topic administration call to Kafka, then returns the call to apply to the
/// catalog.
pub async fn administer(kafka: &Kafka, op: AdminOp) -> Result<AdminOp, Error> {
    let k = kafka.shared.clone();
    let hours = |h: Option<u64>| {
        h.filter(|&h| h > 0)
            .map(|h| Duration::from_secs(h.saturating_mul(3600)))
    };
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
            visible(kafka, &meta.name, 0, meta.partitions).await;
            Ok(AdminOp::Learn(meta))
        }
        AdminOp::Alter {
            name,
            partitions,
            retention_hours,
            retention_bytes,
        } => {
            let now = kafka.shard.topic(&name)?;
            if let Some(p) = partitions {
                if p < now.partitions {
                    return Err(Error::param(format!(
                        "partitions can only grow (now {})",
                        now.partitions
                    )));
                }
                if p > now.partitions {
                    k.admin.add_partitions(&name, p).await.map_err(kafka_err)?;
                    visible(kafka, &name, now.partitions, p).await;
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

/// Partition offsets from Kafka, with the committed offsets of the groups asked about.
pub async fn info(
    k: &Kafka,
    meta: &TopicMeta,
    groups: &Groups,
) -> Result<Vec<PartitionInfo>, Error> {
    let name = meta.name.clone();
    let groups = groups.clone();
    let r = k
        .shared
        .blocking(
            move |a| -> Result<Vec<PartitionInfo>, kateway_kafka_bridge::BridgeError> {
                let marks = a.watermarks(&name)?;
                let groups = match groups {
                    Groups::None => Vec::new(),
                    Groups::Exact(g) => vec![g],
                    Groups::Prefix(p) => a.groups(&p)?,
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

/// The lag of every group on `topics`, for `/metrics` ([`crate::metrics::lag`]): the end
/// offsets of each topic, the cluster's group list once, and one committed-offsets request per
/// group for all the topics. A topic or group that fails to answer is left out of this round;
/// the others are still measured.
pub async fn lags(k: &Kafka, topics: Vec<String>) -> crate::metrics::lag::Lags {
    let r = k
        .shared
        .blocking(move |a| {
            let mut lags = crate::metrics::lag::Lags::new();
            let marks: Vec<(String, Vec<(i64, i64)>)> = topics
                .into_iter()
                .filter_map(|t| a.watermarks(&t).ok().map(|m| (t, m)))
                .collect();
            if marks.is_empty() {
                return lags;
            }
            let sizes: Vec<(String, u32)> = marks
                .iter()
                .map(|(t, m)| (t.clone(), m.len() as u32))
                .collect();
            for g in a.groups("").unwrap_or_default() {
                let Ok(committed) = a.committed_many(&g, &sizes) else {
                    continue;
                };
                for ((t, m), c) in marks.iter().zip(committed) {
                    let mut sum = None;
                    for (&(lo, hi), c) in m.iter().zip(c) {
                        if let Some(c) = c {
                            let (lo, hi) = (lo.max(0) as u64, hi.max(0) as u64);
                            *sum.get_or_insert(0) += hi - (c.max(0) as u64).clamp(lo, hi);
                        }
                    }
                    if let Some(lag) = sum {
                        lags.insert((t.clone(), g.clone()), lag);
                    }
                }
            }
            lags
        })
        .await;
    r.unwrap_or_default()
}

/// Core 0: refreshes partition counts of catalog topics from Kafka, and forgets topics Kafka
/// no longer has (deleted through another gateway or Kafka's own tools).
pub async fn refresh(k: Rc<Kafka>) {
    let shard = k.shard.clone();
    let every = shard
        .cfg()
        .kafka
        .metadata_refresh
        .0
        .max(Duration::from_secs(1));
    while !shard.sleep(every).await {
        let names: Vec<(String, u32)> = shard
            .catalog
            .borrow()
            .metas()
            .into_iter()
            .map(|t| (t.name, t.partitions))
            .collect();
        for (name, had) in names {
            let n = name.clone();
            let Ok(found) = k.shared.blocking(move |a| a.partitions(&n)).await else {
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
            if let Err(e) = apply(&k, op).await {
                if e.kind() != ErrorKind::UnknownTopic {
                    tracing::warn!("metadata refresh: {e}");
                }
            }
        }
    }
}
