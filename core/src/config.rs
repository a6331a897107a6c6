//! The configuration schema. Defaults live in the shipped, commented `kateway.toml`, which is
//! compiled in as the base layer; a user file overrides any subset; `KATEWAY_<SECTION>_<KEY>`
//! environment variables override both. Validation names the key and its allowed range.

use crate::units::{ByteSize, Dur};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Value;

/// The shipped defaults.
pub const DEFAULT_TOML: &str = include_str!("../../kateway.toml");

/// Everything the gateway can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, cores, timeouts.
    pub server: ServerConfig,
    /// HTTP/2 settings.
    pub http2: Http2Config,
    /// WebSocket limits and flow control.
    pub websocket: WebSocketConfig,
    /// Server-Sent Events.
    pub sse: SseConfig,
    /// TLS.
    pub tls: TlsConfig,
    /// Authentication and the operator listener.
    pub auth: AuthConfig,
    /// Request and message limits.
    pub limits: LimitsConfig,
    /// Subscribe behaviour.
    pub subscribe: SubscribeConfig,
    pub queue: QueueConfig,
    pub idempotency: IdempotencyConfig,
    /// Delayed messages.
    pub delay: DelayConfig,
    /// Webhook push subscriptions.
    pub webhook: WebhookConfig,
    /// The embedded log store.
    pub store: StoreConfig,
    /// The Kafka backend and its hinted handoff.
    pub kafka: KafkaConfig,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub cores: u32,
    pub pin_cores: bool,
    pub ring_entries: u32,
    pub backlog: i32,
    pub max_connections_per_core: u32,
    pub request_timeout: Dur,
    pub write_timeout: Dur,
    pub idle_timeout: Dur,
    pub gzip_min_bytes: ByteSize,
    pub shutdown_timeout: Dur,
    pub drain_grace: Dur,
}

/// `[http2]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    pub max_concurrent_streams: u32,
    pub stream_window: ByteSize,
    pub connection_window: ByteSize,
    pub max_frame_size: ByteSize,
    pub max_reset_streams: u32,
    pub control_frames_per_second: u32,
    pub control_frame_burst: u32,
}

/// `[websocket]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    pub max_frame_bytes: ByteSize,
    pub max_message_bytes: ByteSize,
    pub ping_interval: Dur,
    pub max_in_flight: u32,
    pub default_credit: u32,
    pub max_credit: u32,
}

/// `[sse]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    pub heartbeat: Dur,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub https_only: bool,
    pub health_listen: String,
}

impl TlsConfig {
    /// Whether TLS is configured (a certificate and a key).
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty() && !self.key.as_os_str().is_empty()
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    pub operator_listen: String,
    pub pepper_file: PathBuf,
    pub failed_burst: u32,
    pub failed_per_second: u32,
}

impl AuthConfig {
    /// The pepper file: `pepper_file`, or `<data>/meta/pepper`.
    pub fn pepper_path(&self, data_dir: &Path) -> PathBuf {
        if self.pepper_file.as_os_str().is_empty() {
            data_dir.join("meta").join("pepper")
        } else {
            self.pepper_file.clone()
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: ByteSize,
    pub max_key_bytes: ByteSize,
    pub max_tag_bytes: ByteSize,
    pub max_header_bytes: ByteSize,
    pub max_batch_messages: u32,
    pub max_batch_bytes: ByteSize,
    pub max_pending_bytes_per_core: ByteSize,
    pub max_response_bytes_per_core: ByteSize,
    pub max_request_bytes_per_core: ByteSize,
    pub max_requests_in_flight_per_core: u32,
    pub app_share_per_core: u32,
}

/// `[subscribe]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeConfig {
    pub default_wait: Dur,
    pub max_wait: Dur,
    pub max_batch: u32,
    pub max_batch_bytes: ByteSize,
}

/// `[queue]`: leased delivery (`ack=lease`), the same for every group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Offsets past a group's committed offset that its window tracks per partition.
    pub window: u32,
    /// Bytes of read-ahead records one group's queue may hold on a core.
    pub max_window_bytes: ByteSize,
    /// How long a lease lasts when the subscribe names no `visibility`.
    pub visibility: Dur,
    /// The longest lease a subscribe or an extension may ask for.
    pub max_visibility: Dur,
    /// Deliveries of a message before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// The first retry's backoff; it doubles with each failure, with jitter, up to `backoff_max`.
    pub backoff_base: Dur,
    pub backoff_max: Dur,
    /// How often a group's queue state is made durable.
    pub checkpoint_interval: Dur,
    /// How long a group's queue with no subscriber and nothing leased stays in memory.
    pub idle_timeout: Dur,
    /// Leased groups' queues one core keeps at most; past it a new one is refused (429).
    pub max_groups_per_core: u32,
}

