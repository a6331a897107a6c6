//! `POST /v1/msgs/:topic/:ver`: single and batch publish. The caller's `Appid` owns the topic.
//! Keyless messages go to a partition this core owns; keyed ones to Kafka's default partition,
//! through the mesh when another core owns it. The answer waits for the durability asked for.

use super::{caller, Out};
use crate::mesh::{Ack, Item, Msg, Published};
use crate::shard::Shard;
use crate::topics::TopicMeta;
use bytes::{BufMut, Bytes, BytesMut};
use kateway_core::partitioner::partition_for_key;
use kateway_core::{Error, ErrorKind};
use kateway_proto::batch::{self, BatchError};
use kateway_proto::http1::encode::{put_i64, put_u64};
use kateway_proto::http1::Request;
use kateway_proto::query;
use std::collections::BTreeMap;
use std::rc::Rc;

fn too_large(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, msg)
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

fn parse_key(q: &str, max: usize) -> Result<Option<Bytes>, Error> {
    let Some(k) =
        query::get(q, "key").map_err(|_| Error::param("key is not valid percent-encoding"))?
    else {
        return Ok(None);
    };
    check_key(&k, max)?;
    Ok((!k.is_empty()).then(|| Bytes::copy_from_slice(&k)))
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

/// Handles a publish.
pub async fn publish(
    shard: &Rc<Shard>,
    req: &Request,
    topic: &str,
    ver: &str,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    let appid = caller(req)?;
    let meta = shard.resolve(appid, topic, ver).await?;
    let q = req.query();
    let lim = &shard.cfg.limits;
    let ack = parse_ack(q)?;
    if query::raw(q, "delay").is_some() || query::raw(q, "due").is_some() {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            "delayed messages are not supported yet",
        ));
    }
    let key = parse_key(q, lim.max_key_bytes.0 as usize)?;
    let tags = match req.header("x-tag") {
        Some(t) if t.len() > lim.max_tag_bytes.0 as usize => {
            return Err(Error::param(format!(
                "X-Tag longer than {} bytes",
                lim.max_tag_bytes.0
            )))
        }
        Some(t) => Bytes::copy_from_slice(t.trim_ascii()),
        None => Bytes::new(),
    };
    let ctype = req.header_str("content-type").map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let max_msg = lim.max_message_bytes.0 as usize;
    let is_batch = matches!(ctype.as_deref(), Some(batch::NDJSON) | Some(batch::BINARY));
    let items: Vec<batch::BatchItem> = if is_batch {
        if req.body.len() as u64 > lim.max_batch_bytes.0 {
            return Err(too_large(format!(
                "batch larger than {} bytes",
                lim.max_batch_bytes.0
            )));
        }
        let max_n = lim.max_batch_messages as usize;
        let parsed = if ctype.as_deref() == Some(batch::NDJSON) {
            batch::parse_ndjson(&req.body, max_n, max_msg)
        } else {
            batch::parse_binary(&req.body, max_n, max_msg, lim.max_key_bytes.0 as usize)
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
                check_key(k, lim.max_key_bytes.0 as usize)?;
            }
        }
        items
    } else {
        if req.body.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidBody,
                "empty message: the body is the message",
            ));
        }
        if req.body.len() > max_msg {
            return Err(too_large(format!("message larger than {max_msg} bytes")));
        }
        vec![batch::BatchItem {
            key: None,
            value: req.body.clone(),
        }]
    };

    let status = if ack == Ack::Async { 202 } else { 201 };
    let mut body = BytesMut::with_capacity(48);
    if !is_batch {
        // The common case: one message, one partition, no grouping.
        let item = Item {
            key: key.unwrap_or_default(),
            tags,
            value: req.body.clone(),
        };
        let p = if item.key.is_empty() {
            shard.pick_partition(&meta)
        } else {
            partition_for_key(&item.key, meta.partitions)
        };
        let done = append(shard, &meta, p, vec![item], ack).await?;
        let o = done.offsets[0];
        put_result(&mut body, p, o);
        let mut r = out
            .response(status)
            .header_int("x-partition", p.into())
            .header_int("x-offset", o);
        if done.buffered {
            r = r.header("x-kateway-buffered", b"1");
        }
        r.body("application/json", &body);
        return Ok(());
    }

    // A batch: keyless messages of one request share one partition; keyed ones are grouped by
    // partition, one append (local or through the mesh) per partition.
    let keyless = shard.pick_partition(&meta);
    let mut by_part: BTreeMap<u32, Vec<(usize, Item)>> = BTreeMap::new();
    for (i, it) in items.into_iter().enumerate() {
        let k = it.key.or_else(|| key.clone()).unwrap_or_default();
        let p = if k.is_empty() {
            keyless
        } else {
            partition_for_key(&k, meta.partitions)
        };
        let item = Item {
            key: k,
            tags: tags.clone(),
            value: it.value,
        };
        by_part.entry(p).or_default().push((i, item));
    }
    let n: usize = by_part.values().map(Vec::len).sum();
    let mut results = vec![(0u32, 0i64); n];
    let mut buffered = false;
    for (p, entries) in by_part {
        let (idx, items): (Vec<usize>, Vec<Item>) = entries.into_iter().unzip();
        let done = append(shard, &meta, p, items, ack).await?;
        buffered |= done.buffered;
        for (i, o) in idx.into_iter().zip(done.offsets) {
            results[i] = (p, o);
        }
    }
    body.reserve(32 + n * 32);
    body.put_slice(b"{\"count\":");
    put_u64(&mut body, n as u64);
    body.put_slice(b",\"results\":[");
    for (i, (p, o)) in results.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        put_result(&mut body, *p, *o);
    }
    body.put_slice(b"]}");
    let mut r = out.response(status);
    if buffered {
        r = r.header("x-kateway-buffered", b"1");
    }
    r.body("application/json", &body);
    Ok(())
}

/// Appends to partition `p` on its owner core and waits for the durability asked for.
async fn append(
    shard: &Rc<Shard>,
    meta: &TopicMeta,
    p: u32,
    items: Vec<Item>,
    ack: Ack,
) -> Result<Published, Error> {
    let owner = meta.owner(p, shard.cores());
    shard
        .on_core(
            owner,
            items,
            |items| async move { shard.publish_local(&meta.name, p, items, ack).await },
            |items, reply| Msg::Append {
                topic: meta.name.clone(),
                partition: p,
                items,
                ack,
                reply,
            },
        )
        .await?
}

fn put_result(body: &mut BytesMut, p: u32, o: i64) {
    body.put_slice(b"{\"partition\":");
    put_u64(body, p.into());
    body.put_slice(b",\"offset\":");
    put_i64(body, o);
    body.put_u8(b'}');
}
