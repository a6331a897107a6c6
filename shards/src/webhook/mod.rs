//! Webhook push subscriptions (docs/webhooks.md), the same on both backends. A subscription
//! is a leased group ([`crate::queue`]) whose consumer is the gateway: the core that keeps
//! the group's queue runs its [`Endpoint`]. It leases messages up to `max_in_flight`, POSTs
//! each one signed ([`kateway_core::webhook::sign`]) through the core's [`client::Client`],
//! acks it on a 2xx, and retries anything else with exponential backoff and jitter, holding
//! the lease meanwhile. After `max_attempts` (or a 410, or `webhook-delivery: abort-message`)
//! the message is buried into the group's dead-letter topic. With `ordered`, messages of one
//! key go one at a time, in the order they were leased.
//!
//! On Kafka every gateway runs the endpoint for the partitions its membership of the group
//! holds, so each message is pushed by the owner of its partition. A message is pushed again
//! only when its lease ends unsettled: a crash, or a partition moving to another gateway.
//!
//! [`Webhooks::run`] (one per core) follows the tenancy view: it starts the endpoints whose
//! queue this core keeps, hands them their changed settings (a pause included), and stops
//! removed ones.

pub mod client;

use crate::event::Event;
use crate::node::Core;
use crate::queue::LeaseCall;
use crate::shard::now_ms;
use bytes::Bytes;
use client::Client;
use kateway_core::tenancy::{Op, Stamp, WebhookSpec};
use kateway_core::webhook::{backoff_ms, sign, Url};
use kateway_core::{Delivered, Error, ErrorKind, Reset};
use kateway_proto::command::SettleOp;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

/// How often the supervisor looks at the tenancy view, and a paused endpoint at its setting.
const TICK: Duration = Duration::from_millis(200);

/// One attempt, for the delivery log.
#[derive(Clone)]
struct Attempt {
    at_ms: i64,
    id: String,
    attempt: u32,
    status: u16,
    error: Option<String>,
    latency_ms: u64,
}

/// A running subscription on this core.
pub struct Endpoint {
    /// `<app>.<group>` and the topic's storage name.
    group: String,
    topic: String,
    spec: RefCell<WebhookSpec>,
    url: RefCell<Url>,
    secret: RefCell<[u8; 32]>,
    stop: Cell<bool>,
    /// A delivery finished (room for another).
    done: Event,
    in_flight: Cell<usize>,
    /// Ordered delivery: the messages waiting behind each key's one in flight.
    keys: RefCell<HashMap<Bytes, VecDeque<Delivered>>>,
    /// When the leases of the messages waiting behind their keys were last extended.
    waiting_extended: Cell<std::time::Instant>,
    consecutive_failures: Cell<u32>,
    /// A pause after failures is being written to the metadata.
    pausing: Cell<bool>,
    delivered: Cell<u64>,
    failed: Cell<u64>,
    dead: Cell<u64>,
    log: RefCell<VecDeque<Attempt>>,
}

/// This core's endpoints.
#[derive(Default)]
pub struct Webhooks {
    running: RefCell<HashMap<(String, String), Rc<Endpoint>>>,
}

fn secret_of(core: &Core, nonce: &str) -> [u8; 32] {
    kateway_core::webhook::secret(&core.shard.tenancy.derive_key("webhooks"), nonce)
}

