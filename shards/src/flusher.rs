//! Group commit. One flusher task per core turns appends into file writes and fsyncs:
//!
//! 1. wait for work (an append or commit marked a partition dirty) or for the fsync interval;
//! 2. yield once, so every request that is ready in this reactor tick can join the batch;
//! 3. close generation `g`, write every dirty partition's pending bytes with one positioned
//!    write each, mark `g` written (wakes `ack=local` publishes and parked long polls, here and
//!    on cores that asked through [`crate::mesh::Msg::Interest`]);
//! 4. if an `ack=all` publish waits for `g`, or unsynced bytes or age passed the configured
//!    bounds, fsync every file written since the last sync, concurrently through io_uring, and
//!    mark `g` synced.
//!
//! Appends that arrive while a sync is in flight form the next generation, so one fsync covers
//! as many publishes as arrived during the previous one. A failed write or fsync poisons the
//! core: waiting and later writes get 503, because after a failed fsync the page cache can no
//! longer be trusted to hold what was acknowledged.

use crate::mesh::Msg;
use crate::metrics;
use crate::shard::{PartKey, Shard};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Runs the flusher until the core stops (after a final write and sync).
pub async fn run(shard: Rc<Shard>) {
    let interval = shard.cfg.store.fsync_interval.0;
    let fsync_bytes = shard.cfg.store.fsync_bytes.0;
    let mut unsynced: HashSet<PartKey> = HashSet::new();
    let mut unsynced_bytes: u64 = 0;
    let mut last_sync = Instant::now();
    loop {
        let stopping = shard.stop_event.epoch() > 0;
        if shard.dirty.borrow().is_empty() && !stopping {
            let seen = shard.dur.work.epoch();
            let stop_seen = shard.stop_event.epoch();
            if unsynced.is_empty() {
                monoio::select! {
                    _ = shard.dur.work.wait(seen) => {},
                    _ = shard.stop_event.wait(stop_seen) => {},
                }
            } else {
                let left = interval.saturating_sub(last_sync.elapsed());
                monoio::select! {
                    _ = shard.dur.work.wait(seen) => {},
                    _ = shard.stop_event.wait(stop_seen) => {},
                    _ = monoio::time::sleep(left) => {},
                }
            }
            crate::event::yield_now().await;
        }
        let gen = shard.dur.next.get();
        shard.dur.next.set(gen + 1);
        let written = write_dirty(&shard, &mut unsynced);
        unsynced_bytes += written;
        shard.dur.written.set(gen);
        shard.dur.progress.notify();
        let want_sync = shard.dur.sync_wanted.get() > shard.dur.synced.get()
            || unsynced_bytes >= fsync_bytes
            || last_sync.elapsed() >= interval
            || shard.stop_event.epoch() > 0;
        if want_sync && !unsynced.is_empty() {
            let t0 = Instant::now();
            sync_all(&shard, &mut unsynced).await;
            shard.metrics.fsync_seconds.observe(t0.elapsed());
            metrics::inc(&shard.metrics.log_fsyncs_total);
            unsynced_bytes = 0;
            last_sync = Instant::now();
        } else if unsynced.is_empty() {
            last_sync = Instant::now();
        }
        if want_sync || unsynced.is_empty() {
            shard.dur.synced.set(gen);
            shard.dur.progress.notify();
        }
        if shard.stop_event.epoch() > 0 && shard.dirty.borrow().is_empty() && unsynced.is_empty() {
            return;
        }
    }
}

