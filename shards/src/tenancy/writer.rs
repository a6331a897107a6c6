//! Core 0's metadata writer. A change ([`Op`]) is checked against the current state
//! ([`State::plan`]), written to the backend's metadata store, applied, and the next view handed
//! to every core before it is answered, so a key created (or revoked) is in force on every core
//! of this gateway by the time its creator hears back. Changes run one at a time.
//!
//! The embedded store applies a change once it is fsynced. On Kafka a change is applied when it
//! is read back from the metadata topic, in topic order, like every other gateway's changes: the
//! write waits for that. Until the topic has been read up to its end as of the start, the
//! gateway is not ready and answers 503 to everything that needs a key.
//!
//! On the first start (no live operator key once the metadata is loaded) the writer makes an
//! operator key, writes it to `<data>/operator.key` (0600) and prints it to stderr, once.

use super::{AppPools, View};
use crate::backend::meta::{MetaInit, MetaStore};
use crate::event::Event;
use crate::node::Core;
use crate::request::Request;
use crate::shard::now_ms;
use kateway_core::keys::Pepper;
use kateway_core::tenancy::state::key_json;
use kateway_core::tenancy::{Op, Planned, Record, Snapshot, Stamp, State};
use kateway_core::{Error, ErrorKind, TopicName};
use kateway_kafka_bridge::metatopic::MetaEvent;
use rustc_hash::FxHashMap;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the tenancy API asks of the writer.
#[derive(Debug, Clone)]
pub enum MetaCall {
    Change(Op, Stamp),
    Apps,
    Keys(String),
    Grants(String),
    Quota(String),
    /// A leased group's policy: `(app, group)`.
    QueuePolicy(String, String),
    Audit(usize),
}

/// Core 0's metadata writer.
pub struct Writer {
    state: RefCell<State>,
    store: MetaStore,
    pools: RefCell<FxHashMap<String, Arc<AppPools>>>,
    /// Kafka: the offset of the last record applied.
    applied: Cell<i64>,
    applied_event: Event,
    busy: Cell<bool>,
    done: Event,
    pepper: Arc<Pepper>,
    data_dir: PathBuf,
    nonce: Cell<u64>,
    stop: Arc<AtomicBool>,
    /// Whether the metadata is loaded (at once for the embedded store; on Kafka once the topic
    /// was read up to its end at the start): changes wait for it.
    loaded: Cell<bool>,
}

/// The file the first operator key is written to.
pub fn operator_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("operator.key")
}

