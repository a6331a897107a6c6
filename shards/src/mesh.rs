//! The mesh: how cores talk. Each core has one bounded inbox; every core holds a sender to every
//! inbox. A message that needs an answer carries a one-shot reply channel. Messages carry owned,
//! `Send` data only (`Bytes`, `String`, plain structs); nothing shared is mutated across cores.

use crate::metrics::Snapshot;
use crate::topics::TopicMeta;
use bytes::Bytes;
use kateway_core::{Error, ErrorKind};

/// How durable a publish must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// fsynced.
    All,
    /// Written to the page cache.
    Local,
    /// Queued in memory.
    Async,
}

/// One message to append.
#[derive(Debug, Clone)]
pub struct Item {
    /// Partition key (empty for none).
    pub key: Bytes,
    /// Tags (empty for none).
    pub tags: Bytes,
    /// Payload.
    pub value: Bytes,
}

/// Where a publish landed: one offset per message (`-1` where none is known yet: buffered in
/// the handoff log, or queued with `async=1` on the Kafka backend).
#[derive(Debug, Clone)]
pub struct Published {
    pub offsets: Vec<i64>,
    /// Some messages went to the hinted-handoff log instead of Kafka.
    pub buffered: bool,
}

/// A record handed to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Bytes,
    pub tags: Bytes,
    pub value: Bytes,
}

/// Where a group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Oldest,
    Newest,
}

/// A fetch for one group from the partitions one core owns.
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

/// Offsets of one partition, and the committed offsets of the groups asked about.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub partition: u32,
    pub oldest: u64,
    pub newest: u64,
    pub groups: Vec<(String, u64)>,
}

/// A one-shot reply channel.
pub type Reply<T> = flume::Sender<T>;

/// Everything one core can ask of another.
pub enum Msg {
    /// Append to a partition the receiver owns and answer at the requested durability.
    Append {
        topic: String,
        partition: u32,
        items: Vec<Item>,
        ack: Ack,
        reply: Reply<Result<Published, Error>>,
    },
    /// Fetch for a group from the receiver's partitions of a topic.
    Fetch {
        fetch: Fetch,
        reply: Reply<Result<Vec<Delivered>, Error>>,
    },
    /// Commit a group's offset on a partition (durably before answering); with `seek` the
    /// offset may move backwards and the group's read position moves with it.
    Commit {
        topic: String,
        partition: u32,
        group: String,
        offset: u64,
        seek: bool,
        reply: Reply<Result<(), Error>>,
    },
    /// Offsets of the receiver's partitions of a topic; groups whose name starts with the prefix.
    Info {
        topic: String,
        group_prefix: String,
        reply: Reply<Vec<PartitionInfo>>,
    },
    /// The sender has (delta > 0) or no longer has (delta < 0) long polls parked on a topic.
    Interest {
        topic: String,
        core: usize,
        delta: i64,
    },
    /// New data on a topic the receiver asked about.
    Wake { topic: String },
    /// Core 0 only: create, alter or delete a topic.
    Admin {
        op: AdminOp,
        reply: Reply<Result<TopicMeta, Error>>,
    },
    /// Install (or replace) a topic's metadata and open the receiver's partitions of it.
    Apply {
        meta: TopicMeta,
        reply: Reply<Result<(), Error>>,
    },
    /// Forget a topic and remove the receiver's partitions of it.
    Drop { name: String, reply: Reply<()> },
    /// The receiver's metrics.
    Metrics { reply: Reply<Snapshot> },
    /// Stop accepting, finish requests, close connections; answer when none is left.
    Drain { reply: Reply<()> },
    /// Flush, sync and stop the core.
    Stop,
}

/// A topic administration call.
#[derive(Debug, Clone)]
pub enum AdminOp {
    Create(TopicMeta),
    Alter {
        name: String,
        partitions: Option<u32>,
        retention_hours: Option<u64>,
        retention_bytes: Option<u64>,
    },
    Delete(String),
    /// Kafka backend: record a topic that exists in Kafka (created by this or another gateway),
    /// replacing what the catalog knew about it.
    Learn(TopicMeta),
}

/// Senders to every core's inbox.
#[derive(Clone)]
pub struct Mesh {
    inboxes: Vec<flume::Sender<Msg>>,
}

impl Mesh {
    /// Creates the inboxes; returns the mesh and each core's receiver.
    pub fn new(cores: usize, capacity: usize) -> (Self, Vec<flume::Receiver<Msg>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(capacity)).unzip();
        (Self { inboxes: tx }, rx)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends without waiting for an answer.
    pub async fn send(&self, core: usize, msg: Msg) {
        // A closed inbox means that core has stopped; nothing useful can be done about it.
        let _ = self.inboxes[core].send_async(msg).await;
    }

    /// Sends from a thread outside the reactors.
    pub fn send_blocking(&self, core: usize, msg: Msg) -> bool {
        self.inboxes[core].send(msg).is_ok()
    }

    /// Sends a request and waits for its answer.
    pub async fn call<T>(
        &self,
        core: usize,
        make: impl FnOnce(Reply<T>) -> Msg,
    ) -> Result<T, Error> {
        let (tx, rx) = flume::bounded(1);
        self.send(core, make(tx)).await;
        rx.recv_async()
            .await
            .map_err(|_| Error::new(ErrorKind::ShuttingDown, "core stopped"))
    }
}
