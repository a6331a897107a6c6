//! The queue state of one (group, partition), owned by one core: which offsets are waiting for
//! delivery, leased, waiting out a backoff, dead or done, and the watermark below which
//! everything is done (the offset to commit).
//!
//! It owns:
//! * [`PartitionQueue`], a window of slots for `[watermark, watermark + capacity)`. Records read
//!   from the log enter with [`offer`](PartitionQueue::offer) in offset order; a full window
//!   refuses them, and the caller pauses reading (back-pressure).
//! * [`Policy`] and [`Backoff`] (in `policy`): attempts, lease lengths, and exponential backoff
//!   with deterministic jitter.
//! * The outcomes the caller acts on (in `outcome`): [`Lease`]s to deliver, [`Failure`]s to retry
//!   or to copy to the dead-letter topic, and the errors.
//! * The window's slots and heaps (in `slots`), and its durable snapshot (in `snapshot`):
//!   [`checkpoint`](PartitionQueue::checkpoint) and [`restore`](PartitionQueue::restore).
//!
//! A message's life: `Pending` (read, deliverable) → `Leased` (attempt + 1) → `Acked`, or on a
//! nack or an expired lease `Waiting` (until its backoff ends, then deliverable again), or once
//! the attempts are spent `Dead` (the caller copies it to the dead-letter topic, then confirms
//! with [`moved`](PartitionQueue::moved)) → `Moved`. [`bury`](PartitionQueue::bury) moves a
//! leased message at once. Leased and waiting slots never block the others: leasing takes
//! deliverable offsets in offset order wherever they are in the window.
//!
//! Offsets the log skips (compaction, transaction markers) count as done. Acks are idempotent:
//! one for an offset already done answers [`Ack::AlreadyDone`]; one presenting an old lease of
//! an offset not yet done is accepted (fewer duplicates). Nack, extend and bury need the current
//! lease. Lease ids carry the owner generation, so that receipts of a previous owner never match
//! a new lease; the caller must pass a generation that is new for every ownership.
//!
//! No I/O and no clock: every call that needs the time takes `now_ms` (milliseconds of any
//! fixed epoch). Results depend only on the calls made, never on when: jitter is a hash of the
//! policy's seed, the offset and the attempt.
//!
//! Memory: a slot is 24 bytes, so a full window of 4096 (the default) costs 96 KiB; an in-flight message
//! adds a 24-byte deadline entry, a deliverable one an 8-byte queue entry.

use std::collections::{BTreeMap, VecDeque};

use super::checkpoint::{Attempted, Checkpoint};
use super::minqueue::MinQueue;

mod outcome;
mod policy;
mod slots;
mod snapshot;
#[cfg(test)]
mod tests;

pub use outcome::*;
use policy::to_i64;
pub use policy::*;

/// Stale heap entries tolerated beyond twice the live ones before a heap is rebuilt (or the
/// window's capacity, if larger: a window leased whole and then acked is not rebuilt on the
/// way down).
const HEAP_SLACK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pending,
    Leased,
    Waiting,
    Dead,
    Acked,
    Moved,
}

impl Kind {
    const COUNT: usize = 6;

    #[inline]
    fn is_done(self) -> bool {
        matches!(self, Kind::Acked | Kind::Moved)
    }
}

/// One offset's state: 24 bytes. `time_ms` is the lease deadline when leased, the visible-at
/// time when waiting (kept when it becomes pending again), the failure time when dead.
#[derive(Debug, Clone, Copy)]
struct Slot {
    time_ms: i64,
    first_seen_ms: i64,
    lease: u32,
    attempt: u16,
    kind: Kind,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 24);

impl Slot {
    fn new(kind: Kind, now_ms: i64) -> Self {
        Slot {
            time_ms: now_ms,
            first_seen_ms: now_ms,
            lease: 0,
            attempt: 0,
            kind,
        }
    }
}

/// The queue state of one (group, partition). See the module documentation.
#[derive(Debug, Clone)]
pub struct PartitionQueue {
    policy: Policy,
    capacity: usize,
    generation: u32,
    watermark: u64,
    /// Slot `i` is offset `watermark + i`; the front slot is never done.
    slots: VecDeque<Slot>,
    counts: [usize; Kind::COUNT],
    /// Pending offsets, smallest first (stale entries skipped when popped).
    ready: MinQueue<u64>,
    /// `(visible_at, offset)` of waiting slots.
    waiting: MinQueue<(i64, u64)>,
    /// `(deadline, offset, seq)` of leased slots.
    leases: MinQueue<(i64, u64, u32)>,
    next_seq: u32,
    /// Done offsets at or above the read position, as `start → end` ranges: restored from a
    /// checkpoint or acked before this owner read them.
    ahead_done: BTreeMap<u64, u64>,
    /// Attempted offsets at or above the read position, restored from a checkpoint.
    ahead_attempted: BTreeMap<u64, Attempted>,
}

