//! The tenancy API's commands: apps, keys, legacy secrets, grants, quotas and the audit list,
//! parsed and checked like every other command. Who may run each is [`Command::need`].

use super::*;
use crate::route::AdminRoute;
use kateway_core::keys::Scope;
use kateway_core::tenancy::{QueuePolicySpec, QuotaSpec};

/// A tenancy API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin<'a> {
    ListApps,
    CreateApp(&'a str),
    DeleteApp(&'a str),
    ListKeys(&'a str),
    /// `POST /v1/keys/:app?scope=&topics=&expires=`
    CreateKey {
        app: &'a str,
        scope: Scope,
        /// Topic storage names the key is narrowed to.
        topics: Option<Vec<String>>,
        /// How long it works.
        expires: Option<Duration>,
    },
    RevokeKey {
        app: &'a str,
        keyid: &'a str,
    },
    /// A new key like `keyid`, which keeps working for `grace`.
    RotateKey {
        app: &'a str,
        keyid: &'a str,
        grace: Duration,
    },
    /// The original kateway's app secret (the body), imported as a legacy key.
    ImportSecret {
        app: &'a str,
        secret: String,
    },
    ListGrants(&'a str),
    /// Grant (`grant`) or take back app `app`'s right to subscribe to `topic`.
    Grant {
        topic: TopicPath<'a>,
        app: &'a str,
        grant: bool,
    },
    GetQuota(&'a str),
    SetQuota {
        app: &'a str,
        quota: Option<QuotaSpec>,
    },
    GetQueuePolicy {
        app: &'a str,
        group: &'a str,
    },
    /// Sets (`None`: removes) a leased group's delivery policy.
    SetQueuePolicy {
        app: &'a str,
        group: &'a str,
        policy: Option<QueuePolicySpec>,
    },
    /// The newest `limit` audit entries.
    Audit {
        limit: usize,
    },
}

/// How long a rotated key keeps working by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// The longest a key's expiry or grace period may be.
pub const MAX_KEY_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn duration(q: &str, name: &str) -> Result<Option<Duration>, Error> {
    let d = query::raw(q, name)
        .map(|v| parse_duration(v).map_err(Error::param))
        .transpose()?;
    if d.is_some_and(|d| d > MAX_KEY_DURATION) {
        return Err(Error::param(format!("{name} is at most 100 years")));
    }
    Ok(d)
}

/// `topics=a.t.v1,t.v2`: storage names, a bare `topic.ver` being the app's own.
fn topics(q: &str, app: &str) -> Result<Option<Vec<String>>, Error> {
    let Some(list) = query::raw(q, "topics").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for t in list.split(',') {
        let parts: Vec<&str> = t.split('.').collect();
        let (a, topic, ver) = match parts[..] {
            [topic, ver] => (app, topic, ver),
            [a, topic, ver] => (a, topic, ver),
            _ => {
                return Err(Error::param(format!(
                    "invalid topic {t:?} in topics=: use topic.ver or app.topic.ver"
                )))
            }
        };
        TopicPath::new(a, topic, ver)?;
        out.push(format!("{a}.{topic}.{ver}"));
    }
    Ok(Some(out))
}

pub(super) fn admin<'a>(
    parts: &'a impl Parts,
    q: &'a str,
    r: AdminRoute<'a>,
    limits: &Limits,
) -> Result<Admin<'a>, Error> {
    let app = |a: &'a str| validate_part("app", a).map(|_| a);
    Ok(match r {
        AdminRoute::Apps => Admin::ListApps,
        AdminRoute::App { method, app: a } => match method {
            Method::Post => Admin::CreateApp(app(a)?),
            _ => Admin::DeleteApp(app(a)?),
        },
        AdminRoute::Keys { method, app: a } => {
            let a = app(a)?;
            if method != Method::Post {
                return Ok(Admin::ListKeys(a));
            }
            let scope = query::raw(q, "scope")
                .ok_or_else(|| Error::param("missing scope: publish, subscribe or app_admin"))?;
            let scope = Scope::of_name(scope).ok_or_else(|| {
                Error::param(format!(
                    "invalid scope {scope:?}: use publish, subscribe, app_admin (or operator)"
                ))
            })?;
            Admin::CreateKey {
                app: a,
                scope,
                topics: topics(q, a)?,
                expires: duration(q, "expires")?,
            }
        }
        AdminRoute::Key { app: a, keyid } => Admin::RevokeKey {
            app: app(a)?,
            keyid: app(keyid)?,
        },
        AdminRoute::Rotate { app: a, keyid } => Admin::RotateKey {
            app: app(a)?,
            keyid: app(keyid)?,
            grace: duration(q, "grace")?.unwrap_or(DEFAULT_GRACE),
        },
        AdminRoute::Secret { app: a } => {
            let body = crate::gzip::body(parts, limits.max_batch_bytes)?;
            let secret = std::str::from_utf8(&body)
                .map_err(|_| Error::new(ErrorKind::InvalidBody, "the secret is not UTF-8 text"))?
                .trim()
                .to_owned();
            Admin::ImportSecret {
                app: app(a)?,
                secret,
            }
        }
        AdminRoute::Grants { app: a } => Admin::ListGrants(app(a)?),
        AdminRoute::Grant {
            method,
            appid,
            topic,
            ver,
            subscriber,
        } => Admin::Grant {
            topic: TopicPath::new(appid, topic, ver)?,
            app: app(subscriber)?,
            grant: method == Method::Put,
        },
        AdminRoute::Quota { method, app: a } => match method {
            Method::Put => {
                let body = crate::gzip::body(parts, limits.max_batch_bytes)?;
                let crate::json::Obj(quota): crate::json::Obj<QuotaSpec> =
                    serde_json::from_slice(&body).map_err(|e| {
                        Error::new(ErrorKind::InvalidBody, format!("invalid quota: {e}"))
                    })?;
                Admin::SetQuota {
                    app: app(a)?,
                    quota: Some(quota),
                }
            }
            Method::Delete => Admin::SetQuota {
                app: app(a)?,
                quota: None,
            },
            _ => Admin::GetQuota(app(a)?),
        },
        AdminRoute::QueuePolicy {
            method,
            app: a,
            group,
        } => {
            let (app, group) = (app(a)?, validate_part("group", group).map(|_| group)?);
            if group.len() > 60 {
                return Err(Error::param(
                    "a leased group's name is at most 60 characters (its dead-letter topic is <group>-dlq)",
                ));
            }
            match method {
                Method::Put => Admin::SetQueuePolicy {
                    app,
                    group,
                    policy: Some(queue_policy(&crate::gzip::body(
                        parts,
                        limits.max_batch_bytes,
                    )?)?),
                },
                Method::Delete => Admin::SetQueuePolicy {
                    app,
                    group,
                    policy: None,
                },
                _ => Admin::GetQueuePolicy { app, group },
            }
        }
        AdminRoute::Audit => Admin::Audit {
            limit: num(q, "limit")?.unwrap_or(100).clamp(1, 10_000),
        },
    })
}

/// A group policy's body: `{"max_attempts":n,"visibility":"30s","backoff_base":"1s",
/// "backoff_max":"1m"}`, each optional (left out: the gateway's setting).
fn queue_policy(body: &[u8]) -> Result<QueuePolicySpec, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        max_attempts: Option<u32>,
        visibility: Option<String>,
        backoff_base: Option<String>,
        backoff_max: Option<String>,
    }
    let invalid = |m: String| Error::new(ErrorKind::InvalidBody, format!("invalid policy: {m}"));
    let crate::json::Obj(b): crate::json::Obj<Body> =
        serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let ms = |name: &str, v: Option<String>| {
        v.map(|s| {
            parse_duration(&s)
                .map(|d| d.as_millis().min(u64::MAX.into()) as u64)
                .map_err(|e| invalid(format!("{name}: {e}")))
        })
        .transpose()
    };
    let spec = QueuePolicySpec {
        max_attempts: b.max_attempts,
        visibility_ms: ms("visibility", b.visibility)?,
        backoff_base_ms: ms("backoff_base", b.backoff_base)?,
        backoff_max_ms: ms("backoff_max", b.backoff_max)?,
    };
    spec.check().map_err(invalid)?;
    Ok(spec)
}
