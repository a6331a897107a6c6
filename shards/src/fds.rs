//! The open-file budget: the process raises its limit, then splits it per core between log
//! files, connections and a reserve for what must keep working under a connection flood.

use kateway_core::config::Config;

/// Every connection is a file descriptor: raise the soft limit to the hard one (and the hard one
/// too when privileged), say so when the result is low, and return it.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, 1 << 20, 1 << 20).is_err() {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
    if soft < 65536 {
        tracing::warn!(
            nofile = soft,
            "open-file limit is low; raise LimitNOFILE for many connections"
        );
    }
    soft
}

/// How a core spends its share of the open-file limit: log files (an LRU of open descriptors),
/// connections, and what is kept free. The process reserves descriptors for its rings, listeners,
/// catalog writes, Kafka clients and the fsyncs in flight, so that a connection flood cannot take
/// the ones the store needs; connections beyond the cap get 503, and health checks are still
/// answered on them.
#[derive(Debug, Clone, Copy)]
pub struct FdPlan {
    pub conns_per_core: usize,
    pub files_per_core: usize,
}

impl FdPlan {
    /// Plans `nofile` descriptors over `cores` cores.
    pub fn new(nofile: u64, cores: usize, cfg: &Config) -> Self {
        let cores64 = cores as u64;
        let mut reserve = 64 + 16 * cores64 + crate::backend::reserved_descriptors(cfg, cores64);
        // Descriptors duplicated for the fsyncs in flight, and connections beyond the cap
        // waiting for their health-check request.
        reserve +=
            cores64 * (crate::logset::flusher::SYNC_BATCH as u64 + crate::conn::OVER_CAP as u64);
        let spare = nofile.saturating_sub(reserve);
        let files = match cfg.store.max_open_files {
            0 => (spare / (4 * cores64)).clamp(16, 1024),
            n => u64::from(n),
        };
        let conns = (spare.saturating_sub(files * cores64) / cores64).max(8);
        let conns = match cfg.server.max_connections_per_core {
            0 => conns,
            n => conns.min(u64::from(n)),
        };
        if conns < 64 {
            tracing::warn!(
                nofile,
                connections_per_core = conns,
                "very few connections fit in the open-file limit: raise it (LimitNOFILE)"
            );
        }
        Self {
            conns_per_core: conns as usize,
            files_per_core: files as usize,
        }
    }
}
