//! Leased delivery (`ack=lease`), on both backends: receipts, ack/nack/extend/bury, retries and
//! dead letters, no head-of-line blocking, the queue state surviving `kill -9`, receipts
//! that cannot be forged, and batch receipts.

mod support;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Backend, Conn, Gateway};

on_both_backends!(
    every_message_is_acked_once_and_poison_ones_are_dead_lettered,
    a_stalled_message_does_not_hold_back_later_ones,
    settling_acks_nacks_extends_and_buries,
    receipts_cannot_be_forged_or_used_on_another_group,
    acked_messages_stay_acked_across_kill_9,
    a_large_checkpoint_survives_kill_9,
    dead_letters_are_counted_peeked_redriven_and_purged,
    a_topic_created_again_starts_its_queues_afresh,
    batch_receipts_settle_whole_batches,
    a_message_is_buried_once,
    a_group_policy_sets_its_attempts,
    concurrent_redrives_and_purges_move_each_dead_letter_once,
    one_app_cannot_take_every_queue,
    a_leased_poll_ends_with_its_client,
);

/// Fast retries, short leases and checkpoints, for tests.
const QUEUE_ENV: &[(&str, &str)] = &[
    ("KATEWAY_QUEUE_MAX_ATTEMPTS", "3"),
    ("KATEWAY_QUEUE_BACKOFF_BASE", "10ms"),
    ("KATEWAY_QUEUE_BACKOFF_MAX", "50ms"),
    ("KATEWAY_QUEUE_VISIBILITY", "1s"),
    ("KATEWAY_QUEUE_CHECKPOINT_INTERVAL", "200ms"),
];

/// A leased message as a JSON line shows it.
#[derive(Debug, Clone)]
struct Leased {
    receipt: String,
    attempt: u64,
    value: Vec<u8>,
}

fn parse(body: &[u8]) -> Vec<Leased> {
    use base64::Engine;
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).unwrap();
            Leased {
                receipt: v["receipt"].as_str().unwrap().to_owned(),
                attempt: v["attempt"].as_u64().unwrap(),
                value: base64::engine::general_purpose::STANDARD
                    .decode(v["value"].as_str().unwrap())
                    .unwrap(),
            }
        })
        .collect()
}

/// Leases up to `batch` messages of `app2.<group>` on `app1.t`.
fn lease(c: &mut Conn, app1: &str, app2: &str, group: &str, q: &str) -> Vec<Leased> {
    let r = c.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group={group}&ack=lease&{q}"),
        &[("Appid", app2), ("Accept", "application/x-ndjson")],
        b"",
    );
    match r.status {
        204 => Vec::new(),
        200 => parse(&r.body),
        s => panic!("lease: {s} {}", r.text()),
    }
}

