//! The API's routes: method and path in, a typed [`Route`] out, or 404/405. Path segments are
//! borrowed from the request; name validation happens in the handlers.

use crate::http1::Method;

/// A matched API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /alive`
    Alive,
    /// `GET /ready`
    Ready,
    /// `GET /v1/status`
    ProcessStatus,
    /// `GET /metrics`
    Metrics,
    /// `GET /openapi.json`: the API's OpenAPI document.
    OpenApi,
    /// `POST /v1/msgs/:topic/:ver`
    Publish { topic: &'a str, ver: &'a str },
    /// `GET /v1/msgs/:appid/:topic/:ver`
    Subscribe {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// `GET /v1/ws/msgs/:topic/:ver` (a WebSocket that publishes)
    WsPublish { topic: &'a str, ver: &'a str },
    /// `GET /v1/ws/msgs/:appid/:topic/:ver` (a WebSocket that subscribes)
    WsSubscribe {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// `PUT /v1/offsets/:appid/:topic/:ver/:group`
    AckBatch {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
        group: &'a str,
    },
    /// `POST /v1/queue/:appid/:topic/:ver/:group/:op`, `op` one of [`SETTLE_OPS`]: settles
    /// leased messages by receipt.
    Settle {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
        group: &'a str,
        op: &'a str,
    },
    /// `GET|DELETE /v1/dlq/:appid/:group` (count, purge), `GET .../messages` (peek),
    /// `POST .../redrive`: a leased group's dead letters.
    DeadLetters {
        method: Method,
        appid: &'a str,
        group: &'a str,
        action: Option<&'a str>,
    },
    /// `GET /v1/delays/:topic/:ver` (list), `GET|DELETE /v1/delays/:topic/:ver/:id` (peek,
    /// cancel): the delayed messages of one of the caller's topics.
    Delays {
        method: Method,
        topic: &'a str,
        ver: &'a str,
        id: Option<&'a str>,
    },
    /// `GET|PUT|DELETE /v1/webhooks/:appid/:topic/:ver/:group`, `POST .../pause|resume`,
    /// `GET .../log`: the caller's group's webhook on a topic.
    Webhook {
        method: Method,
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
        group: &'a str,
        action: Option<&'a str>,
    },
    /// `POST /v1/debug/clock?advance=`: moves the delay clock forward (`delay.test_clock`).
    Clock,
    /// `POST /v1/config/reload`: reads the configuration again and applies what may change live.
    Reload,
    /// `GET /ui`: the live dashboard's page.
    Ui,
    /// `GET /v1/dashboard`: what the dashboard shows, once or as server-sent events.
    Dashboard,
    /// `GET /v1/dashboard/messages/:appid/:topic/:ver?partition=&n=`: the latest messages of a
    /// partition (the dashboard's message browser).
    Browse {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// `POST|PUT|DELETE /v1/topics/:appid/:topic/:ver`
    Topic {
        method: Method,
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// `PUT /v1/offset/:appid/:topic/:ver/:group/:partition?offset=N`
    Seek {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
        group: &'a str,
        partition: &'a str,
    },
    /// `GET /v1/partitions/:appid/:topic/:ver`
    Partitions {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// `GET /v1/status/:appid/:topic/:ver`
    TopicStatus {
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
    },
    /// The tenancy API.
    Admin(AdminRoute<'a>),
}

/// The tenancy API: apps, keys, secrets, grants, quotas and the audit list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute<'a> {
    /// `GET /v1/apps`
    Apps,
    /// `POST|DELETE /v1/apps/:app`
    App { method: Method, app: &'a str },
    /// `GET|POST /v1/keys/:app`
    Keys { method: Method, app: &'a str },
    /// `DELETE /v1/keys/:app/:keyid`
    Key { app: &'a str, keyid: &'a str },
    /// `POST /v1/keys/:app/:keyid/rotate`
    Rotate { app: &'a str, keyid: &'a str },
    /// `PUT /v1/secrets/:app`: import the original kateway's app secret.
    Secret { app: &'a str },
    /// `GET /v1/grants/:app`
    Grants { app: &'a str },
    /// `PUT|DELETE /v1/grants/:appid/:topic/:ver/:subscriber`
    Grant {
        method: Method,
        appid: &'a str,
        topic: &'a str,
        ver: &'a str,
        subscriber: &'a str,
    },
    /// `GET|PUT|DELETE /v1/quotas/:app`
    Quota { method: Method, app: &'a str },
    /// `GET|PUT|DELETE /v1/policies/:app/:group`: a leased group's delivery policy.
    QueuePolicy {
        method: Method,
        app: &'a str,
        group: &'a str,
    },
    /// `GET /v1/audit`
    Audit,
}

/// What `POST /v1/queue/.../:op` may do with a leased message.
pub const SETTLE_OPS: [&str; 4] = ["ack", "nack", "extend", "bury"];

/// Why no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No such path.
    NotFound,
    /// The path exists for other methods; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
}

/// Matches a request.
pub fn route<'a>(method: Method, path: &'a str) -> Result<Route<'a>, RouteError> {
    use Method::*;
    use RouteError::*;
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let mut segs = [""; 8];
    let mut n = 0;
    for s in path.split('/').skip(1) {
        if n == segs.len() {
            return Err(NotFound);
        }
        segs[n] = s;
        n += 1;
    }
    let allow = |ok: bool, allow: &'static str, r: Route<'a>| {
        if ok {
            Ok(r)
        } else {
            Err(MethodNotAllowed(allow))
        }
    };
    let get = matches!(method, Get | Head);
    match &segs[..n] {
        ["alive"] => allow(get, "GET", Route::Alive),
        ["ready"] => allow(get, "GET", Route::Ready),
        ["metrics"] => allow(get, "GET", Route::Metrics),
        ["openapi.json"] => allow(get, "GET", Route::OpenApi),
        ["v1", "status"] => allow(get, "GET", Route::ProcessStatus),
        ["v1", "msgs", topic, ver] => allow(method == Post, "POST", Route::Publish { topic, ver }),
        // Not HEAD: a subscribe hands messages out (and auto-ack commits them), which a HEAD
        // request, whose answer has no body, must not do.
        ["v1", "msgs", appid, topic, ver] => {
            allow(method == Get, "GET", Route::Subscribe { appid, topic, ver })
        }
        ["v1", "ws", "msgs", topic, ver] => {
            allow(method == Get, "GET", Route::WsPublish { topic, ver })
        }
        ["v1", "ws", "msgs", appid, topic, ver] => allow(
            method == Get,
            "GET",
            Route::WsSubscribe { appid, topic, ver },
        ),
        ["v1", "offsets", appid, topic, ver, group] => allow(
            method == Put,
            "PUT",
            Route::AckBatch {
                appid,
                topic,
                ver,
                group,
            },
        ),
        ["v1", "queue", appid, topic, ver, group, op] if SETTLE_OPS.contains(op) => allow(
            method == Post,
            "POST",
            Route::Settle {
                appid,
                topic,
                ver,
                group,
                op,
            },
        ),
        ["v1", "dlq", appid, group] => allow(
            get || method == Delete,
            "GET, DELETE",
            Route::DeadLetters {
                method,
                appid,
                group,
                action: None,
            },
        ),
        ["v1", "dlq", appid, group, "messages"] => allow(
            get,
            "GET",
            Route::DeadLetters {
                method,
                appid,
                group,
                action: Some("messages"),
            },
        ),
        ["v1", "dlq", appid, group, "redrive"] => allow(
            method == Post,
            "POST",
            Route::DeadLetters {
                method,
                appid,
                group,
                action: Some("redrive"),
            },
        ),
        ["v1", "offset", appid, topic, ver, group, partition] => allow(
            method == Put,
            "PUT",
            Route::Seek {
                appid,
                topic,
                ver,
                group,
                partition,
            },
        ),
        ["v1", "topics", appid, topic, ver] => allow(
            matches!(method, Post | Put | Delete),
            "POST, PUT, DELETE",
            Route::Topic {
                method,
                appid,
                topic,
                ver,
            },
        ),
        ["v1", "partitions", appid, topic, ver] => {
            allow(get, "GET", Route::Partitions { appid, topic, ver })
        }
        ["v1", "status", appid, topic, ver] => {
            allow(get, "GET", Route::TopicStatus { appid, topic, ver })
        }
        ["v1", "apps"] => allow(get, "GET", Route::Admin(AdminRoute::Apps)),
        ["v1", "apps", app] => allow(
            matches!(method, Post | Delete),
            "POST, DELETE",
            Route::Admin(AdminRoute::App { method, app }),
        ),
        ["v1", "keys", app] => allow(
            get || method == Post,
            "GET, POST",
            Route::Admin(AdminRoute::Keys { method, app }),
        ),
        ["v1", "keys", app, keyid] => allow(
            method == Delete,
            "DELETE",
            Route::Admin(AdminRoute::Key { app, keyid }),
        ),
        ["v1", "keys", app, keyid, "rotate"] => allow(
            method == Post,
            "POST",
            Route::Admin(AdminRoute::Rotate { app, keyid }),
        ),
        ["v1", "secrets", app] => allow(
            method == Put,
            "PUT",
            Route::Admin(AdminRoute::Secret { app }),
        ),
        ["v1", "grants", app] => allow(get, "GET", Route::Admin(AdminRoute::Grants { app })),
        ["v1", "grants", appid, topic, ver, subscriber] => allow(
            matches!(method, Put | Delete),
            "PUT, DELETE",
            Route::Admin(AdminRoute::Grant {
                method,
                appid,
                topic,
                ver,
                subscriber,
            }),
        ),
        ["v1", "quotas", app] => allow(
            get || matches!(method, Put | Delete),
            "GET, PUT, DELETE",
            Route::Admin(AdminRoute::Quota { method, app }),
        ),
        ["v1", "policies", app, group] => allow(
            get || matches!(method, Put | Delete),
            "GET, PUT, DELETE",
            Route::Admin(AdminRoute::QueuePolicy { method, app, group }),
        ),
        ["v1", "audit"] => allow(get, "GET", Route::Admin(AdminRoute::Audit)),
        ["v1", "delays", topic, ver] => allow(
            get,
            "GET",
            Route::Delays {
                method,
                topic,
                ver,
                id: None,
            },
        ),
        ["v1", "delays", topic, ver, id] => allow(
            get || method == Delete,
            "GET, DELETE",
            Route::Delays {
                method,
                topic,
                ver,
                id: Some(id),
            },
        ),
        ["v1", "webhooks", appid, topic, ver, group] => allow(
            get || matches!(method, Put | Delete),
            "GET, PUT, DELETE",
            Route::Webhook {
                method,
                appid,
                topic,
                ver,
                group,
                action: None,
            },
        ),
        ["v1", "webhooks", appid, topic, ver, group, action @ ("pause" | "resume")] => allow(
            method == Post,
            "POST",
            Route::Webhook {
                method,
                appid,
                topic,
                ver,
                group,
                action: Some(action),
            },
        ),
        ["v1", "webhooks", appid, topic, ver, group, "log"] => allow(
            get,
            "GET",
            Route::Webhook {
                method,
                appid,
                topic,
                ver,
                group,
                action: Some("log"),
            },
        ),
        ["v1", "debug", "clock"] => allow(method == Post, "POST", Route::Clock),
        ["v1", "config", "reload"] => allow(method == Post, "POST", Route::Reload),
        ["ui"] => allow(get, "GET", Route::Ui),
        ["v1", "dashboard"] => allow(method == Get, "GET", Route::Dashboard),
        ["v1", "dashboard", "messages", appid, topic, ver] => {
            allow(method == Get, "GET", Route::Browse { appid, topic, ver })
        }
        _ => Err(NotFound),
    }
}

/// A request for every route the table knows, with the path parameters filled in with valid
/// names: what a test walks to check that every route is authenticated, so that a route added
/// later is covered without anyone remembering to.
pub const EVERY_ROUTE: &[(&str, &str)] = &[
    ("GET", "/alive"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/status"),
    ("POST", "/v1/msgs/t/v1"),
    ("GET", "/v1/msgs/a/t/v1"),
    ("GET", "/v1/ws/msgs/t/v1"),
    ("GET", "/v1/ws/msgs/a/t/v1"),
    ("PUT", "/v1/offsets/a/t/v1/g"),
    ("PUT", "/v1/offset/a/t/v1/g/0"),
    ("POST", "/v1/queue/a/t/v1/g/ack"),
    ("POST", "/v1/queue/a/t/v1/g/nack"),
    ("POST", "/v1/queue/a/t/v1/g/extend"),
    ("POST", "/v1/queue/a/t/v1/g/bury"),
    ("GET", "/v1/dlq/a/g"),
    ("DELETE", "/v1/dlq/a/g"),
    ("GET", "/v1/dlq/a/g/messages"),
    ("POST", "/v1/dlq/a/g/redrive"),
    ("POST", "/v1/topics/a/t/v1"),
    ("PUT", "/v1/topics/a/t/v1"),
    ("DELETE", "/v1/topics/a/t/v1"),
    ("GET", "/v1/partitions/a/t/v1"),
    ("GET", "/v1/status/a/t/v1"),
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps/a"),
    ("DELETE", "/v1/apps/a"),
    ("GET", "/v1/keys/a"),
    ("POST", "/v1/keys/a"),
    ("DELETE", "/v1/keys/a/k"),
    ("POST", "/v1/keys/a/k/rotate"),
    ("PUT", "/v1/secrets/a"),
    ("GET", "/v1/grants/a"),
    ("PUT", "/v1/grants/a/t/v1/b"),
    ("DELETE", "/v1/grants/a/t/v1/b"),
    ("GET", "/v1/quotas/a"),
    ("PUT", "/v1/quotas/a"),
    ("DELETE", "/v1/quotas/a"),
    ("GET", "/v1/policies/a/g"),
    ("PUT", "/v1/policies/a/g"),
    ("DELETE", "/v1/policies/a/g"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/delays/t/v1"),
    ("GET", "/v1/delays/t/v1/i"),
    ("DELETE", "/v1/delays/t/v1/i"),
    ("POST", "/v1/debug/clock"),
    ("POST", "/v1/config/reload"),
    ("GET", "/ui"),
    ("GET", "/v1/dashboard"),
    ("GET", "/v1/dashboard/messages/a/t/v1"),
    ("GET", "/v1/webhooks/a/t/v1/g"),
    ("PUT", "/v1/webhooks/a/t/v1/g"),
    ("DELETE", "/v1/webhooks/a/t/v1/g"),
    ("POST", "/v1/webhooks/a/t/v1/g/pause"),
    ("POST", "/v1/webhooks/a/t/v1/g/resume"),
    ("GET", "/v1/webhooks/a/t/v1/g/log"),
];

#[cfg(test)]
mod tests;
