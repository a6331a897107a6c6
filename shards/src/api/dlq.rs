//! `/v1/dlq/:appid/:group`: a leased group's dead letters ([`crate::queue::dead`]) for its app's
//! admins and operators. The dead letters still waiting are those past the committed offset of
//! the reserved group `<appid>.__dlq` on the dead-letter topic: a count (`GET`), a peek that
//! takes nothing (`GET .../messages`), a redrive that publishes them again and takes them
//! (`POST .../redrive`), and a purge that takes them all (`DELETE`). One peek, redrive or purge
//! of a group runs at a time in a gateway; another meanwhile is 409 (40903) with `Retry-After`.

use crate::node::Core;
use crate::queue::dead;
use crate::request::Fetch;
use kateway_core::partitioner::partition_for_key;
use kateway_core::{Ack, Delivered, Error, ErrorKind, GroupName, Groups, Item, Reset, TopicName};
use kateway_proto::command::{DeadLetterOp, DeadLetters, TopicPath};
use kateway_proto::reply::{RecordFormat, Reply};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The reserved group that takes dead letters.
const TAKER: &str = "__dlq";

/// The groups whose dead letters a call of this process is moving (a peek, a redrive or a
/// purge): one such call per group at a time, on whichever core it arrives, so that two never
/// read the same letters or move the taker's offset under each other. Held only to insert or
/// remove a name, never across an await.
static MOVING: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// A group's turn to move its dead letters, until dropped.
struct Moving(String);

impl Moving {
    fn take(group: &str) -> Result<Self, Error> {
        let mut m = MOVING.lock().unwrap_or_else(|e| e.into_inner());
        if !m.insert(group.to_owned()) {
            return Err(Error::new(
                ErrorKind::DeadLettersMoving,
                format!(
                    "another peek, redrive or purge of group {group}'s dead letters is running"
                ),
            )
            .with_retry_after(1));
        }
        Ok(Moving(group.to_owned()))
    }
}

impl Drop for Moving {
    fn drop(&mut self) {
        MOVING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Handles a dead-letter call.
pub async fn run(core: &Rc<Core>, d: DeadLetters<'_>) -> Result<Reply, Error> {
    let group = GroupName::new(d.appid, d.group)?.to_string();
    let (app, name) = dead::topic_of(&group)?;
    let path = TopicPath {
        appid: &app,
        topic: &name,
        ver: "v1",
    };
    let topic = match core.backend.resolve(&path).await {
        Ok(t) => t,
        // No dead letter yet.
        Err(e) if e.kind() == ErrorKind::UnknownTopic => {
            let topic = format!("{app}.{name}.v1");
            let body = |v: serde_json::Value| Reply::json(200, v.to_string());
            return Ok(match d.op {
                DeadLetterOp::Peek { .. } => Reply::empty(204),
                DeadLetterOp::Count => body(json!({"topic": topic, "messages": 0})),
                DeadLetterOp::Purge => body(json!({"topic": topic, "purged": 0})),
                DeadLetterOp::Redrive { .. } => body(json!({"redriven": 0})),
            });
        }
        Err(e) => return Err(e),
    };
    let taker = GroupName::new(&app, TAKER)?.to_string();
    let backend = &core.backend;
    let _turn = match d.op {
        DeadLetterOp::Count => None,
        _ => Some(Moving::take(&group)?),
    };
    match d.op {
        DeadLetterOp::Count | DeadLetterOp::Purge => {
            let infos = backend.info(&topic, &Groups::Exact(taker.clone())).await?;
            let mut waiting = 0;
            for i in &infos {
                let at = i
                    .groups
                    .iter()
                    .find(|(g, _)| *g == taker)
                    .map_or(i.oldest, |&(_, o)| o.max(i.oldest));
                waiting += i.newest.saturating_sub(at);
                if matches!(d.op, DeadLetterOp::Purge) && i.newest > at {
                    backend
                        .commit(&topic, i.partition, &taker, i.newest, true)
                        .await?;
                }
            }
            let key = if matches!(d.op, DeadLetterOp::Purge) {
                "purged"
            } else {
                "messages"
            };
            Ok(Reply::json(
                200,
                json!({"topic": topic.name.to_string(), key: waiting}).to_string(),
            ))
        }
        DeadLetterOp::Peek { max } => {
            let got = take(core, &topic, &taker, max, TAKE_WAIT).await?;
            // Taking nothing: the group goes back to where it was on each partition.
            for (&p, &first) in &firsts(&got) {
                backend.commit(&topic, p, &taker, first, true).await?;
            }
            if got.is_empty() {
                return Ok(Reply::empty(204));
            }
            Ok(Reply::records(200, RecordFormat::NdJson, got))
        }
        DeadLetterOp::Redrive { max, to } => {
            let got = take(core, &topic, &taker, max, TAKE_WAIT).await?;
            let mut done: BTreeMap<u32, u64> = BTreeMap::new();
            let mut n = 0;
            let result = async {
                for m in &got {
                    let target = match (&to, dead::origin(&m.tags)) {
                        (Some(t), _) => core.backend.resolve(t).await.map(|t| (t, None)),
                        (None, Some((origin, p, _))) => {
                            let t = TopicName::parse_storage(&origin)?;
                            may_redrive_to(core, &group, &origin, &t.appid, m.offset)?;
                            let path = TopicPath {
                                appid: &t.appid,
                                topic: &t.topic,
                                ver: &t.ver,
                            };
                            core.backend.resolve(&path).await.map(|t| (t, Some(p)))
                        }
                        (None, None) => Err(Error::param(format!(
                            "dead letter at offset {} names no origin: redrive it with to=<topic>/<ver>",
                            m.offset
                        ))),
                    };
                    let (target, partition) = target?;
                    publish_again(core, &target, partition, m).await?;
                    done.insert(m.partition, m.offset + 1);
                    n += 1;
                }
                Ok::<(), Error>(())
            }
            .await;
            // Take what was published; what was not is read again next time.
            let firsts = firsts(&got);
            for (&p, &first) in &firsts {
                let next = done.get(&p).copied().unwrap_or(first);
                backend.commit(&topic, p, &taker, next, true).await?;
            }
            result?;
            Ok(Reply::json(200, json!({"redriven": n}).to_string()))
        }
    }
}

/// Whether the dead letter at `offset` may go back to its origin topic `origin` (of app
/// `owner`): one the group's app still reads (its own, or one it holds a grant on), never one of
/// the gateway's own. The gateway alone writes `kgw-origin` tags (publishers may not), so this
/// only matters for a grant revoked since the message died, or for records written into the
/// dead-letter topic by other means (a Kafka producer).
fn may_redrive_to(
    core: &Core,
    group: &str,
    origin: &str,
    owner: &str,
    offset: u64,
) -> Result<(), Error> {
    let tenancy = &core.shard.tenancy;
    let readable = !tenancy.enabled || tenancy.view().snap.may_push(group, origin);
    if owner == kateway_proto::command::RESERVED_APP || !readable {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!(
                "dead letter at offset {offset} names origin {origin}, which group {group} does not read: \
                 redrive it with to=<topic>/<ver>, or purge it"
            ),
        ));
    }
    Ok(())
}

