//! The metadata as the records add up to ([`State::apply`]), and the rules a change must pass
//! before it becomes records ([`State::plan`]): names are valid, what a change refers to exists,
//! an app holds at most [`MAX_LIVE_KEYS`] live keys of a scope, the last operator key cannot be
//! revoked. Only the writer (core 0 of a gateway) plans; every gateway applies.

use super::record::{
    hex, Audit, KeyRecord, QueuePolicySpec, QuotaSpec, Record, Stamp, WebhookSpec, OPERATOR_APP,
};
use crate::keys::{self, Pepper, Scope};
use crate::names::{validate_part, TopicName};
use crate::{Error, ErrorKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Live keys an app may hold per scope: one in use and one being rotated in.
pub const MAX_LIVE_KEYS: usize = 2;
/// Audit entries kept when the log is compacted.
pub const AUDIT_KEEP: usize = 10_000;
/// Revoked and expired keys are kept (so the audit list can name them) this long.
pub const DEAD_KEY_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

/// A metadata change, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateApp {
        app: String,
    },
    /// Deletes an app: revokes its keys and the grants it holds (its topics stay until deleted).
    DeleteApp {
        app: String,
    },
    CreateKey {
        app: String,
        scope: Scope,
        topics: Option<Vec<String>>,
        expires_ms: Option<i64>,
    },
    /// A new key like `keyid`; `keyid` keeps working for `grace_ms`.
    RotateKey {
        app: String,
        keyid: String,
        grace_ms: i64,
    },
    RevokeKey {
        app: String,
        keyid: String,
    },
    /// The original kateway's app secret, as a legacy (publish + subscribe) key; replaces an
    /// earlier one.
    ImportLegacy {
        app: String,
        secret: String,
    },
    Grant {
        topic: String,
        app: String,
    },
    Ungrant {
        topic: String,
        app: String,
    },
    SetQuota {
        app: String,
        quota: Option<QuotaSpec>,
    },
    /// Sets (or with `None` removes) the delivery policy of app `app`'s leased group `group`.
    SetQueuePolicy {
        app: String,
        group: String,
        policy: Option<QueuePolicySpec>,
    },
    /// Sets (or with `None` removes) the webhook of app `app`'s group `group` on `topic`.
    SetWebhook {
        app: String,
        group: String,
        topic: String,
        spec: Option<WebhookSpec>,
    },
    /// Takes back every grant on a deleted topic, so that a topic made again under its name
    /// starts with none (409 when there is none to take back).
    ForgetTopic {
        topic: String,
    },
    /// An operator key, if there is no live one: the first start.
    Bootstrap,
}

/// A checked change: the records to write and the answer to give once they are written.
#[derive(Debug)]
pub struct Planned {
    pub records: Vec<Record>,
    pub answer: Value,
    /// Status of the answer (201 for a creation, 200 otherwise).
    pub status: u16,
    /// The secret shown once (a new key's text), kept out of `answer` for logging.
    pub secret: Option<String>,
}

/// Apps, keys, grants, quotas and the audit list.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Apps, with whether each is deleted.
    pub apps: BTreeMap<String, (bool, Stamp)>,
    pub keys: BTreeMap<String, KeyRecord>,
    /// `(topic storage name, subscriber app)`.
    pub grants: BTreeMap<(String, String), Stamp>,
    pub quotas: BTreeMap<String, QuotaSpec>,
    /// `(app, group)`: the group's delivery policy.
    pub queue_policies: BTreeMap<(String, String), QueuePolicySpec>,
    /// `(app, group, topic)`: the group's webhook on the topic.
    pub webhooks: BTreeMap<(String, String, String), WebhookSpec>,
    pub audit: BTreeMap<String, Audit>,
    /// Records applied.
    pub applied: u64,
}

fn conflict(msg: String) -> Error {
    Error::new(ErrorKind::Conflict, msg)
}

fn not_found(msg: String) -> Error {
    Error::new(ErrorKind::UnknownEntity, msg)
}

impl State {
    /// Applies one record.
    pub fn apply(&mut self, r: Record) {
        self.applied += 1;
        match r {
            Record::App {
                app,
                deleted,
                stamp,
            } => {
                self.apps.insert(app, (deleted, stamp));
            }
            Record::Key(k) => {
                self.keys.insert(k.keyid.clone(), k);
            }
            Record::Grant {
                topic,
                app,
                deleted,
                stamp,
            } => {
                if deleted {
                    self.grants.remove(&(topic, app));
                } else {
                    self.grants.insert((topic, app), stamp);
                }
            }
            Record::Quota { app, quota, .. } => match quota {
                Some(q) => {
                    self.quotas.insert(app, q);
                }
                None => {
                    self.quotas.remove(&app);
                }
            },
            Record::QueuePolicy {
                app, group, policy, ..
            } => match policy {
                Some(q) => {
                    self.queue_policies.insert((app, group), q);
                }
                None => {
                    self.queue_policies.remove(&(app, group));
                }
            },
            Record::Webhook {
                app,
                group,
                topic,
                spec,
                ..
            } => match spec {
                Some(w) => {
                    self.webhooks.insert((app, group, topic), w);
                }
                None => {
                    self.webhooks.remove(&(app, group, topic));
                }
            },
            Record::Audit(a) => {
                self.audit.insert(a.id.clone(), a);
                while self.audit.len() > AUDIT_KEEP {
                    self.audit.pop_first();
                }
            }
        }
    }

