//! `POST|PUT|DELETE /v1/topics/:appid/:topic/:ver`: topic administration, applied where topics
//! live (Kafka first, on the Kafka backend), then to the catalog through core 0.

use crate::admin;
use crate::catalog::{AdminOp, TopicMeta};
use crate::node::Core;
use crate::shard::now_ms;
use crate::tenancy::writer::MetaCall;
use kateway_core::tenancy::{Op, Stamp};
use kateway_core::{Error, ErrorKind, TopicName};
use kateway_proto::command::{Caller, TopicAdmin, TopicOp};
use kateway_proto::reply::Reply;
use serde_json::json;
use std::rc::Rc;

/// Handles a topic administration call.
pub async fn administer(
    core: &Rc<Core>,
    caller: Caller<'_>,
    t: TopicAdmin<'_>,
) -> Result<Reply, Error> {
    let name = TopicName::new(t.topic.appid, t.topic.topic, t.topic.ver)?.storage_name();
    let op = match t.op {
        TopicOp::Create => {
            let default = match core.shard.cfg().store.default_partitions {
                0 => core.shard.cores() as u32,
                n => n,
            };
            AdminOp::Create(TopicMeta {
                name: name.clone(),
                partitions: t.partitions.unwrap_or(default),
                retention_hours: t.retention_hours,
                retention_bytes: t.retention_bytes,
                created_ms: now_ms(),
            })
        }
        TopicOp::Alter => AdminOp::Alter {
            name: name.clone(),
            partitions: t.partitions,
            retention_hours: t.retention_hours,
            retention_bytes: t.retention_bytes,
        },
        TopicOp::Delete => AdminOp::Delete(name.clone()),
    };
    // The partition budget holds before the topic changes where topics live (Kafka would
    // otherwise grow a topic this gateway then refuses to learn).
    let grows = match &op {
        AdminOp::Create(m) => Some(m.partitions),
        AdminOp::Alter { partitions, .. } => *partitions,
        _ => None,
    };
    if let Some(n) = grows {
        let budget = crate::catalog::Budget::of(&core.shard.cfg());
        core.shard.catalog.borrow().fits(&name, n, budget)?;
    }
    let op = core.backend.administer(op, &t.topic).await?;
    let meta = match admin::request(&core.shard, op).await {
        // Deleted where topics live, though this gateway had not seen the topic yet.
        Err(e)
            if t.op == TopicOp::Delete
                && e.kind() == ErrorKind::UnknownTopic
                && core.backend.deletes_unseen_topics() =>
        {
            TopicMeta {
                name,
                partitions: 0,
                retention_hours: None,
                retention_bytes: None,
                created_ms: 0,
            }
        }
        r => r?,
    };
    if t.op == TopicOp::Delete && core.shard.tenancy.enabled {
        // The grants on it go with it.
        let stamp = Stamp {
            actor: caller.actor(),
            ts_ms: now_ms(),
            ip: caller.ip().map(|ip| ip.to_string()),
        };
        let forget = Op::ForgetTopic {
            topic: meta.name.clone(),
        };
        match core.meta(MetaCall::Change(forget, stamp)).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => tracing::warn!(topic = %meta.name, "the grants on a deleted topic stay: {e}"),
        }
    }
    let status = if t.op == TopicOp::Create { 201 } else { 200 };
    Ok(Reply::json(
        status,
        json!({
            "topic": meta.name,
            "partitions": meta.partitions,
            "retention_hours": meta.retention_hours,
            "retention_bytes": meta.retention_bytes,
        })
        .to_string(),
    ))
}
