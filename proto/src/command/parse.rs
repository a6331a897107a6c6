//! Parameter and body parsing for the commands: acknowledgement levels, keys and tags, batch
//! bodies, subscribe options, and acknowledgement lists.

use super::*;

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
        Some(t) => Bytes::copy_from_slice(t.trim_ascii()),
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
fn duration(q: &str, name: &str) -> Result<Option<Duration>, Error> {
    match query::raw(q, name) {
        None => Ok(None),
        Some(v) => parse_duration(v)
            .map(Some)
            .map_err(|e| Error::param(format!("{name}: {e}"))),
    }
}

/// The most receipts one settle may name.
pub const MAX_RECEIPTS: usize = 1000;

/// A settle: receipts from the JSON body (`{"receipts":[...],"batch_receipt":"...",
/// "delay":"5s","visibility":"1m","error":"..."}`), or with an empty body one from `X-Receipt`
/// or `X-Batch-Receipt` (the rest in the query).
pub(super) fn settle<'a>(
    parts: &impl Parts,
    q: &str,
    topic: TopicPath<'a>,
    group: &'a str,
    op: &str,
    body: &[u8],
) -> Result<Settle<'a>, Error> {
    let op = SettleOp::parse(op).ok_or_else(|| Error::param("unknown settle op"))?;
    let s = if body.iter().all(u8::is_ascii_whitespace) {
        let header = |name: &str| {
            parts
                .header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (receipt, batch) = (header("x-receipt"), header("x-batch-receipt"));
        if receipt.is_none() && batch.is_none() {
            return Err(Error::new(
                ErrorKind::MissingHeader,
                "name the receipts: a JSON body {\"receipts\":[...]}, or an X-Receipt or X-Batch-Receipt header",
            ));
        }
        Settle {
            topic,
            group,
            op,
            receipts: receipt.into_iter().collect(),
            batch,
            delay: duration(q, "delay")?,
            visibility: duration(q, "visibility")?,
            error: query::get(q, "error")
                .map_err(|_| Error::param("error: bad percent-encoding"))?
                .map(|e| String::from_utf8_lossy(&e).into_owned()),
        }
    } else {
        // One place names the receipts and options: a body leaves nothing to the headers or
        // the query (which would otherwise be ignored without a word).
        let elsewhere = ["x-receipt", "x-batch-receipt"]
            .into_iter()
            .find(|h| parts.header(h).is_some())
            .or_else(|| {
                ["delay", "visibility", "error"]
                    .into_iter()
                    .find(|k| query::raw(q, k).is_some())
            });
        if let Some(name) = elsewhere {
            return Err(Error::param(format!(
                "{name} beside a JSON body: name the receipts and options in the body, or send an empty body"
            )));
        }
        return settle_json(topic, group, op, body);
    };
    checked(s)
}

/// A settle from a JSON object `{"receipts":[...],"batch_receipt","delay","visibility","error"}`
/// (a request body).
pub fn settle_json<'a>(
    topic: TopicPath<'a>,
    group: &'a str,
    op: SettleOp,
    body: &[u8],
) -> Result<Settle<'a>, Error> {
    let fast = match receipts_only(body) {
        Some(receipts) => Some((receipts, None)),
        None => batch_receipt_only(body).map(|b| (Vec::new(), Some(b))),
    };
    if let Some((receipts, batch)) = fast {
        return checked(Settle {
            topic,
            group,
            op,
            receipts,
            batch,
            delay: None,
            visibility: None,
            error: None,
        });
    }
    settle_object(topic, group, Some(op), body)
}

/// A WebSocket subscriber's settle frame: the object of [`settle_json`] with its op in
/// `"settle"`. Every key at most once (a repeated one is refused, not the last taken).
pub fn settle_frame<'a>(
    topic: TopicPath<'a>,
    group: &'a str,
    frame: &[u8],
) -> Result<Settle<'a>, Error> {
    settle_object(topic, group, None, frame)
}

