//! The window's durable snapshot: a [`Checkpoint`] taken of it, and a window restored from
//! one for a new owner.

use super::*;

impl PartitionQueue {
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
}

/// Appends `start..end` to sorted ranges, merging with the last one when they touch.
fn push_done(ranges: &mut Vec<std::ops::Range<u64>>, start: u64, end: u64) {
    match ranges.last_mut() {
        Some(last) if last.end >= start => last.end = last.end.max(end),
        _ => ranges.push(start..end),
    }
}
