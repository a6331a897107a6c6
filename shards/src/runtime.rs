//! Process bootstrap: plan cores and file descriptors, reconcile the topic catalog with the
//! directories on disk, start one pinned reactor thread per core (monoio on io_uring with
//! `SINGLE_ISSUER | DEFER_TASKRUN`, falling back loudly to the epoll driver), wait until every
//! core listens, then on SIGTERM/SIGINT drain every core, stop them and exit; SIGHUP (or
//! `POST /v1/config/reload`) reads the configuration again and puts what may change live in
//! force on every core ([`kateway_core::live`]), TLS files and log filter included; an upgrade ([`crate::upgrade`], SIGUSR2) hands the listening sockets to
//! a new process, then drains and exits the same way.

use crate::backend::{self, Shared};
use crate::catalog::{file, TopicMeta};
use crate::core::{self, CoreInit};
use crate::fds;
use crate::mesh::Mesh;
use crate::request::{Answer, ReloadAsk, Request};
use kateway_core::config::Config;
use kateway_core::live::{self, Loaded, Source};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// What the serving loop acts on.
enum Event {
    Signal(i32),
    /// A new process asks for the listening sockets ([`crate::upgrade`]).
    Upgrade(std::os::unix::net::UnixStream),
    /// A core asks for a configuration reload (`POST /v1/config/reload`).
    Reload(ReloadAsk),
}

/// Replaces the process's log filter with the one a `log.level` value names.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// How to start: the configuration and where it came from (a reload reads it again), whether
/// to take over from a running gateway, and how to change the log filter.
pub struct Start {
    pub source: Source,
    pub loaded: Loaded,
    /// Take the listening sockets over from the gateway running on the same address.
    pub upgrade: bool,
    /// Replaces the log filter (`log.level`); an error names the key.
    pub log_level: SetLogLevel,
}

