//! Recovery: opening a partition's directory ([`Partition::open`]).
//!
//! Every entry named like a segment is opened in offset order; a sealed segment with a valid
//! index is trusted, any other is scanned: damaged spans are skipped, a torn tail is cut, every
//! segment after a damaged or missing one is kept. Entries named like segment or index files
//! that are not regular files (a directory called `00000000000000000100.log`) are stray: they
//! are moved aside (renamed to `<name>.stray`) so that no later segment collides with them,
//! logged, and listed in the report; they never make opening fail.
//!
//! No offset is ever handed out twice: the next offset is at least what the caller knows was
//! reached ([`Floor`]: the highest committed offset and the high-water mark of offsets handed
//! out). When the records found end below the highest committed offset without damage to
//! account for it (the log was cut at a record boundary, the last segment is gone), the lost
//! offsets are reported as [`DamageKind::LostTail`].
//!
//! The recovery mode decides what is refused before anything is changed:
//! [`RecoveryMode::TolerateCorruption`] refuses nothing; [`RecoveryMode::TolerateTail`] accepts
//! a torn tail of the active segment and a lost tail (both are what a crash that loses unsynced
//! writes leaves, the second when a consumer had read those writes before they were synced)
//! and refuses the rest; [`RecoveryMode::Absolute`] refuses any damage.

use super::{sync_dir, Floor, Partition, PartitionConfig, RecoveryReport};
use crate::fs::{ensure_dir, Files};
use crate::segment::{self, Segment};
use crate::{Damage, DamageKind, LogError, RecoveryMode, Result};
use bytes::BytesMut;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