impl PartitionQueue {
    /// An empty window starting at `start` (the committed offset), owned by `generation`.
    /// `capacity` (at least 1) bounds the offsets from the watermark to the read position.
    pub fn new(policy: Policy, capacity: usize, start: u64, generation: u32) -> Self {
        PartitionQueue {
            policy: policy.normalized(),
            capacity: capacity.max(1),
            generation,
            watermark: start,
            slots: VecDeque::new(),
            counts: [0; Kind::COUNT],
            ready: MinQueue::default(),
            waiting: MinQueue::default(),
            leases: MinQueue::default(),
            next_seq: 1,
            ahead_done: BTreeMap::new(),
            ahead_attempted: BTreeMap::new(),
        }
    }

    /// Everything below it is done: the offset to commit.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The next offset to read from the log.
    pub fn fetch_pos(&self) -> u64 {
        self.watermark + self.slots.len() as u64
    }

    /// The most offsets the window holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many more offsets may be offered now.
    pub fn room(&self) -> usize {
        self.capacity - self.slots.len()
    }

    /// The owner generation this window's leases carry.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The policy in force (with zero limits raised).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Puts `policy` in force from `now_ms`: leases and retries already scheduled keep their
    /// times, and the next failure is counted and delayed under it; a message waiting for
    /// another attempt that already had as many as the policy allows is dead at once.
    pub fn set_policy(&mut self, policy: Policy, now_ms: i64) {
        self.policy = policy.normalized();
        let max = self.policy.max_attempts;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if matches!(s.kind, Kind::Pending | Kind::Waiting) && s.attempt >= max {
                self.set_kind(i, Kind::Dead);
                self.slots[i].time_ms = now_ms;
            }
        }
    }

    /// How many slots are in each state.
    pub fn stats(&self) -> Stats {
        let c = |k: Kind| self.counts[k as usize];
        Stats {
            pending: c(Kind::Pending),
            leased: c(Kind::Leased),
            waiting: c(Kind::Waiting),
            dead: c(Kind::Dead),
            done: c(Kind::Acked) + c(Kind::Moved),
        }
    }

    /// The state of `offset`, if it lies in `[watermark, fetch_pos)`.
    pub fn slot(&self, offset: u64) -> Option<SlotView> {
        let s = self.slots[self.index(offset)?];
        let state = match s.kind {
            Kind::Pending => SlotState::Pending,
            Kind::Leased => SlotState::Leased {
                seq: s.lease,
                deadline_ms: s.time_ms,
            },
            Kind::Waiting => SlotState::Waiting {
                visible_at_ms: s.time_ms,
            },
            Kind::Dead => SlotState::Dead,
            Kind::Acked => SlotState::Acked,
            Kind::Moved => SlotState::Moved,
        };
        Some(SlotView {
            state,
            attempt: s.attempt,
            first_seen_ms: s.first_seen_ms,
        })
    }

    /// Whether `lease` is the current lease of `offset` (check before copying a message to the
    /// dead-letter topic for [`bury`](Self::bury)).
    pub fn holds(&self, offset: u64, lease: LeaseId) -> bool {
        self.index(offset)
            .is_some_and(|i| self.is_current(&self.slots[i], lease))
    }

    /// Offsets whose attempts are spent and that wait for [`moved`](Self::moved), in order.
    pub fn dead_letters(&self) -> Vec<u64> {
        self.offsets_where(|s| s.kind == Kind::Dead)
    }

    /// Takes the record at `offset` into the window. Offsets skipped since the read position
    /// count as done. Refused with [`QueueError::Full`] when `offset` lies `capacity` or more
    /// beyond the watermark: the caller keeps the record and pauses reading.
    pub fn offer(&mut self, offset: u64, now_ms: i64) -> Result<Entered, QueueError> {
        let fetch = self.fetch_pos();
        if offset < fetch {
            return Ok(Entered::Known);
        }
        if self.slots.is_empty() {
            // Nothing in flight: a gap is skipped without slots.
            self.watermark = offset;
        } else if offset - self.watermark >= self.capacity as u64 {
            return Err(QueueError::Full {
                capacity: self.capacity,
            });
        }
        for _ in fetch.max(self.watermark)..offset {
            self.push(Slot::new(Kind::Acked, now_ms));
        }
        let entered = self.enter(offset, now_ms);
        self.advance();
        Ok(entered)
    }

    /// Offers `from..to` in order until the window is full; returns the end of what it took
    /// (`to` when all of it): the caller keeps the records from there.
    pub fn offer_range(&mut self, from: u64, to: u64, now_ms: i64) -> u64 {
        for offset in from..to {
            if self.offer(offset, now_ms).is_err() {
                return offset;
            }
        }
        to.max(from)
    }

    /// Leases up to `max` deliverable offsets (pending, or waiting with their time come) in
    /// offset order, each for `visibility_ms` (clamped to the policy's cap). Each lease counts
    /// one attempt.
    pub fn lease(&mut self, max: usize, now_ms: i64, visibility_ms: u64) -> Vec<Lease> {
        self.promote(now_ms);
        let deadline_ms = now_ms.saturating_add(self.policy.lease_ms(visibility_ms));
        let mut out = Vec::new();
        while out.len() < max {
            let Some(l) = self.lease_next(deadline_ms) else {
                break;
            };
            out.push(l);
        }
        out
    }

    /// [`lease`](Self::lease) of one offset, without a vector.
    pub fn lease_one(&mut self, now_ms: i64, visibility_ms: u64) -> Option<Lease> {
        self.promote(now_ms);
        self.lease_next(now_ms.saturating_add(self.policy.lease_ms(visibility_ms)))
    }

    /// Leases the lowest pending offset until `deadline_ms`.
    fn lease_next(&mut self, deadline_ms: i64) -> Option<Lease> {
        loop {
            let offset = self.ready.pop()?;
            let Some(i) = self.index(offset) else {
                continue;
            };
            if self.slots[i].kind != Kind::Pending {
                continue;
            }
            let seq = self.take_seq();
            self.set_kind(i, Kind::Leased);
            let s = &mut self.slots[i];
            s.lease = seq;
            s.time_ms = deadline_ms;
            s.attempt = s.attempt.saturating_add(1);
            let (attempt, first_seen_ms) = (s.attempt, s.first_seen_ms);
            self.leases.push((deadline_ms, offset, seq));
            return Some(Lease {
                offset,
                id: LeaseId {
                    generation: self.generation,
                    seq,
                },
                attempt,
                deadline_ms,
                first_seen_ms,
            });
        }
    }

    /// Whether [`lease`](Self::lease) would hand out anything at `now_ms`.
    pub fn has_deliverable(&mut self, now_ms: i64) -> bool {
        self.promote(now_ms);
        while let Some(offset) = self.ready.peek() {
            if self
                .index(offset)
                .is_some_and(|i| self.slots[i].kind == Kind::Pending)
            {
                return true;
            }
            self.ready.pop();
        }
        false
    }

    /// Marks `offset` done. Any lease (or none) is accepted while it is not done; `lease` only
    /// tells whether the ack is late. An offset read by no one yet (after a restart) is
    /// remembered as done if it lies within the window's capacity.
    pub fn ack(&mut self, offset: u64, lease: Option<LeaseId>) -> Result<Ack, QueueError> {
        if offset < self.watermark {
            return Ok(Ack::AlreadyDone);
        }
        let Some(i) = self.index(offset) else {
            return self.ack_ahead(offset);
        };
        let s = self.slots[i];
        if s.kind.is_done() {
            return Ok(Ack::AlreadyDone);
        }
        let late = !lease.is_some_and(|l| self.is_current(&s, l));
        self.set_kind(i, Kind::Acked);
        self.advance();
        self.compact();
        Ok(Ack::Acked { late })
    }

    /// Acks every `(offset, lease)` of `items` in turn, answering each through `each` exactly
    /// as [`ack`](Self::ack) would have, one after the other. The watermark moves and the heaps
    /// are pruned once, after the last (and before an ack of an offset not read yet, which is
    /// judged against the moved watermark): a batch of acks costs one pass over the batch, not
    /// a pass over the window's front per ack.
    pub fn ack_many(
        &mut self,
        items: impl IntoIterator<Item = (u64, Option<LeaseId>)>,
        mut each: impl FnMut(u64, Result<Ack, QueueError>),
    ) {
        for (offset, lease) in items {
            let answer = if offset < self.watermark {
                Ok(Ack::AlreadyDone)
            } else if let Some(i) = self.index(offset) {
                let s = self.slots[i];
                if s.kind.is_done() {
                    Ok(Ack::AlreadyDone)
                } else {
                    let late = !lease.is_some_and(|l| self.is_current(&s, l));
                    self.set_kind(i, Kind::Acked);
                    Ok(Ack::Acked { late })
                }
            } else {
                self.advance();
                self.ack(offset, lease)
            };
            each(offset, answer);
        }
        self.advance();
        self.compact();
    }

    /// A failed attempt reported by the consumer holding `lease`: the offset waits `delay_ms`
    /// (capped at the backoff cap; the policy's backoff when `None`) before it is deliverable
    /// again, or is dead if its attempts are spent. A lease past its deadline is still current
    /// until [`expire`](Self::expire) has ended it.
    pub fn nack(
        &mut self,
        offset: u64,
        lease: LeaseId,
        delay_ms: Option<u64>,
        now_ms: i64,
    ) -> Result<Failure, QueueError> {
        let i = self.current(offset, lease)?;
        let delay = delay_ms.map(|d| d.min(self.policy.backoff.max_ms));
        Ok(self.fail(i, delay, now_ms, now_ms))
    }

    /// Takes back a lease whose message never reached a client (the poll's caller went away
    /// before the answer): the offset is pending again at once and the attempt is given back,
    /// since none was made.
    pub fn release(&mut self, offset: u64, lease: LeaseId) -> Result<(), QueueError> {
        let i = self.current(offset, lease)?;
        self.set_kind(i, Kind::Pending);
        let s = &mut self.slots[i];
        s.attempt = s.attempt.saturating_sub(1);
        s.time_ms = 0;
        self.ready.push(offset);
        self.compact();
        Ok(())
    }

    /// Ends the lease `by_ms` after `now_ms` (clamped to the policy's cap); returns the new
    /// deadline. Refused once the deadline has passed, even before [`expire`](Self::expire).
    pub fn extend(
        &mut self,
        offset: u64,
        lease: LeaseId,
        by_ms: u64,
        now_ms: i64,
    ) -> Result<i64, QueueError> {
        let i = self.current(offset, lease)?;
        if self.slots[i].time_ms <= now_ms {
            return Err(QueueError::StaleLease(offset));
        }
        let deadline = now_ms.saturating_add(self.policy.lease_ms(by_ms));
        self.slots[i].time_ms = deadline;
        self.leases.push((deadline, offset, lease.seq));
        self.compact();
        Ok(deadline)
    }

    /// Moves a leased offset out at once (the caller has copied it to the dead-letter topic;
    /// check [`holds`](Self::holds) first).
    pub fn bury(&mut self, offset: u64, lease: LeaseId) -> Result<(), QueueError> {
        let i = self.current(offset, lease)?;
        self.set_kind(i, Kind::Moved);
        self.advance();
        self.compact();
        Ok(())
    }

    /// Confirms that a dead offset was copied to the dead-letter topic. Answers
    /// [`QueueError::AlreadyDone`] if it was acked meanwhile (the copy is then redundant).
    pub fn moved(&mut self, offset: u64) -> Result<(), QueueError> {
        let i = self.live(offset)?;
        if self.slots[i].kind != Kind::Dead {
            return Err(QueueError::NotDead(offset));
        }
        self.set_kind(i, Kind::Moved);
        self.advance();
        Ok(())
    }

    /// Ends the leases whose deadline is at or before `now_ms`, each a failed attempt: the
    /// offset waits out its backoff from the deadline, or is dead. Returns them in deadline
    /// order.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Failure> {
        let mut out = Vec::new();
        while let Some((deadline, offset, seq)) = self.leases.peek() {
            if deadline > now_ms {
                break;
            }
            self.leases.pop();
            let Some(i) = self.index(offset) else {
                continue;
            };
            let s = &self.slots[i];
            if s.kind == Kind::Leased && s.lease == seq && s.time_ms == deadline {
                out.push(self.fail(i, None, deadline, now_ms));
            }
        }
        out
    }

    /// When [`expire`](Self::expire) has work next: at or before the earliest lease deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.leases.peek().map(|(t, _, _)| t)
    }

    /// At or before the time the next waiting offset becomes deliverable.
    pub fn next_visible(&self) -> Option<i64> {
        self.waiting.peek().map(|(t, _)| t)
    }
}

/// Adds `offset` to a `start → end` range map, merging neighbours.
fn insert_done(map: &mut BTreeMap<u64, u64>, offset: u64) {
    let prev = map.range(..=offset).next_back().map(|(&s, &e)| (s, e));
    if prev.is_some_and(|(_, e)| offset < e) {
        return;
    }
    let next_end = map.remove(&(offset + 1));
    let end = next_end.unwrap_or(offset + 1);
    match prev {
        Some((s, e)) if e == offset => {
            map.insert(s, end);
        }
        _ => {
            map.insert(offset, end);
        }
    }
}
