//! The bridge against a real Apache Kafka broker (started by `scripts/test` through
//! `scripts/kafka/kafka up`; its address comes in `TEST_KAFKA_BROKERS`). Messages are read back
//! with a plain librdkafka consumer, independent of the code under test.

use futures_executor::block_on;
use kateway_core::partitioner::partition_for_key;
use kateway_kafka_bridge::{Ack, Admin, BridgeConfig, BridgeError, Producer};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A producer whose delivery reports a thread of its own serves.
fn producer(cfg: &BridgeConfig, core: usize) -> Producer {
    let p = Producer::new(cfg, core).unwrap();
    kateway_kafka_bridge::serve_reports_on_thread(p.reports(), format!("reports-{core}")).unwrap();
    p
}

fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS")
        .expect("TEST_KAFKA_BROKERS must name a running Kafka broker: run the suite with scripts/test, which starts one")
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}.{name}.v1",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// (key, value, tags) of the message at each (partition, offset).
type Stored = HashMap<(i32, i64), (Vec<u8>, Vec<u8>, Vec<u8>)>;

/// Metadata is eventually consistent: waits (up to ~5 s) until the topic shows `want`
/// partitions, and returns what it last saw.
fn partitions_eventually(admin: &Admin, topic: &str, want: u32) -> Result<u32, BridgeError> {
    let mut last = admin.partitions(topic);
    for _ in 0..50 {
        if matches!(last, Ok(n) if n == want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = admin.partitions(topic);
    }
    last
}

fn read_all(topic: &str, partitions: u32, want: usize) -> Stored {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = HashMap::new();
    for _ in 0..200 {
        if out.len() >= want {
            break;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let tags = kateway_kafka_bridge::tags_of(&m);
            out.insert(
                (m.partition(), m.offset()),
                (
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    tags,
                ),
            );
        }
    }
    out
}

#[test]
fn keyed_messages_land_where_kafka_puts_them_with_key_and_tags() {
    let cfg = BridgeConfig::new(brokers());
    let admin = Admin::new(&cfg).unwrap();
    let topic = unique("keyed");
    block_on(admin.create_topic(&topic, 3, 1, None, None)).unwrap();
    let producer = producer(&cfg, 0);
    let mut sent = Vec::new();
    for i in 0..30 {
        let key = format!("k{}", i % 6);
        let tags: &[u8] = if i % 2 == 0 { b"a;b" } else { b"" };
        let value = format!("m{i}");
        let d = producer
            .send(
                &topic,
                None,
                key.as_bytes(),
                tags,
                value.as_bytes(),
                Ack::All,
            )
            .unwrap();
        sent.push((key, value, tags.to_vec(), d));
    }
    let mut placed = Vec::new();
    for (key, value, tags, d) in sent {
        let (p, o) = block_on(d).unwrap();
        assert_eq!(
            p as u32,
            partition_for_key(key.as_bytes(), 3),
            "Kafka's default partitioner (murmur2)"
        );
        placed.push(((p, o), (key.into_bytes(), value.into_bytes(), tags)));
    }
    let stored = read_all(&topic, 3, 30);
    assert_eq!(stored.len(), 30);
    for (at, msg) in placed {
        assert_eq!(stored.get(&at), Some(&msg), "message at {at:?}");
    }
    block_on(admin.delete_topic(&topic)).unwrap();
}

#[test]
fn leader_acks_and_fire_and_forget() {
    let cfg = BridgeConfig::new(brokers());
    let admin = Admin::new(&cfg).unwrap();
    let topic = unique("acks");
    block_on(admin.create_topic(&topic, 1, 1, Some(Duration::from_secs(3600)), Some(1 << 30)))
        .unwrap();
    let producer = producer(&cfg, 1);
    let d = producer
        .send(&topic, Some(0), b"", b"", b"local", Ack::Local)
        .unwrap();
    assert_eq!(block_on(d).unwrap(), (0, 0));
    let d = producer
        .send(&topic, Some(0), b"", b"", b"async", Ack::Async)
        .unwrap();
    assert_eq!(
        block_on(d).unwrap(),
        (-1, -1),
        "fire-and-forget does not wait"
    );
    producer.flush(Duration::from_secs(10)).unwrap();
    let stored = read_all(&topic, 1, 2);
    assert_eq!(
        stored.get(&(0, 1)).map(|m| m.1.as_slice()),
        Some(&b"async"[..])
    );
    block_on(admin.delete_topic(&topic)).unwrap();
}

#[test]
fn admin_creates_grows_and_deletes_topics() {
    let cfg = BridgeConfig::new(brokers());
    let admin = Admin::new(&cfg).unwrap();
    let topic = unique("admin");
    block_on(admin.create_topic(&topic, 2, 1, None, None)).unwrap();
    assert_eq!(partitions_eventually(&admin, &topic, 2).unwrap(), 2);
    assert!(matches!(
        block_on(admin.create_topic(&topic, 2, 1, None, None)),
        Err(BridgeError::TopicExists(_))
    ));
    block_on(admin.add_partitions(&topic, 4)).unwrap();
    assert_eq!(partitions_eventually(&admin, &topic, 4).unwrap(), 4);
    block_on(admin.delete_topic(&topic)).unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if matches!(admin.partitions(&topic), Err(BridgeError::UnknownTopic(_))) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "deleted topic disappears from metadata");
    assert!(matches!(
        block_on(admin.delete_topic(&topic)),
        Err(BridgeError::UnknownTopic(_))
    ));
}

