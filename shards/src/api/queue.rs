//! Leased delivery's API: a subscribe with `ack=lease` (each message with a receipt and its
//! attempt) and `POST /v1/queue/:appid/:topic/:ver/:group/{ack,nack,extend,bury}`. The queue
//! itself is [`crate::queue`].

use crate::node::Core;
use crate::queue::{LeaseCall, Outcome};
use kateway_core::{Error, GroupName};
use kateway_proto::command::{Caller, Settle, Subscribe};
use kateway_proto::reply::{RecordFormat, Reply, Value};
use std::rc::Rc;
use std::time::Instant;

/// A leased long poll: one message as the body (with `X-Receipt` and `X-Delivery-Attempt`), or
/// with `batch=N` JSON lines carrying `receipt` and `attempt`, and `X-Batch-Receipt` for all
/// of them.
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
        group: group.clone(),
        reset: s.reset,
        max: s.batch.unwrap_or(1),
        max_bytes: shard.cfg().subscribe.max_batch_bytes.0 as usize,
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
            .header(
                "x-receipt",
                Value::Bytes(bytes::Bytes::copy_from_slice(&leased.receipt)),
            )
            .header_int("x-delivery-attempt", leased.attempt.into());
        if !m.key.is_empty() {
            r = r.header("x-key", Value::Bytes(m.key));
        }
        if !m.tags.is_empty() {
            r = r.header("x-tag", Value::Bytes(m.tags));
        }
        r
    } else {
        // Binary records have no room for a receipt: leased batches are JSON lines, and one
        // batch receipt settles them all.
        let batch = core.queues.batch_receipt(&meta.name, &group, &records);
        Reply::records(200, RecordFormat::NdJson, records)
            .header("x-batch-receipt", Value::Bytes(batch.into()))
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
            s.batch.as_deref(),
            s.delay,
            s.visibility,
            s.error,
            false,
        )
        .await?;
    if let [Outcome::Failed(e)] = &out[..] {
        return Err(e.clone());
    }
    Ok(Reply::json(200, results_json(&out)))
}

/// `{"results":[...]}`: each outcome in order, written directly (a batch of 100 acks is on
/// the hot path, and a JSON tree per outcome cost more than the acks themselves).
fn results_json(out: &[Outcome]) -> bytes::Bytes {
    use kateway_proto::http1::encode::{put_i64, put_u64};
    let mut b = bytes::BytesMut::with_capacity(16 + 24 * out.len());
    b.extend_from_slice(b"{\"results\":[");
    for (i, o) in out.iter().enumerate() {
        if i > 0 {
            b.extend_from_slice(b",");
        }
        match o {
            Outcome::Acked => b.extend_from_slice(b"{\"status\":\"acked\"}"),
            Outcome::AlreadyDone => b.extend_from_slice(b"{\"status\":\"already_done\"}"),
            Outcome::Retry { visible_at_ms } => {
                b.extend_from_slice(b"{\"status\":\"retry\",\"visible_at_ms\":");
                put_i64(&mut b, *visible_at_ms);
                b.extend_from_slice(b"}");
            }
            Outcome::Dead => b.extend_from_slice(b"{\"status\":\"dead\"}"),
            Outcome::Extended { deadline_ms } => {
                b.extend_from_slice(b"{\"status\":\"extended\",\"deadline_ms\":");
                put_i64(&mut b, *deadline_ms);
                b.extend_from_slice(b"}");
            }
            Outcome::Buried => b.extend_from_slice(b"{\"status\":\"buried\"}"),
            Outcome::Forwarded => b.extend_from_slice(b"{\"status\":\"forwarded\"}"),
            Outcome::Failed(e) => {
                b.extend_from_slice(b"{\"status\":\"failed\",\"code\":");
                put_u64(&mut b, u64::from(e.kind().code()));
                b.extend_from_slice(b",\"errmsg\":");
                kateway_proto::json::put_str(&mut b, &e.to_string());
                b.extend_from_slice(b"}");
            }
        }
    }
    b.extend_from_slice(b"]}");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kateway_core::ErrorKind;

    #[test]
    fn results_are_json_in_order() {
        let out = [
            Outcome::Acked,
            Outcome::AlreadyDone,
            Outcome::Retry { visible_at_ms: 12 },
            Outcome::Dead,
            Outcome::Extended { deadline_ms: -1 },
            Outcome::Buried,
            Outcome::Forwarded,
            Outcome::Failed(Error::new(ErrorKind::StaleLease, "a \"quoted\" lease")),
        ];
        let v: serde_json::Value = serde_json::from_slice(&results_json(&out)).unwrap();
        let want = serde_json::json!({"results": [
            {"status": "acked"},
            {"status": "already_done"},
            {"status": "retry", "visible_at_ms": 12},
            {"status": "dead"},
            {"status": "extended", "deadline_ms": -1},
            {"status": "buried"},
            {"status": "forwarded"},
            {"status": "failed", "code": ErrorKind::StaleLease.code(), "errmsg": "a \"quoted\" lease"},
        ]});
        assert_eq!(v, want);
    }
}
