//! Status: partition offsets, a caller's groups with their lag, process status, readiness and
//! Prometheus metrics (summed over cores).

use crate::node::Core;
use kateway_core::{Error, ErrorKind, GroupName, Groups};
use kateway_proto::command::{Caller, TopicPath};
use kateway_proto::reply::Reply;
use serde_json::json;
use std::rc::Rc;

fn json_reply(status: u16, v: serde_json::Value) -> Reply {
    Reply::json(status, v.to_string())
}

/// `GET /v1/partitions/:appid/:topic/:ver`
pub async fn partitions(core: &Rc<Core>, t: TopicPath<'_>) -> Result<Reply, Error> {
    let meta = core.backend.resolve(&t).await?;
    let infos = core.backend.info(&meta, &Groups::None).await?;
    let parts: Vec<_> = infos
        .iter()
        .map(|i| json!({"partition": i.partition, "oldest": i.oldest, "newest": i.newest}))
        .collect();
    Ok(json_reply(
        200,
        json!({"topic": meta.name.as_ref(), "partitions": meta.partitions, "offsets": parts}),
    ))
}

/// `GET /v1/status/:appid/:topic/:ver?group=`: groups on a topic with their committed offsets
/// and lag per partition: the owner of the topic (or an operator) sees every app's groups (named
/// `<appid>.<group>`: who consumes my topic), a subscriber its own.
pub async fn topic(
    core: &Rc<Core>,
    caller: Caller<'_>,
    t: TopicPath<'_>,
    group: Option<&str>,
) -> Result<Reply, Error> {
    let me = caller.appid()?;
    let meta = core.backend.resolve(&t).await?;
    let everyone = me == t.appid || caller.principal().is_some_and(|p| p.operator());
    let query = match group {
        Some(g) => Groups::Exact(GroupName::new(me, g)?.to_string()),
        None if everyone => Groups::Prefix(String::new()),
        None => Groups::Prefix(format!("{me}.")),
    };
    let (infos, unmeasured) = core.backend.info_within(&meta, &query).await?;
    let exact = match &query {
        Groups::Exact(g) => Some(g.as_str()),
        _ => None,
    };
    let mut groups: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    if let Some(g) = exact {
        groups.insert(g.to_owned(), Vec::new());
    }
    for i in &infos {
        let mut names: Vec<&str> = i.groups.iter().map(|(g, _)| g.as_str()).collect();
        if let Some(g) = exact {
            names.retain(|n| *n == g);
            if names.is_empty() {
                names.push(g);
            }
        }
        for g in names {
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
            let (app, short) = g.split_once('.').unwrap_or(("", g.as_str()));
            json!({"group": short, "app": app, "lag": lag, "partitions": parts})
        })
        .collect();
    let mut out = json!({"topic": meta.name.as_ref(), "groups": groups});
    if unmeasured > 0 {
        out["unmeasured_groups"] = json!(unmeasured);
    }
    Ok(json_reply(200, out))
}

/// Why this gateway should not get traffic now (empty when it should).
fn not_ready(core: &Core, faults: &[String]) -> Vec<String> {
    let mut why = faults.to_vec();
    if core.shard.shutdown.get() || core.shard.unready.get() {
        why.push("shutting down".into());
    }
    if let Some(backend) = core.backend.not_ready() {
        why.push(backend.into());
    }
    if !core.shard.tenancy.ready() {
        why.push("the tenancy metadata is not loaded yet".into());
    }
    why
}

/// `GET /ready`: 200 when this gateway can take traffic; 503 with the reasons when a core's
/// storage refuses writes or the gateway is draining.
pub async fn ready(core: &Rc<Core>) -> Result<Reply, Error> {
    let m = core.all_metrics().await?;
    let why = not_ready(core, &m.store_faults);
    if !why.is_empty() {
        return Err(Error::new(
            ErrorKind::NotReady,
            format!("not ready: {}", why.join("; ")),
        ));
    }
    Ok(Reply::json(200, &b"{\"ready\":true}"[..]))
}

/// `GET /metrics`
pub async fn metrics(core: &Rc<Core>) -> Result<Reply, Error> {
    let cfg = &core.shard.cfg().metrics;
    let (topics, groups) = (cfg.max_topic_series as usize, cfg.max_group_series as usize);
    let text = core
        .all_metrics()
        .await?
        .render(core.shard.cores(), topics, groups);
    Ok(Reply::bytes(200, "text/plain; version=0.0.4", text))
}

/// `GET /v1/status`
pub async fn process(core: &Rc<Core>) -> Result<Reply, Error> {
    let m = core.all_metrics().await?;
    let shard = &core.shard;
    let why = not_ready(core, &m.store_faults);
    let damage: Vec<_> = m
        .damage
        .iter()
        .map(|d| {
            json!({
                "topic": d.topic,
                "partition": d.partition,
                "kind": d.damage.kind.name(),
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
    Ok(json_reply(
        200,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backend": core.backend.name(),
            "ready": why.is_empty(),
            "not_ready": why,
            "handoff_backlog_messages": m.handoff_backlog_messages,
            "kafka_breaker_open_cores": m.kafka_breaker_open,
            "cores": shard.cores(),
            "pid": std::process::id(),
            "uptime_s": shard.started.elapsed().as_secs(),
            "topics": shard.catalog.borrow().len(),
            "connections": m.http_connections_active,
            "response_bytes_held": m.response_bytes_held,
            "log_bytes": m.log_bytes,
            "store": {
                "failed_cores": m.store_faults.len(),
                "faults": m.store_faults,
                "recovery_mode": match shard.cfg().store.recovery_mode {
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
        }),
    ))
}

/// `POST /v1/config/reload`: the process's main thread reads the configuration again and puts
/// what may change live in force on every core; 200 with the changed keys, or 422 (42201) why
/// nothing changed.
pub async fn reload(core: &Rc<Core>) -> Result<Reply, Error> {
    let (tx, rx) = flume::bounded(1);
    let gone = || Error::new(ErrorKind::ShuttingDown, "the gateway is shutting down");
    core.shard
        .reload
        .send(crate::request::ReloadAsk(tx))
        .map_err(|_| gone())?;
    match rx.recv_async().await.map_err(|_| gone())? {
        Ok(changed) => Ok(Reply::json(200, json!({ "changed": changed }).to_string())),
        Err(e) => Err(Error::new(ErrorKind::ConfigRefused, e)),
    }
}
