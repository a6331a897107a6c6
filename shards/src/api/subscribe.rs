//! Subscribe: `GET /v1/msgs/:appid/:topic/:ver?group=` (long poll, batch, explicit ack, tag
//! filter), `PUT /v1/offsets/...` (batch ack) and `PUT /v1/offset/...` (seek).
//!
//! Groups are stateless for clients: the owner core of each partition keeps the group's cursor
//! (next offset to hand out) and committed offset, so any request on any connection continues
//! where the group is, and two consumers of one group never get the same message (each fetch
//! advances the cursor on the owner core, which serialises them). With auto-ack (the default)
//! delivery commits; with `ack=1` only acknowledgements commit, and after a restart the group
//! resumes from its last committed offset, so unacknowledged messages come back.

use super::{caller, Out};
use crate::kafka::groups::{self, FetchReq, GroupReq};
use crate::mesh::{Delivered, Fetch, Msg, Reset};
use crate::metrics;
use crate::shard::{Held, LocalTopic, Shard};
use crate::topics::TopicMeta;
use bytes::{Bytes, BytesMut};
use kateway_core::units::parse_duration;
use kateway_core::{Error, ErrorKind, GroupName};
use kateway_proto::batch;
use kateway_proto::http1::chunked::{encode_chunk, encode_last};
use kateway_proto::http1::Request;
use kateway_proto::query;
use std::rc::Rc;
use std::time::Instant;

fn bad_ack(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidAck, msg)
}

/// Handles a subscribe long poll.
pub async fn subscribe(
    shard: &Rc<Shard>,
    req: &Request,
    appid: &str,
    topic: &str,
    ver: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let me = caller(req)?;
    let meta = shard.resolve(appid, topic, ver).await?;
    let name = meta.name.clone();
    let q = req.query();
    let scfg = &shard.cfg.subscribe;
    let group = match query::raw(q, "group") {
        None | Some("") => {
            return Err(Error::new(
                ErrorKind::MissingGroup,
                "missing group parameter",
            ))
        }
        Some(g) => GroupName::new(me, g)?.to_string(),
    };
    let batch_n = match query::raw(q, "batch") {
        None => None,
        Some(b) => match b.parse::<u32>() {
            Ok(n) if n >= 1 && n <= scfg.max_batch => Some(n as usize),
            _ => {
                return Err(Error::param(format!(
                    "invalid batch {b:?}: use 1..={}",
                    scfg.max_batch
                )))
            }
        },
    };
    let wait = match query::raw(q, "wait") {
        None => scfg.default_wait.0,
        Some(w) => match parse_duration(w) {
            Ok(d) if d <= scfg.max_wait.0 => d,
            _ => {
                return Err(Error::param(format!(
                    "invalid wait {w:?}: a duration up to {:?}",
                    scfg.max_wait.0
                )))
            }
        },
    };
    let reset = match query::raw(q, "reset") {
        None | Some("oldest") => Reset::Oldest,
        Some("newest") => Reset::Newest,
        Some(r) => {
            return Err(Error::param(format!(
                "invalid reset {r:?}: use newest or oldest"
            )))
        }
    };
    let explicit = matches!(query::raw(q, "ack"), Some("1") | Some("true"));
    if explicit {
        if let Some((p, o)) = ack_headers(req, &meta)? {
            commit(shard, &meta, p, &group, o + 1, false).await?;
        }
    }
    let tags: Vec<Bytes> = req
        .header("x-tag")
        .map(|t| {
            t.split(|&b| b == b';')
                .map(|s| s.trim_ascii())
                .filter(|s| !s.is_empty())
                .map(Bytes::copy_from_slice)
                .collect()
        })
        .unwrap_or_default();
    let ndjson = req
        .header_str("accept")
        .is_some_and(|a| a.contains(batch::NDJSON));
    let fetch = Fetch {
        topic: name.clone(),
        group,
        max: batch_n.unwrap_or(1),
        max_bytes: scfg.max_batch_bytes.0 as usize,
        reset,
        auto_ack: !explicit,
        tags,
    };

    let (msgs, held) = poll(shard, &meta, fetch, Instant::now() + wait).await?;
    if msgs.is_empty() {
        out.close |= shard.shutdown.get();
        out.response(204).body("", b"");
        return Ok(());
    }
    let mut held = held.expect("records come with their hold");
    let start = out.buf.len();
    if batch_n.is_none() && !ndjson {
        let m = &msgs[0];
        let mut r = out
            .response(200)
            .header_int("x-partition", m.partition.into())
            .header_int("x-offset", m.offset as i64);
        if !m.key.is_empty() {
            r = r.header("x-key", &m.key);
        }
        if !m.tags.is_empty() {
            r = r.header("x-tag", &m.tags);
        }
        r.body("application/octet-stream", &m.value);
        held.resize(out.buf.len() - start);
        out.held.push(held);
        return Ok(());
    }
    let size: usize = msgs.iter().map(|m| m.value.len() + 64).sum();
    let mut body = BytesMut::with_capacity(size);
    for m in &msgs {
        if ndjson {
            batch::put_json_line(
                &mut body,
                m.partition,
                m.offset,
                m.timestamp,
                &m.key,
                &m.tags,
                &m.value,
            );
        } else {
            batch::put_record(&mut body, m.partition, m.offset, &m.value);
        }
    }
    let ctype = if ndjson {
        batch::NDJSON
    } else {
        "application/octet-stream"
    };
    out.response(200).chunked(ctype);
    encode_chunk(out.buf, &body);
    encode_last(out.buf);
    held.resize(out.buf.len() - start);
    out.held.push(held);
    Ok(())
}

