//! A set of local partitions with group commit: the log engine's partitions and offsets logs
//! that one core owns under one directory, the flusher that turns their appends into writes and
//! fsyncs ([`flusher`]), and the durability bookkeeping and disk-fault state that decide when an
//! append may be acknowledged ([`durability`]). The embedded store keeps its topics in one; the
//! Kafka backend keeps its hinted-handoff buffer in another, of its own. Both use only what is
//! public here.

pub mod durability;
pub mod flusher;

use crate::catalog::{file, Map};
use crate::metrics::{self, DamageEntry};
use crate::shard::{now_ms, Shard};
use durability::{Durability, Ranges};
use kateway_core::{Ack, Error, ErrorKind, Item};
use kateway_log::{Damage, Files, Floor, LogError, OffsetLog, Partition, PartitionConfig};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

/// Key of a partition: the topic's interned name and the partition.
pub type PartKey = (Rc<str>, u32);

/// A partition of the set.
pub struct LogPart {
    pub log: Partition,
    pub offsets: OffsetLog,
    /// Next offset to hand out per group (ahead of the committed offset with explicit acks).
    pub cursors: Map<String, u64>,
    /// The group-commit generation of the latest offset commit: durable once it is synced.
    pub offsets_gen: u64,
    /// The last generation whose records (and commits) were written without failure.
    pub written_gen: u64,
    pub commit_written_gen: u64,
    /// Generations whose records (and commits) this partition failed to write.
    pub write_failed: Ranges,
    pub commit_failed: Ranges,
}

/// What a durability wait is for: a partition's records or its commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Records,
    Commits,
}

/// Records appended to a partition: where, and the generation that makes them durable.
pub struct Appended {
    pub part: Rc<RefCell<LogPart>>,
    pub offsets: Vec<u64>,
    pub gen: u64,
}

/// Damage entries a set keeps for status.
const DAMAGE_KEPT: usize = 64;

/// One core's partitions under one directory.
pub struct LogSet {
    pub shard: Rc<Shard>,
    /// What the set holds, for logs and status: "topics" or "handoff".
    pub what: &'static str,
    root: PathBuf,
    cfg: PartitionConfig,
    pub parts: RefCell<Map<PartKey, Rc<RefCell<LogPart>>>>,
    /// Partitions appended to since the last flush.
    pub dirty: RefCell<Vec<PartKey>>,
    /// Appended bytes not yet written.
    pub pending_bytes: Cell<usize>,
    pub dur: Durability,
    /// This set's budget of open files.
    pub files: Rc<Files>,
    /// Damage found, newest last (bounded).
    pub damage: RefCell<VecDeque<DamageEntry>>,
}

impl LogSet {
    /// A set under `root` whose segments roll at `segment_bytes`, with `open_files` descriptors.
    pub fn new(
        shard: Rc<Shard>,
        what: &'static str,
        root: PathBuf,
        segment_bytes: u64,
        open_files: usize,
    ) -> Self {
        let cfg = PartitionConfig {
            segment_bytes,
            index_interval: shard.cfg().store.index_interval_bytes.0,
            preallocate: shard.cfg().store.preallocate_bytes.0,
            recovery: recovery_mode(shard.cfg().store.recovery_mode),
        };
        Self {
            shard,
            what,
            root,
            cfg,
            parts: Default::default(),
            dirty: Default::default(),
            pending_bytes: Cell::new(0),
            dur: Durability::new(),
            files: Files::new(open_files),
            damage: Default::default(),
        }
    }

    /// The directory of partition `p` of `topic`.
    pub fn dir(&self, topic: &str, p: u32) -> PathBuf {
        file::partition_dir(&self.root, topic, p)
    }

    /// The partition, if it is open.
    pub fn get(&self, topic: &str, p: u32) -> Option<Rc<RefCell<LogPart>>> {
        let key = self.shard.interned(topic)?;
        self.parts.borrow().get(&(key, p)).cloned()
    }

