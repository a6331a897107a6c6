//! One group's queue on one topic, on the core that owns it in this gateway: a
//! [`PartitionQueue`] per partition with the records it holds, a pump task that reads the
//! group (the backend's ordinary group read) into the windows, moves dead letters, expires
//! leases and checkpoints, and the lease and settle calls.
//!
//! The pump never abandons a read halfway (a read's records are always offered), so the group's
//! read position and the windows agree. A partition whose window is full keeps its read records
//! in a short overflow, and the pump reads no more while that overflow or the records held
//! reach their bounds.
//!
//! Here: the group's state and the opening of windows; `pump` reads records into them;
//! `settle` leases and settles.

mod pump;
mod settle;

use super::records::Records;
use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::event::Event;
use crate::shard::{now_ms, Shard};
use kateway_core::queue::{
    Checkpoint, Committed, Entered, PartitionQueue, Policy, QueueError, ReceiptKey,
};
use kateway_core::{Delivered, Error, Reset};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Records a pump reads at a time.
const READ_BATCH: usize = 500;
/// Records read past full windows that the pump keeps before it stops reading.
const OVERFLOW: usize = 4096;
/// Deliverable messages the pump keeps read ahead (beyond them it reads when leases take some):
/// a group nobody leases from holds little, whatever its backlog.
const PREFETCH: usize = 1000;
/// The pump's longest sleep: lease expiry and dead letters are handled at least this often.
const TICK: Duration = Duration::from_millis(200);

/// One partition's window and the records it holds.
struct Part {
    q: PartitionQueue,
    records: Records,
    /// The last error a consumer reported per offset (for dead letters).
    errors: FxHashMap<u64, String>,
    dirty: bool,
}

impl Part {
    /// Offers read record `r` to the window: held if it entered as a message to deliver
    /// (`added` set), dropped if it is done or known already (its payload off `bytes`), or
    /// handed back when the window is full.
    fn offer(
        &mut self,
        r: Delivered,
        now: i64,
        bytes: &mut usize,
        added: &mut bool,
    ) -> Option<Delivered> {
        match self.q.offer(r.offset, now) {
            Ok(Entered::Ready | Entered::Held | Entered::Dead) => {
                self.records.insert(r);
                *added = true;
                None
            }
            Ok(e) => {
                if e == Entered::Done {
                    self.dirty = true;
                }
                *bytes = bytes.saturating_sub(r.value.len());
                None
            }
            Err(_) => Some(r),
        }
    }
}

/// A group's queue on one topic.
pub struct QueueGroup {
    shard: Rc<Shard>,
    backend: Backend,
    pub topic: Rc<LocalTopic>,
    pub group: String,
    fingerprint: u32,
    key: Rc<ReceiptKey>,
    /// The policy in force, and the tenancy change epoch it was looked up at.
    policy: Cell<Policy>,
    policy_epoch: Cell<u64>,
    capacity: usize,
    reset: Reset,
    parts: RefCell<BTreeMap<u32, Part>>,
    /// Partitions this gateway keeps queues for (all but those another member holds on Kafka),
    /// once asked.
    held: RefCell<Vec<u32>>,
    refreshed: Cell<bool>,
    /// Per partition, records read past its full window (or before it opened), in order.
    overflow: RefCell<BTreeMap<u32, VecDeque<Delivered>>>,
    bytes: Cell<usize>,
    /// Something became deliverable, or room was made.
    pub changed: Event,
    /// Settles made room in the windows or the read-ahead budget (what a pump without room
    /// waits for).
    room: Event,
    /// Leases or settles in progress, and when the group was last used.
    users: Cell<usize>,
    /// `(partition, offset)` of messages being copied to the dead-letter topic by a bury: no
    /// other bury, nack or extend of them until it ends.
    burying: RefCell<FxHashSet<(u32, u64)>>,
    last_used: Cell<Instant>,
    /// Turn for fair leasing across partitions.
    turn: Cell<u32>,
    /// The pump has ended: the group is being dropped.
    pub closed: Cell<bool>,
}

fn generation() -> u32 {
    // Seconds since the epoch: later owners get higher generations.
    (now_ms() / 1000).clamp(1, u32::MAX as i64) as u32
}