/// A settle object with its op given (`op`) or in its `"settle"` key (`None`).
fn settle_object<'a>(
    topic: TopicPath<'a>,
    group: &'a str,
    op: Option<SettleOp>,
    body: &[u8],
) -> Result<Settle<'a>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        settle: Option<String>,
        #[serde(default)]
        receipts: Vec<String>,
        batch_receipt: Option<String>,
        delay: Option<String>,
        visibility: Option<String>,
        error: Option<String>,
    }
    let dur = |v: Option<String>, name: &str| match v {
        None => Ok(None),
        Some(v) => parse_duration(&v)
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::InvalidBody, format!("{name}: {e}"))),
    };
    let crate::json::Obj(b): crate::json::Obj<Body> = serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::InvalidBody, format!("invalid settle body: {e}")))?;
    let op = match (op, b.settle) {
        (Some(op), None) => op,
        (Some(_), Some(_)) => {
            return Err(Error::new(
                ErrorKind::InvalidBody,
                "invalid settle body: the op is in the path, not in \"settle\"",
            ))
        }
        (None, s) => s
            .as_deref()
            .and_then(SettleOp::parse)
            .ok_or_else(|| Error::param("settle must be ack, nack, extend or bury"))?,
    };
    checked(Settle {
        topic,
        group,
        op,
        receipts: b.receipts,
        batch: b.batch_receipt,
        delay: dur(b.delay, "delay")?,
        visibility: dur(b.visibility, "visibility")?,
        error: b.error,
    })
}

/// The receipts of the commonest settle body, `{"receipts":["...",...]}` (whitespace between
/// tokens allowed), whose strings are printable ASCII without escapes; `None` for any other
/// body, which the general parser then reads (and refuses where it is not JSON).
fn receipts_only(body: &[u8]) -> Option<Vec<String>> {
    let mut i = token(body, 0, b"{")?;
    i = token(body, i, b"\"receipts\"")?;
    i = token(body, i, b":")?;
    i = token(body, i, b"[")?;
    let mut out = Vec::with_capacity(body.len() / 60 + 1);
    loop {
        let (s, j) = plain_string(body, i)?;
        out.push(s.to_owned());
        i = j;
        if let Some(j) = token(body, i, b",") {
            i = j;
            continue;
        }
        i = token(body, i, b"]")?;
        break;
    }
    i = token(body, i, b"}")?;
    (skip_ws(body, i) == body.len()).then_some(out)
}

