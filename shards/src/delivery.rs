//! The delivery layer: how a group's messages reach a subscriber, written once for both
//! backends. A [`Subscription`] yields batches: each [`Subscription::next`] reads what is there
//! and, if nothing is, parks until new data, its deadline or shutdown. An HTTP/1.1 long poll
//! asks for one batch; a push transport asks again and again.
//!
//! Parking: the embedded store's reads answer at once, so a poll parks on its topic's wake-up
//! event here and tells the other cores that own partitions of the topic that it is interested
//! (they then send a wake-up after writing new records of it: [`crate::shard::Shard::wake`]).
//! The Kafka backend's reads wait themselves, in the group's membership.
//!
//! Memory: records come with the response bytes held for them against the core's budget
//! ([`Held`]); nothing is held while a poll is parked.

use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::metrics;
use crate::request::{Fetch, Request};
use crate::shard::{Held, Shard};
use kateway_core::{Delivered, Error, ErrorKind};
use std::rc::Rc;
use std::time::Instant;

/// Records for a subscriber, and the response bytes held for them.
pub struct Batch {
    pub records: Vec<Delivered>,
    pub held: Option<Held>,
}

/// A group's subscription to a topic on this core.
pub struct Subscription {
    shard: Rc<Shard>,
    backend: Backend,
    topic: Rc<LocalTopic>,
    fetch: Fetch,
    /// The app whose subscribe-bytes quota what it delivers is charged to.
    quota_app: Option<String>,
    /// Leased delivery: the queues that lease the group's messages, and the lease length.
    lease: Option<(Rc<crate::queue::Queues>, Option<std::time::Duration>)>,
    /// A client's subscription, counted among the parked polls while it waits (not the
    /// gateway's own readers: a leased group's pump, the delay pump).
    counted: bool,
}

impl Subscription {
    pub fn new(shard: Rc<Shard>, backend: Backend, topic: Rc<LocalTopic>, fetch: Fetch) -> Self {
        Self {
            shard,
            backend,
            topic,
            fetch,
            quota_app: None,
            lease: None,
            counted: true,
        }
    }

    /// The gateway's own reader (a queue's or the delays' pump): its waits are not client
    /// polls, and `kateway_sub_parked_polls` does not count them.
    pub fn internal(mut self) -> Self {
        self.counted = false;
        self
    }

    /// Leases what it delivers (`ack=lease`) from `queues`, for `visibility` (the configured
    /// default without one).
    pub fn leased(
        mut self,
        queues: Rc<crate::queue::Queues>,
        visibility: Option<std::time::Duration>,
    ) -> Self {
        self.lease = Some((queues, visibility));
        self
    }

    /// Charges what this subscription delivers to `app`'s subscribe quota.
    pub fn charged_to(mut self, app: &str) -> Self {
        self.quota_app = Some(app.to_owned());
        self
    }

    /// Whether the core is draining (a stream then ends).
    pub fn draining(&self) -> bool {
        self.shard.shutdown.get()
    }

    /// At most `max` messages per batch from now on (a push stream's credit).
    pub fn set_max(&mut self, max: usize) {
        self.fetch.max = max.max(1);
    }

    /// The next batch: what is there now, or what arrives before `deadline` (empty at the
    /// deadline or when the core starts draining).
    pub async fn next(&self, deadline: Instant) -> Result<Batch, Error> {
        if let Some(app) = &self.quota_app {
            // Past the app's subscribe quota a stream (or a poll) waits, rather than read more.
            if let Some(wait) = crate::tenancy::edge::subscribe_wait(&self.shard, app) {
                let left = deadline.saturating_duration_since(Instant::now());
                self.shard.sleep(wait.min(left)).await;
                if crate::tenancy::edge::subscribe_wait(&self.shard, app).is_some() {
                    return Ok(Batch {
                        records: Vec::new(),
                        held: None,
                    });
                }
            }
        }
        let b = self.next_uncharged(deadline).await?;
        if let Some(app) = &self.quota_app {
            let bytes: usize = b.records.iter().map(|m| m.value.len()).sum();
            if bytes > 0 {
                crate::tenancy::edge::charge_subscribe(&self.shard, app, bytes as u64);
            }
        }
        Ok(b)
    }

