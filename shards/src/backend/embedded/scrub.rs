//! The scrubber: each core re-reads its partitions' sealed segments at
//! `store.scrub_bytes_per_second` and verifies their checksums, so damage is found (logged,
//! counted, listed in `/v1/status`) before a reader needs the data. It walks the partitions in
//! turn, one segment at a time, each from where it left off.

use crate::catalog::Map;
use crate::logset::{LogSet, PartKey};
use crate::metrics;
use kateway_log::ScrubCursor;
use std::rc::Rc;
use std::time::Duration;

/// How often the scrubber takes its share of the rate.
const TICK: Duration = Duration::from_millis(250);

/// Runs until the core stops.
pub async fn run(logs: Rc<LogSet>) {
    let shard = logs.shard.clone();
    let rate = shard.cfg().store.scrub_bytes_per_second.0;
    if rate == 0 {
        return;
    }
    let per_tick = (rate as f64 * TICK.as_secs_f64()).max(4096.0) as u64;
    let mut cursors: Map<PartKey, ScrubCursor> = Map::default();
    let mut turn = 0usize;
    while !shard.sleep(TICK).await {
        let keys: Vec<PartKey> = logs.parts.borrow().keys().cloned().collect();
        if keys.is_empty() {
            continue;
        }
        if cursors.len() > keys.len() {
            let live: std::collections::HashSet<&PartKey> = keys.iter().collect();
            cursors.retain(|k, _| live.contains(k));
        }
        let mut budget = per_tick;
        for _ in 0..keys.len() {
            if budget == 0 {
                break;
            }
            turn %= keys.len();
            let key = &keys[turn];
            let Some(part) = logs.parts.borrow().get(key).cloned() else {
                turn += 1;
                continue;
            };
            let st = part.borrow();
            let cur = cursors.entry(key.clone()).or_default();
            let n = match st.log.scrub(cur, budget) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(core = shard.id, topic = %key.0, partition = key.1, "scrub: {e}");
                    0
                }
            };
            metrics::add(&shard.metrics.log_scrubbed_bytes_total, n);
            // A partition keeps the scrubber while it uses the whole budget (within one
            // segment); once its segment is done (or it has nothing to verify) the next
            // partition takes the rest, so every partition gets its turn.
            if n < budget {
                turn += 1;
            }
            budget = budget.saturating_sub(n);
            for d in st.log.take_damage() {
                logs.report_damage(&key.0, key.1, d, "scrub");
            }
        }
    }
}
