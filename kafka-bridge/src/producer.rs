//! Per-core producers and delivery futures.
//!
//! Delivery reports are not handed to a polling thread: each producer's main queue writes to
//! an eventfd when a report arrives ([`Reports::file`]), and whoever owns the producer serves
//! the reports on its own thread ([`Reports::serve`]): the gateway's core from its event loop,
//! so a report resolves its [`Delivery`] and wakes the waiting task without crossing threads;
//! anything else from a thread of its own ([`serve_reports_on_thread`]).
//!
//! A message names its topic by a handle the producer keeps per topic, so librdkafka does not
//! look the name up among every topic the client ever produced to on each message.

use crate::native::{produce, EventFd, MainQueue, Record, TopicHandle};
use crate::{BridgeConfig, BridgeError};
use futures_channel::oneshot;
use kateway_core::Ack;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
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

/// A message's partition and offset, or why it was not delivered.
type Report = Result<(i32, i64), BridgeError>;

impl ProducerContext for Watch {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, r: &DeliveryResult<'_>, to: Self::DeliveryOpaque) {
        let report = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(BridgeError::from_kafka(e.clone())),
        };
        // The waiter may be gone (fire-and-forget, or it stopped waiting): nothing to do.
        let _ = to.send(report);
    }
}

/// The two librdkafka clients of a [`Producer`] and what serves their delivery reports: shared
/// with whatever serves them ([`Reports`]).
struct Clients {
    // Released before the clients (see `Drop`).
    queues: [MainQueue; 2],
    all: BaseProducer<Watch>,
    local: BaseProducer<Watch>,
    reports: EventFd,
    watch: Watch,
}

impl Drop for Clients {
    fn drop(&mut self) {
        // librdkafka must not write to the eventfd once it is closed (its number may be
        // reused).
        for q in &self.queues {
            q.notify(-1);
        }
    }
}

/// One core's producers. Not `Sync`: it keeps a handle on each topic it produced to, so a
/// message names its topic without librdkafka looking the name up; their delivery reports are
/// served through [`Producer::reports`], from any thread.
pub struct Producer {
    // Released before the clients.
    topics: RefCell<HashMap<Box<str>, [Option<TopicHandle>; 2]>>,
    clients: Arc<Clients>,
    brokers: String,
}

/// Serves the delivery reports of a [`Producer`] for as long as it lives.
#[derive(Clone)]
pub struct Reports(Weak<Clients>);

/// Events a [`Reports::serve`] takes from one queue before it lets others run.
const SERVE_BUDGET: usize = 1024;

fn client(
    cfg: &BridgeConfig,
    acks: &str,
    suffix: &str,
    watch: &Watch,
) -> Result<BaseProducer<Watch>, BridgeError> {
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

impl Reports {
    /// The eventfd that becomes readable when delivery reports wait (a descriptor of the
    /// caller's own): read it (resetting it), then call [`Reports::serve`]. It is also
    /// signalled when the producer is dropped. `None` once it was.
    pub fn file(&self) -> Option<std::io::Result<std::fs::File>> {
        self.0.upgrade().map(|c| c.reports.file())
    }

    /// Serves the waiting delivery reports (and error events) on the calling thread: each
    /// resolves its [`Delivery`]. `Some(false)` when it stopped with reports still waiting
    /// (after `SERVE_BUDGET` events of a queue), so that the caller lets other work run and
    /// calls again without waiting for the eventfd; `None` once the producer is gone.
    pub fn serve(&self) -> Option<bool> {
        let c = self.0.upgrade()?;
        let mut drained = true;
        for (q, p) in c.queues.iter().zip([&c.all, &c.local]) {
            let mut budget = SERVE_BUDGET;
            while q.len() > 0 {
                if budget == 0 {
                    drained = false;
                    break;
                }
                p.poll(std::time::Duration::ZERO);
                budget -= 1;
            }
        }
        Some(drained)
    }

    /// Waits at most `timeout` for delivery reports and serves them on the calling thread, for
    /// a thread that does nothing else; false once the producer is gone.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let Some(c) = self.0.upgrade() else {
            return false;
        };
        c.reports.wait(timeout);
        drop(c);
        loop {
            match self.serve() {
                Some(true) => return true,
                Some(false) => continue,
                None => return false,
            }
        }
    }
}

