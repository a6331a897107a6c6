//! What only the Kafka backend does, against the real broker `scripts/test` starts (the API's
//! behaviour on both backends is in the shared tests): publishes land in Kafka with the right
//! keys, tags and partitions (read back with a plain librdkafka consumer), subscribers read
//! through real consumer groups whose commits Kafka's own offset API shows, other gateways learn
//! topics from Kafka, and two gateway processes split a group's partitions without duplicates.

mod support;

use kateway_core::partitioner::partition_for_key;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use support::kafka::{committed, gateway, read_topic, shared_brokers, stable_members};
use support::records;

fn unique(name: &str) -> String {
    format!("{name}{}x{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn publish_lands_in_kafka_and_groups_commit_there() {
    let brokers = shared_brokers();
    let g = gateway(&brokers, &[]);
    let topic = unique("orders");
    let name = format!("app.{topic}.v1");
    g.create_topic("app", &topic, 4);
    let st = g.req("GET", "/v1/status", &[], b"").json();
    assert_eq!(st["backend"], "kafka");

    // 40 keyed messages (some tagged) and 10 keyless ones, one by one and in one batch.
    let mut sent: HashMap<(i32, i64), (String, String)> = HashMap::new();
    for i in 0..40u32 {
        let key = format!("user-{}", i % 7);
        let value = format!("order {i}");
        let mut h = vec![("Appid", "app")];
        if i.is_multiple_of(3) {
            h.push(("X-Tag", "vip"));
        }
        let r = g.req(
            "POST",
            &format!("/v1/msgs/{topic}/v1?key={key}"),
            &h,
            value.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.header("x-kateway-buffered").is_none());
        let p: i32 = r.header("x-partition").unwrap().parse().unwrap();
        let o: i64 = r.header("x-offset").unwrap().parse().unwrap();
        assert_eq!(p as u32, partition_for_key(key.as_bytes(), 4), "{key}");
        assert!(o >= 0);
        sent.insert((p, o), (key, value));
    }
    let batch: String = (0..10).map(|i| format!("keyless {i}\n")).collect();
    let r = g.req(
        "POST",
        &format!("/v1/msgs/{topic}/v1"),
        &[("Appid", "app"), ("Content-Type", "application/x-ndjson")],
        batch.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let res = r.json();
    assert_eq!(res["count"], 10);
    for (i, x) in res["results"].as_array().unwrap().iter().enumerate() {
        let key = (
            x["partition"].as_i64().unwrap() as i32,
            x["offset"].as_i64().unwrap(),
        );
        sent.insert(key, (String::new(), format!("keyless {i}")));
    }

    // Nothing was buffered, so no handoff log was created.
    let handoff = g.data_dir().join("handoff");
    let logs = support::walk(&handoff);
    assert!(logs.is_empty(), "handoff files without an outage: {logs:?}");

    // What Kafka holds, read without the gateway.
    let stored = read_topic(&brokers, &name, 4);
    assert_eq!(stored.len(), 50);
    for s in &stored {
        let (key, value) = &sent[&(s.partition, s.offset)];
        assert_eq!(&String::from_utf8_lossy(&s.key), key);
        assert_eq!(&String::from_utf8_lossy(&s.value), value);
        let n: usize = value.rsplit(' ').next().unwrap().parse().unwrap();
        let tagged = key.starts_with("user") && n.is_multiple_of(3);
        assert_eq!(s.tags, if tagged { b"vip".to_vec() } else { Vec::new() });
    }

    // Auto-ack group: everything once, then 204; Kafka shows the group's commits at the ends.
    let got = g.drain("app", "app", &topic, "group=all&batch=100&wait=3s");
    let mut values: Vec<Vec<u8>> = got.iter().map(|r| r.2.clone()).collect();
    values.sort();
    let mut want: Vec<Vec<u8>> = sent.values().map(|v| v.1.clone().into_bytes()).collect();
    want.sort();
    assert_eq!(values, want);
    let ends: Vec<i64> = (0..4)
        .map(|p| stored.iter().filter(|s| s.partition == p).count() as i64)
        .collect();
    let c = committed(&brokers, "app.all", &name, 4);
    for p in 0..4 {
        let want = (ends[p] > 0).then_some(ends[p]);
        assert_eq!(c[p], want, "partition {p}: {c:?}");
    }
    let status = g
        .req(
            "GET",
            &format!("/v1/status/app/{topic}/v1?group=all"),
            &[("Appid", "app")],
            b"",
        )
        .json();
    assert_eq!(status["groups"][0]["lag"], 0, "{status}");

    // Every request above came on a connection of its own; the group still has one member.
    assert_eq!(stable_members(&brokers, "app.all"), 1);

    // Tag filter: only tagged messages (0, 3, .., 39), each once.
    let mut vip = Vec::new();
    loop {
        let s = g.sub(
            "app",
            "app",
            &topic,
            "group=vip&batch=100&wait=2s",
            &[("X-Tag", "vip")],
        );
        if s.status == 204 {
            break;
        }
        assert_eq!(s.status, 200, "{}", s.text());
        vip.extend(records(&s.body).into_iter().map(|r| r.2));
    }
    vip.sort();
    let mut want_vip: Vec<Vec<u8>> = (0..40u32)
        .filter(|i| i.is_multiple_of(3))
        .map(|i| format!("order {i}").into_bytes())
        .collect();
    want_vip.sort();
    assert_eq!(vip, want_vip);

    // Explicit acks: nothing is committed until the batch ack, then exactly what was acked.
    let s = g.sub(
        "app",
        "app",
        &topic,
        "group=manual&ack=1&batch=100&wait=3s",
        &[],
    );
    assert_eq!(s.status, 200);
    let recs = records(&s.body);
    assert!(!recs.is_empty());
    assert_eq!(committed(&brokers, "app.manual", &name, 4), vec![None; 4]);
    let (p0, o0, _) = recs[0].clone();
    let ack = format!("[{{\"partition\":{p0},\"offset\":{o0}}}]");
    let r = g.req(
        "PUT",
        &format!("/v1/offsets/app/{topic}/v1/manual"),
        &[("Appid", "app")],
        ack.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let c = committed(&brokers, "app.manual", &name, 4);
    assert_eq!(c[p0 as usize], Some(o0 as i64 + 1), "{c:?}");
    // An acknowledgement beyond the partition's end is refused, as on the embedded store.
    let beyond = format!(
        "[{{\"partition\":{p0},\"offset\":{}}}]",
        ends[p0 as usize] + 5
    );
    let r = g.req(
        "PUT",
        &format!("/v1/offsets/app/{topic}/v1/manual"),
        &[("Appid", "app")],
        beyond.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], 40005);
    assert_eq!(committed(&brokers, "app.manual", &name, 4), c);

    // Partition offsets come from Kafka.
    let parts = g
        .req("GET", &format!("/v1/partitions/app/{topic}/v1"), &[], b"")
        .json();
    let newest: Vec<i64> = parts["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["newest"].as_i64().unwrap())
        .collect();
    assert_eq!(newest, ends);
}

#[test]
fn topics_are_administered_in_kafka_and_learnt_by_other_gateways() {
    let brokers = shared_brokers();
    let refresh = [("KATEWAY_KAFKA_METADATA_REFRESH", "1s")];
    let a = gateway(&brokers, &refresh);
    let b = gateway(&brokers, &refresh);
    let topic = unique("admin");
    a.create_topic("app", &topic, 2);
    // Another gateway publishes to it without having created it.
    let r = b.publish("app", &topic, "key=k", b"hello");
    assert!(r.header("x-kateway-buffered").is_none());
    let dup = a.req("POST", &format!("/v1/topics/app/{topic}/v1"), &[], b"");
    assert_eq!(dup.status, 409, "{}", dup.text());
    let grown = b.req(
        "PUT",
        &format!("/v1/topics/app/{topic}/v1?partitions=3"),
        &[],
        b"",
    );
    assert_eq!(grown.status, 200, "{}", grown.text());
    assert_eq!(grown.json()["partitions"], 3);
    let parts = b
        .req("GET", &format!("/v1/partitions/app/{topic}/v1"), &[], b"")
        .json();
    assert_eq!(parts["offsets"].as_array().unwrap().len(), 3);
    // Gateway a learns the new partition count from Kafka: a key of partition 2 lands there.
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| partition_for_key(k.as_bytes(), 3) == 2)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = a.publish("app", &topic, &format!("key={key}"), b"grown");
        if r.header("x-partition") == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway a never saw the third partition"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let del = a.req("DELETE", &format!("/v1/topics/app/{topic}/v1"), &[], b"");
    assert_eq!(del.status, 200, "{}", del.text());
    let gone = a.req(
        "POST",
        &format!("/v1/msgs/{topic}/v1"),
        &[("Appid", "app")],
        b"x",
    );
    assert_eq!(gone.status, 404, "{}", gone.text());
    // Gateway b forgets the topic once its metadata refresh finds it gone from Kafka.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.req(
            "POST",
            &format!("/v1/msgs/{topic}/v1"),
            &[("Appid", "app")],
            b"x",
        );
        if r.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway b still publishes to a deleted topic"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing = a.req(
        "POST",
        &format!("/v1/msgs/{}/v1", unique("never")),
        &[("Appid", "app")],
        b"x",
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
}

#[test]
fn two_gateways_split_a_groups_partitions() {
    let brokers = shared_brokers();
    let a = gateway(&brokers, &[]);
    let b = gateway(&brokers, &[]);
    let topic = unique("split");
    let name = format!("app.{topic}.v1");
    a.create_topic("app", &topic, 4);

    // Both gateways join the group through long polls, until Kafka shows two stable members.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for g in [&a, &b] {
            let s = g.sub("app", "app", &topic, "group=workers&wait=200ms", &[]);
            assert_eq!(s.status, 204, "{}", s.text());
        }
        if stable_members(&brokers, "app.workers") == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never had two stable members"
        );
    }

    let n = 400;
    for i in 0..n {
        a.publish(
            "app",
            &topic,
            &format!("key=k{}", i % 50),
            format!("m{i}").as_bytes(),
        );
    }
    let mut seen: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    let mut by_gateway: [BTreeSet<u32>; 2] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n && Instant::now() < deadline {
        for (i, g) in [&a, &b].into_iter().enumerate() {
            let s = g.sub(
                "app",
                "app",
                &topic,
                "group=workers&batch=50&wait=200ms",
                &[],
            );
            if s.status == 200 {
                for r in records(&s.body) {
                    by_gateway[i].insert(r.0);
                    seen.push(r);
                }
            }
        }
    }
    let unique_offsets: HashSet<(u32, u64)> = seen.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        unique_offsets.len(),
        seen.len(),
        "a message was delivered twice"
    );
    assert_eq!(seen.len(), n, "not every message was delivered");
    assert!(
        !by_gateway[0].is_empty() && !by_gateway[1].is_empty(),
        "both gateways should serve partitions: {by_gateway:?}"
    );
    assert!(
        by_gateway[0].is_disjoint(&by_gateway[1]),
        "the gateways shared a partition: {by_gateway:?}"
    );
    let c = committed(&brokers, "app.workers", &name, 4);
    let total: i64 = c.iter().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(total, n as i64, "{c:?}");

    // A gateway that shuts down leaves the group at once: the other one takes its partitions
    // well before the 10 s session timeout would have expired.
    let mut a = a;
    assert_eq!(a.terminate(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(6);
    while stable_members(&brokers, "app.workers") != 1 {
        assert!(
            Instant::now() < deadline,
            "the stopped gateway did not leave the group"
        );
        let _ = b.sub("app", "app", &topic, "group=workers&wait=100ms", &[]);
    }
}

#[test]
fn shutdown_delivers_async_publishes_and_answers_parked_polls() {
    let brokers = shared_brokers();
    // A long linger keeps the messages inside the producer when SIGTERM arrives.
    let mut g = gateway(&brokers, &[("KATEWAY_KAFKA_LINGER", "700ms")]);
    let topic = unique("async");
    g.create_topic("app", &topic, 2);
    // A long poll parked on a group of an empty topic is answered 204 at shutdown.
    let other = unique("empty");
    g.create_topic("app", &other, 1);
    let addr = g.addr.clone();
    let parked = std::thread::spawn(move || {
        let mut c = support::Gateway::connect_to(&addr);
        let t0 = Instant::now();
        let r = c.req(
            "GET",
            &format!("/v1/msgs/app/{other}/v1?group=idle&wait=60s"),
            &[("Appid", "app")],
            b"",
        );
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..100 {
        let r = g.publish("app", &topic, "async=1", format!("a{i}").as_bytes());
        assert_eq!(r.status, 202);
    }
    assert_eq!(g.terminate(), Some(0));
    let (r, took) = parked.join().unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(took < Duration::from_secs(30), "{took:?}");
    let stored = read_topic(&brokers, &format!("app.{topic}.v1"), 2);
    assert_eq!(stored.len(), 100, "async publishes were lost at shutdown");
}

#[test]
fn group_memberships_are_bounded() {
    let brokers = shared_brokers();
    let g = gateway(&brokers, &[("KATEWAY_KAFKA_MAX_GROUPS", "2")]);
    let topic = unique("bounded");
    g.create_topic("app", &topic, 1);
    for grp in ["a", "b"] {
        let s = g.sub(
            "app",
            "app",
            &topic,
            &format!("group={grp}&wait=100ms"),
            &[],
        );
        assert_eq!(s.status, 204, "{}", s.text());
    }
    let s = g.sub("app", "app", &topic, "group=c&wait=100ms", &[]);
    assert_eq!(s.status, 429, "{}", s.text());
    assert!(s.header("retry-after").is_some());
    // Groups already served keep working.
    let s = g.sub("app", "app", &topic, "group=a&wait=100ms", &[]);
    assert_eq!(s.status, 204, "{}", s.text());
}

#[test]
fn one_data_directory_serves_both_backends_without_mixing_their_topics() {
    let brokers = shared_brokers();
    let mut g = support::Gateway::start();
    let topic = unique("local");
    g.create_topic("app", &topic, 1);
    g.publish("app", &topic, "", b"kept locally");
    g.kill9();
    // The same data directory on the Kafka backend, with a metadata refresh that would forget
    // topics Kafka does not have.
    g.set_env(&[
        ("KATEWAY_STORE_BACKEND", "kafka"),
        ("KATEWAY_KAFKA_BROKERS", &brokers),
        ("KATEWAY_KAFKA_METADATA_REFRESH", "1s"),
    ]);
    g.spawn();
    let r = g.req(
        "POST",
        &format!("/v1/msgs/{topic}/v1"),
        &[("Appid", "app")],
        b"x",
    );
    assert_eq!(
        r.status,
        404,
        "the embedded topic is not a Kafka topic: {}",
        r.text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    g.kill9();
    g.set_env(&[]);
    g.spawn();
    let s = g.sub("app", "app", &topic, "group=g&wait=1s", &[]);
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.body, b"kept locally");
}

/// `/ready` answers 503, naming Kafka, until a broker has answered once, while `/alive` says
/// the process answers; it turns 200 when the bootstrap address starts to lead to a broker
/// (here a TCP relay to the shared broker, opened after the gateway started).
#[test]
fn ready_waits_until_a_broker_is_reached() {
    let brokers = shared_brokers();
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = relay.local_addr().unwrap().port();
    drop(relay);
    let g = gateway(&format!("127.0.0.1:{port}"), &[]);
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    // Two seconds of asking: no broker, never ready.
    for _ in 0..10 {
        let r = g.req("GET", "/ready", &[], b"");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("Kafka"), "{}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let relay = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for c in relay.incoming() {
            let Ok(c) = c else { continue };
            let Ok(up) = std::net::TcpStream::connect(&brokers) else {
                continue;
            };
            let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut c, mut up) = (c, up);
            std::thread::spawn(move || std::io::copy(&mut c, &mut up));
            std::thread::spawn(move || std::io::copy(&mut up2, &mut c2));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = g.req("GET", "/ready", &[], b"");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 40 s after the broker became reachable: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
