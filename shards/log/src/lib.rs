//! kateway-log: the embedded log engine.
//!
//! A [`Partition`] is a directory of segment files, each named by the offset of its first record
//! (`00000000000000000000.log`) with a sparse offset index beside it (`.index`). Records are
//! length-prefixed and CRC32C-checksummed ([`record`]). Appends go to an in-memory pending
//! buffer and reach the file in one positioned write per flush; the caller decides when to flush
//! and when to fsync (group commit lives in the shards, which own the I/O scheduling), and asks
//! for the file handles that need syncing. Reads see only what has been written to the file.
//!
//! Recovery on open scans the active segment (and any sealed segment whose index does not match
//! its file), truncates a torn or corrupt tail and reports what it dropped. An [`OffsetLog`]
//! keeps consumer-group offsets in the same record format, replayed on open and compacted when
//! it grows. The on-disk layout is documented in `docs/storage.md`.
//!
//! Invariants: a partition has exactly one owner (one thread); offsets are dense and increase by
//! one per record; a record is visible to readers only once its bytes are in the file.

pub mod offsets;
pub mod partition;
pub mod record;
mod segment;

pub use offsets::OffsetLog;
pub use partition::{Partition, PartitionConfig, RecoveryReport};
pub use record::Record;

/// Log engine failures.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not in the expected format and cannot be recovered automatically.
    #[error("corrupt {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Result alias for the log engine.
pub type Result<T> = std::result::Result<T, LogError>;
