//! The live dashboard (`/ui`): its page, compiled into the binary (`shards/ui/dashboard.html`,
//! no build step, no external assets); the snapshot it draws (`GET /v1/dashboard`: topics with
//! their partitions, end offsets and each group's lag per partition, publish and consume
//! counters, the cores with their connections, requests and fsync times, the Kafka backend's
//! breaker and handoff backlog), once or every second as server-sent events; and its message
//! browser (`GET /v1/dashboard/messages/...`: the latest messages of a partition). Rates and
//! sparklines are computed by the page from successive snapshots. The operator sees everything;
//! an app's admin key sees its app's topics (`?app=`), without the process's cores and backend.

use super::stream::{Chunk, EventSource};
use crate::node::Core;
use bytes::BytesMut;
use kateway_core::{Delivered, Error, ErrorKind, GroupName, Groups};
use kateway_proto::command::TopicPath;
use kateway_proto::reply::{RecordFormat, Reply};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The page.
const PAGE: &str = include_str!("../../ui/dashboard.html");

/// Topics a snapshot describes at most (by name); the rest are counted.
const MAX_TOPICS: usize = 50;

/// How often the event stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// The time a snapshot spends measuring topics' offsets and lags (a query of the cluster per
/// topic on Kafka); topics past it keep the figures of an earlier snapshot of the same stream,
/// and are measured first the next time.
const BUDGET: Duration = Duration::from_millis(1500);

/// What a stream's earlier snapshots measured, per topic, and where to start measuring next.
#[derive(Default)]
pub struct Measured {
    partitions: std::collections::HashMap<String, Value>,
    next: usize,
}

/// The group the message browser reads with (in the topic owner's app); its offsets are moved
/// for each look and mean nothing else.
const BROWSER: &str = "kateway-dashboard-browser";

/// `GET /ui`
pub fn page() -> Reply {
    Reply::bytes(200, "text/html; charset=utf-8", PAGE.as_bytes()).header(
        "cache-control",
        kateway_proto::reply::Value::Static("no-cache"),
    )
}

/// `GET /v1/dashboard`: one snapshot.
pub async fn snapshot_reply(core: &Rc<Core>, app: Option<&str>) -> Result<Reply, Error> {
    let v = snapshot(core, &mut Measured::default(), app).await?;
    Ok(Reply::json(200, v.to_string()))
}

/// What the dashboard draws, now (topics' offsets within `BUDGET`, the rest from `measured`);
/// with `app`, that app's topics only, and no cores or backend state.
pub async fn snapshot(
    core: &Rc<Core>,
    measured: &mut Measured,
    app: Option<&str>,
) -> Result<Value, Error> {
    let per_core = core.per_core_metrics().await?;
    let mut total = crate::metrics::Snapshot::default();
    for s in &per_core {
        total.add(s);
    }
    let cores: Vec<Value> = per_core
        .iter()
        .filter(|_| app.is_none())
        .enumerate()
        .map(|(i, s)| {
            json!({
                "core": i,
                "connections": s.http_connections_active,
                "requests": s.http_requests_total,
                "fsyncs": s.fsync_seconds.count(),
                "fsync_ns": s.fsync_seconds.sum_ns(),
            })
        })
        .collect();
    let topics: Vec<Rc<crate::catalog::LocalTopic>> = {
        let c = core.shard.catalog.borrow();
        let mine = |n: &str| app.is_none_or(|a| n.split('.').next() == Some(a));
        let mut names: Vec<String> = c
            .stats()
            .map(|(n, _)| n)
            .filter(|n| mine(n))
            .map(str::to_string)
            .collect();
        names.sort();
        names.iter().filter_map(|n| c.get(n).ok()).collect()
    };
    let count = topics.len();
    let shown: Vec<_> = topics.into_iter().take(MAX_TOPICS).collect();
    // Measured in turn from where the last snapshot stopped, within the budget.
    let started = Instant::now();
    let first = measured.next.min(shown.len());
    let mut stopped = None;
    for (i, t) in shown
        .iter()
        .enumerate()
        .cycle()
        .skip(first)
        .take(shown.len())
    {
        if started.elapsed() >= BUDGET {
            stopped = Some(i);
            break;
        }
        // A topic that cannot be measured now (Kafka unreachable) keeps its last figures.
        if let Ok(infos) = core.backend.info(t, &Groups::Prefix(String::new())).await {
            measured
                .partitions
                .insert(t.name.to_string(), partitions_json(&infos));
        }
    }
    measured.next = stopped.unwrap_or(first);
    let mut out = Vec::new();
    for t in &shown {
        let counts = total
            .labelled
            .topics
            .get(t.name.as_ref())
            .copied()
            .unwrap_or_default();
        let partitions = measured
            .partitions
            .get(t.name.as_ref())
            .cloned()
            .unwrap_or_else(|| json!([]));
        out.push(json!({
            "topic": t.name.as_ref(),
            "partitions": partitions,
            "published": counts[0],
            "published_bytes": counts[1],
            "delivered": counts[2],
            "delivered_bytes": counts[3],
        }));
    }
    let kafka = (core.backend.name() == "kafka" && app.is_none()).then(|| {
        json!({
            "breaker_open_cores": total.kafka_breaker_open,
            "handoff_backlog_messages": total.handoff_backlog_messages,
        })
    });
    Ok(json!({
        "at_ms": crate::shard::now_ms(),
        "backend": core.backend.name(),
        "pid": std::process::id(),
        "uptime_s": core.shard.started.elapsed().as_secs(),
        "cores": cores,
        "kafka": kafka,
        "topics": out,
        "topics_total": count,
    }))
}

