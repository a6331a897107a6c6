//! The queue state of one (group, partition), owned by one core: which offsets are waiting for
//! delivery, leased, waiting out a backoff, dead or done, and the watermark below which
//! everything is done (the offset to commit).
//!
//! It owns:
//! * [`PartitionQueue`], a window of slots for `[watermark, watermark + capacity)`. Records read
//!   from the log enter with [`offer`](PartitionQueue::offer) in offset order; a full window
//!   refuses them, and the caller pauses reading (back-pressure).
//! * [`Policy`] and [`Backoff`]: attempts, lease lengths, and exponential backoff with
//!   deterministic jitter.
//! * The outcomes the caller acts on: [`Lease`]s to deliver, [`Failure`]s to retry or to copy to
//!   the dead-letter topic.
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

use thiserror::Error;

use super::checkpoint::{Attempted, Checkpoint};
use super::minqueue::MinQueue;

/// Stale heap entries tolerated beyond twice the live ones before a heap is rebuilt (or the
/// window's capacity, if larger: a window leased whole and then acked is not rebuilt on the
/// way down).
const HEAP_SLACK: usize = 1024;

/// How a backoff is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The exponential delay itself.
    None,
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay / 2, delay]`.
    Equal,
}

/// Exponential backoff: `base_ms · 2^(failures − 1)`, capped at `max_ms`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure, before jitter.
    pub base_ms: u64,
    /// The cap, before jitter; also the cap of an explicit nack delay.
    pub max_ms: u64,
    /// How the delay is randomised.
    pub jitter: Jitter,
    /// Seeds the jitter: the same seed, offset and attempt always give the same delay.
    pub seed: u64,
}

impl Backoff {
    /// The delay after `failures` failed attempts (at least 1), jittered with `random`.
    pub fn delay_ms(&self, failures: u16, random: u64) -> u64 {
        let shift = u32::from(failures.max(1) - 1);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        let raw = self.base_ms.saturating_mul(factor).min(self.max_ms);
        match self.jitter {
            Jitter::None => raw,
            Jitter::Full => uniform(random, raw),
            Jitter::Equal => raw / 2 + uniform(random, raw - raw / 2),
        }
    }

    /// The delay of `offset` after `failures` failed attempts, its jitter drawn from the seed.
    pub fn delay_for(&self, offset: u64, failures: u16) -> u64 {
        let random = mix64(self.seed ^ mix64(offset) ^ u64::from(failures));
        self.delay_ms(failures, random)
    }
}

/// A number in `[0, max]` from `random`.
fn uniform(random: u64, max: u64) -> u64 {
    match max.checked_add(1) {
        Some(n) => random % n,
        None => random,
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub(crate) fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A group's delivery policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Deliveries before a message is dead (at least 1).
    pub max_attempts: u16,
    /// The default lease length.
    pub visibility_ms: u64,
    /// The longest lease one call may ask for (leasing and extending).
    pub max_visibility_ms: u64,
    /// The delay between a failed attempt and the next delivery.
    pub backoff: Backoff,
}

impl Default for Policy {
    /// 5 attempts, 30 s leases (at most 12 h), backoff from 1 s to 60 s with equal jitter.
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            visibility_ms: 30_000,
            max_visibility_ms: 12 * 3_600_000,
            backoff: Backoff {
                base_ms: 1_000,
                max_ms: 60_000,
                jitter: Jitter::Equal,
                seed: 0,
            },
        }
    }
}

impl Policy {
    /// The policy with zero limits raised to 1 and the lease cap at least the default lease.
    fn normalized(self) -> Self {
        let visibility_ms = self.visibility_ms.max(1);
        Policy {
            max_attempts: self.max_attempts.max(1),
            visibility_ms,
            max_visibility_ms: self.max_visibility_ms.max(visibility_ms),
            backoff: self.backoff,
        }
    }

    /// A requested lease length within `[1, max_visibility_ms]`, as a signed duration.
    fn lease_ms(&self, requested: u64) -> i64 {
        to_i64(requested.clamp(1, self.max_visibility_ms))
    }
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Names one lease: the owner generation that granted it and a sequence number within it
/// (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId {
    /// The owner generation that granted the lease.
    pub generation: u32,
    /// The lease's number within that generation, from 1.
    pub seq: u32,
}

/// An offset handed to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The leased message's offset.
    pub offset: u64,
    /// The lease, to present when acking, nacking, extending or burying.
    pub id: LeaseId,
    /// This delivery's number, from 1.
    pub attempt: u16,
    /// The lease ends then unless acked, nacked, buried or extended.
    pub deadline_ms: i64,
    /// When the gateway first read the message.
    pub first_seen_ms: i64,
}

/// What happens to a message after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deliverable again from then.
    Retry {
        /// When it becomes deliverable again.
        visible_at_ms: i64,
    },
    /// Its attempts are spent: the caller copies it to the dead-letter topic, then calls
    /// [`PartitionQueue::moved`].
    Dead,
}

/// A failed attempt (a nack or an expired lease) and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The failed message's offset.
    pub offset: u64,
    /// Deliveries so far.
    pub attempt: u16,
    /// When the gateway first read the message (for the dead-letter headers).
    pub first_seen_ms: i64,
    /// What follows the failure.
    pub next: Next,
}

/// The answer to an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Now done.
    Acked {
        /// The ack did not present the current lease (it had expired, or the offset was not
        /// leased at all).
        late: bool,
    },
    /// Already acked, moved or below the watermark: nothing changed.
    AlreadyDone,
}

/// What an offered offset became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// Deliverable.
    Ready,
    /// Restored from a checkpoint as leased or waiting: deliverable later; keep the record.
    Held,
    /// Already done (acked before a restart): the record is not needed.
    Done,
    /// Restored with its attempts spent: copy it to the dead-letter topic, then call
    /// [`PartitionQueue::moved`].
    Dead,
    /// Below the read position: already in the window or done; nothing changed.
    Known,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum QueueError {
    /// The window holds `capacity` offsets from the watermark: read no further for now.
    #[error("queue window full ({capacity} offsets)")]
    Full {
        /// The window's capacity.
        capacity: usize,
    },
    /// The offset has not been read into the window (or lies beyond it).
    #[error("offset {0} not in the window")]
    NotRead(u64),
    /// The offset is acked, moved or below the watermark.
    #[error("offset {0} already done")]
    AlreadyDone(u64),
    /// The lease presented is not the offset's current one (expired, superseded, or granted
    /// by another owner).
    #[error("stale lease for offset {0}")]
    StaleLease(u64),
    /// [`PartitionQueue::moved`] for an offset that is not dead.
    #[error("offset {0} is not dead")]
    NotDead(u64),
}

/// The state of one offset in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Read and deliverable.
    Pending,
    /// `seq` 0 is a lease restored from a checkpoint, which no one can present.
    Leased {
        /// The lease's number (0 for a restored lease).
        seq: u32,
        /// When the lease ends.
        deadline_ms: i64,
    },
    /// Waiting out a backoff or a nack delay.
    Waiting {
        /// When it becomes deliverable again.
        visible_at_ms: i64,
    },
    /// Attempts spent, awaiting [`PartitionQueue::moved`].
    Dead,
    /// Acked by a consumer.
    Acked,
    /// Moved out: buried or copied to the dead-letter topic.
    Moved,
}

/// One offset of the window, as [`PartitionQueue::slot`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// Its state.
    pub state: SlotState,
    /// Deliveries so far.
    pub attempt: u16,
    /// When the gateway first read it.
    pub first_seen_ms: i64,
}

/// How many slots of the window are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Read and deliverable.
    pub pending: usize,
    /// Leased to a consumer.
    pub leased: usize,
    /// Waiting out a backoff.
    pub waiting: usize,
    /// Out of attempts, waiting to be moved to the dead-letter topic.
    pub dead: usize,
    /// Acked or moved, above the watermark (waiting for an earlier offset to finish).
    pub done: usize,
}

/// How [`PartitionQueue::restore`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// From the checkpoint.
    Checkpoint,
    /// Clean from the committed offset: no checkpoint.
    NoCheckpoint,
    /// Clean: the checkpoint's watermark is not the committed offset.
    WatermarkMismatch {
        /// The checkpoint's watermark.
        checkpoint: u64,
    },
    /// Clean: the checkpoint is older than the commit's generation (a fenced owner's).
    StaleGeneration {
        /// The checkpoint's generation.
        checkpoint: u32,
    },
}

/// The group's committed offset and the generation that committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The committed offset: the first offset not done.
    pub offset: u64,
    /// The generation of the owner that committed it.
    pub generation: u32,
}

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

    /// The durable snapshot of the window: see [`Checkpoint`].
    pub fn checkpoint(&self) -> Checkpoint {
        let mut cp = Checkpoint {
            generation: self.generation,
            watermark: self.watermark,
            ..Checkpoint::default()
        };
        for (offset, s) in (self.watermark..).zip(&self.slots) {
            if s.kind.is_done() {
                push_done(&mut cp.done, offset, offset + 1);
            } else if s.attempt > 0 {
                cp.attempted.push(Attempted {
                    offset,
                    attempt: s.attempt,
                    at_ms: s.time_ms,
                    first_seen_ms: s.first_seen_ms,
                    leased: s.kind == Kind::Leased,
                });
            }
        }
        let fetch = self.fetch_pos();
        for (&start, &end) in &self.ahead_done {
            if end > fetch {
                push_done(&mut cp.done, start.max(fetch), end);
            }
        }
        cp.attempted.extend(
            self.ahead_attempted
                .range(fetch..)
                .map(|(_, a)| *a)
                .filter(|a| !self.is_done_ahead(a.offset)),
        );
        cp
    }

    /// A window for a new owner (`generation`, which must be newer than any before) starting
    /// from the group's committed offset. It uses `checkpoint` only if its watermark is the
    /// committed offset and its generation is not older than the commit's; the records from
    /// the committed offset on must then be offered again, and each takes its state from the
    /// checkpoint: done, waiting with its attempt count, leased until the old deadline
    /// (restored leases can be acked, not nacked, extended or buried), or dead. Otherwise the
    /// window starts clean: every attempt count from 0, which can let a message be delivered
    /// up to `max_attempts` more times.
    pub fn restore(
        checkpoint: Option<&Checkpoint>,
        committed: Committed,
        policy: Policy,
        capacity: usize,
        generation: u32,
    ) -> (Self, Recovery) {
        let mut q = Self::new(policy, capacity, committed.offset, generation);
        let recovery = match checkpoint {
            None => Recovery::NoCheckpoint,
            Some(cp) if cp.generation < committed.generation => Recovery::StaleGeneration {
                checkpoint: cp.generation,
            },
            Some(cp) if cp.watermark != committed.offset => Recovery::WatermarkMismatch {
                checkpoint: cp.watermark,
            },
            Some(cp) => {
                q.load(cp);
                Recovery::Checkpoint
            }
        };
        (q, recovery)
    }

    /// Takes a checkpoint's state as what lies ahead of the read position (its ranges sorted
    /// and merged, whatever their order).
    fn load(&mut self, cp: &Checkpoint) {
        let mut done: Vec<_> = cp
            .done
            .iter()
            .map(|r| r.start.max(cp.watermark)..r.end)
            .filter(|r| !r.is_empty())
            .collect();
        done.sort_by_key(|r| r.start);
        let mut merged = Vec::with_capacity(done.len());
        for r in done {
            push_done(&mut merged, r.start, r.end);
        }
        self.ahead_done = merged.into_iter().map(|r| (r.start, r.end)).collect();
        for a in cp.attempted.iter().filter(|a| a.offset >= cp.watermark) {
            if !self.is_done_ahead(a.offset) {
                self.ahead_attempted.insert(a.offset, *a);
            }
        }
        self.advance();
    }

    /// The slot index of `offset`, if it lies in `[watermark, fetch_pos)`.
    #[inline]
    fn index(&self, offset: u64) -> Option<usize> {
        let i = offset.checked_sub(self.watermark)?;
        (i < self.slots.len() as u64).then_some(i as usize)
    }

    /// The slot index of `offset` if it is in the window and not done.
    fn live(&self, offset: u64) -> Result<usize, QueueError> {
        if offset < self.watermark || self.is_done_ahead(offset) {
            return Err(QueueError::AlreadyDone(offset));
        }
        let i = self.index(offset).ok_or(QueueError::NotRead(offset))?;
        if self.slots[i].kind.is_done() {
            return Err(QueueError::AlreadyDone(offset));
        }
        Ok(i)
    }

    /// The slot index of `offset` if `lease` is its current lease.
    fn current(&self, offset: u64, lease: LeaseId) -> Result<usize, QueueError> {
        let i = self.live(offset)?;
        if !self.is_current(&self.slots[i], lease) {
            return Err(QueueError::StaleLease(offset));
        }
        Ok(i)
    }

    #[inline]
    fn is_current(&self, s: &Slot, lease: LeaseId) -> bool {
        s.kind == Kind::Leased
            && lease.seq != 0
            && s.lease == lease.seq
            && lease.generation == self.generation
    }

    fn is_done_ahead(&self, offset: u64) -> bool {
        self.ahead_done
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// An ack for an offset this owner has not read: remembered if within capacity.
    fn ack_ahead(&mut self, offset: u64) -> Result<Ack, QueueError> {
        if offset - self.watermark >= self.capacity as u64 {
            return Err(QueueError::NotRead(offset));
        }
        if self.is_done_ahead(offset) {
            return Ok(Ack::AlreadyDone);
        }
        insert_done(&mut self.ahead_done, offset);
        self.ahead_attempted.remove(&offset);
        self.advance();
        Ok(Ack::Acked { late: true })
    }

    /// Appends the slot of offset `fetch_pos`, its state from the restored state if any.
    fn enter(&mut self, offset: u64, now_ms: i64) -> Entered {
        while let Some((&start, &end)) = self.ahead_done.first_key_value() {
            if end <= offset {
                self.ahead_done.remove(&start);
            } else {
                break;
            }
        }
        let done = self.is_done_ahead(offset);
        while self
            .ahead_attempted
            .first_key_value()
            .is_some_and(|(&o, _)| o < offset)
        {
            self.ahead_attempted.pop_first();
        }
        let attempted = match self.ahead_attempted.first_key_value() {
            Some((&o, _)) if o == offset => self.ahead_attempted.pop_first().map(|(_, a)| a),
            _ => None,
        };
        if done {
            self.push(Slot::new(Kind::Acked, now_ms));
            return Entered::Done;
        }
        let Some(a) = attempted else {
            self.push(Slot::new(Kind::Pending, now_ms));
            self.ready.push(offset);
            return Entered::Ready;
        };
        let kind = if a.leased {
            Kind::Leased
        } else if a.attempt >= self.policy.max_attempts {
            Kind::Dead
        } else {
            Kind::Waiting
        };
        self.push(Slot {
            time_ms: a.at_ms,
            first_seen_ms: a.first_seen_ms,
            lease: 0,
            attempt: a.attempt,
            kind,
        });
        match kind {
            Kind::Leased => self.leases.push((a.at_ms, offset, 0)),
            Kind::Waiting => self.waiting.push((a.at_ms, offset)),
            _ => return Entered::Dead,
        }
        Entered::Held
    }

    fn push(&mut self, slot: Slot) {
        self.counts[slot.kind as usize] += 1;
        self.slots.push_back(slot);
    }

    #[inline]
    fn set_kind(&mut self, i: usize, kind: Kind) {
        let s = &mut self.slots[i];
        self.counts[s.kind as usize] -= 1;
        self.counts[kind as usize] += 1;
        s.kind = kind;
    }

    /// Moves the watermark over the done slots at the front.
    fn advance(&mut self) {
        while let Some(front) = self.slots.front() {
            if !front.kind.is_done() {
                break;
            }
            self.counts[front.kind as usize] -= 1;
            self.slots.pop_front();
            self.watermark += 1;
        }
        // With nothing read in flight, offsets known done ahead need no slots: skip them (a
        // record of theirs offered later is below the read position).
        while self.slots.is_empty() {
            match self.ahead_done.first_key_value() {
                Some((&start, &end)) if start <= self.watermark => {
                    self.ahead_done.pop_first();
                    self.watermark = self.watermark.max(end);
                }
                _ => break,
            }
        }
    }

    /// Makes the waiting offsets whose time has come deliverable.
    fn promote(&mut self, now_ms: i64) {
        while let Some((visible_at, offset)) = self.waiting.peek() {
            if visible_at > now_ms {
                break;
            }
            self.waiting.pop();
            let Some(i) = self.index(offset) else {
                continue;
            };
            let s = &self.slots[i];
            if s.kind == Kind::Waiting && s.time_ms == visible_at {
                self.set_kind(i, Kind::Pending);
                self.ready.push(offset);
            }
        }
    }

    /// A failed attempt of slot `i`: waiting (for `delay_ms`, or the backoff, from `from_ms`)
    /// or dead.
    fn fail(&mut self, i: usize, delay_ms: Option<u64>, from_ms: i64, now_ms: i64) -> Failure {
        let offset = self.watermark + i as u64;
        let s = self.slots[i];
        let next = if s.attempt >= self.policy.max_attempts {
            self.set_kind(i, Kind::Dead);
            self.slots[i].time_ms = now_ms;
            Next::Dead
        } else {
            let delay =
                delay_ms.unwrap_or_else(|| self.policy.backoff.delay_for(offset, s.attempt));
            let visible_at_ms = from_ms.saturating_add(to_i64(delay));
            self.set_kind(i, Kind::Waiting);
            self.slots[i].time_ms = visible_at_ms;
            self.waiting.push((visible_at_ms, offset));
            Next::Retry { visible_at_ms }
        };
        Failure {
            offset,
            attempt: s.attempt,
            first_seen_ms: s.first_seen_ms,
            next,
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        seq
    }

    /// Rebuilds a heap once its stale entries (of slots acked, extended or moved since they
    /// were pushed) outnumber the live ones by far, so that memory follows the window, not the
    /// traffic.
    fn compact(&mut self) {
        let slack = HEAP_SLACK.max(self.capacity);
        let live = |k: Kind| 2 * self.counts[k as usize] + slack;
        // Nothing left of a kind (a window acked whole): its entries go without a scan.
        if self.counts[Kind::Leased as usize] == 0 {
            self.leases.clear();
        }
        if self.counts[Kind::Waiting as usize] == 0 {
            self.waiting.clear();
        }
        if self.counts[Kind::Pending as usize] == 0 {
            self.ready.clear();
        }
        if self.leases.len() > live(Kind::Leased) {
            self.leases = (self.watermark..)
                .zip(&self.slots)
                .filter(|(_, s)| s.kind == Kind::Leased)
                .map(|(o, s)| (s.time_ms, o, s.lease))
                .collect();
        }
        if self.waiting.len() > live(Kind::Waiting) {
            self.waiting = (self.watermark..)
                .zip(&self.slots)
                .filter(|(_, s)| s.kind == Kind::Waiting)
                .map(|(o, s)| (s.time_ms, o))
                .collect();
        }
        if self.ready.len() > live(Kind::Pending) {
            self.ready = (self.watermark..)
                .zip(&self.slots)
                .filter(|(_, s)| s.kind == Kind::Pending)
                .map(|(o, _)| o)
                .collect();
        }
    }

    fn offsets_where(&self, f: impl Fn(&Slot) -> bool) -> Vec<u64> {
        (self.watermark..)
            .zip(&self.slots)
            .filter(|(_, s)| f(s))
            .map(|(o, _)| o)
            .collect()
    }
}

/// Appends `start..end` to sorted ranges, merging with the last one when they touch.
fn push_done(ranges: &mut Vec<std::ops::Range<u64>>, start: u64, end: u64) {
    match ranges.last_mut() {
        Some(last) if last.end >= start => last.end = last.end.max(end),
        _ => ranges.push(start..end),
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

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: u64 = 1_000;

    /// No jitter, so that times are exact: 100, 200, 400, … capped at 1 000 ms.
    fn policy(max_attempts: u16) -> Policy {
        Policy {
            max_attempts,
            visibility_ms: VIS,
            max_visibility_ms: 10_000,
            backoff: Backoff {
                base_ms: 100,
                max_ms: 1_000,
                jitter: Jitter::None,
                seed: 1,
            },
        }
    }

    fn queue(capacity: usize) -> PartitionQueue {
        let mut q = PartitionQueue::new(policy(3), capacity, 0, 1);
        assert_eq!(
            q.offer_range(0, 10.min(capacity as u64), 0),
            10.min(capacity as u64)
        );
        q
    }

    fn offsets(leases: &[Lease]) -> Vec<u64> {
        leases.iter().map(|l| l.offset).collect()
    }

    fn state(q: &PartitionQueue, offset: u64) -> SlotState {
        q.slot(offset).unwrap().state
    }

    #[test]
    fn a_lower_max_attempts_kills_what_already_spent_them() {
        let mut q = PartitionQueue::new(policy(5), 100, 0, 1);
        q.offer_range(0, 3, 0);
        // Offsets 0 and 1 fail twice; 2 once.
        for round in 0..2 {
            let now = 10_000 * (round + 1);
            let leases = q.lease(3, now, VIS);
            for l in &leases {
                if round == 0 || l.offset < 2 {
                    q.nack(l.offset, l.id, Some(0), now).unwrap();
                }
            }
        }
        assert_eq!(q.slot(0).unwrap().attempt, 2);
        assert_eq!(q.slot(2).unwrap().attempt, 2);
        // Offset 2 is leased now: its lease runs on, and its next failure decides.
        q.set_policy(policy(2), 30_000);
        assert_eq!(q.dead_letters(), [0, 1]);
        assert_eq!(q.policy().max_attempts, 2);
        assert!(q.lease(3, 30_000, VIS).is_empty());
        assert!(matches!(state(&q, 2), SlotState::Leased { .. }));
    }

    #[test]
    fn slot_is_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn lease_then_ack() {
        let mut q = queue(100);
        let leases = q.lease(2, 1_000, VIS);
        assert_eq!(offsets(&leases), [0, 1]);
        assert_eq!(leases[0].attempt, 1);
        assert_eq!(leases[0].deadline_ms, 2_000);
        assert_eq!(leases[0].id.generation, 1);
        assert_ne!(leases[0].id, leases[1].id);
        assert_eq!(
            state(&q, 0),
            SlotState::Leased {
                seq: leases[0].id.seq,
                deadline_ms: 2_000
            }
        );
        assert!(q.holds(0, leases[0].id));
        assert!(!q.holds(0, leases[1].id));
        assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::Acked { late: false }));
        assert_eq!(q.watermark(), 1);
        assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::AlreadyDone));
        assert_eq!(q.ack(1, None), Ok(Ack::Acked { late: true }));
        assert_eq!(q.watermark(), 2);
        assert_eq!(
            q.stats(),
            Stats {
                pending: 8,
                ..Stats::default()
            }
        );
        // No lease left: the deadline entries went with the last one.
        assert_eq!(q.next_deadline(), None);
        assert!(q.expire(5_000).is_empty(), "acked leases do not expire");
    }

    #[test]
    fn a_leased_head_does_not_block_the_rest() {
        let mut q = queue(100);
        let head = q.lease(1, 0, VIS)[0];
        let rest = q.lease(100, 0, VIS);
        assert_eq!(offsets(&rest), (1..10).collect::<Vec<_>>());
        for l in &rest {
            assert_eq!(q.ack(l.offset, Some(l.id)), Ok(Ack::Acked { late: false }));
        }
        assert_eq!(q.watermark(), 0, "the head is not done");
        assert_eq!(q.stats().done, 9);
        assert_eq!(q.offer_range(10, 20, 0), 20);
        assert_eq!(offsets(&q.lease(3, 0, VIS)), [10, 11, 12]);
        assert_eq!(q.ack(0, Some(head.id)), Ok(Ack::Acked { late: false }));
        assert_eq!(q.watermark(), 10);
    }

    #[test]
    fn nack_waits_out_its_backoff_or_delay() {
        let mut q = queue(100);
        let l = q.lease(1, 0, VIS)[0];
        let f = q.nack(0, l.id, None, 500).unwrap();
        assert_eq!(f.attempt, 1);
        assert_eq!(f.next, Next::Retry { visible_at_ms: 600 });
        assert_eq!(state(&q, 0), SlotState::Waiting { visible_at_ms: 600 });
        assert_eq!(q.next_visible(), Some(600));
        // Others flow meanwhile; offset 0 comes back, first, when its time comes.
        assert_eq!(offsets(&q.lease(1, 599, VIS)), [1]);
        assert!(q.has_deliverable(599));
        let again = q.lease(1, 600, VIS)[0];
        assert_eq!((again.offset, again.attempt), (0, 2));
        // The second failure's backoff doubles; an explicit delay replaces it, capped.
        let f = q.nack(0, again.id, Some(50), 700).unwrap();
        assert_eq!(f.next, Next::Retry { visible_at_ms: 750 });
        let third = q.lease(1, 750, VIS)[0];
        assert_eq!(third.attempt, 3);
        let mut q2 = queue(100);
        let l = q2.lease(1, 0, VIS)[0];
        let f = q2.nack(0, l.id, Some(1_000_000), 0).unwrap();
        assert_eq!(
            f.next,
            Next::Retry {
                visible_at_ms: 1_000
            }
        );
    }

    #[test]
    fn nack_extend_and_bury_need_the_current_lease() {
        let mut q = queue(100);
        let l = q.lease(1, 0, VIS)[0];
        let forged = LeaseId {
            generation: 1,
            seq: l.id.seq + 100,
        };
        let other_owner = LeaseId {
            generation: 2,
            seq: l.id.seq,
        };
        for bad in [forged, other_owner] {
            assert_eq!(q.nack(0, bad, None, 0), Err(QueueError::StaleLease(0)));
            assert_eq!(q.extend(0, bad, 10, 0), Err(QueueError::StaleLease(0)));
            assert_eq!(q.bury(0, bad), Err(QueueError::StaleLease(0)));
        }
        assert_eq!(q.nack(5, l.id, None, 0), Err(QueueError::StaleLease(5)));
        assert_eq!(q.nack(50, l.id, None, 0), Err(QueueError::NotRead(50)));
        assert_eq!(q.moved(0), Err(QueueError::NotDead(0)));
        assert_eq!(
            state(&q, 0),
            SlotState::Leased {
                seq: l.id.seq,
                deadline_ms: 1_000
            }
        );
    }

    #[test]
    fn extend_moves_the_deadline() {
        let mut q = queue(100);
        let l = q.lease(1, 0, VIS)[0];
        assert_eq!(q.extend(0, l.id, 5_000, 900), Ok(5_900));
        assert!(q.expire(1_000).is_empty(), "the old deadline is gone");
        assert_eq!(q.extend(0, l.id, 1_000_000, 1_000), Ok(11_000), "capped");
        assert!(q.expire(10_999).is_empty());
        assert_eq!(
            q.extend(0, l.id, 10, 11_000),
            Err(QueueError::StaleLease(0))
        );
        let f = q.expire(11_000);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].next,
            Next::Retry {
                visible_at_ms: 11_100
            }
        );
        assert_eq!(
            q.extend(0, l.id, 10, 11_000),
            Err(QueueError::StaleLease(0))
        );
        assert!(q.leases.len() == 0);
    }

    #[test]
    fn bury_moves_at_once() {
        let mut q = queue(100);
        let l = q.lease(2, 0, VIS);
        assert_eq!(q.bury(1, l[1].id), Ok(()));
        assert_eq!(state(&q, 1), SlotState::Moved);
        assert_eq!(q.watermark(), 0);
        assert_eq!(q.bury(0, l[0].id), Ok(()));
        assert_eq!(q.watermark(), 2);
        assert_eq!(q.bury(0, l[0].id), Err(QueueError::AlreadyDone(0)));
        assert_eq!(q.ack(1, None), Ok(Ack::AlreadyDone));
    }

    #[test]
    fn expiry_redelivers_with_the_next_attempt_after_backoff() {
        let mut q = queue(100);
        let l = q.lease(1, 0, VIS)[0];
        assert_eq!(q.next_deadline(), Some(1_000));
        assert!(q.expire(999).is_empty());
        let f = q.expire(1_500);
        assert_eq!(
            f,
            [Failure {
                offset: 0,
                attempt: 1,
                first_seen_ms: 0,
                next: Next::Retry {
                    visible_at_ms: 1_100
                }
            }],
            "the backoff runs from the deadline, whenever expire is called"
        );
        assert!(q.expire(1_500).is_empty());
        assert_eq!(q.nack(0, l.id, None, 1_500), Err(QueueError::StaleLease(0)));
        let l2 = q.lease(1, 1_500, VIS)[0];
        assert_eq!((l2.offset, l2.attempt), (0, 2));
        // The expired lease's holder may still ack it.
        assert_eq!(q.ack(0, Some(l.id)), Ok(Ack::Acked { late: true }));
        assert_eq!(q.ack(0, Some(l2.id)), Ok(Ack::AlreadyDone));
        assert_eq!(q.watermark(), 1);
    }

    #[test]
    fn dead_exactly_once_after_max_attempts() {
        let mut q = queue(100);
        let mut now = 0;
        for attempt in 1..=3u16 {
            let l = q.lease(1, now, VIS)[0];
            assert_eq!((l.offset, l.attempt), (0, attempt));
            now = l.deadline_ms;
            let f = q.expire(now);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].attempt, attempt);
            // While offset 0 waits out its backoff (or is dead), the next one flows.
            assert_eq!(q.lease(1, now, 10 * VIS)[0].offset, u64::from(attempt));
            if attempt < 3 {
                let Next::Retry { visible_at_ms } = f[0].next else {
                    panic!("dead too early");
                };
                now = visible_at_ms;
            } else {
                assert_eq!(f[0].next, Next::Dead);
            }
        }
        assert_eq!(state(&q, 0), SlotState::Dead);
        assert!(q.expire(i64::MAX - 1).iter().all(|f| f.offset != 0));
        assert!(offsets(&q.lease(100, i64::MAX - 1, VIS))
            .iter()
            .all(|&o| o != 0));
        assert_eq!(q.dead_letters(), [0]);
        assert_eq!(q.watermark(), 0, "dead is not done until moved");
        assert_eq!(q.moved(0), Ok(()));
        assert_eq!(q.moved(0), Err(QueueError::AlreadyDone(0)));
        assert!(q.dead_letters().is_empty());
        assert!(q.watermark() >= 1);

        // Through nacks, with an ack racing the dead-letter copy.
        let mut q = queue(100);
        for attempt in 1..=3u16 {
            let l = q.lease(1, i64::from(attempt) * 10_000, VIS)[0];
            let f = q.nack(0, l.id, Some(0), l.deadline_ms - 1).unwrap();
            assert_eq!(f.next == Next::Dead, attempt == 3);
        }
        assert_eq!(q.ack(0, None), Ok(Ack::Acked { late: true }));
        assert_eq!(q.moved(0), Err(QueueError::AlreadyDone(0)));
    }

    #[test]
    fn watermark_advances_only_over_done_slots() {
        let mut q = queue(100);
        let l = q.lease(5, 0, VIS);
        q.nack(0, l[0].id, None, 0).unwrap(); // waiting
        q.ack(2, None).unwrap();
        q.bury(3, l[3].id).unwrap();
        assert_eq!(q.watermark(), 0);
        assert_eq!(
            q.stats(),
            Stats {
                pending: 5,
                leased: 2,
                waiting: 1,
                dead: 0,
                done: 2
            }
        );
        q.ack(0, None).unwrap();
        assert_eq!(q.watermark(), 1, "1 is still leased");
        q.ack(1, Some(l[1].id)).unwrap();
        assert_eq!(q.watermark(), 4, "over acked 2 and moved 3");
        q.ack(9, None).unwrap();
        assert_eq!(q.watermark(), 4);
        for o in 4..9 {
            q.ack(o, None).unwrap();
        }
        assert_eq!(q.watermark(), 10);
        assert_eq!(q.fetch_pos(), 10);
        assert_eq!(q.stats(), Stats::default());
    }

    #[test]
    fn acks_are_idempotent() {
        let mut q = queue(100);
        assert_eq!(q.ack(3, None), Ok(Ack::Acked { late: true }));
        assert_eq!(q.ack(3, None), Ok(Ack::AlreadyDone));
        let leases = q.lease(10, 0, VIS);
        assert!(
            !offsets(&leases).contains(&3),
            "an acked offset is never leased"
        );
        q.ack(0, None).unwrap();
        assert_eq!(q.ack(0, Some(leases[0].id)), Ok(Ack::AlreadyDone));
        q.ack(1, None).unwrap();
        q.ack(2, None).unwrap();
        assert_eq!(q.watermark(), 4);
        assert_eq!(q.ack(1, None), Ok(Ack::AlreadyDone), "below the watermark");
        assert_eq!(
            q.nack(1, leases[1].id, None, 0),
            Err(QueueError::AlreadyDone(1))
        );
        assert_eq!(q.ack(10_000, None), Err(QueueError::NotRead(10_000)));
    }

    #[test]
    fn a_full_window_refuses_records() {
        let mut q = queue(4);
        assert_eq!(q.room(), 0);
        assert_eq!(q.offer(4, 0), Err(QueueError::Full { capacity: 4 }));
        assert_eq!(q.offer_range(4, 10, 0), 4);
        assert_eq!(q.offer(2, 0), Ok(Entered::Known));
        // A done slot behind a leased head still takes room.
        let l = q.lease(2, 0, VIS);
        q.ack(1, None).unwrap();
        assert_eq!(q.offer_range(4, 10, 0), 4);
        q.ack(0, Some(l[0].id)).unwrap();
        assert_eq!(q.room(), 2);
        assert_eq!(q.offer_range(4, 10, 0), 6);
        assert_eq!(q.fetch_pos(), 6);
    }

    #[test]
    fn skipped_offsets_count_as_done() {
        let mut q = PartitionQueue::new(policy(3), 100, 0, 1);
        q.offer(0, 0).unwrap();
        assert_eq!(q.offer(5, 0), Ok(Entered::Ready));
        assert_eq!(q.slot(3).unwrap().state, SlotState::Acked);
        assert_eq!(offsets(&q.lease(10, 0, VIS)), [0, 5]);
        q.ack(0, None).unwrap();
        assert_eq!(q.watermark(), 5);
        q.ack(5, None).unwrap();
        // An empty window jumps any gap.
        assert_eq!(q.offer(1_000_000, 0), Ok(Entered::Ready));
        assert_eq!(q.watermark(), 1_000_000);
        assert_eq!(q.fetch_pos(), 1_000_001);
        // A non-empty one only within capacity.
        assert_eq!(
            q.offer(1_000_100, 0),
            Err(QueueError::Full { capacity: 100 })
        );
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let mut b = Backoff {
            base_ms: 100,
            max_ms: 1_000,
            jitter: Jitter::None,
            seed: 3,
        };
        let plain: Vec<u64> = (1..=6).map(|n| b.delay_ms(n, 12_345)).collect();
        assert_eq!(plain, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.delay_ms(0, 0), 100);
        assert_eq!(b.delay_ms(u16::MAX, 0), 1_000);
        b.max_ms = u64::MAX;
        assert_eq!(b.delay_ms(200, 0), u64::MAX, "saturates");
        b.max_ms = 1_000;
        for jitter in [Jitter::Full, Jitter::Equal] {
            b.jitter = jitter;
            let mut seen = std::collections::HashSet::new();
            for offset in 0..1_000 {
                for n in 1..=6u16 {
                    let raw = plain[usize::from(n) - 1];
                    let d = b.delay_for(offset, n);
                    let low = if jitter == Jitter::Full { 0 } else { raw / 2 };
                    assert!((low..=raw).contains(&d), "{jitter:?} {n}: {d}");
                    assert_eq!(d, b.delay_for(offset, n), "deterministic");
                    seen.insert(d);
                }
            }
            assert!(seen.len() > 300, "spread: {}", seen.len());
        }
        b.jitter = Jitter::Full;
        assert_eq!(b.delay_ms(1, 7), 7);
        assert_eq!(b.delay_ms(1, 101), 0);
        b.jitter = Jitter::Equal;
        assert_eq!(b.delay_ms(1, 7), 57);
        b.max_ms = u64::MAX;
        b.jitter = Jitter::Full;
        assert_eq!(b.delay_ms(200, 5), 5, "no overflow at the top");
    }

    #[test]
    fn stale_heap_entries_are_bounded() {
        let mut q = queue(100);
        let l = q.lease(1, 0, VIS)[0];
        for i in 0..10_000 {
            q.extend(0, l.id, VIS, i).unwrap();
        }
        assert!(q.leases.len() <= 2 + HEAP_SLACK + 1, "{}", q.leases.len());
        assert!(q.next_deadline().is_some_and(|t| t <= 10_999));
        let f = q.expire(10_999);
        assert_eq!(f.len(), 1);
    }

    /// Puts `q` through a checkpoint's bytes and restores it under a new generation.
    fn crash(q: &PartitionQueue, generation: u32) -> (PartitionQueue, Recovery) {
        let cp = Checkpoint::decode(&q.checkpoint().encode()).unwrap();
        PartitionQueue::restore(
            Some(&cp),
            Committed {
                offset: q.watermark(),
                generation: q.generation(),
            },
            *q.policy(),
            q.capacity(),
            generation,
        )
    }

    #[test]
    fn checkpoint_and_restore() {
        let mut q = queue(100);
        let l = q.lease(6, 1_000, VIS);
        q.nack(1, l[1].id, None, 1_200).unwrap(); // waiting until 1 300, attempt 1
        q.ack(2, None).unwrap();
        q.bury(3, l[3].id).unwrap();
        q.ack(7, None).unwrap();
        for _ in 0..2 {
            let x = q.lease(1, 5_000, VIS)[0];
            assert_eq!(x.offset, 1);
            q.nack(1, x.id, Some(0), 5_000).unwrap();
        }
        assert_eq!(q.slot(1).unwrap().state, SlotState::Dead);
        q.ack(20, None).unwrap_or_else(|e| panic!("{e}"));
        let before = q.checkpoint();
        assert_eq!(before.watermark, 0);
        assert_eq!(before.done, vec![2..4, 7..8, 20..21]);
        let att: Vec<(u64, u16, bool)> = before
            .attempted
            .iter()
            .map(|a| (a.offset, a.attempt, a.leased))
            .collect();
        assert_eq!(
            att,
            [(0, 1, true), (1, 3, false), (4, 1, true), (5, 1, true)]
        );

        let (mut r, how) = crash(&q, 2);
        assert_eq!(how, Recovery::Checkpoint);
        assert_eq!((r.watermark(), r.fetch_pos(), r.generation()), (0, 0, 2));
        // The restored state survives another checkpoint before anything is read again.
        assert_eq!(r.checkpoint().done, before.done);
        assert_eq!(r.checkpoint().attempted, before.attempted);
        // An ack of a message leased by the previous owner, before it is read again.
        assert_eq!(r.ack(4, Some(l[4].id)), Ok(Ack::Acked { late: true }));
        assert_eq!(r.ack(4, None), Ok(Ack::AlreadyDone));
        let entered: Vec<Entered> = (0..10).map(|o| r.offer(o, 9_000).unwrap()).collect();
        use Entered::*;
        assert_eq!(
            entered,
            [Held, Dead, Done, Done, Done, Held, Ready, Done, Ready, Ready]
        );
        assert_eq!(r.dead_letters(), [1]);
        assert_eq!(r.slot(0).unwrap().attempt, 1);
        assert_eq!(
            r.slot(0).unwrap().state,
            SlotState::Leased {
                seq: 0,
                deadline_ms: 2_000
            }
        );
        // Old leases can ack, not nack; a restored lease expires as a failed attempt.
        assert_eq!(
            r.nack(5, l[5].id, None, 9_000),
            Err(QueueError::StaleLease(5))
        );
        let f = r.expire(9_000);
        assert_eq!(offsets_of(&f), [0, 5]);
        assert_eq!(
            f[0].next,
            Next::Retry {
                visible_at_ms: 2_100
            }
        );
        assert_eq!(r.ack(5, Some(l[5].id)), Ok(Ack::Acked { late: true }));
        let again = r.lease(10, 9_000, VIS);
        assert_eq!(offsets(&again), [0, 6, 8, 9]);
        assert_eq!(again[0].attempt, 2, "attempt counts survive");
        assert_eq!(again[0].first_seen_ms, 0);
        assert_eq!(again[0].id.generation, 2);
        assert_eq!(r.moved(1), Ok(()));
        assert_eq!(r.offer_range(10, 30, 9_000), 30);
        assert_eq!(r.slot(20).unwrap().state, SlotState::Acked);
        assert_eq!(r.watermark(), 0);
    }

    #[test]
    fn acks_ahead_of_reading_are_remembered() {
        let committed = Committed {
            offset: 10,
            generation: 1,
        };
        let (mut q, _) = PartitionQueue::restore(None, committed, policy(3), 100, 2);
        assert_eq!(q.ack(10, None), Ok(Ack::Acked { late: true }));
        assert_eq!(
            (q.watermark(), q.fetch_pos()),
            (11, 11),
            "nothing to wait for"
        );
        assert_eq!(q.ack(12, None), Ok(Ack::Acked { late: true }));
        assert_eq!(q.ack(12, None), Ok(Ack::AlreadyDone));
        assert_eq!(q.ack(111, None), Err(QueueError::NotRead(111)));
        let cp = Checkpoint::decode(&q.checkpoint().encode()).unwrap();
        assert_eq!(cp.watermark, 11);
        assert_eq!(cp.done, [std::ops::Range { start: 12, end: 13 }]);
        assert_eq!(q.offer(10, 0), Ok(Entered::Known));
        assert_eq!(q.offer(11, 0), Ok(Entered::Ready));
        assert_eq!(q.offer(12, 0), Ok(Entered::Done));
        assert_eq!(offsets(&q.lease(10, 0, VIS)), [11]);
        q.ack(11, None).unwrap();
        assert_eq!(q.watermark(), 13);
    }

    fn offsets_of(f: &[Failure]) -> Vec<u64> {
        f.iter().map(|f| f.offset).collect()
    }

    #[test]
    fn restore_falls_back_to_a_clean_start() {
        let mut q = queue(100);
        let l = q.lease(3, 0, VIS);
        q.ack(0, Some(l[0].id)).unwrap();
        q.ack(2, Some(l[2].id)).unwrap();
        let cp = q.checkpoint();
        assert_eq!(cp.watermark, 1);
        let clean = |committed: Committed| {
            let (mut r, how) = PartitionQueue::restore(Some(&cp), committed, policy(3), 100, 9);
            assert_eq!(r.watermark(), committed.offset);
            assert_eq!(r.offer(committed.offset, 0), Ok(Entered::Ready));
            assert_eq!(r.slot(committed.offset).unwrap().attempt, 0);
            assert!(r.checkpoint().done.is_empty());
            how
        };
        assert_eq!(
            clean(Committed {
                offset: 0,
                generation: 1
            }),
            Recovery::WatermarkMismatch { checkpoint: 1 }
        );
        assert_eq!(
            clean(Committed {
                offset: 1,
                generation: 2
            }),
            Recovery::StaleGeneration { checkpoint: 1 }
        );
        let (r, how) = PartitionQueue::restore(
            None,
            Committed {
                offset: 7,
                generation: 0,
            },
            policy(3),
            100,
            9,
        );
        assert_eq!(
            (how, r.watermark(), r.fetch_pos()),
            (Recovery::NoCheckpoint, 7, 7)
        );
        let (mut r, how) = PartitionQueue::restore(
            Some(&cp),
            Committed {
                offset: 1,
                generation: 1,
            },
            policy(3),
            100,
            9,
        );
        assert_eq!(how, Recovery::Checkpoint);
        assert_eq!(r.offer_range(1, 10, 0), 10);
        assert_eq!(r.slot(2).unwrap().state, SlotState::Acked);
        assert_eq!(r.slot(1).unwrap().attempt, 1);
    }

    /// A seeded generator for the simulation.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(1);
            mix64(self.0) % n
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Act {
        Ack,
        Nack,
        Abandon,
    }

    /// 10 000 offsets through 4 consumers of 8 leases each: 89 % of deliveries acked, 10 %
    /// nacked, 1 % abandoned, processing times up to 1.5 leases (so some acks are late and
    /// some messages delivered twice), 1 % poison messages that always fail; a window of 256
    /// (back-pressure); optionally a crash and restore through checkpoint bytes every
    /// `restart_every` steps. Every message ends acked exactly once or dead-lettered after
    /// exactly `max_attempts` deliveries, and the watermark reaches the end.
    fn simulate(seed: u64, restart_every: Option<u64>) {
        const N: u64 = 10_000;
        const MAX: u16 = 4;
        let policy = Policy {
            max_attempts: MAX,
            visibility_ms: VIS,
            max_visibility_ms: VIS,
            backoff: Backoff {
                base_ms: 50,
                max_ms: 400,
                jitter: Jitter::Equal,
                seed,
            },
        };
        let mut rng = Rng(seed);
        let poison = |o: u64| mix64(o ^ seed.rotate_left(17)).is_multiple_of(100);
        let mut generation = 1;
        let mut q = PartitionQueue::new(policy, 256, 0, generation);
        let mut deliveries = vec![0u16; N as usize];
        let mut acked = vec![0u32; N as usize];
        let mut dead = vec![0u16; N as usize];
        let mut consumers: Vec<Vec<(Lease, i64, Act)>> = vec![Vec::new(); 4];
        let mut refused_reads = 0;
        let dead_letter = |q: &mut PartitionQueue, f: &Failure, dead: &mut Vec<u16>| {
            if f.next == Next::Dead {
                assert_eq!(f.attempt, MAX);
                dead[f.offset as usize] += 1;
                q.moved(f.offset).unwrap();
            }
        };
        let mut now: i64 = 0;
        let mut step = 0u64;
        while q.watermark() < N {
            step += 1;
            assert!(step < 1_000_000, "stuck at {}", q.watermark());
            now += 10;
            if restart_every.is_some_and(|n| step.is_multiple_of(n)) {
                generation += 1;
                let (r, how) = crash(&q, generation);
                assert_eq!(how, Recovery::Checkpoint);
                q = r;
            }
            let fetch = q.fetch_pos();
            if q.offer_range(fetch, N, now) < N {
                refused_reads += 1;
            }
            for f in q.expire(now) {
                dead_letter(&mut q, &f, &mut dead);
            }
            for held in consumers.iter_mut() {
                let mut i = 0;
                while i < held.len() {
                    let (l, finish, act) = held[i];
                    if finish > now {
                        i += 1;
                        continue;
                    }
                    held.swap_remove(i);
                    match act {
                        Act::Ack => match q.ack(l.offset, Some(l.id)) {
                            Ok(Ack::Acked { .. }) => acked[l.offset as usize] += 1,
                            Ok(Ack::AlreadyDone) => {}
                            Err(e) => panic!("ack {}: {e}", l.offset),
                        },
                        Act::Nack => {
                            let delay = (rng.below(4) == 0).then(|| rng.below(300));
                            match q.nack(l.offset, l.id, delay, now) {
                                Ok(f) => dead_letter(&mut q, &f, &mut dead),
                                Err(QueueError::StaleLease(_) | QueueError::AlreadyDone(_)) => {}
                                Err(e) => panic!("nack {}: {e}", l.offset),
                            }
                        }
                        Act::Abandon => {}
                    }
                }
                for l in q.lease(8 - held.len(), now, VIS) {
                    let o = l.offset as usize;
                    assert_eq!(acked[o] + u32::from(dead[o]), 0, "{o} delivered when done");
                    deliveries[o] += 1;
                    assert_eq!(l.attempt, deliveries[o], "attempts of {o}");
                    let r = rng.below(100);
                    let act = match r {
                        _ if poison(l.offset) => [Act::Nack, Act::Abandon][r as usize % 2],
                        0..=88 => Act::Ack,
                        89..=98 => Act::Nack,
                        _ => Act::Abandon,
                    };
                    let finish = now + rng.below(VIS * 3 / 2) as i64;
                    held.push((l, finish, act));
                }
            }
        }
        assert_eq!(q.watermark(), N);
        assert!(refused_reads > 0, "the window never filled");
        let mut poisoned = 0;
        for o in 0..N as usize {
            if poison(o as u64) {
                poisoned += 1;
                assert_eq!((acked[o], dead[o]), (0, 1), "poison {o}");
            }
            match (acked[o], dead[o]) {
                (1, 0) => assert!(deliveries[o] >= 1 && deliveries[o] <= MAX),
                (0, 1) => assert_eq!(deliveries[o], MAX, "{o}"),
                other => panic!("{o}: acked, dead = {other:?}"),
            }
        }
        assert!((50..200).contains(&poisoned), "{poisoned} poison messages");
        assert!(
            deliveries.iter().filter(|&&d| d > 1).count() > 1_000,
            "nacks and expiries redeliver"
        );
    }

    /// `ack_many` answers every ack as acking one after the other does, and leaves the same
    /// window: acks below the watermark, in the window (current, stale, repeated), of offsets
    /// not read yet (within the capacity and beyond it), with and without a lease.
    #[test]
    fn ack_many_is_acks_one_after_the_other() {
        for seed in 0..300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37));
            let mut q = PartitionQueue::new(policy(3), 64, 10, 1);
            let read = 10 + rng.below(60);
            q.offer_range(10, read, 0);
            let mut leases = Vec::new();
            for _ in 0..rng.below(4) {
                leases.extend(q.lease(rng.below(20) as usize, 0, VIS));
            }
            for l in leases.iter().filter(|_| rng.below(4) == 0) {
                let _ = q.nack(l.offset, l.id, Some(0), 0);
            }
            for l in leases.iter().filter(|_| rng.below(3) == 0) {
                let _ = q.ack(l.offset, Some(l.id));
            }
            let items: Vec<(u64, Option<LeaseId>)> = (0..rng.below(40))
                .map(|_| {
                    let o = 5 + rng.below(100);
                    let lease = match rng.below(3) {
                        0 => None,
                        1 => leases.iter().find(|l| l.offset == o).map(|l| l.id),
                        _ => Some(LeaseId {
                            generation: 1,
                            seq: rng.below(50) as u32 + 1,
                        }),
                    };
                    (o, lease)
                })
                .collect();
            let (mut one, mut many) = (q.clone(), q);
            let by_one: Vec<_> = items.iter().map(|&(o, l)| (o, one.ack(o, l))).collect();
            let mut by_many = Vec::new();
            many.ack_many(items.iter().copied(), |o, a| by_many.push((o, a)));
            assert_eq!(by_one, by_many, "seed {seed}");
            assert_eq!(one.watermark(), many.watermark(), "seed {seed}");
            assert_eq!(one.stats(), many.stats(), "seed {seed}");
            assert_eq!(one.checkpoint(), many.checkpoint(), "seed {seed}");
            assert_eq!(one.fetch_pos(), many.fetch_pos(), "seed {seed}");
            assert_eq!(
                one.lease(100, 5, VIS),
                many.lease(100, 5, VIS),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn simulation_acks_each_message_once_or_dead_letters_it() {
        simulate(0x5eed, None);
    }

    #[test]
    fn simulation_survives_restores_from_checkpoints() {
        simulate(0xbeef, Some(777));
    }
}
