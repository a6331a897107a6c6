//! Per-core metrics: plain counters and fixed-bucket histograms in `Cell`s (no atomics, no
//! locks), copied into a [`Snapshot`] on request, summed over cores at scrape time and rendered
//! in the Prometheus text format. Names follow `kateway_<subsystem>_<what>_<unit>`. Series with
//! labels (per topic, per route and status) are in `labelled`.

mod labelled;
pub mod lag;
pub use labelled::{Labelled, Routes, TopicStats};

use std::cell::Cell;
use std::fmt::Write;

/// Damage found on a partition, as status reports it.
#[derive(Debug, Clone)]
pub struct DamageEntry {
    pub topic: String,
    pub partition: u32,
    pub damage: kateway_log::Damage,
    /// How it was found: "recovery", "read", "scrub" or "replay".
    pub found_by: &'static str,
    pub at_ms: i64,
}

/// Histogram bucket upper bounds in seconds.
pub const BUCKETS: [f64; 17] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
];

/// The stages of a publish to the embedded log (`kateway_publish_stage_duration_seconds`). The
/// rest of a publish's latency (`kateway_http_request_duration_seconds`: parsing, routing, the
/// reply) is what these leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Appending the records to the partition's pending buffer.
    Append,
    /// From the append to the flusher's write of its generation (the flusher's wake-up, the
    /// requests batched with it, the write).
    WriteWait,
    /// From that write to the fsync that covers it (`ack=all` only).
    SyncWait,
    /// The flusher's positioned writes of one generation (one per partition written).
    Write,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Append,
        Stage::WriteWait,
        Stage::SyncWait,
        Stage::Write,
    ];

    /// Its `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Append => "append",
            Stage::WriteWait => "write_wait",
            Stage::SyncWait => "sync_wait",
            Stage::Write => "write",
        }
    }
}

impl Metrics {
    /// Records `d` spent in `stage`.
    pub fn stage(&self, stage: Stage, d: std::time::Duration) {
        self.stages[stage as usize].observe(d);
    }
}

/// A latency histogram owned by one core.
#[derive(Default)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS.len() + 1],
    sum_ns: Cell<u64>,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum_ns.set(self.sum_ns.get() + d.as_nanos() as u64);
    }

    fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].get()),
            sum_ns: self.sum_ns.get(),
        }
    }
}

/// A copy of a histogram that can cross threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistSnapshot {
    counts: [u64; BUCKETS.len() + 1],
    sum_ns: u64,
}

impl HistSnapshot {
    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their total, in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    fn add(&mut self, o: &HistSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_ns += o.sum_ns;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The series of one label set (`labels` without braces; empty for none).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, braces) = if labels.is_empty() {
            ("", ("", ""))
        } else {
            (",", ("{", "}"))
        };
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let (o, c) = braces;
        let _ = writeln!(out, "{name}_sum{o}{labels}{c} {}", self.sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{o}{labels}{c} {cum}");
    }
}

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// One core's counters and histograms.
        #[derive(Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: Cell<u64>,)*
            /// Request latency, from complete request to response queued, per route and status.
            pub routes: Routes,
            /// Consumer-group lag, as core 0 last measured it ([`lag`]).
            pub lags: std::cell::RefCell<lag::Lags>,
            /// Duration of each group-commit fsync round.
            pub fsync_seconds: Histogram,
            /// Where a publish to this core's log spends its time, by [`Stage`].
            pub stages: [Histogram; Stage::ALL.len()],
        }

        /// A copy of every core's metrics, summed.
        #[derive(Debug, Clone, Default)]
        pub struct Snapshot {
            $(#[doc = $help] pub $name: u64,)*
            /// Per topic, and per route and status.
            pub labelled: Labelled,
            /// See [`Metrics::fsync_seconds`].
            pub fsync_seconds: HistSnapshot,
            /// See [`Metrics::stages`].
            pub stages: [HistSnapshot; Stage::ALL.len()],
            /// Bytes stored in log segments.
            pub log_bytes: u64,
            /// Partitions owned.
            pub partitions: u64,
            /// Cores whose storage is faulted (refusing writes), and why.
            pub store_faults: Vec<String>,
            /// Log files open now, and the budget for them.
            pub log_open_files: u64,
            pub log_open_files_max: u64,
            /// Log files closed to stay within the budget.
            pub log_file_evictions: u64,
            /// Response bytes held for clients that have not read them.
            pub response_bytes_held: u64,
            /// Bytes of requests still arriving, held in read buffers.
            pub request_bytes_held: u64,
            /// Damage found, newest last.
            pub damage: Vec<DamageEntry>,
        }

        impl Metrics {
            /// Copies the counters.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.get(),)*
                    labelled: Labelled::default(),
                    fsync_seconds: self.fsync_seconds.snapshot(),
                    stages: std::array::from_fn(|i| self.stages[i].snapshot()),
                    log_bytes: 0,
                    partitions: 0,
                    store_faults: Vec::new(),
                    log_open_files: 0,
                    log_open_files_max: 0,
                    log_file_evictions: 0,
                    response_bytes_held: 0,
                    request_bytes_held: 0,
                    damage: Vec::new(),
                }
            }
        }

        impl Snapshot {
            /// Adds another core's snapshot.
            pub fn add(&mut self, o: &Snapshot) {
                $(self.$name += o.$name;)*
                self.labelled.add(&o.labelled);
                self.fsync_seconds.add(&o.fsync_seconds);
                for (a, b) in self.stages.iter_mut().zip(&o.stages) {
                    a.add(b);
                }
                self.log_bytes += o.log_bytes;
                self.partitions += o.partitions;
                self.store_faults.extend(o.store_faults.iter().cloned());
                self.log_open_files += o.log_open_files;
                self.log_open_files_max += o.log_open_files_max;
                self.log_file_evictions += o.log_file_evictions;
                self.response_bytes_held += o.response_bytes_held;
                self.request_bytes_held += o.request_bytes_held;
                self.damage.extend(o.damage.iter().cloned());
            }

            fn render_counters(&self, out: &mut String) {
                $(
                    let name = concat!("kateway_", stringify!($name));
                    let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
                    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {}", $help, self.$name);
                )*
            }
        }
    };
}

