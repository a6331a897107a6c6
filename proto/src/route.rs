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
}

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
        _ => Err(NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(Method::Get, "/alive"), Ok(Route::Alive));
        assert_eq!(route(Method::Get, "/ready"), Ok(Route::Ready));
        assert_eq!(
            route(Method::Put, "/v1/offset/a/t/v1/g/3"),
            Ok(Route::Seek {
                appid: "a",
                topic: "t",
                ver: "v1",
                group: "g",
                partition: "3"
            })
        );
        assert_eq!(
            route(Method::Post, "/v1/msgs/orders/v1"),
            Ok(Route::Publish {
                topic: "orders",
                ver: "v1"
            })
        );
        assert_eq!(
            route(Method::Get, "/v1/msgs/app/orders/v1"),
            Ok(Route::Subscribe {
                appid: "app",
                topic: "orders",
                ver: "v1"
            })
        );
        assert_eq!(
            route(Method::Get, "/v1/msgs/orders/v1"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(Method::Get, "/v1/ws/msgs/orders/v1"),
            Ok(Route::WsPublish {
                topic: "orders",
                ver: "v1"
            })
        );
        assert_eq!(
            route(Method::Get, "/v1/ws/msgs/app/orders/v1/"),
            Ok(Route::WsSubscribe {
                appid: "app",
                topic: "orders",
                ver: "v1"
            })
        );
        assert_eq!(
            route(Method::Post, "/v1/ws/msgs/orders/v1"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        assert_eq!(route(Method::Get, "/v1/nope"), Err(RouteError::NotFound));
        assert_eq!(
            route(Method::Get, "/a/b/c/d/e/f/g/h/i/j"),
            Err(RouteError::NotFound)
        );
        assert!(matches!(
            route(Method::Delete, "/v1/topics/a/t/v1"),
            Ok(Route::Topic {
                method: Method::Delete,
                ..
            })
        ));
        assert_eq!(
            route(Method::Get, "/v1/topics/a/t/v1"),
            Err(RouteError::MethodNotAllowed("POST, PUT, DELETE"))
        );
    }
}
