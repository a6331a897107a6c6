//! Parameter and body parsing for the commands: acknowledgement levels, keys and tags, batch
//! bodies, subscribe options, and acknowledgement lists (settle bodies: `settle`).

use super::*;

/// The prefix of the tags the gateway sets (`kgw-origin`, `kgw-delay`, …), which a publisher may
/// not: a dead letter's `kgw-origin` decides where a redrive publishes it.
const RESERVED_TAG: &[u8] = b"kgw-";

pub(super) fn bad_ack(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidAck, msg)
}

fn too_large(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, msg)
}

pub(super) fn num<T: std::str::FromStr>(q: &str, name: &str) -> Result<Option<T>, Error> {
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

pub(super) fn publish_template<'a>(
    parts: &impl Parts,
    q: &str,
    topic: &'a str,
    ver: &'a str,
    lim: &Limits,
) -> Result<Publish<'a>, Error> {
    let ack = parse_ack(q)?;
    let due = due(parts, q)?;
    let key = match query::get(q, "key")
        .map_err(|_| Error::param("key is not valid percent-encoding"))?
    {
        None => None,
        Some(k) => {
            check_key(&k, lim.max_key)?;
            (!k.is_empty()).then(|| Bytes::copy_from_slice(&k))
        }
    };
    // The X-Tag header, or (browsers cannot set headers on a WebSocket) `tag=` in the query.
    let (tag, name) = match parts.header("x-tag") {
        Some(t) => (Some(std::borrow::Cow::Borrowed(t)), "X-Tag"),
        None => (
            query::get(q, "tag").map_err(|_| Error::param("tag is not valid percent-encoding"))?,
            "tag",
        ),
    };
    let tags = match tag {
        Some(t) if t.len() > lim.max_tag => {
            return Err(Error::param(format!(
                "{name} longer than {} bytes",
                lim.max_tag
            )))
        }
        Some(t) => {
            if let Some(r) = t.split(|&b| b == b';').map(<[u8]>::trim_ascii).find(|t| {
                t.len() >= RESERVED_TAG.len()
                    && t[..RESERVED_TAG.len()].eq_ignore_ascii_case(RESERVED_TAG)
            }) {
                return Err(Error::param(format!(
                    "{name} {:?}: tags starting with kgw- are the gateway's (a dead letter's origin, a delayed message's id)",
                    String::from_utf8_lossy(r)
                )));
            }
            Bytes::copy_from_slice(t.trim_ascii())
        }
        None => Bytes::new(),
    };
    Ok(Publish {
        topic,
        ver,
        ack,
        key,
        tags,
        messages: Messages::One(Bytes::new()),
        idempotency_key: None,
        due,
    })
}

/// `delay=<duration>` or `X-Deliver-At: <RFC 3339 time>`.
fn due(parts: &impl Parts, q: &str) -> Result<Option<Due>, Error> {
    let (at, twice) = parts.header_first("x-deliver-at");
    if twice {
        return Err(Error::param("X-Deliver-At given more than once"));
    }
    match (query::raw(q, "delay"), at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Error::param("give either delay= or X-Deliver-At, not both")),
        (Some(d), None) => kateway_core::units::parse_duration(d)
            .map(|d| Some(Due::After(d)))
            .map_err(|e| Error::param(format!("delay: {e}"))),
        (None, Some(t)) => {
            let t = std::str::from_utf8(t).unwrap_or_default();
            kateway_core::delay::parse_rfc3339(t)
                .map(|ms| Some(Due::At(ms)))
                .ok_or_else(|| {
                    Error::param(format!(
                        "X-Deliver-At {t:?} is no RFC 3339 time (like 2026-12-24T18:00:00Z)"
                    ))
                })
        }
    }
}

/// A publish: its options ([`publish_template`]) and the messages of its body.
pub(super) fn publish<'a>(
    parts: &impl Parts,
    q: &str,
    topic: &'a str,
    ver: &'a str,
    lim: &Limits,
) -> Result<Publish<'a>, Error> {
    let mut p = publish_template(parts, q, topic, ver, lim)?;
    p.idempotency_key = match parts.header("idempotency-key") {
        None => None,
        Some(k) => {
            let ok = (1..=255).contains(&k.len()) && k.iter().all(|b| (0x21..=0x7e).contains(b));
            if !ok {
                return Err(Error::param(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ));
            }
            Some(String::from_utf8_lossy(k).into_owned())
        }
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
    let max = lim.max_batch_bytes.max(lim.max_message);
    let body = crate::gzip::body(parts, max)?;
    let body = body.as_ref();
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
    p.messages = messages;
    Ok(p)
}