/// Reads up to `max` dead letters for `taker` (advancing its read position, not its offset).
/// How long a first read of dead letters waits for records (a Kafka group forming).
const TAKE_WAIT: Duration = Duration::from_millis(1000);

/// Reads up to `max` records with `taker` (auto-ack off), waiting up to `first_wait` for the
/// first and not at all for more.
pub(super) async fn take(
    core: &Rc<Core>,
    topic: &Rc<crate::catalog::LocalTopic>,
    taker: &str,
    max: usize,
    first_wait: Duration,
) -> Result<Vec<Delivered>, Error> {
    let mut out = Vec::new();
    while out.len() < max {
        let f = Fetch {
            topic: topic.name.to_string(),
            group: taker.to_owned(),
            max: max - out.len(),
            max_bytes: core.shard.cfg().subscribe.max_batch_bytes.0 as usize,
            reset: Reset::Oldest,
            auto_ack: false,
            tags: Vec::new(),
        };
        let wait = if out.is_empty() {
            first_wait
        } else {
            Duration::ZERO
        };
        let got = core.backend.read(topic, f, Instant::now() + wait).await?;
        if got.records.is_empty() {
            break;
        }
        out.extend(got.records);
    }
    Ok(out)
}

/// The first offset read per partition.
fn firsts(got: &[Delivered]) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for r in got {
        let e = m.entry(r.partition).or_insert(r.offset);
        *e = (*e).min(r.offset);
    }
    m
}

/// Publishes a dead letter's message again (its own tags, without the reserved ones), to
/// `partition` if the topic has it.
async fn publish_again(
    core: &Rc<Core>,
    topic: &crate::catalog::LocalTopic,
    partition: Option<u32>,
    m: &Delivered,
) -> Result<(), Error> {
    let p = match partition.filter(|&p| p < topic.partitions) {
        Some(p) => p,
        None if !m.key.is_empty() => partition_for_key(&m.key, topic.partitions),
        None => core.shard.pick_partition(topic),
    };
    let item = Item {
        key: m.key.clone(),
        tags: dead::own_tags(&m.tags),
        value: m.value.clone(),
    };
    core.backend.publish(topic, p, vec![item], Ack::All).await?;
    Ok(())
}
