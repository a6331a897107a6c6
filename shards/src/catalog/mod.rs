//! The topic catalog: what a topic is ([`TopicMeta`]), which core owns each partition, every
//! core's read-only copy ([`Catalog`]), and the rules of topic administration in one place
//! ([`Catalog::plan`]). Core 0 is the only writer: `crate::admin` applies a plan to the file
//! ([`mod@file`]) and then to every core through the mesh. Partition `p` of a topic is owned by core
//! `(fnv1a(name) + p) % cores`, a pure function, so ownership survives restarts with the same
//! core count.

pub mod file;

use kateway_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

/// Maps keyed by names the core already holds: Fx hashing instead of SipHash, since several
/// lookups happen per request and the keys come from the catalog, not from clients.
pub type Map<K, V> = HashMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// What the catalog knows about a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    /// `<appid>.<topic>.<ver>`.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Retention by age, overriding the store default.
    pub retention_hours: Option<u64>,
    /// Retention by size per partition, overriding the store default.
    pub retention_bytes: Option<u64>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

impl TopicMeta {
    /// The core that owns partition `p`.
    pub fn owner(&self, p: u32, cores: usize) -> usize {
        owner(&self.name, p, cores)
    }
}

/// The core that owns partition `p` of topic `name`.
pub fn owner(name: &str, p: u32, cores: usize) -> usize {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h as u64 + p as u64) % cores as u64) as usize
}

/// A topic as one core sees it: the catalog entry and the partitions this core owns, computed
/// once when the topic is applied rather than on every publish and fetch.
#[derive(Debug)]
pub struct LocalTopic {
    pub meta: TopicMeta,
    /// The catalog's interned name (map key), so lookups need no allocation.
    pub name: Rc<str>,
    /// Partitions of the topic owned by this core, ascending.
    pub owned: Vec<u32>,
    /// Every core that owns a partition of the topic, ascending.
    pub owner_cores: Vec<usize>,
    /// This core's publish and consume counts of the topic (kept when the topic changes).
    pub stats: Rc<crate::metrics::TopicStats>,
}

impl std::ops::Deref for LocalTopic {
    type Target = TopicMeta;

    fn deref(&self) -> &TopicMeta {
        &self.meta
    }
}

/// A topic administration call, as core 0 applies it.
#[derive(Debug, Clone)]
pub enum AdminOp {
    Create(TopicMeta),
    Alter {
        name: String,
        partitions: Option<u32>,
        retention_hours: Option<u64>,
        retention_bytes: Option<u64>,
    },
    Delete(String),
    /// Kafka backend: record a topic that exists in Kafka (created by this or another gateway),
    /// replacing what the catalog knew about it.
    Learn(TopicMeta),
}

/// What applying an [`AdminOp`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Install this topic (new or changed) on every core.
    Apply(TopicMeta),
    /// Remove this topic from every core.
    Remove(TopicMeta),
    /// Nothing to do (learning what is known already).
    None(TopicMeta),
}

/// How many partitions topics may hold: over all of them (`store.max_partitions`) and over
/// one app's (`store.max_partitions_per_app`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub total: u64,
    pub per_app: u64,
}

impl Budget {
    /// The budget `cfg` sets.
    pub fn of(cfg: &kateway_core::config::Config) -> Self {
        Budget {
            total: cfg.store.max_partitions.into(),
            per_app: cfg.store.max_partitions_per_app.into(),
        }
    }
}

/// One core's copy of the catalog.
#[derive(Default)]
pub struct Catalog {
    topics: Map<Rc<str>, Rc<LocalTopic>>,
}

