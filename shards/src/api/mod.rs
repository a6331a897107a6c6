//! The API: a caller and a command in, a reply out, for every transport. Handlers return
//! `Result<Reply, Error>`; [`execute`] turns a failure into its reply in one place
//! ([`Reply::error`]). The transport counts the reply ([`count`]).

mod admin;
pub mod dashboard;
mod delays;
mod dlq;
pub mod publish;
mod queue;
mod status;
pub mod stream;
pub mod subscribe;
mod topics;
mod webhooks;

use crate::metrics;
use crate::node::Core;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Caller, Command};
use kateway_proto::reply::Reply;
use std::rc::Rc;
use std::time::Instant;

/// Runs a command for a caller.
pub async fn execute(core: &Rc<Core>, caller: Caller<'_>, cmd: Command<'_>) -> Reply {
    let route = cmd.route_name();
    // A connection's task is as large as the largest future any of its requests could need:
    // publishes, subscribes and batch acks run inline; settles (whose future is the largest
    // of the data path) and every other route in a box of their own, allocated per request.
    let r = match cmd {
        Command::Publish(p) => publish::publish(core, caller, p).await,
        Command::Subscribe(s) if s.lease.is_some() => queue::subscribe(core, caller, s).await,
        Command::Subscribe(s) => subscribe::subscribe(core, caller, s).await,
        Command::Settle(s) => Box::pin(queue::settle(core, caller, s)).await,
        Command::AckBatch(a) => subscribe::ack_batch(core, caller, a).await,
        cmd => Box::pin(other(core, caller, cmd)).await,
    };
    let mut reply = r.unwrap_or_else(|e| Reply::error(&e));
    reply.route = route;
    if route == "tenancy" {
        // Keys, secrets and grants: no answer of the Tenancy API is kept by a cache, its
        // refusals (a 404 is cacheable by default) included.
        reply = reply.header(
            "cache-control",
            kateway_proto::reply::Value::Static("no-store"),
        );
    }
    reply
}

/// Every route but the data path's (see [`execute`]).
async fn other(core: &Rc<Core>, caller: Caller<'_>, cmd: Command<'_>) -> Result<Reply, Error> {
    match cmd {
        Command::Alive => Ok(alive()),
        Command::Ready => status::ready(core).await,
        Command::Metrics => status::metrics(core).await,
        Command::OpenApi => Ok(openapi()),
        Command::ProcessStatus => status::process(core).await,
        Command::Publish(_) | Command::Subscribe(_) | Command::Settle(_) | Command::AckBatch(_) => {
            Err(Error::new(
                ErrorKind::Internal,
                "a data-path route reached the other routes",
            ))
        }
        Command::DeadLetters(d) => dlq::run(core, d).await,
        Command::Socket(_) => Err(Error::new(
            ErrorKind::UpgradeRequired,
            "this route speaks WebSocket: send a GET with Upgrade: websocket",
        )),
        Command::Seek(s) => subscribe::seek(core, caller, s).await,
        Command::TopicAdmin(t) => topics::administer(core, caller, t).await,
        Command::Partitions(t) => status::partitions(core, t).await,
        Command::TopicStatus { topic, group } => status::topic(core, caller, topic, group).await,
        Command::Admin(a) => admin::run(core, caller, a).await,
        Command::Delays(d) => delays::run(core, caller, d).await,
        Command::Clock { advance } => delays::clock(core, advance),
        Command::Reload => status::reload(core).await,
        Command::Ui => Ok(dashboard::page()),
        Command::Dashboard { app, .. } => dashboard::snapshot_reply(core, app).await,
        Command::Browse {
            topic,
            partition,
            n,
        } => dashboard::browse(core, topic, partition, n).await,
        Command::Webhook(w) => webhooks::run(core, caller, w).await,
    }
}

/// The answer to `/alive` or `/ready` (what a connection beyond the cap may still ask).
pub async fn alive_or_ready(core: &Rc<Core>, cmd: &Command<'_>) -> Reply {
    match cmd {
        Command::Ready => status::ready(core)
            .await
            .unwrap_or_else(|e| Reply::error(&e)),
        _ => alive(),
    }
}

/// The answer to `/alive`: the process answers.
/// `GET /openapi.json`: the document compiled in.
fn openapi() -> Reply {
    Reply::json(200, kateway_proto::openapi::DOCUMENT.as_bytes())
}

pub fn alive() -> Reply {
    Reply::json(200, &b"{\"ok\":1}"[..])
}

/// Counts an answered request: by status class, and its latency from `t0` by route and status.
pub fn count(core: &Core, route: &'static str, status: u16, t0: Instant) {
    let m = &core.shard.metrics;
    metrics::inc(&m.http_requests_total);
    match status / 100 {
        2 => metrics::inc(&m.http_responses_2xx_total),
        4 => metrics::inc(&m.http_responses_4xx_total),
        5 => metrics::inc(&m.http_responses_5xx_total),
        _ => {}
    }
    m.routes.observe(route, status, t0.elapsed());
}
