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
    /// How many times header `name` occurs (case-insensitive).
    fn header_count(&self, name: &str) -> usize;
    /// The whole body.
    fn body(&self) -> &Bytes;
}

/// The limits commands are checked against (from the configuration).
#[derive(Debug, Clone)]
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

/// Who is asking: the `Appid` header (authentication comes later).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    appid: Option<&'a str>,
    /// The request named its app more than once (ambiguous: refused).
    repeated: bool,
}

impl<'a> Caller<'a> {
    /// The caller of a request.
    pub fn of(parts: &'a impl Parts) -> Self {
        let appid = parts
            .header("appid")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let repeated = parts.header_count("appid") > 1;
        Self { appid, repeated }
    }

    /// A caller with this app.
    pub fn app(appid: &'a str) -> Self {
        Self {
            appid: Some(appid),
            repeated: false,
        }
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
        Ok(a)
    }
}

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
    /// With `ack=1`: `X-Partition`/`X-Offset`, the last message the client finished.
    pub ack: Option<(u32, u64)>,
    /// `X-Tag`: deliver only messages with one of these.
    pub tags: Vec<Bytes>,
    pub format: RecordFormat,
}

/// `PUT /v1/offsets/:appid/:topic/:ver/:group`: `[{"partition","offset"}]`, the last processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBatch<'a> {
    pub topic: TopicPath<'a>,
    pub group: &'a str,
    pub acks: Vec<(u32, u64)>,
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

/// A typed API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Alive,
    Ready,
    Metrics,
    ProcessStatus,
    Publish(Publish<'a>),
    Subscribe(Subscribe<'a>),
    AckBatch(AckBatch<'a>),
    Seek(Seek<'a>),
    TopicAdmin(TopicAdmin<'a>),
    Partitions(TopicPath<'a>),
    /// `GET /v1/status/:appid/:topic/:ver?group=`: the caller's groups (all without `group`).
    TopicStatus {
        topic: TopicPath<'a>,
        group: Option<&'a str>,
    },
}

impl Command<'_> {
    /// Whether answering may wait for messages (a long poll): such a request is watched for the
    /// client going away.
    pub fn may_park(&self) -> bool {
        matches!(self, Command::Subscribe(s) if !s.wait.is_zero())
    }
}

impl<'a> Command<'a> {
    /// Parses a request; 404 for no route, 405 (with `Allow`) for a wrong method, 400/413 for
    /// bad parameters and bodies.
    pub fn parse(parts: &'a impl Parts, limits: &Limits) -> Result<Self, Error> {
        let r = match route(parts.method(), parts.path()) {
            Ok(r) => r,
            Err(RouteError::NotFound) => {
                return Err(Error::new(
                    ErrorKind::UnknownRoute,
                    format!("no route for {}", parts.path()),
                ))
            }
            Err(RouteError::MethodNotAllowed(allow)) => {
                return Err(Error::method_not_allowed(allow))
            }
        };
        let q = parts.query();
        Ok(match r {
            Route::Alive => Command::Alive,
            Route::Ready => Command::Ready,
            Route::Metrics => Command::Metrics,
            Route::ProcessStatus => Command::ProcessStatus,
            Route::Publish { topic, ver } => {
                validate_part("topic", topic)?;
                validate_ver(ver)?;
                Command::Publish(publish(parts, topic, ver, limits)?)
            }
            Route::Subscribe { appid, topic, ver } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                Command::Subscribe(subscribe(parts, topic, limits)?)
            }
            Route::AckBatch {
                appid,
                topic,
                ver,
                group,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                Command::AckBatch(AckBatch {
                    topic,
                    group,
                    acks: ack_list(parts.body())?,
                })
            }
            Route::Seek {
                appid,
                topic,
                ver,
                group,
                partition,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                validate_part("group", group)?;
                let partition = partition
                    .parse()
                    .map_err(|_| bad_ack(format!("partition {partition:?} does not exist")))?;
                if query::raw(q, "time").is_some() {
                    return Err(Error::new(
                        ErrorKind::NotImplemented,
                        "seeking by time is not supported: use offset",
                    ));
                }
                let offset =
                    num(q, "offset")?.ok_or_else(|| Error::param("missing offset parameter"))?;
                Command::Seek(Seek {
                    topic,
                    group,
                    partition,
                    offset,
                })
            }
            Route::Topic {
                method,
                appid,
                topic,
                ver,
            } => {
                let topic = TopicPath::new(appid, topic, ver)?;
                let partitions: Option<u32> = num(q, "partitions")?;
                if partitions.is_some_and(|p| p == 0 || p > 10_000) {
                    return Err(Error::param("partitions must be 1..=10000"));
                }
                let retention_bytes = match query::raw(q, "retention.bytes") {
                    None => None,
                    Some(v) => Some(parse_size(v).map_err(Error::param)?),
                };
                Command::TopicAdmin(TopicAdmin {
                    op: match method {
                        Method::Post => TopicOp::Create,
                        Method::Put => TopicOp::Alter,
                        _ => TopicOp::Delete,
                    },
                    topic,
                    partitions,
                    retention_hours: num(q, "retention.hours")?,
                    retention_bytes,
                })
            }
            Route::Partitions { appid, topic, ver } => {
                Command::Partitions(TopicPath::new(appid, topic, ver)?)
            }
            Route::TopicStatus { appid, topic, ver } => {
                let group = query::raw(q, "group").filter(|g| !g.is_empty());
                if let Some(g) = group {
                    validate_part("group", g)?;
                }
                Command::TopicStatus {
                    topic: TopicPath::new(appid, topic, ver)?,
                    group,
                }
            }
        })
    }
}

fn bad_ack(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidAck, msg)
}

fn too_large(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, msg)
}

fn num<T: std::str::FromStr>(q: &str, name: &str) -> Result<Option<T>, Error> {
    match query::raw(q, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::param(format!("invalid {name} {v:?}"))),
    }
}

