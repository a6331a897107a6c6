//! Commands: a request's parts (method, path, query, headers, body) turned into a typed API call
//! with every parameter parsed and checked against the limits. No I/O and no transport: HTTP/1.1
//! (and any later protocol) only has to expose its requests as [`Parts`]. The caller's identity
//! is a [`Caller`], kept apart from the command. Names are validated here; what needs the topic
//! (does it exist, is a partition in range) is the handlers' business.

use crate::batch::{self, BatchError, BatchItem};
use crate::http1::Method;
use crate::query;
use crate::reply::RecordFormat;
use crate::route::{route, Route, RouteError};
use bytes::Bytes;
use kateway_core::names::{validate_part, validate_ver};
use kateway_core::units::{parse_duration, parse_size};
use kateway_core::{Ack, Error, ErrorKind, Reset};
use parse::{ack_list, bad_ack, num, publish, publish_template, redrive_target, subscribe};
use settle::settle;

mod admin;
mod need;
mod parse;
mod request;
mod settle;
#[cfg(test)]
mod tests;
pub use admin::{Admin, DEFAULT_GRACE};
pub use settle::{settle_frame, settle_json, MAX_RECEIPTS};
use std::time::Duration;

/// What a transport exposes of a request.
pub trait Parts {
    fn method(&self) -> Method;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The raw query string, or "".
    fn query(&self) -> &str;
    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The first value of header `name` (case-insensitive), and whether it occurs again.
    fn header_first(&self, name: &str) -> (Option<&[u8]>, bool);
    /// The whole body.
    fn body(&self) -> &Bytes;
}

/// The limits commands are checked against (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message: usize,
    pub max_key: usize,
    pub max_tag: usize,
    pub max_batch_messages: usize,
    pub max_batch_bytes: usize,
    pub max_subscribe_batch: usize,
    pub default_wait: Duration,
    pub max_wait: Duration,
}

/// Who is asking: the app of the key the request authenticated with; or, with authentication
/// off, the `Appid` header (or the `appid` query parameter where a client cannot set headers).
/// It also carries the principal and the client address, for the audit list.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    appid: Option<&'a str>,
    /// The request named its app more than once (ambiguous: refused).
    repeated: bool,
    principal: Option<&'a kateway_core::tenancy::Principal>,
    ip: Option<std::net::IpAddr>,
}

impl<'a> Caller<'a> {
    /// The caller of a request.
    pub fn of(parts: &'a impl Parts) -> Self {
        let (appid, repeated) = parts.header_first("appid");
        // A value that is not text is an invalid name (it is there), not a missing one.
        let appid = appid
            .map(|v| std::str::from_utf8(v).map_or("\u{fffd}", str::trim))
            .filter(|s| !s.is_empty())
            // Browsers cannot set headers on an EventSource or a WebSocket: `appid=` then.
            .or_else(|| query::raw(parts.query(), "appid").filter(|s| !s.is_empty()));
        Self {
            appid,
            repeated,
            principal: None,
            ip: None,
        }
    }

    /// A caller with this app.
    pub fn app(appid: &'a str) -> Self {
        Self {
            appid: Some(appid),
            repeated: false,
            principal: None,
            ip: None,
        }
    }

    /// The caller authenticated as `principal` (if any), from `ip`.
    pub fn with(
        mut self,
        principal: Option<&'a kateway_core::tenancy::Principal>,
        ip: std::net::IpAddr,
    ) -> Self {
        self.principal = principal;
        self.ip = Some(ip);
        self
    }

