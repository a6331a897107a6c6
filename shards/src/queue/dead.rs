//! Dead letters: a leased group's messages that spent their attempts (or that a consumer
//! buried) are copied to the group's dead-letter topic, `<appid>.<group>-dlq.v1` of the
//! subscriber app, created when the first one arrives. Records carry no headers on the
//! embedded store, so the origin travels as reserved tags beside the message's own:
//! `kgw-origin=<topic>/<partition>/<offset>`, `kgw-attempts=<n>`, `kgw-first-seen=<ms>` and
//! `kgw-error=<text>` (the last error a consumer reported, if any).

use crate::admin;
use crate::backend::Backend;
use crate::catalog::LocalTopic;
use crate::shard::Shard;
use bytes::Bytes;
use kateway_core::{Ack, Delivered, Error, ErrorKind, Item};
use kateway_proto::command::TopicPath;
use std::rc::Rc;

/// The dead-letter topic's name parts of group storage name `<appid>.<group>`.
pub fn topic_of(group: &str) -> Result<(String, String), Error> {
    let (app, g) = group
        .split_once('.')
        .ok_or_else(|| Error::new(ErrorKind::InvalidName, format!("invalid group {group:?}")))?;
    if g.len() > 60 {
        return Err(Error::param(
            "a leased group's name is at most 60 characters (its dead-letter topic is <group>-dlq)",
        ));
    }
    Ok((app.to_owned(), format!("{g}-dlq")))
}

/// The dead-letter topic of `group`, created if it does not exist yet.
pub async fn ensure(
    shard: &Shard,
    backend: &Backend,
    group: &str,
) -> Result<Rc<LocalTopic>, Error> {
    let (app, topic) = topic_of(group)?;
    let path = TopicPath {
        appid: &app,
        topic: &topic,
        ver: "v1",
    };
    admin::ensure(shard, backend, &path, 1, None).await
}

/// What a dead letter of `m` (read from `origin`) carries.
pub fn item(
    origin: &str,
    m: &Delivered,
    attempts: u16,
    first_seen_ms: i64,
    error: Option<&str>,
) -> Item {
    let mut tags = String::from_utf8_lossy(&m.tags).into_owned();
    let mut add = |t: String| {
        if !tags.is_empty() {
            tags.push(';');
        }
        tags.push_str(&t);
    };
    add(format!("kgw-origin={origin}/{}/{}", m.partition, m.offset));
    add(format!("kgw-attempts={attempts}"));
    add(format!("kgw-first-seen={first_seen_ms}"));
    if let Some(e) = error.filter(|e| !e.is_empty()) {
        add(format!("kgw-error={e}"));
    }
    Item {
        key: m.key.clone(),
        tags: Bytes::from(tags),
        value: m.value.clone(),
    }
}

/// Copies dead letters to the group's dead-letter topic, durably.
pub async fn send(
    shard: &Shard,
    backend: &Backend,
    group: &str,
    items: Vec<Item>,
) -> Result<(), Error> {
    let dlq = ensure(shard, backend, group).await?;
    let published = backend.publish(&dlq, 0, items, Ack::All).await?;
    let _ = published;
    Ok(())
}

/// The message's origin, `(topic, partition, offset)`, from a dead letter's tags.
pub fn origin(tags: &[u8]) -> Option<(String, u32, u64)> {
    let tags = std::str::from_utf8(tags).ok()?;
    // The last one: the gateway appends it after the message's own tags.
    let v = tags
        .rsplit(';')
        .find_map(|t| t.trim().strip_prefix("kgw-origin="))?;
    let mut it = v.rsplitn(3, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    Some((it.next()?.to_owned(), partition, offset))
}

/// A dead letter's tags without the reserved ones: what the message carried when published.
pub fn own_tags(tags: &[u8]) -> Bytes {
    let s = String::from_utf8_lossy(tags);
    let kept: Vec<&str> = s
        .split(';')
        .filter(|t| !t.trim().starts_with("kgw-"))
        .collect();
    Bytes::from(kept.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_tags_round_trip() {
        let m = Delivered {
            partition: 3,
            offset: 42,
            timestamp: 1,
            key: Bytes::new(),
            tags: Bytes::from_static(b"a;b"),
            value: Bytes::from_static(b"v"),
            leased: None,
        };
        let it = item("app.t.v1", &m, 5, 1000, Some("boom"));
        assert_eq!(
            &it.tags[..],
            b"a;b;kgw-origin=app.t.v1/3/42;kgw-attempts=5;kgw-first-seen=1000;kgw-error=boom"
        );
        assert_eq!(origin(&it.tags), Some(("app.t.v1".into(), 3, 42)));
        // A publisher's own kgw-origin tag does not redirect a redrive.
        let mut forged = m.clone();
        forged.tags = Bytes::from_static(b"kgw-origin=other.t.v1/0/0");
        let f = item("app.t.v1", &forged, 1, 0, None);
        assert_eq!(origin(&f.tags), Some(("app.t.v1".into(), 3, 42)));
        assert_eq!(&own_tags(&it.tags)[..], b"a;b");
        assert!(topic_of("app.g").unwrap().1 == "g-dlq");
        assert!(topic_of(&format!("app.{}", "x".repeat(61))).is_err());
    }
}