pub(super) fn subscribe<'a>(
    parts: &'a impl Parts,
    q: &'a str,
    topic: TopicPath<'a>,
    lim: &Limits,
) -> Result<Subscribe<'a>, Error> {
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
    let ack = if explicit {
        ack_headers(parts)?
    } else {
        // Only an explicit ack uses them, but malformed ones are refused either way.
        ack_numbers(parts)?;
        None
    };
    let lease = match query::raw(q, "ack") {
        Some("lease") => Some(Leasing {
            visibility: match duration(q, "visibility")? {
                Some(v) if v.is_zero() => return Err(Error::param("visibility must be above 0")),
                v => v,
            },
        }),
        None | Some("0") | Some("1") | Some("true") | Some("false") => {
            if query::raw(q, "visibility").is_some() {
                return Err(Error::param("visibility needs ack=lease"));
            }
            None
        }
        Some(other) => {
            return Err(Error::param(format!(
                "invalid ack {other:?}: use 1 (explicit offsets) or lease"
            )))
        }
    };
    if lease.is_some() && parts.header("x-tag").is_some() {
        return Err(Error::param("X-Tag filters do not combine with ack=lease"));
    }
    let accepts = |t: &str| {
        parts.header("accept").is_some_and(|a| {
            a.windows(t.len())
                .any(|w| w.eq_ignore_ascii_case(t.as_bytes()))
        })
    };
    let ndjson = accepts(batch::NDJSON);
    let events = accepts(crate::sse::CONTENT_TYPE);
    let bad_id = || Error::param("Last-Event-ID must be partition:offset, as the events' ids are");
    let resume = match (events, parts.header("last-event-id")) {
        (false, _) => None,
        (true, Some(id)) => Some(crate::sse::parse_id(id).ok_or_else(bad_id)?),
        // EventSource polyfills that cannot set the header send it in the query.
        (true, None) => match query::get(q, "lastEventId").map_err(|_| bad_id())? {
            Some(id) => Some(crate::sse::parse_id(&id).ok_or_else(bad_id)?),
            None => None,
        },
    };
    Ok(Subscribe {
        topic,
        group,
        batch,
        wait,
        reset,
        explicit,
        ack,
        lease,
        tags: parts
            .header("x-tag")
            .map(kateway_core::message::parse_tags)
            .unwrap_or_default(),
        format: if ndjson {
            RecordFormat::NdJson
        } else {
            RecordFormat::Binary
        },
        events,
        resume,
    })
}

/// `to=<topic>/<ver>` (or `<topic>.<ver>`, or the slash percent-encoded) of a redrive: a topic
/// of app `appid`.
pub(super) fn redrive_target<'a>(appid: &'a str, to: &'a str) -> Result<TopicPath<'a>, Error> {
    let split = to
        .split_once(['/', '.'])
        .or_else(|| to.split_once("%2F"))
        .or_else(|| to.split_once("%2f"));
    let (topic, ver) = split.ok_or_else(|| {
        Error::param("to must be <topic>/<ver>, a topic of the dead letters' app")
    })?;
    TopicPath::new(appid, topic, ver)
}

/// A duration parameter (`30s`, `5m`, ...), if given.
pub(super) fn duration(q: &str, name: &str) -> Result<Option<Duration>, Error> {
    match query::raw(q, name) {
        None => Ok(None),
        Some(v) => parse_duration(v)
            .map(Some)
            .map_err(|e| Error::param(format!("{name}: {e}"))),
    }
}

/// `X-Partition`/`X-Offset` of an explicit ack: both or neither; `-1/-1` means nothing.
fn ack_headers(parts: &impl Parts) -> Result<Option<(u32, u64)>, Error> {
    let (p, o) = match ack_numbers(parts)? {
        (None, None) => return Ok(None),
        (Some(p), Some(o)) => (p, o),
        _ => return Err(bad_ack("partial ack: send both X-Partition and X-Offset")),
    };
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

/// `X-Partition` and `X-Offset` as integers, each `None` when absent; one that is not an
/// integer is refused (a subscribe without `ack=1` does not use them, but does not take
/// garbage in them either).
fn ack_numbers(parts: &impl Parts) -> Result<(Option<i64>, Option<i64>), Error> {
    let number = |name, what| match parts.header(name) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| bad_ack(format!("ack with bad {what}"))),
    };
    Ok((
        number("x-partition", "partition")?,
        number("x-offset", "offset")?,
    ))
}

/// The body of a batch acknowledgement: `[{"partition":p,"offset":o}, ...]`.
pub(super) fn ack_list(body: &[u8]) -> Result<Vec<(u32, u64)>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        partition: u32,
        offset: u64,
    }
    let items: Vec<crate::json::Obj<Item>> = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::InvalidBody,
            format!("invalid ack json body: {e}"),
        )
    })?;
    if items.is_empty() {
        return Err(Error::new(ErrorKind::InvalidBody, "empty ack list"));
    }
    let mut acks: Vec<(u32, u64)> = items
        .into_iter()
        .map(|crate::json::Obj(i)| (i.partition, i.offset))
        .collect();
    // A partition named more than once commits the highest offset (its last processed), not
    // whichever came last: acks gathered from parallel workers may arrive out of order.
    if acks.windows(2).any(|w| w[0].0 >= w[1].0) {
        acks.sort_unstable();
        acks.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.max(later.1);
            }
            same
        });
    }
    Ok(acks)
}
