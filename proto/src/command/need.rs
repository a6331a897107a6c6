//! What each command needs of its caller ([`Command::need`]): the match is exhaustive, so a
//! command cannot be added without saying who may run it.

use super::*;
use crate::route::Route;
use kateway_core::keys::Scope;
use kateway_core::tenancy::{Need, TopicRef};

impl<'a> TopicPath<'a> {
    /// The topic as the tenancy rules name it.
    pub fn as_ref(&self) -> TopicRef<'a> {
        TopicRef {
            app: self.appid,
            topic: self.topic,
            ver: self.ver,
        }
    }
}

impl<'a> Command<'a> {
    /// Who may run this command.
    pub fn need(&self) -> Need<'a> {
        match self {
            Command::Alive | Command::Ready | Command::OpenApi => Need::Nothing,
            Command::Metrics | Command::ProcessStatus => Need::Operator,
            Command::Publish(p) | Command::Socket(Socket::Publish(p)) => Need::Publish {
                topic: p.topic,
                ver: p.ver,
            },
            Command::Subscribe(s) | Command::Socket(Socket::Subscribe(s)) => {
                Need::Subscribe(s.topic.as_ref())
            }
            Command::AckBatch(a) => Need::Subscribe(a.topic.as_ref()),
            Command::Settle(s) => Need::Subscribe(s.topic.as_ref()),
            Command::DeadLetters(d) => Need::AppAdmin(d.appid),
            Command::Delays(d) => Need::Publish {
                topic: d.topic,
                ver: d.ver,
            },
            Command::Clock { .. } | Command::Reload => Need::Operator,
            Command::Ui => Need::Nothing,
            Command::Dashboard { app: None, .. } => Need::Operator,
            Command::Dashboard { app: Some(app), .. } => Need::AppAdmin(app),
            Command::Browse { topic, .. } => Need::AppAdmin(topic.appid),
            Command::Webhook(w) => Need::Subscribe(w.topic.as_ref()),
            Command::Seek(s) => Need::Subscribe(s.topic.as_ref()),
            Command::TopicAdmin(t) => Need::Owner(t.topic.as_ref()),
            Command::Partitions(t) => Need::Read(t.as_ref()),
            Command::TopicStatus { topic, .. } => Need::Read(topic.as_ref()),
            Command::Admin(a) => match a {
                Admin::ListApps
                | Admin::CreateApp(_)
                | Admin::DeleteApp(_)
                | Admin::ImportSecret { .. }
                | Admin::SetQuota { .. }
                | Admin::Audit { .. } => Need::Operator,
                Admin::CreateKey {
                    scope: Scope::Operator,
                    ..
                } => Need::Operator,
                Admin::ListKeys(app)
                | Admin::CreateKey { app, .. }
                | Admin::RevokeKey { app, .. }
                | Admin::RotateKey { app, .. }
                | Admin::ListGrants(app)
                | Admin::GetQuota(app)
                | Admin::GetQueuePolicy { app, .. }
                | Admin::SetQueuePolicy { app, .. } => Need::AppAdmin(app),
                Admin::Grant { topic, .. } => Need::Owner(topic.as_ref()),
            },
        }
    }

    /// What a request on route `r` needs, known before its parameters and body are parsed
    /// (so that a caller who may not use the route hears 403, not what is wrong with the
    /// request). Parameters that are no valid names are named as they are.
    pub fn need_of_route<'r>(r: &Route<'r>) -> Need<'r> {
        use crate::route::AdminRoute as A;
        let t = |app, topic, ver| TopicRef { app, topic, ver };
        match r {
            Route::Alive | Route::Ready | Route::OpenApi => Need::Nothing,
            Route::Metrics | Route::ProcessStatus => Need::Operator,
            Route::Publish { topic, ver }
            | Route::WsPublish { topic, ver }
            | Route::Delays { topic, ver, .. } => Need::Publish { topic, ver },
            Route::Clock | Route::Reload => Need::Operator,
            Route::Ui => Need::Nothing,
            // An app's view (`?app=`) is for its app-admin key too: the command says.
            Route::Dashboard => Need::Operator,
            Route::Browse { appid, .. } => Need::AppAdmin(appid),
            Route::Webhook {
                appid, topic, ver, ..
            } => Need::Subscribe(t(appid, topic, ver)),
            Route::Subscribe { appid, topic, ver }
            | Route::WsSubscribe { appid, topic, ver }
            | Route::AckBatch {
                appid, topic, ver, ..
            }
            | Route::Seek {
                appid, topic, ver, ..
            }
            | Route::Settle {
                appid, topic, ver, ..
            } => Need::Subscribe(t(appid, topic, ver)),
            Route::Topic {
                appid, topic, ver, ..
            }
            | Route::Admin(A::Grant {
                appid, topic, ver, ..
            }) => Need::Owner(t(appid, topic, ver)),
            Route::Partitions { appid, topic, ver } | Route::TopicStatus { appid, topic, ver } => {
                Need::Read(t(appid, topic, ver))
            }
            Route::Admin(A::Apps | A::App { .. } | A::Secret { .. } | A::Audit) => Need::Operator,
            Route::Admin(A::Quota { method, app }) => match method {
                Method::Put | Method::Delete => Need::Operator,
                _ => Need::AppAdmin(app),
            },
            Route::DeadLetters { appid, .. } | Route::Admin(A::QueuePolicy { app: appid, .. }) => {
                Need::AppAdmin(appid)
            }
            Route::Admin(
                A::Keys { app, .. }
                | A::Key { app, .. }
                | A::Rotate { app, .. }
                | A::Grants { app },
            ) => Need::AppAdmin(app),
        }
    }

    /// Whether this command holds a stream open (a long poll, an event stream, a WebSocket):
    /// such a session is ended when its key stops allowing it.
    pub fn is_session(&self) -> bool {
        self.may_park() || matches!(self, Command::Socket(_))
    }
}