impl Webhooks {
    /// Follows the tenancy view until the core stops.
    pub async fn run(core: Rc<Core>) {
        let client = Client::new(core.shard.cfg().webhook.allow_private_addresses);
        loop {
            if core.shard.stopping() {
                break;
            }
            let view = core.shard.tenancy.view();
            let cores = core.shard.cores();
            let mut wanted = Vec::new();
            let checked = core.shard.tenancy.enabled;
            for (group, topic, spec) in view.snap.webhooks() {
                // An app that lost its grant on the topic is pushed nothing more (pushing
                // resumes if the grant comes back).
                if checked && !view.snap.may_push(group, topic) {
                    continue;
                }
                if crate::queue::owner(topic, group, cores) == core.shard.id {
                    wanted.push((group.clone(), topic.clone(), spec.clone()));
                }
            }
            let hooks = &core.webhooks;
            hooks.running.borrow_mut().retain(|k, ep| {
                let keep = wanted.iter().any(|(g, t, _)| (g, t) == (&k.0, &k.1));
                if !keep {
                    ep.stop.set(true);
                    ep.done.notify();
                }
                keep && !ep.stop.get()
            });
            for (group, topic, spec) in wanted {
                let key = (group.clone(), topic.clone());
                let running = hooks.running.borrow().get(&key).cloned();
                match running {
                    Some(ep) => {
                        if *ep.spec.borrow() != spec {
                            if ep.spec.borrow().secret_nonce != spec.secret_nonce {
                                *ep.secret.borrow_mut() = secret_of(&core, &spec.secret_nonce);
                            }
                            if let Ok(u) = Url::parse(&spec.url) {
                                *ep.url.borrow_mut() = u;
                            }
                            if ep.spec.borrow().paused.is_some() && spec.paused.is_none() {
                                // Resumed: failures count afresh towards the next pause.
                                ep.consecutive_failures.set(0);
                            }
                            *ep.spec.borrow_mut() = spec;
                            ep.done.notify();
                        }
                    }
                    None => {
                        let Ok(url) = Url::parse(&spec.url) else {
                            continue;
                        };
                        let ep = Rc::new(Endpoint {
                            secret: RefCell::new(secret_of(&core, &spec.secret_nonce)),
                            group,
                            topic,
                            spec: RefCell::new(spec),
                            url: RefCell::new(url),
                            stop: Cell::new(false),
                            done: Event::default(),
                            in_flight: Cell::new(0),
                            keys: RefCell::default(),
                            waiting_extended: Cell::new(std::time::Instant::now()),
                            consecutive_failures: Cell::new(0),
                            pausing: Cell::new(false),
                            delivered: Cell::new(0),
                            failed: Cell::new(0),
                            dead: Cell::new(0),
                            log: RefCell::default(),
                        });
                        hooks.running.borrow_mut().insert(key, ep.clone());
                        monoio::spawn(ep.dispatch(core.clone(), client.clone()));
                    }
                }
            }
            let seen = core.shard.tenancy.changed.epoch();
            monoio::select! {
                _ = core.shard.tenancy.changed.wait(seen) => {}
                _ = core.shard.sleep(TICK) => {}
            }
        }
        for ep in core.webhooks.running.borrow().values() {
            ep.stop.set(true);
            ep.done.notify();
        }
    }

    /// The state (or with `log` the delivery log) of the endpoint of `group` on `topic`, if
    /// this core runs it.
    pub fn describe(&self, group: &str, topic: &str, log: bool) -> Option<serde_json::Value> {
        let running = self.running.borrow();
        let ep = running.get(&(group.to_owned(), topic.to_owned()))?;
        if log {
            let entries: Vec<_> = ep
                .log
                .borrow()
                .iter()
                .rev()
                .map(|a| {
                    json!({"at_ms": a.at_ms, "id": a.id, "attempt": a.attempt,
                        "status": a.status, "error": a.error, "latency_ms": a.latency_ms})
                })
                .collect();
            return Some(json!({ "attempts": entries }));
        }
        Some(json!({
            "in_flight": ep.in_flight.get(),
            "delivered": ep.delivered.get(),
            "failed_attempts": ep.failed.get(),
            "dead": ep.dead.get(),
            "consecutive_failures": ep.consecutive_failures.get(),
        }))
    }
}

impl Endpoint {
    fn paused(&self) -> bool {
        self.spec.borrow().paused.is_some()
    }

    fn lease_len(&self) -> Duration {
        Duration::from_millis(self.spec.borrow().timeout_ms) + Duration::from_secs(30)
    }

