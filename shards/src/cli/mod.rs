//! The admin CLI: `kateway status|topics|groups|tail|keys|reload|redrive ...` talks to a
//! running gateway over its HTTP API and prints tables people can read. The gateway's address,
//! key and app come from `--addr`, `--key` and `--appid`, or `KATEWAY_ADDR`, `KATEWAY_KEY` and
//! `KATEWAY_APPID` (operator calls go to the operator listener when authentication is on).
//! Every command is one or more API calls ([`http`]); nothing here reads the data directory.

pub mod http;
pub mod table;

use clap::{Args, Subcommand};
use serde_json::Value;
use std::time::Duration;

/// Where the gateway is, and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The gateway's host:port (KATEWAY_ADDR; default 127.0.0.1:9191).
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// An API key, sent as `Authorization: Bearer` (KATEWAY_KEY).
    #[arg(long, global = true)]
    pub key: Option<String>,
    /// The calling app, sent as `Appid` (KATEWAY_APPID; for a gateway with authentication off).
    #[arg(long, global = true)]
    pub appid: Option<String>,
}

impl Target {
    fn client(&self) -> http::Client {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let addr = self
            .addr
            .clone()
            .or_else(|| env("KATEWAY_ADDR"))
            .unwrap_or_else(|| "127.0.0.1:9191".into());
        let addr = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        http::Client {
            addr,
            key: self.key.clone().or_else(|| env("KATEWAY_KEY")),
            appid: self.appid.clone().or_else(|| env("KATEWAY_APPID")),
        }
    }
}