    /// The principal, when the request authenticated.
    pub fn principal(&self) -> Option<&'a kateway_core::tenancy::Principal> {
        self.principal
    }

    /// Who the audit list names: the principal, or `open:<appid>` with authentication off.
    pub fn actor(&self) -> String {
        match self.principal {
            Some(p) => p.actor(),
            None => format!("open:{}", self.appid.unwrap_or("-")),
        }
    }

    /// The client's address.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.ip
    }

    /// The caller's app, validated; 400 when the request did not say.
    pub fn appid(&self) -> Result<&'a str, Error> {
        if self.repeated {
            return Err(Error::new(
                ErrorKind::InvalidParam,
                "the Appid header is given more than once",
            ));
        }
        let a = self
            .appid
            .ok_or_else(|| Error::new(ErrorKind::MissingHeader, "missing Appid header"))?;
        validate_part("appid", a)?;
        if a == RESERVED_APP {
            return Err(Error::new(
                ErrorKind::Forbidden,
                format!("app {RESERVED_APP} is the gateway's own"),
            ));
        }
        Ok(a)
    }
}

/// The app that owns the gateway's internal topics (the delay log): no caller acts as it.
pub const RESERVED_APP: &str = "_kgw";

/// A topic named in a path: `(appid, topic, ver)`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPath<'a> {
    pub appid: &'a str,
    pub topic: &'a str,
    pub ver: &'a str,
}

impl<'a> TopicPath<'a> {
    fn new(appid: &'a str, topic: &'a str, ver: &'a str) -> Result<Self, Error> {
        validate_part("appid", appid)?;
        validate_part("topic", topic)?;
        validate_ver(ver)?;
        Ok(Self { appid, topic, ver })
    }
}

/// The messages of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Messages {
    /// The body is the message.
    One(Bytes),
    /// A batch body, split.
    Batch(Vec<BatchItem>),
}

/// `POST /v1/msgs/:topic/:ver`: publish to one of the caller's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The topic within the caller's app, and its version.
    pub topic: &'a str,
    pub ver: &'a str,
    pub ack: Ack,
    /// `key=`: the partition key for every message without a key of its own.
    pub key: Option<Bytes>,
    /// `X-Tag`.
    pub tags: Bytes,
    pub messages: Messages,
    /// `Idempotency-Key`: a retry within the window answers the first publish's results.
    pub idempotency_key: Option<String>,
    /// `delay=` or `X-Deliver-At`: the messages wait in the delay log until then.
    pub due: Option<Due>,
}

/// `GET /v1/msgs/:appid/:topic/:ver?group=`: long-poll a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub topic: TopicPath<'a>,
    /// The group within the caller's app.
    pub group: &'a str,
    /// `batch=N`; `None` for one message as the body.
    pub batch: Option<usize>,
    pub wait: Duration,
    pub reset: Reset,
    /// `ack=1`: delivery does not commit.
    pub explicit: bool,
    /// `ack=lease`: each message is leased (see [`Leasing`]).
    pub lease: Option<Leasing>,
    /// With `ack=1`: `X-Partition`/`X-Offset`, the last message the client finished.
    pub ack: Option<(u32, u64)>,
    /// `X-Tag`: deliver only messages with one of these.
    pub tags: Vec<Bytes>,
    pub format: RecordFormat,
    /// `Accept: text/event-stream`: stream messages as server-sent events.
    pub events: bool,
    /// `Last-Event-ID` (or `lastEventId=`) of an event stream: `partition:offset` of the last
    /// message the client received; the group resumes right after it on that partition.
    pub resume: Option<(u32, u64)>,
}

/// `ack=lease`: each message is delivered with a receipt and leased for `visibility=` (the
/// configured default without it); one not acked by then is delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leasing {
    pub visibility: Option<Duration>,
}

/// `PUT /v1/offsets/:appid/:topic/:ver/:group`: `[{"partition","offset"}]`, the last processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBatch<'a> {
    pub topic: TopicPath<'a>,
    pub group: &'a str,
    pub acks: Vec<(u32, u64)>,
}

/// What a settle does with each leased message it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOp {
    /// Done: never delivered again.
    Ack,
    /// Failed: delivered again after `delay` (the group's backoff without one), or moved to the
    /// dead-letter topic once its attempts are spent.
    Nack,
    /// Still being worked on: the lease ends `visibility` from now.
    Extend,
    /// Moved to the dead-letter topic now.
    Bury,
}