    /// The partition, or 404.
    pub fn part(&self, topic: &str, p: u32) -> Result<Rc<RefCell<LogPart>>, Error> {
        self.get(topic, p).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownTopic,
                format!("unknown partition {topic}/{p}"),
            )
        })
    }

    /// Opens partition `p` of `name`: recovers it, or creates it empty. Damage recovery found is
    /// reported; damage the recovery mode refuses is an error.
    pub fn open(&self, name: &Rc<str>, p: u32) -> Result<Rc<RefCell<LogPart>>, Error> {
        let key = (name.clone(), p);
        if let Some(part) = self.parts.borrow().get(&key) {
            return Ok(part.clone());
        }
        let dir = self.dir(name, p);
        set_aside_stray(&dir);
        let compact = self.shard.cfg().store.offsets_compact_bytes.0;
        let (offsets, damaged) =
            OffsetLog::open(&dir, compact, &self.files).map_err(|e| storage_err(name, p, &e))?;
        for d in damaged {
            // Only the damaged commits are lost: those groups resume from an earlier commit.
            self.report_damage(name, p, d, "recovery");
        }
        // Offsets are never reused: the log continues at least where any reader committed and
        // past every offset ever handed out (the holes failed writes left included).
        let (log, report) = Partition::open(&dir, self.cfg, &self.files, Floor::of(&offsets))
            .map_err(|e| {
                if e.damage().is_some() {
                    tracing::error!(core = self.shard.id, topic = %name, partition = p,
                        "recovery refused damage (store.recovery_mode): {e}");
                }
                storage_err(name, p, &e)
            })?;
        for stray in &report.stray {
            tracing::warn!(core = self.shard.id, topic = %name, partition = p, path = %stray.display(),
                "a partition held something named like a log file that is not one: set it aside");
        }
        for d in report.damage {
            self.report_damage(name, p, d, "recovery");
        }
        let part = Rc::new(RefCell::new(LogPart {
            log,
            offsets,
            cursors: Map::default(),
            offsets_gen: 0,
            written_gen: 0,
            commit_written_gen: 0,
            write_failed: Ranges::default(),
            commit_failed: Ranges::default(),
        }));
        self.parts.borrow_mut().insert(key, part.clone());
        Ok(part)
    }

    /// Whether partition `p` of `topic` has a directory on disk.
    pub fn exists(&self, topic: &str, p: u32) -> bool {
        self.dir(topic, p).exists()
    }

    /// Closes a partition (dropping what was appended but not written).
    pub fn forget(&self, key: &PartKey) {
        if let Some(part) = self.parts.borrow_mut().remove(key) {
            let pending = part.borrow().log.pending_bytes();
            self.pending_bytes
                .set(self.pending_bytes.get().saturating_sub(pending));
        }
        self.dirty.borrow_mut().retain(|d| d != key);
    }

    /// Closes and deletes this core's partitions of `topic` numbered `partitions` and above:
    /// what a growth that was rolled back left open.
    pub fn remove_beyond(&self, topic: &str, partitions: u32) {
        let extra: Vec<PartKey> = self
            .parts
            .borrow()
            .keys()
            .filter(|(t, p)| &**t == topic && *p >= partitions)
            .cloned()
            .collect();
        for key in extra {
            self.remove(&key);
        }
    }

    /// Closes a partition and deletes its directory.
    pub fn remove(&self, key: &PartKey) {
        self.forget(key);
        let dir = self.dir(&key.0, key.1);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(core = self.shard.id, dir = %dir.display(), "cannot remove partition: {e}");
        }
    }

    /// Closes every partition of `topic`.
    pub fn forget_topic(&self, topic: &str) {
        let keys: Vec<PartKey> = self
            .parts
            .borrow()
            .keys()
            .filter(|(t, _)| &**t == topic)
            .cloned()
            .collect();
        for k in keys {
            self.forget(&k);
        }
    }

    /// Refuses writes when the storage is faulted or too much is unwritten.
    pub fn admit_write(&self) -> Result<(), Error> {
        if self.dur.fault.borrow().active() {
            return Err(self.dur.fault_error("write refused"));
        }
        let max = self.shard.cfg().limits.max_pending_bytes_per_core.0 as usize;
        if self.pending_bytes.get() > max {
            return Err(Error::new(
                ErrorKind::Overloaded,
                "too much unwritten data on this core",
            ));
        }
        Ok(())
    }

    /// Appends to an open partition (no I/O); returns it, the offsets and the generation to
    /// wait for.
    pub fn append(&self, topic: &str, p: u32, items: &[Item]) -> Result<Appended, Error> {
        self.admit_write()?;
        let part = self.part(topic, p)?;
        let ts = now_ms();
        let mut offsets = Vec::with_capacity(items.len());
        {
            let mut st = part.borrow_mut();
            let before = st.log.pending_bytes();
            for it in items {
                offsets.push(st.log.append(ts, &it.key, &it.tags, &it.value));
            }
            self.pending_bytes
                .set(self.pending_bytes.get() + st.log.pending_bytes() - before);
        }
        self.mark_dirty(topic, p);
        Ok(Appended {
            part,
            offsets,
            gen: self.dur.next.get(),
        })
    }

    /// Records that `reader` is at `offset` on `part` (a group's commit, a replay cursor); the
    /// flusher writes it. Returns the generation that makes it durable.
    pub fn commit(
        &self,
        topic: &str,
        p: u32,
        part: &mut LogPart,
        reader: &str,
        offset: u64,
    ) -> u64 {
        if part.offsets.commit(reader, offset) {
            part.offsets_gen = self.dur.next.get();
            self.mark_dirty(topic, p);
        }
        part.offsets_gen
    }

    /// Queues a partition for the flusher.
    pub fn mark_dirty(&self, topic: &str, p: u32) {
        let mut d = self.dirty.borrow_mut();
        if !d.iter().any(|(t, q)| *q == p && &**t == topic) {
            let key = self
                .shard
                .interned(topic)
                .unwrap_or_else(|| Rc::from(topic));
            d.push((key, p));
        }
        self.dur.work.notify();
    }

    /// Waits until generation `gen` of `part`'s records (or commits) reached the durability
    /// `ack` asks for; 503 if writing or syncing them failed.
    pub async fn wait_durable(
        &self,
        part: &RefCell<LogPart>,
        what: Written,
        gen: u64,
        ack: Ack,
    ) -> Result<(), Error> {
        if ack == Ack::All && self.dur.sync_wanted.get() < gen {
            self.dur.sync_wanted.set(gen);
            // The writer, if `gen` is not written yet (it wakes the syncer once it is); the
            // syncer, if it is.
            if self.dur.written.get() >= gen {
                self.dur.kick.notify();
            } else {
                self.dur.work.notify();
            }
        }
        if ack == Ack::Local && self.dur.write_wanted.get() < gen {
            self.dur.write_wanted.set(gen);
            self.dur.urgent.notify();
        }
        loop {
            {
                let st = part.borrow();
                let failed = match what {
                    Written::Records => &st.write_failed,
                    Written::Commits => &st.commit_failed,
                };
                if failed.contains(gen) {
                    // Failed records are discarded; failed commits stay pending and are written
                    // once the disk takes writes again (the last one per group wins).
                    return Err(self.dur.fault_error(match what {
                        Written::Records => "not stored",
                        Written::Commits => "not yet stored (it will be once the disk recovers)",
                    }));
                }
            }
            match ack {
                Ack::Async => return Ok(()),
                Ack::Local if self.dur.written.get() >= gen => return Ok(()),
                Ack::All => {
                    if self.dur.sync_failed.borrow().contains(gen) {
                        return Err(self.dur.fault_error("not durable"));
                    }
                    if self.dur.synced.get() >= gen {
                        return Ok(());
                    }
                }
                Ack::Local => {}
            }
            let ev = match ack {
                Ack::All => &self.dur.sync_progress,
                _ => &self.dur.progress,
            };
            let seen = ev.epoch();
            ev.wait(seen).await;
        }
    }

    /// Logs, counts and keeps (for status) damage found on partition `p` of `topic`.
    pub fn report_damage(&self, topic: &str, p: u32, d: Damage, found_by: &'static str) {
        let m = &self.shard.metrics;
        tracing::error!(
            core = self.shard.id,
            topic,
            partition = p,
            found_by,
            store = self.what,
            "log damage: {d}"
        );
        metrics::add(&m.log_damaged_records_total, d.records());
        metrics::add(&m.log_damaged_bytes_total, d.bytes);
        let mut kept = self.damage.borrow_mut();
        if kept.len() == DAMAGE_KEPT {
            kept.pop_front();
        }
        kept.push_back(DamageEntry {
            topic: topic.to_owned(),
            partition: p,
            damage: d,
            found_by,
            at_ms: now_ms(),
        });
    }

    /// Adds this set's state to a metrics snapshot.
    pub fn snapshot(&self, s: &mut metrics::Snapshot) {
        for p in self.parts.borrow().values() {
            s.log_bytes += p.borrow().log.size_bytes();
            s.partitions += 1;
        }
        let fault = self.dur.fault.borrow();
        if fault.active() {
            s.store_faults.push(format!(
                "core {} {}: {}",
                self.shard.id,
                self.what,
                fault.describe()
            ));
        }
        s.log_open_files += self.files.open_now() as u64;
        s.log_open_files_max += self.files.max() as u64;
        s.log_file_evictions += self.files.counters().1;
        s.damage.extend(self.damage.borrow().iter().cloned());
    }
}

