//! kateway-core: the vocabulary every other crate shares.
//!
//! It owns the error taxonomy (one stable numeric code per failure, whose value ÷ 100 is the HTTP
//! status), the naming rules for apps, topics, versions and groups, the message vocabulary the
//! backends and the Kafka bridge share ([`message`]), Kafka's default partitioner (so the
//! embedded and Kafka backends place keys identically), and the configuration schema with its
//! defaults and validation, and API keys ([`keys`]: format, keyed hashes, constant-time checks).
//! It does no I/O besides reading the configuration file.

pub mod config;
pub mod error;
pub mod keys;
pub mod message;
pub mod names;
pub mod partitioner;
pub mod units;

pub use error::{Error, ErrorKind};
pub use message::{Ack, Delivered, Groups, Item, PartitionInfo, Published, Reset};
pub use names::{GroupName, TopicName};