/// Settles `receipts` with `op`; returns each outcome's status.
fn settle(c: &mut Conn, app1: &str, app2: &str, group: &str, op: &str, body: Value) -> Vec<String> {
    let r = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/{group}/{op}"),
        &[("Appid", app2)],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{op}: {}", r.text());
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            if o["status"] == "failed" {
                eprintln!("{op}: {o}");
            }
            o["status"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn publish_numbered(g: &Gateway, app1: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let body: String = chunk.iter().map(|i| format!("{i}\n")).collect();
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1?ack=local",
            &[("Appid", app1), ("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn num(v: &[u8]) -> usize {
    std::str::from_utf8(v).unwrap().trim().parse().unwrap()
}

/// Reads the whole dead-letter topic of `app2.<group>` with a plain group.
fn dead_letters(g: &Gateway, app2: &str, group: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    loop {
        let r = g.req(
            "GET",
            &format!("/v1/msgs/{app2}/{group}-dlq/v1?group=peek&batch=500&wait=1s"),
            &[("Appid", app2), ("Accept", "application/x-ndjson")],
            b"",
        );
        if r.status == 204 {
            return out;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        for l in r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            use base64::Engine;
            let v: Value = serde_json::from_slice(l).unwrap();
            let value = base64::engine::general_purpose::STANDARD
                .decode(v["value"].as_str().unwrap())
                .unwrap();
            out.push((num(&value), v["tags"].as_str().unwrap_or("").to_owned()));
        }
    }
}

/// 10 000 messages through 4 consumers: 10% of deliveries are nacked at random and every 100th
/// message is never acked. Each other message is acked exactly once; the poison ones land in
/// the dead-letter topic after the maximum of attempts, with headers naming their origin.
fn every_message_is_acked_once_and_poison_ones_are_dead_lettered(b: Backend) {
    const N: usize = 10_000;
    let g = Arc::new(Gateway::on(b, QUEUE_ENV));
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 4);
    publish_numbered(&g, &app1, N);
    let acked: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    // Per message: deliveries, and the highest attempt number seen.
    let deliveries: Arc<Mutex<HashMap<usize, (u64, u64)>>> = Arc::default();
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (g, app1, app2) = (g.clone(), app1.clone(), app2.clone());
            let (acked, deliveries) = (acked.clone(), deliveries.clone());
            std::thread::spawn(move || {
                let mut c = g.connect();
                let mut rng = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut idle_since = None::<Instant>;
                loop {
                    let got = lease(&mut c, &app1, &app2, "g", "batch=100&wait=500ms&visibility=2s");
                    if got.is_empty() {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        // Done once every good message is acked and nothing came for a while
                        // (the poison ones need 3 leases of 2 s).
                        let done = acked.lock().unwrap().len() == N - N / 100;
                        if done && since.elapsed() > Duration::from_secs(6) {
                            return;
                        }
                        assert!(since.elapsed() < Duration::from_secs(60), "stuck");
                        continue;
                    }
                    idle_since = None;
                    let (mut acks, mut nacks) = (Vec::new(), Vec::new());
                    for m in got {
                        let id = num(&m.value);
                        let mut d = deliveries.lock().unwrap();
                        let seen = d.entry(id).or_insert((0, 0));
                        seen.0 += 1;
                        seen.1 = seen.1.max(m.attempt);
                        drop(d);
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if id.is_multiple_of(100) {
                            continue;
                        }
                        if rng % 10 == 0 && m.attempt == 1 {
                            nacks.push(m.receipt);
                        } else {
                            acks.push((id, m.receipt));
                        }
                    }
                    if !nacks.is_empty() {
                        let st = settle(&mut c, &app1, &app2, "g", "nack", serde_json::json!({"receipts": nacks, "delay": "0s", "error": "random failure"}));
                        assert!(st.iter().all(|s| s == "retry" || s == "dead"), "{st:?}");
                    }
                    if !acks.is_empty() {
                        let receipts: Vec<&String> = acks.iter().map(|(_, r)| r).collect();
                        let st = settle(&mut c, &app1, &app2, "g", "ack", serde_json::json!({ "receipts": receipts }));
                        let mut a = acked.lock().unwrap();
                        for ((id, _), s) in acks.iter().zip(&st) {
                            // A lease that ended under load may have gone to another consumer,
                            // which acked first.
                            assert!(s == "acked" || s == "already_done", "message {id}: {s}");
                            if s == "acked" {
                                *a.entry(*id).or_insert(0) += 1;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap();
    for id in (0..N).filter(|i| !i.is_multiple_of(100)) {
        assert_eq!(acked.get(&id), Some(&1), "message {id}");
    }
    // Attempts count every delivery.
    for (id, (n, max)) in deliveries.lock().unwrap().iter() {
        assert_eq!(n, max, "message {id}: {n} deliveries, attempt {max}");
    }
    // Nacked messages that hit the attempt limit are dead letters too: the poison ones always.
    let dead = dead_letters(&g, &app2, "g");
    let dead_ids: HashSet<usize> = dead.iter().map(|d| d.0).collect();
    for id in (0..N).step_by(100) {
        assert!(
            dead_ids.contains(&id),
            "poison message {id} is no dead letter"
        );
    }
    let (_, tags) = dead.iter().find(|d| d.0 == 100).unwrap();
    assert!(tags.contains(&format!("kgw-origin={app1}.t.v1/")), "{tags}");
    assert!(tags.contains("kgw-attempts=3"), "{tags}");
    assert!(tags.contains("kgw-first-seen="), "{tags}");
    for (id, _) in &dead {
        assert!(
            id.is_multiple_of(100) || !acked.contains_key(id),
            "message {id} acked and dead"
        );
    }
}

/// A consumer that holds one message does not hold back the later messages of its partition.
fn a_stalled_message_does_not_hold_back_later_ones(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 20);
    let mut slow = g.connect();
    let held = lease(
        &mut slow,
        &app1,
        &app2,
        "g",
        "batch=1&wait=10s&visibility=5m",
    );
    assert_eq!(held.len(), 1);
    assert_eq!(num(&held[0].value), 0);
    let mut fast = g.connect();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 19 && t0.elapsed() < Duration::from_secs(20) {
        for m in lease(&mut fast, &app1, &app2, "g", "batch=5&wait=2s") {
            got.push(num(&m.value));
            settle(
                &mut fast,
                &app1,
                &app2,
                "g",
                "ack",
                serde_json::json!({"receipts": [m.receipt]}),
            );
        }
    }
    assert_eq!(got, (1..20).collect::<Vec<_>>());
    assert_eq!(
        settle(
            &mut slow,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"receipts": [held[0].receipt]})
        ),
        ["acked"]
    );
    assert!(lease(&mut fast, &app1, &app2, "g", "batch=5&wait=1s").is_empty());
}

/// Each settle, by JSON body and by `X-Receipt`.
fn settling_acks_nacks_extends_and_buries(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 4);
    let mut c = g.connect();
    // One message as the body: receipt and attempt in headers.
    let r = c.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group=g&ack=lease&wait=5s"),
        &[("Appid", app2.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"0");
    assert_eq!(r.header("x-delivery-attempt"), Some("1"));
    let first = r.header("x-receipt").unwrap().to_owned();
    // A body names the receipts and options alone: a receipt header or an option in the query
    // beside it would be ignored, so the call is refused and nothing is settled.
    let body = serde_json::json!({ "receipts": [first] }).to_string();
    for (h, q) in [
        (Some(("X-Receipt", first.as_str())), ""),
        (Some(("X-Batch-Receipt", "x")), ""),
        (None, "?delay=abc"),
        (None, "?error=x"),
    ] {
        let mut headers = vec![("Appid", app2.as_str())];
        headers.extend(h);
        let r = c.req(
            "POST",
            &format!("/v1/queue/{app1}/t/v1/g/nack{q}"),
            &headers,
            body.as_bytes(),
        );
        r.assert_error(400);
    }
    let ack = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/g/ack"),
        &[("Appid", app2.as_str()), ("X-Receipt", first.as_str())],
        b"",
    );
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert_eq!(ack.json()["results"][0]["status"], "acked");
    // Acking again is harmless.
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"receipts": [first]})
        ),
        ["already_done"]
    );

    let got = lease(&mut c, &app1, &app2, "g", "batch=3&wait=5s&visibility=2s");
    let ids: Vec<usize> = got.iter().map(|m| num(&m.value)).collect();
    assert_eq!(ids, [1, 2, 3]);
    // Nack 1 with a delay: it comes back after it, as attempt 2.
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "nack",
            serde_json::json!({"receipts": [got[0].receipt], "delay": "300ms"})
        ),
        ["retry"]
    );
    // Extend 2 well past its 2 s lease.
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "extend",
            serde_json::json!({"receipts": [got[1].receipt], "visibility": "1m"})
        ),
        ["extended"]
    );
    // Bury 3: straight to the dead-letter topic, with the error given.
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "bury",
            serde_json::json!({"receipts": [got[2].receipt], "error": "bad input"})
        ),
        ["buried"]
    );
    let again = lease(&mut c, &app1, &app2, "g", "batch=5&wait=5s");
    assert_eq!(again.len(), 1);
    assert_eq!((num(&again[0].value), again[0].attempt), (1, 2));
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"receipts": [again[0].receipt]})
        ),
        ["acked"]
    );
    // Past the first lease's end, the extended message stays with its holder.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(lease(&mut c, &app1, &app2, "g", "batch=5&wait=500ms").is_empty());
    // A settle with a receipt whose lease ended is refused: 409.
    let stale = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/g/nack"),
        &[("Appid", app2.as_str())],
        serde_json::json!({"receipts": [got[0].receipt]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(stale.status, 409, "{}", stale.text());
    assert_eq!(stale.json()["code"], 40901);
    let dead = dead_letters(&g, &app2, "g");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, 3);
    assert!(dead[0].1.contains("kgw-error=bad input"), "{}", dead[0].1);
    assert!(dead[0].1.contains("kgw-attempts=1"), "{}", dead[0].1);
    // Bad settles: no receipts, an unknown op, extend without visibility.
    for (op, body, status) in [
        ("ack", "{\"receipts\":[]}", 400),
        ("ack", "", 400),
        ("extend", "{\"receipts\":[\"x\"]}", 400),
        ("drop", "{\"receipts\":[\"x\"]}", 404),
    ] {
        let r = c.req(
            "POST",
            &format!("/v1/queue/{app1}/t/v1/g/{op}"),
            &[("Appid", app2.as_str())],
            body.as_bytes(),
        );
        assert_eq!(r.status, status, "{op} {body}: {}", r.text());
    }
}

