//! Quotas and limits: one app's flood leaves room for the others, publish and subscribe
//! quotas hold, and failed authentications are limited per address.

use super::*;

pub(crate) fn a_flood_from_one_app_leaves_room_for_the_others(b: Backend) {
    let (g, a, ka, z, kz) = world(
        b,
        &[
            ("KATEWAY_LIMITS_MAX_REQUESTS_IN_FLIGHT_PER_CORE", "4"),
            ("KATEWAY_LIMITS_APP_SHARE_PER_CORE", "50"),
        ],
    );
    let r = g.req_as(&kz.admin, "POST", &format!("/v1/topics/{z}/t/v1"), b"");
    assert_eq!(r.status, 201);
    let _ = a;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (addr, key, stop) = (g.addr.clone(), ka.publish.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let auth = format!("Bearer {key}");
                let mut refused = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"f");
                    match r.status {
                        201 => {}
                        429 => {
                            assert!(r.header("retry-after").is_some());
                            refused += 1;
                        }
                        s => panic!("flood: {s} {}", r.text()),
                    }
                }
                refused
            })
        })
        .collect();
    // The other app, meanwhile: never refused.
    let mut c = Gateway::connect_to(&g.addr);
    let auth = format!("Bearer {}", kz.publish);
    for _ in 0..300 {
        let r: Resp = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"o");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: u32 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        refused > 0,
        "the flooding app held more than its share and was never refused"
    );
}

pub(crate) fn subscribe_bytes_quota_holds_back_deliveries(b: Backend) {
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let body: Vec<u8> = (0..100)
        .flat_map(|i| {
            let mut line = vec![b'a' + (i % 26) as u8; 99];
            line.push(b'\n');
            line
        })
        .collect();
    let auth = format!("Bearer {}", ka.publish);
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-ndjson"),
        ],
        &body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.op(
        "PUT",
        &format!("/v1/quotas/{a}"),
        br#"{"subscribe_bytes_per_sec":1000}"#,
    );
    assert_eq!(r.status, 200);
    // Four seconds of polling as fast as the answers allow: about the burst (1000 bytes) and
    // 1000 bytes a second get through, plus at most one batch beyond (charged after it).
    let t0 = Instant::now();
    let (mut bytes, mut refused) = (0usize, 0);
    let path = format!("/v1/msgs/{a}/t/v1?group=slow&batch=10&wait=1s&reset=oldest");
    let mut c = Gateway::connect_to(&g.addr);
    let auth = format!("Bearer {}", ka.subscribe);
    while t0.elapsed() < Duration::from_secs(4) {
        let r = c.req("GET", &path, &[("Authorization", &auth)], b"");
        match r.status {
            200 => {
                bytes += support::records(&r.body)
                    .iter()
                    .map(|m| m.2.len())
                    .sum::<usize>()
            }
            204 => {}
            429 => {
                refused += 1;
                assert!(r.header("retry-after").is_some());
                std::thread::sleep(Duration::from_millis(100));
            }
            s => panic!("{s} {}", r.text()),
        }
    }
    eprintln!("subscribe quota 1000 B/s: {bytes} bytes in 4 s, {refused} refusals");
    assert!(bytes >= 2000, "{bytes}");
    assert!(bytes <= 7000, "{bytes} bytes: the quota did not hold");
    assert!(refused > 0);
}

pub(crate) fn failed_authentications_are_limited_per_address(b: Backend) {
    let (g, _a, ka, _z, _kz) = world(b, &[]);
    let mut c = Gateway::connect_to(&g.addr);
    let bad = "Bearer kwp_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut limited = None;
    for i in 0..40 {
        let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", bad)], b"x");
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        r.assert_error(401);
    }
    let (i, r) = limited.expect("never limited");
    assert!(i >= 20, "the burst of 20 passes first ({i})");
    r.assert_error(429);
    assert!(r.header("retry-after").is_some());
    // Same connection, still open. A good key sharing the address still works; a legacy
    // secret (guessable) waits, even a right one.
    let auth = format!("Bearer {}", ka.publish);
    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"x");
    assert_eq!(r.status, 201, "{}", r.text());
    let a = g.app("a");
    assert_eq!(
        g.op("PUT", &format!("/v1/secrets/{a}"), b"legacy").status,
        201
    );
    c.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "legacy")],
        b"x",
    )
    .assert_error(429);
    // Repeated credential headers are refused.
    let r = c.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Authorization", &auth), ("Authorization", bad)],
        b"x",
    );
    assert_eq!(r.status / 100, 4);
    assert_ne!(r.status, 201);
}

