//! Idempotent publish (`Idempotency-Key`), kept by core 0: the table of recent keys
//! ([`kateway_core::idem`]) and the log that makes it durable and shared.
//!
//! * Embedded: `<data>/meta/idempotency.log` ([`MetaLog`]). A claim lives in memory; the outcome
//!   of a publish is appended (fsynced) before the publish is answered, so a retry after a
//!   restart within the window is answered from the log.
//! * Kafka: the topic `kafka.idempotency_topic`, which every gateway follows from its start. A
//!   claim is produced to it and counts once this gateway's follower has read up to it: then
//!   every earlier claim of the key has been applied, and the log's order says who won, the same
//!   on every gateway.
//!
//! Other cores reach it with [`Request::Idem`].

use crate::backend::Backend;
use crate::event::Event;
use crate::request::{Answer, Request};
use crate::shard::{now_ms, Shard};
use kateway_core::config::{Backend as Kind, Config};
use kateway_core::idem::{Decision, Record, Results, Table};
use kateway_core::metalog::MetaLog;
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::metatopic::{self, MetaEvent};
use kateway_kafka_bridge::BridgeConfig;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a publish with a key goes on.
#[derive(Debug, Clone)]
pub enum Begun {
    /// This request holds the key (as `owner`): publish, then [`IdemCall::Finish`].
    Proceed(u64),
    /// Published before: answer these results.
    Replay(Results),
}

/// A call to core 0's table.
pub enum IdemCall {
    Begin {
        key: String,
        hash: [u8; 32],
    },
    Finish {
        key: String,
        hash: [u8; 32],
        owner: u64,
        results: Results,
    },
    Release {
        key: String,
        owner: u64,
    },
}

enum Store {
    File(RefCell<MetaLog>),
    Kafka { topic: String },
}

/// What core 0 starts the table with.
pub struct IdemInit {
    store: Store,
    records: Vec<Record>,
    follow: Option<flume::Receiver<MetaEvent>>,
    stop: Arc<AtomicBool>,
}

/// Opens the configured backend's idempotency log: reads the file, or starts following the
/// topic (creating it if it is missing and Kafka answers).
pub fn open(cfg: &Config, bridge: Option<&BridgeConfig>) -> Result<IdemInit, String> {
    let stop = Arc::new(AtomicBool::new(false));
    match (cfg.store.backend, bridge) {
        (Kind::Kafka, Some(b)) => {
            let topic = cfg.kafka.idempotency_topic.clone();
            let keep_ms = 2 * cfg.idempotency.window.0.as_millis() as u64;
            let (tx, rx) = flume::unbounded();
            // Created and followed off the start path: Kafka may not answer yet.
            let (b2, t2, s2) = (b.clone(), topic.clone(), stop.clone());
            let replicas = cfg.kafka.replication_factor;
            std::thread::Builder::new()
                .name("kateway-idem-start".into())
                .spawn(move || {
                    if let Err(e) = metatopic::ensure_log(&b2, &t2, replicas, keep_ms) {
                        tracing::warn!(
                            topic = t2,
                            "cannot create the idempotency topic yet ({e}); following it anyway"
                        );
                    }
                    if let Err(e) = metatopic::follow(&b2, &t2, s2, move |ev| tx.send(ev).is_ok()) {
                        tracing::error!(topic = t2, "cannot follow the idempotency topic: {e}");
                    }
                })
                .map_err(|e| format!("cannot start the idempotency follower: {e}"))?;
            Ok(IdemInit {
                store: Store::Kafka { topic },
                records: Vec::new(),
                follow: Some(rx),
                stop,
            })
        }
        _ => {
            let path = cfg.store.data_dir.join("meta").join("idempotency.log");
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let opened =
                MetaLog::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            if opened.dropped_bytes > 0 {
                tracing::warn!(file = %path.display(), bytes = opened.dropped_bytes, "dropped a torn end of the idempotency log");
            }
            let records = opened
                .records
                .iter()
                .filter_map(|r| Record::decode(r))
                .collect();
            Ok(IdemInit {
                store: Store::File(RefCell::new(opened.log)),
                records,
                follow: None,
                stop,
            })
        }
    }
}

/// Core 0's table.
pub struct Idem {
    table: RefCell<Table>,
    store: Store,
    /// Kafka: the offset through which the topic's records are applied.
    applied: Cell<i64>,
    applied_event: Event,
    max_keys: usize,
    stop: Arc<AtomicBool>,
}

fn owner_nonce() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b) | 1
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::KafkaUnavailable,
        format!("the idempotency log cannot be written now: {e}"),
    )
}

impl Idem {
    /// The table, with the records read at start applied; and the Kafka follower's stream.
    pub fn new(init: IdemInit, cfg: &Config) -> (Rc<Self>, Option<flume::Receiver<MetaEvent>>) {
        let i = &cfg.idempotency;
        let mut table = Table::new(
            i.window.0.as_millis() as i64,
            i.claim_timeout.0.as_millis() as i64,
        );
        let now = now_ms();
        for r in &init.records {
            table.apply(r, now);
        }
        table.expire(now);
        if let Store::File(log) = &init.store {
            let mut log = log.borrow_mut();
            if log.records() > 2 * table.len() + 1000 {
                let live: Vec<Vec<u8>> = table.done_records().iter().map(Record::encode).collect();
                let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
                if let Err(e) = log.rewrite(&refs) {
                    tracing::warn!("cannot compact the idempotency log: {e}");
                }
            }
        }
        let idem = Rc::new(Self {
            table: RefCell::new(table),
            store: init.store,
            applied: Cell::new(-1),
            applied_event: Event::default(),
            max_keys: i.max_keys as usize,
            stop: init.stop,
        });
        (idem, init.follow)
    }

