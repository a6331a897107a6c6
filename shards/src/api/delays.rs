//! Delayed messages at the API ([`crate::delay`]): a publish with `delay=` or `X-Deliver-At`
//! (202 with one delay id per message), and `/v1/delays/:topic/:ver[/:id]` on the caller's
//! topic: list the pending delays, peek one, cancel one (204; 409 once it fired; 404 for an
//! unknown id; 202 when another gateway holds it and applies the cancel). `POST
//! /v1/debug/clock` moves the delay clock forward where `delay.test_clock` allows it.

use crate::catalog::LocalTopic;
use crate::delay::{self, CancelOutcome, DelayAnswer, DelayCall};
use crate::node::Core;
use base64::Engine;
use bytes::Bytes;
use kateway_core::delay::{format_rfc3339, Delay, DelayId, Record};
use kateway_core::partitioner::partition_for_key;
use kateway_core::{Error, ErrorKind, Item};
use kateway_proto::command::{Caller, DelayOp, Delays, Due, Messages, Publish, TopicPath};
use kateway_proto::reply::{Reply, Value};
use serde_json::json;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

thread_local! {
    /// This core's next delay-id nonce: random at start, then counting.
    static NONCE: Cell<u64> = Cell::new({
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    });
}

thread_local! {
    /// The delay-log partition this core's next delayed publish goes to: random at start,
    /// then round robin (apart from the ids' nonces, which a batch advances by its size).
    static TURN: Cell<u64> = Cell::new(nonce().rotate_left(17));
}

fn nonce() -> u64 {
    NONCE.with(|n| {
        let v = n.get();
        n.set(v.wrapping_add(1));
        v
    })
}

/// Publishes `c`'s messages to the delay log, due at `due`.
pub async fn publish(
    core: &Rc<Core>,
    meta: &LocalTopic,
    c: Publish<'_>,
    due: Due,
) -> Result<Reply, Error> {
    if c.idempotency_key.is_some() {
        return Err(Error::param(
            "Idempotency-Key is not supported on a delayed publish",
        ));
    }
    let now = delay::now();
    let at = match due {
        Due::After(d) => now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        Due::At(ms) => ms,
    };
    let max = core.shard.cfg().delay.max_delay.0.as_millis() as i64;
    let at = kateway_core::delay::due(at, now, max)?;
    let log = delay::log_topic(&core.shard, &core.backend).await?;
    let single = matches!(c.messages, Messages::One(_));
    let messages: Vec<(Bytes, Bytes)> = match c.messages {
        Messages::One(v) => vec![(c.key.clone().unwrap_or_default(), v)],
        Messages::Batch(items) => items
            .into_iter()
            .map(|it| {
                (
                    it.key.or_else(|| c.key.clone()).unwrap_or_default(),
                    it.value,
                )
            })
            .collect(),
    };
    let keyless = core.shard.pick_partition(meta);
    let first = nonce();
    // One delay-log partition per publish, so that it is one append.
    let turn = TURN.with(|t| {
        let v = t.get();
        t.set(v.wrapping_add(1));
        v
    });
    let dp = (turn % u64::from(log.partitions)) as u16;
    let mut ids = Vec::with_capacity(messages.len());
    let mut items = Vec::with_capacity(messages.len());
    for (i, (key, value)) in messages.into_iter().enumerate() {
        let partition = if key.is_empty() {
            keyless
        } else {
            partition_for_key(&key, meta.partitions)
        };
        let id = DelayId {
            partition: dp,
            deliver_at_ms: at,
            nonce: if i == 0 { first } else { nonce() },
        }
        .encode(&core.delay_key, &meta.name);
        let record = Record::Delay(Delay {
            deliver_at_ms: at,
            created_ms: now,
            topic: meta.name.to_string(),
            partition,
            key,
            tags: c.tags.clone(),
            value,
        });
        items.push(Item {
            key: Bytes::from(id.clone()),
            tags: Bytes::new(),
            value: record.encode(),
        });
        ids.push(id);
    }
    let done = core
        .backend
        .publish(&log, u32::from(dp), items, c.ack)
        .await?;
    crate::metrics::add(&core.shard.metrics.delays_published_total, ids.len() as u64);
    let when = format_rfc3339(at);
    let reply = if single {
        let id = ids.pop().unwrap_or_default();
        Reply::json(202, json!({"id": id, "deliver_at": when}).to_string())
            .header("x-delay-id", Value::Bytes(Bytes::from(id)))
    } else {
        Reply::json(
            202,
            json!({"count": ids.len(), "deliver_at": when, "ids": ids}).to_string(),
        )
    };
    Ok(if done.buffered {
        reply.header("x-kateway-buffered", Value::Static("1"))
    } else {
        reply
    })
}

