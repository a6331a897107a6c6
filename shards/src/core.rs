//! One core's life: open the partitions it owns, bind its `SO_REUSEPORT` listener, run the
//! inbox (requests from other cores), the flusher, retention and the accept loop; on `Drain`
//! stop accepting and wait for connections to finish; on `Stop` flush, sync and return.

use crate::api;
use crate::conn;
use crate::event::Event;
use crate::flusher;
use crate::mesh::{Mesh, Msg};
use crate::metrics;
use crate::shard::Shard;
use crate::topics::TopicMeta;
use kateway_core::config::Config;
use monoio::net::{ListenerOpts, TcpListener};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Everything a core needs to start.
pub struct CoreInit {
    pub id: usize,
    pub cfg: Rc<Config>,
    pub mesh: Mesh,
    pub inbox: flume::Receiver<Msg>,
    pub topics: Vec<TopicMeta>,
    /// The Kafka backend's shared state; `None` with the embedded store.
    pub kafka: Option<std::sync::Arc<crate::kafka::KafkaShared>>,
    /// Told `Ok(())` once the core listens, or why it could not start.
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
    /// Descriptor budget: connections and open log files of this core.
    pub fds: crate::runtime::FdPlan,
}

/// Connections beyond the cap that may wait for their one request (`/alive`, `/ready`) at once;
/// more are closed at once.
pub const OVER_CAP: usize = 128;

/// Runs a core to completion.
pub async fn run(init: CoreInit) {
    let kafka = match init.kafka {
        None => None,
        Some(shared) => {
            match crate::kafka::KafkaCore::new(shared, &init.cfg, init.id, init.mesh.cores()) {
                Ok(k) => Some(Rc::new(k)),
                Err(e) => {
                    let _ = init.ready.send(Err(e));
                    return;
                }
            }
        }
    };
    let shard = Rc::new(Shard::new(
        init.id,
        init.cfg.clone(),
        init.mesh.clone(),
        kafka,
        init.fds.files_per_core,
    ));
    for t in init.topics {
        if let Err(e) = shard.apply_topic(t) {
            let _ = init.ready.send(Err(e.to_string()));
            return;
        }
    }
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .backlog(init.cfg.server.backlog);
    let listener = match TcpListener::bind_with_config(init.cfg.server.listen.as_str(), &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = init.ready.send(Err(format!(
                "cannot listen on {}: {e}",
                init.cfg.server.listen
            )));
            return;
        }
    };
    monoio::spawn(inbox(shard.clone(), init.inbox));
    let flusher = monoio::spawn(flusher::run(shard.clone()));
    monoio::spawn(crate::durability::recover(shard.clone()));
    monoio::spawn(crate::alloc::run(shard.clone()));
    if shard.kafka.is_some() {
        monoio::spawn(crate::kafka::replay::run(shard.clone()));
        monoio::spawn(crate::kafka::replay::watchdog(shard.clone()));
        if shard.id == 0 {
            monoio::spawn(crate::kafka::topics::refresh(shard.clone()));
        }
    } else {
        monoio::spawn(flusher::retention(shard.clone()));
        monoio::spawn(crate::scrub::run(shard.clone()));
    }
    monoio::spawn(accept(shard.clone(), listener, init.fds.conns_per_core));
    let _ = init.ready.send(Ok(()));
    tracing::debug!(core = shard.id, "core ready");
    flusher.await;
    tracing::debug!(core = shard.id, "core stopped");
}

async fn accept(shard: Rc<Shard>, listener: TcpListener, max: usize) {
    let over_cap = Rc::new(Cell::new(0usize));
    loop {
        let seen = shard.shutdown_event.epoch();
        if shard.shutdown.get() {
            return;
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = shard.shutdown_event.wait(seen) => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let m = &shard.metrics;
        metrics::inc(&m.http_connections_accepted_total);
        if m.http_connections_active.get() as usize >= max {
            metrics::inc(&m.http_connections_rejected_total);
            // Answered at once when its request is already there (a health check queued behind
            // a flood), else given a moment to send one if a slot is free, else refused.
            if !conn::answer_over_cap_now(&stream) {
                if over_cap.get() < OVER_CAP {
                    over_cap.set(over_cap.get() + 1);
                    let (s, n) = (shard.clone(), over_cap.clone());
                    monoio::spawn(async move {
                        conn::serve_over_cap(s, stream).await;
                        n.set(n.get() - 1);
                    });
                } else {
                    conn::refuse_now(&stream);
                }
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        metrics::inc(&m.http_connections_active);
        let s = shard.clone();
        monoio::spawn(async move {
            conn::serve(s.clone(), stream).await;
            metrics::dec(&s.metrics.http_connections_active);
        });
    }
}

async fn inbox(shard: Rc<Shard>, rx: flume::Receiver<Msg>) {
    let admin_busy = Rc::new((Cell::new(false), Event::default()));
    while let Ok(msg) = rx.recv_async().await {
        match msg {
            Msg::Append {
                topic,
                partition,
                items,
                ack,
                reply,
            } => {
                let s = shard.clone();
                monoio::spawn(async move {
                    let _ = reply.send(s.publish_local(&topic, partition, items, ack).await);
                });
            }
            Msg::Fetch { fetch, reply } => {
                let _ = reply.send(shard.fetch_local(&fetch));
            }
            Msg::Commit {
                topic,
                partition,
                group,
                offset,
                seek,
                reply,
            } => {
                let s = shard.clone();
                monoio::spawn(async move {
                    let r = s
                        .commit_local(&topic, partition, &group, offset, seek)
                        .await;
                    let _ = reply.send(r);
                });
            }
            Msg::Info {
                topic,
                group_prefix,
                reply,
            } => {
                let _ = reply.send(shard.info_local(&topic, &group_prefix));
            }
            Msg::Interest { topic, core, delta } => shard.add_interest(&topic, core, delta),
            Msg::Wake { topic } => shard.topic_event(&topic).notify(),
            Msg::Admin { op, reply } => {
                let s = shard.clone();
                let busy = admin_busy.clone();
                monoio::spawn(async move {
                    // Serialise administration calls on core 0.
                    let (flag, done) = &*busy;
                    while flag.get() {
                        let seen = done.epoch();
                        done.wait(seen).await;
                    }
                    flag.set(true);
                    let r = api::apply_admin(&s, op).await;
                    flag.set(false);
                    done.notify();
                    let _ = reply.send(r);
                });
            }
            Msg::Apply { meta, reply } => {
                let _ = reply.send(shard.apply_topic(meta));
            }
            Msg::Drop { name, reply } => {
                shard.drop_topic(&name);
                let _ = reply.send(());
            }
            Msg::Metrics { reply } => {
                let _ = reply.send(api::local_snapshot(&shard));
            }
            Msg::Drain { reply } => {
                shard.begin_shutdown();
                let s = shard.clone();
                monoio::spawn(async move {
                    while s.metrics.http_connections_active.get() > 0 {
                        monoio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if let Some(k) = &s.kafka {
                        k.settle(s.cfg.server.shutdown_timeout.0).await;
                    }
                    let _ = reply.send(());
                });
            }
            Msg::Stop => {
                shard.stop_event.notify();
                shard.dur.work.notify();
                return;
            }
        }
    }
}
