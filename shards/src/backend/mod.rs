//! The backend seam: where topics live. [`Backend`] is the only place that knows which backend
//! runs; everything above it (the delivery layer, the API, the catalog writer, the cores) calls
//! the same small set of operations: publish, a bounded read, commit, topic administration and
//! offsets, status, the tasks to start, drain. [`Shared`] is the process-wide part.
//!
//! * [`embedded`]: the log engine on this host (`<data>/topics`).
//! * [`kafka`]: Apache Kafka, with a hinted-handoff buffer on this host (`<data>/handoff`).

pub mod embedded;
pub mod kafka;
pub mod meta;

use crate::catalog::{AdminOp, LocalTopic, TopicMeta};
use crate::metrics::{self, Snapshot};
use crate::request::{Answer, Fetch, Fetched, Request};
use crate::shard::Shard;
use crate::tasks::Tasks;
use kateway_core::config::{Backend as Kind, Config};
use kateway_core::{Ack, Error, ErrorKind, Groups, Item, PartitionInfo, Published};
use kateway_proto::command::TopicPath;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What the whole process shares for its backend.
#[derive(Clone)]
pub enum Shared {
    Embedded,
    Kafka(Arc<kafka::KafkaShared>),
}

impl Shared {
    /// Starts what the configured backend needs process-wide (no connection is made yet).
    pub fn start(cfg: &Config) -> Result<Self, String> {
        Ok(match cfg.store.backend {
            Kind::Embedded => Shared::Embedded,
            Kind::Kafka => Shared::Kafka(kafka::KafkaShared::start(cfg)?),
        })
    }

    /// The Kafka client settings, on the Kafka backend.
    pub fn bridge(&self) -> Option<&kateway_kafka_bridge::BridgeConfig> {
        match self {
            Shared::Embedded => None,
            Shared::Kafka(k) => Some(&k.bridge),
        }
    }

    /// At exit, after every core drained: leaves the consumer groups at once.
    pub fn finish(&self) {
        if let Shared::Kafka(k) = self {
            kafka::groups::leave_all(k, std::time::Duration::from_secs(5));
        }
    }
}

/// Where partition logs live: `<data>/topics` for the embedded store, `<data>/handoff` (the
/// hinted-handoff buffer) for the Kafka backend.
pub fn data_root(cfg: &Config) -> PathBuf {
    cfg.store.data_dir.join(match cfg.store.backend {
        Kind::Embedded => "topics",
        Kind::Kafka => "handoff",
    })
}

/// The catalog of the configured backend: `<data>/meta/topics.json`, or `kafka-topics.json`
/// for the Kafka backend (so one data directory used with both never mixes their topics).
pub fn catalog_path(cfg: &Config) -> PathBuf {
    cfg.store
        .data_dir
        .join("meta")
        .join(match cfg.store.backend {
            Kind::Embedded => "topics.json",
            Kind::Kafka => "kafka-topics.json",
        })
}

/// Descriptors the configured backend needs beyond the store's log files: for Kafka, the
/// producers' broker connections on each core and each group membership's consumer.
pub fn reserved_descriptors(cfg: &Config, cores: u64) -> u64 {
    match cfg.store.backend {
        Kind::Embedded => 0,
        Kind::Kafka => 32 * cores + 8 * u64::from(cfg.kafka.max_groups),
    }
}

/// One core's backend.
#[derive(Clone)]
pub enum Backend {
    Embedded(Rc<embedded::Store>),
    Kafka(Rc<kafka::Kafka>),
}

fn unexpected() -> Error {
    Error::new(ErrorKind::Internal, "unexpected answer from another core")
}

impl Backend {
    /// This core's backend, with `open_files` log-file descriptors.
    pub fn new(shared: &Shared, shard: Rc<Shard>, open_files: usize) -> Result<Self, String> {
        Ok(match shared {
            Shared::Embedded => Backend::Embedded(Rc::new(embedded::Store::new(shard, open_files))),
            Shared::Kafka(k) => {
                Backend::Kafka(Rc::new(kafka::Kafka::new(k.clone(), shard, open_files)?))
            }
        })
    }

