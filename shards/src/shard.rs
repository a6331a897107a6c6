//! One core's context, shared by every layer on that core: its id and configuration, the mesh to
//! the other cores, its copy of the topic catalog, its metrics, its lifecycle (draining,
//! stopping), the wake-up board of parked long polls (an event per topic, and which other cores
//! want to hear about new data on which topic), and its budget of response bytes held for
//! clients that have not read them. Everything here is touched by this core's thread only; no
//! `RefCell` borrow is held across an `.await`.

use crate::catalog::{Catalog, LocalTopic, Map};
use crate::event::Event;
use crate::mesh::Mesh;
use crate::metrics::{self, Metrics};
use crate::request::{Answer, Request};
use kateway_core::config::Config;
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::Limits;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One core's context.
pub struct Shard {
    pub id: usize,
    /// The settings in force ([`Shard::cfg`]); a reload replaces them.
    cfg: RefCell<Rc<Config>>,
    pub mesh: Mesh<Request, Answer>,
    pub catalog: RefCell<Catalog>,
    pub metrics: Metrics,
    /// The limits commands are parsed against ([`Shard::limits`]).
    limits: Cell<Limits>,
    /// Where a configuration reload is asked for (the process's main thread).
    pub reload: std::sync::mpsc::Sender<crate::request::ReloadAsk>,
    /// Turns for round-robin choices (keyless partitions, the first core to fetch from).
    pub rr: Cell<usize>,
    /// Draining: no new connections or long polls.
    pub shutdown: Cell<bool>,
    /// The sockets this core accepts on (an upgrade hands them to the next process).
    pub listeners: RefCell<Vec<(crate::conn::Listener, std::os::fd::RawFd)>>,
    /// Draining soon (`server.drain_grace`): `/ready` answers 503, everything else is served.
    pub unready: Cell<bool>,
    pub shutdown_event: Event,
    /// Stopping: every task ends.
    pub stop_event: Event,
    pub started: std::time::Instant,
    /// Long-poll wake-ups per topic.
    topic_events: RefCell<Map<Rc<str>, Rc<Event>>>,
    /// Long polls parked on this core per topic.
    pub parked: RefCell<Map<Rc<str>, usize>>,
    /// Per topic, how many parked polls each core has (as owner of partitions).
    interest: RefCell<Map<Rc<str>, Vec<i64>>>,
    /// Response bytes held for clients that have not read them yet.
    pub response_bytes: Cell<usize>,
    /// Bytes of requests still arriving, held in connections' read buffers (beyond a small
    /// allowance each).
    pub request_bytes: Cell<usize>,
    /// Authentication, quotas and admission on this core.
    pub tenancy: crate::tenancy::Tenancy,
}

impl Shard {
    pub fn new(
        id: usize,
        cfg: Rc<Config>,
        mesh: Mesh<Request, Answer>,
        pepper: std::sync::Arc<kateway_core::keys::Pepper>,
        reload: std::sync::mpsc::Sender<crate::request::ReloadAsk>,
    ) -> Self {
        let tenancy = crate::tenancy::Tenancy::new(&cfg, pepper);
        let limits = Cell::new(limits_of(&cfg));
        Self {
            id,
            cfg: RefCell::new(cfg),
            mesh,
            catalog: Default::default(),
            metrics: Metrics::default(),
            limits,
            reload,
            rr: Cell::new(id),
            shutdown: Cell::new(false),
            unready: Cell::new(false),
            listeners: Default::default(),
            shutdown_event: Event::default(),
            stop_event: Event::default(),
            started: std::time::Instant::now(),
            topic_events: Default::default(),
            parked: Default::default(),
            interest: Default::default(),
            response_bytes: Cell::new(0),
            request_bytes: Cell::new(0),
            tenancy,
        }
    }

    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// The settings in force now.
    pub fn cfg(&self) -> Rc<Config> {
        self.cfg.borrow().clone()
    }

    /// The limits commands are parsed against now.
    pub fn limits(&self) -> Limits {
        self.limits.get()
    }

    /// Puts reloaded settings in force on this core (only those `kateway_core::live::LIVE`
    /// names differ from the running ones): what is read per use takes them from here, and
    /// what the core keeps derived from them is derived again.
    pub fn reconfigure(&self, cfg: Rc<Config>) {
        self.limits.set(limits_of(&cfg));
        self.tenancy.reconfigure(&cfg);
        *self.cfg.borrow_mut() = cfg;
    }

    /// Whether the core is stopping.
    pub fn stopping(&self) -> bool {
        self.stop_event.epoch() > 0
    }