/// Writes every dirty partition; returns the bytes written. Wakes long polls of the topics that
/// got new records.
fn write_dirty(shard: &Rc<Shard>, unsynced: &mut HashSet<PartKey>) -> u64 {
    let dirty = std::mem::take(&mut *shard.dirty.borrow_mut());
    if shard.dur.failed.borrow().is_some() {
        // After a failed write or fsync nothing more is written (or acknowledged) on this core.
        return 0;
    }
    let mut total = 0u64;
    let mut topics: Vec<Rc<str>> = Vec::new();
    for key in dirty {
        let Some(part) = shard.parts.borrow().get(&key).cloned() else {
            continue;
        };
        let mut st = part.borrow_mut();
        let before = st.log.pending_bytes();
        let res = st
            .log
            .write_pending()
            .and_then(|n| st.offsets.write_pending().map(|_| n));
        shard
            .pending_bytes
            .set(shard.pending_bytes.get().saturating_sub(before));
        match res {
            Ok(n) => {
                total += n as u64;
                if n > 0 && !topics.contains(&key.0) {
                    topics.push(key.0.clone());
                }
                st.unsynced = true;
                unsynced.insert(key);
            }
            Err(e) => fail(shard, &e.to_string()),
        }
    }
    if total > 0 {
        metrics::inc(&shard.metrics.log_writes_total);
        metrics::add(&shard.metrics.log_written_bytes_total, total);
    }
    for t in topics {
        shard.topic_event(&t).notify();
        let interested: Vec<usize> = shard
            .interest
            .borrow()
            .get(&t)
            .map(|v| {
                v.iter()
                    .enumerate()
                    .filter(|(c, &n)| n > 0 && *c != shard.id)
                    .map(|(c, _)| c)
                    .collect()
            })
            .unwrap_or_default();
        for core in interested {
            let mesh = shard.mesh.clone();
            let topic = t.to_string();
            metrics::inc(&shard.metrics.mesh_messages_total);
            monoio::spawn(async move { mesh.send(core, Msg::Wake { topic }).await });
        }
    }
    total
}

/// fsyncs every file written since the last sync, all at once.
async fn sync_all(shard: &Rc<Shard>, unsynced: &mut HashSet<PartKey>) {
    let mut handles = Vec::new();
    for key in unsynced.drain() {
        let Some(part) = shard.parts.borrow().get(&key).cloned() else {
            continue;
        };
        let mut st = part.borrow_mut();
        let st = &mut *st;
        st.unsynced = false;
        for f in st.log.take_sealed() {
            match monoio::fs::File::from_std(f) {
                Ok(f) => handles.push(monoio::spawn(async move { f.sync_data().await })),
                Err(e) => fail(shard, &e.to_string()),
            }
        }
        let (base, file) = st.log.active_file();
        let log_file = cached(&mut st.sync_log, base, file);
        let (gen, file) = st.offsets.file();
        let off_file = cached(&mut st.sync_offsets, gen, file);
        for f in [log_file, off_file] {
            match f {
                Ok(f) => handles.push(monoio::spawn(async move { f.sync_data().await })),
                Err(e) => fail(shard, &e.to_string()),
            }
        }
    }
    for h in handles {
        if let Err(e) = h.await {
            fail(shard, &format!("fsync: {e}"));
        }
    }
}

/// A monoio handle for `file`, duplicated once per segment (or offsets generation).
fn cached(
    slot: &mut Option<(u64, Rc<monoio::fs::File>)>,
    id: u64,
    file: &std::fs::File,
) -> std::io::Result<Rc<monoio::fs::File>> {
    if let Some((cur, f)) = slot.as_ref() {
        if *cur == id {
            return Ok(f.clone());
        }
    }
    let f = Rc::new(monoio::fs::File::from_std(file.try_clone()?)?);
    *slot = Some((id, f.clone()));
    Ok(f)
}

fn fail(shard: &Shard, msg: &str) {
    tracing::error!(
        core = shard.id,
        "log write failed, refusing further writes on this core: {msg}"
    );
    shard
        .dur
        .failed
        .borrow_mut()
        .get_or_insert_with(|| msg.to_owned());
    shard.dur.progress.notify();
}

/// Periodically enforces retention on this core's partitions.
pub async fn retention(shard: Rc<Shard>) {
    let every = shard
        .cfg
        .store
        .retention_check_interval
        .0
        .max(Duration::from_millis(100));
    loop {
        monoio::time::sleep(every).await;
        if shard.stop_event.epoch() > 0 {
            return;
        }
        let parts: Vec<(PartKey, _)> = shard
            .parts
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((topic, p), part) in parts {
            let Ok(meta) = shard.topic(&topic) else {
                continue;
            };
            let hours = meta
                .retention_hours
                .unwrap_or(shard.cfg.store.retention_hours);
            let bytes = meta
                .retention_bytes
                .unwrap_or(shard.cfg.store.retention_bytes.0);
            let age = (hours > 0).then(|| Duration::from_secs(hours * 3600));
            if let Err(e) = part.borrow_mut().log.enforce_retention(bytes, age) {
                tracing::warn!(core = shard.id, topic = %topic, partition = p, "retention: {e}");
            }
        }
    }
}
