//! Process bootstrap: plan cores, start one pinned reactor thread per core (monoio on io_uring
//! with `SINGLE_ISSUER | DEFER_TASKRUN`, falling back loudly to the epoll driver), wait until
//! every core listens, then on SIGTERM/SIGINT drain every core, stop them and exit.

use crate::core::{self, CoreInit};
use crate::mesh::{Mesh, Msg};
use kateway_core::config::Config;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Runs the gateway until a termination signal; returns an error if it cannot start.
pub fn run(cfg: Config) -> Result<(), String> {
    let cores = match cfg.server.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    raise_nofile();
    std::fs::create_dir_all(&cfg.store.data_dir).map_err(|e| {
        format!(
            "cannot create data dir {}: {e}",
            cfg.store.data_dir.display()
        )
    })?;
    let topics = crate::topics::load(&crate::topics::catalog_path(&cfg))?;
    let kafka = match cfg.store.backend {
        kateway_core::config::Backend::Embedded => None,
        kateway_core::config::Backend::Kafka => Some(crate::kafka::KafkaShared::start(&cfg)?),
    };
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let (mesh, inboxes) = Mesh::new(cores, 4096);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = Arc::new(cfg);
    let mut sig = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut threads = Vec::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let cfg = cfg.clone();
        let mesh = mesh.clone();
        let topics = topics.clone();
        let kafka = kafka.clone();
        let ready = ready_tx.clone();
        let cpu = (cfg.server.pin_cores && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let t = std::thread::Builder::new()
            .name(format!("kateway-core-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                let init = CoreInit {
                    id,
                    cfg: Rc::new((*cfg).clone()),
                    mesh,
                    inbox,
                    topics,
                    kafka,
                    ready,
                };
                reactor(id, cfg.server.ring_entries, init);
            })
            .map_err(|e| format!("cannot start core thread: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread died during startup".into()),
        }
    }
    tracing::info!(listen = %cfg.server.listen, cores, data = %cfg.store.data_dir.display(),
        backend = ?cfg.store.backend, "kateway serving");
    if let Some(s) = sig.forever().next() {
        tracing::info!(signal = s, "shutting down");
    }
    let deadline = Instant::now() + cfg.server.shutdown_timeout.0;
    let mut drained = Vec::new();
    for c in 0..cores {
        let (tx, rx) = flume::bounded(1);
        mesh.send_blocking(c, Msg::Drain { reply: tx });
        drained.push(rx);
    }
    for rx in drained {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            tracing::warn!("connections still open at the shutdown deadline; closing them");
        }
    }
    if let Some(k) = &kafka {
        crate::kafka::groups::leave_all(k, std::time::Duration::from_secs(5));
    }
    for c in 0..cores {
        mesh.send_blocking(c, Msg::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("stopped");
    Ok(())
}

fn reactor(id: usize, entries: u32, init: CoreInit) {
    if monoio::utils::detect_uring() {
        let mut urb = io_uring::IoUring::builder();
        urb.setup_single_issuer().setup_defer_taskrun();
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => return rt.block_on(core::run(init)),
            Err(e) => {
                tracing::warn!(
                    core = id,
                    "io_uring with SINGLE_ISSUER|DEFER_TASKRUN failed ({e}); trying default flags"
                );
                if let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()
                {
                    return rt.block_on(core::run(init));
                }
            }
        }
    }
    tracing::error!(core = id, "io_uring is unavailable: FALLING BACK TO THE EPOLL DRIVER (slower; check kernel.io_uring_disabled, seccomp and memlock)");
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("epoll runtime");
    rt.block_on(core::run(init));
}

/// Every connection is a file descriptor: raise the soft limit to the hard one (and the hard one
/// too when privileged), and say so when the result is low.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, 1 << 20, 1 << 20).is_err() {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < 65536 {
            tracing::warn!(
                nofile = soft,
                "open-file limit is low; raise LimitNOFILE for many connections"
            );
        }
    }
}
