//! Consumer-group lag for `/metrics`: core 0 measures, every `metrics.lag_interval`, the lag of
//! every group on the first `metrics.max_topic_series` topics of the catalog (by name): the
//! messages between a group's committed offset and the end of each partition, summed over the
//! partitions. The figures are kept in core 0's metrics and a scrape on any core reads them
//! from there, so a scrape costs no query of the store or of Kafka. On Kafka each measurement
//! lists the cluster's groups once and reads each group's committed offsets on all the topics
//! in one request: the groups this gateway serves every round, the cluster's others in turn
//! within a time budget a round (their figures may be a few rounds old on a cluster of many
//! groups); a group or topic that fails to answer keeps its last figures.

use crate::node::Core;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Per (topic name, group name): messages not yet consumed.
pub type Lags = BTreeMap<(String, String), u64>;

/// Runs on core 0 until the core stops.
pub async fn run(core: Rc<Core>) {
    let cfg = &core.shard.cfg().metrics;
    let (every, cap) = (cfg.lag_interval.0, cfg.max_topic_series as usize);
    if every.is_zero() {
        return;
    }
    while !core.shard.sleep(every).await {
        let topics = {
            let c = core.shard.catalog.borrow();
            let mut names: Vec<_> = c.stats().map(|(n, _)| n.to_string()).collect();
            names.sort();
            names.truncate(cap);
            names.iter().filter_map(|n| c.get(n).ok()).collect()
        };
        let previous = core.shard.metrics.lags.borrow().clone();
        let lags = core.backend.lags(topics, previous).await;
        *core.shard.metrics.lags.borrow_mut() = lags;
    }
}
