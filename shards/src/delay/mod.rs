//! Delayed messages (docs/delays.md), the same on both backends. A delayed publish appends its
//! messages, with their target and due time, to the delay log: the internal topic
//! `_kgw.<delay.log>.v1` of the backend, so a delay is as durable as any message there. Core 0 of
//! each gateway runs [`Delays`]: it holds the delay-log partitions the reserved group
//! `_kgw.<delay.log>` assigns it (all of them on the embedded store, a share of them per gateway on
//! Kafka), reads them into an [`index::Index`] per partition, and fires each delay when due: it
//! publishes the message to its target, then appends a `fired` mark to the delay log.
//!
//! * A cancel appends a cancel record to the delay log; the holder answers it when it reads it
//!   (after the delay itself, which the log orders before it), so a cancel never races a delay
//!   it has not read yet.
//! * The group's committed offset is the first offset not finished ([`index::Index::watermark`]):
//!   a gateway that opens a partition (after a restart, or taking it over from another on
//!   Kafka) rebuilds the index from there, and fires nothing of it before reading as far as the
//!   log reached when it opened it. A crash between a firing and its mark fires those again:
//!   that is the duplicate window, and each fired message carries its id as the tag
//!   `kgw-delay=<id>`.

mod calls;
mod fire;
pub mod index;

use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::delivery::Subscription;
use crate::request::Fetch;
use crate::shard::{now_ms, Shard};
use bytes::{Bytes, BytesMut};
use index::{Cancelled, Index};
use kateway_core::delay::{Delay, DelayId, Record};
use kateway_core::{Ack, Delivered, Error, ErrorKind, Groups, Item, Reset};
use kateway_proto::command::TopicPath;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The delay log, `_kgw.<delay.log>.v1`.
fn log_path(cfg: &kateway_core::config::Config) -> TopicPath<'_> {
    TopicPath {
        appid: kateway_proto::command::RESERVED_APP,
        topic: &cfg.delay.log,
        ver: "v1",
    }
}

/// The reserved group that holds the delay log's partitions, `_kgw.<delay.log>`.
fn group(shard: &Shard) -> String {
    format!(
        "{}.{}",
        kateway_proto::command::RESERVED_APP,
        shard.cfg().delay.log
    )
}
/// The longest the pump sleeps: delays fire at most this late (plus the firing itself).
const TICK: Duration = Duration::from_millis(50);
/// How long the pump lets new delay-log records gather between reads when nothing is due
/// sooner (a delay is in the index at most this long after it was accepted).
const GATHER: Duration = Duration::from_millis(10);
/// Delays one firing round takes per partition.
const ROUND: usize = 1000;
/// Recently settled ids remembered, so that a cancel after firing is told apart from one of an
/// id cancelled already.
const RECENT: usize = 65_536;

/// How far the delay clock runs ahead of the system clock (`POST /v1/debug/clock`).
static SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// The delay clock: ms since the epoch.
pub fn now() -> i64 {
    now_ms() + SKEW_MS.load(Ordering::Relaxed)
}

/// Moves the delay clock forward by `ms` (tests only); answers the skew now.
pub fn advance(ms: i64) -> i64 {
    let step = |s: i64| Some(s.saturating_add(ms));
    let before = SKEW_MS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step)
        .unwrap_or_default();
    before.saturating_add(ms)
}

/// The delay log's topic, created (with `delay.partitions` partitions, kept for
/// `delay.max_delay` plus 7 days) if it does not exist yet: by the first delayed publish, so a
/// gateway that never delays anything has no delay log.
pub async fn log_topic(shard: &Shard, backend: &Backend) -> Result<Rc<LocalTopic>, Error> {
    let cfg = shard.cfg();
    let d = &cfg.delay;
    let retention = d.max_delay.0.as_secs() / 3600 + 7 * 24;
    crate::admin::ensure(
        shard,
        backend,
        &log_path(&cfg),
        d.partitions,
        Some(retention),
    )
    .await
}

