//! kateway-core: the vocabulary every other crate shares.
//!
//! It owns the error taxonomy (one stable numeric code per failure, whose value ÷ 100 is the HTTP
//! status), the naming rules for apps, topics, versions and groups, the message vocabulary the
//! backends and the Kafka bridge share ([`message`]), Kafka's default partitioner (so the
//! embedded and Kafka backends place keys identically), and the configuration schema with its
//! defaults and validation (and [`live`]: what a reload may change), API keys ([`keys`]: format, keyed hashes, constant-time checks),
//! tenancy ([`tenancy`]: apps, keys, grants and quotas as metadata records, the rules of every
//! change, and the snapshot requests are authorized with), per-app rate quotas enforced per core
//! with tokens leased from a per-process pool, concurrency slots and the failed-authentication
//! limiter ([`quota`]), the durable append-only record file of the embedded backend's
//! metadata ([`metalog`]), and the state machine of leased, per-message delivery on a
//! partition ([`queue`]: windows, receipts, checkpoints). It does no I/O besides reading the
//! configuration file and the metadata log.

pub mod config;
pub mod delay;
pub mod error;
pub mod idem;
pub mod keys;
pub mod live;
pub mod message;
pub mod metalog;
pub mod names;
pub mod partitioner;
pub mod queue;
pub mod quota;
pub mod tenancy;
pub mod text;
pub mod units;
pub mod webhook;

pub use error::{Error, ErrorKind};
pub use message::{Ack, Delivered, Groups, Item, Leased, PartitionInfo, Published, Reset};
pub use names::{GroupName, TopicName};
