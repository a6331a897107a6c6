//! The `kateway` binary: `kateway serve [--config FILE] [--listen ADDR] [--data-dir DIR]
//! [--cores N] [--backend embedded|kafka] [--brokers HOST:PORT,...] [--upgrade]`. Configuration layers: shipped defaults, then the file, then `KATEWAY_*`
//! environment variables, then these flags.

use clap::{Parser, Subcommand};
use kateway_core::config::Config;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kateway",
    version,
    about = "Thread-per-core HTTP Pub/Sub gateway with an embedded log store or in front of Apache Kafka"
)]
struct Cli {
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
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Defaults => print!("{}", kateway_core::config::DEFAULT_TOML),
        Cmd::Serve {
            config,
            listen,
            data_dir,
            cores,
            backend,
            brokers,
            upgrade,
        } => {
            let mut cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kateway: configuration error: {e}");
                    std::process::exit(2);
                }
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.store.data_dir = d;
            }
            if let Some(c) = cores {
                cfg.server.cores = c;
            }
            if let Some(b) = backend {
                cfg.store.backend = if b == "kafka" {
                    kateway_core::config::Backend::Kafka
                } else {
                    kateway_core::config::Backend::Embedded
                };
            }
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
            }
            if let Err(e) = cfg.validate() {
                eprintln!("kateway: configuration error: {e}");
                std::process::exit(2);
            }
            let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            if let Err(e) = kateway_shards::runtime::run(cfg, upgrade) {
                eprintln!("kateway: {e}");
                std::process::exit(1);
            }
        }
    }
}
