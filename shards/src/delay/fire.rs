//! Firing: the due delays of the partitions whose index is complete, published to their
//! targets, then marked fired in the delay log.

use super::*;

impl Delays {
    /// One firing round: publishes what is due in the partitions whose index is complete,
    /// then marks it fired. Answers whether it fired anything.
    pub(super) async fn fire(&self, log: &Rc<LocalTopic>) -> bool {
        let now = now();
        let rounds: Vec<(u32, Vec<Due>)> = self
            .parts
            .borrow_mut()
            .iter_mut()
            .filter(|(_, ix)| ix.ready())
            .map(|(&p, ix)| (p, ix.take_due(now, ROUND)))
            .filter(|(_, due)| !due.is_empty())
            .collect();
        if rounds.is_empty() {
            return false;
        }
        let mut any = false;
        for (dp, due) in rounds {
            let ids: Vec<Bytes> = due.iter().map(|d| d.0.clone()).collect();
            let ok = self.publish_due(due).await;
            if ok {
                let marks: Vec<Item> = ids
                    .iter()
                    .map(|id| Item {
                        key: id.clone(),
                        tags: Bytes::new(),
                        value: Record::Fired.encode(),
                    })
                    .collect();
                if let Err(e) = self.backend.publish(log, dp, marks, Ack::All).await {
                    // They fired: a restart before marks are written fires them again.
                    tracing::warn!(
                        partition = dp,
                        "fired delays not marked in the delay log: {e}"
                    );
                }
                for id in &ids {
                    self.settle(id, Settled::Fired);
                }
                crate::metrics::add(&self.shard.metrics.delays_fired_total, ids.len() as u64);
                any = true;
            }
            if let Some(ix) = self.parts.borrow_mut().get_mut(&dp) {
                ix.fired(&ids, ok);
            }
        }
        if !any {
            // Targets failing: try again after a tick, not at once.
            self.shard.sleep(TICK).await;
        }
        any
    }

    /// Publishes due delays to their targets, grouped by target partition. A target topic
    /// deleted since counts as done (its delays are dropped, with a warning).
    pub(super) async fn publish_due(&self, due: Vec<Due>) -> bool {
        let mut by_target: BTreeMap<(String, u32), Vec<Item>> = BTreeMap::new();
        for (id, _, d) in due {
            let mut tags = BytesMut::with_capacity(d.tags.len() + 12 + id.len());
            tags.extend_from_slice(&d.tags);
            if !tags.is_empty() {
                tags.extend_from_slice(b";");
            }
            tags.extend_from_slice(b"kgw-delay=");
            tags.extend_from_slice(&id);
            by_target
                .entry((d.topic, d.partition))
                .or_default()
                .push(Item {
                    key: d.key,
                    tags: tags.freeze(),
                    value: d.value,
                });
        }
        for ((topic, p), items) in by_target {
            let mut parts = topic.splitn(3, '.');
            let (Some(appid), Some(name), Some(ver)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = TopicPath {
                appid,
                topic: name,
                ver,
            };
            let meta = match self.backend.resolve(&path).await {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::UnknownTopic => {
                    tracing::warn!(%topic, dropped = items.len(), "delayed messages dropped: their topic was deleted");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%topic, "delayed messages not fired yet: {e}");
                    return false;
                }
            };
            let p = p.min(meta.partitions.saturating_sub(1));
            if let Err(e) = self.backend.publish(&meta, p, items, Ack::All).await {
                tracing::warn!(%topic, partition = p, "delayed messages not fired yet: {e}");
                return false;
            }
        }
        true
    }
}