    /// Leases and hands out messages while the subscription lasts.
    async fn dispatch(self: Rc<Self>, core: Rc<Core>, client: Rc<Client>) {
        let mut failing = false;
        loop {
            // Draining: nothing new is leased (a lease would answer at once, empty, and this
            // loop would spin and hold the core); deliveries in flight finish.
            if self.stop.get() || core.shard.stopping() || core.shard.shutdown.get() {
                break;
            }
            let spec = self.spec.borrow().clone();
            let room = (spec.max_in_flight as usize).saturating_sub(self.in_flight.get());
            if spec.paused.is_some() || room == 0 || failing {
                failing = false;
                // Paused or full, messages behind their keys keep their leases meanwhile.
                self.extend_waiting(&core).await;
                let seen = self.done.epoch();
                monoio::select! {
                    _ = self.done.wait(seen) => {}
                    _ = core.shard.sleep(TICK) => {}
                }
                continue;
            }
            let call = LeaseCall {
                topic: self.topic.clone(),
                group: self.group.clone(),
                reset: if spec.from_oldest {
                    Reset::Oldest
                } else {
                    Reset::Newest
                },
                max: room,
                max_bytes: core.shard.cfg().subscribe.max_batch_bytes.0 as usize,
                visibility: Some(self.lease_len()),
                deadline: std::time::Instant::now() + Duration::from_secs(1),
            };
            let leased = match core.queues.lease(&core.shard, &core.backend, call).await {
                Ok(l) => l,
                Err(e) if e.kind() == ErrorKind::UnknownTopic => {
                    // A gateway that never saw the topic (on Kafka) learns it, so that every
                    // gateway of a cluster takes its share of the group.
                    if let Some(path) = path_of(&self.topic) {
                        if let Err(e) = core.backend.resolve(&path).await {
                            tracing::debug!(topic = %self.topic, "webhook topic: {e}");
                        }
                    }
                    failing = true;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(group = %self.group, topic = %self.topic, "webhook lease: {e}");
                    failing = true;
                    continue;
                }
            };
            if self.stop.get() || core.shard.stopping() || core.shard.shutdown.get() {
                // Stopped while the lease waited: what it got goes back at once.
                core.queues.release(&self.topic, &self.group, &leased);
                break;
            }
            for m in leased {
                self.in_flight.set(self.in_flight.get() + 1);
                if spec.ordered && !m.key.is_empty() {
                    let mut keys = self.keys.borrow_mut();
                    if let Some(q) = keys.get_mut(&m.key) {
                        q.push_back(m);
                        continue;
                    }
                    keys.insert(m.key.clone(), VecDeque::new());
                }
                monoio::spawn(self.clone().deliver(core.clone(), client.clone(), m));
            }
            self.extend_waiting(&core).await;
        }
    }

    /// Ordered delivery: extends the leases of the messages waiting behind their key.
    async fn extend_waiting(&self, core: &Rc<Core>) {
        if self.waiting_extended.get().elapsed() < self.lease_len() / 3 {
            return;
        }
        self.waiting_extended.set(std::time::Instant::now());
        let receipts: Vec<String> = self
            .keys
            .borrow()
            .values()
            .flatten()
            .filter_map(receipt)
            .collect();
        if !receipts.is_empty() {
            self.settle(core, SettleOp::Extend, &receipts, None).await;
        }
    }

    async fn settle(
        &self,
        core: &Rc<Core>,
        op: SettleOp,
        receipts: &[String],
        error: Option<String>,
    ) {
        let topic = match path_of(&self.topic) {
            Some(p) => match core.backend.resolve(&p).await {
                Ok(t) => t,
                Err(_) => return,
            },
            None => return,
        };
        let visibility = (op == SettleOp::Extend).then(|| self.lease_len());
        // A nack gives a message back for the next delivery at once.
        let delay = (op == SettleOp::Nack).then_some(Duration::ZERO);
        if let Err(e) = core
            .queues
            .settle(
                &core.shard,
                &core.backend,
                &topic,
                &self.group,
                op,
                receipts,
                None,
                delay,
                visibility,
                error,
                false,
            )
            .await
        {
            tracing::debug!(group = %self.group, "webhook settle: {e}");
        }
    }

