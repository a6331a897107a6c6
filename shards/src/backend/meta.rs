//! Where the tenancy metadata is kept, per backend: the embedded store appends each change to
//! `<data>/meta/tenancy.log` (fsynced before the change is answered, compacted when mostly
//! superseded); the Kafka backend writes it to the compacted metadata topic, which every gateway
//! follows from its start ([`MetaInit::follow`]), so a change made through one gateway reaches
//! all. Only core 0 writes.

use super::Backend;
use kateway_core::config::{Backend as Kind, Config};
use kateway_core::metalog::MetaLog;
use kateway_core::tenancy::Record;
use kateway_core::{Error, ErrorKind};
use kateway_kafka_bridge::metatopic::{self, MetaEvent};
use kateway_kafka_bridge::BridgeConfig;
use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Where core 0 writes metadata.
pub enum MetaStore {
    File(RefCell<MetaLog>),
    Kafka { topic: String },
}

/// What a gateway starts its metadata with: the store, the records already on disk (embedded),
/// and the stream of the metadata topic (Kafka).
pub struct MetaInit {
    pub store: MetaStore,
    pub records: Vec<Record>,
    pub follow: Option<flume::Receiver<MetaEvent>>,
    /// Tells the Kafka follower to stop.
    pub stop: Arc<AtomicBool>,
}

/// The embedded store's metadata log.
fn log_path(cfg: &Config) -> std::path::PathBuf {
    cfg.store.data_dir.join("meta").join("tenancy.log")
}

/// Opens the configured backend's metadata: reads the local log, or starts following the
/// metadata topic (creating it if it is missing and Kafka answers).
pub fn open(cfg: &Config, bridge: Option<&BridgeConfig>) -> Result<MetaInit, String> {
    let stop = Arc::new(AtomicBool::new(false));
    match (cfg.store.backend, bridge) {
        (Kind::Kafka, Some(b)) => {
            let topic = cfg.kafka.meta_topic.clone();
            if let Err(e) = metatopic::ensure(b, &topic, cfg.kafka.replication_factor) {
                tracing::warn!(
                    topic,
                    "cannot create the metadata topic yet ({e}); following it anyway"
                );
            }
            let (tx, rx) = flume::unbounded();
            metatopic::follow(b, &topic, stop.clone(), move |ev| tx.send(ev).is_ok())
                .map_err(|e| format!("cannot follow the metadata topic {topic}: {e}"))?;
            Ok(MetaInit {
                store: MetaStore::Kafka { topic },
                records: Vec::new(),
                follow: Some(rx),
                stop,
            })
        }
        _ => {
            let path = log_path(cfg);
            let pepper = cfg.auth.pepper_path(&cfg.store.data_dir);
            if !path.exists() && pepper.exists() {
                return Err(format!(
                    "the metadata log {} is missing, but the pepper {} exists: the apps, keys and grants are gone. Restore the log from a backup; or, to start afresh with no keys, remove the pepper",
                    path.display(),
                    pepper.display()
                ));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let opened = MetaLog::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if opened.dropped_bytes > 0 {
                tracing::warn!(log = %path.display(), bytes = opened.dropped_bytes,
                    "dropped the torn end of the metadata log (a change that was never answered)");
            }
            let mut records = Vec::with_capacity(opened.records.len());
            for (i, r) in opened.records.iter().enumerate() {
                records.push(Record::decode(r).map_err(|e| {
                    format!(
                        "{}: record {i} is unreadable ({e}); refusing to serve without it",
                        path.display()
                    )
                })?);
            }
            Ok(MetaInit {
                store: MetaStore::File(RefCell::new(opened.log)),
                records,
                follow: None,
                stop,
            })
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::KafkaUnavailable,
        format!("the metadata cannot be written now: {e}"),
    )
}

impl MetaStore {
    /// Persists `records` durably. Returns the Kafka offset of the last one (`None` for the
    /// embedded store, whose records count as applied once written).
    pub async fn write(&self, backend: &Backend, records: &[Record]) -> Result<Option<i64>, Error> {
        match self {
            MetaStore::File(log) => {
                let enc: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
                let refs: Vec<&[u8]> = enc.iter().map(Vec::as_slice).collect();
                log.borrow_mut().append_all(&refs).map_err(|e| {
                    Error::new(
                        ErrorKind::StorageFailed,
                        format!("the metadata log cannot be written: {e}"),
                    )
                })?;
                Ok(None)
            }
            MetaStore::Kafka { topic } => {
                let Backend::Kafka(k) = backend else {
                    return Err(Error::new(ErrorKind::Internal, "no Kafka producer"));
                };
                let mut last = -1;
                let mut pending = Vec::new();
                for r in records {
                    let d = k
                        .send_own(topic, r.entity().as_bytes(), &r.encode())
                        .map_err(unavailable)?;
                    pending.push(d);
                }
                for d in pending {
                    let (_, offset) = super::kafka::acknowledged(d).await.map_err(unavailable)?;
                    last = last.max(offset);
                }
                Ok(Some(last))
            }
        }
    }

    /// Embedded: rewrites the log as `records` when it holds more than twice as many records
    /// (and 1000 more), so superseded records do not pile up.
    pub fn compact(&self, records: impl FnOnce() -> Vec<Record>) {
        let MetaStore::File(log) = self else {
            return;
        };
        let mut log = log.borrow_mut();
        if log.records() <= 1000 {
            return;
        }
        let live = records();
        if log.records() <= 2 * live.len() + 1000 {
            return;
        }
        let enc: Vec<Vec<u8>> = live.iter().map(Record::encode).collect();
        let refs: Vec<&[u8]> = enc.iter().map(Vec::as_slice).collect();
        if let Err(e) = log.rewrite(&refs) {
            tracing::warn!("cannot compact the metadata log: {e}");
        }
    }
}
