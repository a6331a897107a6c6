//! The calls from the API on delayed messages: cancel, peek and list; a peek or a list first
//! waits (at most 5 s) for the pump to read the delay log as far as it reached when it came.

use super::*;

impl Delays {
    /// Runs a call from the API.
    pub async fn call(&self, c: DelayCall) -> Result<DelayAnswer, Error> {
        match c {
            DelayCall::Cancel { id, partition } => self
                .cancel(Bytes::from(id), partition)
                .await
                .map(DelayAnswer::Cancel),
            DelayCall::Peek { id, partition, due } => {
                self.catch_up(Some(partition)).await;
                let parts = self.parts.borrow();
                let ix = parts.get(&partition);
                Ok(DelayAnswer::Peek {
                    found: ix.and_then(|ix| ix.find(id.as_bytes(), due).map(|f| f.1)),
                    held: ix.is_some(),
                })
            }
            DelayCall::List { topic, max } => {
                self.catch_up(None).await;
                let parts = self.parts.borrow();
                let mut delays: Vec<(Bytes, Delay)> =
                    parts.values().flat_map(|ix| ix.list(&topic, max)).collect();
                delays.sort_by_key(|(_, d)| d.deliver_at_ms);
                delays.truncate(max);
                Ok(DelayAnswer::List {
                    delays,
                    held: parts.len(),
                    // The log's own partitions (fixed when it was made), not the setting.
                    partitions: self
                        .topic
                        .borrow()
                        .as_ref()
                        .map_or(self.shard.cfg().delay.partitions, |t| t.partitions),
                })
            }
        }
    }

    /// Waits (at most 5 s) until the pump has read the held partitions (or just `only`) as far
    /// as the delay log reaches now, so that a peek or a list sees every delay accepted before
    /// it.
    pub(super) async fn catch_up(&self, only: Option<u32>) {
        let cached = self.topic.borrow().clone();
        let Some(topic) = cached else { return };
        let Ok(info) = self.backend.info(&topic, &Groups::None).await else {
            return;
        };
        let ends: Vec<(u32, u64)> = info
            .iter()
            .filter(|i| only.is_none_or(|p| p == i.partition))
            .map(|i| (i.partition, i.newest))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let behind = ends
                .iter()
                .any(|(p, end)| self.parts.borrow().get(p).is_some_and(|ix| ix.next < *end));
            if !behind || self.shard.sleep(Duration::from_millis(5)).await {
                return;
            }
        }
    }

    /// Appends a cancel for `id` to the delay log and, if this gateway holds its partition,
    /// waits for the pump to read it and answer.
    pub(super) async fn cancel(&self, id: Bytes, p: u32) -> Result<CancelOutcome, Error> {
        let cached = self.topic.borrow().clone();
        let topic = match cached {
            Some(t) => t,
            None => log_topic(&self.shard, &self.backend).await?,
        };
        if p >= topic.partitions {
            return Ok(CancelOutcome::Unknown);
        }
        let held = self.parts.borrow().contains_key(&p);
        let (tx, rx) = flume::bounded(1);
        if held {
            self.waiters
                .borrow_mut()
                .entry(id.clone())
                .or_default()
                .push(tx);
        }
        let item = Item {
            key: id.clone(),
            tags: Bytes::new(),
            value: Record::Cancel.encode(),
        };
        if let Err(e) = self.backend.publish(&topic, p, vec![item], Ack::All).await {
            self.waiters.borrow_mut().remove(&id);
            return Err(e);
        }
        if !held {
            return Ok(CancelOutcome::Requested);
        }
        match monoio::time::timeout(Duration::from_secs(10), rx.recv_async()).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Ok(CancelOutcome::Requested),
        }
    }
}
