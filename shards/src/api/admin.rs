//! Provisioning and status: topics (create/alter/delete through core 0), partition offsets,
//! group status and lag, process status and Prometheus metrics (summed over cores).

use super::{caller, Out};
use crate::mesh::{AdminOp, Msg, PartitionInfo};
use crate::metrics::Snapshot;
use crate::shard::{now_ms, Shard};
use crate::topics::TopicMeta;
use kateway_core::units::parse_size;
use kateway_core::{Error, ErrorKind, GroupName, TopicName};
use kateway_proto::http1::{Method, Request};
use kateway_proto::query;
use serde_json::json;
use std::path::Path;
use std::rc::Rc;

fn num<T: std::str::FromStr>(q: &str, name: &str) -> Result<Option<T>, Error> {
    match query::raw(q, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::param(format!("invalid {name} {v:?}"))),
    }
}

/// `POST|PUT|DELETE /v1/topics/:appid/:topic/:ver`
pub async fn topic(
    shard: &Rc<Shard>,
    req: &Request,
    method: Method,
    appid: &str,
    topic: &str,
    ver: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let name = TopicName::new(appid, topic, ver)?.storage_name();
    let q = req.query();
    let partitions: Option<u32> = num(q, "partitions")?;
    if partitions.is_some_and(|p| p == 0 || p > 10_000) {
        return Err(Error::param("partitions must be 1..=10000"));
    }
    let retention_hours: Option<u64> = num(q, "retention.hours")?;
    let retention_bytes = match query::raw(q, "retention.bytes") {
        None => None,
        Some(v) => Some(parse_size(v).map_err(Error::param)?),
    };
    let op = match method {
        Method::Post => {
            let default = match shard.cfg.store.default_partitions {
                0 => shard.cores() as u32,
                n => n,
            };
            AdminOp::Create(TopicMeta {
                name,
                partitions: partitions.unwrap_or(default),
                retention_hours,
                retention_bytes,
                created_ms: now_ms(),
            })
        }
        Method::Put => AdminOp::Alter {
            name,
            partitions,
            retention_hours,
            retention_bytes,
        },
        _ => AdminOp::Delete(name),
    };
    if shard.kafka.is_some() && method == Method::Put {
        // Altering a topic created through another gateway: learn it first.
        shard.resolve(appid, topic, ver).await?;
    }
    let kafka_delete = shard.kafka.is_some() && method == Method::Delete;
    let op = match shard.kafka {
        Some(_) => crate::kafka::topics::administer(shard, op).await?,
        None => op,
    };
    let fallback = match &op {
        AdminOp::Delete(name) => Some(name.clone()),
        _ => None,
    };
    let meta = match shard
        .mesh
        .call(0, move |reply| Msg::Admin { op, reply })
        .await?
    {
        // Deleted in Kafka, though this gateway had not seen the topic yet.
        Err(e) if kafka_delete && e.kind() == ErrorKind::UnknownTopic => TopicMeta {
            name: fallback.unwrap_or_default(),
            partitions: 0,
            retention_hours: None,
            retention_bytes: None,
            created_ms: 0,
        },
        r => r?,
    };
    let status = if method == Method::Post { 201 } else { 200 };
    let body = json!({
        "topic": meta.name,
        "partitions": meta.partitions,
        "retention_hours": meta.retention_hours,
        "retention_bytes": meta.retention_bytes,
    });
    out.json(status, body.to_string().as_bytes());
    Ok(())
}

/// Gathers partition offsets (and groups with `prefix`) from every core.
async fn gather(
    shard: &Rc<Shard>,
    meta: &TopicMeta,
    prefix: &str,
    exact: bool,
) -> Result<Vec<PartitionInfo>, Error> {
    if shard.kafka.is_some() {
        return crate::kafka::topics::info(shard, meta, prefix, exact).await;
    }
    let mut all = Vec::new();
    for core in 0..shard.cores() {
        let infos = shard
            .on_core(
                core,
                (),
                |()| async { shard.info_local(&meta.name, prefix) },
                |(), reply| Msg::Info {
                    topic: meta.name.clone(),
                    group_prefix: prefix.to_owned(),
                    reply,
                },
            )
            .await?;
        all.extend(infos);
    }
    all.sort_by_key(|i| i.partition);
    Ok(all)
}

