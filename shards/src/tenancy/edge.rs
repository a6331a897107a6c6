//! The edge: what every transport (HTTP/1.1, HTTP/2, WebSocket, server-sent events) calls once
//! per request, before running it ([`admit`]): find the credential (`Authorization: Bearer`, the
//! original's `Appid` + `Pubkey`/`Subkey`, or `access_token=` where a browser cannot set
//! headers), authenticate it, check the listener and what the command needs, then the app's
//! quota and the core's admission limits. Failures are 401 (with `WWW-Authenticate`), 403, 429
//! or 503 with `Retry-After`; nothing sleeps and the connection stays open. The answer,
//! [`Admitted`], holds the request's place in flight (and a stream's slot) until dropped.
//!
//! [`lost`] is the other half for long-lived sessions: it resolves when a new view takes away
//! what the session's key allowed (a revocation, an expiry, a removed grant), so the transport
//! ends it (a long poll with 401/403, a WebSocket with close code 1008).

use super::{AppLocal, AppPools, Tenancy};
use crate::conn::Listener;
use crate::metrics;
use crate::shard::{now_ms, Shard};
use kateway_core::keys;
use kateway_core::quota::{retry_after_secs, Local, Pool, SlotGuard};
use kateway_core::tenancy::{Credential, Need, Principal};
use kateway_core::{Error, ErrorKind};
use kateway_proto::command::{Caller, Command, Messages, Parts, Socket};
use kateway_proto::query;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    pub listener: Listener,
}

/// An admitted request: who it is (`None` when authentication is off, or for `/alive` and
/// `/ready`), and its place among the core's requests in flight.
pub struct Admitted {
    pub principal: Option<Principal>,
    pub peer: Peer,
    _place: Option<Place>,
    _slot: Option<SlotGuard>,
}

impl Admitted {
    /// The caller its handlers see: the authenticated app, or (authentication off) the app the
    /// request names.
    pub fn caller<'a>(&'a self, parts: &'a impl Parts) -> Caller<'a> {
        match &self.principal {
            Some(p) => Caller::app(p.app()),
            None => Caller::of(parts),
        }
        .with(self.principal.as_ref(), self.peer.ip)
    }
}

