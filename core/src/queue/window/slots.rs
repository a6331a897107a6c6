//! The window's slots: finding an offset's slot, entering read offsets, moving the watermark,
//! failing attempts, and compacting the heaps of deadlines and backoffs.

use super::*;

impl PartitionQueue {
    /// The slot index of `offset`, if it lies in `[watermark, fetch_pos)`.
    #[inline]
    pub(super) fn index(&self, offset: u64) -> Option<usize> {
        let i = offset.checked_sub(self.watermark)?;
        (i < self.slots.len() as u64).then_some(i as usize)
    }

    /// The slot index of `offset` if it is in the window and not done.
    pub(super) fn live(&self, offset: u64) -> Result<usize, QueueError> {
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
    pub(super) fn current(&self, offset: u64, lease: LeaseId) -> Result<usize, QueueError> {
        let i = self.live(offset)?;
        if !self.is_current(&self.slots[i], lease) {
            return Err(QueueError::StaleLease(offset));
        }
        Ok(i)
    }

    #[inline]
    pub(super) fn is_current(&self, s: &Slot, lease: LeaseId) -> bool {
        s.kind == Kind::Leased
            && lease.seq != 0
            && s.lease == lease.seq
            && lease.generation == self.generation
    }

    pub(super) fn is_done_ahead(&self, offset: u64) -> bool {
        self.ahead_done
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// An ack for an offset this owner has not read: remembered if within capacity.
    pub(super) fn ack_ahead(&mut self, offset: u64) -> Result<Ack, QueueError> {
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
    pub(super) fn enter(&mut self, offset: u64, now_ms: i64) -> Entered {
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

    pub(super) fn push(&mut self, slot: Slot) {
        self.counts[slot.kind as usize] += 1;
        self.slots.push_back(slot);
    }

    #[inline]
    pub(super) fn set_kind(&mut self, i: usize, kind: Kind) {
        let s = &mut self.slots[i];
        self.counts[s.kind as usize] -= 1;
        self.counts[kind as usize] += 1;
        s.kind = kind;
    }

    /// Moves the watermark over the done slots at the front.
    pub(super) fn advance(&mut self) {
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
    pub(super) fn promote(&mut self, now_ms: i64) {
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
    pub(super) fn fail(
        &mut self,
        i: usize,
        delay_ms: Option<u64>,
        from_ms: i64,
        now_ms: i64,
    ) -> Failure {
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

    pub(super) fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        seq
    }

    /// Rebuilds a heap once its stale entries (of slots acked, extended or moved since they
    /// were pushed) outnumber the live ones by far, so that memory follows the window, not the
    /// traffic.
    pub(super) fn compact(&mut self) {
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

    pub(super) fn offsets_where(&self, f: impl Fn(&Slot) -> bool) -> Vec<u64> {
        (self.watermark..)
            .zip(&self.slots)
            .filter(|(_, s)| f(s))
            .map(|(o, _)| o)
            .collect()
    }
}
