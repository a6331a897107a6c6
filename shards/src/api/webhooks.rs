//! `/v1/webhooks/:appid/:topic/:ver/:group`: the caller's group's webhook push subscription on
//! a topic it may read ([`crate::webhook`]). `PUT` creates or changes it (201 with the signing
//! secret when it is new or rotated), `GET` shows it with its delivery counters, `DELETE`
//! removes it, `POST .../pause` and `.../resume`, `GET .../log` the recent attempts. The
//! subscription lives in the tenancy metadata, so every gateway of a cluster follows it.

use crate::node::Core;
use crate::request::{Answer, Request};
use crate::shard::now_ms;
use crate::tenancy::writer::MetaCall;
use kateway_core::tenancy::{Op, Stamp, WebhookSpec};
use kateway_core::units::parse_duration;
use kateway_core::webhook::{is_public, secret, secret_text, Url};
use kateway_core::{Error, ErrorKind, GroupName};
use kateway_proto::command::{Caller, Webhook, WebhookOp, WebhookParams};
use kateway_proto::reply::Reply;
use serde_json::{json, Value};
use std::rc::Rc;

/// Handles a webhook call.
pub async fn run(core: &Rc<Core>, caller: Caller<'_>, w: Webhook<'_>) -> Result<Reply, Error> {
    let me = caller.appid()?;
    let topic = core.backend.resolve(&w.topic).await?;
    let group = GroupName::new(me, w.group)?.to_string();
    crate::queue::dead::topic_of(&group)?;
    let current = core
        .shard
        .tenancy
        .view()
        .snap
        .webhook(&group, &topic.name)
        .cloned();
    let missing = || crate::webhook::unknown(&group, &topic.name);
    let stamp = Stamp {
        actor: caller.actor(),
        ts_ms: now_ms(),
        ip: caller.ip().map(|ip| ip.to_string()),
    };
    let set = |spec: Option<WebhookSpec>| Op::SetWebhook {
        app: me.to_owned(),
        group: w.group.to_owned(),
        topic: topic.name.to_string(),
        spec,
    };
    match w.op {
        WebhookOp::Get => {
            let spec = current.ok_or_else(missing)?;
            let state = info(core, &group, &topic.name, false).await?;
            let mut v = describe(&spec);
            v["state"] = state;
            Ok(Reply::json(200, v.to_string()))
        }
        WebhookOp::Log => {
            current.ok_or_else(missing)?;
            let mut log = info(core, &group, &topic.name, true).await?;
            if log.is_null() {
                // No core runs it (yet, or no more: paused for a lost grant): no attempts.
                log = serde_json::json!({ "attempts": [] });
            }
            Ok(Reply::json(200, log.to_string()))
        }
        WebhookOp::Delete => {
            current.ok_or_else(missing)?;
            core.meta(MetaCall::Change(set(None), stamp)).await?;
            Ok(Reply::empty(204))
        }
        WebhookOp::Pause | WebhookOp::Resume => {
            let mut spec = current.ok_or_else(missing)?;
            spec.paused = match w.op {
                WebhookOp::Pause => Some("paused by the app".into()),
                _ => None,
            };
            core.meta(MetaCall::Change(set(Some(spec.clone())), stamp))
                .await?;
            Ok(Reply::json(200, describe(&spec).to_string()))
        }
        WebhookOp::Put(p) => {
            let created = current.is_none();
            let spec = build(core, p.clone(), current)?;
            core.meta(MetaCall::Change(set(Some(spec.clone())), stamp))
                .await?;
            let mut v = describe(&spec);
            if created || p.rotate_secret {
                let s = secret(
                    &core.shard.tenancy.derive_key("webhooks"),
                    &spec.secret_nonce,
                );
                v["secret"] = json!(secret_text(&s));
            }
            Ok(Reply::json(if created { 201 } else { 200 }, v.to_string()))
        }
    }
}