/// `GET /v1/partitions/:appid/:topic/:ver`
pub async fn partitions(
    shard: &Rc<Shard>,
    appid: &str,
    topic: &str,
    ver: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let meta = shard.resolve(appid, topic, ver).await?;
    let infos = gather(shard, &meta, "\u{0}", false).await?;
    let parts: Vec<_> = infos
        .iter()
        .map(|i| json!({"partition": i.partition, "oldest": i.oldest, "newest": i.newest}))
        .collect();
    let body = json!({"topic": meta.name, "partitions": meta.partitions, "offsets": parts});
    out.json(200, body.to_string().as_bytes());
    Ok(())
}

/// `GET /v1/status/:appid/:topic/:ver?group=`: the caller's groups on a topic with their
/// committed offsets and lag per partition.
pub async fn topic_status(
    shard: &Rc<Shard>,
    req: &Request,
    appid: &str,
    topic: &str,
    ver: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let me = caller(req)?;
    let meta = shard.resolve(appid, topic, ver).await?;
    let (prefix, exact) = match query::raw(req.query(), "group") {
        Some(g) if !g.is_empty() => (GroupName::new(me, g)?.to_string(), true),
        _ => (format!("{me}."), false),
    };
    let infos = gather(shard, &meta, &prefix, exact).await?;
    let mut groups: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    if exact {
        groups.insert(prefix.clone(), Vec::new());
    }
    for i in &infos {
        let mut names: Vec<&str> = i.groups.iter().map(|(g, _)| g.as_str()).collect();
        if exact && names.is_empty() {
            names.push(&prefix);
        }
        for g in names {
            if exact && g != prefix {
                continue;
            }
            let committed = i.groups.iter().find(|(n, _)| n == g).map(|(_, o)| *o);
            let lag = i.newest - committed.unwrap_or(i.oldest).clamp(i.oldest, i.newest);
            groups.entry(g.to_owned()).or_default().push(json!({
                "partition": i.partition,
                "oldest": i.oldest,
                "newest": i.newest,
                "committed": committed,
                "lag": lag,
            }));
        }
    }
    let groups: Vec<_> = groups
        .into_iter()
        .map(|(g, parts)| {
            let lag: u64 = parts.iter().filter_map(|p| p["lag"].as_u64()).sum();
            let short = g.split_once('.').map_or(g.as_str(), |(_, s)| s).to_owned();
            json!({"group": short, "lag": lag, "partitions": parts})
        })
        .collect();
    let body = json!({"topic": meta.name, "groups": groups});
    out.json(200, body.to_string().as_bytes());
    Ok(())
}

/// This core's metrics plus log sizes, storage state and damage (and, on the Kafka backend,
/// its handoff backlog and breaker).
pub fn local_snapshot(shard: &Shard) -> Snapshot {
    let mut s = shard.metrics.snapshot();
    for p in shard.parts.borrow().values() {
        s.log_bytes += p.borrow().log.size_bytes();
        s.partitions += 1;
    }
    let fault = shard.dur.fault.borrow();
    if fault.active() {
        s.store_faults
            .push(format!("core {}: {}", shard.id, fault.describe()));
    }
    s.log_open_files = shard.files.open_now() as u64;
    s.log_open_files_max = shard.files.max() as u64;
    s.log_file_evictions = shard.files.counters().1;
    s.response_bytes_held = shard.response_bytes.get() as u64;
    s.damage = shard.damage.borrow().iter().cloned().collect();
    if let Some(k) = &shard.kafka {
        s.kafka_breaker_open = k.breaker_open.get().into();
        s.handoff_bytes = crate::kafka::handoff::handoff_bytes(shard);
        s.handoff_backlog_messages = shard
            .parts
            .borrow()
            .values()
            .map(|p| crate::kafka::handoff::unreplayed(&p.borrow()))
            .sum();
    }
    s
}

async fn all_metrics(shard: &Rc<Shard>) -> Result<Snapshot, Error> {
    let mut total = Snapshot::default();
    for core in 0..shard.cores() {
        let s = shard
            .on_core(
                core,
                (),
                |()| async { local_snapshot(shard) },
                |(), reply| Msg::Metrics { reply },
            )
            .await?;
        total.add(&s);
    }
    Ok(total)
}

