//! kateway-log: the embedded log engine.
//!
//! A [`Partition`] is a directory of segment files, each named by the offset of its first record
//! (`00000000000000000000.log`) with a sparse offset index beside it (`.index`). Records are
//! length-prefixed and CRC32C-checksummed ([`record`]). Appends go to an in-memory pending
//! buffer and reach the file in one positioned write per flush; the caller decides when to flush
//! and when to fsync (group commit lives in the shards, which own the I/O scheduling), and asks
//! for the files that need syncing. Reads see only what has been written to the file.
//!
//! Faults: every file operation passes the file-system seam ([`fs`]), which opens descriptors on
//! demand under a per-core budget and evaluates named failpoints ([`fail`]). A failed write
//! leaves nothing behind (the partial write is cut, the records are dropped and their offsets
//! stay used); damage found on open, on read or by the scrubber costs only the damaged records,
//! which are skipped and reported as [`Damage`], unless the [`RecoveryMode`] says to refuse. A
//! segment index is never trusted blindly: an entry that does not point at the record it names
//! makes the index be rebuilt from the log. The consumer-offsets log ([`OffsetLog`]) recovers
//! the same way (damaged spans skipped, a torn tail cut) and also keeps the high-water mark of
//! offsets handed out, so that recovery ([`Floor`]) never hands one out twice.
//!
//! Invariants: a partition has exactly one owner (one thread); offsets strictly increase (they
//! are dense except where a failed write or damage left a hole) and are never reused, not even
//! across recovery; a record is visible to readers only once its bytes are in the file, and a
//! record whose checksum fails is never returned.

pub mod fail;
pub mod fs;
pub mod offsets;
pub mod partition;
pub mod record;
mod segment;

pub use fs::{Files, LogFile};
pub use offsets::OffsetLog;
pub use partition::{Floor, Partition, PartitionConfig, RecoveryReport, ScrubCursor, SyncPlan};
pub use record::Record;

/// How much damage recovery and reads tolerate (after raft-engine's recovery modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Skip damaged spans anywhere, cut a torn tail, and report what was lost.
    #[default]
    TolerateCorruption,
    /// Cut a torn or damaged tail of the active segment; refuse any other damage.
    TolerateTail,
    /// Refuse any damage, a torn tail included.
    Absolute,
}

/// What kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The end of a segment holds no valid record (a write torn by a crash, or damage at the
    /// end); cut off on open.
    TornTail,
    /// Bytes in the middle of a segment that are not valid records; skipped.
    Corrupt,
    /// A segment file is missing between two others (found on open), or a sealed segment
    /// cannot be opened or read any more (found by a read or the scrubber: deleted, replaced by
    /// a directory, I/O errors); its offsets are the segment's whole range.
    MissingSegment,
    /// Bytes of the consumer-offsets log that are not valid commit records: a damaged span that
    /// was skipped (the commits after it are kept) or a torn tail that was cut. `segment` is 0
    /// and `offsets` empty (the log holds no partition offsets); `position` and `bytes` say
    /// where in `offsets.log`. A group whose last commits were there resumes at an earlier one.
    OffsetsLog,
    /// The records found on open end below the highest committed offset: records a consumer
    /// had already read are gone although no damaged bytes remain (the log was cut at a record
    /// boundary, or its last segment is missing). `offsets` are the lost offsets, `bytes` is 0,
    /// `segment` and `position` are the last segment and its end.
    LostTail,
    /// A segment index whose entries did not point at the records they named (found by a
    /// read); the index was rebuilt from the log. No offsets were lost (`offsets` is empty at
    /// the offset the entry claimed, `position` is the entry's position, `bytes` is 0).
    BadIndex,
}

impl DamageKind {
    /// The kind's stable name, for status pages, logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DamageKind::TornTail => "torn-tail",
            DamageKind::Corrupt => "corrupt",
            DamageKind::MissingSegment => "missing-segment",
            DamageKind::OffsetsLog => "offsets-log",
            DamageKind::LostTail => "lost-tail",
            DamageKind::BadIndex => "bad-index",
        }
    }
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Damage found in a partition: where, how many bytes, and which offsets were lost. (For
/// damage of the offsets log, which holds no partition offsets, see [`DamageKind::OffsetsLog`].)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The base offset of the damaged segment (0 for the offsets log).
    pub segment: u64,
    /// Byte position of the damaged span in the segment file (or the offsets log).
    pub position: u64,
    /// Length of the damaged span.
    pub bytes: u64,
    /// The offsets lost: `start..end`. For a torn tail the end is the partition's high
    /// watermark, so it is an upper bound.
    pub offsets: std::ops::Range<u64>,
    /// What kind of damage.
    pub kind: DamageKind,
}

impl Damage {
    /// Records lost (offsets are dense but for holes, so this is an upper bound).
    pub fn records(&self) -> u64 {
        self.offsets.end.saturating_sub(self.offsets.start)
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            DamageKind::TornTail => "torn or damaged tail",
            DamageKind::Corrupt => "damaged records",
            DamageKind::MissingSegment => "missing or unreadable segment",
            DamageKind::OffsetsLog => "damaged offsets log",
            DamageKind::LostTail => "records lost at the end",
            DamageKind::BadIndex => "wrong segment index (rebuilt)",
        };
        write!(
            f,
            "{what}: segment {} position {}, {} bytes, offsets {}..{} ({} records)",
            self.segment,
            self.position,
            self.bytes,
            self.offsets.start,
            self.offsets.end,
            self.records()
        )
    }
}

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
    /// Damage that the recovery mode does not tolerate.
    #[error("{path}: {damage}")]
    Damaged {
        /// The file.
        path: String,
        /// What was found.
        damage: Damage,
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

    /// The OS error, if an I/O call failed.
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What went wrong, without the path: for messages that clients see (paths are logged).
    pub fn reason(&self) -> String {
        match self {
            LogError::Io { op, source, .. } => format!("{op}: {source}"),
            LogError::Corrupt { reason, .. } => format!("damaged file: {reason}"),
            LogError::Damaged { damage, .. } => damage.to_string(),
        }
    }

    /// The damage, if this is refused damage.
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            LogError::Damaged { damage, .. } => Some(damage),
            _ => None,
        }
    }
}

/// Result alias for the log engine.
pub type Result<T> = std::result::Result<T, LogError>;
