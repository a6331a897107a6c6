//! Idempotent publish (`Idempotency-Key`), on both backends: retries (some concurrent) store
//! one message and answer the same offset; another body under a used key is 422; the keys
//! survive a restart (embedded) and are shared by the gateways of a cluster (Kafka).

mod support;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Backend, Gateway};

on_both_backends!(
    retried_publishes_are_stored_once_and_answer_the_same_offset,
    a_used_key_with_another_body_is_refused,
    a_key_outlives_a_restart_or_holds_across_gateways,
);

/// A publish's `(partition, offset)` and whether it was a replay.
type Answer = ((u64, i64), bool);

/// Publishes `body` with `key` until it is not 409 (in progress); returns the answer's
/// `(partition, offset)` and whether it was a replay.
fn publish(g: &Gateway, app: &str, key: &str, body: &[u8]) -> Answer {
    let t0 = Instant::now();
    loop {
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[("Appid", app), ("Idempotency-Key", key)],
            body,
        );
        if r.status == 409 {
            assert_eq!(r.json()["code"], 40902);
            assert!(r.header("retry-after").is_some());
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "key {key} stays in progress"
            );
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert_eq!(r.status, 201, "{key}: {}", r.text());
        let v = r.json();
        return (
            (
                v["partition"].as_u64().unwrap(),
                v["offset"].as_i64().unwrap(),
            ),
            r.header("idempotent-replayed") == Some("true"),
        );
    }
}

/// 1000 publishes, each sent 3 times from 8 connections in an order that puts some of a key's
/// tries at the same moment: exactly 1000 messages are stored, and every try of a key answers
/// the same partition and offset.
fn retried_publishes_are_stored_once_and_answer_the_same_offset(b: Backend) {
    const N: usize = 1000;
    let g = Arc::new(Gateway::on(b, &[]));
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 4);
    // Each key 3 times; neighbours in the list run at about the same time on different threads.
    let mut tries: Vec<usize> = (0..N).flat_map(|k| [k, k, k]).collect();
    // A fixed shuffle that keeps some tries of a key adjacent and spreads others.
    for i in (1..tries.len()).rev() {
        if i % 3 == 0 {
            let j = (i * 7919) % (i + 1);
            tries.swap(i, j);
        }
    }
    let work = Arc::new(Mutex::new(tries.into_iter()));
    let answers: Arc<Mutex<HashMap<usize, Vec<Answer>>>> = Arc::default();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (g, app1, work, answers) = (g.clone(), app1.clone(), work.clone(), answers.clone());
            std::thread::spawn(move || loop {
                let Some(k) = work.lock().unwrap().next() else {
                    return;
                };
                let got = publish(&g, &app1, &format!("key-{k}"), format!("m{k}").as_bytes());
                answers.lock().unwrap().entry(k).or_default().push(got);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    for k in 0..N {
        let a = &answers[&k];
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|x| x.0 == a[0].0), "key {k}: {a:?}");
        assert_eq!(
            a.iter().filter(|x| !x.1).count(),
            1,
            "key {k}: one first publish, {a:?}"
        );
    }
    let got = g.drain(&g.app("app2"), &app1, "t", "group=g&batch=500&wait=2s");
    assert_eq!(got.len(), N, "messages stored");
    let bodies: HashSet<Vec<u8>> = got.into_iter().map(|r| r.2).collect();
    assert_eq!(bodies.len(), N);
}

/// Another body under a used key is 422; a bad key is 400; keys are per topic.
fn a_used_key_with_another_body_is_refused(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 1);
    g.create_topic(&app1, "u", 1);
    let (first, replayed) = publish(&g, &app1, "k1", b"one");
    assert!(!replayed);
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", app1.as_str()), ("Idempotency-Key", "k1")],
        b"two",
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["code"], 42200);
    // The same key on another topic is another key.
    let r = g.req(
        "POST",
        "/v1/msgs/u/v1",
        &[("Appid", app1.as_str()), ("Idempotency-Key", "k1")],
        b"two",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    for bad in ["", &"x".repeat(256), "a b"] {
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[("Appid", app1.as_str()), ("Idempotency-Key", bad)],
            b"one",
        );
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    // Batches too: the same batch is replayed whole.
    let batch = b"a\nb\nc\n";
    let send = || {
        g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[
                ("Appid", app1.as_str()),
                ("Idempotency-Key", "batch-1"),
                ("Content-Type", "application/x-ndjson"),
            ],
            batch,
        )
    };
    let (a, b2) = (send(), send());
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["results"], b2.json()["results"]);
    assert_eq!(b2.header("idempotent-replayed"), Some("true"));
    assert_eq!(publish(&g, &app1, "k1", b"one").0, first);
}

/// A retry after a restart (embedded), or sent to another gateway of the cluster (Kafka), is
/// answered from the first publish.
fn a_key_outlives_a_restart_or_holds_across_gateways(b: Backend) {
    let mut g = Gateway::on(b, &[]);
    let app1 = g.app("app1");
    g.create_topic(&app1, "t", 2);
    let mut firsts = Vec::new();
    for k in 0..20 {
        firsts.push(publish(&g, &app1, &format!("r{k}"), format!("m{k}").as_bytes()).0);
    }
    let other = match b {
        Backend::Embedded => {
            g.kill9();
            g.spawn();
            None
        }
        Backend::Kafka => Some(support::kafka::gateway(
            &support::kafka::shared_brokers(),
            &[],
        )),
    };
    let retry_on = other.as_ref().unwrap_or(&g);
    for (k, first) in firsts.iter().enumerate() {
        let (again, replayed) = publish(
            retry_on,
            &app1,
            &format!("r{k}"),
            format!("m{k}").as_bytes(),
        );
        assert_eq!(&again, first, "key r{k}");
        assert!(replayed);
    }
    let got = g.drain(&g.app("app2"), &app1, "t", "group=g&batch=100&wait=2s");
    assert_eq!(got.len(), 20);
}
