//! Unit tests of the route table.

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

/// A number per kind of route (and method, where one path takes several): the match is
/// exhaustive, so a new route does not compile until it has a number, and the test below
/// then fails until [`EVERY_ROUTE`] lists it.
fn kind(r: &Route<'_>) -> usize {
    use AdminRoute as A;
    let m = |m: &Method| match m {
        Method::Post => 0,
        Method::Put => 1,
        _ => 2,
    };
    match r {
        Route::Alive => 0,
        Route::Ready => 1,
        Route::ProcessStatus => 2,
        Route::Metrics => 3,
        Route::Publish { .. } => 4,
        Route::Subscribe { .. } => 5,
        Route::WsPublish { .. } => 6,
        Route::WsSubscribe { .. } => 7,
        Route::AckBatch { .. } => 8,
        Route::Topic { method, .. } => 9 + m(method),
        Route::Seek { .. } => 12,
        Route::Partitions { .. } => 13,
        Route::TopicStatus { .. } => 14,
        Route::Admin(A::Apps) => 15,
        Route::Admin(A::App { method, .. }) => 16 + m(method) / 2,
        Route::Admin(A::Keys { method, .. }) => 18 + usize::from(*method == Method::Post),
        Route::Admin(A::Key { .. }) => 20,
        Route::Admin(A::Rotate { .. }) => 21,
        Route::Admin(A::Secret { .. }) => 22,
        Route::Admin(A::Grants { .. }) => 23,
        Route::Admin(A::Grant { method, .. }) => 24 + m(method) - 1,
        Route::Admin(A::Quota { method, .. }) => match method {
            Method::Put => 26,
            Method::Delete => 27,
            _ => 28,
        },
        Route::Admin(A::Audit) => 29,
        Route::Settle { op, .. } => 30 + SETTLE_OPS.iter().position(|o| o == op).unwrap(),
        Route::DeadLetters { method, action, .. } => match (action, method) {
            (None, Method::Delete) => 34,
            (None, _) => 35,
            (Some("messages"), _) => 36,
            _ => 37,
        },
        Route::Admin(A::QueuePolicy { method, .. }) => match method {
            Method::Put => 38,
            Method::Delete => 39,
            _ => 40,
        },
        Route::Delays { id: None, .. } => 41,
        Route::Delays { method, .. } => 42 + usize::from(*method == Method::Delete),
        Route::Clock => 44,
        Route::Webhook { method, action, .. } => match (action, method) {
            (None, Method::Put) => 45,
            (None, Method::Delete) => 46,
            (None, _) => 47,
            (Some("pause"), _) => 48,
            (Some("resume"), _) => 49,
            _ => 50,
        },
        Route::OpenApi => 51,
        Route::Reload => 52,
        Route::Ui => 53,
        Route::Dashboard => 54,
        Route::Browse { .. } => 55,
    }
}
const KINDS: usize = 56;

#[test]
fn every_route_is_listed_once_and_routes() {
    let mut seen = vec![false; KINDS];
    for (m, p) in EVERY_ROUTE {
        let r = route(Method::parse(m), p).unwrap_or_else(|e| panic!("{m} {p}: {e:?}"));
        let k = kind(&r);
        assert!(!seen[k], "{m} {p} listed twice");
        seen[k] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "EVERY_ROUTE misses a route: {seen:?}"
    );
}

/// The OpenAPI document has an operation for every route and none that does not route: a
/// route added without its description fails here.
#[test]
fn the_openapi_document_has_every_route_and_no_other() {
    let doc: serde_json::Value = serde_json::from_str(crate::openapi::DOCUMENT).unwrap();
    let mut seen = [false; KINDS];
    for (m, template, _) in crate::openapi::operations(&doc) {
        let p = crate::openapi::sample_path(&template);
        let r = route(Method::parse(&m), &p)
            .unwrap_or_else(|e| panic!("the document's {m} {template} does not route: {e:?}"));
        seen[kind(&r)] = true;
    }
    for (m, p) in EVERY_ROUTE {
        let k = kind(&route(Method::parse(m), p).unwrap());
        assert!(seen[k], "{m} {p} is not in docs/openapi.json");
    }
}
