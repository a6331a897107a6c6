//! Hinted handoff against real Kafka outages. Each test runs a broker of its own (through
//! `scripts/kafka/kafka`), SIGKILLs it under load and restarts it on the same data, and checks
//! with a plain librdkafka reader that every acknowledged message reached Kafka, in per-key
//! order; also across a gateway `kill -9` in the middle of a replay, and at the disk budget.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::kafka::{gateway, read_topic, Broker, Stored};
use support::{metric_value, Gateway};

/// One broker JVM at a time: the tests each start their own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const FAST: [(&str, &str); 2] = [
    ("KATEWAY_KAFKA_PRODUCE_TIMEOUT", "1s"),
    ("KATEWAY_KAFKA_REPLAY_BACKOFF", "200ms"),
];

/// Waits (up to ~90 s) until the handoff logs are drained.
fn drained(g: &Gateway) {
    let left = g.metric_until("kateway_handoff_backlog_messages", 4500, |v| v == 0.0);
    assert_eq!(left, 0.0, "the handoff backlog did not drain");
}

/// Per key, the values Kafka holds in partition order, keeping the first copy of each (a
/// message whose acknowledgement was lost in the outage may be stored twice).
fn per_key(stored: &[Stored]) -> (HashMap<String, Vec<String>>, usize) {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut dups = 0;
    for s in stored {
        let key = String::from_utf8_lossy(&s.key).into_owned();
        let v = String::from_utf8_lossy(&s.value).into_owned();
        let seq = out.entry(key).or_default();
        if seq.contains(&v) {
            dups += 1;
        } else {
            seq.push(v);
        }
    }
    (out, dups)
}

#[test]
fn broker_outage_under_load_loses_nothing_and_keeps_key_order() {
    let _serial = serial();
    let broker = Broker::up();
    let g = Arc::new(gateway(&broker.addr(), &FAST));
    let topic = "outage";
    g.create_topic("app", topic, 4);

    let stop = Arc::new(AtomicBool::new(false));
    let buffered = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..6)
        .map(|t| {
            let (g, stop, buffered) = (g.clone(), stop.clone(), buffered.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let v = format!("k{t}:{i}");
                    let r = g.publish("app", topic, &format!("key=k{t}"), v.as_bytes());
                    assert_eq!(r.status, 201, "{}", r.text());
                    if r.header("x-kateway-buffered") == Some("1") {
                        assert_eq!(r.header("x-offset"), Some("-1"));
                        buffered.fetch_add(1, Ordering::Relaxed);
                    }
                    acked.push(v);
                    i += 1;
                }
                (format!("k{t}"), acked)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
    std::thread::sleep(Duration::from_secs(4));
    let during = buffered.load(Ordering::Relaxed);
    broker.start();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let acked: HashMap<String, Vec<String>> =
        publishers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        during > 0,
        "no publish was buffered while the broker was down"
    );
    drained(&g);
    assert!(g.metric("kateway_handoff_replayed_messages_total") >= during as f64);
    assert_eq!(g.metric("kateway_kafka_breaker_open"), 0.0);

    let stored = read_topic(&broker.addr(), "app.outage.v1", 4);
    let (in_kafka, dups) = per_key(&stored);
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!("{total} acknowledged, {during} buffered, {dups} stored twice");
    for (key, want) in &acked {
        assert_eq!(
            in_kafka.get(key).unwrap_or(&Vec::new()),
            want,
            "key {key}: Kafka's order differs from the acknowledged order"
        );
    }
    // After the outage, publishes go straight to Kafka again.
    let r = g.publish("app", topic, "key=after", b"after");
    assert!(r.header("x-kateway-buffered").is_none());
    assert_ne!(r.header("x-offset"), Some("-1"));
}

