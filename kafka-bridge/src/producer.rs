//! Per-core producers and delivery futures.

use crate::{BridgeConfig, BridgeError};
use kateway_core::Ack;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The record header that carries a message's tags (`a;b`), as sent in `X-Tag`.
pub const TAGS_HEADER: &str = "kateway-tags";

/// The tags a consumed record carries in its [`TAGS_HEADER`] header (empty without one).
pub fn tags_of(m: &impl rdkafka::message::Message) -> Vec<u8> {
    use rdkafka::message::Headers;
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == TAGS_HEADER)
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        })
        .unwrap_or_default()
}

/// Notices librdkafka reporting brokers unreachable, so that the gateway can stop sending
/// before its messages time out.
#[derive(Clone, Default)]
struct Watch {
    down: Arc<AtomicBool>,
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        // "All brokers down", or a failed attempt to connect to a broker (refused, timed out):
        // not a broker that closed an idle connection.
        let down = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => true,
            Some(RDKafkaErrorCode::BrokerTransportFailure) => reason.contains("Connect to"),
            _ => false,
        };
        if down {
            self.down.store(true, Ordering::Release);
        }
        tracing::debug!(%error, reason, "librdkafka producer error");
    }

    fn stats(&self, st: rdkafka::Statistics) {
        let eos = st
            .eos
            .as_ref()
            .map(|e| format!("{} for {} ms", e.idemp_state, e.idemp_stateage))
            .unwrap_or_default();
        let brokers: Vec<String> = st
            .brokers
            .values()
            .map(|b| {
                format!(
                    "{} {} out {} wait {}",
                    b.name, b.state, b.outbuf_cnt, b.waitresp_cnt
                )
            })
            .collect();
        let parts: Vec<String> = st
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0)
                    .map(move |p| {
                        format!(
                            "{}/{} q {} xmit {} inflight {}",
                            t.topic, p.partition, p.msgq_cnt, p.xmit_msgq_cnt, p.msgs_inflight
                        )
                    })
            })
            .collect();
        tracing::debug!(client = %st.name, eos, ?brokers, ?parts, "librdkafka statistics");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(fac, "librdkafka: {log_message}")
            }
            L::Warning => tracing::warn!(fac, "librdkafka: {log_message}"),
            _ => tracing::debug!(fac, "librdkafka: {log_message}"),
        }
    }
}

/// One core's producers.
pub struct Producer {
    all: FutureProducer<Watch>,
    local: FutureProducer<Watch>,
    watch: Watch,
    brokers: String,
}

fn client(
    cfg: &BridgeConfig,
    acks: &str,
    suffix: &str,
    watch: &Watch,
) -> Result<FutureProducer<Watch>, BridgeError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-{suffix}", cfg.client_id))
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if acks == "all" { "true" } else { "false" },
        )
        .set("partitioner", "murmur2_random")
        .set("linger.ms", cfg.linger.as_millis().to_string())
        // 0 = never give up on a message: the gateway decides when to stop waiting, and a
        // message it stopped waiting for is still delivered at most once.
        .set(
            "message.timeout.ms",
            cfg.message_timeout.as_millis().to_string(),
        )
        .set(
            "request.timeout.ms",
            cfg.request_timeout.as_millis().max(1).to_string(),
        )
        .set("compression.type", "none")
        // A broker that was frozen or fenced can answer metadata listing no brokers, which
        // makes librdkafka forget every broker it knew; bootstrap again soon instead of after
        // the default five minutes.
        .set(
            "metadata.recovery.rebootstrap.trigger.ms",
            crate::REBOOTSTRAP_MS,
        )
        // Find a restarted broker within a second rather than librdkafka's default ten.
        .set("reconnect.backoff.max.ms", "1000");
    if let Ok(debug) = std::env::var(crate::DEBUG_ENV) {
        c.set("debug", debug).set("statistics.interval.ms", "2000");
    }
    c.create_with_context(watch.clone())
        .map_err(BridgeError::from_kafka)
}

