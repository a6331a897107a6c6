//! Tenancy on a core: the view every request is authorized with, swapped whole when the
//! metadata changes ([`Tenancy::install`]), and what a core keeps for itself: the keys it
//! verified already (so most requests skip the HMAC), its allowance of each app's quota, the
//! failed authentications per client address, and its requests in flight per app.
//!
//! * [`edge`]: what every transport calls once per request: authenticate, authorize, charge
//!   the quota, admit; and the watch that ends a long-lived session when its key loses access.
//! * [`writer`]: core 0's metadata writer: checks a change, persists it, applies it, and hands
//!   every core the next view.
//!
//! The view is built on core 0 and shared read-only (an `Arc` per core, swapped between
//! requests): authorizing a request takes no lock and allocates nothing.

pub mod edge;
pub mod writer;

use crate::event::Event;
use kateway_core::keys::Pepper;
use kateway_core::quota::{FailLimiter, Local, Pool, Rate, Slots};
use kateway_core::tenancy::{QuotaSpec, Snapshot};
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// The process-wide pools of one app's quota (shared by the cores).
pub struct AppPools {
    pub spec: QuotaSpec,
    pub publish_messages: Option<Pool>,
    pub publish_bytes: Option<Pool>,
    pub subscribe_bytes: Option<Pool>,
    pub streams: Option<Arc<Slots>>,
}

impl AppPools {
    /// Pools for `spec`: each rate with a burst of one second's worth. The stream slots of
    /// `before` (the app's pools under its previous quota) are kept, so that the streams open
    /// under it stay counted.
    pub fn new(spec: QuotaSpec, before: Option<&AppPools>) -> Self {
        let pool = |r: Option<u64>| {
            r.map(|per_sec| {
                Pool::new(Rate {
                    per_sec,
                    burst: per_sec,
                })
            })
        };
        Self {
            spec,
            publish_messages: pool(spec.publish_messages_per_sec),
            publish_bytes: pool(spec.publish_bytes_per_sec),
            subscribe_bytes: pool(spec.subscribe_bytes_per_sec),
            streams: spec
                .max_streams
                .map(|n| match before.and_then(|b| b.streams.clone()) {
                    Some(s) => {
                        s.set_limit(n.into());
                        s
                    }
                    None => Arc::new(Slots::new(n.into())),
                }),
        }
    }
}

/// What the cores authorize with: the snapshot of the metadata and the quota pools.
#[derive(Default)]
pub struct View {
    pub snap: Snapshot,
    pub pools: FxHashMap<String, Arc<AppPools>>,
}

/// One core's allowance of one app's quotas.
#[derive(Default)]
pub struct AppLocal {
    pub publish_messages: Local,
    pub publish_bytes: Local,
    pub subscribe_bytes: Local,
}

/// Whether `a` and `b` are equal, in time that depends on their length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// Keys verified on this core under the current view, at most this many.
const VERIFIED_MAX: usize = 4096;

/// One core's tenancy state.
pub struct Tenancy {
    /// Whether requests authenticate (`auth.enabled`).
    pub enabled: bool,
    pepper: Arc<Pepper>,
    view: RefCell<Arc<View>>,
    /// Moves whenever a new view is installed.
    pub changed: Event,
    /// Whether a view from the loaded metadata was installed.
    ready: Cell<bool>,
    /// Secrets verified under the current view, by key id: a constant-time compare instead of
    /// an HMAC. Only in memory; emptied at every view change.
    verified: RefCell<FxHashMap<String, Box<str>>>,
    pub(crate) fails: RefCell<FailLimiter>,
    pub(crate) locals: RefCell<FxHashMap<String, AppLocal>>,
    /// Requests running now, and per app.
    pub(crate) in_flight: Cell<u32>,
    pub(crate) app_in_flight: RefCell<FxHashMap<String, u32>>,
    pub(crate) max_in_flight: Cell<u32>,
    pub(crate) app_max_in_flight: Cell<u32>,
}

impl Tenancy {
    /// A core's tenancy state, before any view is installed (not ready).
    /// A key derived from the pepper for `label` (the same on every gateway with the pepper).
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        self.pepper.derive(label)
    }

    pub fn new(cfg: &kateway_core::config::Config, pepper: Arc<Pepper>) -> Self {
        let a = &cfg.auth;
        let max = cfg.limits.max_requests_in_flight_per_core;
        Self {
            enabled: a.enabled,
            pepper,
            view: RefCell::new(Arc::new(View::default())),
            changed: Event::default(),
            ready: Cell::new(false),
            verified: Default::default(),
            fails: RefCell::new(fail_limiter(cfg)),
            locals: Default::default(),
            in_flight: Cell::new(0),
            app_in_flight: Default::default(),
            max_in_flight: Cell::new(max),
            app_max_in_flight: Cell::new(app_max_in_flight(cfg)),
        }
    }

    /// Takes reloaded admission limits and failed-authentication rates (a changed rate starts
    /// the failure counts afresh).
    pub fn reconfigure(&self, cfg: &kateway_core::config::Config) {
        self.max_in_flight
            .set(cfg.limits.max_requests_in_flight_per_core);
        self.app_max_in_flight.set(app_max_in_flight(cfg));
        let rate = fail_limiter(cfg).rate();
        if self.fails.borrow().rate() != rate {
            *self.fails.borrow_mut() = fail_limiter(cfg);
        }
    }

    /// Installs the next view: from now on every request, and every open session's next check,
    /// uses it.
    pub fn install(&self, v: Arc<View>) {
        *self.view.borrow_mut() = v;
        self.verified.borrow_mut().clear();
        // Allowances leased from pools that may have been replaced (a quota lowered) are
        // dropped, not spent.
        self.locals.borrow_mut().clear();
        self.ready.set(true);
        self.changed.notify();
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Whether the metadata is loaded (requests that need a key are answered 503 until then).
    pub fn ready(&self) -> bool {
        self.ready.get() || !self.enabled
    }

    /// Whether `app` has a subscribe-bytes quota.
    pub fn quota_on_subscribe(&self, app: &str) -> bool {
        self.view
            .borrow()
            .pools
            .get(app)
            .is_some_and(|p| p.subscribe_bytes.is_some())
    }

    /// Whether `secret` is the secret of key `keyid`, whose stored hash is `hash`: from the
    /// cache of keys verified under this view, or by the HMAC (then cached).
    fn verify(&self, keyid: &str, secret: &str, hash: &[u8; 32]) -> bool {
        if let Some(s) = self.verified.borrow().get(keyid) {
            return same(s.as_bytes(), secret.as_bytes());
        }
        if !self.pepper.verify_secret(secret, hash) {
            return false;
        }
        let mut v = self.verified.borrow_mut();
        if v.len() >= VERIFIED_MAX {
            v.clear();
        }
        v.insert(keyid.to_owned(), secret.into());
        true
    }
}

fn fail_limiter(cfg: &kateway_core::config::Config) -> FailLimiter {
    FailLimiter::new(
        Rate {
            per_sec: cfg.auth.failed_per_second.into(),
            burst: cfg.auth.failed_burst.into(),
        },
        kateway_core::quota::FAIL_CAP,
    )
}

/// One app's share of a core's requests in flight (`limits.app_share_per_core` percent).
fn app_max_in_flight(cfg: &kateway_core::config::Config) -> u32 {
    let max = cfg.limits.max_requests_in_flight_per_core;
    (u64::from(max) * u64::from(cfg.limits.app_share_per_core) / 100).max(1) as u32
}
