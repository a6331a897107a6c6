//! `kateway-bench`: load generator and side-by-side comparison.
//!
//! * `run`: one scenario against a running server (optionally measuring its CPU via `--pid`).
//! * `compare`: starts kateway, the `noop` ceiling and the `baseline-tokio` gateway pinned to
//!   one CPU, drives them from another CPU in alternating rounds (A B C A B C ...), and prints
//!   and writes (JSON) the ratios kateway/noop and kateway/baseline, on requests per second and
//!   on requests per server CPU second.
//! * `protocols`: starts kateway with a generated TLS certificate and compares, in alternating
//!   rounds, publishing over HTTP/1.1, HTTP/2 (h2c), HTTP/2 over TLS and WebSocket, and
//!   subscribing over WebSocket: messages per second, server CPU per message, and each one's
//!   ratio to HTTP/1.1 publish.
//! * `kafka`: kateway on the Kafka backend against librdkafka producing directly, same acks.
//! * `soak`: an hour (or any duration) of mixed load, sampling the server's memory, descriptors
//!   and latency per interval.
//! * `serve-noop`, `serve-baseline`: the two comparison servers.

mod auth;
mod baseline;
mod client;
mod compare;
mod delays;
mod e2e;
mod h2client;
mod h2load;
mod harness;
mod kafka;
mod lease;
mod memory;
mod noop;
mod procstat;
mod protocols;
mod scenario;
mod soak;
mod stages;
mod tls;
mod webhooks;
mod wsclient;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kateway-bench",
    about = "Benchmark kateway against its ceiling and a conventional baseline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario against a running server.
    Run(scenario::RunArgs),
    /// Start kateway, noop and baseline-tokio and compare them side by side.
    Compare(compare::CompareArgs),
    /// Start kateway (with a generated TLS certificate) and compare publishing over HTTP/1.1,
    /// HTTP/2, HTTP/2 over TLS and WebSocket, and subscribing over WebSocket.
    Protocols(protocols::ProtocolsArgs),
    /// Gateway publish throughput on the Kafka backend against producing the same messages
    /// directly with librdkafka, same acks, alternating rounds.
    Kafka(kafka::KafkaArgs),
    /// Mixed load for a long time, sampling the server's RSS, descriptors and latency.
    Soak(soak::SoakArgs),
    /// The noop ceiling server.
    ServeNoop {
        #[arg(long, default_value = "127.0.0.1:9291")]
        listen: String,
        /// CPUs to run one reactor each on.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        cpus: Vec<usize>,
    },
    /// The tokio + hyper baseline gateway.
    ServeBaseline {
        #[arg(long, default_value = "127.0.0.1:9292")]
        listen: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value = "./bench-baseline-data")]
        data: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    procstat::raise_nofile();
    match Cli::parse().cmd {
        Cmd::Run(a) => scenario::run_cli(a),
        Cmd::Compare(a) => compare::run(a),
        Cmd::Protocols(a) => protocols::run(a),
        Cmd::Kafka(a) => kafka::run(a),
        Cmd::Soak(a) => soak::run(a),
        Cmd::ServeNoop { listen, cpus } => noop::serve(&listen, &cpus),
        Cmd::ServeBaseline {
            listen,
            threads,
            data,
        } => baseline::serve(&listen, threads, &data),
    }
}
