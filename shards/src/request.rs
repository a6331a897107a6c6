//! What one core can ask of another: one [`Request`] enum, answered by one [`Answer`]. Both
//! travel through the mesh as owned, `Send` data; `crate::node::Core::execute` runs a request,
//! whether it came from another core or from this one (the local path calls it directly, without
//! a channel).

use crate::catalog::{AdminOp, TopicMeta};
use crate::metrics::Snapshot;
use bytes::Bytes;
use kateway_core::{Ack, Delivered, Error, Groups, Item, PartitionInfo, Published, Reset};

/// A bounded read for one group from the partitions of a topic that one core owns.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub topic: String,
    pub group: String,
    pub max: usize,
    pub max_bytes: usize,
    pub reset: Reset,
    pub auto_ack: bool,
    /// Deliver only messages carrying one of these tags (empty: all).
    pub tags: Vec<Bytes>,
}

/// What a bounded read found: the records for the subscriber, and whether it stopped early
/// with more to look at (a tag filter skipped its scan budget's worth of records), so the
/// caller reads again at once instead of waiting for new data.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<Delivered>,
    pub more: bool,
}

/// A request to a core.
pub enum Request {
    /// Publish to a partition the receiver owns, at the durability asked for.
    Publish {
        topic: String,
        partition: u32,
        items: Vec<Item>,
        ack: Ack,
    },
    /// A bounded read for a group from the receiver's partitions of a topic.
    Fetch(Fetch),
    /// Commit a group's offset on a partition the receiver owns (durably before answering); with
    /// `seek` the offset may move backwards and the group's read position moves with it.
    Commit {
        topic: String,
        partition: u32,
        group: String,
        offset: u64,
        seek: bool,
    },
    /// Offsets of the receiver's partitions of a topic, with the groups asked about.
    Info { topic: String, groups: Groups },
    /// The sender has (delta > 0) or no longer has (delta < 0) long polls parked on a topic.
    Interest {
        topic: String,
        core: usize,
        delta: i64,
    },
    /// New data on a topic the receiver asked about.
    Wake { topic: String },
    /// Lease messages of a group whose queue the receiver keeps.
    Lease(crate::queue::LeaseCall),
    /// Settle leased messages of a group whose queue the receiver keeps.
    Settle(crate::queue::SettleCall),
    /// Core 0 only: a call on delayed messages.
    Delay(crate::delay::DelayCall),
    /// The state (or delivery log) of a webhook endpoint the receiver runs.
    WebhookInfo {
        group: String,
        topic: String,
        log: bool,
    },
    /// Core 0 only: an idempotency-key call.
    Idem(crate::idem::IdemCall),
    /// Core 0 only: create, alter, learn or delete a topic.
    Admin(AdminOp),
    /// Install (or replace) a topic's metadata and open the receiver's partitions of it.
    Apply(TopicMeta),
    /// Forget a topic and close the receiver's partitions of it.
    Drop(String),
    /// The receiver's metrics.
    Metrics,
    /// Install this tenancy view (from core 0's metadata writer).
    View(std::sync::Arc<crate::tenancy::View>),
    /// Core 0 only: a tenancy API call.
    Meta(crate::tenancy::writer::MetaCall),
    /// The receiver's listening sockets (for an upgrade's handover).
    Listeners,
    /// Answer `/ready` with 503 from now on (a drain follows).
    Unready,
    /// Put reloaded settings in force ([`crate::shard::Shard::reconfigure`]).
    Reconfigure(std::sync::Arc<kateway_core::config::Config>),
    /// Stop accepting, finish requests, close connections; answer when none is left.
    Drain,
    /// Stop every task and the core.
    Stop,
}

/// A configuration reload asked of the process's main thread (`POST /v1/config/reload`): the
/// answer is the changed keys, or why nothing changed.
pub struct ReloadAsk(pub flume::Sender<Result<Vec<String>, String>>);

/// The answer to a [`Request`].
pub enum Answer {
    Published(Result<Published, Error>),
    Delivered(Result<Fetched, Error>),
    Done(Result<(), Error>),
    Infos(Vec<PartitionInfo>),
    Settled(Result<Vec<crate::queue::Outcome>, Error>),
    Idem(Result<Option<crate::idem::Begun>, Error>),
    Delay(Result<crate::delay::DelayAnswer, Error>),
    Topic(Result<TopicMeta, Error>),
    Snapshot(Box<Snapshot>),
    /// A tenancy API call's status and JSON body.
    Meta(Result<(u16, String), Error>),
    /// Listening sockets, by what they serve.
    Listeners(Vec<(crate::conn::Listener, std::os::fd::RawFd)>),
    None,
}