/// A receipt is the gateway's: a changed one, or one of another group, is refused (400).
fn receipts_cannot_be_forged_or_used_on_another_group(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    publish_numbered(&g, &app1, 2);
    let mut c = g.connect();
    let got = lease(&mut c, &app1, &app2, "g", "batch=2&wait=5s");
    assert_eq!(got.len(), 2);
    let r = got[0].receipt.clone();
    let mut forged = Vec::new();
    for i in [0, r.len() / 2, r.len() - 1] {
        let mut b = r.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        forged.push(String::from_utf8(b).unwrap());
    }
    forged.push(format!("{r}A"));
    forged.push(r[..r.len() - 1].to_owned());
    for f in &forged {
        let resp = c.req(
            "POST",
            &format!("/v1/queue/{app1}/t/v1/g/ack"),
            &[("Appid", app2.as_str())],
            serde_json::json!({"receipts": [f]}).to_string().as_bytes(),
        );
        assert_eq!(resp.status, 400, "{f}: {}", resp.text());
        assert_eq!(resp.json()["code"], 40008);
    }
    let other = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/other/ack"),
        &[("Appid", app2.as_str())],
        serde_json::json!({"receipts": [r]}).to_string().as_bytes(),
    );
    assert_eq!(other.status, 400, "{}", other.text());
    // In a batch, a bad receipt fails alone.
    let st = settle(
        &mut c,
        &app1,
        &app2,
        "g",
        "ack",
        serde_json::json!({"receipts": [forged[0], got[1].receipt, r]}),
    );
    assert_eq!(st, ["failed", "acked", "acked"]);
}