/// Why this gateway should not get traffic now (empty when it should).
fn not_ready(shard: &Shard, m: &Snapshot) -> Vec<String> {
    let mut why = m.store_faults.clone();
    if shard.shutdown.get() {
        why.push("shutting down".into());
    }
    why
}

/// `GET /ready`: 200 when this gateway can take traffic; 503 with the reasons when a core's
/// storage refuses writes or the gateway is draining.
pub async fn ready(shard: &Rc<Shard>, out: &mut Out<'_>) -> Result<(), Error> {
    let why = not_ready(shard, &all_metrics(shard).await?);
    if !why.is_empty() {
        return Err(Error::new(
            ErrorKind::NotReady,
            format!("not ready: {}", why.join("; ")),
        ));
    }
    out.json(200, b"{\"ready\":true}");
    Ok(())
}

/// `GET /metrics`
pub async fn metrics(shard: &Rc<Shard>, out: &mut Out<'_>) -> Result<(), Error> {
    let text = all_metrics(shard).await?.render(shard.cores());
    out.response(200)
        .body("text/plain; version=0.0.4", text.as_bytes());
    Ok(())
}

/// `GET /v1/status`
pub async fn process_status(shard: &Rc<Shard>, out: &mut Out<'_>) -> Result<(), Error> {
    let m = all_metrics(shard).await?;
    let why = not_ready(shard, &m);
    let damage: Vec<_> = m
        .damage
        .iter()
        .map(|d| {
            json!({
                "topic": d.topic,
                "partition": d.partition,
                "kind": match d.damage.kind {
                    kateway_log::DamageKind::TornTail => "torn-tail",
                    kateway_log::DamageKind::Corrupt => "corrupt",
                    kateway_log::DamageKind::MissingSegment => "missing-segment",
                },
                "segment": d.damage.segment,
                "position": d.damage.position,
                "bytes": d.damage.bytes,
                "offsets": [d.damage.offsets.start, d.damage.offsets.end],
                "records": d.damage.records(),
                "found_by": d.found_by,
                "at_ms": d.at_ms,
            })
        })
        .collect();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": if shard.kafka.is_some() { "kafka" } else { "embedded" },
        "ready": why.is_empty(),
        "not_ready": why,
        "handoff_backlog_messages": m.handoff_backlog_messages,
        "kafka_breaker_open_cores": m.kafka_breaker_open,
        "cores": shard.cores(),
        "uptime_s": shard.started.elapsed().as_secs(),
        "topics": shard.topics.borrow().len(),
        "connections": m.http_connections_active,
        "response_bytes_held": m.response_bytes_held,
        "log_bytes": m.log_bytes,
        "store": {
            "failed_cores": m.store_faults.len(),
            "faults": m.store_faults,
            "recovery_mode": match shard.cfg.store.recovery_mode {
                kateway_core::config::RecoveryMode::TolerateCorruption => "tolerate-corruption",
                kateway_core::config::RecoveryMode::TolerateTail => "tolerate-tail",
                kateway_core::config::RecoveryMode::Absolute => "absolute",
            },
            "open_files": m.log_open_files,
            "open_files_max": m.log_open_files_max,
            "damaged_records": m.log_damaged_records_total,
            "damaged_bytes": m.log_damaged_bytes_total,
            "damage": damage,
        },
        "shutting_down": shard.shutdown.get(),
    });
    out.json(200, body.to_string().as_bytes());
    Ok(())
}

