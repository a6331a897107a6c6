//! Kafka for the gateway's tests: the shared broker that `scripts/test` starts
//! (`TEST_KAFKA_BROKERS`), private brokers a test can SIGKILL and restart (through
//! `scripts/kafka/kafka` with their own ports and state directory), gateways on the Kafka
//! backend, and a plain librdkafka reader that checks what really is in a topic.

use super::Gateway;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::process::Command;
use std::time::{Duration, Instant};

/// The shared broker's address.
pub fn shared_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").expect(
        "TEST_KAFKA_BROKERS must name a running Kafka broker: run the suite with scripts/test, which starts one",
    )
}

/// A started gateway on the Kafka backend, with extra `KATEWAY_*` settings.
pub fn gateway(brokers: &str, env: &[(&str, &str)]) -> Gateway {
    let mut g = new_gateway(brokers, env);
    g.spawn();
    g
}

/// A gateway on the Kafka backend at `brokers`, not started yet.
pub fn new_gateway(brokers: &str, env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![
        ("KATEWAY_STORE_BACKEND", "kafka"),
        ("KATEWAY_KAFKA_BROKERS", brokers),
    ];
    all.extend_from_slice(env);
    let mut g = Gateway::new_with(&all);
    g.use_kafka();
    // Each gateway its own delay log on the shared broker (a test that shares one names it).
    let log = format!("delays{}", g.suffix);
    if !env.iter().any(|(k, _)| *k == "KATEWAY_DELAY_LOG") {
        all.push(("KATEWAY_DELAY_LOG", &log));
        g.set_env(&all);
    }
    g
}

/// A broker of one test's own, stopped and removed on drop.
pub struct Broker {
    home: tempfile::TempDir,
    port: u16,
    cport: u16,
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka/kafka").to_owned()
}

impl Broker {
    /// Starts a fresh broker on free ports and waits until it accepts requests.
    pub fn up() -> Self {
        let b = Broker {
            home: tempfile::tempdir().unwrap(),
            port: super::free_port(),
            cport: super::free_port(),
        };
        b.run("up");
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, cmd: &str) {
        let st = Command::new(script())
            .arg(cmd)
            .env("KAFKA_HOME", self.home.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.cport.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "scripts/kafka/kafka {cmd} failed");
    }

    /// SIGKILL, keeping the broker's data.
    pub fn kill(&self) {
        self.run("kill");
    }

    /// Starts again on the same data and waits until it accepts requests.
    pub fn start(&self) {
        self.run("start");
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.run("freeze");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.run("thaw");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .env("KAFKA_HOME", self.home.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.cport.to_string())
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// A record as Kafka stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub tags: Vec<u8>,
}

/// Every record of every partition of `topic`, read with a plain consumer up to the high
/// watermarks, in (partition, offset) order.
pub fn read_topic(brokers: &str, topic: &str, partitions: u32) -> Vec<Stored> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions as i32 {
        let (_, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.push(hi);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let want: i64 = ends.iter().sum();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let tags = kateway_kafka_bridge::tags_of(&m);
            out.push(Stored {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                tags,
            });
        }
    }
    assert_eq!(out.len() as i64, want, "could not read all of {topic}");
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// The offsets `group` committed on `topic`, asked of the group coordinator (Kafka's
/// OffsetFetch, what `kafka-consumer-groups --describe` shows).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: u32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions as i32)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// Members of a consumer group once it is stable (empty while it rebalances).
pub fn stable_members(brokers: &str, group: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let Ok(list) = c.fetch_group_list(Some(group), Duration::from_secs(5)) else {
        return 0;
    };
    list.groups()
        .iter()
        .find(|g| g.name() == group && g.state() == "Stable")
        .map_or(0, |g| g.members().len())
}