/// Runs the gateway until a termination signal or an upgrade hands it over; returns an error
/// if it cannot start. With `upgrade`, takes the listening sockets over from the gateway
/// running on the same address first (and starts as usual when there is none).
pub fn run(start: Start) -> Result<(), String> {
    let Start {
        source,
        loaded,
        upgrade,
        log_level,
    } = start;
    let mut running = loaded.clone();
    let cfg = loaded.cfg;
    let cores = match cfg.server.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    let nofile = fds::raise_nofile();
    let fds = fds::FdPlan::new(nofile, cores, &cfg);
    tracing::info!(
        nofile,
        connections_per_core = fds.conns_per_core,
        log_files_per_core = fds.files_per_core,
        "descriptor budget"
    );
    if let Ok(spec) = std::env::var("KATEWAY_FAILPOINTS") {
        kateway_log::fail::configure(&spec).map_err(|e| format!("KATEWAY_FAILPOINTS: {e}"))?;
        tracing::warn!(%spec, "FAILPOINTS ARE ACTIVE: storage faults will be injected (testing only)");
    }
    std::fs::create_dir_all(&cfg.store.data_dir).map_err(|e| {
        format!(
            "cannot create data dir {}: {e}",
            cfg.store.data_dir.display()
        )
    })?;
    // Signals are caught from here on: one that arrives during an upgrade's handover is acted
    // on once this process serves, instead of killing it while it holds the sockets.
    let sig = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR2,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // What can be checked without the data directory is checked before an upgrade takes the
    // sockets, so that a bad certificate or pepper leaves the running gateway serving.
    if cfg.tls.enabled() {
        crate::conn::tls::install(&cfg.tls)?;
    }
    let pepper_file = read_pepper(&cfg)?;
    let taken = match upgrade {
        false => None,
        true => {
            let wanted: Vec<_> = crate::conn::Listener::configured(&cfg)
                .into_iter()
                .map(|(kind, addr, key)| crate::upgrade::Wanted {
                    kind,
                    addr: addr.to_owned(),
                    key,
                })
                .collect();
            let got = crate::upgrade::take_over(&cfg.server.listen, &cfg.store.data_dir, &wanted)?;
            if got.is_none() {
                tracing::warn!(listen = %cfg.server.listen, "--upgrade: no gateway runs on this address; starting as usual");
            }
            got
        }
    };
    let claims = exclusive(&cfg, taken.as_ref().map(|t| t.released))?;
    let mut inherited = match taken {
        Some(t) => t.inherited.by_core(cores),
        None => (0..cores).map(|_| Vec::new()).collect(),
    };
    let topics = load_catalog(&cfg)?;
    let shared = Shared::start(&cfg)?;
    let meta = crate::backend::meta::open(&cfg, shared.bridge())?;
    let pepper = Arc::new(load_pepper(&cfg, pepper_file, !meta.records.is_empty())?);
    let mut meta = Some(meta);
    let mut idem = Some(crate::idem::open(&cfg, shared.bridge())?);
    let mut forward = crate::queue::forward::open(&cfg, shared.bridge())?;
    crate::backend::kafka::qstate::prepare(&cfg, shared.bridge());
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let (mesh, inboxes) = Mesh::<Request, Answer>::new(cores, 4096);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<ReloadAsk>();
    let cfg = Arc::new(cfg);
    let mut threads = Vec::new();
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let cfg = cfg.clone();
        let mesh = mesh.clone();
        let topics = topics.clone();
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let pepper = pepper.clone();
        let meta = if id == 0 { meta.take() } else { None };
        let idem = if id == 0 { idem.take() } else { None };
        let forward = if id == 0 { forward.take() } else { None };
        let inherited = std::mem::take(&mut inherited[id]);
        let reload = reload_tx.clone();
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
                    shared,
                    ready,
                    fds,
                    pepper,
                    meta,
                    idem,
                    forward,
                    inherited,
                    reload,
                };
                reactor(id, cfg.server.ring_entries, init);
            })
            .map_err(|e| format!("cannot start core thread: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    drop(reload_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread died during startup".into()),
        }
    }
    tracing::info!(listen = %cfg.server.listen, cores, data = %cfg.store.data_dir.display(),
        backend = ?cfg.store.backend, pid = std::process::id(), "kateway serving");
    crate::upgrade::notify_ready();
    let data_id = crate::upgrade::data_dir_id(&cfg.store.data_dir);
    let (events, events_tx) = events(sig, &claims, reload_rx, &data_id)?;
    let reload = |running: &mut Loaded| -> Result<Vec<String>, String> {
        let new = source.load()?;
        let keys = live::check(running, &new)?;
        // Everything that can fail comes before anything changes.
        let tls = match new.cfg.tls.enabled() {
            true => Some(crate::conn::tls::load(&new.cfg.tls)?),
            false => None,
        };
        if new.cfg.log.level != running.cfg.log.level {
            log_level(&new.cfg.log.level)?;
        }
        if let Some(tls) = tls {
            crate::conn::tls::put(tls);
        }
        let cfg = Arc::new(new.cfg.clone());
        let told: Vec<_> = (0..cores)
            .filter_map(|c| mesh.ask_blocking(c, Request::Reconfigure(cfg.clone())))
            .collect();
        for rx in told {
            let _ = rx.recv();
        }
        *running = new;
        Ok(keys)
    };
    let reload = |running: &mut Loaded, how: &str| {
        let r = reload(running);
        match &r {
            Ok(keys) if keys.is_empty() => {
                tracing::info!(by = how, "configuration reloaded: nothing changed")
            }
            Ok(keys) => {
                tracing::info!(by = how, changed = %keys.join(", "), "configuration reloaded")
            }
            Err(e) => tracing::error!(by = how, "configuration reload refused: {e}"),
        }
        r
    };
    let mut handover = None;
    while let Ok(e) = events.recv() {
        match e {
            Event::Signal(signal_hook::consts::SIGHUP) => {
                let _ = reload(&mut running, "SIGHUP");
            }
            Event::Reload(ReloadAsk(answer)) => {
                let _ = answer.send(reload(&mut running, "POST /v1/config/reload"));
            }
            Event::Signal(signal_hook::consts::SIGUSR2) => {
                match crate::upgrade::spawn_successor() {
                    Ok(pid) => tracing::info!(pid, "SIGUSR2: started the successor process"),
                    Err(e) => tracing::error!("SIGUSR2: cannot start the successor: {e}"),
                }
            }
            Event::Signal(s) => {
                tracing::info!(signal = s, "shutting down");
                crate::upgrade::notify_stopping();
                break;
            }
            Event::Upgrade(stream) => {
                let sockets: Vec<_> = (0..cores)
                    .filter_map(|c| mesh.ask_blocking(c, Request::Listeners))
                    .filter_map(|rx| match rx.recv() {
                        Ok(Answer::Listeners(l)) => Some(l),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                match crate::upgrade::hand_over(&stream, &sockets) {
                    Ok(()) => {
                        tracing::info!(
                            sockets = sockets.len(),
                            "handed the listening sockets to the successor: draining"
                        );
                        handover = Some(stream);
                        break;
                    }
                    Err(e) => {
                        tracing::error!("upgrade refused, still serving: {e}");
                        crate::upgrade::finish(&stream, Err(e));
                        watch_upgrades(&claims, events_tx.clone(), &data_id)?;
                    }
                }
            }
        }
    }
    // An upgrade's successor holds the sockets already: no grace for load balancers.
    let grace = running.cfg.server.drain_grace.0;
    if !grace.is_zero() && handover.is_none() {
        let told: Vec<_> = (0..cores)
            .filter_map(|c| mesh.ask_blocking(c, Request::Unready))
            .collect();
        for rx in told {
            let _ = rx.recv();
        }
        tracing::info!(
            ?grace,
            "unready: draining after the grace period (a second SIGTERM or SIGINT drains now)"
        );
        let end = Instant::now() + grace;
        while let Ok(e) = events.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if refuse_in_drain(e) {
                tracing::info!("second signal: draining now");
                break;
            }
        }
    }
    // Reloads asked for from now on are answered 503 (their answer channel is dropped) and
    // upgrade requests find no one listening.
    drop(events);
    let deadline = Instant::now() + running.cfg.server.shutdown_timeout.0;
    let drained: Vec<_> = (0..cores)
        .filter_map(|c| mesh.ask_blocking(c, Request::Drain))
        .collect();
    for rx in drained {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            tracing::warn!("connections still open at the shutdown deadline; closing them");
        }
    }
    shared.finish();
    for c in 0..cores {
        mesh.send_blocking(c, Request::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    // The data directory is free once the lock and the address claim are gone.
    drop(claims);
    if let Some(stream) = handover {
        crate::upgrade::finish(&stream, Ok(()));
        tracing::info!("stopped; the successor serves");
        return Ok(());
    }
    tracing::info!("stopped");
    Ok(())
}

/// What arrives during the drain grace: a reload (503) or an upgrade is refused (the gateway
/// is shutting down); returns whether it was a second termination signal, which ends the grace.
fn refuse_in_drain(e: Event) -> bool {
    match e {
        Event::Signal(signal_hook::consts::SIGTERM | signal_hook::consts::SIGINT) => true,
        Event::Signal(s) => {
            tracing::warn!(signal = s, "ignored: the gateway is shutting down");
            false
        }
        // Its answer channel dropped unanswered: the route answers 503.
        Event::Reload(_) => false,
        Event::Upgrade(stream) => {
            crate::upgrade::finish(&stream, Err("the gateway is shutting down".into()));
            false
        }
    }
}

/// Signals, reloads asked for by cores, and upgrade requests on the address claim's socket, as
/// one stream of events.
fn events(
    mut sig: signal_hook::iterator::Signals,
    claims: &Claims,
    reloads: Receiver<ReloadAsk>,
    data_id: &str,
) -> Result<(Receiver<Event>, Sender<Event>), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let asks = tx.clone();
    std::thread::Builder::new()
        .name("kateway-reloads".into())
        .spawn(move || {
            for r in reloads {
                if asks.send(Event::Reload(r)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    let signals = tx.clone();
    std::thread::Builder::new()
        .name("kateway-signals".into())
        .spawn(move || {
            for s in sig.forever() {
                if signals.send(Event::Signal(s)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    watch_upgrades(claims, tx.clone(), data_id)?;
    Ok((rx, tx))
}

/// Waits on the address claim's socket for one acceptable upgrade request
/// ([`crate::upgrade::accept_request`]: its checks run here, so a silent or foreign caller
/// never holds up the serving loop). One: the thread's copy of the socket must be gone once
/// the process hands over (the claim is released with it); after a refused handover the
/// caller watches again.
fn watch_upgrades(claims: &Claims, tx: Sender<Event>, data_id: &str) -> Result<(), String> {
    let listener = claims
        ._addr
        .try_clone()
        .map_err(|e| format!("cannot watch for upgrades: {e}"))?;
    let data_id = data_id.to_owned();
    std::thread::Builder::new()
        .name("kateway-upgrade".into())
        .spawn(move || {
            if let Ok(s) = crate::upgrade::accept_request(&listener, &data_id) {
                let _ = tx.send(Event::Upgrade(s));
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the upgrade thread: {e}"))
}

/// The pepper file (`auth.pepper_file`, or `<data>/meta/pepper`): `None` when there is none
/// yet; an unreadable or short one is an error.
fn read_pepper(cfg: &Config) -> Result<Option<kateway_core::keys::Pepper>, String> {
    use kateway_core::keys::Pepper;
    let path = cfg.auth.pepper_path(&cfg.store.data_dir);
    match std::fs::read(&path) {
        Ok(b) => Pepper::new(&b)
            .map(Some)
            .ok_or_else(|| format!("{}: a pepper file holds at least 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The pepper key hashes are keyed with: the file [`read_pepper`] found, or one made (32
/// random bytes, mode 0600) on the first start; refused when it is missing although the
/// metadata (`has_keys`) was made with one: every key would stop working for good.
fn load_pepper(
    cfg: &Config,
    found: Option<kateway_core::keys::Pepper>,
    has_keys: bool,
) -> Result<kateway_core::keys::Pepper, String> {
    use kateway_core::keys::Pepper;
    let path = cfg.auth.pepper_path(&cfg.store.data_dir);
    match found {
        Some(p) => Ok(p),
        None if has_keys => Err(format!(
            "the pepper file {} is missing, but the metadata holds keys hashed with it: restore it from a backup",
            path.display()
        )),
        None => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let bytes = Pepper::generate().map_err(|_| "the system's random source failed")?;
            kateway_log::partition::replace_private_file(&path, &bytes)
                .map_err(|e| format!("cannot write the pepper: {e}"))?;
            tracing::info!(file = %path.display(), "made the pepper that key hashes are keyed with: back it up");
            Pepper::new(&bytes).ok_or_else(|| "pepper".to_string())
        }
    }
}

/// How long a successor whose predecessor died mid-handover waits for the data directory's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a running gateway holds to keep a second one off its data directory and address.
struct Claims {
    _lock: std::fs::File,
    _addr: std::os::unix::net::UnixListener,
}

/// Refuses to start when another process serves the same data directory (an exclusive lock on
/// `<data>/lock`, held while the returned file is open, so until exit) or already listens on
/// the address (every core binds with `SO_REUSEPORT`, which would otherwise let two gateways
/// share one port without a word). The address is claimed with an abstract Unix socket named
/// after it: binding one is atomic, so two gateways starting at the same moment cannot both
/// pass, and the kernel releases it when the process exits, however it exits.
///
/// `inherited`: the listening sockets came from a previous process (`Some`), which said it
/// released the directory (`true`) or went away without a word (`false`: its lock is waited
/// for, up to [`LOCK_WAIT`], while the kernel closes its files).
fn exclusive(cfg: &Config, inherited: Option<bool>) -> Result<Claims, String> {
    use nix::fcntl::{flock, FlockArg};
    use std::os::fd::AsRawFd;
    let path = cfg.store.data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let patience = match inherited {
        Some(false) => LOCK_WAIT,
        _ => std::time::Duration::ZERO,
    };
    let until = Instant::now() + patience;
    let mut locked = flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock);
    while locked == Err(nix::errno::Errno::EWOULDBLOCK) && Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
        locked = flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock);
    }
    if let Err(e) = locked {
        return Err(match e {
            nix::errno::Errno::EWOULDBLOCK => format!(
                "data dir {} is in use by another kateway process",
                cfg.store.data_dir.display()
            ),
            e => format!("cannot lock {}: {e}", path.display()),
        });
    }
    // A plain bind (no SO_REUSEPORT) fails while any socket listens on the address (the
    // inherited sockets of an upgrade do).
    let bound = inherited
        .is_none()
        .then(|| std::net::TcpListener::bind(cfg.server.listen.as_str()));
    if let Some(Err(e)) = bound {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            return Err(format!(
                "{} is already in use (is another kateway running?)",
                cfg.server.listen
            ));
        }
    }
    let addr = claim_address(&cfg.server.listen)?;
    Ok(Claims {
        _lock: file,
        _addr: addr,
    })
}

/// Binds the abstract Unix socket `kateway-listen:<addr>`; a second gateway on the address gets
/// `EADDRINUSE`.
fn claim_address(listen: &str) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = crate::upgrade::socket_name(listen);
    let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("cannot claim {listen}: {e}"))?;
    std::os::unix::net::UnixListener::bind_addr(&at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{listen} is already in use (is another kateway running?)")
        } else {
            format!("cannot claim {listen}: {e}")
        }
    })
}

/// Loads the configured backend's catalog and reconciles it with the topic directories on disk
/// (completing interrupted deletions, adopting directories the catalog lost), writing it back
/// when that changed it.
fn load_catalog(cfg: &Config) -> Result<Vec<TopicMeta>, String> {
    let path = backend::catalog_path(cfg);
    let loaded = file::load(&path)?;
    let (topics, done) = file::reconcile(&backend::data_root(cfg), loaded.clone());
    for t in &done.deleted {
        tracing::warn!(topic = %t, "completed the deletion of a topic that a crash had interrupted");
    }
    for t in &done.adopted {
        tracing::warn!(topic = %t, "the catalog did not list topic directory {t}: adopted it (default retention)");
    }
    if topics != loaded {
        file::store(&path, &topics).map_err(|e| e.to_string())?;
    }
    Ok(topics)
}

thread_local! {
    /// Whether this thread's reactor runs on io_uring (not the epoll fallback).
    static ON_URING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling core's reactor runs on io_uring, where any descriptor can be awaited
/// by reading it; the epoll fallback reads files by blocking.
pub fn on_uring() -> bool {
    ON_URING.with(|u| u.get())
}

fn reactor(id: usize, entries: u32, init: CoreInit) {
    if monoio::utils::detect_uring() {
        ON_URING.with(|u| u.set(true));
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
    ON_URING.with(|u| u.set(false));
    tracing::error!(core = id, "io_uring is unavailable: FALLING BACK TO THE EPOLL DRIVER (slower; check kernel.io_uring_disabled, seccomp and memlock)");
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("epoll runtime");
    rt.block_on(core::run(init));
}
