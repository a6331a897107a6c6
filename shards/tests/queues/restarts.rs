//! The queue state across restarts: acks surviving `kill -9`, large checkpoints, acks sent to
//! another gateway (Kafka), and a topic created again.

use super::*;

/// `kill -9` mid-run: what was acked before the last checkpoint is not delivered again,
/// nothing acked is lost, every message is still delivered, and attempt counts carry on.
pub(crate) fn acked_messages_stay_acked_across_kill_9(b: Backend) {
    const N: usize = 600;
    let mut g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    publish_numbered(&g, &app1, N);
    let mut c = g.connect();
    let mut acked_early = HashSet::new();
    // Ack 400 (out of order: every other batch first), then let a checkpoint pass.
    let mut held = Vec::new();
    while acked_early.len() + held.len() < 450 {
        let got = lease(&mut c, &app1, &app2, "g", "batch=50&wait=5s&visibility=3s");
        assert!(!got.is_empty());
        for m in got {
            let id = num(&m.value);
            if id % 9 == 4 {
                // Leased, never acked: comes back after the restart as attempt 2.
                held.push(id);
            } else {
                settle(
                    &mut c,
                    &app1,
                    &app2,
                    "g",
                    "ack",
                    serde_json::json!({"receipts": [m.receipt]}),
                );
                acked_early.insert(id);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Ack a few more and crash at once: only these may come back.
    let late = lease(&mut c, &app1, &app2, "g", "batch=20&wait=5s&visibility=1m");
    let late_ids: HashSet<usize> = late.iter().map(|m| num(&m.value)).collect();
    let receipts: Vec<&String> = late.iter().map(|m| &m.receipt).collect();
    settle(
        &mut c,
        &app1,
        &app2,
        "g",
        "ack",
        serde_json::json!({ "receipts": receipts }),
    );
    drop(c);
    g.kill9();
    g.spawn();
    let mut c = g.connect();
    let mut after: HashMap<usize, u64> = HashMap::new();
    let t0 = Instant::now();
    // Leases from before the crash last until their deadline, then come back.
    let covered = |after: &HashMap<usize, u64>| {
        (0..N).all(|id| {
            acked_early.contains(&id) || late_ids.contains(&id) || after.contains_key(&id)
        })
    };
    loop {
        let got = lease(&mut c, &app1, &app2, "g", "batch=100&wait=2s");
        if got.is_empty() && covered(&after) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} after restart",
            after.len()
        );
        let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
        for m in got {
            let id = num(&m.value);
            assert!(
                !acked_early.contains(&id),
                "message {id}, acked before the checkpoint, came back"
            );
            after.insert(id, m.attempt);
        }
        if !receipts.is_empty() {
            settle(
                &mut c,
                &app1,
                &app2,
                "g",
                "ack",
                serde_json::json!({ "receipts": receipts }),
            );
        }
    }
    for id in 0..N {
        assert!(
            acked_early.contains(&id) || late_ids.contains(&id) || after.contains_key(&id),
            "message {id} was never delivered"
        );
    }
    for id in &held {
        assert!(
            after[id] >= 2,
            "message {id}: attempt count reset to {}",
            after[id]
        );
    }
}

/// A window whose checkpoint is far larger than a Kafka commit's metadata (800 leases held
/// between 1600 acks, about 12 KB) survives `kill -9` whole: no ack before the checkpoint
/// comes back, and every held lease comes back as a second attempt.
pub(crate) fn a_large_checkpoint_survives_kill_9(b: Backend) {
    const N: usize = 2400;
    let mut g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, N);
    let mut c = g.connect();
    let (mut acked, mut held) = (HashSet::new(), HashSet::new());
    while acked.len() + held.len() < N {
        let got = lease(&mut c, &app1, &app2, "g", "batch=500&wait=5s&visibility=4s");
        assert!(
            !got.is_empty(),
            "{} of {N} leased",
            acked.len() + held.len()
        );
        let mut receipts = Vec::new();
        for m in got {
            let id = num(&m.value);
            assert_eq!(m.attempt, 1);
            if id.is_multiple_of(3) {
                held.insert(id);
            } else {
                acked.insert(id);
                receipts.push(m.receipt);
            }
        }
        let st = settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({ "receipts": receipts }),
        );
        assert!(st.iter().all(|s| s == "acked"), "{st:?}");
    }
    // Checkpoints every 200 ms: this one holds every ack and lease above.
    std::thread::sleep(Duration::from_millis(1500));
    drop(c);
    g.kill9();
    g.spawn();
    let mut c = g.connect();
    let mut back = HashSet::new();
    let t0 = Instant::now();
    while back.len() < held.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} of {} held leases came back",
            back.len(),
            held.len()
        );
        let got = lease(&mut c, &app1, &app2, "g", "batch=500&wait=2s");
        let mut receipts = Vec::new();
        for m in got {
            let id = num(&m.value);
            assert!(!acked.contains(&id), "message {id}, acked, came back");
            assert!(held.contains(&id), "message {id} was never leased");
            assert!(
                m.attempt >= 2,
                "message {id}: attempt count reset to {}",
                m.attempt
            );
            back.insert(id);
            receipts.push(m.receipt);
        }
        if !receipts.is_empty() {
            settle(
                &mut c,
                &app1,
                &app2,
                "g",
                "ack",
                serde_json::json!({ "receipts": receipts }),
            );
        }
    }
}

