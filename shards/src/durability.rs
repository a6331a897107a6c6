//! Group-commit generations and the core's disk-fault state.
//!
//! Appends join generation `next`; the flusher writes a generation (`written`) and then fsyncs
//! it (`synced`). A publish is answered when its generation reached the level it asked for, and
//! only if nothing failed on the way: a partition whose write failed records the generations it
//! dropped ([`Ranges`], per partition), and a failed fsync records the generations it could not
//! make durable (per core). Waiters check those before the progress counters, so no write that
//! failed is ever acknowledged, however late its waiter runs.
//!
//! After a failure the core is *faulted*: it refuses writes with 503 and `Retry-After`, and
//! [`recover`] retries at `store.fault_retry`: after a failed fsync it rewrites what was written
//! since the last good sync (the kernel may have dropped those pages) and syncs it; after a
//! failed write it checks that the disk takes a write again. Then the core takes writes again,
//! with no restart. The fault shows in `/ready`, `/v1/status` and the metrics.

use crate::event::Event;
use crate::metrics;
use crate::shard::Shard;
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
    /// Moves after every write and every sync, and when a fault is recorded.
    pub progress: Event,
    /// Wakes the flusher.
    pub work: Event,
    pub fault: RefCell<Fault>,
    /// Generations whose fsync failed (`ack=all` waiters of them get 503).
    pub sync_failed: RefCell<Ranges>,
}

impl Durability {
    /// A fresh state: appends join generation 1.
    pub fn new() -> Self {
        let d = Self::default();
        d.next.set(1);
        d
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

/// What an I/O failure was, without the path (clients never see server paths).
pub fn reason(e: &LogError) -> String {
    match e {
        LogError::Io { op, source, .. } => format!("{op}: {source}"),
        LogError::Corrupt { reason, .. } => format!("damaged file: {reason}"),
        LogError::Damaged { damage, .. } => damage.to_string(),
    }
}

/// Records a failed write on `shard` (logged with its path; counted).
pub fn write_failed(shard: &Shard, e: &LogError) {
    metrics::inc(&shard.metrics.store_write_errors_total);
    enter(shard, e, |f, why| f.write.get_or_insert(why));
}

/// Records a failed fsync on `shard`: every generation not yet synced fails for `ack=all`.
pub fn sync_failed(shard: &Shard, e: &LogError) {
    metrics::inc(&shard.metrics.store_fsync_errors_total);
    let d = &shard.dur;
    // Up to the generation appends join now: whatever was appended before the fault.
    d.sync_failed.borrow_mut().add(d.synced.get(), d.next.get());
    enter(shard, e, |f, why| f.sync.get_or_insert(why));
}

fn enter(shard: &Shard, e: &LogError, set: impl FnOnce(&mut Fault, String) -> &mut String) {
    let mut f = shard.dur.fault.borrow_mut();
    let first = !f.active();
    set(&mut f, reason(e));
    if first {
        f.since = Some(Instant::now());
        tracing::error!(
            core = shard.id,
            "storage failed, refusing writes on this core until the disk takes them again: {e}"
        );
    } else {
        tracing::debug!(core = shard.id, "storage failure: {e}");
    }
    drop(f);
    shard.dur.progress.notify();
}

/// Retries a faulted core's storage every `store.fault_retry` until it works again.
pub async fn recover(shard: Rc<Shard>) {
    let every = shard.cfg.store.fault_retry.0;
    loop {
        monoio::time::sleep(every).await;
        if shard.stop_event.epoch() > 0 {
            return;
        }
        if !shard.dur.fault.borrow().active() {
            continue;
        }
        let sync = shard.dur.fault.borrow().sync.is_some();
        if sync {
            match rewrite_unsynced(&shard) {
                Ok(()) => {
                    shard.dur.fault.borrow_mut().sync = None;
                    shard.dur.synced.set(shard.dur.written.get());
                }
                Err(e) => {
                    tracing::debug!(core = shard.id, "storage still failing: {e}");
                    continue;
                }
            }
        }
        if shard.dur.fault.borrow().write.is_some() {
            match probe(&shard) {
                Ok(()) => shard.dur.fault.borrow_mut().write = None,
                Err(e) => {
                    tracing::debug!(core = shard.id, "storage still failing: {e}");
                    continue;
                }
            }
        }
        let since = shard.dur.fault.borrow_mut().since.take();
        metrics::inc(&shard.metrics.store_recoveries_total);
        tracing::warn!(
            core = shard.id,
            after_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64),
            "storage works again: taking writes"
        );
        // Commits that could not be written are still pending: write them now.
        let pending: Vec<_> = shard
            .parts
            .borrow()
            .iter()
            .filter(|(_, p)| p.borrow().offsets.has_pending())
            .map(|(k, _)| k.clone())
            .collect();
        for (topic, p) in pending {
            shard.mark_dirty(&topic, p);
        }
        shard.dur.progress.notify();
        shard.dur.work.notify();
    }
}

/// After a failed fsync: every partition writes what it wrote since its last good sync again
/// and syncs it (blocking: this runs only while the core refuses writes anyway).
fn rewrite_unsynced(shard: &Shard) -> Result<(), LogError> {
    let parts: Vec<_> = shard.parts.borrow().values().cloned().collect();
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
fn probe(shard: &Shard) -> Result<(), LogError> {
    use std::io::Write;
    let path = shard
        .cfg
        .store
        .data_dir
        .join(format!("meta/.probe-core{}", shard.id));
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