impl Producer {
    /// Creates the producers (no connection is made until the first send).
    pub fn new(cfg: &BridgeConfig, core: usize) -> Result<Self, BridgeError> {
        let watch = Watch::default();
        let all = client(cfg, "all", &format!("{core}-all"), &watch)?;
        let local = client(cfg, "1", &format!("{core}-local"), &watch)?;
        let reports = EventFd::new()
            .map_err(|e| BridgeError::Config(format!("cannot create an eventfd: {e}")))?;
        use rdkafka::producer::Producer as _;
        let queues = [MainQueue::of(all.client()), MainQueue::of(local.client())];
        for q in &queues {
            q.notify(reports.raw());
        }
        // librdkafka writes only when a queue goes from empty to one event: events that came
        // before `notify` (a log line, a connection error) would otherwise never be announced.
        reports.signal();
        Ok(Self {
            topics: RefCell::default(),
            clients: Arc::new(Clients {
                queues,
                all,
                local,
                reports,
                watch,
            }),
            brokers: cfg.brokers.clone(),
        })
    }

    /// What serves this producer's delivery reports.
    pub fn reports(&self) -> Reports {
        Reports(Arc::downgrade(&self.clients))
    }

    /// Whether librdkafka reported every broker down, or failed to connect to one, since the
    /// last call (and forgets it).
    /// Messages already queued still wait for their timeout; new ones need not be sent.
    pub fn take_brokers_down(&self) -> bool {
        self.clients.watch.down.swap(false, Ordering::AcqRel)
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
        use rdkafka::producer::Producer as _;
        let i = usize::from(ack != Ack::All);
        let client = if i == 0 {
            self.clients.all.client()
        } else {
            self.clients.local.client()
        };
        // A handle per client, made when the client first produces to the topic (a client
        // learns, and asks metadata for, every topic it has a handle on).
        let mut topics = self.topics.borrow_mut();
        if topics.get(topic).is_none_or(|h| h[i].is_none()) {
            let h = TopicHandle::new(client, topic)
                .ok_or_else(|| BridgeError::Refused(format!("invalid topic name {topic:?}")))?;
            topics.entry(topic.into()).or_default()[i] = Some(h);
        }
        let Some(handle) = topics.get(topic).and_then(|h| h[i].as_ref()) else {
            return Err(BridgeError::Config(format!("no handle on topic {topic}")));
        };
        let rec = Record {
            partition: partition.unwrap_or(-1),
            key,
            value,
            timestamp: timestamp.unwrap_or(0),
            header: (!tags.is_empty()).then_some((TAGS_HEADER, tags)),
        };
        let (tx, rx) = oneshot::channel::<Report>();
        match produce(client, handle, &rec, Box::new(tx)) {
            Ok(()) if ack == Ack::Async => Ok(Delivery::Queued),
            Ok(()) => Ok(Delivery::Pending(rx)),
            Err((code, _)) => Err(BridgeError::from_kafka(KafkaError::MessageProduction(code))),
        }
    }

    /// Gives the producers their bootstrap brokers again (see `native.rs`): for a
    /// producer that stopped making progress. Returns how many brokers were new to them.
    pub fn rebootstrap(&self) -> i32 {
        use rdkafka::producer::Producer as _;
        crate::native::add_brokers(self.clients.all.client(), &self.brokers)
            + crate::native::add_brokers(self.clients.local.client(), &self.brokers)
    }

    /// The fatal error the producers are in, if any: a producer in that state delivers nothing
    /// again and must be replaced.
    pub fn fatal_error(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        [&self.clients.all, &self.clients.local]
            .iter()
            .find_map(|p| p.client().fatal_error())
            .map(|(code, why)| format!("{code:?}: {why}"))
    }

    /// Waits until every queued message was delivered or failed, at most `timeout`.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<(), BridgeError> {
        use rdkafka::producer::Producer as _;
        self.clients
            .all
            .flush(timeout)
            .map_err(BridgeError::from_kafka)?;
        self.clients
            .local
            .flush(timeout)
            .map_err(BridgeError::from_kafka)
    }
}

