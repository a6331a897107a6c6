//! Settle bodies: receipts and options from a JSON object (a request body, or a WebSocket
//! frame with its op in it), with a fast path for the common bodies that hold only receipts.

use super::parse::duration;
use super::*;

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
        e.truncate(kateway_core::text::prefix(e, 200).len());
        // Control characters would break the dead letter's tags (and the headers a single
        // message is delivered with), and `;` separates its tags.
        *e = e.replace(|c: char| c.is_control() || c == ';', " ");
    }
    if s.op == SettleOp::Extend && s.visibility.is_none_or(|v| v.is_zero()) {
        return Err(Error::param("extend needs a visibility above 0"));
    }
    Ok(s)
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
