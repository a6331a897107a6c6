//! One group's queue on one topic, on the core that owns it in this gateway: a
//! [`PartitionQueue`] per partition with the records it holds, a pump task that reads the
//! group (the backend's ordinary group read) into the windows, moves dead letters, expires
//! leases and checkpoints, and the lease and settle calls.
//!
//! The pump never abandons a read halfway (a read's records are always offered), so the group's
//! read position and the windows agree. A partition whose window is full keeps its read records
//! in a short overflow, and the pump reads no more while that overflow or the records held
//! reach their bounds.

use super::dead;
use super::records::Records;
use super::Outcome;
use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::delivery::Subscription;
use crate::event::Event;
use crate::request::Fetch;
use crate::shard::{now_ms, Shard};
use kateway_core::queue::{
    Ack, Checkpoint, Committed, Entered, Next, PartitionQueue, Policy, QueueError, Receipt,
    ReceiptKey,
};
use kateway_core::{Delivered, Error, ErrorKind, Leased, Reset};
use kateway_proto::command::SettleOp;
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

    /// Offers read records to their windows; those that do not fit wait in the overflow, as do
    /// those of a partition whose window could not be opened yet (the pump tries again).
    async fn take(&self, records: Vec<Delivered>) -> Result<(), Error> {
        let mut reread = Vec::new();
        let mut failed = None;
        let now = now_ms();
        let mut added = false;
        for r in records {
            if reread.contains(&r.partition) {
                continue;
            }
            let fresh = !self.parts.borrow().contains_key(&r.partition);
            if fresh && failed.is_none() {
                let (open, moved) = match self.ensure(r.partition).await {
                    Ok(x) => x,
                    Err(e) => {
                        failed = Some(e);
                        (true, false)
                    }
                };
                if !open {
                    continue;
                }
                if moved {
                    // Restoring moved the read position: this batch's records of the
                    // partition are read again.
                    reread.push(r.partition);
                    continue;
                }
            }
            self.bytes.set(self.bytes.get() + r.value.len());
            let Some(r) = self.offer_direct(r, now, &mut added) else {
                continue;
            };
            self.overflow
                .borrow_mut()
                .entry(r.partition)
                .or_default()
                .push_back(r);
        }
        if added {
            self.changed.notify();
        }
        if !self.overflow.borrow().is_empty() {
            self.drain_overflow();
        }
        failed.map_or(Ok(()), Err)
    }

    /// Offers `r` straight to its window when nothing of its partition waits in the overflow
    /// (the common case, without a trip through it), setting `added` if it entered as a
    /// message to deliver. Answers `r` when it must wait in the overflow.
    fn offer_direct(&self, r: Delivered, now: i64, added: &mut bool) -> Option<Delivered> {
        if self
            .overflow
            .borrow()
            .get(&r.partition)
            .is_some_and(|q| !q.is_empty())
        {
            return Some(r);
        }
        let mut parts = self.parts.borrow_mut();
        let Some(part) = parts.get_mut(&r.partition) else {
            return Some(r);
        };
        let mut bytes = self.bytes.get();
        let back = part.offer(r, now, &mut bytes, added);
        self.bytes.set(bytes);
        back
    }

    /// Opens the windows of partitions that have records waiting in the overflow but no window
    /// (opening failed when they were read).
    async fn open_waiting(&self) -> Result<(), Error> {
        let want: Vec<u32> = {
            let parts = self.parts.borrow();
            self.overflow
                .borrow()
                .keys()
                .copied()
                .filter(|p| !parts.contains_key(p))
                .collect()
        };
        for p in want {
            self.ensure(p).await?;
        }
        self.drain_overflow();
        Ok(())
    }

    /// Moves overflow records into their windows while they fit (in order per partition):
    /// each partition's queue is offered from its front until its window is full.
    fn drain_overflow(&self) {
        let now = now_ms();
        let mut added = false;
        let mut parts = self.parts.borrow_mut();
        let mut overflow = self.overflow.borrow_mut();
        let mut bytes = self.bytes.get();
        let held = self.held.borrow();
        overflow.retain(|p, q| {
            let Some(part) = parts.get_mut(p) else {
                if held.contains(p) {
                    // Its window is not open yet.
                    return true;
                }
                bytes = bytes.saturating_sub(q.iter().map(|r| r.value.len()).sum());
                return false;
            };
            while let Some(r) = q.pop_front() {
                if let Some(r) = part.offer(r, now, &mut bytes, &mut added) {
                    q.push_front(r);
                    break;
                }
            }
            !q.is_empty()
        });
        self.bytes.set(bytes);
        drop(held);
        drop(parts);
        drop(overflow);
        if added {
            self.changed.notify();
        }
    }

    /// The pump: reads the group into the windows while there is room, and every tick expires
    /// leases, moves dead letters and checkpoints. Ends when the core stops or the group has
    /// been idle for `queue.idle_timeout` with nothing leased.
    pub async fn pump(self: Rc<Self>) {
        let fetch = Fetch {
            topic: self.topic.name.to_string(),
            group: self.group.clone(),
            max: READ_BATCH,
            max_bytes: self.shard.cfg().subscribe.max_batch_bytes.0 as usize,
            reset: self.reset,
            auto_ack: false,
            tags: Vec::new(),
        };
        let sub = Subscription::new(
            self.shard.clone(),
            self.backend.clone(),
            self.topic.clone(),
            fetch,
        )
        .internal();
        let interval = self.shard.cfg().queue.checkpoint_interval.0;
        let idle = self.shard.cfg().queue.idle_timeout.0;
        let mut last_save = Instant::now();
        let mut last_held = None::<Instant>;
        let mut failing = false;
        let mut opened = false;
        loop {
            if self.shard.stopping() || self.shard.shutdown.get() {
                break;
            }
            if !self.current() {
                // Deleted: its state goes with it (the checkpoints are removed by the deletion).
                self.closed.set(true);
                self.changed.notify();
                return;
            }
            if last_held.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match self.refresh_held().await {
                    Ok(()) => last_held = Some(Instant::now()),
                    Err(e) => tracing::debug!(group = %self.group, "queue partitions: {e}"),
                }
            }
            // A policy changed through the API reaches queues nobody leases from too.
            self.refresh_policy();
            if let Err(e) = self.open_waiting().await {
                tracing::debug!(group = %self.group, "queue windows not opened yet: {e}");
            }
            if !opened {
                // A queue started again (after idling) resumes where its group's offset is,
                // whether new records arrive or not.
                let held = self.held.borrow().clone();
                opened = true;
                for p in held {
                    if let Err(e) = self.ensure(p).await {
                        tracing::debug!(group = %self.group, partition = p, "queue window not opened yet: {e}");
                        opened = false;
                    }
                }
            }
            self.expire();
            if let Err(e) = self.move_dead().await {
                tracing::warn!(topic = %self.topic.name, group = %self.group, "dead letters not moved yet: {e}");
            }
            if last_save.elapsed() >= interval {
                self.save().await;
                last_save = Instant::now();
            }
            let room = self.bytes.get() < self.max_bytes()
                && self.overflowed() < OVERFLOW
                && self.deliverable() < PREFETCH
                && !self.held.borrow().is_empty();
            if room && !failing {
                match sub.next(Instant::now() + TICK).await {
                    Ok(b) => {
                        drop(b.held);
                        if let Err(e) = self.take(b.records).await {
                            tracing::warn!(topic = %self.topic.name, group = %self.group, "queue read: {e}");
                            failing = true;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(topic = %self.topic.name, group = %self.group, "queue read: {e}");
                        failing = true;
                    }
                }
            } else {
                failing = false;
                let seen = self.room.epoch();
                monoio::select! {
                    _ = self.room.wait(seen) => {}
                    _ = self.shard.sleep(TICK) => {}
                }
                self.drain_overflow();
            }
            let leased = self.parts.borrow().values().any(|p| p.q.stats().leased > 0);
            if self.users.get() == 0 && !leased && self.last_used.get().elapsed() > idle {
                break;
            }
        }
        self.save().await;
        self.closed.set(true);
    }

    /// Ends expired leases (each a failed attempt).
    fn expire(&self) {
        let now = now_ms();
        let mut any = false;
        for part in self.parts.borrow_mut().values_mut() {
            if part.q.next_deadline().is_some_and(|d| d <= now) && !part.q.expire(now).is_empty() {
                part.dirty = true;
                any = true;
            }
        }
        if any {
            self.changed.notify();
        }
    }

    /// Copies the messages that spent their attempts to the dead-letter topic.
    async fn move_dead(&self) -> Result<(), Error> {
        let mut batch = Vec::new();
        let mut offsets = Vec::new();
        // Counting is O(1); listing walks the window, so only where there are dead letters.
        for (&p, part) in self
            .parts
            .borrow()
            .iter()
            .filter(|(_, p)| p.q.stats().dead > 0)
        {
            for o in part.q.dead_letters() {
                let (Some(r), Some(v)) = (part.records.get(o), part.q.slot(o)) else {
                    continue;
                };
                let err = part.errors.get(&o).map(String::as_str);
                batch.push(dead::item(
                    &self.topic.name,
                    r,
                    v.attempt,
                    v.first_seen_ms,
                    err,
                ));
                offsets.push((p, o));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        dead::send(&self.shard, &self.backend, &self.group, batch).await?;
        for (p, o) in offsets {
            self.finish(p, o, |q| q.moved(o).map(|_| ()));
        }
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

    /// Leases up to `max` messages (about `max_bytes`), waiting until `deadline` for one.
    pub async fn lease(
        &self,
        max: usize,
        max_bytes: usize,
        visibility: Option<Duration>,
        deadline: Instant,
    ) -> Result<Vec<Delivered>, Error> {
        let _use = self.used();
        let vis = visibility.map_or(self.policy.get().visibility_ms, |v| v.as_millis() as u64);
        loop {
            self.expire();
            let got = self.take_leases(max, max_bytes, vis);
            if !got.is_empty() && self.deliverable() < PREFETCH {
                // The pump reads ahead again.
                self.room.notify();
            }
            if !got.is_empty() {
                // Room was made for the pump only by settles; leasing changes nothing it waits on.
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline || self.shard.shutdown.get() || self.closed.get() {
                return Ok(Vec::new());
            }
            let soonest = self
                .parts
                .borrow()
                .values()
                .filter_map(|p| {
                    let a = p.q.next_visible();
                    let b = p.q.next_deadline();
                    a.into_iter().chain(b).min()
                })
                .min();
            let mut wait = deadline - now;
            if let Some(t) = soonest {
                let ms = (t - now_ms()).max(1) as u64;
                wait = wait.min(Duration::from_millis(ms));
            }
            let seen = self.changed.epoch();
            let stop = self.shard.shutdown_event.epoch();
            monoio::select! {
                _ = self.changed.wait(seen) => {}
                _ = monoio::time::sleep(wait) => {}
                _ = self.shard.shutdown_event.wait(stop) => {}
            }
        }
    }

    /// Takes back the leases of `records`, which never reached a client.
    pub fn release(&self, records: &[Delivered]) {
        let mut parts = self.parts.borrow_mut();
        for m in records {
            let (Some(l), Some(part)) = (&m.leased, parts.get_mut(&m.partition)) else {
                continue;
            };
            if part.q.release(m.offset, l.lease).is_ok() {
                part.dirty = true;
            }
        }
        drop(parts);
        self.changed.notify();
    }

    fn take_leases(&self, max: usize, max_bytes: usize, vis: u64) -> Vec<Delivered> {
        let now = now_ms();
        let mut out = Vec::with_capacity(max.min(1000));
        let mut bytes = 0;
        let mut parts = self.parts.borrow_mut();
        let n = parts.len();
        if n == 0 {
            return out;
        }
        let start = self.turn.get() as usize % n;
        self.turn.set(self.turn.get().wrapping_add(1));
        let keys: Vec<u32> = parts.keys().copied().collect();
        for i in 0..n {
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
            let p = keys[(start + i) % n];
            let part = parts.get_mut(&p).expect("listed");
            // One at a time, so the byte budget holds.
            while out.len() < max && bytes < max_bytes {
                let Some(l) = part.q.lease_one(now, vis) else {
                    break;
                };
                part.dirty = true;
                let Some(r) = part.records.get(l.offset) else {
                    // No record for a leased offset cannot happen; settle it so it never stalls.
                    let _ = part.q.ack(l.offset, Some(l.id));
                    continue;
                };
                let receipt = Receipt::of_lease(self.fingerprint, p, &l).encode_text(&self.key);
                let mut m = r.clone();
                bytes += m.value.len();
                m.leased = Some(Box::new(Leased {
                    receipt,
                    attempt: l.attempt,
                    lease: l.id,
                }));
                out.push(m);
            }
        }
        out
    }

    /// Settles the messages of the call's receipts (already checked to be this group's); those
    /// of partitions another gateway holds are handed on to it, unless the call was itself
    /// handed on.
    pub async fn settle(&self, mut c: super::SettleCall) -> Vec<Outcome> {
        let _use = self.used();
        let (op, delay, visibility) = (c.op, c.delay, c.visibility);
        let error = c.error.clone();
        let receipts = std::mem::take(&mut c.receipts);
        let mut out = Vec::with_capacity(receipts.len());
        let mut bury = Vec::new();
        let mut elsewhere: Vec<(usize, String)> = Vec::new();
        let now = now_ms();
        // The common case, acks of messages whose windows are open here, in one pass.
        let receipts = if op == SettleOp::Ack && self.all_open(&receipts) {
            self.ack_open(receipts, &mut out);
            Vec::new()
        } else {
            receipts
        };
        for (i, r) in receipts.into_iter().enumerate() {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    out.push(Outcome::Failed(e));
                    continue;
                }
            };
            // Most receipts name an open window: no future to build for them.
            let open = if self.parts.borrow().contains_key(&r.partition) {
                Ok((true, false))
            } else {
                self.ensure(r.partition).await
            };
            match open {
                Ok((true, _)) => {}
                Ok((false, _)) if !c.forwarded => {
                    elsewhere.push((i, r.encode(&self.key)));
                    out.push(Outcome::Forwarded);
                    continue;
                }
                Ok((false, _)) => {
                    out.push(Outcome::Failed(Error::new(
                        ErrorKind::StaleLease,
                        format!(
                            "partition {} is leased out by another gateway of the group",
                            r.partition
                        ),
                    )));
                    continue;
                }
                Err(e) => {
                    out.push(Outcome::Failed(e));
                    continue;
                }
            }
            let mut parts = self.parts.borrow_mut();
            let Some(part) = parts.get_mut(&r.partition) else {
                // Closed while another receipt's window opened.
                out.push(Outcome::Failed(closed_here(r.partition)));
                continue;
            };
            let o = r.offset;
            // Only a nack, extend or bury can clash with a bury in progress.
            let being_buried = op != SettleOp::Ack && {
                let b = self.burying.borrow();
                !b.is_empty() && b.contains(&(r.partition, o))
            };
            let res = match op {
                SettleOp::Nack | SettleOp::Extend | SettleOp::Bury if being_buried => {
                    Err(QueueError::StaleLease(o))
                }
                SettleOp::Ack => self.ack_in(part, &r),
                SettleOp::Nack => {
                    let d = delay.map(|d| d.as_millis() as u64);
                    let res = part.q.nack(o, r.lease, d, now);
                    if let (Ok(_), Some(e)) = (&res, &error) {
                        part.errors.insert(o, e.clone());
                    }
                    res.map(|f| match f.next {
                        Next::Retry { visible_at_ms } => Outcome::Retry { visible_at_ms },
                        Next::Dead => Outcome::Dead,
                    })
                }
                SettleOp::Extend => {
                    let by = visibility.map_or(0, |v| v.as_millis() as u64);
                    part.q
                        .extend(o, r.lease, by, now)
                        .map(|deadline_ms| Outcome::Extended { deadline_ms })
                }
                SettleOp::Bury => {
                    if part.q.holds(o, r.lease) {
                        if let (Some(rec), Some(v)) = (part.records.get(o), part.q.slot(o)) {
                            self.burying.borrow_mut().insert((r.partition, o));
                            bury.push((
                                i,
                                r,
                                dead::item(
                                    &self.topic.name,
                                    rec,
                                    v.attempt,
                                    v.first_seen_ms,
                                    error.as_deref(),
                                ),
                            ));
                        }
                        Ok(Outcome::Buried)
                    } else {
                        Err(QueueError::StaleLease(o))
                    }
                }
            };
            part.dirty = true;
            match res {
                Ok(outcome) => out.push(outcome),
                Err(e) => out.push(Outcome::Failed(queue_err(e, r.partition))),
            }
            drop(parts);
        }
        if !bury.is_empty() {
            let items = bury.iter().map(|(_, _, it)| it.clone()).collect();
            let sent = dead::send(&self.shard, &self.backend, &self.group, items).await;
            {
                let mut burying = self.burying.borrow_mut();
                for (_, r, _) in &bury {
                    burying.remove(&(r.partition, r.offset));
                }
            }
            match sent {
                Ok(()) => {
                    for (_, r, _) in &bury {
                        let (p, o, lease) = (r.partition, r.offset, r.lease);
                        // Buried, or acked if its lease ended while it was copied.
                        self.finish(p, o, |q| {
                            q.bury(o, lease).or_else(|_| q.ack(o, None).map(|_| ()))
                        });
                    }
                }
                Err(e) => {
                    for (i, _, _) in &bury {
                        out[*i] = Outcome::Failed(e.clone());
                    }
                }
            }
        }
        if !elsewhere.is_empty() {
            let strings = elsewhere.iter().map(|(_, s)| s.clone()).collect();
            let f = super::forward::record(&c, strings);
            if let Err(e) = super::forward::send(&self.backend, &self.shard.cfg(), &f).await {
                for (i, _) in &elsewhere {
                    out[*i] = Outcome::Failed(e.clone());
                }
            }
        }
        // Nacked messages may be deliverable at once: leasers look again.
        if out
            .iter()
            .any(|o| matches!(o, Outcome::Retry { .. } | Outcome::Dead))
        {
            self.changed.notify();
        }
        // A pump waiting for room reads on (an ack or a burial moved a watermark or freed bytes).
        if self.overflowed() > 0 || self.bytes.get() >= self.max_bytes() {
            self.room.notify();
        }
        out
    }

    /// Whether the window of every partition `receipts` name is open here.
    fn all_open(&self, receipts: &[Result<Receipt, Error>]) -> bool {
        let parts = self.parts.borrow();
        let mut last = None;
        receipts.iter().flatten().all(|r| {
            last == Some(r.partition) || {
                last = Some(r.partition);
                parts.contains_key(&r.partition)
            }
        })
    }

    /// Acks `receipts`, whose windows are all open, adding each outcome to `out`: each run of
    /// receipts of one partition in one pass of its window ([`PartitionQueue::ack_many`]),
    /// dropping the records of the messages now done.
    fn ack_open(&self, receipts: Vec<Result<Receipt, Error>>, out: &mut Vec<Outcome>) {
        let mut parts = self.parts.borrow_mut();
        let mut freed = 0;
        let mut rest = &receipts[..];
        while let Some(first) = rest.first() {
            let p = match first {
                Ok(r) => r.partition,
                Err(e) => {
                    out.push(Outcome::Failed(e.clone()));
                    rest = &rest[1..];
                    continue;
                }
            };
            let n = rest
                .iter()
                .take_while(|r| matches!(r, Ok(r) if r.partition == p))
                .count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let Some(part) = parts.get_mut(&p) else {
                // Not reached: every window was open before the first ack.
                out.extend(run.iter().map(|_| Outcome::Failed(closed_here(p))));
                continue;
            };
            part.dirty = true;
            let Part {
                q, records, errors, ..
            } = part;
            let items = run.iter().flatten().map(|r| (r.offset, Some(r.lease)));
            q.ack_many(items, |o, answer| {
                out.push(match answer {
                    Ok(a) => {
                        // Done now or before: its record is not needed any more.
                        freed += records.forget(o).unwrap_or(0);
                        if !errors.is_empty() {
                            errors.remove(&o);
                        }
                        outcome(a)
                    }
                    Err(e) => Outcome::Failed(queue_err(e, p)),
                })
            });
        }
        self.bytes.set(self.bytes.get().saturating_sub(freed));
    }

    /// Acks the message `r` names in its partition's window and drops its record if it is
    /// done.
    fn ack_in(&self, part: &mut Part, r: &Receipt) -> Result<Outcome, QueueError> {
        let a = part.q.ack(r.offset, Some(r.lease))?;
        self.forget_if_done(part, r.offset);
        Ok(outcome(a))
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

/// A settle of a message whose partition's window closed here meanwhile.
/// The outcome of an ack the window took.
fn outcome(a: Ack) -> Outcome {
    match a {
        Ack::Acked { .. } => Outcome::Acked,
        Ack::AlreadyDone => Outcome::AlreadyDone,
    }
}

fn closed_here(p: u32) -> Error {
    Error::new(
        ErrorKind::StaleLease,
        format!("partition {p} is no longer open here"),
    )
}

fn queue_err(e: QueueError, p: u32) -> Error {
    match e {
        QueueError::StaleLease(o) => Error::new(
            ErrorKind::StaleLease,
            format!("the lease on partition {p} offset {o} ended: the message was delivered again, settled, or is being buried, or was leased before a restart"),
        ),
        QueueError::AlreadyDone(o) => Error::new(
            ErrorKind::StaleLease,
            format!("partition {p} offset {o} is already done"),
        ),
        QueueError::NotRead(o) => Error::new(
            ErrorKind::StaleLease,
            format!("partition {p} offset {o} is not leased"),
        ),
        e => Error::new(ErrorKind::Internal, e.to_string()),
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
