//! The tenancy API: apps, keys, legacy secrets, grants, quotas, leased groups' policies and the
//! audit list. Every call
//! goes to core 0's metadata writer ([`crate::tenancy::writer`]); a change is answered once it
//! is durable and in force on every core. Who may call what was checked at the edge
//! ([`kateway_proto::command::Command::need`]).

use crate::node::Core;
use crate::shard::now_ms;
use crate::tenancy::writer::MetaCall;
use kateway_core::tenancy::{Op, Stamp};
use kateway_core::Error;
use kateway_proto::command::{Admin, Caller};
use kateway_proto::reply::Reply;
use std::rc::Rc;

/// Runs a tenancy API call for `caller`.
pub async fn run(core: &Rc<Core>, caller: Caller<'_>, a: Admin<'_>) -> Result<Reply, Error> {
    let stamp = || Stamp {
        actor: caller.actor(),
        ts_ms: now_ms(),
        ip: caller.ip().map(|ip| ip.to_string()),
    };
    let change = |op| MetaCall::Change(op, stamp());
    let call = match a {
        Admin::ListApps => MetaCall::Apps,
        Admin::CreateApp(app) => change(Op::CreateApp { app: app.into() }),
        Admin::DeleteApp(app) => change(Op::DeleteApp { app: app.into() }),
        Admin::ListKeys(app) => MetaCall::Keys(app.into()),
        Admin::CreateKey {
            app,
            scope,
            topics,
            expires,
        } => change(Op::CreateKey {
            app: app.into(),
            scope,
            topics,
            expires_ms: expires.map(|d| now_ms().saturating_add(d.as_millis() as i64)),
        }),
        Admin::RevokeKey { app, keyid } => change(Op::RevokeKey {
            app: app.into(),
            keyid: keyid.into(),
        }),
        Admin::RotateKey { app, keyid, grace } => change(Op::RotateKey {
            app: app.into(),
            keyid: keyid.into(),
            grace_ms: grace.as_millis() as i64,
        }),
        Admin::ImportSecret { app, secret } => change(Op::ImportLegacy {
            app: app.into(),
            secret,
        }),
        Admin::ListGrants(app) => MetaCall::Grants(app.into()),
        Admin::Grant { topic, app, grant } => {
            let topic = format!("{}.{}.{}", topic.appid, topic.topic, topic.ver);
            let app = app.to_owned();
            change(if grant {
                Op::Grant { topic, app }
            } else {
                Op::Ungrant { topic, app }
            })
        }
        Admin::GetQuota(app) => MetaCall::Quota(app.into()),
        Admin::SetQuota { app, quota } => change(Op::SetQuota {
            app: app.into(),
            quota,
        }),
        Admin::GetQueuePolicy { app, group } => MetaCall::QueuePolicy(app.into(), group.into()),
        Admin::SetQueuePolicy { app, group, policy } => change(Op::SetQueuePolicy {
            app: app.into(),
            group: group.into(),
            policy,
        }),
        Admin::Audit { limit } => MetaCall::Audit(limit),
    };
    let (status, body) = core.meta(call).await?;
    Ok(Reply::json(status, body))
}