/// The subscription a `PUT` asks for: its settings over the current ones, or over
/// `[webhook]`'s defaults.
fn build(
    core: &Core,
    p: WebhookParams,
    current: Option<WebhookSpec>,
) -> Result<WebhookSpec, Error> {
    let d = &core.shard.cfg().webhook;
    let url = Url::parse(&p.url).map_err(Error::param)?;
    let literal = url
        .host
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| kateway_core::webhook::inet_aton(&url.host).map(std::net::IpAddr::V4));
    if let Some(ip) = literal {
        if !d.allow_private_addresses && !is_public(ip) {
            return Err(Error::param(format!(
                "{ip} is not a public address (webhook.allow_private_addresses is off)"
            )));
        }
    }
    let ms = |v: Option<String>, name: &str, dflt: u64| -> Result<u64, Error> {
        match v {
            None => Ok(dflt),
            Some(t) => parse_duration(&t)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| Error::param(format!("{name}: {e}"))),
        }
    };
    let nonce = match &current {
        Some(c) if !p.rotate_secret => c.secret_nonce.clone(),
        _ => {
            let mut b = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| Error::new(ErrorKind::Internal, "no randomness"))?;
            kateway_core::tenancy::record::hex(&b)
        }
    };
    let base = current.clone();
    let spec = WebhookSpec {
        url: p.url,
        secret_nonce: nonce,
        max_in_flight: p
            .max_in_flight
            .or(base.as_ref().map(|b| b.max_in_flight))
            .unwrap_or(d.max_in_flight),
        timeout_ms: ms(
            p.timeout,
            "timeout",
            base.as_ref()
                .map_or(d.timeout.0.as_millis() as u64, |b| b.timeout_ms),
        )?,
        max_attempts: p
            .max_attempts
            .or(base.as_ref().map(|b| b.max_attempts))
            .unwrap_or(d.max_attempts),
        backoff_base_ms: ms(
            p.backoff_base,
            "backoff_base",
            base.as_ref()
                .map_or(d.backoff_base.0.as_millis() as u64, |b| b.backoff_base_ms),
        )?,
        backoff_max_ms: ms(
            p.backoff_max,
            "backoff_max",
            base.as_ref()
                .map_or(d.backoff_max.0.as_millis() as u64, |b| b.backoff_max_ms),
        )?,
        ordered: p
            .ordered
            .or(base.as_ref().map(|b| b.ordered))
            .unwrap_or(false),
        paused: base.as_ref().and_then(|b| b.paused.clone()),
        from_oldest: match p.from.as_deref() {
            None => base.as_ref().is_some_and(|b| b.from_oldest),
            Some("oldest") => true,
            Some("newest") => false,
            Some(o) => return Err(Error::param(format!("from {o:?}: use oldest or newest"))),
        },
        created_ms: base.as_ref().map_or(now_ms(), |b| b.created_ms),
    };
    spec.check().map_err(Error::param)?;
    Ok(spec)
}

/// A subscription as the API shows it (never its secret).
fn describe(s: &WebhookSpec) -> Value {
    json!({
        "url": s.url,
        "max_in_flight": s.max_in_flight,
        "timeout_ms": s.timeout_ms,
        "max_attempts": s.max_attempts,
        "backoff_base_ms": s.backoff_base_ms,
        "backoff_max_ms": s.backoff_max_ms,
        "ordered": s.ordered,
        "from": if s.from_oldest { "oldest" } else { "newest" },
        "paused": s.paused.is_some(),
        "paused_reason": s.paused,
        "created_ms": s.created_ms,
    })
}

/// The endpoint's state or log, from the core that runs it (`null` when no core runs it yet).
async fn info(core: &Core, group: &str, topic: &str, log: bool) -> Result<Value, Error> {
    let owner = crate::queue::owner(topic, group, core.shard.cores());
    let req = Request::WebhookInfo {
        group: group.to_owned(),
        topic: topic.to_owned(),
        log,
    };
    let a = if owner == core.shard.id {
        core.execute(req).await
    } else {
        core.shard.mesh.call(owner, req).await?
    };
    match a {
        Answer::Meta(Ok((200, body))) => serde_json::from_str(&body)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("webhook state: {e}"))),
        Answer::Meta(Ok(_)) => Ok(Value::Null),
        Answer::Meta(Err(e)) => Err(e),
        _ => Err(Error::new(ErrorKind::Internal, "unexpected answer")),
    }
}