/// Publishes with `key` as fast as `threads` connections go for `secs` seconds; returns the
/// accepted publishes per second and the slowest refusal.
pub(crate) fn drive(g: &Gateway, key: &str, threads: usize, secs: u64) -> (f64, Duration) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, auth) = (g.addr.clone(), format!("Bearer {key}"));
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let (mut ok, mut slowest) = (0u64, Duration::ZERO);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"q");
                    match r.status {
                        201 => ok += 1,
                        429 => {
                            slowest = slowest.max(t.elapsed());
                            let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            assert!(secs >= 1);
                            let policy = r.header("ratelimit-policy").unwrap();
                            assert!(policy.contains("q=200"), "{policy}");
                            assert!(r.header("ratelimit").is_some());
                            assert!(r.header("connection").is_none_or(|v| v != "close"));
                            // A client that honours nothing: back off a little, not a second.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        s => panic!("{s} {}", r.text()),
                    }
                }
                (ok, slowest)
            })
        })
        .collect();
    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    for w in workers {
        let (n, s) = w.join().unwrap();
        ok += n;
        slowest = slowest.max(s);
    }
    (ok as f64 / t0.elapsed().as_secs_f64(), slowest)
}

pub(crate) fn quotas_hold_within_ten_percent_on_one_and_two_cores(b: Backend) {
    for cores in [1, 2] {
        let mut g = Gateway::new_on(b, &[]);
        g.auth = true;
        g.cores = cores;
        g.spawn();
        let a = g.app("q");
        let k = g.make_app(&a);
        let r = g.req_as(
            &k.admin,
            "POST",
            &format!("/v1/topics/{a}/t/v1?partitions=2"),
            b"",
        );
        assert_eq!(r.status, 201);
        let r = g.op(
            "PUT",
            &format!("/v1/quotas/{a}"),
            br#"{"publish_messages_per_sec":200,"max_streams":2}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // An optional field is left out, never null (the schema's type is an integer): refused,
        // and the quota set above stays (the limits below hold).
        let r = g.op(
            "PUT",
            &format!("/v1/quotas/{a}"),
            br#"{"publish_messages_per_sec":200,"max_streams":null}"#,
        );
        r.assert_error(400);
        assert!(r.text().contains("max_streams"), "{}", r.text());
        // A batch larger than the burst could never pass: 413, at once.
        let auth = format!("Bearer {}", k.publish);
        let batch = "m\n".repeat(201);
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/x-ndjson"),
            ],
            batch.as_bytes(),
        );
        r.assert_error(413);
        // Spend the burst (a second's worth), then measure the sustained rate.
        drive(&g, &k.publish, 2, 1);
        let (rate, slowest) = drive(&g, &k.publish, 4, 10);
        eprintln!("quota 200/s on {cores} core(s): {rate:.1}/s, slowest 429 {slowest:?}");
        assert!(
            (180.0..=220.0).contains(&rate),
            "{rate}/s on {cores} core(s)"
        );
        // A refusal is answered at once, not after a punishment sleep.
        assert!(slowest < Duration::from_millis(500), "{slowest:?}");
        // Two concurrent long polls at most: the third is refused, the first two unharmed.
        let polls: Vec<_> = (0..2)
            .map(|i| {
                let mut c = Gateway::connect_to(&g.addr);
                let auth = format!("Bearer {}", k.subscribe);
                let path = format!("/v1/msgs/{a}/t/v1?group=p{i}&wait=3s&reset=newest");
                c.send("GET", &path, &[("Authorization", &auth)], b"")
                    .unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let path = format!("/v1/msgs/{a}/t/v1?group=p9&wait=1s&reset=newest");
        g.req_as(&k.subscribe, "GET", &path, b"").assert_error(429);
        for mut c in polls {
            assert_eq!(c.read_response().unwrap().status, 204);
        }
    }
}
