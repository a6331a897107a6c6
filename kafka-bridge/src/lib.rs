//! kateway-kafka-bridge: the Kafka side of the gateway, on librdkafka (`rdkafka`). It knows
//! nothing about HTTP.
//!
//! * [`Producer`]: one per core. Two librdkafka producers behind it: `acks=all` with idempotence
//!   for durable publishes, `acks=1` for leader-acknowledged and fire-and-forget ones. Keys are
//!   placed with `murmur2_random`, Kafka's default partitioner, so a key lands on the same
//!   partition as with the embedded store or a Java client. Sending never blocks: it enqueues and
//!   returns a [`Delivery`] whose future resolves, in any executor, when its delivery report is
//!   served: by the owner's event loop when librdkafka signals the producer's eventfd, or by
//!   [`serve_reports_on_thread`].
//! * [`GroupConsumer`]: one consumer-group membership per process, group and topic, with
//!   explicit commits that Kafka's own tools see.
//! * [`Admin`]: create, grow and delete topics, and read partition counts.
//! * [`metatopic`]: the compacted metadata topic (apps, key hashes, grants, quotas) every
//!   gateway of a cluster follows from its start.
//!
//! Failures are [`BridgeError`]s that say whether the broker was unreachable or timed out (the
//! cases the gateway answers by buffering locally) or the request itself was refused.

mod admin;
mod consumer;
pub mod metatopic;
mod native;
mod producer;

pub use admin::Admin;
pub use consumer::GroupConsumer;
pub use kateway_core::{Ack, Reset};
pub use producer::{serve_reports_on_thread, tags_of, Delivery, Producer, Reports, TAGS_HEADER};

use std::time::Duration;

/// How long a client may go without metadata from any broker before it bootstraps again
/// (`metadata.recovery.rebootstrap.trigger.ms`).
pub(crate) const REBOOTSTRAP_MS: &str = "5000";

/// Environment variable naming librdkafka debug contexts (`eos,msg,broker`, ...) for the
/// producers, logged at debug level: for diagnosing a cluster, never needed otherwise.
pub const DEBUG_ENV: &str = "KATEWAY_RDKAFKA_DEBUG";

/// How to reach Kafka and how to batch.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// How long a producer waits to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// How long a message may wait for delivery before it fails (`message.timeout.ms`; zero:
    /// never).
    pub message_timeout: Duration,
    /// Admin and metadata request timeout.
    pub request_timeout: Duration,
    /// `client.id` prefix.
    pub client_id: String,
    /// Consumer-group session timeout (`session.timeout.ms`).
    pub session_timeout: Duration,
}

impl BridgeConfig {
    /// Defaults for `brokers`: 1 ms linger, 10 s message timeout, 10 s admin timeout.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            linger: Duration::from_millis(1),
            message_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            client_id: "kateway".into(),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// A Kafka failure, classified for the gateway.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Kafka could not be reached or did not answer in time; retrying later can succeed.
    #[error("kafka unavailable: {0}")]
    Unavailable(String),
    /// Kafka refused the request (unknown topic, invalid partition count, ...).
    #[error("kafka refused: {0}")]
    Refused(String),
    /// The topic already exists.
    #[error("topic exists: {0}")]
    TopicExists(String),
    /// The topic does not exist.
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
    /// The client could not be configured.
    #[error("kafka client configuration: {0}")]
    Config(String),
}

impl BridgeError {
    /// Whether the failure means "Kafka is unreachable right now" (buffer and retry) rather
    /// than "this request is wrong".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BridgeError::Unavailable(_))
    }

    pub(crate) fn from_kafka(e: rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
        let code = e.rdkafka_error_code();
        match code {
            Some(C::TopicAlreadyExists) => BridgeError::TopicExists(e.to_string()),
            Some(C::UnknownTopicOrPartition) | Some(C::UnknownTopic) => {
                BridgeError::UnknownTopic(e.to_string())
            }
            Some(
                C::MessageTimedOut
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::NetworkException
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::QueueFull
                | C::TimedOutQueue
                | C::Resolve
                | C::Fail
                | C::BrokerNotAvailable
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::WaitingForCoordinator
                | C::RebalanceInProgress
                // A producer in a fatal state is replaced; its messages are retried.
                | C::Fatal
                | C::PurgeQueue
                | C::PurgeInflight
                | C::OutOfOrderSequenceNumber
                | C::InvalidProducerEpoch
                | C::UnknownProducerId,
            ) => BridgeError::Unavailable(e.to_string()),
            _ => match e {
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
                    BridgeError::Config(e.to_string())
                }
                _ => BridgeError::Refused(e.to_string()),
            },
        }
    }
}
