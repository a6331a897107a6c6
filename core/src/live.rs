//! Reading the configuration again on a running gateway: where it came from ([`Source`]: the
//! file, the `KATEWAY_*` environment the process started with, the command-line overrides),
//! which settings may change without a restart ([`LIVE`]), and [`check`], which compares the
//! running settings with the new ones key by key and refuses every change that cannot be
//! applied live, naming the keys. A file that does not parse or validate is refused as at the
//! start; either way nothing changes.

use crate::config::{merge, tree, Config};
use crate::units::{parse_duration, parse_size};
use std::path::PathBuf;
use std::time::Duration;
use toml::Value;

/// Settings a reload applies on every core without a restart. Limits and timeouts take effect
/// on the next request (the time limits of a connection, stream or socket from its next wait);
/// `sse.heartbeat` and `websocket.ping_interval` for streams and sockets opened afterwards;
/// `tls.cert` and `tls.key` (read again on every reload) for the next handshake, as long as TLS
/// stays on.
pub const LIVE: &[&str] = &[
    "server.request_timeout",
    "server.write_timeout",
    "server.idle_timeout",
    "server.gzip_min_bytes",
    "server.shutdown_timeout",
    "server.drain_grace",
    "limits.max_message_bytes",
    "limits.max_key_bytes",
    "limits.max_tag_bytes",
    "limits.max_header_bytes",
    "limits.max_batch_messages",
    "limits.max_batch_bytes",
    "limits.max_pending_bytes_per_core",
    "limits.max_response_bytes_per_core",
    "limits.max_request_bytes_per_core",
    "limits.max_requests_in_flight_per_core",
    "limits.app_share_per_core",
    "kafka.status_budget",
    "subscribe.default_wait",
    "subscribe.max_wait",
    "subscribe.max_batch",
    "subscribe.max_batch_bytes",
    "auth.failed_burst",
    "auth.failed_per_second",
    "sse.heartbeat",
    "websocket.ping_interval",
    "tls.cert",
    "tls.key",
    "log.level",
];

/// Where the running configuration came from, kept so that a reload reads it the same way.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file (`--config`), if any.
    pub file: Option<PathBuf>,
    /// The `KATEWAY_*` variables of the environment the process started with.
    pub env: Vec<(String, String)>,
    /// Command-line overrides, as a TOML table of sections (`[server] listen = ...`).
    pub flags: toml::Table,
}

/// A configuration and the merged tree of settings it was read from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cfg: Config,
    pub tree: Value,
}

impl Source {
    /// Reads the defaults, the file, the environment and the flags, in that order, and
    /// validates the result.
    pub fn load(&self) -> Result<Loaded, String> {
        let mut t = tree(self.file.as_deref(), self.env.iter().cloned())?;
        merge(&mut t, Value::Table(self.flags.clone()));
        let cfg = Config::from_tree(t.clone())?;
        Ok(Loaded { cfg, tree: t })
    }

    /// Sets a command-line override of `section.key`.
    pub fn flag(&mut self, section: &str, key: &str, value: impl Into<Value>) {
        let s = self
            .flags
            .entry(section)
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if let Value::Table(t) = s {
            t.insert(key.to_owned(), value.into());
        }
    }
}

/// The `section.key` names whose values differ between two trees, sorted.
pub fn changed(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out.sort();
    out.dedup();
    out
}

fn diff(at: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Table(a), Value::Table(b)) => {
            for (k, v) in a {
                let name = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match b.get(k) {
                    Some(w) => diff(&name, v, w, out),
                    None => out.push(name),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                });
            }
        }
        (a, b) if same(a, b) => {}
        _ => out.push(at.to_owned()),
    }
}

/// Whether two settings mean the same: equal, or the same byte size (`"1MiB"`, `1048576`) or
/// the same duration (`"1s"`, `"1000ms"`, `1`) however written. A value that reads as neither
/// is compared as it is.
fn same(a: &Value, b: &Value) -> bool {
    let size = |v: &Value| match v {
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::String(s) => parse_size(s).ok(),
        _ => None,
    };
    let duration = |v: &Value| match v {
        Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        Value::String(s) => parse_duration(s).ok(),
        _ => None,
    };
    a == b
        || matches!((size(a), size(b)), (Some(x), Some(y)) if x == y)
        || matches!((duration(a), duration(b)), (Some(x), Some(y)) if x == y)
}

