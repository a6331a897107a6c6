//! Delayed messages on both backends: none early, every one once (also across `kill -9`),
//! cancel before and after firing, list and peek, a 30-day delay kept on disk until the test
//! clock reaches it, and (Kafka) a gateway replaced by another firing what the first accepted.

mod support;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{records, Backend, Gateway};

on_both_backends!(
    a_thousand_delays_arrive_none_early_each_once,
    cancel_peek_and_list,
    pending_delays_fire_once_after_kill_9,
    a_30_day_delay_waits_on_disk_until_the_clock_reaches_it,
);

const TEST_CLOCK: &[(&str, &str)] = &[("KATEWAY_DELAY_TEST_CLOCK", "true")];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Publishes `body` to `app`'s topic `t` with `query`; the delay id and due time.
fn delay(g: &Gateway, app: &str, query: &str, body: &[u8]) -> (String, i64) {
    let r = g.req(
        "POST",
        &format!("/v1/msgs/t/v1?{query}"),
        &[("Appid", app)],
        body,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("x-delay-id"), Some(id.as_str()));
    let due = v["deliver_at"].as_str().unwrap();
    (id, rfc3339_ms(due))
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`, computed here independently of
/// the gateway's own parser.
fn rfc3339_ms(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let secs = n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    let ms = n(20..23);
    // Days since the epoch, by counting.
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = (1970..y)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<i64>();
    let month = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    for (i, len) in month.iter().enumerate().take((m - 1) as usize) {
        days += len + i64::from(i == 1 && leap(y));
    }
    days += d - 1;
    (days * 86_400 + secs) * 1000 + ms
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`, by counting.
fn format_ms(ms: i64) -> String {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let (mut days, secs) = (ms / 86_400_000, ms / 1000 % 86_400);
    let mut y = 1970;
    while days >= if leap(y) { 366 } else { 365 } {
        days -= if leap(y) { 366 } else { 365 };
        y += 1;
    }
    let month = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut m = 0;
    while days >= month[m] + i64::from(m == 1 && leap(y)) {
        days -= month[m] + i64::from(m == 1 && leap(y));
        m += 1;
    }
    format!(
        "{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        m + 1,
        days + 1,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms % 1000
    )
}

/// Waits until the gateway holds every partition of the delay log (on Kafka its group takes
/// them a few seconds after start): delays then fire on time, and peeks find them.
fn wait_held(g: &Gateway, app: &str) {
    // The first delayed publish makes the delay log: one far off, on a topic of its own.
    let r = g.req("POST", &format!("/v1/topics/{app}/warm/v1"), &[], b"");
    assert!(r.status == 201 || r.status == 409, "{}", r.text());
    let r = g.req(
        "POST",
        "/v1/msgs/warm/v1?delay=1h",
        &[("Appid", app)],
        b"warm",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    for _ in 0..300 {
        let v = g
            .req("GET", "/v1/delays/t/v1", &[("Appid", app)], b"")
            .json();
        if v["log_partitions_held"] == v["log_partitions"] {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the delay log's partitions were not taken within 30 s");
}

/// Reads group `g` of `app`'s topic `t` until `want` messages arrived or `limit` passed;
/// each message's value with the time it arrived.
fn collect(g: &Gateway, app: &str, want: usize, limit: Duration) -> Vec<(Vec<u8>, i64)> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && t0.elapsed() < limit {
        let s = g.sub(app, app, "t", "group=g&batch=200&wait=1s&reset=oldest", &[]);
        if s.status == 204 {
            continue;
        }
        assert_eq!(s.status, 200, "{}", s.text());
        let at = now_ms();
        got.extend(records(&s.body).into_iter().map(|(_, _, v)| (v, at)));
    }
    got
}

fn a_thousand_delays_arrive_none_early_each_once(b: Backend) {
    const N: usize = 1000;
    let g = Gateway::on(b, &[]);
    let app = g.app("app");
    g.create_topic(&app, "t", 2);
    wait_held(&g, &app);
    // The subscriber's group joins first (on Kafka that takes seconds), so that what is
    // measured is the firing.
    assert_eq!(
        g.sub(&app, &app, "t", "group=g&wait=0&reset=oldest", &[])
            .status,
        204
    );
    let mut due: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut c = g.connect();
    for i in 0..N {
        let body = format!("m{i}");
        // 1 to 20 s, spread.
        let ms = 1000 + (i * 7919) % 19_000;
        let r = c.req(
            "POST",
            &format!("/v1/msgs/t/v1?delay={ms}ms"),
            &[("Appid", &app)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        due.insert(
            body.into_bytes(),
            rfc3339_ms(r.json()["deliver_at"].as_str().unwrap()),
        );
    }
    let got = collect(&g, &app, N, Duration::from_secs(90));
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut late = Vec::new();
    for (v, at) in &got {
        *seen.entry(v.as_slice()).or_default() += 1;
        let want = due[v];
        assert!(
            *at >= want,
            "{} arrived {} ms early",
            String::from_utf8_lossy(v),
            want - at
        );
        late.push(at - want);
    }
    assert_eq!(seen.len(), N, "every message arrives");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    late.sort_unstable();
    eprintln!(
        "{b:?}: lateness over {N} delays (client poll included): p50 {} ms, p99 {} ms, max {} ms",
        late[N / 2],
        late[N * 99 / 100],
        late[N - 1]
    );
    assert_eq!(
        g.metric_until("kateway_delays_fired_total", 100, |v| v == N as f64),
        N as f64
    );
}

fn cancel_peek_and_list(b: Backend) {
    let g = Gateway::on(b, &[]);
    let app = g.app("app");
    g.create_topic(&app, "t", 2);
    g.create_topic(&app, "u", 1);
    wait_held(&g, &app);
    let (keep, keep_due) = delay(&g, &app, "delay=1h&key=k1", b"kept");
    let (gone, _) = delay(&g, &app, "delay=1h", b"cancelled");
    let (soon, _) = delay(&g, &app, "delay=1s", b"soon");
    // Ten days ahead, to the millisecond.
    let at = format_ms((now_ms() / 1000 + 10 * 86_400) * 1000 + 678);
    let at = at.as_str();
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &app), ("X-Deliver-At", at), ("X-Tag", "x")],
        b"dated",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["deliver_at"], at);
    let dated = r.json()["id"].as_str().unwrap().to_owned();
    // Peek: the message and its options.
    let p = g.req(
        "GET",
        &format!("/v1/delays/t/v1/{keep}"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(p.status, 200, "{}", p.text());
    let v = p.json();
    assert_eq!(v["value"], "kept");
    assert_eq!(v["key"], "k1");
    assert_eq!(rfc3339_ms(v["deliver_at"].as_str().unwrap()), keep_due);
    let p = g.req(
        "GET",
        &format!("/v1/delays/t/v1/{dated}"),
        &[("Appid", &app)],
        b"",
    );
    assert_eq!(p.json()["tags"], "x");
    // Cancel: 204, then 404; an id of another topic, or a forged one, is unknown.
    let del = |id: &str, topic: &str| {
        g.req(
            "DELETE",
            &format!("/v1/delays/{topic}/v1/{id}"),
            &[("Appid", &app)],
            b"",
        )
    };
    assert_eq!(del(&gone, "t").status, 204);
    del(&gone, "t").assert_error(404);
    del(&keep, "u").assert_error(404);
    let mut forged = keep.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    del(std::str::from_utf8(&forged).unwrap(), "t").assert_error(404);
    // After it fired: 409.
    let got = collect(&g, &app, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"soon");
    let r = del(&soon, "t");
    r.assert_error(409);
    assert_eq!(r.json()["code"], 40904);
    // The list: pending ones, soonest first.
    let l = g.req("GET", "/v1/delays/t/v1", &[("Appid", &app)], b"");
    assert_eq!(l.status, 200, "{}", l.text());
    let body: Value = l.json();
    let listed: Vec<String> = body["delays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, vec![keep.clone(), dated.clone()]);
    let l = g.req("GET", "/v1/delays/u/v1", &[("Appid", &app)], b"");
    assert_eq!(l.json()["count"], 0);
    // The cancelled one never arrives, nor the others before their time.
    assert!(collect(&g, &app, 1, Duration::from_secs(3)).is_empty());
    // Bad input.
    g.req("POST", "/v1/msgs/t/v1?delay=soon", &[("Appid", &app)], b"x")
        .assert_error(400);
    g.req(
        "POST",
        "/v1/msgs/t/v1?delay=1000d",
        &[("Appid", &app)],
        b"x",
    )
    .assert_error(400);
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &app), ("X-Deliver-At", "tomorrow")],
        b"x",
    )
    .assert_error(400);
    g.req("GET", "/v1/delays/t/v1", &[("Appid", "_kgw")], b"")
        .assert_error(403);
    g.req("GET", "/v1/delays/nope/v1", &[("Appid", &app)], b"")
        .assert_error(404);
}

fn pending_delays_fire_once_after_kill_9(b: Backend) {
    const N: usize = 500;
    let mut g = Gateway::on(b, &[]);
    let app = g.app("app");
    g.create_topic(&app, "t", 2);
    let mut c = g.connect();
    for i in 0..N {
        let ms = 4000 + (i * 13) % 3000;
        let r = c.req(
            "POST",
            &format!("/v1/msgs/t/v1?delay={ms}ms"),
            &[("Appid", &app)],
            format!("m{i}").as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.text());
    }
    drop(c);
    g.kill9();
    g.spawn();
    let got = collect(&g, &app, N, Duration::from_secs(90));
    // A little longer: a second firing would arrive now.
    let more = collect(&g, &app, 1, Duration::from_secs(3));
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for (v, _) in got.into_iter().chain(more) {
        *seen.entry(v).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "every delay fires after the restart");
    assert!(seen.values().all(|&n| n == 1), "each once");
}

fn a_30_day_delay_waits_on_disk_until_the_clock_reaches_it(b: Backend) {
    let g = Gateway::on(b, TEST_CLOCK);
    let app = g.app("app");
    g.create_topic(&app, "t", 1);
    wait_held(&g, &app);
    const FAR: usize = 200;
    let mut ids = Vec::new();
    for i in 0..FAR {
        ids.push(delay(&g, &app, "delay=30d", format!("far{i}").as_bytes()).0);
    }
    // Listed, held on disk and not in memory.
    let mut disk = 0.0;
    for _ in 0..100 {
        // The warm-up delay (due in an hour) waits on disk too.
        disk = g.metric("kateway_delays_pending_disk") - 1.0;
        if disk == FAR as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(disk, FAR as f64);
    assert_eq!(g.metric("kateway_delays_pending_memory"), 0.0);
    let buckets: Vec<_> = support::walk(&g.data_dir().join("delays"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bucket"))
        .collect();
    assert!(!buckets.is_empty(), "bucket files hold the far delays");
    let l = g.req("GET", "/v1/delays/t/v1?max=5", &[("Appid", &app)], b"");
    assert_eq!(l.json()["count"], 5);
    // Nothing fires today.
    assert!(collect(&g, &app, 1, Duration::from_secs(2)).is_empty());
    // Thirty days and a minute later, all of them.
    let r = g.req("POST", "/v1/debug/clock?advance=30d", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.req("POST", "/v1/debug/clock?advance=1m", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let got = collect(&g, &app, FAR, Duration::from_secs(30));
    assert_eq!(got.len(), FAR);
    // The warm-up delay fired too (its hour passed).
    assert_eq!(
        g.metric_until("kateway_delays_pending_disk", 100, |v| v == 0.0),
        0.0
    );
    // Without delay.test_clock there is no clock to move.
    let plain = Gateway::on(b, &[]);
    plain
        .req("POST", "/v1/debug/clock?advance=1d", &[], b"")
        .assert_error(404);
}

/// Kafka: a gateway replaced by another (a new host, a fresh data directory) fires what the
/// first accepted, once.
#[test]
fn kafka_a_replaced_gateway_fires_what_the_first_accepted() {
    const N: usize = 200;
    let brokers = support::kafka::shared_brokers();
    let log = format!("delays-replaced-{}", std::process::id());
    let env = [("KATEWAY_DELAY_LOG", log.as_str())];
    let mut first = support::kafka::gateway(&brokers, &env);
    let app = first.app("app");
    first.create_topic(&app, "t", 2);
    for i in 0..N {
        let ms = 3000 + (i * 17) % 2000;
        delay(
            &first,
            &app,
            &format!("delay={ms}ms"),
            format!("m{i}").as_bytes(),
        );
    }
    first.kill9();
    let second = support::kafka::gateway(&brokers, &env);
    // Its group takes the delay log's partitions once the first one's session ends.
    let got = collect(&second, &app, N, Duration::from_secs(120));
    let more = collect(&second, &app, 1, Duration::from_secs(3));
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for (v, _) in got.into_iter().chain(more) {
        *seen.entry(v).or_default() += 1;
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&n| n == 1));
}
