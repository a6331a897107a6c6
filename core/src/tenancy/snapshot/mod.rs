//! The view of the metadata every core authorizes with: built once per change from the
//! [`State`], immutable, shared read-only. Authenticating a request is a key-id lookup and one
//! HMAC (which the caller may skip through a cache of keys it verified already); authorizing it
//! is a scope check and, for another app's topic, one grant lookup, with the topic's storage
//! name built on the stack. Neither allocates.

use super::record::{unhex32, QueuePolicySpec, QuotaSpec, WebhookSpec, OPERATOR_APP};
use super::state::State;
use crate::keys::{Presented, Scope};
use crate::{Error, ErrorKind};
use rustc_hash::FxHashMap;

/// A key as the snapshot holds it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub app: String,
    pub scope: Scope,
    /// Topic storage names it is narrowed to.
    pub topics: Option<Box<[String]>>,
    pub hash: [u8; 32],
    pub expires_ms: Option<i64>,
}

/// A topic named by a request: `(appid, topic, ver)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRef<'a> {
    pub app: &'a str,
    pub topic: &'a str,
    pub ver: &'a str,
}

/// What a command needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing: liveness and readiness.
    Nothing,
    /// An operator key.
    Operator,
    /// A publish key of the app, for its topic `(topic, ver)`.
    Publish { topic: &'a str, ver: &'a str },
    /// A subscribe key of the owner or of an app it granted.
    Subscribe(TopicRef<'a>),
    /// Any key of the owner, or a subscribe key of an app it granted (partitions, status).
    Read(TopicRef<'a>),
    /// An app-admin key of the owner (topic administration).
    Owner(TopicRef<'a>),
    /// An app-admin key of this app (its keys, its grants).
    AppAdmin(&'a str),
}

/// How a request presents its key.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A kateway key (`Authorization: Bearer`, `Pubkey`/`Subkey`, or `access_token=`).
    Key(Presented<'a>),
    /// The original kateway's `Appid` + `Pubkey`/`Subkey` with an app secret.
    Legacy { app: &'a str, secret: &'a str },
}

const APP_MAX: usize = 64;
const KEYID_MAX: usize = 16;

/// Who a request is: an app's key, or an operator's. Plain data (no allocation, no reference
/// count), so a request can hold it across awaits.
#[derive(Clone, Copy)]
pub struct Principal {
    app: [u8; APP_MAX],
    app_len: u8,
    keyid: [u8; KEYID_MAX],
    keyid_len: u8,
    pub scope: Scope,
    /// The key is narrowed to some topics (looked up again to check them).
    narrowed: bool,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("app", &self.app())
            .field("keyid", &self.keyid())
            .field("scope", &self.scope)
            .finish()
    }
}

fn fill<const N: usize>(s: &str) -> ([u8; N], u8) {
    let mut b = [0u8; N];
    let n = s.len().min(N);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    (b, n as u8)
}

impl Principal {
    /// A principal of app `app` through key `keyid`.
    pub fn new(app: &str, keyid: &str, scope: Scope) -> Self {
        let (app, app_len) = fill::<APP_MAX>(app);
        let (keyid, keyid_len) = fill::<KEYID_MAX>(keyid);
        Self {
            app,
            app_len,
            keyid,
            keyid_len,
            scope,
            narrowed: true,
        }
    }

    /// This principal, marked as holding a key for every topic of its app.
    fn unnarrowed(mut self, narrowed: bool) -> Self {
        self.narrowed = narrowed;
        self
    }

    /// The app (names are ASCII and at most 64 characters).
    pub fn app(&self) -> &str {
        std::str::from_utf8(&self.app[..self.app_len as usize]).unwrap_or("")
    }

    /// The key id it authenticated with ("" when authentication is off).
    pub fn keyid(&self) -> &str {
        std::str::from_utf8(&self.keyid[..self.keyid_len as usize]).unwrap_or("")
    }

    /// Whether it is an operator.
    pub fn operator(&self) -> bool {
        self.scope == Scope::Operator
    }

    /// The actor an audit entry names.
    pub fn actor(&self) -> String {
        if self.operator() {
            format!("operator:{}", self.keyid())
        } else {
            format!("app:{}:{}", self.app(), self.keyid())
        }
    }
}

/// The metadata, ready for lookups.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Records applied when it was built (or the metadata log position): newer is larger.
    pub version: u64,
    keys: FxHashMap<String, KeyEntry>,
    /// Legacy secrets by app: key ids.
    legacy: FxHashMap<String, Vec<String>>,
    /// Topic storage name: the apps it is granted to.
    grants: FxHashMap<String, Vec<String>>,
    quotas: FxHashMap<String, QuotaSpec>,
    /// Leased groups' delivery policies, by group storage name (`<app>.<group>`).
    queue_policies: FxHashMap<String, QueuePolicySpec>,
    /// `(group storage name, topic storage name, spec)`.
    webhooks: Vec<(String, String, WebhookSpec)>,
    /// The earliest time a key in it expires: the snapshot is rebuilt then.
    pub next_expiry_ms: Option<i64>,
}

fn unauthorized(msg: &'static str) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

fn forbidden(msg: String) -> Error {
    Error::new(ErrorKind::Forbidden, msg)
}

/// `<app>.<topic>.<ver>` in `buf` (names are validated, so at most 64 + 64 + 10 + 2 bytes).
fn storage_name<'b>(buf: &'b mut [u8; 160], t: &TopicRef<'_>) -> &'b str {
    let mut n = 0;
    for part in [t.app, ".", t.topic, ".", t.ver] {
        let end = (n + part.len()).min(buf.len());
        buf[n..end].copy_from_slice(&part.as_bytes()[..end - n]);
        n = end;
    }
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

impl Snapshot {
    /// The snapshot of `state` at `now_ms` (keys dead by then are left out).
    pub fn build(state: &State, version: u64, now_ms: i64) -> Self {
        let mut s = Snapshot {
            version,
            ..Default::default()
        };
        for k in state.keys.values().filter(|k| k.live(now_ms)) {
            let owner_live = k.app == OPERATOR_APP || state.app_exists(&k.app);
            let Some(hash) = unhex32(&k.hash).filter(|_| owner_live) else {
                continue;
            };
            if let Some(e) = k.expires_ms {
                s.next_expiry_ms = Some(s.next_expiry_ms.map_or(e, |n: i64| n.min(e)));
            }
            if k.scope == Scope::Legacy {
                s.legacy
                    .entry(k.app.clone())
                    .or_default()
                    .push(k.keyid.clone());
            }
            s.keys.insert(
                k.keyid.clone(),
                KeyEntry {
                    app: k.app.clone(),
                    scope: k.scope,
                    topics: k.topics.clone().map(Vec::into_boxed_slice),
                    hash,
                    expires_ms: k.expires_ms,
                },
            );
        }
        for (topic, app) in state.grants.keys() {
            if state.app_exists(app) {
                s.grants.entry(topic.clone()).or_default().push(app.clone());
            }
        }
        s.quotas = state
            .quotas
            .iter()
            .filter(|(a, _)| state.app_exists(a))
            .map(|(a, q)| (a.clone(), *q))
            .collect();
        s.queue_policies = state
            .queue_policies
            .iter()
            .filter(|((a, _), _)| state.app_exists(a))
            .map(|((a, g), q)| (format!("{a}.{g}"), *q))
            .collect();
        // Apps exist in the metadata with authentication on; a deleted one's webhooks stop.
        s.webhooks = state
            .webhooks
            .iter()
            .filter(|((a, _, _), _)| !state.apps.get(a).is_some_and(|(deleted, _)| *deleted))
            .map(|((a, g, t), w)| (format!("{a}.{g}"), t.clone(), w.clone()))
            .collect();
        s
    }

    /// Every webhook: `(group storage name, topic storage name, spec)`.
    pub fn webhooks(&self) -> &[(String, String, WebhookSpec)] {
        &self.webhooks
    }

    /// Whether the app of `group` (`<app>.<group>`) may still read `topic` (`<app>.<topic>.<ver>`):
    /// its own topic, or one it holds a grant on. A webhook whose app lost that is not pushed.
    pub fn may_push(&self, group: &str, topic: &str) -> bool {
        let app = crate::names::app_of(group);
        crate::names::app_of(topic) == app || self.granted(topic).iter().any(|a| a == app)
    }

    /// The webhook of group `group` (`<app>.<group>`) on `topic`.
    pub fn webhook(&self, group: &str, topic: &str) -> Option<&WebhookSpec> {
        self.webhooks
            .iter()
            .find(|(g, t, _)| g == group && t == topic)
            .map(|(_, _, w)| w)
    }

    /// The key with id `keyid`, if it works at `now_ms`.
    pub fn key(&self, keyid: &str, now_ms: i64) -> Option<&KeyEntry> {
        self.keys
            .get(keyid)
            .filter(|k| k.expires_ms.is_none_or(|e| e > now_ms))
    }

    /// An app's quota.
    pub fn quota(&self, app: &str) -> Option<&QuotaSpec> {
        self.quotas.get(app)
    }

    /// The delivery policy of the leased group with storage name `group` (`<app>.<group>`).
    pub fn queue_policy(&self, group: &str) -> Option<&QueuePolicySpec> {
        self.queue_policies.get(group)
    }

    /// Whether any app has a quota.
    pub fn has_quotas(&self) -> bool {
        !self.quotas.is_empty()
    }

    /// Who presented `cred` (with `Appid` saying `claimed`), checking secrets with `verify`
    /// (`verify(keyid, secret, stored hash)`, constant-time: the caller may cache). 401 for
    /// anything that does not authenticate, with a reason that names no secret; 403 for a good
    /// key whose app is not the one `Appid` names.
    pub fn authenticate(
        &self,
        cred: &Credential<'_>,
        claimed: Option<&str>,
        now_ms: i64,
        mut verify: impl FnMut(&str, &str, &[u8; 32]) -> bool,
    ) -> Result<Principal, Error> {
        match cred {
            Credential::Key(p) => {
                let k = self
                    .key(p.keyid, now_ms)
                    .filter(|k| k.scope == p.scope)
                    .ok_or_else(|| unauthorized("unknown, revoked or expired key"))?;
                if !verify(p.keyid, p.secret(), &k.hash) {
                    return Err(unauthorized("unknown, revoked or expired key"));
                }
                // A good key naming another app (the original's way to reach another app's
                // topic): authenticated, and not allowed.
                if let Some(a) = claimed.filter(|a| *a != k.app) {
                    return Err(forbidden(format!(
                        "this key belongs to app {}, not to app {a}",
                        k.app
                    )));
                }
                Ok(Principal::new(&k.app, p.keyid, k.scope).unnarrowed(k.topics.is_some()))
            }
            Credential::Legacy { app, secret } => {
                for id in self.legacy.get(*app).into_iter().flatten() {
                    if let Some(k) = self.key(id, now_ms) {
                        if verify(id, secret, &k.hash) {
                            return Ok(Principal::new(app, id, Scope::Legacy).unnarrowed(false));
                        }
                    }
                }
                Err(unauthorized("unknown app or wrong secret"))
            }
        }
    }

    /// Whether `p` may do what `need` says: 403 with the reason if not.
    pub fn authorize(&self, p: &Principal, need: &Need<'_>, now_ms: i64) -> Result<(), Error> {
        if p.operator() {
            return Ok(());
        }
        let me = p.app();
        let key = if p.narrowed {
            self.key(p.keyid(), now_ms)
        } else {
            None
        };
        let narrowed = |t: &TopicRef<'_>| -> Result<(), Error> {
            let Some(topics) = key.and_then(|k| k.topics.as_deref()) else {
                return Ok(());
            };
            let mut buf = [0u8; 160];
            let name = storage_name(&mut buf, t);
            if topics.iter().any(|n| n == name) {
                Ok(())
            } else {
                Err(forbidden(format!("this key is not for topic {name}")))
            }
        };
        let scope = |wanted: Scope| -> Result<(), Error> {
            if p.scope.allows(wanted) {
                Ok(())
            } else {
                let a = |n: &str| {
                    if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    }
                };
                let (have, need) = (p.scope.name(), wanted.name());
                Err(forbidden(format!(
                    "{} {have} key cannot do this: it needs {} {need} key",
                    a(have),
                    a(need)
                )))
            }
        };
        match need {
            Need::Nothing => Ok(()),
            Need::Operator => Err(forbidden(
                "this needs an operator key, on the operator listener".into(),
            )),
            Need::Publish { topic, ver } => {
                scope(Scope::Publish)?;
                narrowed(&TopicRef {
                    app: me,
                    topic,
                    ver,
                })
            }
            Need::Subscribe(t) => {
                scope(Scope::Subscribe)?;
                self.may_read(me, t)?;
                narrowed(t)
            }
            Need::Read(t) => {
                if t.app == me {
                    return narrowed(t);
                }
                scope(Scope::Subscribe)?;
                self.may_read(me, t)?;
                narrowed(t)
            }
            Need::Owner(t) => {
                scope(Scope::AppAdmin)?;
                if t.app != me {
                    return Err(forbidden(format!("topics of app {} are not yours", t.app)));
                }
                narrowed(t)
            }
            Need::AppAdmin(app) => {
                scope(Scope::AppAdmin)?;
                if *app != me {
                    return Err(forbidden(format!("app {app} is not yours")));
                }
                // App-wide calls (keys, grants, quotas, dead letters…) would reach past the
                // topics a narrowed key names: they need a key for the whole app.
                if key.is_some_and(|k| k.topics.is_some()) {
                    return Err(forbidden(
                        "this key is narrowed to some topics: app-wide calls need an app-admin key without topics=".into(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Whether app `me` owns topic `t` or holds a grant on it.
    fn may_read(&self, me: &str, t: &TopicRef<'_>) -> Result<(), Error> {
        if t.app == me {
            return Ok(());
        }
        let mut buf = [0u8; 160];
        let name = storage_name(&mut buf, t);
        if self
            .grants
            .get(name)
            .is_some_and(|apps| apps.iter().any(|a| a == me))
        {
            Ok(())
        } else {
            Err(forbidden(format!(
                "app {me} holds no grant on topic {name}"
            )))
        }
    }

    /// Whether a session that `p` opened for `need` may go on under this snapshot: its key
    /// still works and still allows it (a revocation, an expiry or a removed grant ends it).
    pub fn still(&self, p: &Principal, need: &Need<'_>, now_ms: i64) -> Result<(), Error> {
        if self.key(p.keyid(), now_ms).is_none() {
            return Err(unauthorized("the key was revoked or expired"));
        }
        self.authorize(p, need, now_ms)
    }

    /// The apps granted topic `name`.
    pub fn granted(&self, name: &str) -> &[String] {
        self.grants.get(name).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests;