/// What a reload from `old` to `new` changes: the changed keys when every one of them may
/// change live, else an error naming those that may not.
pub fn check(old: &Loaded, new: &Loaded) -> Result<Vec<String>, String> {
    let keys = changed(&old.tree, &new.tree);
    let fixed: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !LIVE.contains(k))
        .collect();
    if !fixed.is_empty() {
        return Err(format!(
            "{} cannot change while the gateway runs (restart it, or upgrade with `serve --upgrade`); nothing was changed",
            fixed.join(", ")
        ));
    }
    if old.cfg.tls.enabled() != new.cfg.tls.enabled() {
        return Err(
            "tls.cert, tls.key: turning TLS on or off cannot happen while the gateway runs; nothing was changed"
                .into(),
        );
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Loaded, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, file).unwrap();
        let mut s = Source {
            file: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        s.flag("server", "listen", "127.0.0.1:7000");
        s.load()
    }

    #[test]
    fn every_live_key_exists() {
        let d = load("", &[]).unwrap();
        for k in LIVE {
            let (sec, key) = k.split_once('.').unwrap();
            assert!(d.tree[sec].get(key).is_some(), "{k} is no setting");
        }
    }

    #[test]
    fn live_changes_pass_and_name_their_keys() {
        let old = load("", &[]).unwrap();
        let new = load(
            "[limits]\nmax_message_bytes = \"1KiB\"\n[server]\nidle_timeout = \"5s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            check(&old, &new).unwrap(),
            ["limits.max_message_bytes", "server.idle_timeout"]
        );
        assert_eq!(new.cfg.limits.max_message_bytes.0, 1024);
        assert!(check(&old, &old).unwrap().is_empty());
    }

    #[test]
    fn another_spelling_of_the_same_value_is_no_change() {
        let old = load(
            "[store]\nsegment_bytes = \"8MiB\"\n[server]\nidle_timeout = \"60s\"\n",
            &[],
        )
        .unwrap();
        let new = load(
            "[store]\nsegment_bytes = 8388608\n[server]\nidle_timeout = \"1m\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(check(&old, &new), Ok(Vec::new()));
        // A different value is still a change, and a fixed one is refused.
        let moved = load("[store]\nsegment_bytes = \"16MiB\"\n", &[]).unwrap();
        assert!(check(&old, &moved)
            .unwrap_err()
            .starts_with("store.segment_bytes"));
    }

    #[test]
    fn fixed_keys_are_refused_by_name() {
        let old = load("", &[]).unwrap();
        let new = load(
            "[store]\nsegment_bytes = \"8MiB\"\n[limits]\nmax_message_bytes = \"1KiB\"\n",
            &[],
        )
        .unwrap();
        let e = check(&old, &new).unwrap_err();
        assert!(e.starts_with("store.segment_bytes cannot change"), "{e}");
        assert!(!e.contains("limits."), "{e}");
    }

    #[test]
    fn flags_and_environment_hold_on_a_reload() {
        let old = load("", &[("KATEWAY_SERVER_CORES", "3")]).unwrap();
        assert_eq!(old.cfg.server.cores, 3);
        assert_eq!(old.cfg.server.listen, "127.0.0.1:7000");
        // The file now names another address: the flag still wins, so nothing changed.
        let new = load(
            "[server]\nlisten = \"127.0.0.1:7001\"\n",
            &[("KATEWAY_SERVER_CORES", "3")],
        )
        .unwrap();
        assert!(check(&old, &new).unwrap().is_empty());
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = load("[limits]\nmax_batch_messages = 0\n", &[]).unwrap_err();
        assert!(e.contains("limits.max_batch_messages"), "{e}");
        let e = load("[limits]\nmax_batch_mesages = 1\n", &[]).unwrap_err();
        assert!(e.contains("max_batch_mesages"), "{e}");
    }

    #[test]
    fn turning_tls_on_is_refused() {
        let old = load("", &[]).unwrap();
        let new = load("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n", &[]).unwrap();
        let e = check(&old, &new).unwrap_err();
        assert!(e.contains("turning TLS on or off"), "{e}");
    }
}