/// Handles `/v1/delays/:topic/:ver[/:id]`.
pub async fn run(core: &Rc<Core>, caller: Caller<'_>, d: Delays<'_>) -> Result<Reply, Error> {
    let path = TopicPath {
        appid: caller.appid()?,
        topic: d.topic,
        ver: d.ver,
    };
    let meta = core.backend.resolve(&path).await?;
    let unknown = |id: &str| {
        Error::new(
            ErrorKind::UnknownDelay,
            format!("no pending delay {id:?} on topic {}", meta.name),
        )
    };
    match d.op {
        DelayOp::List { max } => {
            let call = DelayCall::List {
                topic: meta.name.to_string(),
                max,
            };
            let DelayAnswer::List {
                delays,
                held,
                partitions,
            } = core.delay_call(call).await?
            else {
                return Err(Error::new(ErrorKind::Internal, "unexpected delay answer"));
            };
            let list: Vec<serde_json::Value> = delays
                .iter()
                .map(|(id, d)| {
                    json!({
                        "id": String::from_utf8_lossy(id),
                        "deliver_at": format_rfc3339(d.deliver_at_ms),
                        "deliver_at_ms": d.deliver_at_ms,
                        "partition": d.partition,
                        "key": String::from_utf8_lossy(&d.key),
                        "bytes": d.value.len(),
                    })
                })
                .collect();
            let body = json!({
                "topic": &*meta.name,
                "count": list.len(),
                "delays": list,
                "log_partitions_held": held,
                "log_partitions": partitions,
            });
            Ok(Reply::json(200, body.to_string()))
        }
        DelayOp::Peek(id) => {
            let parsed =
                DelayId::decode(&core.delay_key, &meta.name, id).ok_or_else(|| unknown(id))?;
            let call = DelayCall::Peek {
                id: id.to_owned(),
                partition: u32::from(parsed.partition),
                due: parsed.deliver_at_ms,
            };
            let DelayAnswer::Peek { found, held } = core.delay_call(call).await? else {
                return Err(Error::new(ErrorKind::Internal, "unexpected delay answer"));
            };
            let Some(d) = found else {
                return Err(if held {
                    unknown(id)
                } else {
                    Error::new(
                        ErrorKind::UnknownDelay,
                        format!(
                            "delay {id:?} is in a partition of the delay log this gateway does \
                             not hold (another gateway of the cluster holds it, or it is being \
                             assigned)"
                        ),
                    )
                });
            };
            let mut body = json!({
                "id": id,
                "deliver_at": format_rfc3339(d.deliver_at_ms),
                "deliver_at_ms": d.deliver_at_ms,
                "created_at": format_rfc3339(d.created_ms),
                "partition": d.partition,
                "key": String::from_utf8_lossy(&d.key),
                "tags": String::from_utf8_lossy(&d.tags),
            });
            match std::str::from_utf8(&d.value) {
                Ok(s) => body["value"] = json!(s),
                Err(_) => {
                    body["value_base64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(&d.value))
                }
            }
            Ok(Reply::json(200, body.to_string()))
        }
        DelayOp::Cancel(id) => {
            let parsed =
                DelayId::decode(&core.delay_key, &meta.name, id).ok_or_else(|| unknown(id))?;
            let call = DelayCall::Cancel {
                id: id.to_owned(),
                partition: u32::from(parsed.partition),
            };
            let DelayAnswer::Cancel(outcome) = core.delay_call(call).await? else {
                return Err(Error::new(ErrorKind::Internal, "unexpected delay answer"));
            };
            match outcome {
                CancelOutcome::Cancelled => Ok(Reply::empty(204)),
                CancelOutcome::Fired => Err(Error::new(
                    ErrorKind::DelayFired,
                    format!("delay {id:?} fired already"),
                )),
                CancelOutcome::Unknown => Err(unknown(id)),
                CancelOutcome::Requested => Ok(Reply::json(
                    202,
                    json!({"id": id, "state": "requested"}).to_string(),
                )),
            }
        }
    }
}

/// `POST /v1/debug/clock?advance=`: 404 unless `delay.test_clock` is on.
pub fn clock(core: &Core, advance: Duration) -> Result<Reply, Error> {
    if !core.shard.cfg().delay.test_clock {
        return Err(Error::new(
            ErrorKind::UnknownRoute,
            "no route for /v1/debug/clock (delay.test_clock is off)",
        ));
    }
    let skew = delay::advance(advance.as_millis().min(i64::MAX as u128) as i64);
    Ok(Reply::json(200, json!({"skew_ms": skew}).to_string()))
}