/// `kill -9` mid-run: what was acked before the last checkpoint is not delivered again,
/// nothing acked is lost, every message is still delivered, and attempt counts carry on.
fn acked_messages_stay_acked_across_kill_9(b: Backend) {
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
fn a_large_checkpoint_survives_kill_9(b: Backend) {
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

/// The dead-letter routes: count, peek (takes nothing), redrive to the origin topic (the
/// messages are consumed again there), purge.
fn dead_letters_are_counted_peeked_redriven_and_purged(b: Backend) {
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
fn a_topic_created_again_starts_its_queues_afresh(b: Backend) {
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

/// Leases up to `batch` messages of `app2.<group>` on `app1.t` with their batch receipt.
fn lease_batch(
    c: &mut Conn,
    app1: &str,
    app2: &str,
    group: &str,
    q: &str,
) -> (Vec<Leased>, String) {
    let r = c.req(
        "GET",
        &format!("/v1/msgs/{app1}/t/v1?group={group}&ack=lease&{q}"),
        &[("Appid", app2), ("Accept", "application/x-ndjson")],
        b"",
    );
    assert_eq!(r.status, 200, "lease: {}", r.text());
    let batch = r
        .header("x-batch-receipt")
        .expect("X-Batch-Receipt")
        .to_owned();
    (parse(&r.body), batch)
}

/// Leases at least `n` messages of `app2.g` on `app1.t` (trying for 10 s), in polls of up to
/// `n`: the messages and each poll's batch receipt.
fn lease_batches(c: &mut Conn, app1: &str, app2: &str, n: usize) -> (Vec<Leased>, Vec<String>) {
    let (mut got, mut batches) = (Vec::new(), Vec::new());
    let q = format!("batch={n}&wait=5s&visibility=1m");
    let t0 = Instant::now();
    while got.len() < n && t0.elapsed() < Duration::from_secs(10) {
        let (m, b) = lease_batch(c, app1, app2, "g", &q);
        got.extend(m);
        batches.push(b);
    }
    assert!(got.len() >= n, "{} of {n} leased", got.len());
    (got, batches)
}

fn batch_receipts_settle_whole_batches(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 2);
    publish_numbered(&g, &app1, 40);
    let mut c = g.connect();
    let (got, batches) = lease_batches(&mut c, &app1, &app2, 40);
    let n = got.len();
    // A changed character, a batch receipt of another group, or a receipt where a batch
    // receipt belongs: 400 (40008), and nothing settled.
    let b0 = batches[0].clone();
    let mut bad = vec![
        format!("{b0}A"),
        b0[..b0.len() - 2].to_owned(),
        got[0].receipt.clone(),
    ];
    let mut flipped = b0.clone().into_bytes();
    flipped[b0.len() / 2] = if flipped[b0.len() / 2] == b'A' {
        b'B'
    } else {
        b'A'
    };
    bad.push(String::from_utf8(flipped).unwrap());
    for f in &bad {
        let r = c.req(
            "POST",
            &format!("/v1/queue/{app1}/t/v1/g/ack"),
            &[("Appid", app2.as_str())],
            serde_json::json!({"batch_receipt": f})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status, 400, "{f}: {}", r.text());
        assert_eq!(r.json()["code"], 40008, "{}", r.text());
    }
    let other = c.req(
        "POST",
        &format!("/v1/queue/{app1}/t/v1/other/ack"),
        &[("Appid", app2.as_str()), ("X-Batch-Receipt", b0.as_str())],
        b"",
    );
    assert_eq!(other.status, 400, "{}", other.text());
    // One individual receipt, then every batch receipt: the first is done already.
    assert_eq!(
        settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"receipts": [got[0].receipt]})
        ),
        ["acked"]
    );
    let mut statuses = Vec::new();
    for b in &batches {
        statuses.extend(settle(
            &mut c,
            &app1,
            &app2,
            "g",
            "ack",
            serde_json::json!({"batch_receipt": b}),
        ));
    }
    assert_eq!(statuses.len(), n);
    assert_eq!(statuses.iter().filter(|s| *s == "already_done").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "acked").count(), n - 1);
    // All done: past the 1 s default lease nothing comes back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lease(&mut c, &app1, &app2, "g", "batch=50&wait=500ms").is_empty());

    // Nack a batch by header (delay in the query): it comes back as attempt 2, and a receipt
    // beside a batch receipt in one body settles both.
    publish_numbered(&g, &app1, 6);
    let (_, fresh_batches) = lease_batches(&mut c, &app1, &app2, 6);
    let mut retried = 0;
    for b in &fresh_batches {
        let r = c.req(
            "POST",
            &format!("/v1/queue/{app1}/t/v1/g/nack?delay=100ms"),
            &[("Appid", app2.as_str()), ("X-Batch-Receipt", b.as_str())],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        retried += r.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["status"] == "retry")
            .count();
    }
    assert_eq!(retried, 6);
    let (again, again_batches) = lease_batches(&mut c, &app1, &app2, 6);
    assert_eq!(again.len(), 6);
    assert!(again.iter().all(|m| m.attempt == 2), "{again:?}");
    let mut statuses = Vec::new();
    for (i, b) in again_batches.iter().enumerate() {
        let body = if i == 0 {
            serde_json::json!({"receipts": [again[0].receipt], "batch_receipt": b})
        } else {
            serde_json::json!({"batch_receipt": b})
        };
        statuses.extend(settle(&mut c, &app1, &app2, "g", "ack", body));
    }
    assert_eq!(statuses[0], "acked");
    assert_eq!(statuses.iter().filter(|s| *s == "already_done").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "acked").count(), 6);
}