impl Producer {
    /// Creates the producers (no connection is made until the first send).
    pub fn new(cfg: &BridgeConfig, core: usize) -> Result<Self, BridgeError> {
        let watch = Watch::default();
        Ok(Self {
            all: client(cfg, "all", &format!("{core}-all"), &watch)?,
            local: client(cfg, "1", &format!("{core}-local"), &watch)?,
            watch,
            brokers: cfg.brokers.clone(),
        })
    }

    /// Whether librdkafka reported every broker down, or failed to connect to one, since the
    /// last call (and forgets it).
    /// Messages already queued still wait for their timeout; new ones need not be sent.
    pub fn take_brokers_down(&self) -> bool {
        self.watch.down.swap(false, Ordering::AcqRel)
    }

    /// Enqueues a message for `partition` (or Kafka's partitioner when `None`: murmur2 of the
    /// key, random without one). Never blocks.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        tags: &[u8],
        value: &[u8],
        ack: Ack,
    ) -> Result<Delivery, BridgeError> {
        self.send_at(topic, partition, key, tags, value, None, ack)
    }

    /// [`Producer::send`] with the record's timestamp (ms since the epoch) set explicitly, as
    /// when a buffered message is replayed with the time it was published.
    #[allow(clippy::too_many_arguments)]
    pub fn send_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        tags: &[u8],
        value: &[u8],
        timestamp: Option<i64>,
        ack: Ack,
    ) -> Result<Delivery, BridgeError> {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(value);
        if let Some(ts) = timestamp {
            rec = rec.timestamp(ts);
        }
        if !key.is_empty() {
            rec = rec.key(key);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if !tags.is_empty() {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: TAGS_HEADER,
                value: Some(tags),
            }));
        }
        let producer = if ack == Ack::All {
            &self.all
        } else {
            &self.local
        };
        match producer.send_result(rec) {
            Ok(f) if ack == Ack::Async => {
                drop(f);
                Ok(Delivery::Queued)
            }
            Ok(f) => Ok(Delivery::Pending(f)),
            Err((e, _)) => Err(BridgeError::from_kafka(e)),
        }
    }

    /// Gives the producers their bootstrap brokers again (see `native.rs`): for a
    /// producer that stopped making progress. Returns how many brokers were new to them.
    pub fn rebootstrap(&self) -> i32 {
        use rdkafka::producer::Producer as _;
        crate::native::add_brokers(self.all.client(), &self.brokers)
            + crate::native::add_brokers(self.local.client(), &self.brokers)
    }

    /// The fatal error the producers are in, if any: a producer in that state delivers nothing
    /// again and must be replaced.
    pub fn fatal_error(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        [&self.all, &self.local]
            .iter()
            .find_map(|p| p.client().fatal_error())
            .map(|(code, why)| format!("{code:?}: {why}"))
    }

    /// Waits until every queued message was delivered or failed, at most `timeout`.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<(), BridgeError> {
        use rdkafka::producer::Producer as _;
        self.all.flush(timeout).map_err(BridgeError::from_kafka)?;
        self.local.flush(timeout).map_err(BridgeError::from_kafka)
    }
}

/// The outcome of a send: a future of `(partition, offset)`.
pub enum Delivery {
    /// Waiting for the delivery report.
    Pending(DeliveryFuture),
    /// Fire-and-forget: resolves at once with offset -1.
    Queued,
}

impl Future for Delivery {
    type Output = Result<(i32, i64), BridgeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Delivery::Queued => Poll::Ready(Ok((-1, -1))),
            Delivery::Pending(f) => match Pin::new(f).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_canceled)) => {
                    Poll::Ready(Err(BridgeError::Unavailable("producer closed".into())))
                }
                Poll::Ready(Ok(Ok(d))) => Poll::Ready(Ok((d.partition, d.offset))),
                Poll::Ready(Ok(Err((e, _)))) => Poll::Ready(Err(BridgeError::from_kafka(e))),
            },
        }
    }
}