/// A request's place in flight on its core (and its app's), given back when dropped.
struct Place {
    shard: Rc<Shard>,
    /// The app, held inline (a principal is plain data: no allocation per request).
    app: Option<Principal>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let t = &self.shard.tenancy;
        t.in_flight.set(t.in_flight.get().saturating_sub(1));
        if let Some(app) = &self.app {
            if let Some(n) = t.app_in_flight.borrow_mut().get_mut(app.app()) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

fn unauthorized(msg: &'static str) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The credential a request presents, and the app its `Appid` header claims. `None`: none.
fn credential<'a>(
    parts: &'a impl Parts,
) -> Result<Option<(Credential<'a>, Option<&'a str>)>, Error> {
    // A credential header given twice is ambiguous (a proxy may read the other one): refused.
    let once = |name: &'static str| -> Result<Option<&'a [u8]>, Error> {
        match parts.header_first(name) {
            (v, false) => Ok(v),
            (_, true) => Err(Error::new(
                ErrorKind::InvalidParam,
                format!("the {name} header is given more than once"),
            )),
        }
    };
    let claimed = once("appid")?
        .and_then(text)
        .or_else(|| query::raw(parts.query(), "appid").filter(|s| !s.is_empty()));
    let key = |k: &'a str| {
        keys::parse(k)
            .map(Credential::Key)
            .map_err(|_| unauthorized("not a valid kateway key (mistyped or cut?)"))
    };
    let auth = once("authorization")?;
    let (pubkey, subkey) = (
        once("pubkey")?.and_then(text),
        once("subkey")?.and_then(text),
    );
    // Two credentials that differ are as ambiguous as one header given twice.
    let token = query::raw(parts.query(), "access_token").filter(|s| !s.is_empty());
    let bearer = auth.map(keys::bearer);
    let given = [bearer.map(|b| b.unwrap_or("")), pubkey, subkey, token];
    let mut named = given.iter().flatten();
    if let Some(first) = named.next() {
        if named.any(|k| k != first) {
            return Err(Error::new(
                ErrorKind::InvalidParam,
                "two different credentials (Authorization, Pubkey, Subkey, access_token): give one",
            ));
        }
    }
    if let Some(b) = bearer {
        let k = b.ok_or_else(|| unauthorized("use Authorization: Bearer <key>"))?;
        return Ok(Some((key(k)?, claimed)));
    }
    let secret = pubkey.or(subkey);
    if let Some(s) = secret {
        if s.starts_with("kw") && keys::parse(s).is_ok() {
            return Ok(Some((key(s)?, claimed)));
        }
        let app =
            claimed.ok_or_else(|| unauthorized("a secret in Pubkey or Subkey needs Appid"))?;
        return Ok(Some((Credential::Legacy { app, secret: s }, claimed)));
    }
    match token {
        Some(k) => Ok(Some((key(k)?, claimed))),
        None => Ok(None),
    }
}

impl Tenancy {
    /// Who sent the request, checked against what `need` asks and the listener it came in on.
    fn authenticate(
        &self,
        m: &metrics::Metrics,
        parts: &impl Parts,
        need: &Need<'_>,
        peer: Peer,
    ) -> Result<Principal, Error> {
        if !self.ready() {
            return Err(Error::new(
                ErrorKind::NotReady,
                "the gateway has not loaded its metadata yet",
            ));
        }
        // An address past its failed authentications: what it presents next that does not
        // authenticate gets 429 (not 401, and it must wait); a legacy secret (guessable) or a
        // malformed credential is not even tried. A kateway key (160 random bits, not
        // guessable) is still checked, so that a good key sharing the address (a NAT, a proxy)
        // is not locked out.
        let limited = || -> Option<Error> {
            let fails = self.fails.borrow();
            if fails.is_empty() {
                return None;
            }
            let wait = fails.check(peer.ip, Instant::now()).err()?;
            metrics::inc(&m.auth_limited_total);
            Some(
                Error::new(
                    ErrorKind::TooManyAuthFailures,
                    "too many failed authentications from this address",
                )
                .with_retry_after(retry_after_secs(wait) as u32),
            )
        };
        let failed = |e: Error| {
            if e.kind() == ErrorKind::Forbidden {
                metrics::inc(&m.auth_forbidden_total);
                return e;
            }
            metrics::inc(&m.auth_failures_total);
            let limit = limited();
            self.fails.borrow_mut().failed(peer.ip, Instant::now());
            limit.unwrap_or(e)
        };
        let (cred, claimed) = credential(parts).map_err(failed)?.ok_or_else(|| {
            metrics::inc(&m.auth_failures_total);
            unauthorized("missing credentials: send Authorization: Bearer <key>")
        })?;
        if matches!(cred, Credential::Legacy { .. }) {
            if let Some(e) = limited() {
                return Err(e);
            }
        }
        let view = self.view.borrow();
        // The wall clock matters only to keys that expire.
        let now_ms = if view.snap.next_expiry_ms.is_some() {
            now_ms()
        } else {
            0
        };
        let p = view
            .snap
            .authenticate(&cred, claimed, now_ms, |id, s, h| self.verify(id, s, h))
            .map_err(failed)?;
        let forbidden = |msg: &'static str| {
            metrics::inc(&m.auth_forbidden_total);
            Err(Error::new(ErrorKind::Forbidden, msg))
        };
        match (peer.listener, p.operator()) {
            (Listener::Operator, false) => {
                return forbidden("the operator listener takes operator keys only")
            }
            (Listener::Main, true) => {
                return forbidden("operator keys are taken on the operator listener only")
            }
            _ => {}
        }
        view.snap.authorize(&p, need, now_ms).inspect_err(|_| {
            metrics::inc(&m.auth_forbidden_total);
        })?;
        Ok(p)
    }
}

/// 429 for an app's exhausted quota `what` (`q` units per second), `wait` until it refills.
fn over_quota(what: &str, q: u64, remaining: u64, wait: Duration) -> Error {
    let secs = retry_after_secs(wait);
    Error::new(
        ErrorKind::QuotaExceeded,
        format!("the app's {what} quota ({q}/s) is spent for now"),
    )
    .with_retry_after(secs as u32)
    .with_rate_limit(
        format!("\"{what}\";q={q};w=1"),
        format!("\"{what}\";r={remaining};t={secs}"),
    )
}

/// Takes `n` units of `pool` (pre-paid), or 429.
fn take(what: &str, local: &mut Local, pool: &Pool, n: u64, now: Instant) -> Result<(), Error> {
    local
        .take(pool, n, now)
        .map_err(|w| over_quota(what, pool.rate().per_sec, pool.available(now), w))
}

/// 429 while `pool` is in debt (a post-paid rate spent beyond its burst).
fn check(what: &str, local: &Local, pool: &Pool, now: Instant) -> Result<(), Error> {
    local
        .check(pool, now)
        .map_err(|w| over_quota(what, pool.rate().per_sec, 0, w))
}

