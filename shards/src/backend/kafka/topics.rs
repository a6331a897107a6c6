//! Topics on the Kafka backend. Kafka is the source of truth: topics are created, grown,
//! re-configured and deleted there first, then recorded in the gateway's catalog (which opens
//! the handoff logs of the partitions each core owns). A topic created through another gateway
//! is learnt on first use, and core 0 refreshes partition counts every
//! `kafka.metadata_refresh`. Partition offsets and group offsets are read from Kafka.

use super::{kafka_err, Kafka};
use crate::catalog::{AdminOp, TopicMeta};
use crate::metrics::lag::Lags;
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

/// Partition offsets from Kafka, with the committed offsets of the groups asked about, and how
/// many of those groups were not measured: not asked about within `kafka.status_budget` of the
/// request (one request per group: on a cluster of hundreds of groups, asking about every one
/// would keep the client waiting for many seconds), or failing to answer. The groups this
/// gateway is a member of on the topic are asked first. A prefix query lists the cluster's
/// groups by name, not by topic, so the groups left out may include some that never read it.
pub async fn info(
    k: &Kafka,
    meta: &TopicMeta,
    groups: &Groups,
) -> Result<(Vec<PartitionInfo>, usize), Error> {
    let name = meta.name.clone();
    let groups = groups.clone();
    // The clock runs from the request: waiting for a helper thread counts too.
    let until = std::time::Instant::now() + k.shard.cfg().kafka.status_budget.0;
    let members = k.shared.member_groups(Some(&name));
    let exact = matches!(groups, Groups::Exact(_));
    let r = k
        .shared
        .blocking(
            move |a| -> Result<(Vec<PartitionInfo>, usize), kateway_kafka_bridge::BridgeError> {
                let marks = a.watermarks(&name)?;
                let mut groups = match groups {
                    Groups::None => Vec::new(),
                    Groups::Exact(g) => vec![g],
                    Groups::Prefix(p) => a.groups(&p)?,
                };
                // Members first (a stable sort keeps the rest in name order).
                groups.sort_by_key(|g| members.binary_search(g).is_err());
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
                let (mut asked, mut failed) = (0, 0);
                for g in &groups {
                    // The first group is always asked about (an exact one above all).
                    if asked > 0 && std::time::Instant::now() >= until {
                        break;
                    }
                    asked += 1;
                    let committed = match a.committed(g, &name, marks.len() as u32) {
                        Ok(c) => c,
                        // A group named exactly is the answer: its failure is the request's.
                        Err(e) if exact => return Err(e),
                        // One group that cannot be read leaves the others' answer standing.
                        Err(_) => {
                            failed += 1;
                            continue;
                        }
                    };
                    for (i, c) in committed.into_iter().enumerate() {
                        if let Some(c) = c {
                            infos[i].groups.push((g.clone(), c.max(0) as u64));
                        }
                    }
                }
                Ok((infos, groups.len() - asked + failed))
            },
        )
        .await?;
    r.map_err(kafka_err)
}

/// How long one round of lag measurement may ask about the cluster's other groups (those this
/// gateway holds no membership of) before it yields the helper thread; the next round goes on
/// where it stopped.
const LAG_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// The lag of every group on `topics`, for `/metrics` ([`crate::metrics::lag`]): the end
/// offsets of each topic, the cluster's group list, and one committed-offsets request per group
/// for all the topics. The groups this gateway holds memberships of are measured every round;
/// the cluster's other groups in turn, for at most `LAG_BUDGET` a round, so on a cluster of
/// many groups their figures are up to one turn old (`previous` keeps them meanwhile). A topic
/// or group that fails to answer keeps its previous figures; a group the cluster no longer
/// lists is dropped.
pub async fn lags(k: &Kafka, topics: Vec<String>, previous: Lags) -> Lags {
    let local = k.shared.member_groups(None);
    let cursor = k.shared.lag_cursor.clone();
    let fallback = previous.clone();
    let r = k
        .shared
        .blocking(move |a| {
            let wanted = topics.clone();
            let marks: Vec<(String, Vec<(i64, i64)>)> = topics
                .into_iter()
                .filter_map(|t| a.watermarks(&t).ok().map(|m| (t, m)))
                .collect();
            let Ok(all) = a.groups("") else {
                return previous;
            };
            let mut lags = previous;
            // Groups the cluster no longer has, and topics no longer measured, go.
            lags.retain(|(t, g), _| all.binary_search(g).is_ok() && wanted.contains(t));
            if marks.is_empty() {
                return lags;
            }
            let sizes: Vec<(String, u32)> = marks
                .iter()
                .map(|(t, m)| (t.clone(), m.len() as u32))
                .collect();
            let mut measure = |g: &str| {
                let Ok(committed) = a.committed_many(g, &sizes) else {
                    return;
                };
                lags.retain(|(_, lg), _| lg != g);
                for ((t, m), c) in marks.iter().zip(committed) {
                    if let Some(lag) = group_lag(m, &c) {
                        lags.insert((t.clone(), g.to_owned()), lag);
                    }
                }
            };
            for g in local.iter().filter(|g| all.binary_search(g).is_ok()) {
                measure(g);
            }
            let others: Vec<&String> = all.iter().filter(|g| !local.contains(g)).collect();
            let until = std::time::Instant::now() + LAG_BUDGET;
            let start = cursor.load(std::sync::atomic::Ordering::Relaxed);
            let mut done = 0;
            while done < others.len() && std::time::Instant::now() < until {
                measure(others[(start + done) % others.len()]);
                done += 1;
            }
            let next = match others.len() {
                0 => 0,
                n => (start + done) % n,
            };
            cursor.store(next, std::sync::atomic::Ordering::Relaxed);
            lags
        })
        .await;
    r.unwrap_or(fallback)
}

/// A group's lag on one topic: end offsets less committed offsets, summed over the partitions
/// it committed on (`None` when it committed on none).
fn group_lag(marks: &[(i64, i64)], committed: &[Option<i64>]) -> Option<u64> {
    let mut sum = None;
    for (&(lo, hi), &c) in marks.iter().zip(committed) {
        if let Some(c) = c {
            let (lo, hi) = (lo.max(0) as u64, hi.max(0) as u64);
            *sum.get_or_insert(0) += hi - (c.max(0) as u64).clamp(lo, hi);
        }
    }
    sum
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