/// Serves `reports` on a thread of its own, named `name`, until their producer is dropped: for
/// a producer whose owner has no event loop to read [`Reports::file`] from.
pub fn serve_reports_on_thread(reports: Reports, name: String) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || while reports.wait(std::time::Duration::from_millis(100)) {})
        .map(drop)
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Wakes whoever waits on the eventfd, to find the producer gone.
        self.clients.reports.signal();
    }
}

/// The outcome of a send: a future of `(partition, offset)`, resolved when its delivery report
/// is served.
pub enum Delivery {
    /// Waiting for the delivery report.
    Pending(oneshot::Receiver<Report>),
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
                Poll::Ready(Ok(report)) => Poll::Ready(report),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Reads the producer's eventfd on a thread; the receiver gets `()` once it was signalled.
    fn watch(p: &Producer) -> mpsc::Receiver<()> {
        let mut f = p.reports().file().unwrap().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            if f.read_exact(&mut buf).is_ok() {
                let _ = tx.send(());
            }
        });
        rx
    }

    fn poll_once(d: &mut Delivery) -> Poll<Report> {
        Pin::new(d).poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_report_signals_the_eventfd_and_resolves_only_when_served() {
        let mut cfg = BridgeConfig::new("127.0.0.1:1");
        cfg.message_timeout = Duration::from_millis(300);
        let p = Producer::new(&cfg, 0).unwrap();
        let signalled = watch(&p);
        // The signal `new` sends for events that came before the eventfd was set up.
        signalled.recv_timeout(Duration::from_secs(5)).unwrap();
        while !p.reports().serve().unwrap() {}
        let mut d = p.send("t.v1", Some(0), b"", b"", b"x", Ack::All).unwrap();
        // Connection errors signal too: serve until the delivery's own report came.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            watch(&p)
                .recv_timeout(left)
                .expect("the failed delivery's report signals the eventfd");
            assert!(
                poll_once(&mut d).is_pending(),
                "no one served the report yet"
            );
            while !p.reports().serve().unwrap() {}
            if let Poll::Ready(r) = poll_once(&mut d) {
                let e = r.expect_err("nothing can be delivered to port 1");
                assert!(e.is_unavailable(), "{e}");
                break;
            }
        }
    }

    #[test]
    fn a_topic_is_looked_up_once_and_a_name_librdkafka_refuses_is_an_error() {
        let p = Producer::new(&BridgeConfig::new("127.0.0.1:1"), 0).unwrap();
        for ack in [Ack::All, Ack::Local, Ack::All] {
            p.send("t.v1", Some(0), b"k", b"a;b", b"x", ack).unwrap();
        }
        p.send("u.v1", None, b"", b"", b"", Ack::Async).unwrap();
        assert_eq!(p.topics.borrow().len(), 2);
        // Only the client that produced to a topic has a handle on it.
        assert!(p.topics.borrow()["u.v1"][0].is_none());
        assert!(p.topics.borrow()["u.v1"][1].is_some());
        let e = p
            .send("bad\0name", Some(0), b"", b"", b"x", Ack::All)
            .err()
            .expect("a NUL in a topic name is refused");
        assert!(!e.is_unavailable(), "{e}");
        assert_eq!(p.topics.borrow().len(), 2);
    }

    #[test]
    fn dropping_the_producer_wakes_its_reader() {
        // A "broker" that takes connections and never answers: no error event for seconds.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = BridgeConfig::new(silent.local_addr().unwrap().to_string());
        let p = Producer::new(&cfg, 0).unwrap();
        watch(&p)
            .recv_timeout(Duration::from_secs(5))
            .expect("the signal of `new`");
        while !p.reports().serve().unwrap() {}
        let signalled = watch(&p);
        assert!(signalled.recv_timeout(Duration::from_millis(300)).is_err());
        drop(p);
        signalled
            .recv_timeout(Duration::from_secs(10))
            .expect("dropping signals the eventfd");
    }
}