    /// Sleeps for `d`, or less if the core starts stopping; returns whether it is stopping.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        let seen = self.stop_event.epoch();
        if seen > 0 {
            return true;
        }
        monoio::select! {
            _ = monoio::time::sleep(d) => {},
            _ = self.stop_event.wait(seen) => {},
        }
        self.stopping()
    }

    /// The topic called `name`, or 404.
    pub fn topic(&self, name: &str) -> Result<Rc<LocalTopic>, Error> {
        self.catalog.borrow().get(name)
    }

    /// The catalog's interned name of `topic`.
    pub fn interned(&self, topic: &str) -> Option<Rc<str>> {
        self.catalog.borrow().interned(topic)
    }

    /// The next turn of the round robin.
    pub fn turn(&self) -> usize {
        let n = self.rr.get();
        self.rr.set(n.wrapping_add(1));
        n
    }

    /// Picks the partition for a keyless publish: one this core owns if it has any.
    pub fn pick_partition(&self, topic: &LocalTopic) -> u32 {
        let n = self.turn();
        match topic.owned.len() {
            0 => (n % topic.partitions as usize) as u32,
            owned => topic.owned[n % owned],
        }
    }

    /// The wake-up event of a topic on this core.
    pub fn topic_event(&self, topic: &str) -> Rc<Event> {
        if let Some(e) = self.topic_events.borrow().get(topic) {
            return e.clone();
        }
        let e = Rc::new(Event::default());
        self.topic_events
            .borrow_mut()
            .insert(Rc::from(topic), e.clone());
        e
    }

    /// New data on `topic`: wakes the polls parked on it here and tells the other cores that
    /// have polls parked on it.
    pub fn wake(&self, topic: &Rc<str>) {
        self.topic_event(topic).notify();
        let interested: Vec<usize> = self
            .interest
            .borrow()
            .get(topic)
            .map(|v| {
                v.iter()
                    .enumerate()
                    .filter(|(c, &n)| n > 0 && *c != self.id)
                    .map(|(c, _)| c)
                    .collect()
            })
            .unwrap_or_default();
        for core in interested {
            let mesh = self.mesh.clone();
            let topic = topic.to_string();
            metrics::inc(&self.metrics.mesh_messages_total);
            monoio::spawn(async move { mesh.send(core, Request::Wake { topic }).await });
        }
    }

    /// Records that `core` has `delta` more (or fewer) polls parked on `topic`.
    pub fn add_interest(&self, topic: &str, core: usize, delta: i64) {
        let mut m = self.interest.borrow_mut();
        let v = m
            .entry(Rc::from(topic))
            .or_insert_with(|| vec![0; self.cores()]);
        v[core] += delta;
        if v.iter().all(|&c| c <= 0) {
            m.remove(topic);
        }
    }

    /// Holds up to `want` response bytes (at least one byte is granted, or 503 when the core's
    /// budget for unread answers is used up).
    pub fn hold_response(self: &Rc<Self>, want: usize) -> Result<Held, Error> {
        let cap = self.cfg().limits.max_response_bytes_per_core.0 as usize;
        let free = cap.saturating_sub(self.response_bytes.get());
        if free == 0 {
            metrics::inc(&self.metrics.http_responses_refused_total);
            return Err(Error::new(
                ErrorKind::ResponsesBuffered,
                "this core holds its limit of answers that clients have not read yet",
            ));
        }
        let bytes = want.min(free).max(1);
        self.response_bytes.set(self.response_bytes.get() + bytes);
        Ok(Held {
            shard: self.clone(),
            bytes,
        })
    }

    /// Counts `bytes` of an answer already built against the budget (it may go over it).
    pub fn account_response(self: &Rc<Self>, bytes: usize) -> Held {
        self.response_bytes.set(self.response_bytes.get() + bytes);
        Held {
            shard: self.clone(),
            bytes,
        }
    }

    /// Starts draining: no new connections or long polls; parked polls wake up and answer 204.
    pub fn begin_shutdown(&self) {
        self.shutdown.set(true);
        self.shutdown_event.notify();
        for e in self.topic_events.borrow().values() {
            e.notify();
        }
    }
}

/// Response bytes held against the core's `limits.max_response_bytes_per_core` until the
/// answer is written to the client (or the connection is gone).
pub struct Held {
    shard: Rc<Shard>,
    bytes: usize,
}

impl Held {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead (the size of the answer once it is built).
    pub fn resize(&mut self, bytes: usize) {
        let r = &self.shard.response_bytes;
        r.set(r.get() - self.bytes + bytes);
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let r = &self.shard.response_bytes;
        r.set(r.get().saturating_sub(self.bytes));
    }
}

/// A connection's request bytes counted against `limits.max_request_bytes_per_core`.
pub struct HeldRequest {
    shard: Rc<Shard>,
    bytes: usize,
}

impl HeldRequest {
    /// Nothing held yet.
    pub fn new(shard: &Rc<Shard>) -> Self {
        Self {
            shard: shard.clone(),
            bytes: 0,
        }
    }

    /// Holds `bytes` instead; refused (holding what it held) when growing would take the core
    /// past its limit.
    pub fn resize(&mut self, bytes: usize) -> Result<(), Error> {
        let r = &self.shard.request_bytes;
        let others = r.get() - self.bytes;
        let cap = self.shard.cfg().limits.max_request_bytes_per_core.0 as usize;
        if bytes > self.bytes && others + bytes > cap {
            metrics::inc(&self.shard.metrics.http_requests_refused_total);
            return Err(Error::new(
                ErrorKind::RequestsBuffered,
                "this core holds its limit of requests still arriving",
            ));
        }
        r.set(others + bytes);
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for HeldRequest {
    fn drop(&mut self) {
        let r = &self.shard.request_bytes;
        r.set(r.get().saturating_sub(self.bytes));
    }
}

/// The limits commands are parsed against, from the settings.
fn limits_of(cfg: &Config) -> Limits {
    Limits {
        max_message: cfg.limits.max_message_bytes.0 as usize,
        max_key: cfg.limits.max_key_bytes.0 as usize,
        max_tag: cfg.limits.max_tag_bytes.0 as usize,
        max_batch_messages: cfg.limits.max_batch_messages as usize,
        max_batch_bytes: cfg.limits.max_batch_bytes.0 as usize,
        max_subscribe_batch: cfg.subscribe.max_batch as usize,
        default_wait: cfg.subscribe.default_wait.0,
        max_wait: cfg.subscribe.max_wait.0,
    }
}