/// `[delay]`: delayed messages (`delay=` or `X-Deliver-At` on a publish).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// The delay log is the topic `_kgw.<log>.v1`, held by the group `_kgw.<log>`: gateways
    /// that share a Kafka cluster but not their delays use different names.
    pub log: String,
    /// Partitions of the delay log (fixed when it is first created).
    pub partitions: u32,
    /// The longest delay a publish may ask for.
    pub max_delay: Dur,
    /// Pending delays due within this are held in memory; later ones wait in the on-disk index.
    pub memory_horizon: Dur,
    /// Accept `POST /v1/debug/clock` (operator) to move the delay clock forward: for tests only.
    pub test_clock: bool,
}

/// `[webhook]`: push subscriptions; the defaults of a subscription that names none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub max_in_flight: u32,
    pub timeout: Dur,
    pub max_attempts: u32,
    pub backoff_base: Dur,
    pub backoff_max: Dur,
    /// Consecutive failed deliveries after which an endpoint is paused (0: never).
    pub pause_after_failures: u32,
    /// Allow endpoints on loopback, private and link-local addresses.
    pub allow_private_addresses: bool,
    /// Attempts kept per endpoint for `GET .../log`.
    pub log_entries: u32,
}

/// `[idempotency]`: publishes with an `Idempotency-Key`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a key is remembered after its publish.
    pub window: Dur,
    /// How long a claim of a key whose publish never finished (its gateway died) holds it.
    pub claim_timeout: Dur,
    /// The most keys remembered; past it a publish with a new key is refused (429).
    pub max_keys: u32,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub default_partitions: u32,
    pub segment_bytes: ByteSize,
    pub index_interval_bytes: ByteSize,
    pub preallocate_bytes: ByteSize,
    pub fsync_interval: Dur,
    pub fsync_bytes: ByteSize,
    pub retention_hours: u64,
    pub retention_bytes: ByteSize,
    pub retention_check_interval: Dur,
    pub offsets_compact_bytes: ByteSize,
    pub recovery_mode: RecoveryMode,
    pub max_open_files: u32,
    pub max_partitions: u32,
    pub fault_retry: Dur,
    pub scrub_bytes_per_second: ByteSize,
}

/// How much damage on disk the store tolerates (`store.recovery_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    /// Skip damaged records anywhere, cut a torn tail, report what was lost.
    TolerateCorruption,
    /// Cut a torn or damaged tail of a partition's newest segment; refuse to start on any
    /// other damage, and refuse reads of damaged records.
    TolerateTail,
    /// Refuse to start on any damage, a torn tail included.
    Absolute,
}

/// `[log]`
/// Where topics live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded log store on this host.
    Embedded,
    /// An Apache Kafka cluster, with the local log as hinted-handoff buffer.
    Kafka,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub meta_topic: String,
    pub idempotency_topic: String,
    pub queue_settle_topic: String,
    pub queue_state_topic: String,
    pub client_id: String,
    pub replication_factor: i32,
    pub linger: Dur,
    pub produce_timeout: Dur,
    pub request_timeout: Dur,
    pub handoff_max_bytes: ByteSize,
    pub handoff_segment_bytes: ByteSize,
    pub handoff_idle_close: Dur,
    pub replay_batch: u32,
    pub replay_backoff: Dur,
    pub metadata_refresh: Dur,
    pub group_idle_timeout: Dur,
    pub session_timeout: Dur,
    pub max_groups: u32,
    /// How long a request for the groups on a topic may spend asking Kafka for their committed
    /// offsets (one request per group); groups past it are counted, not measured.
    pub status_budget: Dur,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Topics with series of their own in `/metrics`; the rest are summed into `other`.
    pub max_topic_series: u32,
    /// Consumer groups (per topic) with lag series of their own; the rest are summed into `other`.
    pub max_group_series: u32,
    /// How often core 0 measures consumer-group lag (0: never).
    pub lag_interval: Dur,
}