fn a_message_is_buried_once(b: Backend) {
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, 2);
    let mut c = g.connect();
    let (got, batch) = lease_batch(&mut c, &app1, &app2, "g", "batch=2&wait=5s&visibility=1m");
    assert_eq!(got.len(), 2);
    let (r0, r1) = (&got[0].receipt, &got[1].receipt);
    // The same message named again in one call, by receipt or by batch receipt: buried once,
    // the other namings refused. Control characters in the error become spaces.
    let st = settle(
        &mut c,
        &app1,
        &app2,
        "g",
        "bury",
        serde_json::json!({"receipts": [r0, r0, r1], "batch_receipt": batch, "error": "a\u{0}b\u{1b}c\td"}),
    );
    assert_eq!(st, ["buried", "failed", "buried", "failed", "failed"]);
    let dead = dead_letters(&g, &app2, "g");
    let ids: Vec<usize> = dead.iter().map(|(n, _)| *n).collect();
    assert_eq!(ids, [0, 1], "{dead:?}");
    assert!(dead[0].1.contains("kgw-error=a b c d"), "{}", dead[0].1);
    assert!(!dead[0].1.chars().any(char::is_control), "{:?}", dead[0].1);
}

/// `/v1/policies/:app/:group`: a group's own max attempts (and backoff and lease) override the
/// gateway's settings, checked on the way in, for that group only, from its first lease, and
/// a change reaches a queue already open.
fn a_group_policy_sets_its_attempts(b: Backend) {
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

/// Redrives and purges of one group's dead letters sent at once from many connections: each
/// runs alone or is refused (409, `Retry-After`), and every dead letter is redriven or purged
/// exactly once: what the answers count is what was published again, and nothing is left.
fn concurrent_redrives_and_purges_move_each_dead_letter_once(b: Backend) {
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
fn one_app_cannot_take_every_queue(b: Backend) {
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
fn a_leased_poll_ends_with_its_client(b: Backend) {
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
