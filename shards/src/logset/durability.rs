//! Group-commit generations and the core's disk-fault state.
//!
//! Appends join generation `next`; the flusher's writer writes a generation (`written`) and
//! its syncer fsyncs what was written (`synced`). A publish is answered when its generation
//! reached the level it asked for, and only if nothing failed on the way: a partition whose
//! write failed records the generations it dropped ([`Ranges`], per partition), and a failed
//! fsync records the generations it could not make durable (per core). Waiters check those
//! before the progress counters, so no write that failed is ever acknowledged, however late
//! its waiter runs.
//!
//! After a failure the core is *faulted*: it refuses writes with 503 and `Retry-After`, and
//! [`recover`] retries at `store.fault_retry`: after a failed fsync it rewrites what was written
//! since the last good sync (the kernel may have dropped those pages) and syncs it; after a
//! failed write it checks that the disk takes a write again. Then the core takes writes again,
//! with no restart. The fault shows in `/ready`, `/v1/status` and the metrics.

use super::LogSet;
use crate::event::Event;
use crate::metrics;
use kateway_core::{Error, ErrorKind};
use kateway_log::LogError;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

/// Generation ranges `(lo, hi]` whose writes or fsyncs failed.
#[derive(Default, Debug)]
pub struct Ranges(Vec<(u64, u64)>);

/// How many failure episodes a partition remembers; a waiter older than that many failures is
/// long gone.
const MAX_RANGES: usize = 64;

impl Ranges {
    /// Records that generations `(lo, hi]` failed.
    pub fn add(&mut self, lo: u64, hi: u64) {
        if hi <= lo {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if lo <= last.1 {
                last.1 = last.1.max(hi);
                return;
            }
        }
        self.0.push((lo, hi));
        if self.0.len() > MAX_RANGES {
            self.0.remove(0);
        }
    }

    /// Whether generation `g` failed.
    pub fn contains(&self, g: u64) -> bool {
        self.0.iter().rev().any(|&(lo, hi)| lo < g && g <= hi)
    }
}

/// What failed on this core, until [`recover`] clears it.
#[derive(Default, Debug, Clone)]
pub struct Fault {
    /// A write failed: why (no paths; they are logged).
    pub write: Option<String>,
    /// An fsync failed: why.
    pub sync: Option<String>,
    /// When the core became faulted.
    pub since: Option<Instant>,
}

impl Fault {
    /// Whether the core refuses writes.
    pub fn active(&self) -> bool {
        self.write.is_some() || self.sync.is_some()
    }

