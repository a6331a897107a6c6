//! A broker that hangs instead of dying: SIGSTOP for longer than the consumer-group session
//! timeout, then SIGCONT, twice, under keyed publishers and a long-polling consumer group. Every
//! subscribe answers within its `wait` plus a small bound whatever Kafka does, the breaker
//! closes by itself, the handoff backlog drains after every freeze, every acknowledged message
//! is in Kafka in per-key order, and messages stored twice stay within the documented bound.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::kafka::{gateway, read_topic, Broker};
use support::Gateway;

/// Waits (up to 90 s) until the breaker is closed and the backlog drained.
fn recovered(g: &Gateway) -> Duration {
    let t0 = Instant::now();
    loop {
        let m = g.req("GET", "/metrics", &[], b"").text();
        let open = support::metric_value(&m, "kateway_kafka_breaker_open");
        let backlog = support::metric_value(&m, "kateway_handoff_backlog_messages");
        if open == 0.0 && backlog == 0.0 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "wedged after the freeze: breaker open on {open} cores, backlog {backlog}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_frozen_broker_does_not_wedge_the_gateway() {
    let broker = Broker::up();
    let g = Arc::new(gateway(
        &broker.addr(),
        &[
            ("KATEWAY_KAFKA_PRODUCE_TIMEOUT", "1s"),
            ("KATEWAY_KAFKA_REPLAY_BACKOFF", "200ms"),
            ("KATEWAY_KAFKA_SESSION_TIMEOUT", "6s"),
        ],
    ));
    let topic = "frozen";
    g.create_topic("app", topic, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let buffered = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
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
                        buffered.fetch_add(1, Ordering::Relaxed);
                    }
                    acked.push(v);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                (format!("k{t}"), acked)
            })
        })
        .collect();
    let slowest = Arc::new(Mutex::new((Duration::ZERO, 0u16)));
    let consumer = {
        let (g, stop, slowest) = (g.clone(), stop.clone(), slowest.clone());
        std::thread::spawn(move || {
            let mut got = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let s = g.sub("c", "app", topic, "group=g&batch=100&wait=2s", &[]);
                let took = t0.elapsed();
                let mut w = slowest.lock().unwrap();
                if took > w.0 {
                    *w = (took, s.status);
                }
                match s.status {
                    200 => got += support::records(&s.body).len(),
                    204 => {}
                    _ => {
                        s.assert_error(503);
                        assert!(s.header("retry-after").is_some());
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            got
        })
    };
    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        broker.freeze();
        std::thread::sleep(Duration::from_secs(14));
        broker.thaw();
        let took = recovered(&g);
        eprintln!("freeze {round}: recovered {took:?} after the thaw");
    }
    stop.store(true, Ordering::Relaxed);
    let acked: HashMap<String, Vec<String>> =
        publishers.into_iter().map(|h| h.join().unwrap()).collect();
    // The last publishes may have gone to the handoff buffer (the thawed broker can stall
    // again): acknowledged, and in Kafka once replayed.
    recovered(&g);
    let consumed = consumer.join().unwrap();
    let (slow, status) = *slowest.lock().unwrap();
    assert!(
        slow < Duration::from_secs(7),
        "a wait=2s subscribe took {slow:?} (answered {status})"
    );
    assert!(buffered.load(Ordering::Relaxed) > 0, "nothing was buffered");
    assert!(consumed > 0);
    let stored = read_topic(&broker.addr(), "app.frozen.v1", 4);
    let mut in_kafka: HashMap<String, Vec<String>> = HashMap::new();
    let mut dups = 0;
    for s in &stored {
        let v = String::from_utf8_lossy(&s.value).into_owned();
        let seq = in_kafka
            .entry(String::from_utf8_lossy(&s.key).into_owned())
            .or_default();
        if seq.contains(&v) {
            dups += 1;
            let first = stored.iter().find(|o| o.value == s.value).unwrap();
            eprintln!(
                "stored twice: {v} at {}:{} and {}:{}",
                first.partition, first.offset, s.partition, s.offset
            );
        } else {
            seq.push(v);
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "{total} acknowledged, {} buffered, {dups} stored twice, slowest subscribe {slow:?}",
        buffered.load(Ordering::Relaxed)
    );
    for (key, want) in &acked {
        assert_eq!(in_kafka.get(key), Some(want), "key {key}");
    }
    assert_eq!(dups, 0, "messages stored twice");
    // The group still delivers.
    g.publish("app", topic, "key=k0", b"after");
    let t0 = Instant::now();
    loop {
        let s = g.sub("c", "app", topic, "group=g&batch=1000&wait=2s", &[]);
        if s.status == 200 && support::records(&s.body).iter().any(|r| r.2 == b"after") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the group no longer delivers"
        );
    }
}