/// Something that is not a directory where a partition's directory belongs (a stray file): it
/// is renamed to `<p>.stray-<ms>` beside it, with a warning, so the partition can be created.
fn set_aside_stray(dir: &std::path::Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_dir() {
        return;
    }
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".stray-{}", crate::shard::now_ms()));
    match std::fs::rename(dir, &aside) {
        Ok(()) => {
            tracing::warn!(path = %dir.display(), aside = %std::path::Path::new(&aside).display(),
            "a partition's directory was not a directory: set it aside")
        }
        Err(e) => {
            tracing::warn!(path = %dir.display(), "a partition's directory is not a directory and cannot be moved: {e}")
        }
    }
}

/// A storage failure as clients see it: what failed, never a server path (logged instead).
pub fn storage_err(topic: &str, p: u32, e: &LogError) -> Error {
    if let Some(d) = e.damage() {
        return Error::new(
            ErrorKind::DamagedData,
            format!(
                "partition {topic}/{p}: {d} in segment file {:020}.log, which store.recovery_mode does not skip; move a group past them with PUT /v1/offset/...?offset={}",
                d.segment, d.offsets.end
            ),
        );
    }
    tracing::error!(topic, partition = p, "storage: {e}");
    Error::new(
        ErrorKind::StorageFailed,
        format!("storage of partition {topic}/{p} failed: {}", e.reason()),
    )
}

/// The log engine's recovery mode for the configured one.
pub fn recovery_mode(m: kateway_core::config::RecoveryMode) -> kateway_log::RecoveryMode {
    use kateway_core::config::RecoveryMode as C;
    match m {
        C::TolerateCorruption => kateway_log::RecoveryMode::TolerateCorruption,
        C::TolerateTail => kateway_log::RecoveryMode::TolerateTail,
        C::Absolute => kateway_log::RecoveryMode::Absolute,
    }
}