#[test]
fn unreachable_kafka_is_reported_as_unavailable() {
    let mut cfg = BridgeConfig::new("127.0.0.1:1");
    cfg.message_timeout = Duration::from_millis(500);
    let producer = producer(&cfg, 0);
    let d = producer
        .send("any.topic.v1", Some(0), b"", b"", b"x", Ack::All)
        .unwrap();
    let err = block_on(d).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[test]
fn members_of_a_group_split_partitions_and_commits_are_visible_to_kafka() {
    use kateway_kafka_bridge::{GroupConsumer, Reset};
    let cfg = BridgeConfig::new(brokers());
    let admin = Admin::new(&cfg).unwrap();
    let topic = unique("group");
    block_on(admin.create_topic(&topic, 4, 1, None, None)).unwrap();
    assert_eq!(partitions_eventually(&admin, &topic, 4).unwrap(), 4);
    let group = format!("sub{}.g", std::process::id());
    let a = GroupConsumer::join(&cfg, &group, &topic, Reset::Oldest).unwrap();
    let b = GroupConsumer::join(&cfg, &group, &topic, Reset::Oldest).unwrap();
    // Drive the group until both members own partitions between them all.
    let mut joined = false;
    for _ in 0..300 {
        assert!(a.poll(10, Duration::from_millis(50)).unwrap().is_empty());
        assert!(b.poll(10, Duration::from_millis(50)).unwrap().is_empty());
        let (pa, pb) = (a.assignment().unwrap(), b.assignment().unwrap());
        if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4 {
            joined = true;
            break;
        }
    }
    assert!(joined, "both members got partitions");
    let producer = producer(&cfg, 0);
    let deliveries: Vec<_> = (0..40)
        .map(|i| {
            producer
                .send(
                    &topic,
                    None,
                    format!("k{i}").as_bytes(),
                    b"",
                    format!("m{i}").as_bytes(),
                    Ack::All,
                )
                .unwrap()
        })
        .collect();
    for d in deliveries {
        block_on(d).unwrap();
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        if got_a.len() + got_b.len() >= 40 {
            break;
        }
        got_a.extend(a.poll(100, Duration::from_millis(50)).unwrap());
        got_b.extend(b.poll(100, Duration::from_millis(50)).unwrap());
    }
    let (pa, pb) = (a.assignment().unwrap(), b.assignment().unwrap());
    assert!(got_a.iter().all(|r| pa.contains(&r.partition)));
    assert!(got_b.iter().all(|r| pb.contains(&r.partition)));
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members consumed"
    );
    let mut all: Vec<Vec<u8>> = got_a
        .iter()
        .chain(&got_b)
        .map(|r| r.value.to_vec())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "every message once");
    assert_eq!(got_a.len() + got_b.len(), 40, "no duplicates");
    // Commit what each member consumed; Kafka reports the same offsets to any client.
    let mut next: HashMap<u32, u64> = HashMap::new();
    for (member, recs) in [(&a, &got_a), (&b, &got_b)] {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for r in recs {
            let e = last.entry(r.partition).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        for (p, o) in last {
            member.commit(p, o + 1).unwrap();
            next.insert(p, o + 1);
        }
    }
    let viewer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = viewer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        let want = next
            .get(&(e.partition() as u32))
            .map_or(Offset::Invalid, |&o| Offset::Offset(o as i64));
        assert_eq!(e.offset(), want, "partition {}", e.partition());
    }
    drop((a, b));
    block_on(admin.delete_topic(&topic)).unwrap();
}
