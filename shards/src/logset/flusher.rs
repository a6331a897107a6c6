//! Group commit. Two tasks per core turn appends into file writes and fsyncs.
//!
//! The writer:
//! 1. waits for work (an append or commit marked a partition dirty);
//! 2. yields once, so every request that is ready in this reactor tick can join the batch;
//! 3. closes generation `g`, writes every dirty partition's pending bytes with one positioned
//!    write each, and marks `g` written (wakes `ack=local` publishes, and the long polls of the
//!    topics written, here and on the cores that asked: [`crate::shard::Shard::wake`]).
//!
//! The syncer fsyncs every file written since its last sync, concurrently through io_uring,
//! when an `ack=all` publish waits for a written generation, or when the unsynced bytes or
//! their age pass the configured bounds; then it marks the last generation written before the
//! sync began as synced.
//!
//! Writes go on while an fsync is in flight, so an `ack=local` publish never waits for one.
//! Appends that no `ack=local` publish waits for are held until the sync ends and written then
//! as one generation: one fsync covers as many `ack=all` publishes as arrived during the
//! previous one, with one write.
//!
//! A failed write drops that partition's pending records and records their generations as
//! failed; a failed fsync records every generation not yet synced as failed and stops syncing
//! until [`durability::recover`] has rewritten and synced what was written. Either way the
//! waiters of those generations get 503 (see [`super::durability`]).

use super::{durability, LogSet, PartKey};
use crate::metrics::{self, Stage};
use kateway_log::fs::FP_FSYNC;
use kateway_log::{LogError, LogFile, SyncPlan};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

/// Files fsynced at once (each needs a duplicated descriptor while its fsync is in flight).
pub const SYNC_BATCH: usize = 64;

/// What the writer and the syncer share.
#[derive(Default)]
struct Unsynced {
    /// Partitions written since the last sync began.
    parts: RefCell<HashSet<PartKey>>,
    /// Bytes written since then.
    bytes: Cell<u64>,
    /// When the oldest of them was written.
    since: Cell<Option<Instant>>,
    /// Whether an fsync is in flight.
    syncing: Cell<bool>,
    /// The writer is done (the core stops): the syncer ends.
    done: Cell<bool>,
}

/// Runs the writer and the syncer until the core stops (after a final write and sync).
pub async fn run(set: Rc<LogSet>) {
    let un = Rc::new(Unsynced::default());
    let syncer = monoio::spawn(sync_loop(set.clone(), un.clone()));
    write_loop(&set, &un).await;
    syncer.await;
    // A clean stop leaves each segment ending with its last record.
    for part in set.parts.borrow().values() {
        part.borrow().log.trim();
    }
}

async fn write_loop(set: &LogSet, un: &Unsynced) {
    let shard = &set.shard;
    let dur = &set.dur;
    let fsync_bytes = shard.cfg().store.fsync_bytes.0;
    loop {
        let stopping = shard.stop_event.epoch() > 0;
        let dirty = !set.dirty.borrow().is_empty();
        // During an fsync only `ack=local` waiters need their write now.
        let hold = un.syncing.get() && dur.write_wanted.get() <= dur.written.get() && !stopping;
        if dirty && !hold {
            let gen = dur.next.get();
            dur.next.set(gen + 1);
            let clean = un.parts.borrow().is_empty();
            let t0 = Instant::now();
            let written = write_dirty(set, gen, &mut un.parts.borrow_mut());
            let t1 = Instant::now();
            if written > 0 {
                shard.metrics.stage(Stage::Write, t1 - t0);
            }
            dur.mark_written(gen, t1);
            un.bytes.set(un.bytes.get() + written);
            let first = clean && !un.parts.borrow().is_empty();
            if first {
                un.since.set(Some(t1));
            }
            dur.written.set(gen);
            dur.progress.notify();
            // The syncer sleeps until its interval unless it has a reason to sync sooner.
            if first
                || dur.sync_wanted.get() > dur.synced.get()
                || un.bytes.get() >= fsync_bytes
                || stopping
            {
                dur.kick.notify();
            }
            continue;
        }
        if stopping && !dirty && !un.syncing.get() {
            // A failed write leaves the other partitions to sync; a failed fsync leaves
            // nothing that can be synced before the recovery.
            let clean = un.parts.borrow().is_empty() || dur.fault.borrow().sync.is_some();
            if clean {
                un.done.set(true);
                dur.kick.notify();
                return;
            }
            dur.kick.notify();
        }
        let (work, urgent) = (dur.work.epoch(), dur.urgent.epoch());
        let (synced, stop_seen) = (dur.sync_progress.epoch(), shard.stop_event.epoch());
        if hold || stopping {
            // Until the sync ends (or, when stopping, until it has synced what is left), unless
            // an `ack=local` publish comes.
            monoio::select! {
                _ = dur.urgent.wait(urgent) => {},
                _ = dur.sync_progress.wait(synced) => {},
                _ = dur.work.wait(work), if stopping => {},
                _ = shard.stop_event.wait(stop_seen), if !stopping => {},
            }
        } else {
            monoio::select! {
                _ = dur.work.wait(work) => {},
                _ = shard.stop_event.wait(stop_seen) => {},
            }
        }
        crate::event::yield_now().await;
    }
}

