//! A core: its context ([`Shard`]), its backend and its tasks, and the one place where a
//! [`Request`] is executed, whether another core sent it through the mesh ([`Core::inbox`]) or
//! this core runs it itself.

use crate::admin;
use crate::backend::Backend;
use crate::event::Event;
use crate::metrics::{self, Snapshot};
use crate::request::{Answer, Request};
use crate::shard::Shard;
use crate::tasks::Tasks;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// One core.
pub struct Core {
    pub shard: Rc<Shard>,
    pub backend: Backend,
    pub tasks: Tasks,
    /// Serialises topic administration (core 0).
    admin_busy: Cell<bool>,
    admin_done: Event,
    /// The metadata writer (core 0 only).
    pub writer: Option<Rc<crate::tenancy::writer::Writer>>,
    /// The leased groups' queues this core keeps.
    pub queues: Rc<crate::queue::Queues>,
    /// The idempotency keys (core 0 only).
    pub idem: std::cell::OnceCell<Rc<crate::idem::Idem>>,
    /// The delays this gateway fires (core 0 only).
    pub delays: std::cell::OnceCell<Rc<crate::delay::Delays>>,
    /// The key delay ids are tagged with.
    pub delay_key: kateway_core::delay::DelayKey,
    /// The webhook endpoints this core runs.
    pub webhooks: crate::webhook::Webhooks,
    /// The connections each kind of listener serves on this core, by [`Listener`] (each kind has
    /// a cap of its own, so a flood on the main port cannot lock operators out).
    ///
    /// [`Listener`]: crate::conn::Listener
    pub serving: [Cell<usize>; 3],
}

impl Core {
    pub fn new(
        shard: Rc<Shard>,
        backend: Backend,
        writer: Option<Rc<crate::tenancy::writer::Writer>>,
    ) -> Self {
        let queues = Rc::new(crate::queue::Queues::new(
            &shard.tenancy.derive_key("receipts"),
        ));
        Self {
            queues,
            idem: std::cell::OnceCell::new(),
            delays: std::cell::OnceCell::new(),
            delay_key: kateway_core::delay::DelayKey::new(&shard.tenancy.derive_key("delays")),
            webhooks: crate::webhook::Webhooks::default(),
            shard,
            backend,
            tasks: Tasks::default(),
            admin_busy: Cell::new(false),
            serving: Default::default(),
            admin_done: Event::default(),
            writer,
        }
    }

    /// Has core 0's metadata writer run a tenancy API call.
    pub async fn meta(
        &self,
        call: crate::tenancy::writer::MetaCall,
    ) -> Result<(u16, String), kateway_core::Error> {
        if let Some(w) = &self.writer {
            return w.call(self, call).await;
        }
        match self.shard.mesh.call(0, Request::Meta(call)).await? {
            Answer::Meta(r) => r,
            _ => Err(kateway_core::Error::new(
                kateway_core::ErrorKind::Internal,
                "unexpected answer from core 0",
            )),
        }
    }

    /// Has core 0's delays run a call.
    pub async fn delay_call(
        &self,
        call: crate::delay::DelayCall,
    ) -> Result<crate::delay::DelayAnswer, kateway_core::Error> {
        let req = Request::Delay(call);
        let a = if self.shard.id == 0 {
            self.execute(req).await
        } else {
            self.shard.mesh.call(0, req).await?
        };
        match a {
            Answer::Delay(r) => r,
            _ => Err(kateway_core::Error::new(
                kateway_core::ErrorKind::Internal,
                "unexpected answer from core 0",
            )),
        }
    }