counters! {
    http_requests_total: "HTTP requests answered.",
    http_responses_2xx_total: "Responses with a 2xx status.",
    http_responses_4xx_total: "Responses with a 4xx status.",
    http_responses_5xx_total: "Responses with a 5xx status.",
    http_connections_accepted_total: "Connections accepted.",
    http_connections_active: "Connections open now.",
    http_connections_rejected_total: "Connections refused because the core was full.",
    auth_failures_total: "Requests refused for credentials that do not authenticate (401).",
    auth_forbidden_total: "Authenticated requests refused for what the key may not do (403).",
    auth_limited_total: "Requests refused for too many failed authentications from their address.",
    quota_refusals_total: "Requests refused for an app's exhausted quota (429).",
    admission_refusals_total: "Requests refused for a core's or an app's share of in-flight requests.",
    sessions_revoked_total: "Long polls, event streams and WebSockets ended because their key lost access.",
    pub_messages_total: "Messages published.",
    pub_bytes_total: "Payload bytes published.",
    sub_messages_total: "Messages delivered to subscribers.",
    sub_bytes_total: "Payload bytes delivered to subscribers.",
    sub_parked_polls: "Long polls waiting for messages now.",
    log_writes_total: "Flush cycles that wrote to segment files.",
    log_written_bytes_total: "Bytes written to segment files.",
    log_fsyncs_total: "Group-commit fsync rounds.",
    mesh_messages_total: "Messages sent to other cores.",
    handoff_buffered_messages_total: "Publishes written to the hinted-handoff log because Kafka was unreachable.",
    handoff_replayed_messages_total: "Buffered messages replayed to Kafka.",
    handoff_rejected_total: "Publishes refused because the handoff log was at its disk budget.",
    handoff_dropped_total: "Buffered messages Kafka refused for good during replay.",
    handoff_deduplicated_total: "Buffered copies not replayed because their original send reached Kafka after all.",
    handoff_backlog_messages: "Messages in the handoff log not yet replayed to Kafka.",
    handoff_bytes: "Bytes held by the handoff logs.",
    kafka_breaker_open: "Cores whose Kafka circuit breaker is open.",
    kafka_produce_errors_total: "Publishes Kafka refused (other than by being unreachable).",
    store_write_errors_total: "Writes to log or offsets files that failed (full disk, I/O error).",
    store_fsync_errors_total: "Group-commit fsyncs that failed.",
    store_recoveries_total: "Times a core took writes again after its storage failed.",
    log_damaged_records_total: "Records lost to damage on disk (found on open, on read or by scrubbing; an upper bound for torn tails).",
    log_damaged_bytes_total: "Bytes of damaged log and offsets data skipped or cut.",
    log_scrubbed_bytes_total: "Bytes of sealed segments whose checksums the scrubber verified.",
    http_write_timeouts_total: "Connections closed because a response made no progress for server.write_timeout.",
    http_responses_refused_total: "Subscribes refused because the core held limits.max_response_bytes_per_core for slow readers.",
    tls_handshakes_failed_total: "TLS handshakes that failed or did not finish within server.request_timeout.",
    http2_connections_total: "Connections that spoke HTTP/2 (h2c or h2 over TLS).",
    http2_floods_total: "HTTP/2 connections closed with ENHANCE_YOUR_CALM for a flood of control frames.",
    websocket_connections_total: "Connections upgraded to WebSocket.",
    websocket_messages_in_total: "WebSocket messages received from clients (publishes, acks, credit).",
    websocket_messages_out_total: "WebSocket messages sent to clients (acks and pushed messages).",
    sse_streams_total: "Server-sent event streams opened.",
    webhook_deliveries_total: "Webhook deliveries an endpoint acknowledged (2xx).",
    webhook_failures_total: "Webhook attempts that failed (no 2xx: an error status, a timeout, a refused connection).",
    webhook_dead_total: "Webhook messages moved to the dead-letter topic after their last attempt (or a 410).",
    delays_published_total: "Delayed messages accepted (written to the delay log).",
    delays_fired_total: "Delayed messages fired to their topics by this gateway.",
    delays_cancelled_total: "Delayed messages cancelled before they fired.",
    delays_pending_memory: "Pending delays held in memory (due within delay.memory_horizon).",
    delays_pending_memory_bytes: "Message bytes of the pending delays held in memory.",
    delays_pending_disk: "Pending delays waiting in the on-disk index (cancelled ones counted until their bucket loads).",
    http_requests_refused_total: "Connections answered 503 and closed because the core held limits.max_request_bytes_per_core of requests still arriving.",
}

