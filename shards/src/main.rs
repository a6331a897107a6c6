//! The `kateway` binary: `kateway serve [--config FILE] [--listen ADDR] [--data-dir DIR]
//! [--cores N] [--backend embedded|kafka] [--brokers HOST:PORT,...] [--upgrade]` runs the
//! gateway; `kateway defaults` prints the shipped settings; the admin commands
//! (`status`, `topics`, `groups`, `tail`, `keys`, `reload`, `redrive`: [`kateway_shards::cli`])
//! talk to a running one.
//! Configuration layers: shipped defaults, then the file, then `KATEWAY_*` environment
//! variables, then these flags; a reload (SIGHUP, `POST /v1/config/reload`) reads them again
//! the same way.

use clap::{Parser, Subcommand};
use kateway_core::live::Source;
use std::path::PathBuf;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kateway",
    version,
    about = "Thread-per-core HTTP Pub/Sub gateway with an embedded log store or in front of Apache Kafka"
)]
struct Cli {
    #[command(flatten)]
    target: kateway_shards::cli::Target,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// A kateway.toml overriding the shipped defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Reactor cores, 0 = all (server.cores).
        #[arg(long)]
        cores: Option<u32>,
        /// Where topics live: embedded or kafka (store.backend).
        #[arg(long, value_parser = ["embedded", "kafka"])]
        backend: Option<String>,
        /// Kafka bootstrap brokers, host:port[,host:port...] (kafka.brokers).
        #[arg(long)]
        brokers: Option<String>,
        /// Take over from the gateway running on the same address: inherit its listening
        /// sockets, wait for it to drain and release the data directory, then serve.
        #[arg(long)]
        upgrade: bool,
    },
    /// Print the shipped kateway.toml: every setting with its default and range.
    Defaults,
    #[command(flatten)]
    Admin(kateway_shards::cli::Admin),
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Defaults => print!("{}", kateway_core::config::DEFAULT_TOML),
        Cmd::Admin(a) => match kateway_shards::cli::run(&cli.target, a) {
            Ok(out) => print!("{out}"),
            Err(e) => {
                eprintln!("kateway: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Serve {
            config,
            listen,
            data_dir,
            cores,
            backend,
            brokers,
            upgrade,
        } => {
            let mut source = Source {
                file: config,
                env: std::env::vars()
                    .filter(|(k, _)| k.starts_with("KATEWAY_"))
                    .collect(),
                ..Default::default()
            };
            if let Some(l) = listen {
                source.flag("server", "listen", l);
            }
            if let Some(d) = data_dir {
                source.flag("store", "data_dir", d.to_string_lossy().into_owned());
            }
            if let Some(c) = cores {
                source.flag("server", "cores", i64::from(c));
            }
            if let Some(b) = backend {
                source.flag("store", "backend", b);
            }
            if let Some(b) = brokers {
                source.flag("kafka", "brokers", b);
            }
            let loaded = match source.load() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("kateway: configuration error: {e}");
                    std::process::exit(2);
                }
            };
            let filter = match level_filter(&loaded.cfg.log.level) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("kateway: configuration error: {e}");
                    std::process::exit(2);
                }
            };
            let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
                )
                .init();
            let log_level = Box::new(move |level: &str| {
                let f = level_filter(level)?;
                handle.reload(f).map_err(|e| format!("log.level: {e}"))
            });
            let how = kateway_shards::runtime::Start {
                source,
                loaded,
                upgrade,
                log_level,
            };
            if let Err(e) = kateway_shards::runtime::run(how) {
                eprintln!("kateway: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// The log filter `log.level` names, or an error that names the key. The `h2` crate logs a line
/// at WARN for each odd frame a peer sends (an acknowledgement of a ping never sent, a reset
/// stream past its limit), which would let one client fill the disk: what it handles is answered
/// on the connection, so its own lines are kept to errors unless `log.level` names it.
fn level_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let f = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("log.level = {level:?}: {e}"))?;
    if level.split(',').any(|d| d.trim().starts_with("h2")) {
        return Ok(f);
    }
    Ok(f.add_directive("h2=error".parse().expect("a valid directive")))
}