/// Runs `f` on this core's allowance of `app`'s quota, if the app has one.
fn with_quota<T>(
    shard: &Shard,
    app: &str,
    f: impl FnOnce(&AppPools, &mut AppLocal) -> Result<T, Error>,
) -> Option<Result<T, Error>> {
    let t = &shard.tenancy;
    let view = t.view.borrow();
    if !view.snap.has_quotas() {
        return None;
    }
    let pools = view.pools.get(app)?;
    let mut locals = t.locals.borrow_mut();
    if !locals.contains_key(app) {
        locals.insert(app.to_owned(), AppLocal::default());
    }
    let local = locals.get_mut(app)?;
    let r = f(pools, local);
    if r.is_err() {
        metrics::inc(&shard.metrics.quota_refusals_total);
    }
    Some(r)
}

/// Charges a publish of `n` messages and `bytes` bytes to `app`'s quota: messages pre-paid,
/// bytes post-paid (a debt makes the next publish wait).
pub fn charge_publish(shard: &Shard, app: &str, n: u64, bytes: u64) -> Result<(), Error> {
    with_quota(shard, app, |pools, local| {
        let now = Instant::now();
        // A request that costs more than the quota's burst could never be answered in time.
        for (what, pool, cost) in [
            ("messages", &pools.publish_messages, n),
            ("bytes", &pools.publish_bytes, bytes),
        ] {
            if let Some(p) = pool.as_ref().filter(|p| cost > p.rate().burst) {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "{cost} {what} in one publish is more than the app's quota allows at once ({})",
                        p.rate().burst
                    ),
                ));
            }
        }
        if let Some(pb) = &pools.publish_bytes {
            check("publish-bytes", &local.publish_bytes, pb, now)?;
        }
        if let Some(pm) = &pools.publish_messages {
            take("publish-messages", &mut local.publish_messages, pm, n, now)?;
        }
        if let Some(pb) = &pools.publish_bytes {
            local.publish_bytes.charge(pb, bytes, now);
        }
        Ok(())
    })
    .unwrap_or(Ok(()))
}

/// 429 while `app`'s subscribe bytes are in debt.
pub fn check_subscribe(shard: &Shard, app: &str) -> Result<(), Error> {
    with_quota(shard, app, |pools, local| match &pools.subscribe_bytes {
        Some(sb) => check(
            "subscribe-bytes",
            &local.subscribe_bytes,
            sb,
            Instant::now(),
        ),
        None => Ok(()),
    })
    .unwrap_or(Ok(()))
}

/// How long `app`'s subscribe bytes stay in debt (`None`: not in debt): an open stream waits
/// that long before it reads more.
pub fn subscribe_wait(shard: &Shard, app: &str) -> Option<Duration> {
    let t = &shard.tenancy;
    let view = t.view.borrow();
    let pool = view.pools.get(app)?.subscribe_bytes.as_ref()?;
    let now = Instant::now();
    match t.locals.borrow().get(app) {
        Some(l) => l.subscribe_bytes.check(pool, now).err(),
        None => pool.check(now).err(),
    }
}

/// Charges `bytes` delivered to a subscriber of `app`.
pub fn charge_subscribe(shard: &Shard, app: &str, bytes: u64) {
    let _ = with_quota(shard, app, |pools, local| {
        if let Some(sb) = &pools.subscribe_bytes {
            local.subscribe_bytes.charge(sb, bytes, Instant::now());
        }
        Ok(())
    });
}

/// What to answer a request that does not parse (`e`): 401 rather than 400 when its
/// credentials do not authenticate either, so that only a caller with a key learns what is
/// wrong with its requests. No route (404, 405) is said to anyone.
pub fn refused(shard: &Shard, parts: &impl Parts, peer: Peer, e: Error) -> Error {
    let t = &shard.tenancy;
    if !t.enabled
        || matches!(
            e.kind(),
            ErrorKind::UnknownRoute | ErrorKind::MethodNotAllowed
        )
    {
        return e;
    }
    let need = match kateway_proto::route::route(parts.method(), parts.path()) {
        Ok(r) => Command::need_of_route(&r),
        Err(_) => Need::Nothing,
    };
    match t.authenticate(&shard.metrics, parts, &need, peer) {
        Ok(_) => e,
        Err(a) => a,
    }
}

