//! Settling leased messages: acks, nacks, extends and burials, receipts that cannot be forged,
//! batch receipts, and no head-of-line blocking.

use super::*;

/// 10 000 messages through 4 consumers: 10% of deliveries are nacked at random and every 100th
/// message is never acked. Each other message is acked exactly once; the poison ones land in
/// the dead-letter topic after the maximum of attempts, with headers naming their origin.
pub(crate) fn every_message_is_acked_once_and_poison_ones_are_dead_lettered(b: Backend) {
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
pub(crate) fn a_stalled_message_does_not_hold_back_later_ones(b: Backend) {
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
pub(crate) fn settling_acks_nacks_extends_and_buries(b: Backend) {
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
pub(crate) fn receipts_cannot_be_forged_or_used_on_another_group(b: Backend) {
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

/// Leases up to `batch` messages of `app2.<group>` on `app1.t` with their batch receipt.
pub(crate) fn lease_batch(
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
pub(crate) fn lease_batches(
    c: &mut Conn,
    app1: &str,
    app2: &str,
    n: usize,
) -> (Vec<Leased>, Vec<String>) {
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

pub(crate) fn batch_receipts_settle_whole_batches(b: Backend) {
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

pub(crate) fn a_message_is_buried_once(b: Backend) {
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

/// An ack and a bury of the same leased message sent at once from two connections: never both
/// succeed. A message answered `acked` is not in the dead letters, and every one answered
/// `buried` is.
pub(crate) fn an_ack_racing_a_bury_never_both_succeed(b: Backend) {
    const N: usize = 150;
    let g = Gateway::on(b, QUEUE_ENV);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    publish_numbered(&g, &app1, N);
    let mut c = g.connect();
    let mut got = Vec::new();
    while got.len() < N {
        let more = lease(
            &mut c,
            &app1,
            &app2,
            "g",
            &format!("batch={}&wait=5s&visibility=5m", N - got.len()),
        );
        assert!(!more.is_empty(), "leased {} of {N}", got.len());
        got.extend(more);
    }
    let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
    let start = Arc::new(std::sync::Barrier::new(2));
    let run = |op: &'static str| {
        let (g, app1, app2) = (&g, app1.clone(), app2.clone());
        let (receipts, start) = (receipts.clone(), start.clone());
        move || {
            let mut c = g.connect();
            receipts
                .iter()
                .map(|r| {
                    // Both calls for one message leave together.
                    start.wait();
                    let body = serde_json::json!({ "receipts": [r] }).to_string();
                    let r = c.req(
                        "POST",
                        &format!("/v1/queue/{app1}/t/v1/g/{op}"),
                        &[("Appid", app2.as_str())],
                        body.as_bytes(),
                    );
                    // A call whose every receipt failed is answered with that error.
                    match r.status {
                        200 => r.json()["results"][0]["status"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                        409 => "failed".to_owned(),
                        s => panic!("{op}: {s} {}", r.text()),
                    }
                })
                .collect::<Vec<String>>()
        }
    };
    let (buries, acks) = std::thread::scope(|s| {
        let b = s.spawn(run("bury"));
        let a = s.spawn(run("ack"));
        (b.join().unwrap(), a.join().unwrap())
    });
    let mut buried = HashSet::new();
    for (i, (b, a)) in buries.iter().zip(&acks).enumerate() {
        assert!(
            !(b == "buried" && a == "acked"),
            "message {i} was answered both buried and acked"
        );
        if b == "buried" {
            buried.insert(num(&got[i].value));
        }
    }
    assert!(!buried.is_empty(), "no bury won a race");
    let dead: HashSet<usize> = dead_letters(&g, &app2, "g")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(dead, buried);
    eprintln!(
        "{} buried, {} acked",
        buried.len(),
        acks.iter().filter(|a| *a == "acked").count()
    );
}
