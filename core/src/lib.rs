//! kateway-core: the vocabulary every other crate shares.
//!
//! It owns the error taxonomy (one stable numeric code per failure, whose value ÷ 100 is the HTTP
//! status), the naming rules for apps, topics, versions and groups, Kafka's default partitioner
//! (so the embedded and Kafka backends place keys identically), and the configuration schema with
//! its defaults and validation. It does no I/O besides reading the configuration file.

pub mod config;
pub mod error;
pub mod names;
pub mod partitioner;
pub mod units;

pub use error::{Error, ErrorKind};
pub use names::{GroupName, TopicName};
