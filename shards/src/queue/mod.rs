//! Leased delivery (`ack=lease`): per-message leases, acks, nacks, extensions and burials,
//! retries with backoff and dead letters, on top of the backend's ordinary consumer groups, the
//! same for both backends.
//!
//! A group's queue on a topic lives on one core of the gateway ([`owner`]); leases and settles
//! arriving on other cores go there through the mesh. The state machine of each partition's
//! window is [`kateway_core::queue`]; [`group`] runs it against the backend; [`dead`] names and
//! fills the dead-letter topic; [`policy`] resolves a group's policy (the `[queue]` settings and
//! what the group's own policy record overrides); [`forward`] hands settles to the gateway
//! holding a partition (Kafka). Receipts are MAC'd with a key derived from the pepper, so any
//! gateway of a cluster checks them and none can be forged.

pub mod dead;
pub mod forward;
pub mod group;
pub mod policy;
mod records;

use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::metrics;
use crate::request::{Answer, Request};
use crate::shard::Shard;
use group::QueueGroup;
use kateway_core::queue::batch::BatchItem;
use kateway_core::queue::{Receipt, ReceiptKey};
use kateway_core::{Delivered, Error, ErrorKind, Reset};
use kateway_proto::command::SettleOp;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What became of one receipt of a settle.
#[derive(Debug, Clone)]
pub enum Outcome {
    Acked,
    AlreadyDone,
    Retry {
        visible_at_ms: i64,
    },
    Dead,
    Extended {
        deadline_ms: i64,
    },
    Buried,
    /// Handed on to the gateway holding the message's partition ([`forward`]).
    Forwarded,
    Failed(Error),
}

type Registry = Rc<RefCell<HashMap<(Rc<str>, String), Rc<QueueGroup>>>>;

/// This core's queues.
pub struct Queues {
    key: Rc<ReceiptKey>,
    groups: Registry,
    /// The last (topic, group) whose receipts were made or checked, and its fingerprint (a
    /// SHA-256 each time otherwise).
    last_fingerprint: RefCell<(String, String, u32)>,
}

/// The core that keeps `group`'s queue on `topic` (the same answer on every core).
pub fn owner(topic: &str, group: &str, cores: usize) -> usize {
    // SipHash with fixed keys: the same on every core and every run.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    topic.hash(&mut h);
    group.hash(&mut h);
    (h.finish() % cores.max(1) as u64) as usize
}

/// A lease call, sent to the owner core.
pub struct LeaseCall {
    pub topic: String,
    pub group: String,
    pub reset: Reset,
    pub max: usize,
    pub max_bytes: usize,
    pub visibility: Option<Duration>,
    pub deadline: Instant,
}

/// A settle call with its receipts decoded, sent to the owner core.
pub struct SettleCall {
    pub topic: String,
    pub group: String,
    pub op: SettleOp,
    pub receipts: Vec<Result<Receipt, Error>>,
    pub delay: Option<Duration>,
    pub visibility: Option<Duration>,
    pub error: Option<String>,
    /// Handed on by another gateway: applied here or dropped, never handed on again.
    pub forwarded: bool,
}