/// `KATEWAY_*` environment variables that are not settings: `KATEWAY_FAILPOINTS` (storage fault
/// injection for tests) and `KATEWAY_RDKAFKA_DEBUG` (librdkafka's debug contexts), both read by
/// the gateway at start.
const NOT_SETTINGS: [&str; 2] = ["FAILPOINTS", "RDKAFKA_DEBUG"];

const SECTIONS: [&str; 16] = [
    "metrics",
    "delay",
    "webhook",
    "auth",
    "server",
    "http2",
    "websocket",
    "sse",
    "tls",
    "limits",
    "subscribe",
    "queue",
    "idempotency",
    "store",
    "kafka",
    "log",
];

impl Config {
    /// The shipped defaults alone.
    pub fn defaults() -> Self {
        Self::load(None, std::iter::empty()).expect("the shipped kateway.toml is valid")
    }

    /// Defaults, overridden by `file` (if any), overridden by `env` pairs named
    /// `KATEWAY_<SECTION>_<KEY>`; then validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        Self::from_tree(tree(file, env)?)
    }

    /// The configuration a merged tree of settings describes, validated.
    pub fn from_tree(tree: Value) -> Result<Self, String> {
        let cfg: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges; every message names the key.
    pub fn validate(&self) -> Result<(), String> {
        fn range(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
            if v < lo || v > hi {
                Err(format!("{key} = {v} is out of range {lo}..={hi}"))
            } else {
                Ok(())
            }
        }
        let s = &self.server;
        s.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("server.listen = {:?}: {e}", s.listen))?;
        range("server.cores", s.cores.into(), 0, 1024)?;
        range("server.ring_entries", s.ring_entries.into(), 64, 32768)?;
        range(
            "server.max_connections_per_core",
            s.max_connections_per_core.into(),
            0,
            10_000_000,
        )?;
        let a = &self.auth;
        if !a.operator_listen.is_empty() {
            a.operator_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("auth.operator_listen = {:?}: {e}", a.operator_listen))?;
            if a.operator_listen == s.listen {
                return Err("auth.operator_listen must differ from server.listen".into());
            }
        }
        range("auth.failed_burst", a.failed_burst.into(), 1, 1_000_000)?;
        range(
            "auth.failed_per_second",
            a.failed_per_second.into(),
            1,
            1_000_000,
        )?;
        // A subscription that names none of its settings takes these: they must make one.
        let wh = &self.webhook;
        crate::tenancy::record::WebhookSpec {
            url: "http://example.com/".into(),
            secret_nonce: String::new(),
            max_in_flight: wh.max_in_flight,
            timeout_ms: wh.timeout.0.as_millis() as u64,
            max_attempts: wh.max_attempts,
            backoff_base_ms: wh.backoff_base.0.as_millis() as u64,
            backoff_max_ms: wh.backoff_max.0.as_millis() as u64,
            ordered: false,
            paused: None,
            from_oldest: false,
            created_ms: 0,
        }
        .check()
        .map_err(|e| format!("webhook defaults: {e}"))?;
        let d = &self.delay;
        crate::names::validate_part("delay.log", &d.log).map_err(|e| e.to_string())?;
        range("delay.partitions", d.partitions.into(), 1, 1024)?;
        range(
            "delay.max_delay (seconds)",
            d.max_delay.0.as_secs(),
            1,
            10 * 365 * 86_400,
        )?;
        range(
            "delay.memory_horizon (ms)",
            d.memory_horizon.0.as_millis() as u64,
            1000,
            86_400_000,
        )?;
        let q = &self.queue;
        range("queue.window", q.window.into(), 16, 1 << 20)?;
        range("queue.max_attempts", q.max_attempts.into(), 1, 1000)?;
        range(
            "queue.max_groups_per_core",
            q.max_groups_per_core.into(),
            1,
            1_000_000,
        )?;
        if q.visibility.0.is_zero() || q.visibility.0 > q.max_visibility.0 {
            return Err("queue.visibility must be above 0 and at most queue.max_visibility".into());
        }
        if q.backoff_base.0 > q.backoff_max.0 {
            return Err("queue.backoff_base must be at most queue.backoff_max".into());
        }
        let i = &self.idempotency;
        if i.window.0.is_zero() || i.claim_timeout.0.is_zero() {
            return Err("idempotency.window and idempotency.claim_timeout must be above 0".into());
        }
        range("idempotency.max_keys", i.max_keys.into(), 1, 100_000_000)?;
        if q.checkpoint_interval.0.is_zero() {
            return Err("queue.checkpoint_interval must be above 0".into());
        }
        range(
            "limits.max_requests_in_flight_per_core",
            self.limits.max_requests_in_flight_per_core.into(),
            1,
            10_000_000,
        )?;
        range(
            "limits.app_share_per_core",
            self.limits.app_share_per_core.into(),
            1,
            100,
        )?;
        // A time limit below 100 ms would cut off every request that takes more than one
        // packet, or every connection between two requests.
        for (key, d) in [
            ("server.request_timeout", s.request_timeout),
            ("server.write_timeout", s.write_timeout),
            ("server.idle_timeout", s.idle_timeout),
        ] {
            range(
                &format!("{key} (ms)"),
                d.0.as_millis() as u64,
                100,
                86_400_000,
            )?;
        }
        range(
            "server.shutdown_timeout (seconds)",
            s.shutdown_timeout.0.as_secs(),
            0,
            3600,
        )?;
        range(
            "server.drain_grace (seconds)",
            s.drain_grace.0.as_secs(),
            0,
            300,
        )?;
        check_log_level(&self.log.level)?;
        let h = &self.http2;
        range(
            "http2.max_concurrent_streams",
            h.max_concurrent_streams.into(),
            1,
            10_000,
        )?;
        range("http2.stream_window", h.stream_window.0, 64 << 10, 16 << 20)?;
        range(
            "http2.connection_window",
            h.connection_window.0,
            64 << 10,
            16 << 20,
        )?;
        range(
            "http2.max_frame_size",
            h.max_frame_size.0,
            16 << 10,
            16 << 20,
        )?;
        range(
            "http2.max_reset_streams",
            h.max_reset_streams.into(),
            1,
            10_000,
        )?;
        range(
            "http2.control_frames_per_second",
            h.control_frames_per_second.into(),
            1,
            1_000_000,
        )?;
        range(
            "http2.control_frame_burst",
            h.control_frame_burst.into(),
            1,
            1_000_000,
        )?;
        let w = &self.websocket;
        range(
            "websocket.max_frame_bytes",
            w.max_frame_bytes.0,
            1024,
            64 << 20,
        )?;
        range(
            "websocket.max_message_bytes",
            w.max_message_bytes.0,
            1024,
            64 << 20,
        )?;
        range("websocket.max_in_flight", w.max_in_flight.into(), 1, 65536)?;
        range(
            "websocket.default_credit",
            w.default_credit.into(),
            1,
            65536,
        )?;
        range("websocket.max_credit", w.max_credit.into(), 1, 65536)?;
        if w.default_credit > w.max_credit {
            return Err("websocket.default_credit must not exceed websocket.max_credit".into());
        }
        if w.ping_interval.0.is_zero() || self.sse.heartbeat.0.is_zero() {
            return Err("websocket.ping_interval and sse.heartbeat must be greater than 0".into());
        }
        let t = &self.tls;
        if t.cert.as_os_str().is_empty() != t.key.as_os_str().is_empty() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        if t.https_only && !t.enabled() {
            return Err("tls.https_only needs tls.cert and tls.key".into());
        }
        if !t.health_listen.is_empty() {
            t.health_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("tls.health_listen = {:?}: {e}", t.health_listen))?;
        }
        let l = &self.limits;
        range(
            "limits.max_message_bytes",
            l.max_message_bytes.0,
            1,
            64 << 20,
        )?;
        range("limits.max_key_bytes", l.max_key_bytes.0, 1, 65535)?;
        range("limits.max_tag_bytes", l.max_tag_bytes.0, 1, 65535)?;
        range(
            "limits.max_header_bytes",
            l.max_header_bytes.0,
            1024,
            1 << 20,
        )?;
        range(
            "limits.max_batch_messages",
            l.max_batch_messages.into(),
            1,
            1_000_000,
        )?;
        range("limits.max_batch_bytes", l.max_batch_bytes.0, 1, 1 << 30)?;
        range(
            "limits.max_pending_bytes_per_core",
            l.max_pending_bytes_per_core.0,
            1 << 20,
            1 << 40,
        )?;
        range(
            "limits.max_response_bytes_per_core",
            l.max_response_bytes_per_core.0,
            1 << 20,
            1 << 40,
        )?;
        range(
            "limits.max_request_bytes_per_core",
            l.max_request_bytes_per_core.0,
            1 << 20,
            1 << 40,
        )?;
        let sub = &self.subscribe;
        range("subscribe.max_batch", sub.max_batch.into(), 1, 100_000)?;
        range(
            "subscribe.max_batch_bytes",
            sub.max_batch_bytes.0,
            1,
            1 << 30,
        )?;
        if sub.default_wait > sub.max_wait {
            return Err("subscribe.default_wait must not exceed subscribe.max_wait".into());
        }
        let st = &self.store;
        range(
            "store.default_partitions",
            st.default_partitions.into(),
            0,
            10_000,
        )?;
        range("store.segment_bytes", st.segment_bytes.0, 1 << 20, 4 << 30)?;
        range(
            "store.index_interval_bytes",
            st.index_interval_bytes.0,
            64,
            1 << 20,
        )?;
        range("store.fsync_bytes", st.fsync_bytes.0, 1, 1 << 40)?;
        if st.preallocate_bytes.0 != 0 {
            range(
                "store.preallocate_bytes",
                st.preallocate_bytes.0,
                4 << 10,
                1 << 30,
            )?;
        }
        range(
            "store.offsets_compact_bytes",
            st.offsets_compact_bytes.0,
            4096,
            1 << 30,
        )?;
        range("store.max_open_files", st.max_open_files.into(), 0, 1 << 20)?;
        range("store.retention_hours", st.retention_hours, 0, 876_000)?;
        range(
            "store.max_partitions",
            st.max_partitions.into(),
            1,
            10_000_000,
        )?;
        if st.fault_retry.0 < std::time::Duration::from_millis(10) {
            return Err("store.fault_retry must be at least 10ms".into());
        }
        if st.fsync_interval.0.is_zero() {
            return Err("store.fsync_interval must be greater than 0".into());
        }
        let k = &self.kafka;
        if st.backend == Backend::Kafka && k.brokers.trim().is_empty() {
            return Err("store.backend = \"kafka\" needs kafka.brokers (host:port,...)".into());
        }
        range(
            "kafka.replication_factor",
            (k.replication_factor + 1) as u64,
            0,
            33,
        )
        .map_err(|_| {
            "kafka.replication_factor must be -1 (broker default) or 1..=32".to_string()
        })?;
        range(
            "kafka.handoff_segment_bytes",
            k.handoff_segment_bytes.0,
            1 << 20,
            4 << 30,
        )?;
        range("kafka.replay_batch", k.replay_batch.into(), 1, 100_000)?;
        range("kafka.max_groups", k.max_groups.into(), 1, 1_000_000)?;
        if k.produce_timeout.0 < std::time::Duration::from_millis(100) {
            return Err("kafka.produce_timeout must be at least 100ms".into());
        }
        Ok(())
    }
}