impl Catalog {
    /// The topic called `name`, or 404.
    pub fn get(&self, name: &str) -> Result<Rc<LocalTopic>, Error> {
        self.topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::UnknownTopic, format!("unknown topic {name}")))
    }

    /// The topic of `(appid, topic, ver)` (names already validated), without allocating.
    pub fn lookup(&self, appid: &str, topic: &str, ver: &str) -> Result<Rc<LocalTopic>, Error> {
        thread_local! {
            static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        NAME.with(|n| {
            let mut n = n.borrow_mut();
            n.clear();
            n.push_str(appid);
            n.push('.');
            n.push_str(topic);
            n.push('.');
            n.push_str(ver);
            self.get(&n)
        })
    }

    /// The catalog's interned name of `name`.
    pub fn interned(&self, name: &str) -> Option<Rc<str>> {
        self.topics.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// Installs (or replaces) a topic as core `core` of `cores` sees it.
    pub fn insert(&mut self, meta: TopicMeta, core: usize, cores: usize) -> Rc<LocalTopic> {
        let name: Rc<str> = self
            .interned(&meta.name)
            .unwrap_or_else(|| Rc::from(meta.name.as_str()));
        let owned = (0..meta.partitions)
            .filter(|&p| meta.owner(p, cores) == core)
            .collect();
        let mut owner_cores: Vec<usize> =
            (0..meta.partitions).map(|p| meta.owner(p, cores)).collect();
        owner_cores.sort_unstable();
        owner_cores.dedup();
        let stats = self
            .topics
            .get(&name)
            .map(|t| t.stats.clone())
            .unwrap_or_default();
        let t = Rc::new(LocalTopic {
            meta,
            name: name.clone(),
            owned,
            owner_cores,
            stats,
        });
        self.topics.insert(name, t.clone());
        t
    }

    /// Forgets a topic.
    pub fn remove(&mut self, name: &str) -> Option<Rc<LocalTopic>> {
        self.topics.remove(name)
    }

    /// Every topic's metadata, by name.
    pub fn metas(&self) -> Vec<TopicMeta> {
        let mut v: Vec<TopicMeta> = self.topics.values().map(|t| t.meta.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every topic's name and counters on this core.
    pub fn stats(&self) -> impl Iterator<Item = (&str, &crate::metrics::TopicStats)> {
        self.topics.iter().map(|(n, t)| (&**n, &*t.stats))
    }

    /// Topics known.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic is known.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Whether topic `name` (a storage name, `<app>.<topic>.<ver>`) may have `partitions`
    /// partitions within the budget: over all topics, and over its app's topics (a check made
    /// before the topic changes where topics live, Kafka, as well as when the catalog changes).
    pub fn fits(&self, name: &str, partitions: u32, budget: Budget) -> Result<(), Error> {
        let old = self.topics.get(name).map_or(0, |t| t.partitions);
        if partitions <= old {
            return Ok(());
        }
        let grow = |sum: u64| sum - u64::from(old) + u64::from(partitions);
        let total = grow(self.topics.values().map(|t| u64::from(t.partitions)).sum());
        if total > budget.total {
            return Err(Error::param(format!(
                "{partitions} partitions would bring this gateway to {total} partitions over all topics; it holds at most {} (store.max_partitions)",
                budget.total
            )));
        }
        let app = kateway_core::names::app_of(name);
        if app == kateway_proto::command::RESERVED_APP {
            return Ok(());
        }
        let mine = grow(
            self.topics
                .values()
                .filter(|t| kateway_core::names::app_of(&t.name) == app)
                .map(|t| u64::from(t.partitions))
                .sum(),
        );
        if mine > budget.per_app {
            return Err(Error::param(format!(
                "{partitions} partitions would bring app {app} to {mine} partitions over its topics; an app holds at most {} (store.max_partitions_per_app)",
                budget.per_app
            )));
        }
        Ok(())
    }

    /// Checks `op` against the catalog and the rules (names exist or not, partitions only grow,
    /// within the partition budget); returns the catalog after it and the change.
    pub fn plan(&self, op: AdminOp, budget: Budget) -> Result<(Vec<TopicMeta>, Change), Error> {
        let mut all = self.metas();
        let unknown =
            |name: &str| Error::new(ErrorKind::UnknownTopic, format!("unknown topic {name}"));
        let change = match op {
            AdminOp::Create(meta) => {
                if all.iter().any(|t| t.name == meta.name) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("topic {} already exists", meta.name),
                    ));
                }
                self.fits(&meta.name, meta.partitions, budget)?;
                all.push(meta.clone());
                Change::Apply(meta)
            }
            AdminOp::Alter {
                name,
                partitions,
                retention_hours,
                retention_bytes,
            } => {
                let t = all
                    .iter_mut()
                    .find(|t| t.name == name)
                    .ok_or_else(|| unknown(&name))?;
                if let Some(p) = partitions {
                    if p < t.partitions {
                        return Err(Error::param(format!(
                            "partitions can only grow (now {})",
                            t.partitions
                        )));
                    }
                    self.fits(&name, p, budget)?;
                    t.partitions = p;
                }
                if retention_hours.is_some() {
                    t.retention_hours = retention_hours;
                }
                if retention_bytes.is_some() {
                    t.retention_bytes = retention_bytes;
                }
                Change::Apply(t.clone())
            }
            AdminOp::Learn(meta) => match all.iter_mut().find(|t| t.name == meta.name) {
                Some(t) if *t == meta => Change::None(meta),
                Some(t) => {
                    *t = meta.clone();
                    Change::Apply(meta)
                }
                None => {
                    all.push(meta.clone());
                    Change::Apply(meta)
                }
            },
            AdminOp::Delete(name) => {
                let i = all
                    .iter()
                    .position(|t| t.name == name)
                    .ok_or_else(|| unknown(&name))?;
                Change::Remove(all.remove(i))
            }
        };
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((all, change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, partitions: u32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            partitions,
            retention_hours: None,
            retention_bytes: None,
            created_ms: 0,
        }
    }

    const B: Budget = Budget {
        total: 100,
        per_app: 100,
    };

    #[test]
    fn ownership_spreads_partitions() {
        let mut seen = [0; 4];
        for p in 0..8 {
            seen[owner("a.t.v1", p, 4)] += 1;
        }
        assert_eq!(seen, [2, 2, 2, 2]);
        assert_eq!(owner("x", 3, 1), 0);
    }

    #[test]
    fn copies_and_plans() {
        let mut c = Catalog::default();
        let t = c.insert(meta("a.t.v1", 4), 1, 2);
        assert_eq!(t.owned.len(), 2);
        assert_eq!(t.owner_cores, vec![0, 1]);
        assert_eq!(c.lookup("a", "t", "v1").unwrap().partitions, 4);
        assert_eq!(
            c.lookup("a", "x", "v1").unwrap_err().kind(),
            ErrorKind::UnknownTopic
        );
        let code = |r: Result<(Vec<TopicMeta>, Change), Error>| r.unwrap_err().kind().code();
        assert_eq!(code(c.plan(AdminOp::Create(meta("a.t.v1", 1)), B)), 40900);
        assert_eq!(code(c.plan(AdminOp::Create(meta("a.u.v1", 97)), B)), 40002);
        let (all, ch) = c.plan(AdminOp::Create(meta("a.u.v1", 96)), B).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(ch, Change::Apply(meta("a.u.v1", 96)));
        let shrink = AdminOp::Alter {
            name: "a.t.v1".into(),
            partitions: Some(2),
            retention_hours: None,
            retention_bytes: None,
        };
        assert_eq!(code(c.plan(shrink, B)), 40002);
        let (all, ch) = c.plan(AdminOp::Delete("a.t.v1".into()), B).unwrap();
        assert!(all.is_empty());
        assert_eq!(ch, Change::Remove(meta("a.t.v1", 4)));
        assert_eq!(code(c.plan(AdminOp::Delete("a.x.v1".into()), B)), 40400);
        let (_, ch) = c.plan(AdminOp::Learn(meta("a.t.v1", 4)), B).unwrap();
        assert_eq!(ch, Change::None(meta("a.t.v1", 4)));
    }

    /// One app's topics hold at most `per_app` partitions; other apps and the gateway's own
    /// topics are not held back by it.
    #[test]
    fn one_app_holds_at_most_its_share() {
        let mut c = Catalog::default();
        c.insert(meta("a.t.v1", 6), 1, 1);
        let b = Budget {
            total: 100,
            per_app: 10,
        };
        let code =
            |r: Result<(Vec<TopicMeta>, Change), Error>| r.map(|_| ()).map_err(|e| e.kind().code());
        assert_eq!(code(c.plan(AdminOp::Create(meta("a.u.v1", 4)), b)), Ok(()));
        assert_eq!(
            code(c.plan(AdminOp::Create(meta("a.u.v1", 5)), b)),
            Err(40002)
        );
        let grow = |p| AdminOp::Alter {
            name: "a.t.v1".into(),
            partitions: Some(p),
            retention_hours: None,
            retention_bytes: None,
        };
        assert_eq!(code(c.plan(grow(10), b)), Ok(()));
        assert_eq!(code(c.plan(grow(11), b)), Err(40002));
        assert_eq!(code(c.plan(AdminOp::Create(meta("z.u.v1", 10)), b)), Ok(()));
        assert_eq!(
            code(c.plan(AdminOp::Create(meta("_kgw.d.v1", 50)), b)),
            Ok(())
        );
        assert!(c.fits("a.t.v1", 3, b).is_ok(), "no growth is always fine");
    }
}
