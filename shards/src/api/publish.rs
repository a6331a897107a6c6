//! `POST /v1/msgs/:topic/:ver`: single and batch publish to one of the caller's topics. Keyless
//! messages go to a partition this core owns; keyed ones to Kafka's default partition, on the
//! core that owns it. The reply waits for the durability asked for.

use crate::catalog::LocalTopic;
use crate::idem::{self, Begun, IdemCall};
use crate::node::Core;
use bytes::{BufMut, Bytes, BytesMut};
use kateway_core::partitioner::partition_for_key;
use kateway_core::{Ack, Error, ErrorKind, Item};
use kateway_proto::batch::BatchItem;
use kateway_proto::command::{Caller, Messages, Publish, TopicPath};
use kateway_proto::http1::encode::{put_u64, write_u64};
use kateway_proto::reply::{Reply, Value};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Handles a publish. With an `Idempotency-Key`, the key is claimed first (core 0), and a
/// retry within the window is answered with the first publish's results (and
/// `Idempotent-Replayed: true`) without storing anything.
pub async fn publish(
    core: &Rc<Core>,
    caller: Caller<'_>,
    mut c: Publish<'_>,
) -> Result<Reply, Error> {
    let meta = resolve(core, caller, &c).await?;
    if let Some(due) = c.due {
        return super::delays::publish(core, &meta, c, due).await;
    }
    let status = if c.ack == Ack::Async { 202 } else { 201 };
    let single = matches!(c.messages, Messages::One(_));
    let Some(idem_key) = c.idempotency_key.take() else {
        let (results, buffered) = publish_now(core, &meta, c).await?;
        return Ok(reply(status, single, &results, buffered));
    };
    let hash = request_hash(&meta.name, &c);
    let key = format!("{}\n{idem_key}", meta.name);
    let begun = idem::call(
        core,
        IdemCall::Begin {
            key: key.clone(),
            hash,
        },
    )
    .await?;
    let owner = match begun {
        Some(Begun::Proceed(owner)) => owner,
        Some(Begun::Replay(results)) => {
            return Ok(reply(status, single, &results, false)
                .header("idempotent-replayed", Value::Static("true")))
        }
        None => return Err(Error::new(ErrorKind::Internal, "no idempotency answer")),
    };
    match publish_now(core, &meta, c).await {
        Ok((results, buffered)) => {
            let done = IdemCall::Finish {
                key,
                hash,
                owner,
                results: results.clone(),
            };
            if let Err(e) = idem::call(core, done).await {
                // Stored all the same: say so; a retry within the claim timeout gets 409.
                tracing::warn!(topic = %meta.name, "an idempotent publish's outcome was not recorded: {e}");
            }
            Ok(reply(status, single, &results, buffered))
        }
        Err(e) => {
            let _ = idem::call(core, IdemCall::Release { key, owner }).await;
            Err(e)
        }
    }
}