/// A call to core 0's [`Delays`].
pub enum DelayCall {
    Cancel {
        id: String,
        partition: u32,
    },
    Peek {
        id: String,
        partition: u32,
        due: i64,
    },
    List {
        topic: String,
        max: usize,
    },
}

/// What became of a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It will not fire (204).
    Cancelled,
    /// It fired, or is firing (409).
    Fired,
    /// No such pending delay (404).
    Unknown,
    /// The cancel is in the delay log, and the gateway holding the delay's partition applies
    /// it (202): another gateway holds it, or it did not answer in time.
    Requested,
}

/// The answer to a [`DelayCall`].
pub enum DelayAnswer {
    Cancel(CancelOutcome),
    /// `None`: not pending here; `held`: whether this gateway holds its partition.
    Peek {
        found: Option<Delay>,
        held: bool,
    },
    List {
        delays: Vec<(Bytes, Delay)>,
        held: usize,
        partitions: u32,
    },
}

/// A due delay taken for firing: its id, log offset and message.
type Due = (Bytes, u64, Delay);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    Fired,
    Cancelled,
}

/// Core 0's delays: the partitions of the delay log this gateway holds, and their firing.
pub struct Delays {
    shard: Rc<Shard>,
    backend: Backend,
    topic: RefCell<Option<Rc<LocalTopic>>>,
    parts: RefCell<BTreeMap<u32, Index>>,
    waiters: RefCell<FxHashMap<Bytes, Vec<flume::Sender<CancelOutcome>>>>,
    recent: RefCell<(VecDeque<Bytes>, FxHashMap<Bytes, Settled>)>,
    saved: RefCell<FxHashMap<u32, u64>>,
}

impl Delays {
    pub fn new(shard: Rc<Shard>, backend: Backend) -> Rc<Self> {
        let root = shard.cfg().store.data_dir.join("delays");
        // A cache of the log for one process only: rebuilt from the log.
        let _ = std::fs::remove_dir_all(&root);
        Rc::new(Self {
            shard,
            backend,
            topic: RefCell::new(None),
            parts: RefCell::new(BTreeMap::new()),
            waiters: RefCell::default(),
            recent: RefCell::default(),
            saved: RefCell::default(),
        })
    }

    fn horizon(&self) -> i64 {
        self.shard.cfg().delay.memory_horizon.0.as_millis() as i64
    }

    /// Sets the gauges of pending delays.
    fn gauges(&self) {
        let parts = self.parts.borrow();
        let m = &self.shard.metrics;
        m.delays_pending_memory
            .set(parts.values().map(|p| p.in_memory() as u64).sum());
        m.delays_pending_memory_bytes
            .set(parts.values().map(|p| p.bytes() as u64).sum());
        m.delays_pending_disk
            .set(parts.values().map(Index::on_disk).sum());
    }

