//! The catalog on disk: `<data>/meta/topics.json` (or `kafka-topics.json` for the Kafka
//! backend), written atomically by core 0, and the topic directories under the backend's root.
//!
//! The catalog and the partition directories are kept consistent across crashes and faults:
//! a deleted topic's directory is first renamed into `<root>/.trash/<name>.<ms>` (which frees
//! its space even on a full disk before the catalog is rewritten), and a start completes a
//! deletion that a crash interrupted; a topic directory that the catalog does not list (a lost or
//! damaged catalog) is adopted back with a warning instead of vanishing, so its data and offsets
//! are never silently resurrected under a re-created topic.

use super::TopicMeta;
use kateway_core::{Error, ErrorKind, TopicName};
use std::path::{Path, PathBuf};

/// Directory of partition `p` of topic `name` under `root`.
pub fn partition_dir(root: &Path, name: &str, p: u32) -> PathBuf {
    root.join(name).join(p.to_string())
}

/// Directory of topic `name` under `root`.
pub fn topic_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// Loads the catalog at `path` (empty if there is none yet). A catalog that does not parse is
/// set aside as `<path>.damaged-<ms>` (and logged) and an empty one returned: the topics are
/// then adopted back from their directories by [`reconcile`].
pub fn load(path: &Path) -> Result<Vec<TopicMeta>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let parsed = serde_json::from_slice::<Vec<TopicMeta>>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|topics| {
                    for t in &topics {
                        TopicName::parse_storage(&t.name).map_err(|e| e.to_string())?;
                    }
                    Ok(topics)
                });
            match parsed {
                Ok(t) => Ok(t),
                Err(e) => {
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                    let aside = PathBuf::from(format!("{}.damaged-{ms}", path.display()));
                    std::fs::rename(path, &aside).map_err(|r| {
                        format!("{}: {e}; cannot set it aside: {r}", path.display())
                    })?;
                    tracing::error!(catalog = %path.display(), kept_as = %aside.display(),
                        "the topic catalog is damaged ({e}); rebuilding it from the topic directories (retention settings fall back to the defaults)");
                    Ok(Vec::new())
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The trash directory of `root`.
fn trash_dir(root: &Path) -> PathBuf {
    root.join(".trash")
}

/// Moves topic `name`'s directory into the trash (a rename: it needs no free space) and empties
/// it, freeing its space. Returns the marker to remove once the catalog no longer lists the
/// topic; `None` if the topic had no directory.
pub fn trash(root: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    let dir = topic_dir(root, name);
    if !dir.exists() {
        return Ok(None);
    }
    let trash = trash_dir(root);
    std::fs::create_dir_all(&trash).map_err(|e| format!("mkdir trash: {e}"))?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let marker = trash.join(format!("{name}.{ms}"));
    std::fs::rename(&dir, &marker).map_err(|e| format!("rename into trash: {e}"))?;
    let _ = kateway_log::partition::sync_dir(root);
    if let Ok(entries) = std::fs::read_dir(&marker) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(Some(marker))
}

/// Removes a directory tree or a file.
pub fn remove_any(path: &Path) {
    if std::fs::remove_dir_all(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// What [`reconcile`] changed, for the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Topics adopted from directories the catalog did not list.
    pub adopted: Vec<String>,
    /// Deletions a crash had interrupted, completed.
    pub deleted: Vec<String>,
}

/// At start: completes interrupted deletions (topics with a trash marker) and adopts topic
/// directories that the catalog does not list (partition count from the directories, default
/// retention). Returns the catalog to use and what changed.
pub fn reconcile(root: &Path, mut topics: Vec<TopicMeta>) -> (Vec<TopicMeta>, Reconciled) {
    let mut done = Reconciled::default();
    if let Ok(entries) = std::fs::read_dir(trash_dir(root)) {
        for e in entries.flatten() {
            let marker = e.file_name().to_string_lossy().into_owned();
            if let Some((name, _)) = marker.rsplit_once('.') {
                if !topic_dir(root, name).exists() && topics.iter().any(|t| t.name == name) {
                    topics.retain(|t| t.name != name);
                    done.deleted.push(name.to_owned());
                }
            }
            remove_any(&e.path());
        }
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || topics.iter().any(|t| t.name == name) {
                continue;
            }
            if TopicName::parse_storage(&name).is_err() {
                continue;
            }
            let partitions = std::fs::read_dir(e.path())
                .map(|d| {
                    d.flatten()
                        .filter(|p| p.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
                        .max()
                        .map_or(0, |m| m + 1)
                })
                .unwrap_or(0);
            if partitions == 0 {
                continue;
            }
            let created_ms = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            topics.push(TopicMeta {
                name: name.clone(),
                partitions,
                retention_hours: None,
                retention_bytes: None,
                created_ms,
            });
            done.adopted.push(name);
        }
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    (topics, done)
}

/// Atomically replaces the catalog at `path`: temporary file, fsync, rename, fsync of the
/// directory.
pub fn store(path: &Path, topics: &[TopicMeta]) -> Result<(), Error> {
    let dir = path.parent().expect("meta dir");
    let failed = |e: kateway_log::LogError| {
        tracing::error!("cannot write the topic catalog: {e}");
        Error::new(
            ErrorKind::StorageFailed,
            format!("cannot write the topic catalog: {}", e.reason()),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        failed(kateway_log::LogError::Io {
            op: "mkdir",
            path: dir.display().to_string(),
            source: e,
        })
    })?;
    let json = serde_json::to_vec_pretty(topics).expect("catalog serialises");
    kateway_log::partition::replace_file(path, &json).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta").join("topics.json");
        assert!(load(&path).unwrap().is_empty());
        let t = TopicMeta {
            name: "a.t.v1".into(),
            partitions: 3,
            retention_hours: Some(1),
            retention_bytes: None,
            created_ms: 5,
        };
        store(&path, std::slice::from_ref(&t)).unwrap();
        assert_eq!(load(&path).unwrap(), vec![t]);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            load(&path).unwrap().is_empty(),
            "a damaged catalog is set aside"
        );
        assert!(!path.exists());
    }

    #[test]
    fn reconcile_adopts_orphans_and_finishes_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in 0..3 {
            std::fs::create_dir_all(partition_dir(root, "a.orphan.v1", p)).unwrap();
        }
        std::fs::create_dir_all(partition_dir(root, "a.kept.v1", 0)).unwrap();
        let meta = |name: &str| TopicMeta {
            name: name.into(),
            partitions: 1,
            retention_hours: Some(2),
            retention_bytes: None,
            created_ms: 1,
        };
        std::fs::create_dir_all(partition_dir(root, "a.gone.v1", 0)).unwrap();
        let marker = trash(root, "a.gone.v1").unwrap().unwrap();
        assert!(marker.exists() && !topic_dir(root, "a.gone.v1").exists());
        let (topics, done) = reconcile(root, vec![meta("a.gone.v1"), meta("a.kept.v1")]);
        assert_eq!(done.deleted, vec!["a.gone.v1".to_string()]);
        assert_eq!(done.adopted, vec!["a.orphan.v1".to_string()]);
        let names: Vec<_> = topics
            .iter()
            .map(|t| (t.name.as_str(), t.partitions))
            .collect();
        assert_eq!(names, vec![("a.kept.v1", 1), ("a.orphan.v1", 3)]);
        assert_eq!(
            topics[0].retention_hours,
            Some(2),
            "listed topics are kept as they are"
        );
        assert!(!marker.exists(), "the trash is emptied");
    }
}
