//! [`State::plan`]: a Tenancy API change checked against the state and turned into the records
//! that make it, with its audit entry and its answer.

use super::*;

impl State {
    /// Checks `op` made by `stamp`'s actor and turns it into records (the change, then its
    /// audit entry) and an answer. `nonce` makes the audit id unique.
    pub fn plan(
        &self,
        op: Op,
        stamp: Stamp,
        pepper: &Pepper,
        nonce: &str,
    ) -> Result<Planned, Error> {
        let now = stamp.ts_ms;
        let mut secret = None;
        let (records, target, answer, status, action): (Vec<Record>, String, Value, u16, &str) =
            match op {
                Op::CreateApp { app } => {
                    validate_part("appid", &app)?;
                    if app.starts_with('_') {
                        return Err(Error::param("app names starting with _ are reserved"));
                    }
                    if self.app_exists(&app) {
                        return Err(conflict(format!("app {app} already exists")));
                    }
                    let r = Record::App {
                        app: app.clone(),
                        deleted: false,
                        stamp: stamp.clone(),
                    };
                    let a = json!({"app": app});
                    (vec![r], format!("app/{app}"), a, 201, "create_app")
                }
                Op::DeleteApp { app } => {
                    if !self.app_exists(&app) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    let mut v = vec![Record::App {
                        app: app.clone(),
                        deleted: true,
                        stamp: stamp.clone(),
                    }];
                    for k in self.keys.values().filter(|k| k.app == app && !k.revoked) {
                        let mut k = k.clone();
                        k.revoked = true;
                        k.stamp = stamp.clone();
                        v.push(Record::Key(k));
                    }
                    // Its subscriptions go with it: a new app of the same name starts bare.
                    for (a, group, topic) in self.webhooks.keys().filter(|(a, _, _)| *a == app) {
                        v.push(Record::Webhook {
                            app: a.clone(),
                            group: group.clone(),
                            topic: topic.clone(),
                            spec: None,
                            stamp: stamp.clone(),
                        });
                    }
                    for (topic, sub) in self.grants.keys().filter(|(t, s)| {
                        *s == app || TopicName::parse_storage(t).is_ok_and(|n| n.appid == app)
                    }) {
                        v.push(Record::Grant {
                            topic: topic.clone(),
                            app: sub.clone(),
                            deleted: true,
                            stamp: stamp.clone(),
                        });
                    }
                    (
                        v,
                        format!("app/{app}"),
                        json!({"app": app, "deleted": true}),
                        200,
                        "delete_app",
                    )
                }
                Op::CreateKey {
                    app,
                    scope,
                    topics,
                    expires_ms,
                } => {
                    self.need_app(&app)?;
                    if (scope == Scope::Operator) != (app == OPERATOR_APP) {
                        return Err(Error::param(
                            "operator keys belong to no app, and apps hold no operator keys",
                        ));
                    }
                    if scope == Scope::Legacy {
                        return Err(Error::param("import a legacy secret instead"));
                    }
                    if let Some(t) = &topics {
                        for n in t {
                            let name = TopicName::parse_storage(n)?;
                            // Only a subscribe key reads other apps' (granted) topics.
                            if scope != Scope::Subscribe && name.appid != app {
                                return Err(Error::param(format!(
                                    "a {} key is narrowed to the app's own topics: {n} is not",
                                    scope.name()
                                )));
                            }
                        }
                        if t.is_empty() {
                            return Err(Error::param("topics= names no topic"));
                        }
                    }
                    if expires_ms.is_some_and(|e| e <= now) {
                        return Err(Error::param("the expiry is in the past"));
                    }
                    if self.live_keys(&app, scope, now) >= MAX_LIVE_KEYS {
                        return Err(conflict(format!(
                            "app {app} holds {MAX_LIVE_KEYS} live {} keys: rotate or revoke one",
                            scope.name()
                        )));
                    }
                    let (k, text) =
                        self.new_key(&app, scope, topics, expires_ms, &stamp, pepper)?;
                    secret = Some(text.clone());
                    let a = key_json(&k, Some(&text));
                    (
                        vec![Record::Key(k.clone())],
                        format!("key/{app}/{}", k.keyid),
                        a,
                        201,
                        "create_key",
                    )
                }
                Op::RotateKey {
                    app,
                    keyid,
                    grace_ms,
                } => {
                    let old = self.key_of(&app, &keyid)?;
                    if !old.live(now) {
                        return Err(conflict(format!("key {keyid} is revoked or expired")));
                    }
                    if old.scope == Scope::Legacy {
                        return Err(Error::param(
                            "a legacy secret is replaced by creating publish and subscribe keys",
                        ));
                    }
                    let until = now.saturating_add(grace_ms.max(0));
                    if old.expires_ms.is_some_and(|e| e <= until) {
                        return Err(conflict(format!("key {keyid} is already retiring")));
                    }
                    if self.live_keys(&app, old.scope, now) >= MAX_LIVE_KEYS {
                        return Err(conflict(format!(
                            "app {app} holds {MAX_LIVE_KEYS} live {} keys: revoke one first",
                            old.scope.name()
                        )));
                    }
                    let (k, text) =
                        self.new_key(&app, old.scope, old.topics.clone(), None, &stamp, pepper)?;
                    let mut retiring = old.clone();
                    retiring.expires_ms = Some(until);
                    retiring.stamp = stamp.clone();
                    let mut a = key_json(&k, Some(&text));
                    a["retiring"] = json!({"keyid": keyid, "expires_ms": retiring.expires_ms});
                    secret = Some(text);
                    (
                        vec![Record::Key(retiring), Record::Key(k.clone())],
                        format!("key/{app}/{keyid}"),
                        a,
                        201,
                        "rotate_key",
                    )
                }
                Op::RevokeKey { app, keyid } => {
                    let k = self.key_of(&app, &keyid)?;
                    if k.scope == Scope::Operator && k.live(now) && self.operator_keys(now) <= 1 {
                        return Err(conflict(
                            "this is the last live operator key: create another one first".into(),
                        ));
                    }
                    let mut k = k.clone();
                    k.revoked = true;
                    k.stamp = stamp.clone();
                    let a = key_json(&k, None);
                    (
                        vec![Record::Key(k)],
                        format!("key/{app}/{keyid}"),
                        a,
                        200,
                        "revoke_key",
                    )
                }
                Op::ImportLegacy { app, secret: s } => {
                    if !self.app_exists(&app) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
                        return Err(Error::param(
                            "a legacy secret is 1-256 printable characters",
                        ));
                    }
                    if keys::parse(&s).is_ok() {
                        return Err(Error::param(
                            "that is a kateway key, not a legacy secret: it cannot be imported",
                        ));
                    }
                    let mut v: Vec<Record> = self
                        .keys
                        .values()
                        .filter(|k| k.app == app && k.scope == Scope::Legacy && !k.revoked)
                        .map(|k| {
                            let mut k = k.clone();
                            k.revoked = true;
                            k.stamp = stamp.clone();
                            Record::Key(k)
                        })
                        .collect();
                    let nk = keys::legacy(&s, pepper).map_err(rng)?;
                    let k = KeyRecord {
                        keyid: nk.keyid,
                        app: app.clone(),
                        scope: Scope::Legacy,
                        topics: None,
                        hash: hex(&nk.hash),
                        pepper_id: pepper.id(),
                        created_ms: now,
                        expires_ms: None,
                        revoked: false,
                        stamp: stamp.clone(),
                    };
                    let a = key_json(&k, None);
                    let target = format!("key/{app}/{}", k.keyid);
                    v.push(Record::Key(k));
                    (v, target, a, 201, "import_legacy_secret")
                }
                Op::Grant { topic, app } => {
                    let t = TopicName::parse_storage(&topic)?;
                    if !self.app_exists(&app) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    if t.appid == app {
                        return Err(Error::param("an app needs no grant on its own topics"));
                    }
                    let r = Record::Grant {
                        topic: topic.clone(),
                        app: app.clone(),
                        deleted: false,
                        stamp: stamp.clone(),
                    };
                    let a = json!({"topic": topic, "app": app});
                    (vec![r], format!("grant/{topic}/{app}"), a, 200, "grant")
                }
                Op::Ungrant { topic, app } => {
                    if !self.grants.contains_key(&(topic.clone(), app.clone())) {
                        return Err(not_found(format!("app {app} holds no grant on {topic}")));
                    }
                    let r = Record::Grant {
                        topic: topic.clone(),
                        app: app.clone(),
                        deleted: true,
                        stamp: stamp.clone(),
                    };
                    let a = json!({"topic": topic, "app": app, "deleted": true});
                    (vec![r], format!("grant/{topic}/{app}"), a, 200, "ungrant")
                }
                Op::SetQuota { app, quota } => {
                    if !self.app_exists(&app) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    if let Some(q) = &quota {
                        let zero = [
                            q.publish_messages_per_sec,
                            q.publish_bytes_per_sec,
                            q.subscribe_bytes_per_sec,
                        ]
                        .contains(&Some(0))
                            || q.max_streams == Some(0);
                        if zero {
                            return Err(Error::param("a quota of 0 is no quota: leave it out"));
                        }
                    }
                    let r = Record::Quota {
                        app: app.clone(),
                        quota,
                        stamp: stamp.clone(),
                    };
                    let a = json!({"app": app, "quota": quota});
                    (vec![r], format!("quota/{app}"), a, 200, "set_quota")
                }
                Op::SetQueuePolicy { app, group, policy } => {
                    if !self.app_exists(&app) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    validate_part("group", &group)?;
                    if let Some(q) = &policy {
                        q.check().map_err(Error::param)?;
                    }
                    let r = Record::QueuePolicy {
                        app: app.clone(),
                        group: group.clone(),
                        policy,
                        stamp: stamp.clone(),
                    };
                    let a = json!({"app": app, "group": group, "policy": policy});
                    (
                        vec![r],
                        format!("qpolicy/{app}/{group}"),
                        a,
                        200,
                        "set_queue_policy",
                    )
                }
                Op::SetWebhook {
                    app,
                    group,
                    topic,
                    spec,
                } => {
                    if self.apps.get(&app).is_some_and(|(deleted, _)| *deleted) {
                        return Err(not_found(format!("unknown app {app}")));
                    }
                    validate_part("group", &group)?;
                    if let Some(w) = &spec {
                        w.check().map_err(Error::param)?;
                    }
                    let r = Record::Webhook {
                        app: app.clone(),
                        group: group.clone(),
                        topic: topic.clone(),
                        spec: spec.clone(),
                        stamp: stamp.clone(),
                    };
                    let a = json!({"app": app, "group": group, "topic": topic});
                    (
                        vec![r],
                        format!("webhook/{app}/{group}/{topic}"),
                        a,
                        200,
                        "set_webhook",
                    )
                }
                Op::ForgetTopic { topic } => {
                    let v: Vec<Record> = self
                        .grants
                        .keys()
                        .filter(|(t, _)| *t == topic)
                        .map(|(t, app)| Record::Grant {
                            topic: t.clone(),
                            app: app.clone(),
                            deleted: true,
                            stamp: stamp.clone(),
                        })
                        .collect();
                    if v.is_empty() {
                        return Err(conflict(format!("no grant on {topic}")));
                    }
                    let a = json!({"topic": topic, "grants_taken_back": v.len()});
                    (v, format!("topic/{topic}"), a, 200, "forget_topic_grants")
                }
                Op::Bootstrap => {
                    if self.usable_operator_keys(now, &pepper.id()) > 0 {
                        return Err(conflict("an operator key exists".into()));
                    }
                    let (k, text) =
                        self.new_key(OPERATOR_APP, Scope::Operator, None, None, &stamp, pepper)?;
                    let a = key_json(&k, Some(&text));
                    secret = Some(text);
                    (
                        vec![Record::Key(k.clone())],
                        format!("key/{OPERATOR_APP}/{}", k.keyid),
                        a,
                        201,
                        "bootstrap_operator_key",
                    )
                }
            };
        let mut records = records;
        records.push(Record::Audit(Audit {
            id: format!("{:013}-{nonce}", now.max(0)),
            stamp,
            action: action.to_owned(),
            target,
        }));
        Ok(Planned {
            records,
            answer,
            status,
            secret,
        })
    }

    fn new_key(
        &self,
        app: &str,
        scope: Scope,
        topics: Option<Vec<String>>,
        expires_ms: Option<i64>,
        stamp: &Stamp,
        pepper: &Pepper,
    ) -> Result<(KeyRecord, String), Error> {
        let nk = keys::generate(scope, pepper).map_err(rng)?;
        if self.keys.contains_key(&nk.keyid) {
            return Err(Error::new(ErrorKind::Internal, "key id collision: retry"));
        }
        let k = KeyRecord {
            keyid: nk.keyid.clone(),
            app: app.to_owned(),
            scope,
            topics,
            hash: hex(&nk.hash),
            pepper_id: pepper.id(),
            created_ms: stamp.ts_ms,
            expires_ms,
            revoked: false,
            stamp: stamp.clone(),
        };
        Ok((k, nk.text))
    }
}

fn rng(_: ring::error::Unspecified) -> Error {
    Error::new(ErrorKind::Internal, "the system's random source failed")
}
