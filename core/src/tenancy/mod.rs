//! Tenancy: who may do what. Apps are the tenants; a key belongs to one app and carries one
//! scope (publish, subscribe, app-admin; operator keys belong to no app), optionally narrowed to
//! some topics; an owner grants other apps the right to subscribe to its topics; quotas bound
//! what an app may use.
//!
//! * [`record`]: the metadata as an append-only log of entity records (upserts and tombstones,
//!   each stamped with its actor and time), which the shards persist (a local log file, or a
//!   compacted Kafka topic) and every gateway replays.
//! * [`state`]: what the records add up to, and the rules every change is checked against
//!   ([`State::plan`]): a change becomes records only once it is valid.
//! * [`snapshot`]: the immutable, lookup-ready view each core authenticates and authorizes
//!   requests with: hash lookups and one HMAC, no lock and no allocation.
//!
//! No I/O and no clock: callers pass the time.

pub mod record;
pub mod snapshot;
pub mod state;

pub use record::{
    Audit, KeyRecord, QueuePolicySpec, QuotaSpec, Record, Stamp, WebhookSpec, OPERATOR_APP,
};
pub use snapshot::{Credential, KeyEntry, Need, Principal, Snapshot, TopicRef};
pub use state::{Op, Planned, State};