    async fn next_uncharged(&self, deadline: Instant) -> Result<Batch, Error> {
        let shard = self.shard.clone();
        let shard = &shard;
        let want = self.fetch.max_bytes;
        if let Some((queues, visibility)) = &self.lease {
            let call = crate::queue::LeaseCall {
                topic: self.topic.name.to_string(),
                group: self.fetch.group.clone(),
                reset: self.fetch.reset,
                max: self.fetch.max,
                max_bytes: want,
                visibility: *visibility,
                deadline,
            };
            let records = queues.lease(shard, &self.backend, call).await?;
            let bytes: usize = records.iter().map(|m| m.value.len() + 160).sum();
            let held = (!records.is_empty()).then(|| shard.account_response(bytes));
            return Ok(Batch { records, held });
        }
        if self.backend.reads_wait() {
            if shard.shutdown.get() {
                return Ok(Batch {
                    records: Vec::new(),
                    held: None,
                });
            }
            // Not held while the membership waits for records; counted once they arrive.
            let mut f = self.fetch.clone();
            f.max_bytes = shard.hold_response(want)?.bytes();
            let _parked = self.counted.then(|| ParkedGauge::new(shard));
            let records = self.backend.read(&self.topic, f, deadline).await?.records;
            let bytes = records.iter().map(|m| m.value.len()).sum();
            let held = (!records.is_empty()).then(|| shard.account_response(bytes));
            return Ok(Batch { records, held });
        }
        let ev = shard.topic_event(&self.topic.name);
        let mut seen = ev.epoch();
        let mut parked = None;
        loop {
            let (got, more) = self.read_now(want).await?;
            if !got.records.is_empty() || shard.shutdown.get() {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            if more {
                // A tag filter skipped a long run of records: read on, letting others run.
                crate::event::yield_now().await;
                continue;
            }
            if parked.is_none() {
                // Register, then read again: a wake-up for data appended after the owners saw
                // the interest is then guaranteed, and data appended before it is found by
                // that read.
                parked = Some(Parked::new(shard, &self.topic, self.counted).await);
                continue;
            }
            if ev.epoch() == seen {
                let _ = monoio::time::timeout(left, ev.wait(seen)).await;
            }
            seen = ev.epoch();
            if shard.topic(&self.topic.name).is_err() {
                return Err(Error::new(
                    ErrorKind::UnknownTopic,
                    format!("topic {} was deleted", self.topic.name),
                ));
            }
        }
    }

    /// One read with up to `want` response bytes held for what it finds; also says whether
    /// the read stopped with more to look at.
    async fn read_now(&self, want: usize) -> Result<(Batch, bool), Error> {
        let held = self.shard.hold_response(want)?;
        let mut f = self.fetch.clone();
        f.max_bytes = held.bytes();
        let got = self.backend.read(&self.topic, f, Instant::now()).await?;
        let held = (!got.records.is_empty()).then_some(held);
        Ok((
            Batch {
                records: got.records,
                held,
            },
            got.more,
        ))
    }
}

/// Counts a poll as parked while it lives.
struct ParkedGauge<'a>(&'a Shard);

impl<'a> ParkedGauge<'a> {
    fn new(shard: &'a Shard) -> Self {
        metrics::inc(&shard.metrics.sub_parked_polls);
        Self(shard)
    }
}

impl Drop for ParkedGauge<'_> {
    fn drop(&mut self) {
        metrics::dec(&self.0.metrics.sub_parked_polls);
    }
}

/// A long poll parked on a topic: registered with the owner cores while it lives.
struct Parked {
    shard: Rc<Shard>,
    topic: Rc<str>,
    remote: Vec<usize>,
    counted: bool,
}

impl Parked {
    async fn new(shard: &Rc<Shard>, topic: &LocalTopic, counted: bool) -> Self {
        let remote: Vec<usize> = topic
            .owner_cores
            .iter()
            .copied()
            .filter(|&c| c != shard.id)
            .collect();
        let first = {
            let mut parked = shard.parked.borrow_mut();
            let n = parked.entry(topic.name.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if counted {
            metrics::inc(&shard.metrics.sub_parked_polls);
        }
        if first {
            for &c in &remote {
                let req = Request::Interest {
                    topic: topic.name.to_string(),
                    core: shard.id,
                    delta: 1,
                };
                shard.mesh.send(c, req).await;
            }
        }
        Self {
            shard: shard.clone(),
            topic: topic.name.clone(),
            remote,
            counted,
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.counted {
            metrics::dec(&self.shard.metrics.sub_parked_polls);
        }
        let last = {
            let mut parked = self.shard.parked.borrow_mut();
            let n = parked.get_mut(&self.topic).map(|n| {
                *n -= 1;
                *n
            });
            if n == Some(0) {
                parked.remove(&self.topic);
            }
            n == Some(0)
        };
        if last {
            for &c in &self.remote {
                let mesh = self.shard.mesh.clone();
                let req = Request::Interest {
                    topic: self.topic.to_string(),
                    core: self.shard.id,
                    delta: -1,
                };
                monoio::spawn(async move { mesh.send(c, req).await });
            }
        }
    }
}