impl Partition {
    /// Opens (creating if needed) the partition in `dir`, recovering its segments. The next
    /// offset is at least [`Floor::next`]. Descriptors come from `files` and are not kept open.
    /// Fails if the recovery mode refuses the damage found ([`LogError::Damaged`], nothing
    /// changed), a file cannot be read, or `dir` exists but is not a directory (an I/O error of
    /// kind [`std::io::ErrorKind::NotADirectory`]).
    pub fn open(
        dir: &Path,
        cfg: PartitionConfig,
        files: &Rc<Files>,
        floor: Floor,
    ) -> Result<(Self, RecoveryReport)> {
        ensure_dir(dir)?;
        let (bases, stray) = list_segments(dir)?;
        let mut report = RecoveryReport {
            segments: bases.len(),
            stray,
            ..Default::default()
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut opened = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let prev_next = segments.last().map(|s: &Segment| s.next_offset);
            if let Some(prev) = prev_next.filter(|&p| p < base) {
                // A hole in the offsets between two segments: a segment file is missing.
                report.damage.push(Damage {
                    segment: base,
                    position: 0,
                    bytes: 0,
                    offsets: prev..base,
                    kind: DamageKind::MissingSegment,
                });
            }
            let min_offset = prev_next.unwrap_or(base).max(base);
            let (seg, damage, len, trusted) = Segment::open(
                files,
                segment::log_path(dir, base),
                base,
                bases.get(i + 1).copied(),
                cfg.index_interval,
                min_offset,
            )?;
            report.damage.extend(damage);
            opened.push((len, trusted));
            segments.push(seg);
        }
        account_tail(&mut report, &segments, floor);
        Self::check_mode(dir, &cfg, &report, &segments)?;
        let n = segments.len();
        for (i, (seg, (len, trusted))) in segments.iter_mut().zip(opened).enumerate() {
            if len > seg.size {
                report.truncated_bytes += len - seg.size;
                seg.cut_tail()?;
            }
            if i + 1 < n && !trusted {
                // A sealed segment that had to be scanned: write its index again.
                seg.seal();
            }
        }
        if segments.is_empty() {
            segments.push(Segment::create(
                files,
                dir,
                floor.next(),
                cfg.index_interval,
            )?);
            sync_dir(dir)?;
        }
        let last = segments.last_mut().expect("one segment");
        // Offsets are never reused: not those of a cut tail that a consumer had already
        // committed past, nor those handed out for records that never reached the file.
        last.next_offset = last.next_offset.max(floor.next());
        let next_offset = last.next_offset;
        let since_index = last.since_index;
        last.file.close();
        report.next_offset = next_offset;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                cfg,
                files: files.clone(),
                segments,
                pending: BytesMut::new(),
                pending_index: Vec::new(),
                since_index,
                next_offset,
                sealed_unsynced: Vec::new(),
                found: RefCell::new(Vec::new()),
            },
            report,
        ))
    }

    fn check_mode(
        dir: &Path,
        cfg: &PartitionConfig,
        report: &RecoveryReport,
        segments: &[Segment],
    ) -> Result<()> {
        let active = segments.last().map(|s| s.base);
        let refused = report.damage.iter().find(|d| match cfg.recovery {
            RecoveryMode::TolerateCorruption => false,
            RecoveryMode::TolerateTail => match d.kind {
                DamageKind::TornTail => Some(d.segment) != active,
                DamageKind::LostTail => false,
                _ => true,
            },
            RecoveryMode::Absolute => true,
        });
        match refused {
            Some(d) => Err(LogError::Damaged {
                path: segment::log_path(dir, d.segment).display().to_string(),
                damage: d.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Bounds what torn tails cost in offsets, and reports a lost tail: records found ending below
/// the highest committed offset with no torn tail of the last segment to account for it.
fn account_tail(report: &mut RecoveryReport, segments: &[Segment], floor: Floor) {
    let found_end = segments.last().map_or(0, |s| s.next_offset);
    // What the damage cost in offsets is bounded by the next segment's base, or for the last
    // segment by the floor.
    let hwm = found_end.max(floor.next());
    // (A missing segment right after a torn tail already counts the offsets between them.)
    let missing_from: Vec<u64> = report
        .damage
        .iter()
        .filter(|d| d.kind == DamageKind::MissingSegment)
        .map(|d| d.offsets.start)
        .collect();
    for d in report.damage.iter_mut() {
        if d.kind == DamageKind::TornTail && !missing_from.contains(&d.offsets.start) {
            let next_base = segments
                .iter()
                .map(|s| s.base)
                .find(|&b| b > d.segment)
                .unwrap_or(hwm);
            d.offsets.end = d.offsets.end.max(next_base);
        }
    }
    let last = segments.last();
    let torn_last = report
        .damage
        .iter()
        .any(|d| d.kind == DamageKind::TornTail && Some(d.segment) == last.map(|s| s.base));
    // Offsets at or above `held` may never have been handed out; below it they were, and the
    // records are gone (or were a hole: a consumer may commit past a hole, then it is reported
    // although nothing was lost).
    let lost_from = found_end.max(floor.held);
    if !torn_last && lost_from < floor.committed {
        report.damage.push(Damage {
            segment: last.map_or(0, |s| s.base),
            position: last.map_or(0, |s| s.size),
            bytes: 0,
            offsets: lost_from..floor.committed,
            kind: DamageKind::LostTail,
        });
    }
}

/// The base offsets of the segment files in `dir`, sorted, and the stray entries that were
/// moved aside (see the module docs).
fn list_segments(dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>)> {
    let mut bases = Vec::new();
    let mut stray = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("readdir", dir, e))?;
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let numbered = |ext: &str| name.strip_suffix(ext).and_then(|b| b.parse::<u64>().ok());
        let base = numbered(".log");
        if base.is_none() && numbered(".index").is_none() {
            continue;
        }
        let path = e.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            bases.extend(base);
            continue;
        }
        let aside = dir.join(format!("{name}.stray"));
        match std::fs::rename(&path, &aside) {
            Ok(()) => tracing::warn!(path = %path.display(), moved_to = %aside.display(),
                "an entry named like a segment file is not a regular file: moved aside"),
            Err(err) => tracing::warn!(path = %path.display(),
                "an entry named like a segment file is not a regular file: skipped \
                (cannot move it aside: {err})"),
        }
        stray.push(path);
    }
    bases.sort_unstable();
    Ok((bases, stray))
}

#[cfg(test)]
mod tests;
