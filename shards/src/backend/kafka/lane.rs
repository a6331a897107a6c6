//! Per partition of a core: the ordering lane of its publishes, and the shadows of buffered
//! copies whose original send is still out.

use crate::event::Event;
use std::cell::Cell;

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

/// What became of the original send of a buffered message whose produce timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadow {
    /// librdkafka still has it: the replayer waits (replaying it now could store it twice).
    Outstanding,
    /// Kafka took it: the replayer skips the buffered copy.
    Delivered,
}