    /// Delivers `m` (and, ordered, the messages of its key that wait behind it).
    async fn deliver(self: Rc<Self>, core: Rc<Core>, client: Rc<Client>, m: Delivered) {
        let mut next = Some(m);
        while let Some(m) = next.take() {
            self.deliver_one(&core, &client, &m).await;
            self.in_flight.set(self.in_flight.get().saturating_sub(1));
            self.done.notify();
            // The messages waiting behind this key (held while the subscription was ordered,
            // which it may no longer be) go next.
            if !m.key.is_empty() {
                let mut keys = self.keys.borrow_mut();
                match keys.get_mut(&m.key).and_then(VecDeque::pop_front) {
                    Some(n) => next = Some(n),
                    None => {
                        keys.remove(&m.key);
                    }
                }
            }
        }
    }

    async fn deliver_one(&self, core: &Rc<Core>, client: &Client, m: &Delivered) {
        let Some(r) = receipt(m) else { return };
        let receipts = [r];
        let id = format!("{}-{}", m.partition, m.offset);
        let mut attempt = m.leased.as_ref().map_or(1, |l| u32::from(l.attempt));
        let mut extended = std::time::Instant::now();
        let mut tried = false;
        loop {
            if self.stop.get() || core.shard.stopping() {
                // The endpoint was removed, changed hands or lost its grant, or the gateway
                // stops: the message is given back for the next delivery at once (not when its
                // lease would have run out), its attempt with it if none was made.
                if tried {
                    self.settle(core, SettleOp::Nack, &receipts, None).await;
                } else {
                    core.queues
                        .release(&self.topic, &self.group, std::slice::from_ref(m));
                }
                return;
            }
            if self.paused() {
                // Held while paused: its lease is renewed well before it ends.
                if extended.elapsed() >= self.lease_len() / 3 {
                    self.settle(core, SettleOp::Extend, &receipts, None).await;
                    extended = std::time::Instant::now();
                }
                core.shard.sleep(TICK).await;
                continue;
            }
            let (spec, url, secret) = (
                self.spec.borrow().clone(),
                self.url.borrow().clone(),
                *self.secret.borrow(),
            );
            let ts = now_ms() / 1000;
            let mut headers = vec![
                ("webhook-id", id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sign(&secret, &id, ts, &m.value)),
                ("kateway-topic", self.topic.clone()),
                ("kateway-attempt", attempt.to_string()),
            ];
            if !m.key.is_empty() {
                headers.push(("kateway-key", String::from_utf8_lossy(&m.key).into_owned()));
            }
            if !m.tags.is_empty() {
                headers.push(("x-tag", String::from_utf8_lossy(&m.tags).into_owned()));
            }
            let t0 = std::time::Instant::now();
            tried = true;
            let got = client
                .post(
                    &url,
                    &headers,
                    &m.value,
                    Duration::from_millis(spec.timeout_ms),
                )
                .await;
            let latency_ms = t0.elapsed().as_millis() as u64;
            let (status, error) = match &got {
                Ok(r) if (200..300).contains(&r.status) => (r.status, None),
                Ok(r) => (
                    r.status,
                    Some(format!(
                        "HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body).trim()
                    )),
                ),
                Err(e) => (0, Some(e.clone())),
            };
            self.record(Attempt {
                at_ms: now_ms(),
                id: id.clone(),
                attempt,
                status,
                error: error.clone(),
                latency_ms,
            });
            let Some(error) = error else {
                self.consecutive_failures.set(0);
                self.delivered.set(self.delivered.get() + 1);
                crate::metrics::inc(&core.shard.metrics.webhook_deliveries_total);
                self.settle(core, SettleOp::Ack, &receipts, None).await;
                return;
            };
            self.failed.set(self.failed.get() + 1);
            crate::metrics::inc(&core.shard.metrics.webhook_failures_total);
            self.failure(core, &error).await;
            let abort = got.as_ref().is_ok_and(|r| r.status == 410 || r.abort);
            if abort || attempt >= spec.max_attempts {
                self.dead.set(self.dead.get() + 1);
                crate::metrics::inc(&core.shard.metrics.webhook_dead_total);
                let why = format!("webhook: {error} (attempt {attempt})");
                self.settle(core, SettleOp::Bury, &receipts, Some(why))
                    .await;
                return;
            }
            let jitter = f64::from(rand_u32()) / f64::from(u32::MAX);
            let mut wait = backoff_ms(attempt, spec.backoff_base_ms, spec.backoff_max_ms, jitter);
            if let Some(s) = got.as_ref().ok().and_then(|r| r.retry_after) {
                wait = wait.max(s.saturating_mul(1000)).min(spec.backoff_max_ms);
            }
            // Hold the lease through the wait.
            self.settle(core, SettleOp::Extend, &receipts, None).await;
            extended = std::time::Instant::now();
            let mut left = Duration::from_millis(wait);
            while !left.is_zero() && !self.stop.get() {
                let step = left.min(self.lease_len() / 2);
                if core.shard.sleep(step).await {
                    return;
                }
                left -= step;
                if !left.is_zero() {
                    self.settle(core, SettleOp::Extend, &receipts, None).await;
                    extended = std::time::Instant::now();
                }
            }
            attempt += 1;
        }
    }