impl QueueGroup {
    pub fn new(
        shard: Rc<Shard>,
        backend: Backend,
        topic: Rc<LocalTopic>,
        group: String,
        key: Rc<ReceiptKey>,
        reset: Reset,
    ) -> Self {
        let q = &shard.cfg().queue;
        let policy_epoch = shard.tenancy.changed.epoch();
        let view = shard.tenancy.view();
        let policy = super::policy::resolve(
            q,
            view.snap.queue_policy(&group),
            u64::from(kateway_core::queue::fingerprint(&topic.name, &group)),
        );
        Self {
            fingerprint: kateway_core::queue::fingerprint(&topic.name, &group),
            capacity: q.window as usize,
            shard,
            backend,
            topic,
            group,
            key,
            policy: Cell::new(policy),
            policy_epoch: Cell::new(policy_epoch),
            reset,
            parts: RefCell::new(BTreeMap::new()),
            held: RefCell::new(Vec::new()),
            refreshed: Cell::new(false),
            overflow: RefCell::new(BTreeMap::new()),
            bytes: Cell::new(0),
            changed: Event::default(),
            room: Event::default(),
            users: Cell::new(0),
            burying: RefCell::new(FxHashSet::default()),
            last_used: Cell::new(Instant::now()),
            turn: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    /// Whether the topic this queue reads is still the catalog's (not deleted, nor deleted and
    /// created again).
    pub fn current(&self) -> bool {
        self.shard
            .topic(&self.topic.name)
            .is_ok_and(|t| t.created_ms == self.topic.created_ms)
    }

    fn max_bytes(&self) -> usize {
        self.shard.cfg().queue.max_window_bytes.0 as usize
    }

    /// Puts the group's policy in force anew if the tenancy metadata changed since it was
    /// looked up (a policy set or removed through the API).
    fn refresh_policy(&self) {
        let epoch = self.shard.tenancy.changed.epoch();
        if epoch == self.policy_epoch.get() {
            return;
        }
        self.policy_epoch.set(epoch);
        let view = self.shard.tenancy.view();
        let p = super::policy::resolve(
            &self.shard.cfg().queue,
            view.snap.queue_policy(&self.group),
            self.policy.get().backoff.seed,
        );
        if p != self.policy.get() {
            self.policy.set(p);
            let now = now_ms();
            for part in self.parts.borrow_mut().values_mut() {
                part.q.set_policy(p, now);
                part.dirty = true;
            }
        }
    }

    /// Marks the group in use until the guard drops.
    fn used(&self) -> Use<'_> {
        self.refresh_policy();
        self.users.set(self.users.get() + 1);
        self.last_used.set(Instant::now());
        Use(self)
    }

    /// Opens the window of partition `p` if this gateway keeps it and it is not open yet,
    /// restored from the backend (committed offset and checkpoint). Answers whether the
    /// partition is open, and whether opening it moved the group's read position (records of
    /// it read before are then read again).
    async fn ensure(&self, p: u32) -> Result<(bool, bool), Error> {
        if self.parts.borrow().contains_key(&p) {
            return Ok((true, false));
        }
        if !self.refreshed.get() {
            self.refresh_held().await?;
        }
        if !self.held.borrow().contains(&p) {
            return Ok((false, false));
        }
        let (committed, cp) = self
            .backend
            .queue_restore(&self.topic, p, &self.group, self.reset)
            .await?;
        if self.parts.borrow().contains_key(&p) {
            // Opened meanwhile; this restore moved the read position back all the same.
            return Ok((true, committed.is_some()));
        }
        let cp = cp.and_then(|b| match Checkpoint::decode(&b) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(topic = %self.topic.name, group = %self.group, partition = p, "queue checkpoint unreadable, starting clean: {e}");
                None
            }
        });
        let gen = generation().max(cp.as_ref().map_or(0, |c| c.generation.saturating_add(1)));
        let start = committed.unwrap_or(u64::MAX);
        let (q, recovery) = match committed {
            Some(offset) => PartitionQueue::restore(
                cp.as_ref(),
                Committed {
                    offset,
                    generation: 0,
                },
                self.policy.get(),
                self.capacity,
                gen,
            ),
            // No committed offset: the window starts at the first record read.
            None => (
                PartitionQueue::new(self.policy.get(), self.capacity, 0, gen),
                kateway_core::queue::Recovery::NoCheckpoint,
            ),
        };
        tracing::debug!(topic = %self.topic.name, group = %self.group, partition = p, start, ?recovery, "queue window opened");
        if committed.is_some() {
            // Records of the partition read before the restore are read again from its start.
            self.drop_records_of(p);
        }
        self.parts.borrow_mut().insert(
            p,
            Part {
                q,
                records: Records::default(),
                errors: FxHashMap::default(),
                dirty: false,
            },
        );
        Ok((true, committed.is_some()))
    }

    fn drop_records_of(&self, p: u32) {
        if let Some(q) = self.overflow.borrow_mut().remove(&p) {
            let freed: usize = q.iter().map(|r| r.value.len()).sum();
            self.bytes.set(self.bytes.get().saturating_sub(freed));
        }
    }

    /// Messages read and not leased yet: deliverable in the windows, and waiting in the overflow.
    fn deliverable(&self) -> usize {
        let pending: usize = self
            .parts
            .borrow()
            .values()
            .map(|p| p.q.stats().pending)
            .sum();
        pending + self.overflowed()
    }

    /// Records waiting in the overflow.
    fn overflowed(&self) -> usize {
        self.overflow.borrow().values().map(VecDeque::len).sum()
    }

    /// Closes the windows of partitions this gateway no longer keeps (another member of the
    /// group took them on Kafka): their leases end here, and the new owner restores them.
    async fn refresh_held(&self) -> Result<(), Error> {
        let now = self
            .backend
            .queue_partitions(&self.topic, &self.group, self.reset)
            .await?;
        let gone: Vec<u32> = self
            .parts
            .borrow()
            .keys()
            .copied()
            .filter(|p| !now.contains(p))
            .collect();
        for p in gone {
            if let Some(part) = self.parts.borrow_mut().remove(&p) {
                let freed: usize = part.records.bytes();
                self.bytes.set(self.bytes.get().saturating_sub(freed));
            }
            self.drop_records_of(p);
            tracing::debug!(topic = %self.topic.name, group = %self.group, partition = p, "queue window closed: partition moved");
        }
        *self.held.borrow_mut() = now;
        self.refreshed.set(true);
        Ok(())
    }

    /// Applies `f` to the window of `p` and drops the record at `o` if it is done then.
    fn finish(
        &self,
        p: u32,
        o: u64,
        f: impl FnOnce(&mut PartitionQueue) -> Result<(), QueueError>,
    ) {
        let mut parts = self.parts.borrow_mut();
        let Some(part) = parts.get_mut(&p) else {
            return;
        };
        let _ = f(&mut part.q);
        self.forget_if_done(part, o);
    }

    /// Drops the record (and error) at `o` if its message is done.
    fn forget_if_done(&self, part: &mut Part, o: u64) {
        part.dirty = true;
        let done = part.q.slot(o).is_none_or(|v| {
            matches!(
                v.state,
                kateway_core::queue::SlotState::Acked | kateway_core::queue::SlotState::Moved
            )
        });
        if done {
            if let Some(n) = part.records.forget(o) {
                self.bytes.set(self.bytes.get().saturating_sub(n));
            }
            if !part.errors.is_empty() {
                part.errors.remove(&o);
            }
        }
    }

    /// Makes every changed window durable: checkpoint, then the watermark as the committed
    /// offset.
    pub async fn save(&self) {
        let dirty: Vec<(u32, u64, Vec<u8>)> = self
            .parts
            .borrow_mut()
            .iter_mut()
            .filter(|(_, p)| p.dirty)
            .map(|(&n, p)| {
                p.dirty = false;
                let cp = fit(p.q.checkpoint(), self.backend.queue_checkpoint_limit());
                (n, p.q.watermark(), cp)
            })
            .collect();
        for (p, wm, cp) in dirty {
            if let Err(e) = self
                .backend
                .queue_save(&self.topic, p, &self.group, wm, cp)
                .await
            {
                tracing::warn!(topic = %self.topic.name, group = %self.group, partition = p, "queue checkpoint not stored: {e}");
                if let Some(part) = self.parts.borrow_mut().get_mut(&p) {
                    part.dirty = true;
                }
            }
        }
    }

    /// Counts of the windows' states, for status.
    pub fn stats(&self) -> kateway_core::queue::Stats {
        let mut s = kateway_core::queue::Stats::default();
        for p in self.parts.borrow().values() {
            let t = p.q.stats();
            s.pending += t.pending;
            s.leased += t.leased;
            s.waiting += t.waiting;
            s.dead += t.dead;
            s.done += t.done;
        }
        s
    }
}

/// Marks a group in use while alive.
struct Use<'a>(&'a QueueGroup);

impl Drop for Use<'_> {
    fn drop(&mut self) {
        self.0.users.set(self.0.users.get() - 1);
        self.0.last_used.set(Instant::now());
    }
}

/// A checkpoint encoded within `limit` bytes: beyond it, the entries farthest from the
/// watermark are left out (after a restart, acks there may be delivered again and attempts
/// there counted from 0).
fn fit(mut cp: Checkpoint, limit: Option<usize>) -> Vec<u8> {
    let mut b = cp.encode();
    let Some(limit) = limit else { return b };
    while b.len() > limit && (!cp.done.is_empty() || !cp.attempted.is_empty()) {
        let cut_done = cp.done.len().div_ceil(4);
        let cut_att = cp.attempted.len().div_ceil(4);
        cp.done.truncate(cp.done.len() - cut_done);
        cp.attempted.truncate(cp.attempted.len() - cut_att);
        b = cp.encode();
    }
    b
}