fn parse_ack(q: &str) -> Result<Ack, Error> {
    let ack = match query::raw(q, "ack") {
        None | Some("all") => Ack::All,
        Some("local") => Ack::Local,
        Some(other) => {
            return Err(Error::param(format!(
                "invalid ack {other:?}: use all or local"
            )))
        }
    };
    Ok(match query::raw(q, "async") {
        Some("1") | Some("true") => Ack::Async,
        None | Some("0") | Some("false") => ack,
        Some(other) => return Err(Error::param(format!("invalid async {other:?}: use 1"))),
    })
}

fn check_key(k: &[u8], max: usize) -> Result<(), Error> {
    if k.len() > max {
        return Err(Error::param(format!("key longer than {max} bytes")));
    }
    if std::str::from_utf8(k).is_err() || k.iter().any(|b| b.is_ascii_control()) {
        return Err(Error::param(
            "key must be UTF-8 text without control characters",
        ));
    }
    Ok(())
}

fn publish<'a>(
    parts: &impl Parts,
    topic: &'a str,
    ver: &'a str,
    lim: &Limits,
) -> Result<Publish<'a>, Error> {
    let q = parts.query();
    let ack = parse_ack(q)?;
    if query::raw(q, "delay").is_some() || query::raw(q, "due").is_some() {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            "delayed messages are not supported yet",
        ));
    }
    let key = match query::get(q, "key")
        .map_err(|_| Error::param("key is not valid percent-encoding"))?
    {
        None => None,
        Some(k) => {
            check_key(&k, lim.max_key)?;
            (!k.is_empty()).then(|| Bytes::copy_from_slice(&k))
        }
    };
    let tags = match parts.header("x-tag") {
        Some(t) if t.len() > lim.max_tag => {
            return Err(Error::param(format!(
                "X-Tag longer than {} bytes",
                lim.max_tag
            )))
        }
        Some(t) => Bytes::copy_from_slice(t.trim_ascii()),
        None => Bytes::new(),
    };
    let ctype = parts.header("content-type").map(|c| {
        let c = c.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        if c.eq_ignore_ascii_case(batch::NDJSON.as_bytes()) {
            Some(batch::NDJSON)
        } else if c.eq_ignore_ascii_case(batch::BINARY.as_bytes()) {
            Some(batch::BINARY)
        } else {
            None
        }
    });
    let body = parts.body();
    let messages = match ctype.flatten() {
        Some(format) => {
            if body.len() > lim.max_batch_bytes {
                return Err(too_large(format!(
                    "batch larger than {} bytes",
                    lim.max_batch_bytes
                )));
            }
            let (max_n, max_msg) = (lim.max_batch_messages, lim.max_message);
            let parsed = if format == batch::NDJSON {
                batch::parse_ndjson(body, max_n, max_msg)
            } else {
                batch::parse_binary(body, max_n, max_msg, lim.max_key)
            };
            let items = parsed.map_err(|e| match e {
                BatchError::TooMany => too_large(format!("more than {max_n} messages in a batch")),
                BatchError::MessageTooLarge { index } => too_large(format!(
                    "message {index} of the batch is larger than {max_msg} bytes"
                )),
                BatchError::Empty => Error::new(ErrorKind::InvalidBatch, "empty batch"),
                BatchError::Invalid { index, reason } => Error::new(
                    ErrorKind::InvalidBatch,
                    format!("invalid batch at message {index}: {reason}"),
                ),
            })?;
            for it in &items {
                if let Some(k) = &it.key {
                    check_key(k, lim.max_key)?;
                }
            }
            Messages::Batch(items)
        }
        None => {
            if body.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidBody,
                    "empty message: the body is the message",
                ));
            }
            if body.len() > lim.max_message {
                return Err(too_large(format!(
                    "message larger than {} bytes",
                    lim.max_message
                )));
            }
            Messages::One(body.clone())
        }
    };
    Ok(Publish {
        topic,
        ver,
        ack,
        key,
        tags,
        messages,
    })
}

