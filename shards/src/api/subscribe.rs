//! Subscribe: `GET /v1/msgs/:appid/:topic/:ver?group=` (long poll, batch, explicit ack, tag
//! filter), `PUT /v1/offsets/...` (batch ack) and `PUT /v1/offset/...` (seek). Groups belong to
//! the caller (`<caller>.<group>`) and are stateless for clients: any request on any connection
//! continues where the group is. With auto-ack (the default) delivery commits; with `ack=1`
//! only acknowledgements commit, and after a restart the group resumes from its last committed
//! offset, so unacknowledged messages come back.

use crate::catalog::LocalTopic;
use crate::delivery::Subscription;
use crate::node::Core;
use crate::request::Fetch;
use kateway_core::{Error, ErrorKind, GroupName};
use kateway_proto::command::{AckBatch, Caller, Seek, Subscribe};
use kateway_proto::reply::{RecordFormat, Reply, Value};
use std::rc::Rc;
use std::time::Instant;

fn bad_ack(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidAck, msg)
}

fn partition(meta: &LocalTopic, p: u32) -> Result<u32, Error> {
    if p < meta.partitions {
        Ok(p)
    } else {
        Err(bad_ack(format!("partition {p} does not exist")))
    }
}

/// The offset after the last processed one `o`.
fn next(o: u64) -> Result<u64, Error> {
    o.checked_add(1)
        .ok_or_else(|| bad_ack(format!("offset {o} is beyond the end of any partition")))
}

/// Opens the caller's group's subscription for a subscribe (a long poll, an event stream or a
/// WebSocket), `max` messages per batch: commits an explicit ack first, and for a stream that
/// resumes after an event id (`partition:offset`), moves the group on that partition to right
/// after it.
pub async fn open(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: &Subscribe<'_>,
    max: usize,
) -> Result<Subscription, Error> {
    let app = caller.appid()?;
    let group = GroupName::new(app, s.group)?.to_string();
    let meta = core.backend.resolve(&s.topic).await?;
    if let Some(l) = s.lease {
        // Leased: settled by receipt, never by offset.
        crate::queue::dead::topic_of(&group)?;
        let fetch = Fetch {
            topic: meta.name.to_string(),
            group,
            max,
            max_bytes: core.shard.cfg().subscribe.max_batch_bytes.0 as usize,
            reset: s.reset,
            auto_ack: false,
            tags: Vec::new(),
        };
        let sub = Subscription::new(core.shard.clone(), core.backend.clone(), meta, fetch)
            .leased(core.queues.clone(), l.visibility);
        return Ok(if core.shard.tenancy.quota_on_subscribe(app) {
            sub.charged_to(app)
        } else {
            sub
        });
    }
    if let Some((p, o)) = s.ack {
        let p = partition(&meta, p)?;
        core.backend
            .commit(&meta, p, &group, next(o)?, false)
            .await?;
    }
    if let Some((p, o)) = s.resume {
        let p = partition(&meta, p)?;
        core.backend
            .commit(&meta, p, &group, next(o)?, true)
            .await?;
    }
    let fetch = Fetch {
        topic: meta.name.to_string(),
        group,
        max,
        max_bytes: core.shard.cfg().subscribe.max_batch_bytes.0 as usize,
        reset: s.reset,
        auto_ack: !s.explicit,
        tags: s.tags.clone(),
    };
    let sub = Subscription::new(core.shard.clone(), core.backend.clone(), meta, fetch);
    Ok(if core.shard.tenancy.quota_on_subscribe(app) {
        sub.charged_to(app)
    } else {
        sub
    })
}

/// Handles a subscribe long poll.
pub async fn subscribe(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: Subscribe<'_>,
) -> Result<Reply, Error> {
    let sub = open(core, caller, &s, s.batch.unwrap_or(1)).await?;
    let batch = sub.next(Instant::now() + s.wait).await?;
    if batch.records.is_empty() {
        let mut r = Reply::empty(204);
        r.close = core.shard.shutdown.get();
        return Ok(r);
    }
    let mut records = batch.records;
    let size: usize = records.iter().map(|m| m.value.len() + 64).sum();
    let mut reply = if s.batch.is_none() && s.format == RecordFormat::Binary {
        let m = records.swap_remove(0);
        let mut r = Reply::bytes(200, "application/octet-stream", m.value)
            .header_int("x-partition", m.partition.into())
            .header_int("x-offset", m.offset as i64);
        if !m.key.is_empty() {
            r = r.header("x-key", Value::Bytes(m.key));
        }
        if !m.tags.is_empty() {
            r = r.header("x-tag", Value::Bytes(m.tags));
        }
        r
    } else {
        Reply::records(200, s.format, records)
    };
    if let Some(mut held) = batch.held {
        held.resize(size);
        reply.hold = Some(Box::new(held));
    }
    Ok(reply)
}

/// `PUT /v1/offsets/:appid/:topic/:ver/:group` with `[{"partition":p,"offset":o}]`, where `o`
/// is the last processed offset; the group resumes at `o + 1`.
pub async fn ack_batch(
    core: &Rc<Core>,
    caller: Caller<'_>,
    a: AckBatch<'_>,
) -> Result<Reply, Error> {
    let group = GroupName::new(caller.appid()?, a.group)?.to_string();
    let meta = core.backend.resolve(&a.topic).await?;
    for &(p, _) in &a.acks {
        partition(&meta, p)?;
    }
    for (p, o) in a.acks {
        core.backend
            .commit(&meta, p, &group, next(o)?, false)
            .await?;
    }
    Ok(Reply::json(200, &b"{\"ok\":1}"[..]))
}

/// `PUT /v1/offset/:appid/:topic/:ver/:group/:partition?offset=N`: moves a group's position on
/// one partition (backwards to read again, or forwards past records to skip, such as damaged
/// ones that the recovery mode does not skip by itself). `N` is the next offset to consume.
pub async fn seek(core: &Rc<Core>, caller: Caller<'_>, s: Seek<'_>) -> Result<Reply, Error> {
    let group = GroupName::new(caller.appid()?, s.group)?.to_string();
    let meta = core.backend.resolve(&s.topic).await?;
    let p = partition(&meta, s.partition)?;
    core.backend
        .commit(&meta, p, &group, s.offset, true)
        .await?;
    Ok(Reply::json(200, &b"{\"ok\":1}"[..]))
}