    /// `"embedded"` or `"kafka"`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Kafka(_) => "kafka",
        }
    }

    /// Why the backend cannot serve yet: on Kafka, until a broker has answered once.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self {
            Backend::Embedded(_) => None,
            Backend::Kafka(k) => (!k.shared.reached.load(std::sync::atomic::Ordering::Acquire))
                .then_some("no Kafka broker has been reached yet"),
        }
    }

    fn shard(&self) -> &Rc<Shard> {
        match self {
            Backend::Embedded(s) => &s.logs.shard,
            Backend::Kafka(k) => &k.shard,
        }
    }

    /// Opens this core's partitions of a topic being installed (and closes any beyond its
    /// partition count, which only a growth rolled back can leave).
    pub async fn apply_topic(&self, meta: &TopicMeta) -> Result<(), Error> {
        match self {
            Backend::Embedded(s) => {
                s.logs.remove_beyond(&meta.name, meta.partitions);
                s.apply_topic(meta).await
            }
            Backend::Kafka(k) => {
                k.buffer.remove_beyond(&meta.name, meta.partitions);
                k.apply_topic(meta)
            }
        }
    }

    /// Closes this core's partitions of a topic being removed.
    pub fn drop_topic(&self, name: &str) {
        match self {
            Backend::Embedded(s) => {
                s.logs.forget_topic(name);
                s.forget_queues(name);
            }
            Backend::Kafka(k) => {
                k.buffer.forget_topic(name);
                kafka::groups::leave_topic(k, name);
            }
        }
    }

    /// The topic at `path`, or 404. The Kafka backend looks a topic it has not seen up in Kafka
    /// (another gateway may have created it) and adds it to the catalog.
    pub async fn resolve(&self, path: &TopicPath<'_>) -> Result<Rc<LocalTopic>, Error> {
        let lookup = || {
            self.shard()
                .catalog
                .borrow()
                .lookup(path.appid, path.topic, path.ver)
        };
        match (lookup(), self) {
            (Err(e), Backend::Kafka(k)) if e.kind() == ErrorKind::UnknownTopic => {
                let name = format!("{}.{}.{}", path.appid, path.topic, path.ver);
                kafka::topics::learn(k, &name).await?;
                lookup()
            }
            (r, _) => r,
        }
    }

    /// Publishes to partition `p`, which this core owns.
    pub async fn publish_local(
        &self,
        topic: &str,
        p: u32,
        items: Vec<Item>,
        ack: Ack,
    ) -> Result<Published, Error> {
        match self {
            Backend::Embedded(s) => s.publish(topic, p, &items, ack).await,
            Backend::Kafka(k) => kafka::handoff::publish(k, topic, p, items, ack).await,
        }
    }

    /// Publishes to partition `p` of `topic` on the core that owns it.
    pub async fn publish(
        &self,
        topic: &LocalTopic,
        p: u32,
        items: Vec<Item>,
        ack: Ack,
    ) -> Result<Published, Error> {
        let shard = self.shard();
        let owner = topic.owner(p, shard.cores());
        if owner == shard.id {
            return self.publish_local(&topic.name, p, items, ack).await;
        }
        metrics::inc(&shard.metrics.mesh_messages_total);
        let req = Request::Publish {
            topic: topic.name.to_string(),
            partition: p,
            items,
            ack,
        };
        match shard.mesh.call(owner, req).await? {
            Answer::Published(r) => r,
            _ => Err(unexpected()),
        }
    }

    /// Whether a read waits for messages itself (until its deadline) rather than returning at
    /// once and leaving the waiting to the delivery layer's wake-ups.
    pub fn reads_wait(&self) -> bool {
        matches!(self, Backend::Kafka(_))
    }

    /// A bounded read for a group over the whole topic. The embedded store answers at once; the
    /// Kafka backend asks the group's membership, which answers when it has records or at the
    /// deadline.
    pub async fn read(
        &self,
        topic: &LocalTopic,
        f: Fetch,
        deadline: Instant,
    ) -> Result<Fetched, Error> {
        match self {
            Backend::Embedded(s) => s.read(topic, &f).await,
            Backend::Kafka(k) => Ok(Fetched {
                records: kafka::groups::fetch(k, topic, f, deadline).await?,
                more: false,
            }),
        }
    }

    /// Commits `next` (the next offset to consume) for `group` on partition `p`; with `seek`
    /// the group's position moves there, backwards too.
    pub async fn commit(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
        next: u64,
        seek: bool,
    ) -> Result<(), Error> {
        match self {
            Backend::Embedded(s) => s.commit_anywhere(topic, p, group, next, seek).await,
            Backend::Kafka(k) => kafka::groups::commit(k, topic, p, group, next, seek).await,
        }
    }

    /// Leased delivery: where the queue of `group` on partition `p` starts. Answers the group's
    /// committed offset (`None` for a group that has none) and the checkpoint stored with it,
    /// and moves the group's read position back to that offset, so that everything from there
    /// is read again into the new window.
    pub async fn queue_restore(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
        reset: kateway_core::Reset,
    ) -> Result<(Option<u64>, Option<Vec<u8>>), Error> {
        match self {
            Backend::Embedded(s) => s.queue_restore(topic, p, group).await,
            Backend::Kafka(k) => {
                let (next, meta) =
                    kafka::groups::queue_restore(k, &topic.name, group, p, reset).await?;
                let cp = kafka::qstate::load(k, &topic.name, group, p, &meta).await?;
                Ok((next, cp))
            }
        }
    }

    /// Leased delivery: stores a queue checkpoint of `group` on partition `p` and commits its
    /// watermark (everything before it is done), durably before answering.
    pub async fn queue_save(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
        watermark: u64,
        checkpoint: Vec<u8>,
    ) -> Result<(), Error> {
        match self {
            Backend::Embedded(s) => s.queue_save(topic, p, group, watermark, &checkpoint).await,
            Backend::Kafka(k) => {
                let meta = kafka::qstate::store(k, &topic.name, group, p, &checkpoint).await?;
                kafka::groups::queue_save(k, &topic.name, group, p, watermark, meta).await
            }
        }
    }

    /// Leased delivery: the most checkpoint bytes [`Backend::queue_save`] stores (`None`: no
    /// limit).
    pub fn queue_checkpoint_limit(&self) -> Option<usize> {
        match self {
            Backend::Embedded(_) => None,
            Backend::Kafka(_) => Some(kafka::qstate::MAX_BYTES),
        }
    }

    /// Leased delivery: the partitions of `topic` whose queues this gateway keeps for `group`
    /// (all of them on the embedded store; those its membership holds on Kafka, which joins the
    /// group starting at `reset` if it has no offset).
    pub async fn queue_partitions(
        &self,
        topic: &LocalTopic,
        group: &str,
        reset: kateway_core::Reset,
    ) -> Result<Vec<u32>, Error> {
        match self {
            Backend::Embedded(_) => Ok((0..topic.partitions).collect()),
            Backend::Kafka(k) => kafka::groups::assignment(k, &topic.name, group, reset).await,
        }
    }

    /// Partition offsets, with the committed offsets of the groups asked about.
    pub async fn info(
        &self,
        topic: &LocalTopic,
        groups: &Groups,
    ) -> Result<Vec<PartitionInfo>, Error> {
        self.info_within(topic, groups)
            .await
            .map(|(infos, _)| infos)
    }

    /// [`Backend::info`], and how many of the groups asked about were left out: on Kafka,
    /// committed offsets are asked for one group at a time, within a time budget
    /// ([`kafka::topics::info`]); the embedded store leaves none out.
    pub async fn info_within(
        &self,
        topic: &LocalTopic,
        groups: &Groups,
    ) -> Result<(Vec<PartitionInfo>, usize), Error> {
        match self {
            Backend::Embedded(s) => s.info_anywhere(topic, groups).await.map(|i| (i, 0)),
            Backend::Kafka(k) => kafka::topics::info(k, topic, groups).await,
        }
    }

    /// Every group's lag on each of `topics` (for `/metrics`): end offsets less committed
    /// offsets, summed over partitions. On Kafka one committed-offsets request per group covers
    /// all the topics, and a round measures the cluster's other groups in turn, within a time
    /// budget, keeping their `previous` figures meanwhile ([`kafka::topics::lags`]).
    pub async fn lags(
        &self,
        topics: Vec<Rc<LocalTopic>>,
        previous: metrics::lag::Lags,
    ) -> metrics::lag::Lags {
        if let Backend::Kafka(k) = self {
            let names = topics.iter().map(|t| t.name.to_string()).collect();
            return kafka::topics::lags(k, names, previous).await;
        }
        let mut lags = metrics::lag::Lags::new();
        for t in topics {
            let Ok(infos) = self.info(&t, &Groups::Prefix(String::new())).await else {
                continue;
            };
            for i in infos {
                for (g, committed) in i.groups {
                    let lag = i.newest - committed.clamp(i.oldest, i.newest);
                    *lags.entry((t.name.to_string(), g)).or_default() += lag;
                }
            }
        }
        lags
    }

    /// Applies a topic administration call where topics live (Kafka first, for the Kafka
    /// backend); returns the call to apply to the catalog. Deleting a topic Kafka has but this
    /// gateway never saw answers with `Ok(None)` once it is deleted in Kafka.
    pub async fn administer(&self, op: AdminOp, path: &TopicPath<'_>) -> Result<AdminOp, Error> {
        match self {
            Backend::Embedded(_) => Ok(op),
            Backend::Kafka(k) => {
                if matches!(op, AdminOp::Alter { .. }) {
                    // Altering a topic created through another gateway: learn it first.
                    self.resolve(path).await?;
                }
                kafka::topics::administer(k, op).await
            }
        }
    }

    /// Whether a topic deleted where topics live may be unknown to this gateway's catalog.
    pub fn deletes_unseen_topics(&self) -> bool {
        matches!(self, Backend::Kafka(_))
    }

    /// The partitions of a topic this core owns: a bounded read for a group (a request from
    /// another core).
    pub fn fetch_local(&self, f: &Fetch) -> Result<Fetched, Error> {
        match self {
            Backend::Embedded(s) => s.fetch(f),
            Backend::Kafka(_) => Err(Error::new(
                ErrorKind::Internal,
                "no local reads on the Kafka backend",
            )),
        }
    }

    /// A commit on a partition this core owns (a request from another core).
    pub async fn commit_local(
        &self,
        topic: &str,
        p: u32,
        group: &str,
        offset: u64,
        seek: bool,
    ) -> Result<(), Error> {
        match self {
            Backend::Embedded(s) => s.commit(topic, p, group, offset, seek).await,
            Backend::Kafka(_) => Err(Error::new(
                ErrorKind::Internal,
                "no local commits on the Kafka backend",
            )),
        }
    }

    /// Offsets of the partitions of a topic this core owns (a request from another core).
    pub fn info_local(&self, topic: &str, groups: &Groups) -> Vec<PartitionInfo> {
        match self {
            Backend::Embedded(s) => s.info(topic, groups),
            Backend::Kafka(_) => Vec::new(),
        }
    }

    /// Adds the backend's state to this core's metrics snapshot.
    pub fn snapshot(&self, s: &mut Snapshot) {
        match self {
            Backend::Embedded(st) => st.logs.snapshot(s),
            Backend::Kafka(k) => k.snapshot(s),
        }
    }

    /// Whether this core's storage refuses writes (for readiness).
    pub fn faulted(&self) -> bool {
        match self {
            Backend::Embedded(s) => s.logs.dur.fault.borrow().active(),
            Backend::Kafka(k) => k.buffer.dur.fault.borrow().active(),
        }
    }

    /// Starts the backend's tasks on this core.
    pub fn spawn(&self, tasks: &Tasks) {
        match self {
            Backend::Embedded(s) => s.spawn(tasks),
            Backend::Kafka(k) => k.spawn(tasks),
        }
    }

    /// Draining: waits (at most `limit`) until the publishes in flight, `async=1` ones included,
    /// are delivered or buffered.
    pub async fn drain(&self, limit: std::time::Duration) {
        if let Backend::Kafka(k) = self {
            k.settle(limit).await;
        }
    }
}