/// The admin commands.
#[derive(Subcommand, Debug)]
pub enum Admin {
    /// The gateway's status: backend, cores, connections, store, Kafka (operator).
    Status,
    /// Create, grow, delete or show a topic.
    #[command(subcommand)]
    Topics(Topics),
    /// Consumer groups on a topic, with their lag per partition.
    Groups {
        /// APP/TOPIC/VER
        topic: String,
        /// Only this group (of the calling app).
        #[arg(long)]
        group: Option<String>,
    },
    /// Follow a topic's messages, printing each as it arrives (Ctrl-C stops).
    Tail {
        /// APP/TOPIC/VER
        topic: String,
        /// The consumer group to read with (default: one of its own, `tail-<pid>`).
        #[arg(long)]
        group: Option<String>,
        /// Where a new group starts: newest (default) or oldest.
        #[arg(long, default_value = "newest", value_parser = ["newest", "oldest"])]
        from: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// API keys of an app.
    #[command(subcommand)]
    Keys(Keys),
    /// Read the configuration again and apply what may change live (operator).
    Reload,
    /// Publish a leased group's dead letters again, in steps, showing progress.
    Redrive {
        /// The app that owns the group.
        app: String,
        /// The group.
        group: String,
        /// At most this many (default: all that wait now).
        #[arg(long)]
        max: Option<u64>,
        /// To this topic of the app (TOPIC/VER) instead of each message's origin.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Topics {
    /// Create a topic.
    Create {
        /// APP/TOPIC/VER
        topic: String,
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Grow a topic's partitions.
    Grow {
        /// APP/TOPIC/VER
        topic: String,
        #[arg(long)]
        partitions: u32,
    },
    /// Delete a topic and its messages.
    Delete {
        /// APP/TOPIC/VER
        topic: String,
    },
    /// A topic's partitions and their offsets.
    Show {
        /// APP/TOPIC/VER
        topic: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Keys {
    /// List an app's keys (revoked and expired ones included).
    List { app: String },
    /// Make a key: publish, subscribe or app_admin. The key is shown once.
    Create {
        app: String,
        scope: String,
        /// Narrow the key to these topics (topic.ver,app.topic.ver).
        #[arg(long)]
        topics: Option<String>,
    },
    /// Revoke a key.
    Revoke { app: String, keyid: String },
}

/// Runs an admin command; the text to print, or why it failed.
pub fn run(target: &Target, cmd: Admin) -> Result<String, String> {
    let c = target.client();
    let get = |path: &str| {
        c.call("GET", path, &[], b"", Duration::ZERO)
            .and_then(http::Answer::ok)
    };
    let send = |method: &str, path: &str| {
        c.call(method, path, &[], b"", Duration::ZERO)
            .and_then(http::Answer::ok)
    };
    match cmd {
        Admin::Status => Ok(status(&get("/v1/status")?.json())),
        Admin::Topics(t) => match t {
            Topics::Create { topic, partitions } => {
                let q = partitions.map_or(String::new(), |n| format!("?partitions={n}"));
                let j = send("POST", &format!("/v1/topics/{}{q}", path(&topic)?))?.json();
                Ok(format!("created {topic}: {} partitions\n", j["partitions"]))
            }
            Topics::Grow { topic, partitions } => {
                let p = format!("/v1/topics/{}?partitions={partitions}", path(&topic)?);
                let j = send("PUT", &p)?.json();
                Ok(format!("{topic}: {} partitions\n", j["partitions"]))
            }
            Topics::Delete { topic } => {
                send("DELETE", &format!("/v1/topics/{}", path(&topic)?))?;
                Ok(format!("deleted {topic}\n"))
            }
            Topics::Show { topic } => {
                let j = get(&format!("/v1/partitions/{}", path(&topic)?))?.json();
                let rows = list(&j["offsets"])
                    .map(|p| cells(p, &["partition", "oldest", "newest"]))
                    .collect::<Vec<_>>();
                Ok(table::render(&["PARTITION", "OLDEST", "NEWEST"], &rows))
            }
        },
        Admin::Groups { topic, group } => {
            let q = group.map_or(String::new(), |g| format!("?group={g}"));
            let j = get(&format!("/v1/status/{}{q}", path(&topic)?))?.json();
            Ok(groups(&j))
        }
        Admin::Tail {
            topic,
            group,
            from,
            count,
        } => tail(&c, &topic, group, &from, count),
        Admin::Keys(k) => match k {
            Keys::List { app } => Ok(keys(&get(&format!("/v1/keys/{app}"))?.json())),
            Keys::Create { app, scope, topics } => {
                let t = topics.map_or(String::new(), |t| format!("&topics={t}"));
                let j = send("POST", &format!("/v1/keys/{app}?scope={scope}{t}"))?.json();
                Ok(format!(
                    "{}\nkey {} ({}, {}): shown once, keep it\n",
                    j["key"].as_str().unwrap_or(""),
                    text(&j["keyid"]),
                    text(&j["scope"]),
                    text(&j["app"]),
                ))
            }
            Keys::Revoke { app, keyid } => {
                send("DELETE", &format!("/v1/keys/{app}/{keyid}"))?;
                Ok(format!("revoked {keyid}\n"))
            }
        },
        Admin::Reload => {
            let j = send("POST", "/v1/config/reload")?.json();
            let changed: Vec<_> = list(&j["changed"]).map(text).collect();
            Ok(match changed.is_empty() {
                true => "reloaded: nothing changed\n".into(),
                false => format!("reloaded: {}\n", changed.join(", ")),
            })
        }
        Admin::Redrive {
            app,
            group,
            max,
            to,
        } => redrive(&c, &app, &group, max, to.as_deref()),
    }
}

/// `APP/TOPIC/VER` as a path (each part checked by the gateway).
fn path(topic: &str) -> Result<String, String> {
    let parts: Vec<_> = topic.split('/').collect();
    match parts[..] {
        [a, t, v] if !a.is_empty() && !t.is_empty() && !v.is_empty() => Ok(topic.to_owned()),
        _ => Err(format!("{topic:?}: expected APP/TOPIC/VER")),
    }
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().map(|a| a.iter()).into_iter().flatten()
}

/// A JSON value as a table cell: strings bare, absent values as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cells(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| text(&v[*k])).collect()
}

/// `/v1/status` as two columns, nested objects flattened (`store.open_files`).
fn status(j: &Value) -> String {
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let name = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    walk(&name, v, rows);
                }
            }
            Value::Array(a) if a.iter().any(Value::is_object) => {
                rows.push(vec![prefix.to_owned(), format!("{} entries", a.len())]);
            }
            other => rows.push(vec![prefix.to_owned(), text(other)]),
        }
    }
    let mut rows = Vec::new();
    walk("", j, &mut rows);
    table::render(&["FIELD", "VALUE"], &rows)
}

/// `/v1/status/:appid/:topic/:ver`: one row per group and partition.
fn groups(j: &Value) -> String {
    let mut rows = Vec::new();
    for g in list(&j["groups"]) {
        for p in list(&g["partitions"]) {
            let mut r = cells(g, &["app", "group"]);
            r.extend(cells(p, &["partition", "committed", "newest", "lag"]));
            rows.push(r);
        }
    }
    if rows.is_empty() {
        return "no groups\n".into();
    }
    table::render(
        &["APP", "GROUP", "PARTITION", "COMMITTED", "NEWEST", "LAG"],
        &rows,
    )
}