    /// The pump: holds the delay log's partitions, reads them into their indexes and fires what
    /// is due, until the core stops.
    pub async fn run(self: Rc<Self>) {
        let mut sub = None::<Subscription>;
        let mut last_held = None::<Instant>;
        let mut last_save = Instant::now();
        let mut warned = false;
        let interval = self.shard.cfg().queue.checkpoint_interval.0;
        loop {
            if self.shard.stopping() || self.shard.shutdown.get() {
                break;
            }
            let cached = self.topic.borrow().clone();
            let Some(topic) = cached else {
                // The first delayed publish creates the delay log; until then there is
                // nothing to hold.
                let cfg = self.shard.cfg();
                match self.backend.resolve(&log_path(&cfg)).await {
                    Ok(t) => {
                        *self.topic.borrow_mut() = Some(t.clone());
                        sub = Some(
                            Subscription::new(
                                self.shard.clone(),
                                self.backend.clone(),
                                t.clone(),
                                Fetch {
                                    topic: t.name.to_string(),
                                    group: group(&self.shard),
                                    max: 1000,
                                    max_bytes: self.shard.cfg().subscribe.max_batch_bytes.0
                                        as usize,
                                    reset: Reset::Oldest,
                                    auto_ack: false,
                                    tags: Vec::new(),
                                },
                            )
                            .internal(),
                        );
                    }
                    Err(e) => {
                        if !warned && e.kind() != ErrorKind::UnknownTopic {
                            tracing::warn!("the delay log is not available yet: {e}");
                            warned = true;
                        }
                        self.shard.sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            if last_held.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match self.refresh_held(&topic).await {
                    Ok(()) => last_held = Some(Instant::now()),
                    Err(e) => tracing::debug!("delay log partitions: {e}"),
                }
            }
            let now = now();
            for ix in self.parts.borrow_mut().values_mut() {
                ix.refill(now);
            }
            while self.fire(&topic).await {}
            self.gauges();
            if last_save.elapsed() >= interval {
                self.save(&topic).await;
                last_save = Instant::now();
            }
            let next = self
                .parts
                .borrow()
                .values()
                .filter(|ix| ix.ready())
                .filter_map(Index::next_due)
                .min();
            let wait = next.map_or(TICK, |d| {
                Duration::from_millis((d - now).clamp(0, TICK.as_millis() as i64) as u64)
            });
            let Some(s) = &sub else { continue };
            if self.parts.borrow().is_empty() {
                self.shard.sleep(TICK).await;
                continue;
            }
            match s.next(Instant::now() + wait).await {
                Ok(b) => {
                    drop(b.held);
                    let read = !b.records.is_empty();
                    self.take(&topic, b.records).await;
                    if read && wait >= GATHER {
                        // Under a stream of delayed publishes, read them in batches rather
                        // than waking for each one.
                        self.shard.sleep(GATHER).await;
                    }
                }
                Err(e) => {
                    tracing::debug!("delay log read: {e}");
                    self.shard.sleep(TICK).await;
                }
            }
        }
        let cached = self.topic.borrow().clone();
        if let Some(t) = cached {
            self.save(&t).await;
        }
    }

    /// Follows the group's assignment: closes the partitions that moved away (their cancels
    /// waiting here are left to the new holder) and opens the new ones.
    async fn refresh_held(&self, topic: &Rc<LocalTopic>) -> Result<(), Error> {
        let held = self
            .backend
            .queue_partitions(topic, &group(&self.shard), Reset::Oldest)
            .await?;
        let gone: Vec<u32> = self
            .parts
            .borrow()
            .keys()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        for p in gone {
            if let Some(ix) = self.parts.borrow_mut().remove(&p) {
                ix.close();
            }
            self.saved.borrow_mut().remove(&p);
            self.waiters.borrow_mut().retain(|id, tx| {
                if DelayId::peek(id).is_some_and(|(dp, _)| u32::from(dp) == p) {
                    for t in tx.drain(..) {
                        let _ = t.send(CancelOutcome::Requested);
                    }
                    return false;
                }
                true
            });
            tracing::info!(
                partition = p,
                "delay log partition moved to another gateway"
            );
        }
        for p in held {
            if !self.parts.borrow().contains_key(&p) {
                self.open(topic, p).await?;
            }
        }
        Ok(())
    }

    /// Opens partition `p`: its index starts empty at the group's committed offset, and the
    /// group's read position moves there.
    async fn open(&self, topic: &Rc<LocalTopic>, p: u32) -> Result<(), Error> {
        let (committed, _) = self
            .backend
            .queue_restore(topic, p, &group(&self.shard), Reset::Oldest)
            .await?;
        let info = self.backend.info(topic, &Groups::None).await?;
        let info = info.iter().find(|i| i.partition == p);
        let (oldest, end) = info.map_or((0, 0), |i| (i.oldest, i.newest));
        let start = committed.unwrap_or(oldest).max(oldest);
        let dir = self
            .shard
            .cfg()
            .store
            .data_dir
            .join("delays")
            .join(p.to_string());
        let ix = Index::new(dir, self.horizon(), start, end);
        tracing::info!(partition = p, start, end, "delay log partition opened");
        self.parts.borrow_mut().insert(p, ix);
        Ok(())
    }

    /// Reads delay-log records into their indexes.
    async fn take(&self, topic: &Rc<LocalTopic>, records: Vec<Delivered>) {
        let mut reread: Vec<u32> = Vec::new();
        for r in records {
            if reread.contains(&r.partition) {
                continue;
            }
            if !self.parts.borrow().contains_key(&r.partition) {
                // Not opened yet: opening moves the read position to where it starts.
                if let Err(e) = self.open(topic, r.partition).await {
                    tracing::debug!(
                        partition = r.partition,
                        "delay log partition not opened: {e}"
                    );
                }
                reread.push(r.partition);
                continue;
            }
            self.apply(r);
        }
        for ix in self.parts.borrow().values() {
            ix.flush();
        }
    }

    /// Applies one record to its partition's index.
    fn apply(&self, r: Delivered) {
        let now = now();
        let mut parts = self.parts.borrow_mut();
        let Some(ix) = parts.get_mut(&r.partition) else {
            return;
        };
        if r.offset < ix.next {
            return;
        }
        ix.next = r.offset + 1;
        let Some((_, due)) = DelayId::peek(&r.key) else {
            tracing::warn!(
                partition = r.partition,
                offset = r.offset,
                "a delay log record has no delay id"
            );
            return;
        };
        match Record::decode(&r.value) {
            Ok(Record::Delay(d)) => ix.add(now, r.offset, r.key, d.deliver_at_ms, r.value),
            Ok(Record::Fired) => {
                ix.remove(&r.key, due);
                self.settle(&r.key, Settled::Fired);
            }
            Ok(Record::Cancel) => {
                let outcome = match ix.remove(&r.key, due) {
                    Cancelled::Yes => {
                        self.settle(&r.key, Settled::Cancelled);
                        crate::metrics::inc(&self.shard.metrics.delays_cancelled_total);
                        CancelOutcome::Cancelled
                    }
                    Cancelled::Firing => CancelOutcome::Fired,
                    Cancelled::NotPending => match self.recent.borrow().1.get(&r.key) {
                        Some(Settled::Fired) => CancelOutcome::Fired,
                        Some(Settled::Cancelled) => CancelOutcome::Unknown,
                        None if due <= now => CancelOutcome::Fired,
                        None => CancelOutcome::Unknown,
                    },
                };
                if let Some(tx) = self.waiters.borrow_mut().remove(&r.key) {
                    for t in tx {
                        let _ = t.send(outcome);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    partition = r.partition,
                    offset = r.offset,
                    "unreadable delay log record: {e}"
                )
            }
        }
    }

    fn settle(&self, id: &Bytes, how: Settled) {
        let mut r = self.recent.borrow_mut();
        if r.1.insert(id.clone(), how).is_none() {
            r.0.push_back(id.clone());
        }
        while r.0.len() > RECENT {
            if let Some(old) = r.0.pop_front() {
                r.1.remove(&old);
            }
        }
    }

    /// Commits each partition's watermark where it moved.
    async fn save(&self, topic: &Rc<LocalTopic>) {
        let marks: Vec<(u32, u64)> = self
            .parts
            .borrow()
            .iter()
            .filter(|(_, ix)| ix.ready())
            .map(|(&p, ix)| (p, ix.watermark()))
            .filter(|(p, wm)| self.saved.borrow().get(p) != Some(wm))
            .collect();
        for (p, wm) in marks {
            match self
                .backend
                .queue_save(topic, p, &group(&self.shard), wm, Vec::new())
                .await
            {
                Ok(()) => {
                    self.saved.borrow_mut().insert(p, wm);
                }
                Err(e) => tracing::debug!(partition = p, "delay log watermark not committed: {e}"),
            }
        }
    }
}