/// Reads `X-Partition`/`X-Offset` of an explicit ack: both or neither; `-1` means nothing.
fn ack_headers(req: &Request, meta: &TopicMeta) -> Result<Option<(u32, u64)>, Error> {
    let p = req.header_str("x-partition").map(str::trim);
    let o = req.header_str("x-offset").map(str::trim);
    let (p, o) = match (p, o) {
        (None, None) => return Ok(None),
        (Some(p), Some(o)) => (p, o),
        _ => return Err(bad_ack("partial ack: send both X-Partition and X-Offset")),
    };
    let p: i64 = p.parse().map_err(|_| bad_ack("ack with bad partition"))?;
    let o: i64 = o.parse().map_err(|_| bad_ack("ack with bad offset"))?;
    if p == -1 && o == -1 {
        return Ok(None);
    }
    if p < 0 || p >= meta.partitions as i64 || o < 0 {
        return Err(bad_ack(format!(
            "ack names partition {p} offset {o}, which does not exist"
        )));
    }
    Ok(Some((p as u32, o as u64)))
}

/// Commits `next` (the next offset to consume) for a group on the partition's owner core;
/// with `seek` the group's position moves there, backwards too.
async fn commit(
    shard: &Rc<Shard>,
    meta: &TopicMeta,
    p: u32,
    group: &str,
    next: u64,
    seek: bool,
) -> Result<(), Error> {
    if shard.kafka.is_some() {
        let (reply, rx) = flume::bounded(1);
        let req = GroupReq::Commit {
            partition: p,
            next,
            seek,
            reply,
        };
        groups::send(shard, group, &meta.name, Reset::Oldest, req)?;
        return rx.recv_async().await.map_err(|_| {
            Error::new(
                ErrorKind::KafkaUnavailable,
                "consumer group membership closed",
            )
        })?;
    }
    let owner = meta.owner(p, shard.cores());
    shard
        .on_core(
            owner,
            (),
            |()| shard.commit_local(&meta.name, p, group, next, seek),
            |(), reply| Msg::Commit {
                topic: meta.name.clone(),
                partition: p,
                group: group.to_owned(),
                offset: next,
                seek,
                reply,
            },
        )
        .await?
}

/// Fetches from every core owning partitions of the topic, starting with a different core on
/// every call.
async fn fetch_all(
    shard: &Rc<Shard>,
    topic: &LocalTopic,
    f: &Fetch,
) -> Result<Vec<Delivered>, Error> {
    // Rotate the starting core per request so that no core's partitions starve the others'.
    let turn = shard.rr.get();
    shard.rr.set(turn.wrapping_add(1));
    let owners = &topic.owner_cores;
    let n = owners.len();
    let mut out: Vec<Delivered> = Vec::new();
    let mut bytes = 0;
    for core in (0..n).map(|i| owners[(turn + i) % n]) {
        let left = f.max - out.len();
        if left == 0 || bytes >= f.max_bytes {
            break;
        }
        let mut f = f.clone();
        f.max = left;
        f.max_bytes -= bytes;
        let got = shard
            .on_core(
                core,
                f,
                |f| async move { shard.fetch_local(&f) },
                |fetch, reply| Msg::Fetch { fetch, reply },
            )
            .await??;
        bytes += got.iter().map(|m| m.value.len()).sum::<usize>();
        out.extend(got);
    }
    Ok(out)
}

