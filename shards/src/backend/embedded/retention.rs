//! Retention: every `store.retention_check_interval`, each core deletes whole sealed segments
//! of its partitions beyond the topic's retention size or age (the store defaults unless the
//! topic overrides them).

use crate::logset::{LogSet, PartKey};
use std::rc::Rc;
use std::time::Duration;

/// Runs until the core stops.
pub async fn run(logs: Rc<LogSet>) {
    let shard = logs.shard.clone();
    let every = shard
        .cfg()
        .store
        .retention_check_interval
        .0
        .max(Duration::from_millis(100));
    while !shard.sleep(every).await {
        let parts: Vec<(PartKey, _)> = logs
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
                .unwrap_or(shard.cfg().store.retention_hours);
            let bytes = meta
                .retention_bytes
                .unwrap_or(shard.cfg().store.retention_bytes.0);
            let age = (hours > 0).then(|| Duration::from_secs(hours.saturating_mul(3600)));
            if let Err(e) = part.borrow_mut().log.enforce_retention(bytes, age) {
                tracing::warn!(core = shard.id, topic = %topic, partition = p, "retention: {e}");
            }
        }
    }
}
