//! The configuration schema. Defaults live in the shipped, commented `kateway.toml`, which is
//! compiled in as the base layer; a user file overrides any subset; `KATEWAY_<SECTION>_<KEY>`
//! environment variables override both. Validation names the key and its allowed range.
//!
//! Here: the schema; `layers` merges the layers into one tree of settings ([`tree`]),
//! `validate` checks the ranges ([`Config::validate`]).

mod layers;
#[cfg(test)]
mod tests;
mod validate;

pub(crate) use layers::merge;
pub use layers::tree;

use crate::units::{ByteSize, Dur};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Value;

/// The shipped defaults.
pub const DEFAULT_TOML: &str = include_str!("../../../kateway.toml");

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
    pub max_partitions_per_app: u32,
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
}