/// Partitions with their offsets and each group's lag (the browser's own group left out).
fn partitions_json(infos: &[kateway_core::PartitionInfo]) -> Value {
    infos
        .iter()
        .map(|i| {
            let groups: BTreeMap<&str, u64> = i
                .groups
                .iter()
                .filter(|(g, _)| !g.ends_with(BROWSER))
                .map(|(g, o)| (g.as_str(), i.newest.saturating_sub((*o).max(i.oldest))))
                .collect();
            json!({"partition": i.partition, "oldest": i.oldest, "newest": i.newest, "lag": groups})
        })
        .collect()
}

/// `GET /v1/dashboard` with `Accept: text/event-stream`: a `snapshot` event at once and every
/// second after, until the client goes away or the core drains.
pub struct Snapshots {
    core: Rc<Core>,
    app: Option<String>,
    first: bool,
    measured: Measured,
}

impl Snapshots {
    /// The stream of everything, or of `app`'s view.
    pub fn new(core: Rc<Core>, app: Option<String>) -> Self {
        Snapshots {
            core,
            app,
            first: true,
            measured: Measured::default(),
        }
    }
}

impl EventSource for Snapshots {
    async fn next(&mut self) -> Option<Chunk> {
        let shard = &self.core.shard;
        if !std::mem::replace(&mut self.first, false) {
            let seen = shard.shutdown_event.epoch();
            if shard.shutdown.get() {
                return None;
            }
            monoio::select! {
                _ = monoio::time::sleep(EVERY) => {},
                _ = shard.shutdown_event.wait(seen) => return None,
            }
        }
        let mut data = BytesMut::new();
        match snapshot(&self.core, &mut self.measured, self.app.as_deref()).await {
            Ok(v) => {
                data.extend_from_slice(b"event: snapshot\ndata: ");
                data.extend_from_slice(v.to_string().as_bytes());
                data.extend_from_slice(b"\n\n");
                Some(Chunk { data, hold: None })
            }
            Err(e) => Some(Chunk::error(&e)),
        }
    }
}

/// `GET /v1/dashboard/messages/:appid/:topic/:ver?partition=&n=`: the latest `n` messages of a
/// partition, oldest first (ndjson), read with the browser's own group, which is moved there
/// for the look (every other partition of it to its end). A look that takes longer than
/// `BROWSE_LIMIT` (a Kafka consumer group forming) answers 503 (50309), to be asked again.
pub async fn browse(
    core: &Rc<Core>,
    path: TopicPath<'_>,
    partition: u32,
    n: usize,
) -> Result<Reply, Error> {
    monoio::time::timeout(BROWSE_LIMIT, look(core, path, partition, n))
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Busy,
                "the partition could not be read in time (a consumer group forming): try again",
            ))
        })
}

/// How long a look at a partition may take.
const BROWSE_LIMIT: Duration = Duration::from_secs(6);

async fn look(
    core: &Rc<Core>,
    path: TopicPath<'_>,
    partition: u32,
    n: usize,
) -> Result<Reply, Error> {
    let topic = core.backend.resolve(&path).await?;
    if partition >= topic.meta.partitions {
        return Err(Error::new(
            ErrorKind::UnknownTopic,
            format!(
                "{} has partitions 0 to {}",
                topic.name,
                topic.meta.partitions.saturating_sub(1)
            ),
        ));
    }
    let group = GroupName::new(path.appid, BROWSER)?.to_string();
    let infos = core.backend.info(&topic, &Groups::None).await?;
    if infos
        .iter()
        .any(|i| i.partition == partition && i.newest <= i.oldest)
    {
        return Ok(Reply::empty(204));
    }
    let mut from = 0;
    for i in &infos {
        let at = if i.partition == partition {
            from = i.newest.saturating_sub(n as u64).max(i.oldest);
            from
        } else {
            i.newest
        };
        // On Kafka a commit can be refused while the group (re)forms: tried again a few times.
        let mut tries = 0;
        while let Err(e) = core
            .backend
            .commit(&topic, i.partition, &group, at, true)
            .await
        {
            tries += 1;
            if tries == 5 {
                return Err(e);
            }
            monoio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // A Kafka consumer group may take a moment to form on the first look.
    let got: Vec<Delivered> = super::dlq::take(core, &topic, &group, n, Duration::from_secs(2))
        .await?
        .into_iter()
        .filter(|r| r.partition == partition && r.offset >= from)
        .collect();
    if got.is_empty() {
        return Ok(Reply::empty(204));
    }
    Ok(Reply::records(200, RecordFormat::NdJson, got))
}