#[test]
fn gateway_killed_during_replay_resumes_from_its_durable_cursor() {
    let _serial = serial();
    let broker = Broker::up();
    let mut env = FAST.to_vec();
    env.push(("KATEWAY_KAFKA_REPLAY_BATCH", "10"));
    let mut g = gateway(&broker.addr(), &env);
    let topic = "replay";
    g.create_topic("app", topic, 2);
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..10 {
        let key = format!("k{}", i % 4);
        let v = format!("{key}:direct{i}");
        let r = g.publish("app", topic, &format!("key={key}"), v.as_bytes());
        assert!(r.header("x-kateway-buffered").is_none());
        acked.entry(key).or_default().push(v);
    }
    broker.kill();
    // 200 batches of 100 keyed messages, all buffered and fsynced (ack=all).
    for b in 0..200 {
        let key = format!("k{}", b % 4);
        let vals: Vec<String> = (0..100).map(|j| format!("{key}:{b}.{j}")).collect();
        let body: String = vals.iter().map(|v| format!("{v}\n")).collect();
        let r = g.req(
            "POST",
            &format!("/v1/msgs/{topic}/v1?key={key}"),
            &[("Appid", "app"), ("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("x-kateway-buffered"), Some("1"));
        acked.entry(key).or_default().extend(vals);
    }
    g.kill9();
    broker.start();
    g.spawn();
    // Kill the gateway again while the replay is half done.
    let mut killed_mid_replay = false;
    for _ in 0..3000 {
        let m = g.req("GET", "/metrics", &[], b"").text();
        let replayed = metric_value(&m, "kateway_handoff_replayed_messages_total");
        let backlog = metric_value(&m, "kateway_handoff_backlog_messages");
        if replayed > 0.0 {
            g.kill9();
            killed_mid_replay = backlog > 0.0;
            eprintln!("killed after {replayed} replayed, {backlog} left");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(killed_mid_replay, "the replay was not caught in progress");
    g.spawn();
    drained(&g);

    let stored = read_topic(&broker.addr(), "app.replay.v1", 2);
    let (in_kafka, dups) = per_key(&stored);
    eprintln!(
        "{} stored, {dups} replayed twice after the kill",
        stored.len()
    );
    for (key, want) in &acked {
        assert_eq!(in_kafka.get(key), Some(want), "key {key}");
    }
}

#[test]
fn full_handoff_budget_answers_503_and_recovers_after_draining() {
    let _serial = serial();
    let broker = Broker::up();
    // A produce timeout far longer than the test: publishes are buffered without waiting for
    // it because librdkafka reports the broker down and that opens the breaker.
    let env = [
        ("KATEWAY_KAFKA_PRODUCE_TIMEOUT", "60s"),
        ("KATEWAY_KAFKA_REPLAY_BACKOFF", "200ms"),
        ("KATEWAY_KAFKA_HANDOFF_MAX_BYTES", "256KiB"),
        ("KATEWAY_KAFKA_HANDOFF_SEGMENT_BYTES", "1MiB"),
        ("KATEWAY_KAFKA_HANDOFF_IDLE_CLOSE", "1s"),
    ];
    let g = gateway(&broker.addr(), &env);
    let topic = "budget";
    g.create_topic("app", topic, 1);
    let first = g.publish("app", topic, "", b"before");
    assert!(first.header("x-kateway-buffered").is_none());
    broker.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = std::time::Instant::now();
    let value = vec![b'x'; 1024];
    let mut buffered = 0;
    let mut refused = None;
    for _ in 0..2000 {
        let r = g.req(
            "POST",
            &format!("/v1/msgs/{topic}/v1"),
            &[("Appid", "app")],
            &value,
        );
        if r.status == 201 {
            assert_eq!(r.header("x-kateway-buffered"), Some("1"));
            buffered += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the budget never filled");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "buffering waited for the produce timeout: {:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], 50304);
    assert!(r.header("retry-after").is_some());
    // 256 KiB over 2 cores, one partition: about 128 messages of 1 KiB.
    assert!((64..=256).contains(&buffered), "{buffered} buffered");
    assert!(g.metric("kateway_handoff_rejected_total") >= 1.0);
    // What cannot be buffered is refused as unavailable, not as a client error.
    let ack = g.req(
        "PUT",
        &format!("/v1/offsets/app/{topic}/v1/g"),
        &[("Appid", "app")],
        b"[{\"partition\":0,\"offset\":0}]",
    );
    assert_eq!(ack.status, 503, "{}", ack.text());
    assert_eq!(ack.json()["code"], 50303);
    assert!(ack.header("retry-after").is_some());

    broker.start();
    drained(&g);
    let after = g.publish("app", topic, "", b"after");
    assert!(after.header("x-kateway-buffered").is_none());
    let stored = read_topic(&broker.addr(), "app.budget.v1", 1);
    assert!(stored.len() > buffered, "{} stored", stored.len());
    assert_eq!(stored.iter().filter(|s| s.value == value).count(), buffered);
    assert!(g.metric("kateway_handoff_bytes") < 64.0 * 1024.0);
    // Drained and idle, the handoff log is closed and deleted.
    let dir = g.data_dir().join("handoff").join("app.budget.v1").join("0");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the drained handoff log was not removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(g.metric("kateway_handoff_bytes"), 0.0);
    // A later outage creates it again, and its messages still reach Kafka.
    broker.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let r = g.publish("app", topic, "", b"second outage");
    assert_eq!(r.header("x-kateway-buffered"), Some("1"));
    assert!(dir.exists());
    broker.start();
    drained(&g);
    let stored = read_topic(&broker.addr(), "app.budget.v1", 1);
    assert_eq!(
        stored.last().map(|s| s.value.as_slice()),
        Some(&b"second outage"[..])
    );
}