/// A long poll parked on a topic: registered with the owner cores while it lives.
struct Parked {
    shard: Rc<Shard>,
    topic: Rc<str>,
    remote: Vec<usize>,
}

impl Parked {
    async fn new(shard: &Rc<Shard>, meta: &LocalTopic) -> Self {
        let topic: Rc<str> = Rc::from(meta.name.as_str());
        let remote: Vec<usize> = meta
            .owner_cores
            .iter()
            .copied()
            .filter(|&c| c != shard.id)
            .collect();
        let first = {
            let mut parked = shard.parked.borrow_mut();
            let n = parked.entry(topic.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        metrics::inc(&shard.metrics.sub_parked_polls);
        if first {
            for &c in &remote {
                shard
                    .mesh
                    .send(
                        c,
                        Msg::Interest {
                            topic: meta.name.clone(),
                            core: shard.id,
                            delta: 1,
                        },
                    )
                    .await;
            }
        }
        Self {
            shard: shard.clone(),
            topic,
            remote,
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        metrics::dec(&self.shard.metrics.sub_parked_polls);
        let last = {
            let mut parked = self.shard.parked.borrow_mut();
            let n = parked.get_mut(&self.topic).map(|n| {
                *n -= 1;
                *n
            });
            if n == Some(0) {
                parked.remove(&self.topic);
            }
            n == Some(0)
        };
        if last {
            for &c in &self.remote {
                let mesh = self.shard.mesh.clone();
                let msg = Msg::Interest {
                    topic: self.topic.to_string(),
                    core: self.shard.id,
                    delta: -1,
                };
                monoio::spawn(async move { mesh.send(c, msg).await });
            }
        }
    }
}

/// Fetches; if nothing is there, parks until new data, the deadline or shutdown. Records come
/// with the response bytes held for them; nothing is held while parked.
async fn poll(
    shard: &Rc<Shard>,
    meta: &LocalTopic,
    mut f: Fetch,
    deadline: Instant,
) -> Result<(Vec<Delivered>, Option<Held>), Error> {
    if shard.kafka.is_some() {
        return poll_kafka(shard, meta, f, deadline).await;
    }
    let want = f.max_bytes;
    let ev = shard.topic_event(&meta.name);
    let mut seen = ev.epoch();
    let got = fetch_held(shard, meta, &mut f, want).await?;
    if !got.0.is_empty() || shard.shutdown.get() || Instant::now() >= deadline {
        return Ok(got);
    }
    // Register before fetching again: a Wake for data appended after the owners saw the
    // interest is then guaranteed, and data appended before it is found by this fetch.
    let _parked = Parked::new(shard, meta).await;
    loop {
        let got = fetch_held(shard, meta, &mut f, want).await?;
        if !got.0.is_empty() || shard.shutdown.get() {
            return Ok(got);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(got);
        }
        if ev.epoch() == seen {
            let _ = monoio::time::timeout(left, ev.wait(seen)).await;
        }
        seen = ev.epoch();
        if shard.topics.borrow().get(meta.name.as_str()).is_none() {
            return Err(Error::new(
                ErrorKind::UnknownTopic,
                format!("topic {} was deleted", meta.name),
            ));
        }
    }
}

/// One fetch with up to `want` response bytes held for what it finds.
async fn fetch_held(
    shard: &Rc<Shard>,
    meta: &LocalTopic,
    f: &mut Fetch,
    want: usize,
) -> Result<(Vec<Delivered>, Option<Held>), Error> {
    let held = shard.hold_response(want)?;
    f.max_bytes = held.bytes();
    let msgs = fetch_all(shard, meta, f).await?;
    let held = (!msgs.is_empty()).then_some(held);
    Ok((msgs, held))
}

/// Kafka backend: asks the group's membership, which answers when it has records or at the
/// deadline; shutdown answers at once (the membership then keeps the records). The answer
/// comes within the deadline plus [`KAFKA_GRACE`] whatever Kafka is doing: a membership stuck
/// in a call to an unresponsive broker gets 503 with `Retry-After`.
async fn poll_kafka(
    shard: &Rc<Shard>,
    meta: &LocalTopic,
    f: Fetch,
    deadline: Instant,
) -> Result<(Vec<Delivered>, Option<Held>), Error> {
    if shard.shutdown.get() {
        return Ok((Vec::new(), None));
    }
    // Not held while the membership waits for records; counted once they arrive.
    let budget = shard.hold_response(f.max_bytes)?;
    let (reply, rx) = flume::bounded(1);
    let req = GroupReq::Fetch(FetchReq {
        max: f.max,
        max_bytes: budget.bytes(),
        deadline,
        tags: f.tags,
        auto_ack: f.auto_ack,
        reply,
    });
    drop(budget);
    groups::send(shard, &f.group, &meta.name, f.reset, req)?;
    metrics::inc(&shard.metrics.sub_parked_polls);
    let seen = shard.shutdown_event.epoch();
    let limit = deadline.saturating_duration_since(Instant::now()) + KAFKA_GRACE;
    let got = monoio::select! {
        r = monoio::time::timeout(limit, rx.recv_async()) => match r {
            Ok(r) => r.map_err(|_| {
                Error::new(ErrorKind::KafkaUnavailable, "consumer group membership closed")
            }),
            Err(_) => Err(Error::new(
                ErrorKind::KafkaUnavailable,
                "kafka did not answer for this consumer group in time",
            )),
        },
        _ = shard.shutdown_event.wait(seen) => Ok(Ok(Vec::new())),
    };
    metrics::dec(&shard.metrics.sub_parked_polls);
    let msgs = got??;
    metrics::add(&shard.metrics.sub_messages_total, msgs.len() as u64);
    let bytes: usize = msgs.iter().map(|m| m.value.len()).sum();
    metrics::add(&shard.metrics.sub_bytes_total, bytes as u64);
    let held = (!msgs.is_empty()).then(|| shard.account_response(bytes));
    Ok((msgs, held))
}

/// How long past its deadline a subscribe on the Kafka backend waits for its membership.
const KAFKA_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `PUT /v1/offset/:appid/:topic/:ver/:group/:partition?offset=N`: moves a group's position on
/// one partition (backwards to re-read, or forwards past records to skip, such as damaged ones
/// that the recovery mode does not skip by itself). `N` is the next offset to consume.
#[allow(clippy::too_many_arguments)]
pub async fn seek(
    shard: &Rc<Shard>,
    req: &Request,
    appid: &str,
    topic: &str,
    ver: &str,
    group: &str,
    partition: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let me = caller(req)?;
    let meta = shard.resolve(appid, topic, ver).await?;
    let group = GroupName::new(me, group)?.to_string();
    let p: u32 = partition
        .parse()
        .ok()
        .filter(|&p| p < meta.partitions)
        .ok_or_else(|| bad_ack(format!("partition {partition:?} does not exist")))?;
    let q = req.query();
    if query::raw(q, "time").is_some() {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            "seeking by time is not supported: use offset",
        ));
    }
    let offset: u64 = match query::raw(q, "offset") {
        Some(o) => o
            .parse()
            .map_err(|_| Error::param(format!("invalid offset {o:?}")))?,
        None => return Err(Error::param("missing offset parameter")),
    };
    commit(shard, &meta, p, &group, offset, true).await?;
    out.json(200, b"{\"ok\":1}");
    Ok(())
}

/// `PUT /v1/offsets/:appid/:topic/:ver/:group` with `[{"partition":p,"offset":o}]`, where `o`
/// is the last processed offset; the group resumes at `o + 1`.
pub async fn ack_batch(
    shard: &Rc<Shard>,
    req: &Request,
    appid: &str,
    topic: &str,
    ver: &str,
    group: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AckItem {
        partition: u32,
        offset: u64,
    }
    let me = caller(req)?;
    let meta = shard.resolve(appid, topic, ver).await?;
    let group = GroupName::new(me, group)?.to_string();
    let items: Vec<AckItem> = serde_json::from_slice(&req.body).map_err(|e| {
        Error::new(
            ErrorKind::InvalidBody,
            format!("invalid ack json body: {e}"),
        )
    })?;
    if items.is_empty() {
        return Err(Error::new(ErrorKind::InvalidBody, "empty ack list"));
    }
    for it in &items {
        if it.partition >= meta.partitions {
            return Err(bad_ack(format!(
                "partition {} does not exist",
                it.partition
            )));
        }
    }
    for it in &items {
        commit(shard, &meta, it.partition, &group, it.offset + 1, false).await?;
    }
    out.json(200, b"{\"ok\":1}");
    Ok(())
}
