//! One core's life: build its context and backend, install the catalog's topics (recovering the
//! partitions it owns), bind its `SO_REUSEPORT` listener, start its tasks (inbox, the backend's
//! flushers and periodic tasks, the allocator's collection, the acceptor), then wait for the
//! stop token and for every task to end within `server.shutdown_timeout`.

use crate::admin;
use crate::backend::{Backend, Shared};
use crate::catalog::TopicMeta;
use crate::conn::Listener;
use crate::mesh::{Envelope, Mesh};
use crate::node::Core;
use crate::request::{Answer, Request};
use crate::shard::Shard;
use kateway_core::config::Config;
use monoio::net::{ListenerOpts, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// Everything a core needs to start.
pub struct CoreInit {
    pub id: usize,
    pub cfg: Rc<Config>,
    pub mesh: Mesh<Request, Answer>,
    pub inbox: flume::Receiver<Envelope<Request, Answer>>,
    pub topics: Vec<TopicMeta>,
    pub shared: Shared,
    /// Told `Ok(())` once the core listens, or why it could not start.
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
    /// Descriptor budget: connections and open log files of this core.
    pub fds: crate::fds::FdPlan,
    /// The key hashes' pepper.
    pub pepper: std::sync::Arc<kateway_core::keys::Pepper>,
    /// Core 0: the tenancy metadata to start its writer with.
    pub meta: Option<crate::backend::meta::MetaInit>,
    /// Core 0: the idempotency keys to start with.
    pub idem: Option<crate::idem::IdemInit>,
    /// Core 0 on Kafka: the follower of settles other gateways hand on.
    pub forward: Option<crate::queue::forward::ForwardInit>,
    /// Listening sockets taken over from the previous process (an upgrade), by kind.
    pub inherited: Vec<(crate::conn::Listener, std::net::TcpListener)>,
    /// Where configuration reloads are asked for.
    pub reload: std::sync::mpsc::Sender<crate::request::ReloadAsk>,
}

/// Runs a core to completion.
pub async fn run(init: CoreInit) {
    let shard = Rc::new(Shard::new(
        init.id,
        init.cfg.clone(),
        init.mesh,
        init.pepper.clone(),
        init.reload.clone(),
    ));
    let backend = match Backend::new(&init.shared, shard.clone(), init.fds.files_per_core) {
        Ok(b) => b,
        Err(e) => {
            let _ = init.ready.send(Err(e));
            return;
        }
    };
    let mut meta = init.meta;
    let follow = meta.as_mut().and_then(|m| m.follow.take());
    let writer = meta.map(|m| {
        Rc::new(crate::tenancy::writer::Writer::new(
            m,
            init.pepper.clone(),
            init.cfg.store.data_dir.clone(),
        ))
    });
    let core = Rc::new(Core::new(shard.clone(), backend, writer.clone()));
    for t in &init.topics {
        if let Err(e) = admin::apply_here(&shard, &core.backend, t).await {
            let _ = init.ready.send(Err(e.to_string()));
            return;
        }
    }
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .backlog(init.cfg.server.backlog);
    let mut inherited = init.inherited;
    let listeners = match sockets_for(
        &mut inherited,
        Listener::Main,
        &init.cfg.server.listen,
        &opts,
    ) {
        Ok(l) => l,
        Err(e) => {
            let _ = init.ready.send(Err(format!(
                "cannot listen on {}: {e}",
                init.cfg.server.listen
            )));
            return;
        }
    };
    let tasks = &core.tasks;
    if let Some(i) = init.idem {
        let (idem, follow) = crate::idem::Idem::new(i, &init.cfg);
        if let Some(rx) = follow {
            tasks.spawn(
                "idempotency follower",
                idem.clone().follow(shard.clone(), rx),
            );
        }
        let _ = core.idem.set(idem);
    }
    crate::webhook::LOG_MAX.with(|m| m.set(init.cfg.webhook.log_entries as usize));
    tasks.spawn("webhooks", crate::webhook::Webhooks::run(core.clone()));
    if shard.id == 0 {
        let delays = crate::delay::Delays::new(shard.clone(), core.backend.clone());
        tasks.spawn("delays", delays.clone().run());
        let _ = core.delays.set(delays);
        tasks.spawn("group lag", crate::metrics::lag::run(core.clone()));
    }
    if let Some(f) = init.forward {
        tasks.spawn(
            "queue settle follower",
            crate::queue::forward::run(core.clone(), f),
        );
    }
    tasks.spawn("inbox", core.clone().inbox(init.inbox));
    if let Some(w) = &writer {
        match follow {
            Some(rx) => tasks.spawn("metadata follower", w.clone().follow(core.clone(), rx)),
            None => {
                w.bootstrap(&core).await;
                w.publish(&core).await;
            }
        }
        tasks.spawn("key expiries", w.clone().expiries(core.clone()));
    }
    core.backend.spawn(tasks);
    tasks.spawn("allocator", crate::alloc::run(shard.clone()));
    for l in listeners {
        shard
            .listeners
            .borrow_mut()
            .push((Listener::Main, l.as_raw_fd()));
        tasks.spawn(
            "acceptor",
            crate::conn::accept(core.clone(), l, init.fds.conns_per_core, Listener::Main),
        );
    }
    // The operator's and the health checkers' listeners, where configured.
    for (kind, addr, key) in Listener::configured(&init.cfg) {
        let name = match kind {
            Listener::Main => continue,
            Listener::Operator => "operator acceptor",
            Listener::Health => "health acceptor",
        };
        let ls = match sockets_for(&mut inherited, kind, addr, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = init
                    .ready
                    .send(Err(format!("cannot listen on {addr} ({key}): {e}")));
                return;
            }
        };
        for l in ls {
            shard.listeners.borrow_mut().push((kind, l.as_raw_fd()));
            let accept = crate::conn::accept(core.clone(), l, crate::conn::OVER_CAP, kind);
            tasks.spawn(name, accept);
        }
    }
    let _ = init.ready.send(Ok(()));
    tracing::debug!(core = shard.id, "core ready");
    let seen = shard.stop_event.epoch();
    if seen == 0 {
        shard.stop_event.wait(seen).await;
    }
    if let Some(w) = &writer {
        w.stop();
    }
    let late = tasks.finish(init.cfg.server.shutdown_timeout.0).await;
    if !late.is_empty() {
        tracing::warn!(
            core = shard.id,
            ?late,
            "tasks still running at the shutdown deadline"
        );
    }
    tracing::debug!(core = shard.id, "core stopped");
}

/// The sockets a core accepts `kind` on: those inherited from the previous process, or one
/// bound now (`SO_REUSEPORT`, beside the other cores' own).
fn sockets_for(
    inherited: &mut Vec<(Listener, std::net::TcpListener)>,
    kind: Listener,
    addr: &str,
    opts: &ListenerOpts,
) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for (k, l) in inherited.drain(..) {
        if k == kind {
            out.push(TcpListener::from_std(l)?);
        } else {
            rest.push((k, l));
        }
    }
    *inherited = rest;
    if out.is_empty() {
        out.push(TcpListener::bind_with_config(addr, opts)?);
    }
    Ok(out)
}