fn subscribe<'a>(
    parts: &'a impl Parts,
    topic: TopicPath<'a>,
    lim: &Limits,
) -> Result<Subscribe<'a>, Error> {
    let q = parts.query();
    let group = match query::raw(q, "group") {
        None | Some("") => {
            return Err(Error::new(
                ErrorKind::MissingGroup,
                "missing group parameter",
            ))
        }
        Some(g) => {
            validate_part("group", g)?;
            g
        }
    };
    let batch = match query::raw(q, "batch") {
        None => None,
        Some(b) => match b.parse::<usize>() {
            Ok(n) if n >= 1 && n <= lim.max_subscribe_batch => Some(n),
            _ => {
                return Err(Error::param(format!(
                    "invalid batch {b:?}: use 1..={}",
                    lim.max_subscribe_batch
                )))
            }
        },
    };
    let wait = match query::raw(q, "wait") {
        None => lim.default_wait,
        Some(w) => match parse_duration(w) {
            Ok(d) if d <= lim.max_wait => d,
            _ => {
                return Err(Error::param(format!(
                    "invalid wait {w:?}: a duration up to {:?}",
                    lim.max_wait
                )))
            }
        },
    };
    let reset = match query::raw(q, "reset") {
        None | Some("oldest") => Reset::Oldest,
        Some("newest") => Reset::Newest,
        Some(r) => {
            return Err(Error::param(format!(
                "invalid reset {r:?}: use newest or oldest"
            )))
        }
    };
    let explicit = matches!(query::raw(q, "ack"), Some("1") | Some("true"));
    let ack = if explicit { ack_headers(parts)? } else { None };
    let ndjson = parts.header("accept").is_some_and(|a| {
        a.windows(batch::NDJSON.len())
            .any(|w| w == batch::NDJSON.as_bytes())
    });
    Ok(Subscribe {
        topic,
        group,
        batch,
        wait,
        reset,
        explicit,
        ack,
        tags: parts
            .header("x-tag")
            .map(kateway_core::message::parse_tags)
            .unwrap_or_default(),
        format: if ndjson {
            RecordFormat::NdJson
        } else {
            RecordFormat::Binary
        },
    })
}

/// `X-Partition`/`X-Offset` of an explicit ack: both or neither; `-1/-1` means nothing.
fn ack_headers(parts: &impl Parts) -> Result<Option<(u32, u64)>, Error> {
    let text = |n| {
        parts
            .header(n)
            .map(|v| std::str::from_utf8(v).map(str::trim).unwrap_or("?"))
    };
    let (p, o) = match (text("x-partition"), text("x-offset")) {
        (None, None) => return Ok(None),
        (Some(p), Some(o)) => (p, o),
        _ => return Err(bad_ack("partial ack: send both X-Partition and X-Offset")),
    };
    let p: i64 = p.parse().map_err(|_| bad_ack("ack with bad partition"))?;
    let o: i64 = o.parse().map_err(|_| bad_ack("ack with bad offset"))?;
    if p == -1 && o == -1 {
        return Ok(None);
    }
    if p < 0 || p > u32::MAX as i64 || o < 0 {
        return Err(bad_ack(format!(
            "ack names partition {p} offset {o}, which does not exist"
        )));
    }
    Ok(Some((p as u32, o as u64)))
}

