use super::super::record::Stamp;
use super::super::state::Op;
use super::*;
use crate::keys::{self, Pepper};

fn world() -> (State, Pepper, String, String, String) {
    let pepper = Pepper::new(&[3; 32]).unwrap();
    let mut s = State::default();
    let mut text = Vec::new();
    let mut run = |s: &mut State, op| {
        let stamp = Stamp {
            actor: "t".into(),
            ts_ms: 10,
            ip: None,
        };
        let nonce = s.applied.to_string();
        let p = s.plan(op, stamp, &pepper, &nonce).unwrap();
        text.push(p.secret.clone().unwrap_or_default());
        for r in p.records {
            s.apply(r);
        }
    };
    run(&mut s, Op::CreateApp { app: "a".into() });
    run(&mut s, Op::CreateApp { app: "b".into() });
    for (app, scope) in [
        ("a", Scope::Publish),
        ("b", Scope::Subscribe),
        ("a", Scope::AppAdmin),
    ] {
        run(
            &mut s,
            Op::CreateKey {
                app: app.into(),
                scope,
                topics: None,
                expires_ms: None,
            },
        );
    }
    run(
        &mut s,
        Op::ImportLegacy {
            app: "b".into(),
            secret: "old-secret".into(),
        },
    );
    (s, pepper, text[2].clone(), text[3].clone(), text[4].clone())
}

fn t<'a>(app: &'a str) -> TopicRef<'a> {
    TopicRef {
        app,
        topic: "t",
        ver: "v1",
    }
}

#[test]
fn authenticates_and_authorizes() {
    let (mut state, pepper, apub, bsub, aadmin) = world();
    let snap = Snapshot::build(&state, 1, 20);
    let verify = |_: &str, s: &str, h: &[u8; 32]| pepper.verify_secret(s, h);
    let auth = |snap: &Snapshot, key: &str, claimed| {
        snap.authenticate(
            &Credential::Key(keys::parse(key).unwrap()),
            claimed,
            20,
            verify,
        )
    };
    let pa = auth(&snap, &apub, None).unwrap();
    assert_eq!(pa.app(), "a");
    assert_eq!(auth(&snap, &apub, Some("b")).unwrap_err().status(), 403);
    let pb = auth(&snap, &bsub, Some("b")).unwrap();
    let padmin = auth(&snap, &aadmin, None).unwrap();
    let ok = |p: &Principal, n: Need<'_>| snap.authorize(p, &n, 20).map_err(|e| e.status());
    assert_eq!(
        ok(
            &pa,
            Need::Publish {
                topic: "t",
                ver: "v1"
            }
        ),
        Ok(())
    );
    assert_eq!(ok(&pa, Need::Subscribe(t("a"))), Err(403), "wrong scope");
    assert_eq!(ok(&pb, Need::Subscribe(t("a"))), Err(403), "no grant");
    assert_eq!(ok(&pb, Need::Subscribe(t("b"))), Ok(()));
    assert_eq!(ok(&pa, Need::Read(t("a"))), Ok(()));
    assert_eq!(ok(&pb, Need::Read(t("a"))), Err(403));
    assert_eq!(ok(&padmin, Need::Owner(t("a"))), Ok(()));
    assert_eq!(ok(&padmin, Need::Owner(t("b"))), Err(403));
    assert_eq!(ok(&pa, Need::Owner(t("a"))), Err(403));
    assert_eq!(ok(&pa, Need::Operator), Err(403));
    assert_eq!(ok(&padmin, Need::AppAdmin("a")), Ok(()));
    assert_eq!(ok(&padmin, Need::AppAdmin("b")), Err(403));
    // A grant lets b subscribe to a's topic.
    let stamp = Stamp {
        actor: "t".into(),
        ts_ms: 11,
        ip: None,
    };
    let p = state
        .plan(
            Op::Grant {
                topic: "a.t.v1".into(),
                app: "b".into(),
            },
            stamp,
            &pepper,
            "g",
        )
        .unwrap();
    for r in p.records {
        state.apply(r);
    }
    let snap2 = Snapshot::build(&state, 2, 20);
    assert!(snap2.authorize(&pb, &Need::Subscribe(t("a")), 20).is_ok());
    assert_eq!(snap2.granted("a.t.v1"), ["b".to_string()]);
    // Legacy secrets authenticate with their app.
    let legacy = Credential::Legacy {
        app: "b",
        secret: "old-secret",
    };
    let pl = snap.authenticate(&legacy, None, 20, verify).unwrap();
    assert_eq!(pl.scope, Scope::Legacy);
    assert!(snap
        .authorize(
            &pl,
            &Need::Publish {
                topic: "t",
                ver: "v1"
            },
            20
        )
        .is_ok());
    let wrong = Credential::Legacy {
        app: "b",
        secret: "nope",
    };
    assert_eq!(
        snap.authenticate(&wrong, None, 20, verify)
            .unwrap_err()
            .status(),
        401
    );
    // A revoked key fails authentication and ends its sessions.
    let keyid = pa.keyid().to_owned();
    let stamp = Stamp {
        actor: "t".into(),
        ts_ms: 12,
        ip: None,
    };
    let p = state
        .plan(
            Op::RevokeKey {
                app: "a".into(),
                keyid,
            },
            stamp,
            &pepper,
            "r",
        )
        .unwrap();
    for r in p.records {
        state.apply(r);
    }
    let snap3 = Snapshot::build(&state, 3, 20);
    assert_eq!(auth(&snap3, &apub, None).unwrap_err().status(), 401);
    let need = Need::Publish {
        topic: "t",
        ver: "v1",
    };
    assert_eq!(snap3.still(&pa, &need, 20).unwrap_err().status(), 401);
    assert!(snap3.still(&pb, &Need::Subscribe(t("b")), 20).is_ok());
}