    /// A one-line description for clients and status.
    pub fn describe(&self) -> String {
        match (&self.write, &self.sync) {
            (Some(w), _) => w.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Group-commit bookkeeping.
#[derive(Default)]
pub struct Durability {
    pub next: Cell<u64>,
    pub written: Cell<u64>,
    pub synced: Cell<u64>,
    /// The highest generation an `ack=all` caller waits to see synced.
    pub sync_wanted: Cell<u64>,
    /// The highest generation an `ack=local` caller waits to see written.
    pub write_wanted: Cell<u64>,
    /// Moves when `write_wanted` does: the writer holds no write back for a sync then.
    pub urgent: Event,
    /// Moves after every write, and when a fault is recorded or cleared (`ack=local` waiters).
    pub progress: Event,
    /// Moves after every sync, and when a fault is recorded or cleared (`ack=all` waiters, who
    /// would only look and sleep again after a write).
    pub sync_progress: Event,
    /// Wakes the flusher's writer.
    pub work: Event,
    /// Wakes the flusher's syncer (an `ack=all` wait, a write it should know of).
    pub kick: Event,
    pub fault: RefCell<Fault>,
    /// Generations whose fsync failed (`ack=all` waiters of them get 503).
    pub sync_failed: RefCell<Ranges>,
    /// When the last few generations were written (for the publish stage histograms).
    pub written_at: RefCell<std::collections::VecDeque<(u64, std::time::Instant)>>,
}

impl Durability {
    /// A fresh state: appends join generation 1.
    pub fn new() -> Self {
        let d = Self::default();
        d.next.set(1);
        d
    }

    /// Records that generation `gen` was written at `t`.
    pub fn mark_written(&self, gen: u64, t: std::time::Instant) {
        let mut w = self.written_at.borrow_mut();
        if w.len() == WRITTEN_AT {
            w.pop_front();
        }
        w.push_back((gen, t));
    }

    /// When generation `gen` (or, if it wrote nothing of its own, the first after it) was
    /// written, if that is among the last few.
    pub fn written_time(&self, gen: u64) -> Option<std::time::Instant> {
        let w = self.written_at.borrow();
        w.iter().find(|(g, _)| *g >= gen).map(|&(_, t)| t)
    }

    /// A fault was recorded or cleared: every waiter looks again, whatever level it waits for.
    pub fn fault_changed(&self) {
        self.progress.notify();
        self.sync_progress.notify();
    }

    /// The error for requests refused or failed by the fault.
    pub fn fault_error(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::StorageFailed,
            format!(
                "{what}: the disk refused a write ({}); retrying",
                self.fault.borrow().describe()
            ),
        )
    }
}

/// Generations whose write time [`Durability::written_time`] remembers.
const WRITTEN_AT: usize = 8;

/// Records a failed write (logged with its path; counted).
pub fn write_failed(set: &LogSet, e: &LogError) {
    metrics::inc(&set.shard.metrics.store_write_errors_total);
    enter(set, e, |f, why| f.write.get_or_insert(why));
}

/// Records a failed fsync: every generation not yet synced fails for `ack=all`.
pub fn sync_failed(set: &LogSet, e: &LogError) {
    metrics::inc(&set.shard.metrics.store_fsync_errors_total);
    let d = &set.dur;
    // Up to the generation appends join now: whatever was appended before the fault. Later
    // appends join a generation of their own, which the failure does not cover.
    d.sync_failed.borrow_mut().add(d.synced.get(), d.next.get());
    d.next.set(d.next.get() + 1);
    enter(set, e, |f, why| f.sync.get_or_insert(why));
}

fn enter(set: &LogSet, e: &LogError, update: impl FnOnce(&mut Fault, String) -> &mut String) {
    let mut f = set.dur.fault.borrow_mut();
    let first = !f.active();
    update(&mut f, e.reason());
    if first {
        f.since = Some(Instant::now());
        tracing::error!(
            core = set.shard.id,
            store = set.what,
            "storage failed, refusing writes on this core until the disk takes them again: {e}"
        );
    } else {
        tracing::debug!(core = set.shard.id, "storage failure: {e}");
    }
    drop(f);
    set.dur.fault_changed();
}

/// Retries a faulted set's storage every `store.fault_retry` until it works again.
pub async fn recover(set: Rc<LogSet>) {
    let shard = set.shard.clone();
    let every = shard.cfg().store.fault_retry.0;
    while !shard.sleep(every).await {
        if !set.dur.fault.borrow().active() {
            continue;
        }
        let sync = set.dur.fault.borrow().sync.is_some();
        if sync {
            match rewrite_unsynced(&set) {
                Ok(()) => {
                    set.dur.fault.borrow_mut().sync = None;
                    set.dur.synced.set(set.dur.written.get());
                }
                Err(e) => {
                    tracing::debug!(core = shard.id, "storage still failing: {e}");
                    continue;
                }
            }
        }
        if set.dur.fault.borrow().write.is_some() {
            match probe(&set) {
                Ok(()) => set.dur.fault.borrow_mut().write = None,
                Err(e) => {
                    tracing::debug!(core = shard.id, "storage still failing: {e}");
                    continue;
                }
            }
        }
        let since = set.dur.fault.borrow_mut().since.take();
        metrics::inc(&shard.metrics.store_recoveries_total);
        tracing::warn!(
            core = shard.id,
            store = set.what,
            after_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64),
            "storage works again: taking writes"
        );
        // Commits that could not be written are still pending: write them now.
        let pending: Vec<_> = set
            .parts
            .borrow()
            .iter()
            .filter(|(_, p)| p.borrow().offsets.has_pending())
            .map(|(k, _)| k.clone())
            .collect();
        for (topic, p) in pending {
            set.mark_dirty(&topic, p);
        }
        set.dur.fault_changed();
        set.dur.work.notify();
    }
}

/// After a failed fsync: every partition writes what it wrote since its last good sync again
/// and syncs it (blocking: this runs only while the core refuses writes anyway).
fn rewrite_unsynced(set: &LogSet) -> Result<(), LogError> {
    let shard = &set.shard;
    let parts: Vec<_> = set.parts.borrow().values().cloned().collect();
    for part in parts {
        let mut st = part.borrow_mut();
        let damage = st.log.rewrite_unsynced()?;
        if let Some((token, f)) = st.offsets.unsynced_file() {
            let f = f.clone();
            f.sync_data().map_err(|e| LogError::Io {
                op: "fsync",
                path: f.path().display().to_string(),
                source: e,
            })?;
            st.offsets.synced(token);
        }
        for d in damage {
            tracing::error!(
                core = shard.id,
                "after a failed fsync, written records were lost: {d}"
            );
            metrics::add(&shard.metrics.log_damaged_records_total, d.records());
        }
    }
    Ok(())
}

/// Writes, syncs and removes a small file in the data directory: does the disk take writes?
fn probe(set: &LogSet) -> Result<(), LogError> {
    use std::io::Write;
    let path = set
        .shard
        .cfg()
        .store
        .data_dir
        .join(format!("meta/.probe-{}-core{}", set.what, set.shard.id));
    let io = |e| LogError::Io {
        op: "probe write",
        path: path.display().to_string(),
        source: e,
    };
    if let Some(a) = kateway_log::fail::eval(kateway_log::fs::FP_WRITE) {
        return Err(io(a.error()));
    }
    let res = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 << 10])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    res.map_err(io)
}
