//! kateway-shards: the thread-per-core gateway.
//!
//! [`runtime`] starts one pinned monoio reactor per core. Each core ([`core`]) owns a listener,
//! its connections ([`conn`]), the partitions assigned to it and their group offsets
//! ([`shard`]), a group-commit flusher ([`flusher`]) and its metrics ([`metrics`]). Cores share
//! nothing mutable; they exchange owned messages over bounded channels ([`mesh`]). Requests
//! are routed and answered at the edge ([`api`]), where errors become responses in one place.
//! With the Kafka backend ([`kafka`]) the partitions a core owns are hinted-handoff logs in
//! front of Kafka, and consumer groups are Kafka's.

pub mod alloc;
pub mod api;
pub mod conn;
pub mod core;
pub mod date;
pub mod durability;
pub mod event;
pub mod flusher;
pub mod kafka;
pub mod mesh;
pub mod metrics;
pub mod runtime;
pub mod scrub;
pub mod shard;
pub mod topics;