/// Core 0: applies a topic administration call to the catalog and every core. Calls are
/// serialised by the caller. A creation or growth that fails on some core is rolled back, so a
/// failed call leaves nothing behind; a deletion frees the topic's space before it rewrites the
/// catalog, so it works on a full disk.
pub async fn apply_admin(shard: &Rc<Shard>, op: AdminOp) -> Result<TopicMeta, Error> {
    let data = crate::topics::catalog_path(&shard.cfg);
    let root = crate::topics::root(&shard.cfg);
    let mut catalog: Vec<TopicMeta> = shard
        .topics
        .borrow()
        .values()
        .map(|m| m.meta.clone())
        .collect();
    catalog.sort_by(|a, b| a.name.cmp(&b.name));
    let total: u64 = catalog.iter().map(|t| u64::from(t.partitions)).sum();
    let max = u64::from(shard.cfg.store.max_partitions);
    let fits = |old: u32, new: u32| -> Result<(), Error> {
        let after = total - u64::from(old) + u64::from(new);
        if new > old && after > max {
            return Err(Error::param(format!(
                "{new} partitions would bring this gateway to {after} partitions over all topics; it holds at most {max} (store.max_partitions)"
            )));
        }
        Ok(())
    };
    match op {
        AdminOp::Create(meta) => {
            if catalog.iter().any(|t| t.name == meta.name) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("topic {} already exists", meta.name),
                ));
            }
            fits(0, meta.partitions)?;
            catalog.push(meta.clone());
            crate::topics::store(&data, &catalog)?;
            if let Err(e) = broadcast_apply(shard, &meta).await {
                catalog.retain(|t| t.name != meta.name);
                forget(shard, &root, &data, &catalog, &meta.name).await;
                return Err(e);
            }
            Ok(meta)
        }
        AdminOp::Alter {
            name,
            partitions,
            retention_hours,
            retention_bytes,
        } => {
            let t = catalog.iter_mut().find(|t| t.name == name).ok_or_else(|| {
                Error::new(ErrorKind::UnknownTopic, format!("unknown topic {name}"))
            })?;
            let old = t.clone();
            if let Some(p) = partitions {
                if p < t.partitions {
                    return Err(Error::param(format!(
                        "partitions can only grow (now {})",
                        t.partitions
                    )));
                }
                fits(t.partitions, p)?;
                t.partitions = p;
            }
            if retention_hours.is_some() {
                t.retention_hours = retention_hours;
            }
            if retention_bytes.is_some() {
                t.retention_bytes = retention_bytes;
            }
            let meta = t.clone();
            crate::topics::store(&data, &catalog)?;
            if let Err(e) = broadcast_apply(shard, &meta).await {
                // Back to what it was: the catalog first, then every core.
                if let Some(t) = catalog.iter_mut().find(|t| t.name == name) {
                    *t = old.clone();
                }
                let _ = crate::topics::store(&data, &catalog);
                let _ = broadcast_apply(shard, &old).await;
                return Err(e);
            }
            Ok(meta)
        }
        AdminOp::Learn(meta) => {
            match catalog.iter_mut().find(|t| t.name == meta.name) {
                Some(t) if *t == meta => return Ok(meta),
                Some(t) => *t = meta.clone(),
                None => catalog.push(meta.clone()),
            }
            crate::topics::store(&data, &catalog)?;
            broadcast_apply(shard, &meta).await?;
            Ok(meta)
        }
        AdminOp::Delete(name) => {
            let meta = catalog
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::new(ErrorKind::UnknownTopic, format!("unknown topic {name}"))
                })?;
            catalog.retain(|t| t.name != name);
            forget(shard, &root, &data, &catalog, &name).await;
            Ok(meta)
        }
    }
}

/// Makes every core forget topic `name`, moves its directory into the trash (freeing its
/// space) and writes `catalog` (which no longer lists it). If the catalog cannot be written
/// the trash marker stays, and the next start completes the deletion.
async fn forget(shard: &Rc<Shard>, root: &Path, data: &Path, catalog: &[TopicMeta], name: &str) {
    for core in 0..shard.cores() {
        let _ = shard
            .on_core(
                core,
                (),
                |()| async { shard.drop_topic(name) },
                |(), reply| Msg::Drop {
                    name: name.to_owned(),
                    reply,
                },
            )
            .await;
    }
    let marker = match crate::topics::trash(root, name) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(topic = name, "cannot move the topic into the trash: {e}");
            let _ = std::fs::remove_dir_all(crate::topics::topic_dir(root, name));
            None
        }
    };
    match crate::topics::store(data, catalog) {
        Ok(()) => {
            if let Some(m) = marker {
                crate::topics::remove_any(&m);
            }
        }
        Err(e) => tracing::error!(
            topic = name,
            "the topic is gone but the catalog could not be rewritten ({e}); the next start completes the deletion"
        ),
    }
}

async fn broadcast_apply(shard: &Rc<Shard>, meta: &TopicMeta) -> Result<(), Error> {
    for core in 0..shard.cores() {
        shard
            .on_core(
                core,
                (),
                |()| async { shard.apply_topic(meta.clone()) },
                |(), reply| Msg::Apply {
                    meta: meta.clone(),
                    reply,
                },
            )
            .await??;
    }
    Ok(())
}
