//! Topic metadata and the catalog file (`<data>/meta/topics.json`, or `kafka-topics.json` for
//! the Kafka backend). Core 0 is the only writer (it serialises create/alter/delete); every core
//! keeps a read-only copy that core 0 updates through the mesh. Partition `p` of a topic is owned by core `(hash(name) + p) % cores`, so
//! ownership is a pure function and survives restarts with the same core count.

use kateway_core::{Error, ErrorKind, TopicName};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the catalog knows about a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    /// `<appid>.<topic>.<ver>`.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Retention by age, overriding the store default.
    pub retention_hours: Option<u64>,
    /// Retention by size per partition, overriding the store default.
    pub retention_bytes: Option<u64>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

impl TopicMeta {
    /// The core that owns partition `p`.
    pub fn owner(&self, p: u32, cores: usize) -> usize {
        owner(&self.name, p, cores)
    }
}

/// The core that owns partition `p` of topic `name`.
pub fn owner(name: &str, p: u32, cores: usize) -> usize {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h as u64 + p as u64) % cores as u64) as usize
}

/// Where partition logs live: `<data>/topics` with the embedded backend, `<data>/handoff` (the
/// hinted-handoff buffer) with the Kafka backend.
pub fn root(cfg: &kateway_core::config::Config) -> PathBuf {
    let dir = match cfg.store.backend {
        kateway_core::config::Backend::Embedded => "topics",
        kateway_core::config::Backend::Kafka => "handoff",
    };
    cfg.store.data_dir.join(dir)
}

/// Directory of partition `p` of topic `name` under `root`.
pub fn partition_dir(root: &Path, name: &str, p: u32) -> PathBuf {
    root.join(name).join(p.to_string())
}

/// Directory of topic `name` under `root`.
pub fn topic_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// The catalog of a backend: `<data>/meta/topics.json` for the embedded store,
/// `<data>/meta/kafka-topics.json` for the Kafka backend (so that one data directory used with
/// both backends never mixes their topics).
pub fn catalog_path(cfg: &kateway_core::config::Config) -> PathBuf {
    let file = match cfg.store.backend {
        kateway_core::config::Backend::Embedded => "topics.json",
        kateway_core::config::Backend::Kafka => "kafka-topics.json",
    };
    cfg.store.data_dir.join("meta").join(file)
}

/// Loads the catalog at `path` (empty if there is none yet).
pub fn load(path: &Path) -> Result<Vec<TopicMeta>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let topics: Vec<TopicMeta> =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            for t in &topics {
                TopicName::parse_storage(&t.name)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(topics)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Atomically replaces the catalog at `path`: temporary file, fsync, rename, fsync of the
/// directory.
pub fn store(path: &Path, topics: &[TopicMeta]) -> Result<(), Error> {
    let dir = path.parent().expect("meta dir");
    let failed = |e: String| Error::new(ErrorKind::StorageFailed, format!("catalog: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    let json = serde_json::to_vec_pretty(topics).expect("catalog serialises");
    kateway_log::partition::replace_file(path, &json).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_spreads_partitions() {
        let mut seen = [0; 4];
        for p in 0..8 {
            seen[owner("a.t.v1", p, 4)] += 1;
        }
        assert_eq!(seen, [2, 2, 2, 2]);
        assert_eq!(owner("x", 3, 1), 0);
    }

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
    }
}