impl Snapshot {
    /// Renders the Prometheus text format, with at most `max_topic_series` topics and
    /// `max_group_series` groups labelled.
    pub fn render(&self, cores: usize, max_topic_series: usize, max_group_series: usize) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(out, "# HELP kateway_cores Reactor cores.\n# TYPE kateway_cores gauge\nkateway_cores {cores}");
        self.render_counters(&mut out);
        let _ = writeln!(out, "# HELP kateway_log_size_bytes Bytes stored in log segments.\n# TYPE kateway_log_size_bytes gauge\nkateway_log_size_bytes {}", self.log_bytes);
        let _ = writeln!(out, "# HELP kateway_log_partitions Partitions stored.\n# TYPE kateway_log_partitions gauge\nkateway_log_partitions {}", self.partitions);
        let gauges = [
            (
                "kateway_store_failed_cores",
                "Cores whose storage failed and that refuse writes until it works again.",
                self.store_faults.len() as u64,
            ),
            (
                "kateway_log_open_files",
                "Log files open now.",
                self.log_open_files,
            ),
            (
                "kateway_log_open_files_max",
                "The budget of open log files, summed over cores.",
                self.log_open_files_max,
            ),
            (
                "kateway_log_file_evictions_total",
                "Log files closed to stay within the budget (reopened when needed).",
                self.log_file_evictions,
            ),
            (
                "kateway_http_response_bytes_held",
                "Response bytes held for clients that have not read them yet.",
                self.response_bytes_held,
            ),
            (
                "kateway_http_request_bytes_held",
                "Bytes of requests still arriving, held in read buffers (beyond 64 KiB per connection).",
                self.request_bytes_held,
            ),
        ];
        for (name, help, v) in gauges {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.labelled
            .render(&mut out, max_topic_series, max_group_series);
        self.fsync_seconds.render(
            &mut out,
            "kateway_log_fsync_duration_seconds",
            "Group-commit fsync latency.",
        );
        let name = "kateway_publish_stage_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Where publishes to the embedded log spend their time, by stage.\n# TYPE {name} histogram"
        );
        for (stage, h) in Stage::ALL.iter().zip(&self.stages) {
            h.render_series(&mut out, name, &format!("stage=\"{}\"", stage.name()));
        }
        out
    }
}

/// Adds one to a counter.
pub fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Adds `n` to a counter.
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Subtracts one from a gauge.
pub fn dec(c: &Cell<u64>) {
    c.set(c.get().saturating_sub(1));
}
