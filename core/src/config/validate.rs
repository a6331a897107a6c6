//! Validation of a [`Config`]: ranges and the rules between settings; every message names the
//! key.

use super::*;

impl Config {
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
        range(
            "store.max_partitions_per_app",
            st.max_partitions_per_app.into(),
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