async fn sync_loop(set: Rc<LogSet>, un: Rc<Unsynced>) {
    let shard = set.shard.clone();
    let dur = &set.dur;
    let interval = shard.cfg().store.fsync_interval.0;
    let fsync_bytes = shard.cfg().store.fsync_bytes.0;
    loop {
        if un.done.get() {
            return;
        }
        let faulted = dur.fault.borrow().sync.is_some();
        let clean = un.parts.borrow().is_empty();
        if clean && !faulted && dur.synced.get() < dur.written.get() {
            // Nothing written since the last sync: every written generation is synced.
            dur.synced.set(dur.written.get());
            dur.sync_progress.notify();
        }
        let age = un.since.get().map(|t| t.elapsed());
        let wanted = dur.sync_wanted.get().min(dur.written.get()) > dur.synced.get();
        let due = wanted
            || un.bytes.get() >= fsync_bytes
            || age.is_some_and(|a| a >= interval)
            || shard.stop_event.epoch() > 0;
        if faulted || clean || !due {
            // Nothing is synced while a failed fsync is unresolved: until the recovery has
            // rewritten what it may have lost, a plain retry would report success without it.
            let (kick, stop) = (dur.kick.epoch(), shard.stop_event.epoch());
            // Faulted, it looks again at the interval: the recovery clears the fault.
            let left = match age {
                _ if faulted => Some(interval),
                Some(a) if !clean => Some(interval.saturating_sub(a)),
                _ => None,
            };
            monoio::select! {
                _ = dur.kick.wait(kick) => {},
                _ = shard.stop_event.wait(stop) => {},
                _ = monoio::time::sleep(left.unwrap_or_default()), if left.is_some() => {},
            }
            continue;
        }
        // Everything written up to `gen` is in the partitions taken now.
        let gen = dur.written.get();
        let bytes = un.bytes.replace(0);
        un.since.set(None);
        un.syncing.set(true);
        let t0 = Instant::now();
        let ok = sync_all(&set, &un.parts).await;
        un.syncing.set(false);
        shard.metrics.fsync_seconds.observe(t0.elapsed());
        metrics::inc(&shard.metrics.log_fsyncs_total);
        if ok {
            dur.synced.set(gen.max(dur.synced.get()));
        } else {
            un.bytes.set(un.bytes.get() + bytes);
            if un.since.get().is_none() {
                un.since.set(Some(t0));
            }
        }
        dur.sync_progress.notify();
    }
}

/// Writes every dirty partition as generation `gen`; returns the bytes written. Wakes long
/// polls of the topics that got new records.
fn write_dirty(set: &LogSet, gen: u64, unsynced: &mut HashSet<PartKey>) -> u64 {
    let shard = &set.shard;
    let dirty = std::mem::take(&mut *set.dirty.borrow_mut());
    let mut total = 0u64;
    let mut topics: Vec<Rc<str>> = Vec::new();
    for key in dirty {
        let Some(part) = set.parts.borrow().get(&key).cloned() else {
            continue;
        };
        let mut st = part.borrow_mut();
        let st = &mut *st;
        let before = st.log.pending_bytes();
        let res = st.log.write_pending();
        set.pending_bytes
            .set(set.pending_bytes.get().saturating_sub(before));
        match res {
            Ok(n) => {
                st.written_gen = gen;
                total += n as u64;
                if n > 0 {
                    unsynced.insert(key.clone());
                    if !topics.contains(&key.0) {
                        topics.push(key.0.clone());
                    }
                }
            }
            Err(e) => {
                st.write_failed.add(st.written_gen, gen);
                // The failed records' offsets were answered (`async=1`) or may be: they stay
                // unused for good, across restarts too, once this mark is written.
                st.offsets.hold(st.log.next_offset());
                durability::write_failed(set, &e);
            }
        }
        if st.offsets.has_pending() {
            match st.offsets.write_pending() {
                Ok(()) => {
                    st.commit_written_gen = gen;
                    unsynced.insert(key.clone());
                }
                Err(e) => {
                    st.commit_failed.add(st.commit_written_gen, gen);
                    // The commits stay pending; the recovery writes them.
                    durability::write_failed(set, &e);
                }
            }
        }
    }
    if total > 0 {
        metrics::inc(&shard.metrics.log_writes_total);
        metrics::add(&shard.metrics.log_written_bytes_total, total);
    }
    for t in topics {
        shard.wake(&t);
    }
    total
}

