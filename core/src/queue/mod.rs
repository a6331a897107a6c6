//! Queue semantics on ordinary consumer groups: per-message leases, acks, nacks with delay,
//! extension, burial, retries with exponential backoff and jitter, dead letters after a maximum
//! of attempts, and a committed offset that is the low watermark below which everything is
//! done. The state of one (group, partition) belongs to one core; this module is its pure
//! core, the same for the embedded log store and Kafka.
//!
//! * [`window`]: [`PartitionQueue`], the state machine of one partition's window of offsets,
//!   with its [`Policy`].
//! * [`receipt`]: [`Receipt`], the MAC'd handle a leased message is delivered with, which any
//!   gateway can decode and route to the owner.
//! * `minqueue`: the min-priority queue of the window's pending offsets, leases and backoffs,
//!   cheap for values that arrive in order.
//! * [`batch`]: batch receipts, one tagged handle for every message of a leased batch.
//! * [`checkpoint`]: [`Checkpoint`], the durable snapshot of a window, with the crash guarantee
//!   it gives.
//!
//! No I/O and no clock: callers read records, produce dead letters, commit offsets and store
//! checkpoints, and pass the time (`now_ms`) to every call that needs it.

#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
mod minqueue;
pub mod receipt;
mod varint;
pub mod window;

pub use checkpoint::{Attempted, Checkpoint, CheckpointError};
pub use receipt::{fingerprint, Receipt, ReceiptError, ReceiptKey};
pub use window::{
    Ack, Backoff, Committed, Entered, Failure, Jitter, Lease, LeaseId, Next, PartitionQueue,
    Policy, QueueError, Recovery, SlotState, SlotView, Stats,
};
