use super::*;
use crate::tenancy::Snapshot;

fn stamp(ts: i64) -> Stamp {
    Stamp {
        actor: "test".into(),
        ts_ms: ts,
        ip: None,
    }
}

fn run(s: &mut State, op: Op, ts: i64) -> Result<Planned, Error> {
    let p = Pepper::new(&[1; 32]).unwrap();
    let nonce = s.applied.to_string();
    let planned = s.plan(op, stamp(ts), &p, &nonce)?;
    for r in &planned.records {
        s.apply(Record::decode(&r.encode()).unwrap());
    }
    Ok(planned)
}

#[test]
fn apps_keys_rotation_and_the_rules() {
    let mut s = State::default();
    let boot = run(&mut s, Op::Bootstrap, 1).unwrap();
    assert!(boot.secret.unwrap().starts_with("kwo_"));
    assert_eq!(run(&mut s, Op::Bootstrap, 2).unwrap_err().status(), 409);
    run(&mut s, Op::CreateApp { app: "a".into() }, 3).unwrap();
    assert_eq!(
        run(&mut s, Op::CreateApp { app: "a".into() }, 3)
            .unwrap_err()
            .status(),
        409
    );
    assert_eq!(
        run(&mut s, Op::CreateApp { app: "_x".into() }, 3)
            .unwrap_err()
            .status(),
        400
    );
    let key = |s: &mut State, scope| {
        run(
            s,
            Op::CreateKey {
                app: "a".into(),
                scope,
                topics: None,
                expires_ms: None,
            },
            4,
        )
    };
    let k1 = key(&mut s, Scope::Publish).unwrap();
    assert!(k1.secret.as_deref().unwrap().starts_with("kwp_"));
    assert!(!k1.answer.to_string().contains("hash"));
    key(&mut s, Scope::Publish).unwrap();
    assert_eq!(
        key(&mut s, Scope::Publish).unwrap_err().status(),
        409,
        "two live keys at most"
    );
    key(&mut s, Scope::Subscribe).unwrap();
    let id1 = k1.answer["keyid"].as_str().unwrap().to_owned();
    // Rotating needs room: revoke the second publish key first.
    assert_eq!(
        run(
            &mut s,
            Op::RotateKey {
                app: "a".into(),
                keyid: id1.clone(),
                grace_ms: 10
            },
            5
        )
        .unwrap_err()
        .status(),
        409
    );
    let id2 = s
        .keys
        .values()
        .find(|k| k.scope == Scope::Publish && k.keyid != id1)
        .unwrap()
        .keyid
        .clone();
    run(
        &mut s,
        Op::RevokeKey {
            app: "a".into(),
            keyid: id2,
        },
        5,
    )
    .unwrap();
    let rot = run(
        &mut s,
        Op::RotateKey {
            app: "a".into(),
            keyid: id1.clone(),
            grace_ms: 10,
        },
        6,
    )
    .unwrap();
    assert_eq!(s.keys[&id1].expires_ms, Some(16));
    assert!(s.keys[&id1].live(15) && !s.keys[&id1].live(16));
    assert_ne!(rot.answer["keyid"], json!(id1));
    // The last operator key stays.
    let op = s
        .keys
        .values()
        .find(|k| k.scope == Scope::Operator)
        .unwrap()
        .keyid
        .clone();
    assert_eq!(
        run(
            &mut s,
            Op::RevokeKey {
                app: OPERATOR_APP.into(),
                keyid: op
            },
            7
        )
        .unwrap_err()
        .status(),
        409
    );
    // Every change left an audit entry.
    assert_eq!(s.audit.len(), 7);
}