impl SettleOp {
    /// `ack`, `nack`, `extend` or `bury`.
    pub fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "ack" => SettleOp::Ack,
            "nack" => SettleOp::Nack,
            "extend" => SettleOp::Extend,
            "bury" => SettleOp::Bury,
            _ => return None,
        })
    }
}

/// `POST /v1/queue/:appid/:topic/:ver/:group/:op` with `{"receipts":[...]}` (and `delay`,
/// `visibility`, `error`), or one receipt in `X-Receipt` (and those in the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle<'a> {
    pub topic: TopicPath<'a>,
    pub group: &'a str,
    pub op: SettleOp,
    pub receipts: Vec<String>,
    /// A batch receipt (`X-Batch-Receipt` of a leased batch): every message it names, after
    /// `receipts`.
    pub batch: Option<String>,
    /// Nack: how long until the message is delivered again.
    pub delay: Option<Duration>,
    /// Extend: the lease's new length from now.
    pub visibility: Option<Duration>,
    /// Nack and bury: why the attempt failed (kept with a dead letter).
    pub error: Option<String>,
}

/// What a dead-letter call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterOp<'a> {
    /// How many dead letters wait.
    Count,
    /// Up to `max` of them, without taking them.
    Peek { max: usize },
    /// Publishes up to `max` of them again (to their origin topics, or to topic `to` of the
    /// app) and takes them.
    Redrive {
        max: usize,
        to: Option<TopicPath<'a>>,
    },
    /// Takes every one without publishing it.
    Purge,
}

/// `/v1/dlq/:appid/:group[/messages|/redrive]`: the dead letters of app `appid`'s group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetters<'a> {
    pub appid: &'a str,
    pub group: &'a str,
    pub op: DeadLetterOp<'a>,
}

/// `PUT /v1/offset/:appid/:topic/:ver/:group/:partition?offset=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seek<'a> {
    pub topic: TopicPath<'a>,
    pub group: &'a str,
    pub partition: u32,
    /// The next offset to consume.
    pub offset: u64,
}

/// What a topic administration call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOp {
    Create,
    Alter,
    Delete,
}

/// `POST|PUT|DELETE /v1/topics/:appid/:topic/:ver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAdmin<'a> {
    pub op: TopicOp,
    pub topic: TopicPath<'a>,
    pub partitions: Option<u32>,
    pub retention_hours: Option<u64>,
    pub retention_bytes: Option<u64>,
}