/// What one partition's fsync covers.
struct Job {
    key: PartKey,
    /// The partition the plan was made for: one removed and opened again during the fsync
    /// (a topic deleted and created anew) is another, which this sync did not cover.
    part: Rc<RefCell<super::LogPart>>,
    plan: Option<SyncPlan>,
    offsets: Option<(u64, u64)>,
    files: Vec<LogFile>,
}

/// fsyncs every file written since the last sync, concurrently; returns whether all succeeded
/// (on failure the core is faulted and the partitions stay unsynced).
async fn sync_all(set: &LogSet, unsynced: &RefCell<HashSet<PartKey>>) -> bool {
    let mut jobs = Vec::new();
    let taken = std::mem::take(&mut *unsynced.borrow_mut());
    for key in taken {
        let Some(part) = set.parts.borrow().get(&key).cloned() else {
            continue;
        };
        let mut st = part.borrow_mut();
        let plan = st.log.sync_plan();
        let mut files: Vec<LogFile> = plan.as_ref().map_or(Vec::new(), |p| p.files.clone());
        let offsets = st.offsets.unsynced_file().map(|(t, f)| {
            files.push(f.clone());
            t
        });
        drop(st);
        jobs.push(Job {
            key,
            part,
            plan,
            offsets,
            files,
        });
    }
    let mut failure: Option<LogError> = None;
    let mut results: Vec<bool> = Vec::with_capacity(jobs.len());
    let all: Vec<(usize, LogFile)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(i, j)| j.files.iter().map(move |f| (i, f.clone())))
        .collect();
    results.resize(jobs.len(), true);
    for batch in all.chunks(SYNC_BATCH) {
        let handles: Vec<_> = batch
            .iter()
            .map(|(i, f)| {
                let f = f.clone();
                let i = *i;
                monoio::spawn(async move { (i, fsync(&f).await.map_err(|e| (f, e))) })
            })
            .collect();
        for h in handles {
            let (i, r) = h.await;
            if let Err((f, e)) = r {
                results[i] = false;
                failure.get_or_insert(LogError::Io {
                    op: "fsync",
                    path: f.path().display().to_string(),
                    source: e,
                });
            }
        }
    }
    for (job, ok) in jobs.into_iter().zip(results) {
        let now = set.parts.borrow().get(&job.key).cloned();
        if !now.is_some_and(|p| Rc::ptr_eq(&p, &job.part)) {
            continue;
        }
        let mut st = job.part.borrow_mut();
        if let Some(plan) = job.plan {
            st.log.sync_done(plan, ok);
        }
        if ok {
            if let Some(t) = job.offsets {
                st.offsets.synced(t);
            }
        } else {
            unsynced.borrow_mut().insert(job.key);
        }
    }
    match failure {
        None => true,
        Some(e) => {
            durability::sync_failed(set, &e);
            false
        }
    }
}

/// `fdatasync` through io_uring on a descriptor of its own.
async fn fsync(f: &LogFile) -> std::io::Result<()> {
    match kateway_log::fail::eval(FP_FSYNC) {
        None => {}
        Some(kateway_log::fail::Action::Hang) => std::future::pending::<()>().await,
        Some(kateway_log::fail::Action::Delay(ms)) => {
            monoio::time::sleep(std::time::Duration::from_millis(ms)).await
        }
        Some(a) => return Err(a.error()),
    }
    let file = monoio::fs::File::from_std(f.dup()?)?;
    file.sync_data().await
}
