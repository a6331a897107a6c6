//! The Kafka backend. Topics, partitions, offsets and consumer groups live in an Apache Kafka
//! cluster; the gateway keeps only what makes it fast and available:
//!
//! * per core, its own producers ([`KafkaCore`]), and for every partition it owns a hinted-handoff
//!   log on local disk (the embedded log engine, under `<data>/handoff`) with a durable replay
//!   cursor ([`handoff`], [`replay`]);
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
pub mod replay;
pub mod topics;

use crate::event::Event;
use crate::shard::{Map, PartKey};
use kateway_core::config::Config;
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
}

/// Helper threads for blocking Kafka calls.
const JOB_THREADS: usize = 2;
/// Blocking calls that may wait for a helper; more are refused with 429 (a slow or unreachable
/// Kafka must not let status requests pile up without bound).
const JOB_QUEUE: usize = 256;

impl KafkaShared {
    /// Creates the admin client and starts the helper threads. No connection is made yet.
    pub fn start(cfg: &Config) -> Result<Arc<Self>, String> {
        let k = &cfg.kafka;
        let mut bridge = BridgeConfig::new(k.brokers.clone());
        bridge.linger = k.linger.0;
        bridge.message_timeout = k.produce_timeout.0;
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
        Ok(Arc::new(Self {
            bridge,
            admin,
            replication: k.replication_factor,
            jobs: tx,
            groups: Mutex::new(HashMap::new()),
        }))
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

/// Ordering of one partition's publishes on its owner core. Every publish takes a ticket and
/// finishes (delivered, or appended to the handoff log) strictly in ticket order, so a message
/// that Kafka rejected while later ones were in flight is buffered before them.
#[derive(Default)]
pub struct Lane {
    next: Cell<u64>,
    done: Cell<u64>,
    ev: Event,
    /// Publishes of this partition on their way into the handoff log.
    buffering: Cell<usize>,
}

impl Lane {
    /// Takes the next ticket.
    pub fn ticket(&self) -> u64 {
        let t = self.next.get();
        self.next.set(t + 1);
        t
    }

    /// Waits until every earlier ticket finished.
    pub async fn turn(&self, t: u64) {
        loop {
            let seen = self.ev.epoch();
            if self.done.get() >= t {
                return;
            }
            self.ev.wait(seen).await;
        }
    }

    /// A publish of this partition is on its way into the handoff log.
    pub fn begin_buffering(&self) {
        self.buffering.set(self.buffering.get() + 1);
    }

    /// It is in the log (or failed to get there).
    pub fn end_buffering(&self) {
        self.buffering.set(self.buffering.get() - 1);
    }

    /// Whether a publish is on its way into the handoff log.
    pub fn buffering(&self) -> bool {
        self.buffering.get() > 0
    }

    /// Whether every publish that took a ticket has finished.
    pub fn idle(&self) -> bool {
        self.done.get() == self.next.get()
    }

    /// Marks ticket `t` finished (after [`Lane::turn`]).
    pub fn finish(&self, t: u64) {
        self.done.set(t + 1);
        self.ev.notify();
    }
}

/// One core's Kafka state.
pub struct KafkaCore {
    pub shared: Arc<KafkaShared>,
    pub producer: Producer,
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

impl KafkaCore {
    /// Creates the core's producers.
    pub fn new(
        shared: Arc<KafkaShared>,
        cfg: &Config,
        core: usize,
        cores: usize,
    ) -> Result<Self, String> {
        let producer = Producer::new(&shared.bridge, core).map_err(|e| e.to_string())?;
        Ok(Self {
            shared,
            producer,
            breaker_open: Cell::new(false),
            lanes: Default::default(),
            replay_wake: Event::default(),
            drained: Default::default(),
            groups: Default::default(),
            budget: cfg.kafka.handoff_max_bytes.0 / cores.max(1) as u64,
        })
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
    pub fn open_breaker(&self, core: usize, why: &str) {
        if !self.breaker_open.replace(true) {
            tracing::warn!(
                core,
                "kafka unreachable ({why}): buffering publishes locally"
            );
        }
    }

    /// Closes the breaker, logging the transition.
    pub fn close_breaker(&self, core: usize) {
        if self.breaker_open.replace(false) {
            tracing::info!(core, "kafka reachable again: publishing directly");
        }
    }
}