fn keys(j: &Value) -> String {
    let rows: Vec<_> = list(&j["keys"])
        .map(|k| {
            let mut r = cells(k, &["keyid", "scope", "revoked"]);
            r.push(list(&k["topics"]).map(text).collect::<Vec<_>>().join(","));
            r.push(millis(&k["expires_ms"]));
            r
        })
        .collect();
    table::render(&["KEYID", "SCOPE", "REVOKED", "TOPICS", "EXPIRES"], &rows)
}

/// Milliseconds since the epoch as a UTC date and time, or `-`.
fn millis(v: &Value) -> String {
    let Some(ms) = v.as_i64().filter(|ms| *ms > 0) else {
        return "-".into();
    };
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = kateway_core::units::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Long-polls the topic with its own group and prints each message as it arrives:
/// `partition/offset  key  value` (the value as text where it is UTF-8, else its length).
fn tail(
    c: &http::Client,
    topic: &str,
    group: Option<String>,
    from: &str,
    count: Option<u64>,
) -> Result<String, String> {
    use base64::Engine;
    use std::io::Write;
    let group = group.unwrap_or_else(|| format!("tail-{}", std::process::id()));
    let p = format!(
        "/v1/msgs/{}?group={group}&batch=100&wait=30s&reset={from}",
        path(topic)?
    );
    let mut seen = 0u64;
    let out = std::io::stdout();
    loop {
        let a = c.call(
            "GET",
            &p,
            &[("Accept", "application/x-ndjson")],
            b"",
            Duration::from_secs(30),
        )?;
        let a = match a.status {
            204 => continue,
            // Overloaded or rebalancing: wait as told, then ask again.
            429 | 503 => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            _ => a.ok()?,
        };
        let mut o = out.lock();
        for line in a.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let m: Value = serde_json::from_slice(line).map_err(|e| format!("{e}"))?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(m["value"].as_str().unwrap_or(""))
                .unwrap_or_default();
            let shown = match std::str::from_utf8(&value) {
                Ok(s) => s.escape_debug().to_string(),
                Err(_) => format!("<{} bytes>", value.len()),
            };
            let key = m["key"].as_str().unwrap_or("-");
            writeln!(o, "{}/{}  {key}  {shown}", m["partition"], m["offset"])
                .map_err(|e| e.to_string())?;
            seen += 1;
            if count.is_some_and(|n| seen >= n) {
                return Ok(String::new());
            }
        }
        o.flush().map_err(|e| e.to_string())?;
    }
}

/// Redrives in steps of 100, printing progress after each.
fn redrive(
    c: &http::Client,
    app: &str,
    group: &str,
    max: Option<u64>,
    to: Option<&str>,
) -> Result<String, String> {
    use std::io::Write;
    let call = |method: &str, path: &str| {
        c.call(method, path, &[], b"", Duration::ZERO)
            .and_then(http::Answer::ok)
    };
    let waiting = call("GET", &format!("/v1/dlq/{app}/{group}"))?.json()["messages"]
        .as_u64()
        .unwrap_or(0);
    let total = max.map_or(waiting, |m| m.min(waiting));
    let to = to.map_or(String::new(), |t| format!("&to={t}"));
    let mut done = 0u64;
    let mut err = std::io::stderr();
    while done < total {
        let step = (total - done).min(100);
        let p = format!("/v1/dlq/{app}/{group}/redrive?max={step}{to}");
        let n = call("POST", &p)?.json()["redriven"].as_u64().unwrap_or(0);
        if n == 0 {
            break;
        }
        done += n;
        let _ = write!(err, "\rredriven {done}/{total}");
        let _ = err.flush();
    }
    if total > 0 {
        let _ = writeln!(err);
    }
    Ok(format!("redriven {done} of {waiting} waiting\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_and_tables() {
        assert_eq!(millis(&json!(0)), "-");
        assert_eq!(millis(&json!(951_782_400_000i64)), "2000-02-29 00:00:00Z");
        assert_eq!(millis(&json!(1_798_761_599_000i64)), "2026-12-31 23:59:59Z");
        let g = groups(&json!({"groups":[{"app":"a","group":"g","lag":3,
            "partitions":[{"partition":0,"committed":1,"newest":4,"lag":3}]}]}));
        assert_eq!(
            g,
            "APP  GROUP  PARTITION  COMMITTED  NEWEST  LAG\na    g      0          1          4       3\n"
        );
        assert!(path("a/t").is_err() && path("a/t/v1").is_ok());
        let s = status(&json!({"backend":"embedded","store":{"open_files":2}}));
        assert!(s.contains("store.open_files  2"), "{s}");
    }
}