    /// Runs a request on this core.
    pub async fn execute(&self, req: Request) -> Answer {
        let (shard, backend) = (&self.shard, &self.backend);
        match req {
            Request::Publish {
                topic,
                partition,
                items,
                ack,
            } => Answer::Published(backend.publish_local(&topic, partition, items, ack).await),
            Request::Fetch(f) => Answer::Delivered(backend.fetch_local(&f)),
            Request::Commit {
                topic,
                partition,
                group,
                offset,
                seek,
            } => Answer::Done(
                backend
                    .commit_local(&topic, partition, &group, offset, seek)
                    .await,
            ),
            Request::Lease(c) => Answer::Delivered(
                self.queues
                    .lease_here(shard, backend, c)
                    .await
                    .map(|records| crate::request::Fetched {
                        records,
                        more: false,
                    }),
            ),
            Request::Idem(c) => Answer::Idem(match self.idem.get() {
                Some(idem) => idem.call(backend, c).await,
                None => Err(kateway_core::Error::new(
                    kateway_core::ErrorKind::Internal,
                    "idempotency calls go to core 0",
                )),
            }),
            Request::Delay(c) => Answer::Delay(match self.delays.get() {
                Some(d) => d.call(c).await,
                None => Err(kateway_core::Error::new(
                    kateway_core::ErrorKind::Internal,
                    "delay calls go to core 0",
                )),
            }),
            Request::WebhookInfo { group, topic, log } => {
                Answer::Meta(Ok(match self.webhooks.describe(&group, &topic, log) {
                    Some(v) => (200, v.to_string()),
                    None => (404, String::new()),
                }))
            }
            Request::Settle(c) => Answer::Settled(self.queues.settle_here(shard, backend, c).await),
            Request::Info { topic, groups } => Answer::Infos(backend.info_local(&topic, &groups)),
            Request::Interest { topic, core, delta } => {
                shard.add_interest(&topic, core, delta);
                Answer::None
            }
            Request::Wake { topic } => {
                shard.topic_event(&topic).notify();
                Answer::None
            }
            Request::Admin(op) => {
                while self.admin_busy.get() {
                    let seen = self.admin_done.epoch();
                    self.admin_done.wait(seen).await;
                }
                self.admin_busy.set(true);
                let r = admin::apply(shard, backend, op).await;
                self.admin_busy.set(false);
                self.admin_done.notify();
                Answer::Topic(r)
            }
            Request::Apply(meta) => Answer::Done(admin::apply_here(shard, backend, &meta).await),
            Request::Drop(name) => {
                admin::drop_here(shard, backend, &name);
                Answer::Done(Ok(()))
            }
            Request::Metrics => Answer::Snapshot(Box::new(self.snapshot())),
            Request::View(v) => {
                shard.tenancy.install(v);
                Answer::None
            }
            Request::Meta(call) => match &self.writer {
                Some(w) => Answer::Meta(w.call(self, call).await),
                None => Answer::Meta(Err(kateway_core::Error::new(
                    kateway_core::ErrorKind::Internal,
                    "metadata calls go to core 0",
                ))),
            },
            Request::Listeners => Answer::Listeners(shard.listeners.borrow().clone()),
            Request::Unready => {
                shard.unready.set(true);
                Answer::None
            }
            Request::Reconfigure(cfg) => {
                shard.reconfigure(Rc::new((*cfg).clone()));
                Answer::None
            }
            Request::Drain => {
                shard.begin_shutdown();
                while shard.metrics.http_connections_active.get() > 0 {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                backend.drain(shard.cfg().server.shutdown_timeout.0).await;
                self.queues.save_all().await;
                Answer::None
            }
            Request::Stop => {
                shard.stop_event.notify();
                Answer::None
            }
        }
    }

    /// Serves the requests other cores send, until `Stop`.
    pub async fn inbox(
        self: Rc<Self>,
        rx: flume::Receiver<crate::mesh::Envelope<Request, Answer>>,
    ) {
        while let Ok((req, reply)) = rx.recv_async().await {
            if matches!(req, Request::Stop) {
                self.execute(req).await;
                return;
            }
            let core = self.clone();
            monoio::spawn(async move {
                // A leased long poll ends when its caller goes away (the client closed the
                // connection and the caller's core dropped the call): parked on here, it would
                // otherwise lease the next message to no one, spending one of its attempts.
                let lease = match &req {
                    Request::Lease(c) => Some((c.topic.clone(), c.group.clone())),
                    _ => None,
                };
                let parks = lease.is_some();
                let a = match &reply {
                    Some(tx) if parks => monoio::select! {
                        a = core.execute(req) => a,
                        _ = caller_gone(tx) => return,
                    },
                    _ => core.execute(req).await,
                };
                if let Some(tx) = reply {
                    if let Err(flume::SendError(a)) = tx.send(a) {
                        // Gone between the lease and its answer: the messages go back.
                        if let (Answer::Delivered(Ok(f)), Some((topic, group))) = (a, lease) {
                            core.queues.release(&topic, &group, &f.records);
                        }
                    }
                }
            });
        }
    }

    /// This core's metrics, storage and budget.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.shard.metrics.snapshot();
        let m = &self.shard.metrics;
        s.labelled = metrics::Labelled::of(
            self.shard.catalog.borrow().stats(),
            &m.routes,
            &m.lags.borrow(),
        );
        self.backend.snapshot(&mut s);
        s.response_bytes_held = self.shard.response_bytes.get() as u64;
        s.request_bytes_held = self.shard.request_bytes.get() as u64;
        s
    }

    /// Every core's snapshot, summed.
    pub async fn all_metrics(&self) -> Result<Snapshot, kateway_core::Error> {
        let mut each = self.per_core_metrics().await?.into_iter();
        let mut total = each.next().unwrap_or_default();
        for s in each {
            total.add(&s);
        }
        Ok(total)
    }

    /// Every core's snapshot, by core id.
    pub async fn per_core_metrics(&self) -> Result<Vec<Snapshot>, kateway_core::Error> {
        let me = self.shard.id;
        metrics::add(
            &self.shard.metrics.mesh_messages_total,
            self.shard.cores() as u64 - 1,
        );
        let mut others = Vec::new();
        for a in self.shard.mesh.broadcast(me, |_| Request::Metrics).await {
            if let Answer::Snapshot(s) = a? {
                others.push(*s);
            }
        }
        // The broadcast answers in core order, this core left out.
        others.insert(me.min(others.len()), self.snapshot());
        Ok(others)
    }
}

/// Resolves once the caller waiting on `tx`'s answer has gone (checked every 50 ms: only
/// parked calls watch it).
async fn caller_gone<A>(tx: &flume::Sender<A>) {
    while !tx.is_disconnected() {
        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
