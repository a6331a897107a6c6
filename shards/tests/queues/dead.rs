//! Dead letters (counted, peeked, redriven, purged, concurrently), group policies, the cap on
//! queues per app, and leased polls whose client goes away.

use super::*;

/// The dead-letter routes: count, peek (takes nothing), redrive to the origin topic (the
/// messages are consumed again there), purge.
pub(crate) fn dead_letters_are_counted_peeked_redriven_and_purged(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 5);
    let mut c = g.connect();
    let count = |c: &mut Conn| {
        let r = c.req(
            "GET",
            &format!("/v1/dlq/{app2}/g"),
            &[("Appid", app2.as_str())],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["messages"].as_u64().unwrap()
    };
    assert_eq!(count(&mut c), 0);
    let got = lease(&mut c, &app1, &app2, "g", "batch=5&wait=5s");
    assert_eq!(got.len(), 5);
    let buried: Vec<&String> = got[..3].iter().map(|m| &m.receipt).collect();
    let acked: Vec<&String> = got[3..].iter().map(|m| &m.receipt).collect();
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "bury",
            serde_json::json!({"receipts": buried})
        ),
        ["buried"; 3]
    );
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"receipts": acked})
        ),
        ["acked"; 2]
    );
    assert_eq!(count(&mut c), 3);
    let peek = c.req(
        "GET",
        &format!("/v1/dlq/{app2}/g/messages?max=2"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(peek.status, 200, "{}", peek.text());
    assert_eq!(
        peek.body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        2
    );
    assert_eq!(count(&mut c), 3, "a peek takes nothing");
    let r = c.req(
        "POST",
        &format!("/v1/dlq/{app2}/g/redrive?max=2"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], 2);
    assert_eq!(count(&mut c), 1);
    let again = lease(&mut c, &app1, &app2, "g", "batch=5&wait=5s");
    let ids: Vec<usize> = again.iter().map(|m| num(&m.value)).collect();
    assert_eq!(ids, [0, 1]);
    assert!(again.iter().all(|m| m.attempt == 1));
    let r = c.req(
        "DELETE",
        &format!("/v1/dlq/{app2}/g"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(count(&mut c), 0);
}

/// `/v1/policies/:app/:group`: a group's own max attempts (and backoff and lease) override the
/// gateway's settings, checked on the way in, for that group only, from its first lease, and
/// a change reaches a queue already open.
pub(crate) fn a_group_policy_sets_its_attempts(b: Backend) {
    let (g, a1, k1, a2, k2) = Gateway::secured_world(b, QUEUE_ENV, "app1", "app2");
    let r = g.req_as(&k1.admin, "PUT", &format!("/v1/grants/{a1}/t/v1/{a2}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let policy = format!("/v1/policies/{a2}/g");
    // Until one is set: the gateway's settings.
    let r = g.req_as(&k2.admin, "GET", &policy, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["policy"], Value::Null);
    assert_eq!(r.json()["effective"]["max_attempts"], 3);
    for bad in [
        r#"{"max_attempts":0}"#,
        r#"{"max_attempts":1001}"#,
        r#"{"max_attempts":2,"dead_letters":"x"}"#,
        r#"{"backoff_base":"2s","backoff_max":"1s"}"#,
        r#"{"visibility":"0s"}"#,
        r#"{"visibility":"soon"}"#,
        r#"{"backoff_max":"31d"}"#,
        "[]",
    ] {
        g.req_as(&k2.admin, "PUT", &policy, bad.as_bytes())
            .assert_error(400);
    }
    // A leased group's name is at most 60 characters.
    let long = "g".repeat(61);
    g.req_as(
        &k2.admin,
        "PUT",
        &format!("/v1/policies/{a2}/{long}"),
        br#"{"max_attempts":2}"#,
    )
    .assert_error(400);
    // Only the group's app (its admin key) or an operator sets it.
    for key in [&k1.admin, &k2.subscribe] {
        g.req_as(key, "PUT", &policy, br#"{"max_attempts":1}"#)
            .assert_error(403);
    }
    let r = g.req_as(
        &k2.admin,
        "PUT",
        &policy,
        br#"{"max_attempts":1,"backoff_max":"20ms"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.req_as(&k2.admin, "GET", &policy, b"");
    assert_eq!(r.json()["policy"]["max_attempts"], 1, "{}", r.text());
    assert_eq!(r.json()["effective"]["max_attempts"], 1);
    assert_eq!(r.json()["effective"]["backoff_max_ms"], 20);
    for i in 0..4 {
        let r = g.req_as(
            &k1.publish,
            "POST",
            "/v1/msgs/t/v1",
            i.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let auth = format!("Bearer {}", k2.subscribe);
    let lease_one = |group: &str| {
        let r = g.req(
            "GET",
            &format!("/v1/msgs/{a1}/t/v1?group={group}&ack=lease&batch=1&wait=15s"),
            &[("Authorization", &auth), ("Accept", "application/x-ndjson")],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        parse(&r.body).remove(0)
    };
    let nack = |group: &str, m: &Leased| {
        let r = g.req(
            "POST",
            &format!("/v1/queue/{a1}/t/v1/{group}/nack"),
            &[("Authorization", &auth)],
            serde_json::json!({"receipts": [m.receipt]})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["results"][0]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Group g: one attempt, so its first nack is its last.
    let m = lease_one("g");
    assert_eq!((num(&m.value), m.attempt), (0, 1));
    assert_eq!(nack("g", &m), "dead");
    // Another group of the app keeps the gateway's 3 attempts.
    let m = lease_one("other");
    assert_eq!(nack("other", &m), "retry");
    // The policy taken away reaches g's open queue: its next message is retried.
    let r = g.req_as(&k2.admin, "DELETE", &policy, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["policy"], Value::Null);
    let m = lease_one("g");
    assert_eq!((num(&m.value), m.attempt), (1, 1));
    assert_eq!(nack("g", &m), "retry");
    // It comes back (after the gateway's backoff, while the later messages flow) as attempt 2.
    let again = (0..3)
        .map(|_| lease_one("g"))
        .find(|m| num(&m.value) == 1)
        .expect("message 1 again");
    assert_eq!(again.attempt, 2);
    // The dead one is in g's dead-letter topic.
    let t0 = Instant::now();
    loop {
        let r = g.req_as(&k2.admin, "GET", &format!("/v1/dlq/{a2}/g"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        if r.json()["messages"] == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A dead letter goes back only where its group still reads: publishers cannot set the
/// gateway's `kgw-` tags (which would let them name any topic as a dead letter's origin), and a
/// redrive after the group's app lost its grant on the origin is refused (403) and moves
/// nothing, while `to=` one of the app's own topics still takes the letters.
pub(crate) fn dead_letters_go_back_only_where_their_group_reads(b: Backend) {
    let (g, a1, k1, a2, k2) = Gateway::secured_world(b, QUEUE_ENV, "app1", "app2");
    // The forgery: app2 publishing into its own dead-letter topic a record whose origin names
    // app1's topic, then redriving it there.
    let dlq_topic = format!("/v1/topics/{a2}/g-dlq/v1?partitions=1");
    assert_eq!(g.req_as(&k2.admin, "POST", &dlq_topic, b"").status, 201);
    for (q, tag) in [
        ("", format!("a;kgw-origin={a1}.t.v1/0/0")),
        ("", "KGW-delay=1".to_owned()),
        ("?tag=kgw-attempts%3D1", String::new()),
    ] {
        let mut h = vec![("Authorization", format!("Bearer {}", k2.publish))];
        if !tag.is_empty() {
            h.push(("X-Tag", tag.clone()));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = g.req("POST", &format!("/v1/msgs/g-dlq/v1{q}"), &h, b"forged");
        r.assert_error(400);
        assert!(r.text().contains("kgw-"), "{tag} {q}: {}", r.text());
    }
    let r = g.req_as(&k2.admin, "POST", &format!("/v1/dlq/{a2}/g/redrive"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], 0, "{}", r.text());

    // A real dead letter of app2's group g, read from app1's topic under a grant.
    let grant = format!("/v1/grants/{a1}/t/v1/{a2}");
    assert_eq!(g.req_as(&k1.admin, "PUT", &grant, b"").status, 200);
    let r = g.req_as(&k1.publish, "POST", "/v1/msgs/t/v1", b"0");
    assert_eq!(r.status, 201, "{}", r.text());
    let sub = format!("Bearer {}", k2.subscribe);
    let r = g.req(
        "GET",
        &format!("/v1/msgs/{a1}/t/v1?group=g&ack=lease&batch=1&wait=15s"),
        &[("Authorization", &sub), ("Accept", "application/x-ndjson")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = parse(&r.body).remove(0);
    let r = g.req(
        "POST",
        &format!("/v1/queue/{a1}/t/v1/g/bury"),
        &[("Authorization", &sub)],
        serde_json::json!({"receipts": [m.receipt]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.json()["results"][0]["status"], "buried", "{}", r.text());
    let count = || {
        let r = g.req_as(&k2.admin, "GET", &format!("/v1/dlq/{a2}/g"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["messages"].as_u64().unwrap()
    };
    let t0 = Instant::now();
    while count() != 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no dead letter");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The grant revoked: the letter may not go back to app1's topic.
    assert_eq!(g.req_as(&k1.admin, "DELETE", &grant, b"").status, 200);
    let r = g.req_as(&k2.admin, "POST", &format!("/v1/dlq/{a2}/g/redrive"), b"");
    r.assert_error(403);
    assert!(r.text().contains(&format!("{a1}.t.v1")), "{}", r.text());
    assert_eq!(count(), 1, "a refused redrive takes nothing");
    let r = g.req_as(
        &k1.subscribe,
        "GET",
        &format!("/v1/msgs/{a1}/t/v1?group=check&reset=oldest&batch=10&wait=1s"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(records(&r.body).len(), 1, "app1's topic got nothing more");
    // To a topic of its own, it goes.
    let own = format!("/v1/topics/{a2}/back/v1?partitions=1");
    assert_eq!(g.req_as(&k2.admin, "POST", &own, b"").status, 201);
    let r = g.req_as(
        &k2.admin,
        "POST",
        &format!("/v1/dlq/{a2}/g/redrive?to=back/v1"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], 1, "{}", r.text());
    assert_eq!(count(), 0);
}

/// Redrives and purges of one group's dead letters sent at once from many connections: each
/// runs alone or is refused (409, `Retry-After`), and every dead letter is redriven or purged
/// exactly once: what the answers count is what was published again, and nothing is left.
pub(crate) fn concurrent_redrives_and_purges_move_each_dead_letter_once(b: Backend) {
    const N: usize = 300;
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, N);
    let mut c = g.connect();
    let (got, _) = lease_batches(&mut c, &app1, &app2, N);
    let receipts: Vec<&String> = got.iter().map(|m| &m.receipt).collect();
    let st = settle(
        &mut c,
        &app1,
        &app2,
        "g",
        "bury",
        serde_json::json!({ "receipts": receipts }),
    );
    assert!(st.iter().all(|s| s == "buried"), "{st:?}");
    let (mut redriven, mut purged) = (0, 0);
    while redriven + purged < N {
        let answers: Vec<(String, u16, Value, Option<String>)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..6)
                .map(|i| {
                    let (g, app2) = (&g, &app2);
                    s.spawn(move || {
                        let (m, path) = if i == 5 {
                            ("DELETE", format!("/v1/dlq/{app2}/g"))
                        } else {
                            ("POST", format!("/v1/dlq/{app2}/g/redrive?max=40"))
                        };
                        let r = g.req(m, &path, &[("Appid", app2.as_str())], b"");
                        let retry = r.header("retry-after").map(str::to_owned);
                        (m.to_owned(), r.status, r.json(), retry)
                    })
                })
                .collect();
            calls.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (m, status, v, retry) in answers {
            match status {
                200 if m == "POST" => redriven += v["redriven"].as_u64().unwrap() as usize,
                200 => purged += v["purged"].as_u64().unwrap() as usize,
                409 => {
                    assert_eq!(v["code"], 40903, "{v}");
                    assert_eq!(retry.as_deref(), Some("1"));
                }
                s => panic!("{m}: {s} {v}"),
            }
        }
    }
    assert_eq!(redriven + purged, N, "redriven {redriven}, purged {purged}");
    let r = g.req(
        "GET",
        &format!("/v1/dlq/{app2}/g"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(r.json()["messages"], 0, "{}", r.text());
    // The origin topic holds the N originals and exactly the redriven copies.
    let r = g.req(
        "GET",
        &format!("/v1/partitions/{app1}/t/v1"),
        &[("Appid", app1.as_str())],
        b"",
    );
    assert_eq!(
        r.json()["offsets"][0]["newest"],
        N + redriven,
        "{}",
        r.text()
    );
}

/// `queue.max_groups_per_core` is shared by the apps: one app that opens queue after queue is
/// refused (429, 42903) at its share of them (`limits.app_share_per_core`), and another app
/// still gets queues on every core.
pub(crate) fn one_app_cannot_take_every_queue(b: Backend) {
    let mut env = QUEUE_ENV.to_vec();
    env.push(("KATEWAY_QUEUE_MAX_GROUPS_PER_CORE", "4"));
    let g = Gateway::on(b, &env);
    let (app1, app2, app3) = (g.app("app1"), g.app("app2"), g.app("app3"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 1);
    let mut c = g.connect();
    let open = |c: &mut Conn, app: &str, group: &str| {
        c.req(
            "GET",
            &format!("/v1/msgs/{app1}/t/v1?group={group}&ack=lease&wait=1s"),
            &[("Appid", app), ("Accept", "application/x-ndjson")],
            b"",
        )
    };
    // 2 cores with 4 queues each: app2 gets at most 2 on each. A group's core follows from a
    // hash of its name, which carries the run's app suffix: with 40 groups each core gets at
    // least 2 of them (with 12, one core got only 1 once in a while).
    let (mut opened, mut refused) = (0, 0);
    for i in 0..40 {
        let r = open(&mut c, &app2, &format!("fill{i}"));
        match r.status {
            200 | 204 => opened += 1,
            429 => {
                assert_eq!(r.json()["code"], 42903, "{}", r.text());
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    assert_eq!((opened, refused), (4, 36));
    // Each core has room left for another app's queues, wherever they land.
    for i in 0..2 {
        let r = open(&mut c, &app3, &format!("mine{i}"));
        assert!(matches!(r.status, 200 | 204), "{}: {}", r.status, r.text());
    }
}

/// A leased long poll whose client goes away takes nothing: the next message goes to the next
/// poll, at its first attempt, instead of to no one until its lease runs out. Several groups,
/// so that the queues live on both cores (the poll's own and another).
pub(crate) fn a_leased_poll_ends_with_its_client(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let groups: Vec<String> = (0..6).map(|i| format!("ghost{i}")).collect();
    let mut c = g.connect();
    for group in &groups {
        // The group's queue exists before the ghost poll parks.
        assert!(lease(&mut c, &app1, &app2, group, "wait=0s").is_empty());
    }
    for round in 0..2 {
        let ghosts: Vec<_> = groups
            .iter()
            .map(|group| {
                let mut ghost = g.connect();
                let path =
                    format!("/v1/msgs/{app1}/t/v1?group={group}&ack=lease&wait=20s&visibility=60s");
                ghost
                    .send(
                        "GET",
                        &path,
                        &[("Appid", &app2), ("Accept", "application/x-ndjson")],
                        b"",
                    )
                    .unwrap();
                ghost
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        drop(ghosts);
        std::thread::sleep(Duration::from_millis(500));
        g.publish(
            &app1,
            "t",
            "",
            format!("after the ghosts {round}").as_bytes(),
        );
        for group in &groups {
            let got = lease(&mut c, &app1, &app2, group, "wait=5s&visibility=60s");
            assert_eq!(got.len(), 1, "{group}: the message, not a ghost's lease");
            assert_eq!(got[0].attempt, 1, "{group}: no attempt spent on a ghost");
            let out = settle(
                &mut c,
                &app1,
                &app2,
                group,
                "ack",
                serde_json::json!({"receipts": [got[0].receipt]}),
            );
            assert_eq!(out, ["acked"]);
        }
    }
    assert_eq!(g.metric("kateway_sub_parked_polls"), 0.0);
}