#[test]
fn queue_policies_are_checked_kept_and_compacted() {
    let mut s = State::default();
    run(&mut s, Op::CreateApp { app: "a".into() }, 1).unwrap();
    let set = |s: &mut State, app: &str, group: &str, p: Option<QueuePolicySpec>| {
        run(
            s,
            Op::SetQueuePolicy {
                app: app.into(),
                group: group.into(),
                policy: p,
            },
            2,
        )
        .map_err(|e| e.status())
    };
    let p = QueuePolicySpec {
        max_attempts: Some(7),
        backoff_base_ms: Some(100),
        backoff_max_ms: Some(1000),
        ..Default::default()
    };
    assert_eq!(set(&mut s, "nope", "g", Some(p)).unwrap_err(), 404);
    assert_eq!(set(&mut s, "a", "bad.group", Some(p)).unwrap_err(), 400);
    for bad in [
        QueuePolicySpec {
            max_attempts: Some(0),
            ..p
        },
        QueuePolicySpec {
            backoff_base_ms: Some(2000),
            ..p
        },
        QueuePolicySpec {
            visibility_ms: Some(0),
            ..p
        },
    ] {
        assert_eq!(
            set(&mut s, "a", "g", Some(bad)).unwrap_err(),
            400,
            "{bad:?}"
        );
    }
    set(&mut s, "a", "g", Some(p)).unwrap();
    set(&mut s, "a", "h", Some(p)).unwrap();
    set(&mut s, "a", "h", None).unwrap();
    assert_eq!(s.queue_policies.len(), 1);
    let snap = Snapshot::build(&s, 1, 3);
    assert_eq!(snap.queue_policy("a.g"), Some(&p));
    assert_eq!(snap.queue_policy("a.h"), None);
    // Compaction keeps it.
    let mut again = State::default();
    for r in s.records(3) {
        again.apply(r);
    }
    assert_eq!(again.queue_policies, s.queue_policies);
}

#[test]
fn grants_quotas_deletion_and_compaction() {
    let mut s = State::default();
    for a in ["a", "b"] {
        run(&mut s, Op::CreateApp { app: a.into() }, 1).unwrap();
    }
    run(
        &mut s,
        Op::Grant {
            topic: "a.t.v1".into(),
            app: "b".into(),
        },
        2,
    )
    .unwrap();
    assert_eq!(
        run(
            &mut s,
            Op::Grant {
                topic: "a.t.v1".into(),
                app: "a".into()
            },
            2
        )
        .unwrap_err()
        .status(),
        400
    );
    assert_eq!(
        run(
            &mut s,
            Op::Grant {
                topic: "bad".into(),
                app: "b".into()
            },
            2
        )
        .unwrap_err()
        .status(),
        400
    );
    let q = QuotaSpec {
        publish_messages_per_sec: Some(10),
        ..Default::default()
    };
    run(
        &mut s,
        Op::SetQuota {
            app: "b".into(),
            quota: Some(q),
        },
        3,
    )
    .unwrap();
    run(
        &mut s,
        Op::ImportLegacy {
            app: "b".into(),
            secret: "s3cret".into(),
        },
        3,
    )
    .unwrap();
    let legacy = s.keys.values().find(|k| k.scope == Scope::Legacy).unwrap();
    assert!(!legacy.hash.contains("s3cret"));
    // Rebuilding from the compacted records gives the same state.
    let mut again = State::default();
    for r in s.records(4) {
        again.apply(r);
    }
    assert_eq!(again.apps, s.apps);
    assert_eq!(again.keys, s.keys);
    assert_eq!(again.grants, s.grants);
    assert_eq!(again.quotas, s.quotas);
    assert_eq!(again.audit, s.audit);
    let hook = WebhookSpec {
        url: "https://example.com/hook".into(),
        secret_nonce: "00".into(),
        max_in_flight: 1,
        timeout_ms: 1000,
        max_attempts: 1,
        backoff_base_ms: 100,
        backoff_max_ms: 1000,
        ordered: false,
        paused: None,
        from_oldest: false,
        created_ms: 0,
    };
    for app in ["a", "b"] {
        let op = Op::SetWebhook {
            app: app.into(),
            group: "g".into(),
            topic: "a.t.v1".into(),
            spec: Some(hook.clone()),
        };
        run(&mut s, op, 4).unwrap();
    }
    run(&mut s, Op::DeleteApp { app: "b".into() }, 5).unwrap();
    // Its subscriptions went with it; another app's stay.
    let hooks: Vec<&str> = s.webhooks.keys().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(hooks, ["a"]);
    assert!(s.grants.is_empty());
    assert!(s.keys.values().all(|k| k.revoked));
    assert!(!s.app_exists("b"));
}