/// Authenticates and admits `cmd` (already parsed from `parts`) coming from `peer`.
pub fn admit(
    shard: &Rc<Shard>,
    parts: &impl Parts,
    cmd: &Command<'_>,
    peer: Peer,
) -> Result<Admitted, Error> {
    let t = &shard.tenancy;
    let need = cmd.need();
    if matches!(need, Need::Nothing) {
        return Ok(Admitted {
            principal: None,
            peer,
            _place: None,
            _slot: None,
        });
    }
    if peer.listener == Listener::Operator && !t.enabled {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "authentication is off: the operator listener serves nothing",
        ));
    }
    let principal = if t.enabled {
        Some(t.authenticate(&shard.metrics, parts, &need, peer)?)
    } else if matches!(cmd, Command::Admin(_)) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "authentication is off (auth.enabled = false): the tenancy API is too",
        ));
    } else {
        None
    };
    // A principal's app came from the metadata, valid already; a believed `Appid` is checked.
    let app = match &principal {
        Some(p) => Some(p.app()),
        None => Caller::of(parts).appid().ok(),
    };
    // Quotas.
    let mut slot = None;
    if let Some(app) = app {
        match cmd {
            Command::Publish(p) => {
                let n = match &p.messages {
                    Messages::One(_) => 1,
                    Messages::Batch(b) => b.len() as u64,
                };
                charge_publish(shard, app, n, parts.body().len() as u64)?;
            }
            Command::Subscribe(_) | Command::Socket(Socket::Subscribe(_)) => {
                check_subscribe(shard, app)?
            }
            _ => {}
        }
        if cmd.is_session() {
            slot = stream_slot(shard, app)?;
        }
    }
    // Admission: long-lived sessions are bounded by their slots and the connection caps.
    let place = if cmd.is_session() {
        None
    } else {
        Some(place(shard, app)?)
    };
    Ok(Admitted {
        principal,
        peer,
        _place: place,
        _slot: slot,
    })
}

/// A slot among `app`'s concurrent streams, if it has a limit; 429 when they are all taken.
fn stream_slot(shard: &Shard, app: &str) -> Result<Option<SlotGuard>, Error> {
    let view = shard.tenancy.view.borrow();
    let Some(slots) = view.pools.get(app).and_then(|p| p.streams.clone()) else {
        return Ok(None);
    };
    match slots.try_acquire() {
        Some(g) => Ok(Some(g)),
        None => {
            metrics::inc(&shard.metrics.quota_refusals_total);
            let q = slots.limit();
            Err(Error::new(
                ErrorKind::QuotaExceeded,
                format!("the app holds its {q} concurrent long polls and streams"),
            )
            .with_retry_after(1)
            .with_rate_limit(
                format!("\"streams\";q={q}"),
                "\"streams\";r=0;t=1".to_string(),
            ))
        }
    }
}

/// A place among the core's requests in flight: 503 when the core is full, 429 when `app`
/// holds its share (so one app's flood leaves room for the others).
fn place(shard: &Rc<Shard>, app: Option<&str>) -> Result<Place, Error> {
    let t = &shard.tenancy;
    if t.in_flight.get() >= t.max_in_flight.get() {
        metrics::inc(&shard.metrics.admission_refusals_total);
        return Err(Error::new(
            ErrorKind::Busy,
            "this core runs as many requests as it may: retry",
        ));
    }
    if let Some(app) = app {
        let mut per_app = t.app_in_flight.borrow_mut();
        let n = match per_app.get_mut(app) {
            Some(n) => n,
            None => per_app.entry(app.to_owned()).or_insert(0),
        };
        if *n >= t.app_max_in_flight.get() {
            metrics::inc(&shard.metrics.admission_refusals_total);
            return Err(Error::new(
                ErrorKind::AppBusy,
                "the app holds its share of this core's requests in flight: retry",
            ));
        }
        *n += 1;
    }
    t.in_flight.set(t.in_flight.get() + 1);
    Ok(Place {
        shard: shard.clone(),
        app: app.map(|a| Principal::new(a, "", keys::Scope::Publish)),
    })
}

/// Resolves when the metadata no longer lets `who` do what `need` says: the error to end the
/// session with. Never, when authentication is off.
pub async fn lost(shard: &Shard, who: Option<&Principal>, need: Need<'_>) -> Error {
    let Some(p) = who else {
        return std::future::pending().await;
    };
    let t = &shard.tenancy;
    loop {
        let seen = t.changed.epoch();
        t.changed.wait(seen).await;
        let view = t.view();
        if let Err(e) = view.snap.still(p, &need, now_ms()) {
            metrics::inc(&shard.metrics.sessions_revoked_total);
            return e;
        }
    }
}