/// Refuses a `log.level` that is not a list of `level` or `target=level` directives: a stray
/// word would otherwise read as a target name and silence every other log line.
fn check_log_level(v: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bad = |why: &str| Err(format!("log.level = {v:?}: {why}"));
    if v.trim().is_empty() {
        return bad("empty (use \"info\", \"warn\", or target=level directives)");
    }
    for d in v.split(',').map(str::trim) {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return bad(&format!(
                "{level:?} is not a level (one of {})",
                LEVELS.join(", ")
            ));
        }
        if let Some(t) = target {
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
            {
                return bad(&format!("{t:?} is not a module path"));
            }
        }
    }
    Ok(())
}

/// The most a configuration file may hold.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a configuration file: a regular file of at most [`MAX_FILE_BYTES`]. It is opened
/// without blocking, so a FIFO or a device named by mistake is refused instead of holding the
/// reader (a reload would wait for a writer forever).
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "{} bytes; a configuration file holds at most {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other("grew past the size limit while read"));
    }
    Ok(text)
}

/// The shipped defaults, overridden by `file` (if any), overridden by `env` pairs named
/// `KATEWAY_<SECTION>_<KEY>`: the settings as one TOML tree, not validated yet.
pub fn tree(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Value, String> {
    let mut base: Value = toml::from_str(DEFAULT_TOML).map_err(|e| e.to_string())?;
    if let Some(path) = file {
        let text = read_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let user: Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        merge(&mut base, user);
    }
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix("KATEWAY_") {
            if NOT_SETTINGS.contains(&rest) {
                continue;
            }
            apply_env(&mut base, rest, &v)?;
        }
    }
    Ok(base)
}

pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn apply_env(base: &mut Value, rest: &str, raw: &str) -> Result<(), String> {
    let lower = rest.to_ascii_lowercase();
    let Some(section) = SECTIONS
        .iter()
        .find(|s| lower.starts_with(&format!("{s}_")))
    else {
        return Err(format!("unknown environment override KATEWAY_{rest}"));
    };
    let key = &lower[section.len() + 1..];
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    let table = base
        .get_mut(*section)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| format!("missing section {section}"))?;
    if !table.contains_key(key) {
        return Err(format!(
            "unknown setting {section}.{key} (from KATEWAY_{rest})"
        ));
    }
    table.insert(key.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_parse() {
        let c = Config::defaults();
        assert_eq!(c.server.listen, "127.0.0.1:9191");
        assert_eq!(c.limits.max_message_bytes.0, 512 * 1024);
        assert_eq!(c.store.fsync_interval.0, Duration::from_millis(50));
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn time_limits_and_log_levels_that_would_break_serving_are_refused() {
        let load = |k: &str, v: &str| Config::load(None, vec![(k.to_string(), v.to_string())]);
        for k in [
            "KATEWAY_SERVER_IDLE_TIMEOUT",
            "KATEWAY_SERVER_REQUEST_TIMEOUT",
            "KATEWAY_SERVER_WRITE_TIMEOUT",
        ] {
            let e = load(k, "0s").unwrap_err();
            assert!(e.contains("out of range"), "{k}: {e}");
            assert!(load(k, "2s").is_ok(), "{k}");
        }
        assert!(load("KATEWAY_SERVER_DRAIN_GRACE", "1h")
            .unwrap_err()
            .contains("server.drain_grace"));
        assert!(load("KATEWAY_SERVER_DRAIN_GRACE", "30s").is_ok());
        for bad in ["", "garbage", "info,kateway=loud", "=debug", "a b=info"] {
            let e = load("KATEWAY_LOG_LEVEL", bad).unwrap_err();
            assert!(e.contains("log.level"), "{bad:?}: {e}");
        }
        for good in ["info", "WARN", "warn,kateway_shards::conn=trace", "off"] {
            assert!(load("KATEWAY_LOG_LEVEL", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_fifo_or_an_oversized_file_is_refused_without_waiting() {
        let dir = std::env::temp_dir().join(format!("kw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.toml");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // With a blocking open this would wait for a writer forever.
        let e = Config::load(Some(&fifo), Vec::new()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let e = Config::load(Some(&big), Vec::new()).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "[server]\ncores = 2\n").unwrap();
        assert_eq!(Config::load(Some(&ok), Vec::new()).unwrap().server.cores, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_overrides_and_validation() {
        let env = vec![
            (
                "KATEWAY_SERVER_LISTEN".to_string(),
                "0.0.0.0:1234".to_string(),
            ),
            ("KATEWAY_SERVER_CORES".to_string(), "3".to_string()),
            (
                "KATEWAY_STORE_FSYNC_INTERVAL".to_string(),
                "5ms".to_string(),
            ),
            ("HOME".to_string(), "/x".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:1234");
        assert_eq!(c.server.cores, 3);
        assert_eq!(c.store.fsync_interval.0, Duration::from_millis(5));
        let bad = vec![("KATEWAY_SERVER_RING_ENTRIES".to_string(), "1".to_string())];
        let err = Config::load(None, bad).unwrap_err();
        assert!(err.contains("server.ring_entries"), "{err}");
        let unknown = vec![("KATEWAY_SERVER_NOPE".to_string(), "1".to_string())];
        assert!(Config::load(None, unknown)
            .unwrap_err()
            .contains("server.nope"));
    }

    #[test]
    fn file_overrides() {
        let dir = std::env::temp_dir().join(format!("kwcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k.toml");
        std::fs::write(&f, "[limits]\nmax_message_bytes = \"1KiB\"\n").unwrap();
        let c = Config::load(Some(&f), std::iter::empty()).unwrap();
        assert_eq!(c.limits.max_message_bytes.0, 1024);
        std::fs::write(&f, "[limits]\nmax_mesage_bytes = 1\n").unwrap();
        assert!(Config::load(Some(&f), std::iter::empty()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
