//! Leased delivery on the embedded store: a group's queue checkpoint of a partition is a file,
//! `<data>/queues/<topic>/<group>/<partition>.ckpt`, replaced durably before the watermark it
//! names is committed; restoring takes the later of the committed offset and that watermark
//! (a crash between the two leaves the checkpoint ahead, and everything before its watermark
//! is done).

use super::Store;
use crate::catalog::LocalTopic;
use kateway_core::queue::Checkpoint;
use kateway_core::{Error, ErrorKind, Groups};
use std::path::{Path, PathBuf};

impl Store {
    /// Removes the queue checkpoints of a deleted topic (a topic created again under its name
    /// starts its groups' queues afresh).
    pub fn forget_queues(&self, topic: &str) {
        let dir = self
            .logs
            .shard
            .cfg()
            .store
            .data_dir
            .join("queues")
            .join(topic);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot remove a deleted topic's queue checkpoints: {e}")
            }
        }
    }

    fn checkpoint_path(&self, topic: &str, group: &str, p: u32) -> PathBuf {
        self.logs
            .shard
            .cfg()
            .store
            .data_dir
            .join("queues")
            .join(topic)
            .join(group)
            .join(format!("{p}.ckpt"))
    }

    /// See [`crate::backend::Backend::queue_restore`].
    pub async fn queue_restore(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
    ) -> Result<(Option<u64>, Option<Vec<u8>>), Error> {
        let infos = self
            .info_anywhere(topic, &Groups::Exact(group.to_owned()))
            .await?;
        let info = infos.iter().find(|i| i.partition == p);
        let oldest = info.map_or(0, |i| i.oldest);
        let committed =
            info.and_then(|i| i.groups.iter().find(|(g, _)| g == group).map(|&(_, o)| o));
        let path = self.checkpoint_path(&topic.name, group, p);
        let cp = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::StorageFailed,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        let watermark = cp
            .as_deref()
            .and_then(|b| Checkpoint::decode(b).ok())
            .map(|c| c.watermark);
        let start = match (committed, watermark) {
            (Some(c), Some(w)) => Some(c.max(w)),
            (c, None) => c,
            (None, w) => w,
        };
        // Retention may have removed records since: the queue starts at the oldest one left.
        let start = start.map(|s| s.max(oldest));
        if let Some(start) = start {
            self.commit_anywhere(topic, p, group, start, true).await?;
        }
        Ok((start, cp))
    }

    /// See [`crate::backend::Backend::queue_save`].
    pub async fn queue_save(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
        watermark: u64,
        checkpoint: &[u8],
    ) -> Result<(), Error> {
        // Not for a topic deleted (or created again) since the queue read it.
        let current = self.logs.shard.topic(&topic.name);
        if !current.is_ok_and(|t| t.created_ms == topic.created_ms) {
            return Err(Error::new(
                ErrorKind::UnknownTopic,
                format!("topic {} was deleted", topic.name),
            ));
        }
        let path = self.checkpoint_path(&topic.name, group, p);
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::StorageFailed,
                format!("cannot write {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        }
        replace(&path, checkpoint).await.map_err(|e| failed(&e))?;
        self.commit_anywhere(topic, p, group, watermark, false)
            .await
    }
}

/// [`kateway_log::partition::replace_file`] with its fsyncs through io_uring, so that a
/// checkpoint never stalls the core's other connections: write a temporary file beside `path`,
/// fsync it, rename it over `path`, fsync the directory. A crash leaves the old or the new
/// content; a failure before the rename leaves the old content and no temporary file.
async fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = async {
        if let Some(a) = kateway_log::fail::eval(kateway_log::fs::FP_REPLACE) {
            return Err(a.error());
        }
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        monoio::fs::File::from_std(f)?.sync_all().await
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    monoio::fs::File::from_std(std::fs::File::open(dir)?)?
        .sync_all()
        .await
}