impl Writer {
    /// The writer over `init`'s store and records.
    pub fn new(init: MetaInit, pepper: Arc<Pepper>, data_dir: PathBuf) -> Self {
        let mut state = State::default();
        let loaded = init.follow.is_none();
        for r in init.records {
            state.apply(r);
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
        Self {
            state: RefCell::new(state),
            store: init.store,
            pools: Default::default(),
            applied: Cell::new(-1),
            applied_event: Event::default(),
            busy: Cell::new(false),
            done: Event::default(),
            pepper,
            data_dir,
            nonce: Cell::new(seed),
            stop: init.stop,
            loaded: Cell::new(loaded),
        }
    }

    /// Stops following the metadata topic.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// The view of the current state: the snapshot, and quota pools (kept across views while
    /// an app's quota is unchanged, so a change elsewhere does not refill them).
    fn build(&self) -> View {
        let state = self.state.borrow();
        let snap = Snapshot::build(&state, state.applied, now_ms());
        let mut pools = self.pools.borrow_mut();
        let before = std::mem::take(&mut *pools);
        for (app, spec) in &state.quotas {
            if snap.quota(app).is_none() {
                continue;
            }
            let p = match before.get(app) {
                Some(p) if p.spec == *spec => p.clone(),
                old => Arc::new(AppPools::new(*spec, old.map(|p| &**p))),
            };
            pools.insert(app.clone(), p);
        }
        View {
            snap,
            pools: pools.clone(),
        }
    }

    /// Builds the next view and installs it on every core.
    pub async fn publish(&self, core: &Core) {
        let view = Arc::new(self.build());
        let shard = &core.shard;
        shard.tenancy.install(view.clone());
        for a in shard
            .mesh
            .broadcast(shard.id, |_| Request::View(view.clone()))
            .await
        {
            if let Err(e) = a {
                tracing::warn!("a core did not take the new metadata view: {e}");
            }
        }
    }

    /// Kafka: applies the metadata topic's records as they come, in order; once caught up with
    /// the topic's end at the start, the gateway is ready (and makes its operator key if there
    /// is none).
    pub async fn follow(self: Rc<Self>, core: Rc<Core>, rx: flume::Receiver<MetaEvent>) {
        let mut ready = false;
        let mut trouble_logged = false;
        while let Ok(ev) = rx.recv_async().await {
            let mut changed = false;
            let mut caught_up = false;
            let mut handle = |ev: MetaEvent, changed: &mut bool, caught_up: &mut bool| match ev {
                MetaEvent::Record { offset, value } => {
                    match value.as_deref().map(Record::decode) {
                        Some(Ok(r)) => self.state.borrow_mut().apply(r),
                        Some(Err(e)) => {
                            tracing::error!(offset, "unreadable metadata record skipped: {e}")
                        }
                        None => {}
                    }
                    self.applied.set(offset);
                    *changed = true;
                }
                MetaEvent::CaughtUp => *caught_up = true,
                MetaEvent::Trouble(e) => {
                    if !trouble_logged {
                        tracing::warn!("reading the metadata topic: {e}");
                        trouble_logged = true;
                    }
                }
            };
            handle(ev, &mut changed, &mut caught_up);
            while let Ok(ev) = rx.try_recv() {
                handle(ev, &mut changed, &mut caught_up);
            }
            let first = caught_up && !ready;
            if first {
                ready = true;
                self.loaded.set(true);
                tracing::info!(records = self.state.borrow().applied, "metadata loaded");
            }
            if ready && (changed || caught_up) {
                self.publish(&core).await;
                self.applied_event.notify();
            }
            if first {
                // A change is applied by this loop when read back: not awaited here.
                let (w, c) = (self.clone(), core.clone());
                monoio::spawn(async move { w.bootstrap(&c).await });
            }
        }
    }

    /// Makes the first operator key if there is no live one.
    pub async fn bootstrap(&self, core: &Core) {
        let id = self.pepper.id();
        let foreign = self.state.borrow().foreign_keys(now_ms(), &id);
        if foreign > 0 {
            tracing::error!(
                foreign,
                "live keys were made with another pepper than this gateway's (auth.pepper_file): they cannot authenticate here; restore the pepper file, or issue new keys"
            );
        }
        if !core.shard.cfg().auth.enabled
            || self.state.borrow().usable_operator_keys(now_ms(), &id) > 0
        {
            return;
        }
        let stamp = Stamp {
            actor: "gateway".into(),
            ts_ms: now_ms(),
            ip: None,
        };
        match self.change(core, Op::Bootstrap, stamp).await {
            Ok(p) => {
                let text = p.secret.unwrap_or_default();
                let path = operator_key_path(&self.data_dir);
                let line = format!("{text}\n");
                let written = kateway_log::partition::replace_private_file(&path, line.as_bytes());
                if let Err(e) = written {
                    tracing::error!(file = %path.display(), "cannot write the operator key: {e}");
                }
                eprintln!(
                    "kateway: the first operator key (shown once; also in {}, mode 0600):\n{text}",
                    path.display()
                );
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => tracing::error!("cannot make the first operator key: {e}"),
        }
    }

    /// Runs a tenancy API call: `(status, JSON body)`.
    pub async fn call(&self, core: &Core, call: MetaCall) -> Result<(u16, String), Error> {
        let state = || self.state.borrow();
        let (status, v) = match call {
            MetaCall::Change(op, stamp) => {
                let p = self.change(core, op, stamp).await?;
                (p.status, p.answer)
            }
            MetaCall::Apps => {
                let s = state();
                let apps: Vec<_> = s
                    .apps
                    .iter()
                    .filter(|(_, (deleted, _))| !deleted)
                    .map(|(a, (_, st))| json!({"app": a, "created_ms": st.ts_ms}))
                    .collect();
                (200, json!({ "apps": apps }))
            }
            MetaCall::Keys(app) => {
                let s = state();
                let keys: Vec<_> = s
                    .keys
                    .values()
                    .filter(|k| k.app == app)
                    .map(|k| key_json(k, None))
                    .collect();
                (200, json!({"app": app, "keys": keys}))
            }
            MetaCall::Grants(app) => {
                let s = state();
                let mut given = Vec::new();
                let mut held = Vec::new();
                for (topic, sub) in s.grants.keys() {
                    if TopicName::parse_storage(topic).is_ok_and(|t| t.appid == app) {
                        given.push(json!({"topic": topic, "app": sub}));
                    }
                    if *sub == app {
                        held.push(json!({ "topic": topic }));
                    }
                }
                (200, json!({"app": app, "given": given, "held": held}))
            }
            MetaCall::Quota(app) => {
                let q = state().quotas.get(&app).copied().unwrap_or_default();
                (200, json!({"app": app, "quota": q}))
            }
            MetaCall::QueuePolicy(app, group) => {
                let spec = state()
                    .queue_policies
                    .get(&(app.clone(), group.clone()))
                    .copied();
                let effective =
                    crate::queue::policy::resolve(&core.shard.cfg().queue, spec.as_ref(), 0);
                (
                    200,
                    json!({"app": app, "group": group, "policy": spec, "effective": crate::queue::policy::json(&effective)}),
                )
            }
            MetaCall::Audit(limit) => {
                let s = state();
                let entries: Vec<_> = s.audit.values().rev().take(limit).collect();
                (200, json!({ "audit": entries }))
            }
        };
        Ok((status, v.to_string()))
    }

    /// Checks, writes and applies one change; answers once every core has the view with it.
    async fn change(&self, core: &Core, op: Op, stamp: Stamp) -> Result<Planned, Error> {
        while self.busy.get() {
            let seen = self.done.epoch();
            self.done.wait(seen).await;
        }
        self.busy.set(true);
        let r = self.change_now(core, op, stamp).await;
        self.busy.set(false);
        self.done.notify();
        r
    }

    async fn change_now(&self, core: &Core, op: Op, stamp: Stamp) -> Result<Planned, Error> {
        if !self.loaded.get() {
            return Err(Error::new(
                ErrorKind::NotReady,
                "the metadata is not loaded yet",
            ));
        }
        let n = self
            .nonce
            .get()
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        self.nonce.set(n);
        let planned =
            self.state
                .borrow()
                .plan(op, stamp, &self.pepper, &format!("{:08x}", n >> 32))?;
        match self.store.write(&core.backend, &planned.records).await? {
            None => {
                {
                    let mut s = self.state.borrow_mut();
                    for r in &planned.records {
                        s.apply(r.clone());
                    }
                }
                self.publish(core).await;
                self.store.compact(|| self.state.borrow().records(now_ms()));
            }
            Some(offset) => {
                // Applied when read back from the topic, in order with every gateway's changes.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while self.applied.get() < offset {
                    let seen = self.applied_event.epoch();
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(
                            ErrorKind::KafkaUnavailable,
                            "the change is written but not read back yet: it takes effect shortly",
                        ));
                    }
                    let _ = monoio::time::timeout(left, self.applied_event.wait(seen)).await;
                }
            }
        }
        Ok(planned)
    }

    /// Rebuilds the view when a key's expiry passes, so the keys that stopped working end their
    /// sessions; checks every second.
    pub async fn expiries(self: Rc<Self>, core: Rc<Core>) {
        loop {
            if core.shard.sleep(Duration::from_secs(1)).await {
                return;
            }
            let due = core
                .shard
                .tenancy
                .view()
                .snap
                .next_expiry_ms
                .is_some_and(|e| e <= now_ms());
            if due {
                self.publish(&core).await;
            }
        }
    }
}