impl Queues {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: Rc::new(ReceiptKey::new(secret)),
            groups: Rc::default(),
            last_fingerprint: RefCell::default(),
        }
    }

    /// [`kateway_core::queue::fingerprint`]`(topic, group)`, remembered for the last pair.
    fn fingerprint(&self, topic: &str, group: &str) -> u32 {
        let mut last = self.last_fingerprint.borrow_mut();
        if last.0 != topic || last.1 != group || last.0.is_empty() {
            *last = (
                topic.to_owned(),
                group.to_owned(),
                kateway_core::queue::fingerprint(topic, group),
            );
        }
        last.2
    }

    /// The group's queue on this core (the owner), started if it is not running.
    fn get(
        &self,
        shard: &Rc<Shard>,
        backend: &Backend,
        topic: Rc<LocalTopic>,
        group: &str,
        reset: Reset,
    ) -> Result<Rc<QueueGroup>, Error> {
        dead::topic_of(group)?;
        let id = (topic.name.clone(), group.to_owned());
        if let Some(g) = self.groups.borrow().get(&id) {
            if !g.closed.get() && g.current() {
                return Ok(g.clone());
            }
            // Its topic was deleted (and maybe created again): a new queue starts.
            g.closed.set(true);
        }
        let limit = shard.cfg().queue.max_groups_per_core as usize;
        {
            let mut groups = self.groups.borrow_mut();
            if groups.len() >= limit {
                groups.retain(|_, g| !g.closed.get());
            }
            if groups.len() >= limit {
                return Err(Error::new(
                    ErrorKind::Overloaded,
                    format!(
                        "this core keeps {limit} leased groups' queues (queue.max_groups_per_core)"
                    ),
                )
                .with_retry_after(5));
            }
            // One app takes at most its share of them (limits.app_share_per_core), so that
            // it cannot leave the other apps without queues.
            let share = (limit * shard.cfg().limits.app_share_per_core as usize / 100).max(1);
            let app = group.split_once('.').map_or(group, |(a, _)| a);
            let of_app = groups
                .keys()
                .filter(|(_, g)| g.split_once('.').is_some_and(|(a, _)| a == app))
                .count();
            if of_app >= share {
                return Err(Error::new(
                    ErrorKind::AppBusy,
                    format!(
                        "app {app} keeps {of_app} leased groups' queues on this core, its share \
                         of queue.max_groups_per_core (limits.app_share_per_core)"
                    ),
                )
                .with_retry_after(5));
            }
        }
        let g = Rc::new(QueueGroup::new(
            shard.clone(),
            backend.clone(),
            topic,
            group.to_owned(),
            self.key.clone(),
            reset,
        ));
        self.groups.borrow_mut().insert(id.clone(), g.clone());
        let (reg, pumped) = (self.groups.clone(), g.clone());
        monoio::spawn(async move {
            pumped.clone().pump().await;
            let mut reg = reg.borrow_mut();
            if reg.get(&id).is_some_and(|g| Rc::ptr_eq(g, &pumped)) {
                reg.remove(&id);
            }
        });
        Ok(g)
    }

    /// The batch receipt of leased `records` of `group` on `topic`.
    pub fn batch_receipt(&self, topic: &str, group: &str, records: &[Delivered]) -> String {
        let items: Vec<BatchItem> = records
            .iter()
            .filter_map(|m| {
                m.leased.as_ref().map(|l| BatchItem {
                    partition: m.partition,
                    offset: m.offset,
                    lease: l.lease,
                })
            })
            .collect();
        let fp = self.fingerprint(topic, group);
        kateway_core::queue::batch::encode(&self.key, fp, &items)
    }

    /// Makes every queue of this core durable (at shutdown).
    pub async fn save_all(&self) {
        let all: Vec<Rc<QueueGroup>> = self.groups.borrow().values().cloned().collect();
        for g in all {
            g.save().await;
        }
    }

    /// Counts of every queue's window states on this core, per `(topic, group)`.
    pub fn stats(&self) -> Vec<(String, String, kateway_core::queue::Stats)> {
        self.groups
            .borrow()
            .values()
            .map(|g| (g.topic.name.to_string(), g.group.clone(), g.stats()))
            .collect()
    }

    /// Runs a lease call on this core, the owner.
    pub async fn lease_here(
        &self,
        shard: &Rc<Shard>,
        backend: &Backend,
        c: LeaseCall,
    ) -> Result<Vec<Delivered>, Error> {
        let topic = shard.topic(&c.topic)?;
        let g = self.get(shard, backend, topic, &c.group, c.reset)?;
        g.lease(c.max, c.max_bytes, c.visibility, c.deadline).await
    }

    /// Takes back the leases of `records` of `group` on `topic` (this core owns the queue),
    /// which never reached their client.
    pub fn release(&self, topic: &str, group: &str, records: &[Delivered]) {
        let id = (Rc::<str>::from(topic), group.to_owned());
        if let Some(g) = self.groups.borrow().get(&id) {
            g.release(records);
        }
    }

    /// Runs a settle call on this core, the owner.
    pub async fn settle_here(
        &self,
        shard: &Rc<Shard>,
        backend: &Backend,
        c: SettleCall,
    ) -> Result<Vec<Outcome>, Error> {
        let topic = shard.topic(&c.topic)?;
        let g = self.get(shard, backend, topic, &c.group, Reset::Oldest)?;
        Ok(g.settle(c).await)
    }

    /// Leases messages of `group` on `topic`, from whichever core owns the queue.
    pub async fn lease(
        &self,
        shard: &Rc<Shard>,
        backend: &Backend,
        c: LeaseCall,
    ) -> Result<Vec<Delivered>, Error> {
        let owner = owner(&c.topic, &c.group, shard.cores());
        if owner == shard.id {
            return self.lease_here(shard, backend, c).await;
        }
        metrics::inc(&shard.metrics.mesh_messages_total);
        match shard.mesh.call(owner, Request::Lease(c)).await? {
            Answer::Delivered(r) => r.map(|f| f.records),
            _ => Err(unexpected()),
        }
    }

    /// Decodes the receipts of a settle (a forged or another group's one fails alone), then
    /// the messages of its batch receipt (which fails whole: one error for the call), and
    /// settles them on the core that owns the queue. `forwarded`: handed on by another gateway
    /// (applied here or dropped, never handed on again).
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        shard: &Rc<Shard>,
        backend: &Backend,
        topic: &LocalTopic,
        group: &str,
        op: SettleOp,
        receipts: &[String],
        batch: Option<&str>,
        delay: Option<Duration>,
        visibility: Option<Duration>,
        error: Option<String>,
        forwarded: bool,
    ) -> Result<Vec<Outcome>, Error> {
        let fp = self.fingerprint(&topic.name, group);
        let decoded = receipts
            .iter()
            .map(|r| match Receipt::decode(&self.key, r) {
                Ok(d) if d.fingerprint == fp && d.partition < topic.partitions => Ok(d),
                Ok(_) => Err(Error::new(
                    ErrorKind::InvalidReceipt,
                    "the receipt is for another topic or group",
                )),
                Err(e) => Err(Error::new(
                    ErrorKind::InvalidReceipt,
                    format!("invalid receipt: {e}"),
                )),
            })
            .collect::<Vec<_>>();
        let mut decoded = decoded;
        if let Some(b) = batch {
            // A batch receipt names at most what one leased poll hands out.
            let max = (shard.cfg().subscribe.max_batch as usize).max(1);
            match kateway_core::queue::batch::decode(&self.key, b.trim(), max) {
                Ok((f, items))
                    if f == fp && items.iter().all(|r| r.partition < topic.partitions) =>
                {
                    decoded.extend(items.into_iter().map(Ok));
                }
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidReceipt,
                        "the batch receipt is for another topic or group",
                    ))
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::InvalidReceipt,
                        format!("invalid batch receipt: {e}"),
                    ))
                }
            }
        }
        let c = SettleCall {
            topic: topic.name.to_string(),
            group: group.to_owned(),
            op,
            receipts: decoded,
            delay,
            visibility,
            error,
            forwarded,
        };
        let owner = owner(&c.topic, &c.group, shard.cores());
        if owner == shard.id {
            return self.settle_here(shard, backend, c).await;
        }
        metrics::inc(&shard.metrics.mesh_messages_total);
        match shard.mesh.call(owner, Request::Settle(c)).await? {
            Answer::Settled(r) => r,
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> Error {
    Error::new(ErrorKind::Internal, "unexpected answer from another core")
}
