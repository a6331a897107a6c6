//! Topic administration: create, grow, delete, and partition counts. Creation, growth and
//! deletion are futures resolved by librdkafka's admin thread; reading metadata blocks the
//! caller for up to the request timeout, so it belongs on an administration path, not the data
//! path.

use crate::{BridgeConfig, BridgeError};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// A Kafka admin client.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    timeout: Duration,
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

    /// The topic's partition count; [`BridgeError::UnknownTopic`] if it does not exist. Blocks
    /// for up to the request timeout.
    pub fn partitions(&self, name: &str) -> Result<u32, BridgeError> {
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
}