#[test]
fn narrowed_keys_and_storage_names() {
    let mut buf = [0u8; 160];
    assert_eq!(storage_name(&mut buf, &t("app")), "app.t.v1");
    let e = KeyEntry {
        app: "a".into(),
        scope: Scope::Publish,
        topics: Some(vec!["a.t.v1".to_string()].into_boxed_slice()),
        hash: [0; 32],
        expires_ms: Some(100),
    };
    let mut snap = Snapshot::default();
    snap.keys.insert("k".into(), e);
    let p = Principal::new("a", "k", Scope::Publish);
    assert!(snap
        .authorize(
            &p,
            &Need::Publish {
                topic: "t",
                ver: "v1"
            },
            50
        )
        .is_ok());
    assert_eq!(
        snap.authorize(
            &p,
            &Need::Publish {
                topic: "u",
                ver: "v1"
            },
            50
        )
        .unwrap_err()
        .status(),
        403
    );
    assert!(
        snap.key("k", 99).is_some() && snap.key("k", 100).is_none(),
        "expiry"
    );
}

/// A narrowed app-admin key administers only its topics, and makes no app-wide call (a key it
/// minted could otherwise reach every topic of the app).
#[test]
fn a_narrowed_app_admin_key_stays_within_its_topics() {
    let mut snap = Snapshot::default();
    for (id, topics) in [("n", Some(vec!["a.t.v1".to_string()])), ("w", None)] {
        let e = KeyEntry {
            app: "a".into(),
            scope: Scope::AppAdmin,
            topics: topics.map(Vec::into_boxed_slice),
            hash: [0; 32],
            expires_ms: None,
        };
        snap.keys.insert(id.into(), e);
    }
    let (n, w) = (
        Principal::new("a", "n", Scope::AppAdmin),
        Principal::new("a", "w", Scope::AppAdmin),
    );
    let other = TopicRef {
        app: "a",
        topic: "u",
        ver: "v1",
    };
    let ok = |p: &Principal, need: Need<'_>| snap.authorize(p, &need, 0).map_err(|e| e.status());
    assert_eq!(ok(&n, Need::Owner(t("a"))), Ok(()));
    assert_eq!(ok(&n, Need::Owner(other)), Err(403));
    assert_eq!(ok(&n, Need::AppAdmin("a")), Err(403));
    assert_eq!(ok(&w, Need::Owner(other)), Ok(()));
    assert_eq!(ok(&w, Need::AppAdmin("a")), Ok(()));
}