/// A WebSocket route: the transport upgrades the connection and runs the socket (each message
/// a publish like the template's, or a push subscription); without an upgrade it is a 426.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket<'a> {
    /// Every message is published with the template's topic, ack level, key and tags (its
    /// `messages` are empty: each WebSocket message is one).
    Publish(Publish<'a>),
    /// Messages are pushed as they arrive.
    Subscribe(Subscribe<'a>),
}

/// The longest retention a topic may ask for (100 years, in hours).
pub const MAX_RETENTION_HOURS: u64 = 876_000;

/// A typed API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Alive,
    Ready,
    Metrics,
    /// `GET /openapi.json`
    OpenApi,
    ProcessStatus,
    Publish(Publish<'a>),
    Subscribe(Subscribe<'a>),
    Socket(Socket<'a>),
    AckBatch(AckBatch<'a>),
    Settle(Settle<'a>),
    DeadLetters(DeadLetters<'a>),
    Seek(Seek<'a>),
    TopicAdmin(TopicAdmin<'a>),
    Partitions(TopicPath<'a>),
    /// `GET /v1/status/:appid/:topic/:ver?group=`: the caller's groups (all without `group`).
    TopicStatus {
        topic: TopicPath<'a>,
        group: Option<&'a str>,
    },
    /// The tenancy API.
    Admin(Admin<'a>),
    /// `/v1/delays/:topic/:ver[/:id]`: list, peek or cancel delayed messages.
    Delays(Delays<'a>),
    /// `POST /v1/debug/clock?advance=`: move the delay clock forward (tests only).
    Clock {
        advance: Duration,
    },
    /// `POST /v1/config/reload`: read the configuration again, apply what may change live.
    Reload,
    /// `GET /ui`: the dashboard's page.
    Ui,
    /// `GET /v1/dashboard[?app=A]`: a snapshot, or (`Accept: text/event-stream`) one every
    /// second; with `app`, only that app's topics (for its app-admin key).
    Dashboard {
        events: bool,
        app: Option<&'a str>,
    },
    /// `GET /v1/dashboard/messages/:appid/:topic/:ver?partition=&n=`: the latest `n` messages
    /// of a partition.
    Browse {
        topic: TopicPath<'a>,
        partition: u32,
        n: usize,
    },
    /// `/v1/webhooks/:appid/:topic/:ver/:group[/pause|/resume|/log]`.
    Webhook(Webhook<'a>),
}

impl Command<'_> {
    /// The route's name in metrics labels: one per kind of call.
    pub fn route_name(&self) -> &'static str {
        match self {
            Command::Alive => "alive",
            Command::Ready => "ready",
            Command::Metrics => "metrics",
            Command::OpenApi => "openapi",
            Command::ProcessStatus => "process_status",
            Command::Publish(_) => "publish",
            Command::Subscribe(_) => "subscribe",
            Command::Socket(Socket::Publish(_)) => "ws_publish",
            Command::Socket(Socket::Subscribe(_)) => "ws_subscribe",
            Command::AckBatch(_) => "ack_batch",
            Command::Settle(_) => "settle",
            Command::DeadLetters(_) => "dead_letters",
            Command::Seek(_) => "seek",
            Command::TopicAdmin(_) => "topic_admin",
            Command::Partitions(_) => "partitions",
            Command::TopicStatus { .. } => "topic_status",
            Command::Admin(_) => "tenancy",
            Command::Delays(_) => "delays",
            Command::Clock { .. } => "clock",
            Command::Reload => "config_reload",
            Command::Ui => "ui",
            Command::Dashboard { .. } => "dashboard",
            Command::Browse { .. } => "dashboard_browse",
            Command::Webhook(_) => "webhook",
        }
    }
}

/// A call on the caller's group's webhook on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook<'a> {
    pub topic: TopicPath<'a>,
    pub group: &'a str,
    pub op: WebhookOp,
}

/// What a [`Webhook`] call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOp {
    Get,
    Put(WebhookParams),
    Delete,
    Pause,
    Resume,
    Log,
}

/// A `PUT` body: the endpoint and its settings (each left out takes `[webhook]`'s).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookParams {
    pub url: String,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff_base: Option<String>,
    #[serde(default)]
    pub backoff_max: Option<String>,
    #[serde(default)]
    pub ordered: Option<bool>,
    /// `"oldest"` or `"newest"` (default): where a new subscription starts.
    #[serde(default)]
    pub from: Option<String>,
    /// A new signing secret (the old one stops working at once).
    #[serde(default)]
    pub rotate_secret: bool,
}

/// A call on the delayed messages of one of the caller's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delays<'a> {
    pub topic: &'a str,
    pub ver: &'a str,
    pub op: DelayOp<'a>,
}

/// What a [`Delays`] call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelayOp<'a> {
    /// The pending delays, soonest first, at most `max`.
    List { max: usize },
    /// One pending delay with its message.
    Peek(&'a str),
    /// Cancel one.
    Cancel(&'a str),
}

/// When a publish's messages are to be delivered: `delay=` or `X-Deliver-At`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    After(Duration),
    /// Milliseconds since the Unix epoch.
    At(i64),
}

impl Command<'_> {
    /// Whether answering may wait for messages (a long poll): such a request is watched for the
    /// client going away.
    pub fn may_park(&self) -> bool {
        matches!(self, Command::Subscribe(s) if !s.wait.is_zero() || s.events)
    }

    /// A subscribe that streams server-sent events.
    pub fn events(&self) -> bool {
        matches!(self, Command::Subscribe(s) if s.events)
            || matches!(self, Command::Dashboard { events: true, .. })
    }
}
