//! Leased delivery's API: a subscribe with `ack=lease` (each message with a receipt and its
//! attempt) and `POST /v1/queue/:appid/:topic/:ver/:group/{ack,nack,extend,bury}`. The queue
//! itself is [`crate::queue`].

use crate::node::Core;
use crate::queue::{LeaseCall, Outcome};
use kateway_core::{Error, GroupName};
use kateway_proto::command::{Caller, Settle, Subscribe};
use kateway_proto::reply::{RecordFormat, Reply, Value};
use serde_json::json;
use std::rc::Rc;
use std::time::Instant;

/// A leased long poll: one message as the body (with `X-Receipt` and `X-Delivery-Attempt`), or
/// with `batch=N` JSON lines carrying `receipt` and `attempt`.
pub async fn subscribe(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: Subscribe<'_>,
) -> Result<Reply, Error> {
    let app = caller.appid()?;
    let group = GroupName::new(app, s.group)?.to_string();
    let meta = core.backend.resolve(&s.topic).await?;
    let shard = &core.shard;
    if shard.tenancy.quota_on_subscribe(app) {
        if let Some(wait) = crate::tenancy::edge::subscribe_wait(shard, app) {
            shard.sleep(wait.min(s.wait)).await;
        }
    }
    let call = LeaseCall {
        topic: meta.name.to_string(),
        group,
        reset: s.reset,
        max: s.batch.unwrap_or(1),
        max_bytes: shard.cfg.subscribe.max_batch_bytes.0 as usize,
        visibility: s.lease.and_then(|l| l.visibility),
        deadline: Instant::now() + s.wait,
    };
    let mut records = core.queues.lease(shard, &core.backend, call).await?;
    if records.is_empty() {
        let mut r = Reply::empty(204);
        r.close = shard.shutdown.get();
        return Ok(r);
    }
    let bytes: usize = records.iter().map(|m| m.value.len()).sum();
    if shard.tenancy.quota_on_subscribe(app) {
        crate::tenancy::edge::charge_subscribe(shard, app, bytes as u64);
    }
    let held = shard.account_response(bytes + 160 * records.len());
    let mut reply = if s.batch.is_none() && s.format == RecordFormat::Binary {
        let m = records.swap_remove(0);
        let leased = m.leased.expect("leased delivery");
        let mut r = Reply::bytes(200, "application/octet-stream", m.value)
            .header_int("x-partition", m.partition.into())
            .header_int("x-offset", m.offset as i64)
            .header("x-receipt", Value::Bytes(leased.receipt.into()))
            .header_int("x-delivery-attempt", leased.attempt.into());
        if !m.key.is_empty() {
            r = r.header("x-key", Value::Bytes(m.key));
        }
        if !m.tags.is_empty() {
            r = r.header("x-tag", Value::Bytes(m.tags));
        }
        r
    } else {
        // Binary records have no room for a receipt: leased batches are JSON lines.
        Reply::records(200, RecordFormat::NdJson, records)
    };
    reply.hold = Some(Box::new(held));
    Ok(reply)
}

/// Settles leased messages by receipt. One receipt: its outcome, or its error as the reply's.
/// Several: 200 with each one's outcome in order.
pub async fn settle(core: &Rc<Core>, caller: Caller<'_>, s: Settle<'_>) -> Result<Reply, Error> {
    let group = GroupName::new(caller.appid()?, s.group)?.to_string();
    let meta = core.backend.resolve(&s.topic).await?;
    let out = core
        .queues
        .settle(
            &core.shard,
            &core.backend,
            &meta,
            &group,
            s.op,
            &s.receipts,
            s.delay,
            s.visibility,
            s.error,
            false,
        )
        .await?;
    if let [Outcome::Failed(e)] = &out[..] {
        return Err(e.clone());
    }
    let results: Vec<serde_json::Value> = out.iter().map(outcome_json).collect();
    Ok(Reply::json(200, json!({ "results": results }).to_string()))
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Acked => json!({"status": "acked"}),
        Outcome::AlreadyDone => json!({"status": "already_done"}),
        Outcome::Retry { visible_at_ms } => {
            json!({"status": "retry", "visible_at_ms": visible_at_ms})
        }
        Outcome::Dead => json!({"status": "dead"}),
        Outcome::Extended { deadline_ms } => {
            json!({"status": "extended", "deadline_ms": deadline_ms})
        }
        Outcome::Buried => json!({"status": "buried"}),
        Outcome::Forwarded => json!({"status": "forwarded"}),
        Outcome::Failed(e) => {
            json!({"status": "failed", "code": e.kind().code(), "errmsg": e.to_string()})
        }
    }
}