    fn record(&self, a: Attempt) {
        let mut log = self.log.borrow_mut();
        log.push_back(a);
        // The endpoint's core reads the limit from its configuration through the caller.
        while log.len() > LOG_MAX.with(Cell::get) {
            log.pop_front();
        }
    }

    /// Counts a failed attempt; pauses the endpoint after `webhook.pause_after_failures` of
    /// them in a row.
    async fn failure(&self, core: &Rc<Core>, error: &str) {
        let n = self.consecutive_failures.get() + 1;
        self.consecutive_failures.set(n);
        let limit = core.shard.cfg().webhook.pause_after_failures;
        // At the limit or past it (failures of attempts in flight while the app had it paused
        // count on), unless paused already or being paused by another attempt's failure.
        if limit == 0 || n < limit || self.paused() || self.pausing.get() {
            return;
        }
        self.pausing.set(true);
        let _pausing = scopeguard(&self.pausing);
        let mut spec = self.spec.borrow().clone();
        spec.paused = Some(format!(
            "paused by the gateway after {n} failed deliveries in a row; the last: {error}"
        ));
        let Some((app, group)) = self.group.split_once('.') else {
            return;
        };
        let op = Op::SetWebhook {
            app: app.to_owned(),
            group: group.to_owned(),
            topic: self.topic.clone(),
            spec: Some(spec),
        };
        let stamp = Stamp {
            actor: "gateway".into(),
            ts_ms: now_ms(),
            ip: None,
        };
        match core
            .meta(crate::tenancy::writer::MetaCall::Change(op, stamp))
            .await
        {
            Ok(_) => {
                tracing::warn!(group = %self.group, topic = %self.topic, "webhook paused after {n} failed deliveries in a row: {error}")
            }
            Err(e) => tracing::warn!(group = %self.group, "webhook not paused: {e}"),
        }
    }
}

/// Clears `flag` when dropped.
struct Clear<'a>(&'a Cell<bool>);

impl Drop for Clear<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn scopeguard(flag: &Cell<bool>) -> Clear<'_> {
    Clear(flag)
}

thread_local! {
    /// Attempts kept per endpoint (`webhook.log_entries`), set when the core starts.
    pub static LOG_MAX: Cell<usize> = const { Cell::new(200) };
    static RNG: Cell<u64> = Cell::new(now_ms() as u64 | 1);
}

/// A pseudo-random number for backoff jitter (xorshift).
fn rand_u32() -> u32 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x >> 32) as u32
    })
}

/// The parts of a topic's storage name.
fn path_of(topic: &str) -> Option<kateway_proto::command::TopicPath<'_>> {
    let mut it = topic.splitn(3, '.');
    Some(kateway_proto::command::TopicPath {
        appid: it.next()?,
        topic: it.next()?,
        ver: it.next()?,
    })
}

fn receipt(m: &Delivered) -> Option<String> {
    m.leased
        .as_ref()
        .and_then(|l| std::str::from_utf8(&l.receipt).ok())
        .map(str::to_owned)
}

/// The error of a call on a webhook this gateway does not know.
pub fn unknown(group: &str, topic: &str) -> Error {
    Error::new(
        ErrorKind::UnknownEntity,
        format!("group {group} has no webhook on topic {topic}"),
    )
}
