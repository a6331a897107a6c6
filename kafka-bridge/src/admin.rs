//! Topic administration: create, grow, delete, and partition counts. Creation, growth and
//! deletion are futures resolved by librdkafka's admin thread; reading metadata blocks the
//! caller for up to the request timeout, so it belongs on an administration path, not the data
//! path.

use crate::{BridgeConfig, BridgeError};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// A record's key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A Kafka admin client.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    timeout: Duration,
    brokers: String,
}

fn topic_result(r: Result<String, (String, RDKafkaErrorCode)>) -> Result<(), BridgeError> {
    match r {
        Ok(_) => Ok(()),
        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Err(BridgeError::TopicExists(name)),
        Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
            Err(BridgeError::UnknownTopic(name))
        }
        Err((name, RDKafkaErrorCode::RequestTimedOut | RDKafkaErrorCode::OperationTimedOut)) => {
            Err(BridgeError::Unavailable(format!("{name}: timed out")))
        }
        Err((name, code)) => Err(BridgeError::Refused(format!("{name}: {code}"))),
    }
}

impl Admin {
    /// Creates the client (no connection is made until the first call).
    pub fn new(cfg: &BridgeConfig) -> Result<Self, BridgeError> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("{}-admin", cfg.client_id))
            .create()
            .map_err(BridgeError::from_kafka)?;
        Ok(Self {
            client,
            timeout: cfg.request_timeout,
            brokers: cfg.brokers.clone(),
        })
    }

    fn opts(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Creates a topic with `partitions` partitions, replication `replicas`, and optional
    /// retention by time and size.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replicas: i32,
        retention: Option<Duration>,
        retention_bytes: Option<u64>,
    ) -> Result<(), BridgeError> {
        let ms = retention.map(|d| d.as_millis().to_string());
        let bytes = retention_bytes.map(|b| b.to_string());
        let mut t = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(replicas));
        if let Some(ms) = &ms {
            t = t.set("retention.ms", ms);
        }
        if let Some(b) = &bytes {
            t = t.set("retention.bytes", b);
        }
        let res = self
            .client
            .create_topics([&t], &self.opts())
            .await
            .map_err(BridgeError::from_kafka)?;
        res.into_iter().try_for_each(topic_result)
    }

    /// Creates the topic `t` describes.
    pub(crate) async fn create(&self, t: &NewTopic<'_>) -> Result<(), BridgeError> {
        let res = self
            .client
            .create_topics([t], &self.opts())
            .await
            .map_err(BridgeError::from_kafka)?;
        res.into_iter().try_for_each(topic_result)
    }

    /// Grows a topic to `partitions` partitions.
    pub async fn add_partitions(&self, name: &str, partitions: u32) -> Result<(), BridgeError> {
        let p = NewPartitions::new(name, partitions as usize);
        let res = self
            .client
            .create_partitions([&p], &self.opts())
            .await
            .map_err(BridgeError::from_kafka)?;
        res.into_iter().try_for_each(topic_result)
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BridgeError> {
        let res = self
            .client
            .delete_topics(&[name], &self.opts())
            .await
            .map_err(BridgeError::from_kafka)?;
        res.into_iter().try_for_each(topic_result)
    }

    /// The number of brokers the cluster's metadata names: a round trip to a broker. Blocks for
    /// up to the request timeout.
    pub fn brokers(&self) -> Result<usize, BridgeError> {
        let md = self
            .client
            .inner()
            .fetch_metadata(None, self.timeout)
            .map_err(BridgeError::from_kafka)?;
        Ok(md.brokers().len())
    }

    /// The topic's partition count; [`BridgeError::UnknownTopic`] if it does not exist. Blocks
    /// for up to the request timeout.
    pub fn partitions(&self, name: &str) -> Result<u32, BridgeError> {
        if !legal_topic(name) {
            // librdkafka refuses to make a handle for such a name, and rust-rdkafka unwraps it.
            return Err(BridgeError::UnknownTopic(name.to_owned()));
        }
        let md = self
            .client
            .inner()
            .fetch_metadata(Some(name), self.timeout)
            .map_err(BridgeError::from_kafka)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| BridgeError::UnknownTopic(name.to_owned()))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(BridgeError::UnknownTopic(name.to_owned()));
        }
        Ok(t.partitions().len() as u32)
    }

    /// Waits until partitions `from..to` of `name` answer for their offsets: Kafka applies a
    /// creation or growth asynchronously, and until a partition's leader has taken it over,
    /// reads of it fail (`NotLeaderForPartition`). Blocks for up to the request timeout;
    /// `false` if some partition did not answer by then.
    pub fn await_partitions(&self, name: &str, from: u32, to: u32) -> bool {
        if !legal_topic(name) {
            return false;
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let mut next = from;
        loop {
            let c = self.client.inner();
            // Refreshes the client's view of the topic, which the offset reads go by.
            let _ = c.fetch_metadata(Some(name), self.timeout);
            while next < to
                && c.fetch_watermarks(name, next as i32, self.timeout.min(Duration::from_secs(1)))
                    .is_ok()
            {
                next += 1;
            }
            if next == to {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets a topic's retention by time and size (`None` = the broker's default). Both are
    /// always sent: Kafka's AlterConfigs replaces the topic's whole override set.
    pub async fn set_retention(
        &self,
        name: &str,
        retention: Option<Duration>,
        retention_bytes: Option<u64>,
    ) -> Result<(), BridgeError> {
        let ms = retention.map(|d| d.as_millis().to_string());
        let bytes = retention_bytes.map(|b| b.to_string());
        let mut c = AlterConfig::new(ResourceSpecifier::Topic(name));
        if let Some(ms) = &ms {
            c = c.set("retention.ms", ms);
        }
        if let Some(b) = &bytes {
            c = c.set("retention.bytes", b);
        }
        let res = self
            .client
            .alter_configs([&c], &self.opts())
            .await
            .map_err(BridgeError::from_kafka)?;
        for r in res {
            if let Err((_, code)) = r {
                return Err(BridgeError::Refused(format!("{name}: {code}")));
            }
        }
        Ok(())
    }

    /// The oldest and next offsets of every partition of a topic, in partition order. Blocks.
    pub fn watermarks(&self, name: &str) -> Result<Vec<(i64, i64)>, BridgeError> {
        let n = self.partitions(name)?;
        (0..n as i32)
            .map(|p| {
                self.client
                    .inner()
                    .fetch_watermarks(name, p, self.timeout)
                    .map_err(BridgeError::from_kafka)
            })
            .collect()
    }

    /// The offsets `group` committed on each partition of each `(topic, partitions)` given
    /// (`None` where it has none), in one request to the group coordinator. Blocks.
    pub fn committed_many(
        &self,
        group: &str,
        topics: &[(String, u32)],
    ) -> Result<Vec<Vec<Option<i64>>>, BridgeError> {
        let c: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(BridgeError::from_kafka)?;
        let mut tpl = TopicPartitionList::new();
        for (name, n) in topics {
            for p in 0..*n as i32 {
                tpl.add_partition(name, p);
            }
        }
        let got = c
            .committed_offsets(tpl, self.timeout)
            .map_err(BridgeError::from_kafka)?;
        let mut out: Vec<Vec<Option<i64>>> = topics
            .iter()
            .map(|(_, n)| vec![None; *n as usize])
            .collect();
        for e in got.elements() {
            let Some(t) = topics.iter().position(|(name, _)| name == e.topic()) else {
                continue;
            };
            if let (Offset::Offset(o), Some(slot)) =
                (e.offset(), out[t].get_mut(e.partition() as usize))
            {
                *slot = Some(o);
            }
        }
        Ok(out)
    }

    /// The offsets `group` committed on each of the topic's first `partitions` partitions
    /// (`None` where it has none), read from the group coordinator. Blocks.
    pub fn committed(
        &self,
        group: &str,
        name: &str,
        partitions: u32,
    ) -> Result<Vec<Option<i64>>, BridgeError> {
        let mut all = self.committed_many(group, &[(name.to_owned(), partitions)])?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The key and value of the record at exactly `offset` of partition `partition`, or `None`
    /// when the partition no longer holds one there (compacted away, deleted, or never
    /// written). Blocks.
    pub fn read_at(
        &self,
        name: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Option<KeyValue>, BridgeError> {
        use rdkafka::message::Message;
        let c: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            // Required by librdkafka, never joined: the partition is assigned by hand.
            .set("group.id", "kateway-read-at")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(BridgeError::from_kafka)?;
        let (low, high) = c
            .fetch_watermarks(name, partition as i32, self.timeout)
            .map_err(BridgeError::from_kafka)?;
        let at = offset as i64;
        if at < low || at >= high {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(name, partition as i32, Offset::Offset(at))
            .map_err(BridgeError::from_kafka)?;
        c.assign(&tpl).map_err(BridgeError::from_kafka)?;
        let deadline = std::time::Instant::now() + self.timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match c.poll(left.min(Duration::from_millis(200))) {
                None => {}
                Some(Ok(m)) => {
                    if m.offset() != at {
                        return Ok(None);
                    }
                    let key = m.key().map(<[u8]>::to_vec).unwrap_or_default();
                    return Ok(m.payload().map(|v| (key, v.to_vec())));
                }
                Some(Err(e)) => return Err(BridgeError::from_kafka(e)),
            }
        }
        Err(BridgeError::Unavailable(format!(
            "{name}/{partition}: no record read at offset {offset} within {:?}",
            self.timeout
        )))
    }

    /// Names of the consumer groups the cluster knows that start with `prefix`. Blocks.
    pub fn groups(&self, prefix: &str) -> Result<Vec<String>, BridgeError> {
        let list = self
            .client
            .inner()
            .fetch_group_list(None, self.timeout)
            .map_err(BridgeError::from_kafka)?;
        let mut names: Vec<String> = list
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Whether `name` is a topic name Kafka accepts: 1 to 249 characters of `[a-zA-Z0-9._-]`.
/// librdkafka cannot make a topic handle for others, and asking about one would panic inside
/// rust-rdkafka, so they are answered as unknown without asking.
pub fn legal_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::legal_topic;

    #[test]
    fn only_names_kafka_accepts_are_asked_about() {
        assert!(legal_topic("app1.orders.v1"));
        assert!(legal_topic(&"a".repeat(249)));
        for bad in ["", "a b", "a/b", "tópico", "a\0b"] {
            assert!(!legal_topic(bad), "{bad:?}");
        }
        assert!(!legal_topic(&"a".repeat(250)));
    }
}