    /// The records that rebuild this state (for compaction): every entity's latest record,
    /// dead keys younger than [`DEAD_KEY_KEEP_MS`], and the newest [`AUDIT_KEEP`] audit entries.
    pub fn records(&self, now_ms: i64) -> Vec<Record> {
        let mut out = Vec::new();
        for (app, (deleted, stamp)) in &self.apps {
            out.push(Record::App {
                app: app.clone(),
                deleted: *deleted,
                stamp: stamp.clone(),
            });
        }
        for k in self.keys.values() {
            let dead_since = if k.revoked {
                Some(k.stamp.ts_ms)
            } else {
                k.expires_ms.filter(|e| *e <= now_ms)
            };
            if dead_since.is_none_or(|t| now_ms - t < DEAD_KEY_KEEP_MS) {
                out.push(Record::Key(k.clone()));
            }
        }
        for ((topic, app), stamp) in &self.grants {
            out.push(Record::Grant {
                topic: topic.clone(),
                app: app.clone(),
                deleted: false,
                stamp: stamp.clone(),
            });
        }
        for (app, q) in &self.quotas {
            out.push(Record::Quota {
                app: app.clone(),
                quota: Some(*q),
                stamp: Stamp {
                    actor: "gateway".into(),
                    ts_ms: now_ms,
                    ip: None,
                },
            });
        }
        for ((app, group, topic), w) in &self.webhooks {
            out.push(Record::Webhook {
                app: app.clone(),
                group: group.clone(),
                topic: topic.clone(),
                spec: Some(w.clone()),
                stamp: Stamp {
                    actor: "gateway".into(),
                    ts_ms: now_ms,
                    ip: None,
                },
            });
        }
        for ((app, group), q) in &self.queue_policies {
            out.push(Record::QueuePolicy {
                app: app.clone(),
                group: group.clone(),
                policy: Some(*q),
                stamp: Stamp {
                    actor: "gateway".into(),
                    ts_ms: now_ms,
                    ip: None,
                },
            });
        }
        out.extend(self.audit.values().cloned().map(Record::Audit));
        out
    }

    /// Whether app `app` exists (and is not deleted).
    pub fn app_exists(&self, app: &str) -> bool {
        self.apps.get(app).is_some_and(|(deleted, _)| !deleted)
    }

    /// Live operator keys.
    pub fn operator_keys(&self, now_ms: i64) -> usize {
        self.keys
            .values()
            .filter(|k| k.scope == Scope::Operator && k.live(now_ms))
            .count()
    }

    /// Live operator keys hashed with the pepper `pepper_id` (those made with another pepper
    /// can never authenticate here).
    pub fn usable_operator_keys(&self, now_ms: i64, pepper_id: &str) -> usize {
        self.keys
            .values()
            .filter(|k| k.scope == Scope::Operator && k.live(now_ms) && k.pepper_id == pepper_id)
            .count()
    }

    /// Live keys hashed with another pepper than `pepper_id`.
    pub fn foreign_keys(&self, now_ms: i64, pepper_id: &str) -> usize {
        self.keys
            .values()
            .filter(|k| k.live(now_ms) && k.pepper_id != pepper_id)
            .count()
    }

    fn live_keys(&self, app: &str, scope: Scope, now_ms: i64) -> usize {
        self.keys
            .values()
            .filter(|k| k.app == app && k.scope == scope && k.live(now_ms))
            .count()
    }

    fn need_app(&self, app: &str) -> Result<(), Error> {
        if app == OPERATOR_APP || self.app_exists(app) {
            Ok(())
        } else {
            Err(not_found(format!("unknown app {app}")))
        }
    }

    fn key_of(&self, app: &str, keyid: &str) -> Result<&KeyRecord, Error> {
        self.keys
            .get(keyid)
            .filter(|k| k.app == app)
            .ok_or_else(|| not_found(format!("app {app} has no key {keyid}")))
    }
}

/// A key as the API shows it: never its hash; its text only when just made.
pub fn key_json(k: &KeyRecord, text: Option<&str>) -> Value {
    let mut v = json!({
        "keyid": k.keyid,
        "app": k.app,
        "scope": k.scope.name(),
        "created_ms": k.created_ms,
        "expires_ms": k.expires_ms,
        "revoked": k.revoked,
    });
    if let Some(t) = &k.topics {
        v["topics"] = json!(t);
    }
    if let Some(t) = text {
        v["key"] = json!(t);
    }
    v
}

mod plan;
#[cfg(test)]
mod tests;