/// The batch receipt of a body that is exactly `{"batch_receipt":"..."}` (the usual one),
/// without a JSON parser; `None` for any other body.
fn batch_receipt_only(body: &[u8]) -> Option<String> {
    let mut i = token(body, 0, b"{")?;
    i = token(body, i, b"\"batch_receipt\"")?;
    i = token(body, i, b":")?;
    let (s, j) = plain_string(body, i)?;
    i = token(body, j, b"}")?;
    (skip_ws(body, i) == body.len()).then(|| s.to_owned())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Where `t` ends, if it follows at `i` after white space.
fn token(b: &[u8], i: usize, t: &[u8]) -> Option<usize> {
    let i = skip_ws(b, i);
    b.get(i..i + t.len()).filter(|s| *s == t)?;
    Some(i + t.len())
}

/// A JSON string at `i` (after white space) of printable ASCII without escapes, and where it
/// ends.
fn plain_string(b: &[u8], i: usize) -> Option<(&str, usize)> {
    let i = token(b, i, b"\"")?;
    let len = memchr::memchr(b'"', &b[i..])?;
    let s = &b[i..i + len];
    // Without an early exit, so that it is vectorised.
    let plain = s
        .iter()
        .fold(true, |ok, &c| ok & (0x20..0x7f).contains(&c) & (c != b'\\'));
    if !plain {
        return None;
    }
    Some((std::str::from_utf8(s).ok()?, i + len + 1))
}

/// A settle's limits: 1 to [`MAX_RECEIPTS`] receipts (a batch receipt names at most as many,
/// checked where it is decoded), a bounded one-line error, and a
/// `visibility` for an extension.
fn checked(mut s: Settle<'_>) -> Result<Settle<'_>, Error> {
    if (s.receipts.is_empty() && s.batch.is_none()) || s.receipts.len() > MAX_RECEIPTS {
        return Err(Error::new(
            ErrorKind::InvalidBody,
            format!("name 1 to {MAX_RECEIPTS} receipts, or a batch receipt"),
        ));
    }
    if let Some(e) = &mut s.error {
        // Kept with a dead letter: bounded, one line.
        let mut end = e.len().min(200);
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        e.truncate(end);
        // Control characters would break the dead letter's tags (and the headers a single
        // message is delivered with), and `;` separates its tags.
        *e = e.replace(|c: char| c.is_control() || c == ';', " ");
    }
    if s.op == SettleOp::Extend && s.visibility.is_none_or(|v| v.is_zero()) {
        return Err(Error::param("extend needs a visibility above 0"));
    }
    Ok(s)
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
    Ok(items
        .into_iter()
        .map(|crate::json::Obj(i)| (i.partition, i.offset))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{
        batch_receipt_only, receipts_only, settle_frame, settle_json, SettleOp, TopicPath,
    };

    #[test]
    fn a_settle_frame_names_its_op_once() {
        let t = || TopicPath::new("app", "t", "v1").unwrap();
        let ok = settle_frame(
            t(),
            "g",
            br#"{"settle":"nack","receipts":["a"],"delay":"1s"}"#,
        );
        assert_eq!(ok.map(|s| s.op).ok(), Some(SettleOp::Nack));
        for bad in [
            &br#"{"settle":"ack","settle":"nack","receipts":["a"]}"#[..],
            br#"{"settle":"ack","receipts":["a"],"receipts":["b"]}"#,
            br#"{"receipts":["a"]}"#,
            br#"{"settle":"drop","receipts":["a"]}"#,
            br#"{"settle":"ack","credit":1,"receipts":["a"]}"#,
        ] {
            assert!(
                settle_frame(t(), "g", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // In a request body the op is the path's.
        assert!(settle_json(
            t(),
            "g",
            SettleOp::Ack,
            br#"{"settle":"ack","receipts":["a"]}"#
        )
        .is_err());
    }

    #[test]
    fn the_common_settle_body_is_read_like_the_general_parser_reads_it() {
        #[derive(serde::Deserialize)]
        struct Body {
            receipts: Vec<String>,
        }
        for body in [
            r#"{"receipts":["a"]}"#,
            r#"{"receipts":["AbC-_9","x y"]}"#,
            " { \"receipts\" :\n[ \"a\" ,\t\"b\" ] } \r\n",
            r#"{"receipts":[""]}"#,
        ] {
            let general: Body = serde_json::from_str(body).unwrap();
            assert_eq!(
                receipts_only(body.as_bytes()),
                Some(general.receipts),
                "{body}"
            );
        }
        // Anything else is left to the general parser.
        for body in [
            r#"{"receipts":["a\"b"]}"#,
            r#"{"receipts":["\u0041"]}"#,
            r#"{"receipts":["é"]}"#,
            r#"{"receipts":[]}"#,
            r#"{"receipts":["a",]}"#,
            r#"{"receipts":["a"],"delay":"1s"}"#,
            r#"{"receipts":["a"]}x"#,
            r#"{"receipts":["a"]"#,
            r#"{"receipts":["a"#,
            r#"{"receipts":[1]}"#,
            r#"{"error":"x","receipts":["a"]}"#,
            "",
        ] {
            assert_eq!(receipts_only(body.as_bytes()), None, "{body}");
        }
    }

    #[test]
    fn a_body_of_one_batch_receipt_is_read_like_the_general_parser_reads_it() {
        let t = || TopicPath::new("app", "t", "v1").unwrap();
        for body in [
            r#"{"batch_receipt":"AQ-_x"}"#,
            " {\n\"batch_receipt\" : \"AQ\" }\r\n",
        ] {
            let general: serde_json::Value = serde_json::from_str(body).unwrap();
            let fast = batch_receipt_only(body.as_bytes());
            assert_eq!(fast.as_deref(), general["batch_receipt"].as_str(), "{body}");
            let s = settle_json(t(), "g", SettleOp::Ack, body.as_bytes()).unwrap();
            assert_eq!((s.batch, s.receipts.len()), (fast, 0));
        }
        for body in [
            r#"{"batch_receipt":"a\"b"}"#,
            r#"{"batch_receipt":"a","error":"x"}"#,
            r#"{"batch_receipt":1}"#,
            r#"{"batch_receipt":"a"}}"#,
            r#"{"batch_receipt":"a""#,
        ] {
            assert_eq!(batch_receipt_only(body.as_bytes()), None, "{body}");
        }
        // What the fast path leaves still parses: with an error, a settle of one batch.
        let s = settle_json(
            t(),
            "g",
            SettleOp::Nack,
            br#"{"batch_receipt":"a","error":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            (s.batch.as_deref(), s.error.as_deref()),
            (Some("a"), Some("x"))
        );
    }
}