/// On Kafka, two gateways share one group (each holding some of its partitions): every
/// message is acked through the gateway that did not lease it, and none comes back after its
/// lease would have ended.
#[test]
fn kafka_acks_sent_to_the_other_gateway_are_honoured() {
    let a = Gateway::on(Backend::Kafka, QUEUE_ENV);
    let (app1, app2) = (a.app("app1"), a.app("app2"));
    a.create_topic(&app1, "t", 2);
    // The gateways of a cluster share the pepper that receipts are signed with.
    let pepper = a.data_dir().join("meta").join("pepper");
    let mut env = QUEUE_ENV.to_vec();
    env.push(("KATEWAY_AUTH_PEPPER_FILE", pepper.to_str().unwrap()));
    let b = support::kafka::gateway(&support::kafka::shared_brokers(), &env);
    for i in 0..20 {
        let r = a.req(
            "POST",
            &format!("/v1/msgs/t/v1?key=k{i}"),
            &[("Appid", app1.as_str())],
            format!("{i}").as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let (mut ca, mut cb) = (a.connect(), b.connect());
    // Both gateways join the group, and it settles with a partition each, before any ack: a
    // rebalance after an ack restores the moved partition from its last checkpoint, and acks
    // since then may be delivered again (docs/queues.md, "On Kafka"). Each gateway leases one
    // message here (an attempt of the three allowed); those leases end after a second and the
    // messages are leased again below.
    let t0 = Instant::now();
    let mut holds = [false, false];
    while holds != [true, true] {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the group never gave each gateway a partition: {holds:?}"
        );
        for (i, c) in [&mut ca, &mut cb].into_iter().enumerate() {
            if !holds[i] {
                let got = lease(c, &app1, &app2, "g", "batch=1&wait=1s&visibility=1s");
                holds[i] = !got.is_empty();
            }
        }
    }
    let mut acked = HashSet::new();
    let mut forwarded = 0;
    let t0 = Instant::now();
    while acked.len() < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "acked only {acked:?}"
        );
        for (lease_on, ack_on) in [(0, 1), (1, 0)] {
            let c = if lease_on == 0 { &mut ca } else { &mut cb };
            let got = lease(c, &app1, &app2, "g", "batch=5&wait=1s&visibility=4s");
            if got.is_empty() {
                continue;
            }
            let receipts: Vec<&String> = got.iter().map(|m| &m.receipt).collect();
            let other = if ack_on == 0 { &mut ca } else { &mut cb };
            let st = settle(
                other,
                &app1,
                &app2,
                "g",
                "ack",
                serde_json::json!({ "receipts": receipts }),
            );
            for (m, s) in got.iter().zip(&st) {
                assert!(
                    ["acked", "forwarded", "already_done"].contains(&s.as_str()),
                    "{s}"
                );
                forwarded += usize::from(s == "forwarded");
                acked.insert(num(&m.value));
            }
        }
    }
    assert!(forwarded > 0, "no ack was handed to the other gateway");
    // Past every lease: nothing comes back on either gateway.
    std::thread::sleep(Duration::from_secs(6));
    for c in [&mut ca, &mut cb] {
        let again = lease(c, &app1, &app2, "g", "batch=20&wait=2s");
        let ids: Vec<usize> = again.iter().map(|m| num(&m.value)).collect();
        assert!(ids.is_empty(), "delivered again after their acks: {ids:?}");
    }
}

/// A topic deleted while messages are leased, then created again under its name: its groups'
/// queues start afresh (no state of the old topic: every new message is delivered).
pub(crate) fn a_topic_created_again_starts_its_queues_afresh(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 10);
    let mut c = g.connect();
    let got = lease(&mut c, &app1, &app2, "g", "batch=5&wait=5s&visibility=1h");
    assert_eq!(got.len(), 5);
    let receipts: Vec<&String> = got[1..3].iter().map(|m| &m.receipt).collect();
    settle(
        &mut c,
        &app1,
        &app2,
        "g",
        "ack",
        serde_json::json!({ "receipts": receipts }),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = g.req(
        "DELETE",
        &format!("/v1/topics/{app1}/t/v1"),
        &[("Appid", app1.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Kafka deletes a topic in the background: creating it again may take a few tries.
    let t0 = Instant::now();
    loop {
        let r = g.req(
            "POST",
            &format!("/v1/topics/{app1}/t/v1?partitions=1"),
            &[],
            b"",
        );
        if r.status == 201 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 100..110 {
        g.publish(&app1, "t", "ack=all", format!("{i}").as_bytes());
    }
    let mut ids = Vec::new();
    let t0 = Instant::now();
    while ids.len() < 10 && t0.elapsed() < Duration::from_secs(30) {
        let got = lease(&mut c, &app1, &app2, "g", "batch=10&wait=2s");
        let receipts: Vec<&String> = got.iter().map(|m| &m.receipt).collect();
        ids.extend(got.iter().map(|m| num(&m.value)));
        if !receipts.is_empty() {
            settle(
                &mut c,
                &app1,
                &app2,
                "g",
                "ack",
                serde_json::json!({ "receipts": receipts }),
            );
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (100..110).collect::<Vec<_>>());
}