    /// Kafka: applies the topic's records as the follower reads them, until the core stops.
    pub async fn follow(self: Rc<Self>, shard: Rc<Shard>, rx: flume::Receiver<MetaEvent>) {
        let seen = shard.stop_event.epoch();
        loop {
            let ev = monoio::select! {
                ev = rx.recv_async() => ev,
                _ = shard.stop_event.wait(seen) => break,
            };
            let Ok(ev) = ev else { break };
            match ev {
                MetaEvent::Record { offset, value } => {
                    if let Some(r) = value.as_deref().and_then(Record::decode) {
                        let now = now_ms();
                        let mut t = self.table.borrow_mut();
                        t.apply(&r, now);
                        t.expire(now);
                    }
                    self.applied.set(self.applied.get().max(offset));
                    self.applied_event.notify();
                }
                MetaEvent::CaughtUp => {}
                MetaEvent::Trouble(e) => tracing::debug!("idempotency topic: {e}"),
            }
        }
        self.stop.store(true, Ordering::Release);
    }

    /// Writes `r` to the log (durably) and applies it.
    async fn write(&self, backend: &Backend, r: &Record) -> Result<Option<i64>, Error> {
        let offset = match &self.store {
            Store::File(log) => {
                if !matches!(r, Record::Claim { .. } | Record::Release { .. }) {
                    log.borrow_mut().append(&r.encode()).map_err(|e| {
                        Error::new(
                            ErrorKind::StorageFailed,
                            format!("the idempotency log cannot be written: {e}"),
                        )
                    })?;
                }
                None
            }
            Store::Kafka { topic } => {
                let Backend::Kafka(k) = backend else {
                    return Err(Error::new(ErrorKind::Internal, "no Kafka producer"));
                };
                let (_, offset) = k
                    .write_own(topic, b"", &r.encode())
                    .await
                    .map_err(unavailable)?;
                Some(offset)
            }
        };
        // A claim on Kafka counts where the log puts it: the follower applies it.
        if offset.is_none() || !matches!(r, Record::Claim { .. }) {
            self.table.borrow_mut().apply(r, now_ms());
        }
        Ok(offset)
    }

    fn answer(&self, key: &str, hash: &[u8; 32]) -> Result<Option<Begun>, Error> {
        match self.table.borrow().decide(key, hash, now_ms()) {
            Decision::Claim => Ok(None),
            Decision::Replay(r) => Ok(Some(Begun::Replay(r))),
            Decision::Mismatch => Err(Error::new(
                ErrorKind::IdempotencyMismatch,
                "this Idempotency-Key was used for a different publish",
            )),
            Decision::InProgress => Err(Error::new(
                ErrorKind::IdempotencyInProgress,
                "a publish with this Idempotency-Key is in progress",
            )
            .with_retry_after(1)),
        }
    }

    /// Claims `key` for a request with body hash `hash`, or says how it was answered before.
    pub async fn begin(
        &self,
        backend: &Backend,
        key: String,
        hash: [u8; 32],
    ) -> Result<Begun, Error> {
        if let Some(b) = self.answer(&key, &hash)? {
            return Ok(b);
        }
        {
            let mut t = self.table.borrow_mut();
            t.expire(now_ms());
            if t.len() >= self.max_keys {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    "too many idempotency keys are remembered (idempotency.max_keys)",
                )
                .with_retry_after(1));
            }
        }
        let owner = owner_nonce();
        let claim = Record::Claim {
            key: key.clone(),
            hash,
            owner,
            at_ms: now_ms(),
        };
        if let Some(offset) = self.write(backend, &claim).await? {
            // Counts once every record before it has been applied: wait for the follower.
            let wait = async {
                while self.applied.get() < offset {
                    let seen = self.applied_event.epoch();
                    if self.applied.get() >= offset {
                        break;
                    }
                    self.applied_event.wait(seen).await;
                }
            };
            if monoio::time::timeout(Duration::from_secs(10), wait)
                .await
                .is_err()
            {
                return Err(unavailable(
                    "the idempotency topic is not read back in time",
                ));
            }
        }
        if self.table.borrow().owner(&key, now_ms()) == Some(owner) {
            return Ok(Begun::Proceed(owner));
        }
        // Another claim came first.
        match self.answer(&key, &hash)? {
            Some(b) => Ok(b),
            None => Err(Error::new(
                ErrorKind::IdempotencyInProgress,
                "a publish with this Idempotency-Key is in progress",
            )
            .with_retry_after(1)),
        }
    }

    /// Runs a call (from any core).
    pub async fn call(&self, backend: &Backend, c: IdemCall) -> Result<Option<Begun>, Error> {
        match c {
            IdemCall::Begin { key, hash } => self.begin(backend, key, hash).await.map(Some),
            IdemCall::Finish {
                key,
                hash,
                owner,
                results,
            } => {
                let r = Record::Done {
                    key,
                    hash,
                    owner,
                    at_ms: now_ms(),
                    results,
                };
                self.write(backend, &r).await.map(|_| None)
            }
            IdemCall::Release { key, owner } => {
                let r = Record::Release { key, owner };
                self.write(backend, &r).await.map(|_| None)
            }
        }
    }
}

/// Runs `c` on core 0's table, from this core.
pub async fn call(core: &crate::node::Core, c: IdemCall) -> Result<Option<Begun>, Error> {
    if let Some(idem) = core.idem.get() {
        return idem.call(&core.backend, c).await;
    }
    match core.shard.mesh.call(0, Request::Idem(c)).await? {
        Answer::Idem(r) => r,
        _ => Err(Error::new(
            ErrorKind::Internal,
            "unexpected answer from core 0",
        )),
    }
}
