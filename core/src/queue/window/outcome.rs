//! What the window's calls return: leases and their ids, acks, failures to retry or to
//! dead-letter, errors, and views of its state for status and recovery.

use thiserror::Error;

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
    /// [`PartitionQueue::moved`](super::PartitionQueue::moved).
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
    /// [`PartitionQueue::moved`](super::PartitionQueue::moved).
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
    /// [`PartitionQueue::moved`](super::PartitionQueue::moved) for an offset that is not dead.
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
    /// Attempts spent, awaiting [`PartitionQueue::moved`](super::PartitionQueue::moved).
    Dead,
    /// Acked by a consumer.
    Acked,
    /// Moved out: buried or copied to the dead-letter topic.
    Moved,
}

/// One offset of the window, as [`PartitionQueue::slot`](super::PartitionQueue::slot) shows it.
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

/// How [`PartitionQueue::restore`](super::PartitionQueue::restore) started.
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
