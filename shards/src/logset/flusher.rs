//! Group commit. One flusher task per core turns appends into file writes and fsyncs:
//!
//! 1. wait for work (an append or commit marked a partition dirty) or for the fsync interval;
//! 2. yield once, so every request that is ready in this reactor tick can join the batch;
//! 3. close generation `g`, write every dirty partition's pending bytes with one positioned
//!    write each, mark `g` written (wakes `ack=local` publishes, and the long polls of the
//!    topics written, here and on the cores that asked: [`crate::shard::Shard::wake`]);
//! 4. if an `ack=all` publish waits for `g`, or unsynced bytes or age passed the configured
//!    bounds, fsync every file written since the last sync, concurrently through io_uring, and
//!    mark `g` synced.
//!
//! Appends that arrive while a sync is in flight form the next generation, so one fsync covers
//! as many publishes as arrived during the previous one. A failed write drops that partition's
//! pending records and records their generations as failed; a failed fsync records every
//! generation not yet synced as failed and stops syncing until [`durability::recover`]
//! has rewritten and synced what was written. Either way the waiters of those generations get
//! 503 (see [`super::durability`]).

use super::{durability, LogSet, PartKey};
use crate::metrics::{self, Stage};
use kateway_log::fs::FP_FSYNC;
use kateway_log::{LogError, LogFile, SyncPlan};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

/// Files fsynced at once (each needs a duplicated descriptor while its fsync is in flight).
pub const SYNC_BATCH: usize = 64;

/// Runs the flusher until the core stops (after a final write and sync).
pub async fn run(set: Rc<LogSet>) {
    let shard = set.shard.clone();
    let interval = shard.cfg().store.fsync_interval.0;
    let fsync_bytes = shard.cfg().store.fsync_bytes.0;
    let mut unsynced: HashSet<PartKey> = HashSet::new();
    let mut unsynced_bytes: u64 = 0;
    let mut last_sync = Instant::now();
    loop {
        let stopping = shard.stop_event.epoch() > 0;
        if set.dirty.borrow().is_empty() && !stopping {
            let seen = set.dur.work.epoch();
            let stop_seen = shard.stop_event.epoch();
            if unsynced.is_empty() {
                monoio::select! {
                    _ = set.dur.work.wait(seen) => {},
                    _ = shard.stop_event.wait(stop_seen) => {},
                }
            } else {
                let left = interval.saturating_sub(last_sync.elapsed());
                monoio::select! {
                    _ = set.dur.work.wait(seen) => {},
                    _ = shard.stop_event.wait(stop_seen) => {},
                    _ = monoio::time::sleep(left) => {},
                }
            }
            crate::event::yield_now().await;
        }
        let gen = set.dur.next.get();
        set.dur.next.set(gen + 1);
        let t0 = Instant::now();
        let written = write_dirty(&set, gen, &mut unsynced);
        let t1 = Instant::now();
        if written > 0 {
            shard.metrics.stage(Stage::Write, t1 - t0);
        }
        set.dur.mark_written(gen, t1);
        unsynced_bytes += written;
        set.dur.written.set(gen);
        set.dur.progress.notify();
        let sync_fault = set.dur.fault.borrow().sync.is_some();
        let want_sync = set.dur.sync_wanted.get() > set.dur.synced.get()
            || unsynced_bytes >= fsync_bytes
            || last_sync.elapsed() >= interval
            || shard.stop_event.epoch() > 0;
        if sync_fault {
            // Nothing is synced until the recovery has rewritten what the failed fsync may
            // have lost; a plain retry would report success without the data.
        } else if want_sync && !unsynced.is_empty() {
            let t0 = Instant::now();
            let ok = sync_all(&set, &mut unsynced).await;
            shard.metrics.fsync_seconds.observe(t0.elapsed());
            metrics::inc(&shard.metrics.log_fsyncs_total);
            if ok {
                unsynced_bytes = 0;
                last_sync = Instant::now();
                set.dur.synced.set(gen);
            }
            set.dur.progress.notify();
        } else if unsynced.is_empty() {
            last_sync = Instant::now();
            set.dur.synced.set(gen);
            set.dur.progress.notify();
        }
        if shard.stop_event.epoch() > 0
            && set.dirty.borrow().is_empty()
            && (unsynced.is_empty() || set.dur.fault.borrow().active())
        {
            // A clean stop leaves each segment ending with its last record.
            for part in set.parts.borrow().values() {
                part.borrow().log.trim();
            }
            return;
        }
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
    plan: Option<SyncPlan>,
    offsets: Option<(u64, u64)>,
    files: Vec<LogFile>,
}

/// fsyncs every file written since the last sync, concurrently; returns whether all succeeded
/// (on failure the core is faulted and the partitions stay unsynced).
async fn sync_all(set: &LogSet, unsynced: &mut HashSet<PartKey>) -> bool {
    let mut jobs = Vec::new();
    for key in unsynced.drain() {
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
        jobs.push(Job {
            key,
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
        let Some(part) = set.parts.borrow().get(&job.key).cloned() else {
            continue;
        };
        let mut st = part.borrow_mut();
        if let Some(plan) = job.plan {
            st.log.sync_done(plan, ok);
        }
        if ok {
            if let Some(t) = job.offsets {
                st.offsets.synced(t);
            }
        } else {
            unsynced.insert(job.key);
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
    if let Some(a) = kateway_log::fail::eval(FP_FSYNC) {
        return Err(a.error());
    }
    let file = monoio::fs::File::from_std(f.dup()?)?;
    file.sync_data().await
}
