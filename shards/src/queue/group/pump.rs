//! The pump: the group's read into the windows (through the overflow when a window is full),
//! lease expiry and dead letters.

use super::{QueueGroup, OVERFLOW, PREFETCH, READ_BATCH, TICK};
use crate::delivery::Subscription;
use crate::queue::dead;
use crate::request::Fetch;
use crate::shard::now_ms;
use kateway_core::{Delivered, Error};
use std::rc::Rc;
use std::time::{Duration, Instant};

impl QueueGroup {
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
    pub(super) fn expire(&self) {
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
}