/// What identifies a publish's content for its `Idempotency-Key`: SHA-256 of the topic, the
/// options and every message.
fn request_hash(topic: &str, c: &Publish<'_>) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |b: &[u8]| {
        h.update(&(b.len() as u64).to_be_bytes());
        h.update(b);
    };
    part(topic.as_bytes());
    part(c.key.as_deref().unwrap_or_default());
    part(&c.tags);
    match &c.messages {
        Messages::One(v) => {
            part(b"one");
            part(v);
        }
        Messages::Batch(items) => {
            part(b"batch");
            for it in items {
                part(it.key.as_deref().unwrap_or_default());
                part(&it.value);
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// Publishes the messages of `c`: returns where each landed and whether any went to the
/// hinted-handoff buffer.
async fn publish_now(
    core: &Rc<Core>,
    meta: &LocalTopic,
    mut c: Publish<'_>,
) -> Result<(Vec<(u32, i64)>, bool), Error> {
    match std::mem::replace(&mut c.messages, Messages::Batch(Vec::new())) {
        Messages::One(value) => {
            // The common case: one message, one partition, no grouping.
            let item = Item {
                key: c.key.clone().unwrap_or_default(),
                tags: c.tags.clone(),
                value,
            };
            let p = if item.key.is_empty() {
                core.shard.pick_partition(meta)
            } else {
                partition_for_key(&item.key, meta.partitions)
            };
            let done = core.backend.publish(meta, p, vec![item], c.ack).await?;
            Ok((vec![(p, done.offsets[0])], done.buffered))
        }
        Messages::Batch(items) => publish_all(core, meta, &c, items).await,
    }
}

/// The reply to a publish: `{"partition","offset"}` (and `X-Partition`/`X-Offset`) for one
/// message, `{"count","results":[...]}` for a batch.
fn reply(status: u16, single: bool, results: &[(u32, i64)], any_buffered: bool) -> Reply {
    if let (true, [(p, o)]) = (single, results) {
        let mut body = BytesMut::with_capacity(48);
        put_result(&mut body, *p, *o);
        let r = Reply::json(status, body.freeze())
            .header_int("x-partition", (*p).into())
            .header_int("x-offset", *o);
        return buffered(r, any_buffered);
    }
    let n = results.len();
    let mut body = BytesMut::with_capacity(32 + n * 32);
    body.put_slice(b"{\"count\":");
    put_u64(&mut body, n as u64);
    body.put_slice(b",\"results\":[");
    for (i, (p, o)) in results.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        put_result(&mut body, *p, *o);
    }
    body.put_slice(b"]}");
    buffered(Reply::json(status, body.freeze()), any_buffered)
}

/// The caller's topic a publish names.
pub async fn resolve(
    core: &Rc<Core>,
    caller: Caller<'_>,
    c: &Publish<'_>,
) -> Result<Rc<LocalTopic>, Error> {
    let path = TopicPath {
        appid: caller.appid()?,
        topic: c.topic,
        ver: c.ver,
    };
    core.backend.resolve(&path).await
}

/// Publishes a batch with the options of `c` (its key for messages without one, its tags, its
/// ack level): keyless messages share one partition, keyed ones are grouped by partition, one
/// publish per partition. Returns each message's partition and offset, in order, and whether
/// any went to the hinted-handoff buffer.
pub async fn publish_all(
    core: &Rc<Core>,
    meta: &LocalTopic,
    c: &Publish<'_>,
    items: Vec<BatchItem>,
) -> Result<(Vec<(u32, i64)>, bool), Error> {
    let keyless = core.shard.pick_partition(meta);
    if items.iter().all(|it| it.key.is_none()) {
        // The common batch: no message has a key of its own, so all go to one partition, in
        // order, without sorting them by partition.
        let k: Bytes = c.key.clone().unwrap_or_default();
        let p = if k.is_empty() {
            keyless
        } else {
            partition_for_key(&k, meta.partitions)
        };
        let items = items
            .into_iter()
            .map(|it| Item {
                key: k.clone(),
                tags: c.tags.clone(),
                value: it.value,
            })
            .collect();
        let done = core.backend.publish(meta, p, items, c.ack).await?;
        let results = done.offsets.into_iter().map(|o| (p, o)).collect();
        return Ok((results, done.buffered));
    }
    let mut by_part: BTreeMap<u32, Vec<(usize, Item)>> = BTreeMap::new();
    for (i, it) in items.into_iter().enumerate() {
        let k: Bytes = it.key.or_else(|| c.key.clone()).unwrap_or_default();
        let p = if k.is_empty() {
            keyless
        } else {
            partition_for_key(&k, meta.partitions)
        };
        let item = Item {
            key: k,
            tags: c.tags.clone(),
            value: it.value,
        };
        by_part.entry(p).or_default().push((i, item));
    }
    let n: usize = by_part.values().map(Vec::len).sum();
    let mut results = vec![(0u32, 0i64); n];
    let mut any_buffered = false;
    for (p, entries) in by_part {
        let (idx, items): (Vec<usize>, Vec<Item>) = entries.into_iter().unzip();
        let done = core.backend.publish(meta, p, items, c.ack).await?;
        any_buffered |= done.buffered;
        for (i, o) in idx.into_iter().zip(done.offsets) {
            results[i] = (p, o);
        }
    }
    Ok((results, any_buffered))
}

/// Marks a reply whose messages (some of them) went to the hinted-handoff buffer.
fn buffered(r: Reply, buffered: bool) -> Reply {
    if buffered {
        r.header("x-kateway-buffered", Value::Static("1"))
    } else {
        r
    }
}

/// Appends `{"partition":p,"offset":o}`, made on the stack and copied once (a batch's reply
/// has one per message).
fn put_result(body: &mut BytesMut, p: u32, o: i64) {
    const PARTITION: &[u8] = b"{\"partition\":";
    const OFFSET: &[u8] = b",\"offset\":";
    let mut line = [0u8; 64];
    line[..PARTITION.len()].copy_from_slice(PARTITION);
    let mut n = PARTITION.len() + write_u64(&mut line[PARTITION.len()..], p.into());
    line[n..n + OFFSET.len()].copy_from_slice(OFFSET);
    n += OFFSET.len();
    if o < 0 {
        line[n] = b'-';
        n += 1;
    }
    n += write_u64(&mut line[n..], o.unsigned_abs());
    line[n] = b'}';
    body.put_slice(&line[..=n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_the_json_of_its_partition_and_offset() {
        for (p, o) in [
            (0, 0),
            (7, 41),
            (u32::MAX, i64::MAX),
            (3, -1),
            (12, i64::MIN),
        ] {
            let mut b = BytesMut::new();
            put_result(&mut b, p, o);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"partition": p, "offset": o}),
                "{p} {o}"
            );
        }
    }
}
