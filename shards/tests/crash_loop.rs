//! `kill -9` under mixed load, round after round: keyed publishers (`ack=all` and
//! `ack=local`), batch publishers and consumers run while the gateway is killed at a random
//! moment and restarted on the same data. In the end every acknowledged message is stored exactly
//! once, each key's messages are in the order they were published, and no message is stored
//! twice. `CRASH_ROUNDS` sets the rounds (3 by default); `scripts/crash-loop` runs many.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::Gateway;

/// What the publishers of one key sent: the sequence numbers acknowledged, and the highest one
/// sent at all.
#[derive(Default, Clone)]
struct KeyLog {
    acked: Vec<u64>,
    sent: u64,
}

fn rand_ms(seed: &mut u64, lo: u64, hi: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    lo + *seed % (hi - lo)
}

#[test]
fn every_acknowledged_message_survives_kill_9_exactly_once_in_key_order() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut g = Gateway::start();
    g.create_topic("app", "t", 4);
    let keys = 6;
    let logs = Arc::new(Mutex::new(vec![KeyLog::default(); keys]));
    let batches = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut seed = std::process::id() as u64 | 1;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for k in 0..keys {
            let (addr, logs, stop) = (g.addr.clone(), logs.clone(), stop.clone());
            load.push(std::thread::spawn(move || {
                let Ok(mut c) = std::panic::catch_unwind(|| Gateway::connect_to(&addr)) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let seq = {
                        let mut l = logs.lock().unwrap();
                        l[k].sent += 1;
                        l[k].sent
                    };
                    let ack = if seq % 3 == 0 { "local" } else { "all" };
                    let path = format!("/v1/msgs/t/v1?key=k{k}&ack={ack}");
                    let body = format!("k{k}:{seq}");
                    if c.send("POST", &path, &[("Appid", "app")], body.as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    match c.read_response() {
                        Ok(r) if r.status == 201 => logs.lock().unwrap()[k].acked.push(seq),
                        Ok(r) => panic!("publish refused without a fault: {}", r.text()),
                        Err(_) => return,
                    }
                }
            }));
        }
        {
            let (addr, batches, stop) = (g.addr.clone(), batches.clone(), stop.clone());
            load.push(std::thread::spawn(move || {
                let Ok(mut c) = std::panic::catch_unwind(|| Gateway::connect_to(&addr)) else {
                    return;
                };
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let vals: Vec<String> = (0..10).map(|i| format!("b{round}:{n}:{i}")).collect();
                    n += 1;
                    let body = vals.join("\n");
                    let h = [("Appid", "app"), ("Content-Type", "application/x-ndjson")];
                    if c.send("POST", "/v1/msgs/t/v1", &h, body.as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    match c.read_response() {
                        Ok(r) if r.status == 201 => batches.lock().unwrap().extend(vals),
                        _ => return,
                    }
                }
            }));
        }
        for s in 0..2 {
            let (addr, stop) = (g.addr.clone(), stop.clone());
            load.push(std::thread::spawn(move || {
                let Ok(mut c) = std::panic::catch_unwind(|| Gateway::connect_to(&addr)) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let q = format!("/v1/msgs/app/t/v1?group=live{s}&batch=50&wait=100ms");
                    if c.send("GET", &q, &[("Appid", "sub")], b"").is_err()
                        || c.read_response().is_err()
                    {
                        return;
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rand_ms(&mut seed, 200, 1200)));
        g.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.join();
        }
        g.spawn();
    }
    // Everything stored, read by a fresh group.
    let stored = g.drain("check", "app", "t", "group=final&batch=1000&wait=1s");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for (_, _, v) in &stored {
        let v = String::from_utf8(v.clone()).unwrap();
        *count.entry(v.clone()).or_insert(0) += 1;
        if let Some((k, seq)) = v.split_once(':').filter(|(k, _)| k.starts_with('k')) {
            per_key
                .entry(k.to_owned())
                .or_default()
                .push(seq.parse().unwrap());
        }
    }
    let dup = count.iter().find(|(_, &n)| n > 1);
    assert!(dup.is_none(), "stored twice: {dup:?}");
    let logs = logs.lock().unwrap();
    let mut acked = 0;
    for (k, log) in logs.iter().enumerate() {
        let seqs = per_key.get(&format!("k{k}")).cloned().unwrap_or_default();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key k{k} out of order: {seqs:?}"
        );
        for s in &log.acked {
            assert!(
                seqs.binary_search(s).is_ok(),
                "k{k}:{s} acknowledged but lost"
            );
        }
        assert!(seqs.iter().all(|&s| s <= log.sent));
        acked += log.acked.len();
    }
    let batches = batches.lock().unwrap();
    for v in batches.iter() {
        assert_eq!(
            count.get(v),
            Some(&1),
            "batch message {v} acknowledged but lost"
        );
    }
    eprintln!(
        "crash_loop: rounds {rounds} acked {} stored {} duplicates 0 reordered 0 lost 0",
        acked + batches.len(),
        stored.len()
    );
}