/// The body of a batch acknowledgement: `[{"partition":p,"offset":o}, ...]`.
fn ack_list(body: &[u8]) -> Result<Vec<(u32, u64)>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        partition: u32,
        offset: u64,
    }
    let items: Vec<Item> = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::InvalidBody,
            format!("invalid ack json body: {e}"),
        )
    })?;
    if items.is_empty() {
        return Err(Error::new(ErrorKind::InvalidBody, "empty ack list"));
    }
    Ok(items.into_iter().map(|i| (i.partition, i.offset)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P {
        method: Method,
        path: String,
        query: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    }

    impl Parts for P {
        fn method(&self) -> Method {
            self.method
        }
        fn path(&self) -> &str {
            &self.path
        }
        fn query(&self) -> &str {
            &self.query
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| &v[..])
        }
        fn header_count(&self, name: &str) -> usize {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .count()
        }
        fn body(&self) -> &Bytes {
            &self.body
        }
    }

    fn req(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> P {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        P {
            method,
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_message: 16,
            max_key: 8,
            max_tag: 16,
            max_batch_messages: 3,
            max_batch_bytes: 64,
            max_subscribe_batch: 100,
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
        }
    }

    fn parse(p: &P) -> Result<Command<'_>, Error> {
        Command::parse(p, &limits())
    }

    #[test]
    fn publishes() {
        let p = req(
            Method::Post,
            "/v1/msgs/t/v1?key=k&ack=local",
            &[("X-Tag", " a;b ")],
            b"hi",
        );
        let Command::Publish(c) = parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.topic, c.ver, c.ack, c.key.as_deref(), &c.tags[..]),
            ("t", "v1", Ack::Local, Some(&b"k"[..]), &b"a;b"[..])
        );
        assert_eq!(c.messages, Messages::One(Bytes::from_static(b"hi")));
        let p = req(
            Method::Post,
            "/v1/msgs/t/v1",
            &[("content-type", "application/x-ndjson; charset=utf-8")],
            b"a\nb\n",
        );
        let Command::Publish(c) = parse(&p).unwrap() else {
            panic!()
        };
        assert!(matches!(c.messages, Messages::Batch(ref v) if v.len() == 2));
        let code = |p: &P| parse(p).unwrap_err().kind().code();
        assert_eq!(code(&req(Method::Post, "/v1/msgs/t/v1", &[], b"")), 40006);
        assert_eq!(
            code(&req(Method::Post, "/v1/msgs/t/v1", &[], &[b'x'; 17])),
            41300
        );
        assert_eq!(
            code(&req(
                Method::Post,
                "/v1/msgs/t/v1?key=toolongkey",
                &[],
                b"x"
            )),
            40002
        );
        assert_eq!(
            code(&req(Method::Post, "/v1/msgs/t/v1?ack=maybe", &[], b"x")),
            40002
        );
        assert_eq!(
            code(&req(Method::Post, "/v1/msgs/t/v1?delay=5", &[], b"x")),
            50100
        );
        assert_eq!(
            code(&req(Method::Post, "/v1/msgs/t.x/v1", &[], b"x")),
            40001
        );
        let nd = [("content-type", "application/x-ndjson")];
        assert_eq!(
            code(&req(Method::Post, "/v1/msgs/t/v1", &nd, b"a\nb\nc\nd\n")),
            41300
        );
        assert_eq!(
            code(&req(Method::Get, "/v1/msgs/t/v1", &[], b"")),
            40500,
            "405 for a wrong method"
        );
        assert_eq!(
            parse(&req(Method::Get, "/v1/msgs/t/v1", &[], b""))
                .unwrap_err()
                .allow(),
            Some("POST")
        );
        assert_eq!(code(&req(Method::Get, "/nope", &[], b"")), 40401);
    }

    #[test]
    fn subscribes() {
        let h = [
            ("X-Partition", "2"),
            ("X-Offset", "7"),
            ("Accept", "application/x-ndjson"),
        ];
        let p = req(
            Method::Get,
            "/v1/msgs/a/t/v1?group=g&batch=10&wait=2s&reset=newest&ack=1",
            &h,
            b"",
        );
        let c = parse(&p).unwrap();
        assert!(c.may_park());
        let Command::Subscribe(s) = c else { panic!() };
        assert_eq!(
            (s.group, s.batch, s.wait, s.reset, s.explicit, s.ack, s.format),
            (
                "g",
                Some(10),
                Duration::from_secs(2),
                Reset::Newest,
                true,
                Some((2, 7)),
                RecordFormat::NdJson
            )
        );
        let code = |t: &str, h: &[(&str, &str)]| {
            parse(&req(Method::Get, t, h, b""))
                .unwrap_err()
                .kind()
                .code()
        };
        assert_eq!(code("/v1/msgs/a/t/v1", &[]), 40004);
        assert_eq!(code("/v1/msgs/a/t/v1?group=g&batch=0", &[]), 40002);
        assert_eq!(code("/v1/msgs/a/t/v1?group=g&wait=2h", &[]), 40002);
        assert_eq!(
            code("/v1/msgs/a/t/v1?group=g&ack=1", &[("X-Partition", "1")]),
            40005
        );
        assert_eq!(
            code(
                "/v1/msgs/a/t/v1?group=g&ack=1",
                &[("X-Partition", "-2"), ("X-Offset", "1")]
            ),
            40005
        );
        let p = req(Method::Get, "/v1/msgs/a/t/v1?group=g&wait=0s", &[], b"");
        assert!(!parse(&p).unwrap().may_park());
    }

    #[test]
    fn acks_seeks_and_topics() {
        let p = req(
            Method::Put,
            "/v1/offsets/a/t/v1/g",
            &[],
            br#"[{"partition":1,"offset":5}]"#,
        );
        assert_eq!(
            parse(&p).unwrap(),
            Command::AckBatch(AckBatch {
                topic: TopicPath {
                    appid: "a",
                    topic: "t",
                    ver: "v1"
                },
                group: "g",
                acks: vec![(1, 5)]
            })
        );
        for bad in [&b"[]"[..], b"{", br#"[{"partition":1}]"#] {
            let p = req(Method::Put, "/v1/offsets/a/t/v1/g", &[], bad);
            assert_eq!(parse(&p).unwrap_err().kind().code(), 40006);
        }
        let p = req(Method::Put, "/v1/offset/a/t/v1/g/3?offset=9", &[], b"");
        assert!(matches!(
            parse(&p).unwrap(),
            Command::Seek(Seek {
                partition: 3,
                offset: 9,
                ..
            })
        ));
        let p = req(Method::Put, "/v1/offset/a/t/v1/g/3?time=9", &[], b"");
        assert_eq!(parse(&p).unwrap_err().kind().code(), 50100);
        let p = req(Method::Put, "/v1/offset/a/t/v1/g/x?offset=1", &[], b"");
        assert_eq!(parse(&p).unwrap_err().kind().code(), 40005);
        let p = req(
            Method::Post,
            "/v1/topics/a/t/v1?partitions=4&retention.bytes=1MiB&retention.hours=2",
            &[],
            b"",
        );
        let Command::TopicAdmin(t) = parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.op, t.partitions, t.retention_bytes, t.retention_hours),
            (TopicOp::Create, Some(4), Some(1 << 20), Some(2))
        );
        let p = req(Method::Post, "/v1/topics/a/t/v1?partitions=0", &[], b"");
        assert_eq!(parse(&p).unwrap_err().kind().code(), 40002);
    }

    #[test]
    fn callers() {
        let p = req(Method::Get, "/alive", &[("Appid", " app1 ")], b"");
        assert_eq!(Caller::of(&p).appid().unwrap(), "app1");
        let p = req(Method::Get, "/alive", &[], b"");
        assert_eq!(Caller::of(&p).appid().unwrap_err().kind().code(), 40007);
        let p = req(Method::Get, "/alive", &[("Appid", "a.b")], b"");
        assert_eq!(Caller::of(&p).appid().unwrap_err().kind().code(), 40001);
    }
}
