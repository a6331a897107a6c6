//! The Kafka backend. Topics, partitions, offsets and consumer groups live in an Apache Kafka
//! cluster; the gateway keeps only what makes it fast and available:
//!
//! * per core, its own producers ([`Kafka`]), and a hinted-handoff buffer of its own: a
//!   [`LogSet`] under `<data>/handoff` with a log for each partition it owns that needed
//!   buffering, and a durable replay cursor in each ([`handoff`], [`replay`]);
//! * per process, one consumer-group membership per group and topic, each on its own thread,
//!   shared by every request of that group on every core ([`groups`]);
//! * a few threads for Kafka calls that block (metadata, watermarks, committed offsets), reached
//!   through [`KafkaShared::blocking`], so no reactor ever blocks on the network.
//!
//! Partition `p` of a topic is published through the core that owns it, exactly as with the
//! embedded store, so one core's idempotent producer orders a partition's messages and decides
//! alone whether they go to Kafka or to the handoff log.

pub mod groups;
pub mod handoff;
pub mod lane;
pub mod qstate;
pub mod replay;
pub mod topics;

pub use lane::{Lane, Shadow};

use crate::catalog::{Map, TopicMeta};
use crate::event::Event;
use crate::logset::{LogSet, PartKey};
use crate::shard::Shard;
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::{Admin, BridgeConfig, BridgeError, Producer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// A Kafka call that blocks, run on a helper thread.
type Job = Box<dyn FnOnce(&Admin) + Send>;

/// What every core shares: the client settings, the admin client, the helper threads and the
/// registry of group memberships (locked only when a core meets a group it has not used yet).
pub struct KafkaShared {
    pub bridge: BridgeConfig,
    pub admin: Arc<Admin>,
    pub replication: i32,
    jobs: flume::Sender<Job>,
    pub groups: Mutex<HashMap<String, flume::Sender<groups::GroupReq>>>,
    /// Whether a broker has answered since the start (`/ready` waits for it).
    pub reached: Arc<std::sync::atomic::AtomicBool>,
    /// Where the next lag round goes on among the cluster's other groups
    /// ([`topics::lags`]).
    pub lag_cursor: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long a producer may deliver nothing while messages wait before [`Kafka::unstick`]
/// acts.
const STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the cluster for its metadata, once a second on a thread of its own, until a broker
/// answers; then sets `reached` and ends.
fn reach(admin: Arc<Admin>, reached: Arc<std::sync::atomic::AtomicBool>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("kateway-kafka-reach".into())
        .spawn(move || loop {
            match admin.brokers() {
                Ok(n) if n > 0 => {
                    tracing::info!(brokers = n, "reached the Kafka cluster");
                    reached.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("Kafka not reached yet: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        })
        .map(drop)
        .map_err(|e| format!("cannot start kafka helper thread: {e}"))
}

/// Helper threads for blocking Kafka calls.
const JOB_THREADS: usize = 2;
/// Blocking calls that may wait for a helper; more are refused with 429 (a slow or unreachable
/// Kafka must not let status requests pile up without bound).
const JOB_QUEUE: usize = 256;

impl KafkaShared {
    /// Creates the admin client and starts the helper threads. No connection is made yet.
    pub fn start(cfg: &kateway_core::config::Config) -> Result<Arc<Self>, String> {
        let k = &cfg.kafka;
        let mut bridge = BridgeConfig::new(k.brokers.clone());
        bridge.linger = k.linger.0;
        // librdkafka never gives up on a message (kafka.produce_timeout is the gateway's own
        // timer): a message the gateway stopped waiting for and buffered is still delivered by
        // librdkafka at most once, and the replayer skips its buffered copy when it is.
        bridge.message_timeout = std::time::Duration::ZERO;
        bridge.request_timeout = k.request_timeout.0;
        bridge.client_id = k.client_id.clone();
        bridge.session_timeout = k.session_timeout.0;
        let admin = Arc::new(Admin::new(&bridge).map_err(|e| e.to_string())?);
        let (tx, rx) = flume::bounded::<Job>(JOB_QUEUE);
        for i in 0..JOB_THREADS {
            let rx = rx.clone();
            let admin = admin.clone();
            std::thread::Builder::new()
                .name(format!("kateway-kafka-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job(&admin);
                    }
                })
                .map_err(|e| format!("cannot start kafka helper thread: {e}"))?;
        }
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        reach(admin.clone(), reached.clone())?;
        Ok(Arc::new(Self {
            bridge,
            admin,
            replication: k.replication_factor,
            jobs: tx,
            groups: Mutex::new(HashMap::new()),
            reached,
            lag_cursor: Default::default(),
        }))
    }

    /// The groups this process holds memberships of, on `topic` (any topic: `None`), sorted.
    pub fn member_groups(&self, topic: Option<&str>) -> Vec<String> {
        let reg = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups: Vec<String> = reg
            .keys()
            .filter_map(|id| id.split_once('\n'))
            .filter(|(_, t)| topic.is_none_or(|want| *t == want))
            .map(|(g, _)| g.to_owned())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Runs `f` on a helper thread and waits for its answer without blocking the reactor.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Admin) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = flume::bounded(1);
        let job: Job = Box::new(move |admin| {
            let _ = tx.send(f(admin));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => Error::new(
                ErrorKind::Overloaded,
                "too many Kafka metadata requests waiting",
            ),
            flume::TrySendError::Disconnected(_) => {
                Error::new(ErrorKind::ShuttingDown, "kafka helpers stopped")
            }
        })?;
        rx.recv_async()
            .await
            .map_err(|_| Error::new(ErrorKind::Internal, "kafka helper thread died"))
    }
}

/// Maps a Kafka failure to the error taxonomy.
pub fn kafka_err(e: BridgeError) -> Error {
    match e {
        BridgeError::Unavailable(m) => Error::new(
            ErrorKind::KafkaUnavailable,
            format!("kafka unavailable: {m}"),
        ),
        BridgeError::TopicExists(m) => {
            Error::new(ErrorKind::Conflict, format!("topic already exists: {m}"))
        }
        BridgeError::UnknownTopic(m) => {
            Error::new(ErrorKind::UnknownTopic, format!("unknown topic: {m}"))
        }
        BridgeError::Refused(m) => Error::param(format!("kafka refused the request: {m}")),
        BridgeError::Config(m) => Error::new(ErrorKind::Internal, format!("kafka client: {m}")),
    }
}

/// How long a write to one of the gateway's own topics waits for Kafka's acknowledgement.
const OWN_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for the acknowledgement of a [`Kafka::send_own`]: the record's partition and offset,
/// or why it did not come within `OWN_WRITE_TIMEOUT`.
pub async fn acknowledged(d: kateway_kafka_bridge::Delivery) -> Result<(i32, i64), String> {
    match monoio::time::timeout(OWN_WRITE_TIMEOUT, d).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("Kafka did not acknowledge within 10 s".into()),
    }
}

/// Creates a core's producers and serves their delivery reports on this core: on io_uring a
/// task reads the producers' eventfd and serves what woke it, so a report resolves its
/// delivery and wakes the publish waiting for it without leaving the core; on the epoll
/// fallback (where reading a descriptor blocks) a thread of its own serves them. Either ends
/// once the producers are dropped.
fn start_producer(
    cfg: &kateway_kafka_bridge::BridgeConfig,
    core: usize,
) -> Result<Rc<Producer>, BridgeError> {
    let p = Rc::new(Producer::new(cfg, core)?);
    let reports = p.reports();
    let on_thread = move |reports| {
        kateway_kafka_bridge::serve_reports_on_thread(reports, format!("kateway-reports-{core}"))
    };
    if !crate::runtime::on_uring() {
        on_thread(reports)
            .map_err(|e| BridgeError::Config(format!("cannot start a report thread: {e}")))?;
        return Ok(p);
    }
    // A descriptor of the pump's own, valid after the producers (and their copy) are gone.
    let file = reports
        .file()
        .unwrap_or_else(|| Err(std::io::Error::other("the producer is gone")))
        .and_then(monoio::fs::File::from_std)
        .map_err(|e| BridgeError::Config(format!("cannot watch the report eventfd: {e}")))?;
    monoio::spawn(async move {
        let mut buf = vec![0u8; 8];
        loop {
            let (r, b) = file.read_at(buf, 0).await;
            buf = b;
            if let Err(e) = r {
                // Reports must still be served, or every delivery would wait forever.
                tracing::error!(
                    core,
                    "cannot read the Kafka report eventfd ({e}): serving reports on a thread"
                );
                if let Err(e) = on_thread(reports.clone()) {
                    tracing::error!(core, "cannot start a report thread ({e}): polling");
                    while reports.serve().is_some() {
                        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                return;
            }
            loop {
                match reports.serve() {
                    Some(true) => break,
                    Some(false) => crate::event::yield_now().await,
                    None => return,
                }
            }
        }
    });
    Ok(p)
}

/// One core's Kafka state.
pub struct Kafka {
    pub shard: Rc<Shard>,
    pub shared: Arc<KafkaShared>,
    /// The hinted-handoff buffer.
    pub buffer: Rc<LogSet>,
    producer: RefCell<Rc<Producer>>,
    core: usize,
    /// When a message last reached Kafka (direct or replayed), and when the producers were last
    /// given their bootstrap brokers again.
    pub last_progress: Cell<std::time::Instant>,
    last_unstick: Cell<std::time::Instant>,
    /// Per handoff partition, buffered messages (by handoff offset) whose original send is
    /// still out or went through after all.
    pub shadows: RefCell<Map<PartKey, std::collections::BTreeMap<u64, Shadow>>>,
    /// Open after a publish or replay found Kafka unreachable: publishes go to the handoff
    /// log until the replayer gets through again.
    pub breaker_open: Cell<bool>,
    pub lanes: RefCell<Map<PartKey, Rc<Lane>>>,
    /// Wakes the replayer when a message was buffered.
    pub replay_wake: Event,
    /// Since when each open handoff log has had nothing left to replay.
    pub drained: RefCell<Map<PartKey, std::time::Instant>>,
    /// This core's handles to group memberships, keyed `group\ntopic`.
    pub groups: RefCell<Map<String, flume::Sender<groups::GroupReq>>>,
    /// This core's share of the handoff disk budget (0 = unlimited).
    pub budget: u64,
}

impl Kafka {
    /// Creates the core's producers and its handoff buffer.
    pub fn new(
        shared: Arc<KafkaShared>,
        shard: Rc<Shard>,
        open_files: usize,
    ) -> Result<Self, String> {
        let cfg = shard.cfg().clone();
        let (core, cores) = (shard.id, shard.cores());
        let producer = start_producer(&shared.bridge, core).map_err(|e| e.to_string())?;
        let root = crate::backend::data_root(&cfg);
        let buffer = LogSet::new(
            shard.clone(),
            "handoff",
            root,
            cfg.kafka.handoff_segment_bytes.0,
            open_files,
        );
        Ok(Self {
            shard,
            shared,
            buffer: Rc::new(buffer),
            producer: RefCell::new(producer),
            core,
            last_progress: Cell::new(std::time::Instant::now()),
            last_unstick: Cell::new(std::time::Instant::now()),
            shadows: Default::default(),
            breaker_open: Cell::new(false),
            lanes: Default::default(),
            replay_wake: Event::default(),
            drained: Default::default(),
            groups: Default::default(),
            budget: cfg.kafka.handoff_max_bytes.0 / cores.max(1) as u64,
        })
    }

    /// This core's producers.
    pub fn producer(&self) -> Rc<Producer> {
        self.producer.borrow().clone()
    }

    /// Sends a record to partition 0 of one of the gateway's own topics (metadata,
    /// idempotency keys, handed-on settles, queue checkpoints), to be acknowledged by every
    /// in-sync replica: await it with [`acknowledged`].
    pub fn send_own(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<kateway_kafka_bridge::Delivery, String> {
        self.producer()
            .send(topic, Some(0), key, &[], value, kateway_core::Ack::All)
            .map_err(|e| e.to_string())
    }

    /// [`Kafka::send_own`], acknowledged: the record's partition and offset, or why not.
    pub async fn write_own(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(i32, i64), String> {
        acknowledged(self.send_own(topic, key, value)?).await
    }

    /// Replaces the producers if librdkafka put them in a fatal state (they would refuse every
    /// message from now on); their queued messages fail and are buffered or replayed.
    pub fn renew_if_fatal(&self) {
        let Some(why) = self.producer.borrow().fatal_error() else {
            return;
        };
        match start_producer(&self.shared.bridge, self.core) {
            Ok(p) => {
                tracing::error!(
                    core = self.core,
                    "kafka producer failed fatally ({why}): replaced it"
                );
                *self.producer.borrow_mut() = p;
            }
            Err(e) => tracing::error!(
                core = self.core,
                "kafka producer failed fatally ({why}) and cannot be replaced: {e}"
            ),
        }
    }

    /// A producer that delivered nothing for `STALL` while messages wait: gives it its
    /// bootstrap brokers again (at most once per `STALL`), in case librdkafka forgot every
    /// broker it knew (see `kateway_kafka_bridge`'s `native` module); also replaces it if it
    /// failed fatally.
    pub fn unstick(&self) {
        self.renew_if_fatal();
        let now = std::time::Instant::now();
        if now.duration_since(self.last_progress.get()) < STALL
            || now.duration_since(self.last_unstick.get()) < STALL
        {
            return;
        }
        self.last_unstick.set(now);
        let added = self.producer.borrow().rebootstrap();
        if added > 0 {
            tracing::warn!(
                core = self.core,
                "kafka producer delivered nothing for {:?} while messages wait: gave it its bootstrap brokers again",
                now.duration_since(self.last_progress.get())
            );
        }
    }

    /// The ordering lane of a partition.
    pub fn lane(&self, key: &PartKey) -> Rc<Lane> {
        if let Some(l) = self.lanes.borrow().get(key) {
            return l.clone();
        }
        let l = Rc::new(Lane::default());
        self.lanes.borrow_mut().insert(key.clone(), l.clone());
        l
    }

    /// Waits (at most `limit`) until no publish is in flight on this core, so that `async=1`
    /// publishes still queued in the producer are delivered, or buffered, before the process
    /// exits.
    pub async fn settle(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline
            && !self.lanes.borrow().values().all(|l| l.idle())
        {
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Opens the breaker (idempotent), logging the transition.
    pub fn open_breaker(&self, why: &str) {
        if !self.breaker_open.replace(true) {
            tracing::warn!(
                core = self.core,
                "kafka unreachable ({why}): buffering publishes locally"
            );
        }
    }

    /// Closes the breaker, logging the transition.
    pub fn close_breaker(&self) {
        if self.breaker_open.replace(false) {
            // Connection failures librdkafka reported during the outage are old news now.
            self.producer().take_brokers_down();
            tracing::warn!(
                core = self.core,
                "kafka reachable again: publishing directly"
            );
        }
    }

    /// Opens the handoff logs of `meta`'s partitions this core owns that exist on disk (a
    /// backlog from before a restart); the others are created when a publish first needs
    /// buffering.
    pub fn apply_topic(&self, meta: &TopicMeta) -> Result<(), kateway_core::Error> {
        let name = self
            .shard
            .interned(&meta.name)
            .unwrap_or_else(|| Rc::from(meta.name.as_str()));
        for p in 0..meta.partitions {
            if meta.owner(p, self.shard.cores()) == self.shard.id && self.buffer.exists(&name, p) {
                self.buffer.open(&name, p)?;
            }
        }
        Ok(())
    }

    /// Adds the buffer, the backlog and the breaker to a metrics snapshot.
    pub fn snapshot(&self, s: &mut crate::metrics::Snapshot) {
        self.buffer.snapshot(s);
        s.kafka_breaker_open = self.breaker_open.get().into();
        s.handoff_bytes = handoff::handoff_bytes(self);
        s.handoff_backlog_messages = self
            .buffer
            .parts
            .borrow()
            .values()
            .map(|p| handoff::unreplayed(&p.borrow()))
            .sum();
    }

    /// Starts the core's Kafka tasks: the buffer's flusher and storage recovery, the replayer,
    /// its watchdog, and on core 0 the metadata refresh.
    pub fn spawn(self: &Rc<Self>, tasks: &crate::tasks::Tasks) {
        tasks.spawn(
            "handoff flusher",
            crate::logset::flusher::run(self.buffer.clone()),
        );
        tasks.spawn(
            "handoff recovery",
            crate::logset::durability::recover(self.buffer.clone()),
        );
        tasks.spawn("replayer", replay::run(self.clone()));
        tasks.spawn("producer watchdog", replay::watchdog(self.clone()));
        if self.shard.id == 0 {
            tasks.spawn("metadata refresh", topics::refresh(self.clone()));
        }
    }
}
