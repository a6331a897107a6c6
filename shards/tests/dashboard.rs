//! The live dashboard, on both backends, with authentication on: `/ui` is served to anyone
//! (it holds no data), its data routes with the operator key, or an app-admin key for its own
//! app's view (`?app=`) and topics; in a real browser (headless
//! Chromium, `tests/clients/dashboard.py`) the page shows the publish rate, the published total
//! and a group's lag change as messages are published and consumed through the API, and its
//! message browser shows the latest messages; no console errors. The screenshot taken under
//! load lands in the temporary directory.

mod support;
use support::clients::python;
use support::{Backend, Gateway};

on_both_backends!(the_dashboard_shows_what_flows_in_a_real_browser);

fn the_dashboard_shows_what_flows_in_a_real_browser(b: Backend) {
    let (g, app, keys, _, _) = Gateway::secured_world(b, &[], "dash", "other");
    // Anyone gets the page; its data needs the operator key.
    let page = g.req("GET", "/ui", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("EventSource"));
    let anon = Gateway::connect_to(&g.op_addr).req("GET", "/v1/dashboard", &[], b"");
    assert_eq!(anon.status, 401, "{}", anon.text());
    let by_app = g.req_as(&keys.admin, "GET", "/v1/dashboard", b"");
    assert!(
        by_app.status == 401 || by_app.status == 403,
        "{}",
        by_app.text()
    );
    // An app's admin sees its own app's topics only, and nothing of the process.
    let other_admin = g.make_app(&format!("{app}x")).admin;
    let r = g.req_as(
        &other_admin,
        "POST",
        &format!("/v1/topics/{app}x/hidden/v1?partitions=1"),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mine = g.req_as(&keys.admin, "GET", &format!("/v1/dashboard?app={app}"), b"");
    assert_eq!(mine.status, 200, "{}", mine.text());
    let topics: Vec<_> = mine.json()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(topics, vec![format!("{app}.t.v1")]);
    assert_eq!(mine.json()["cores"], serde_json::json!([]));
    let theirs = g.req_as(
        &keys.admin,
        "GET",
        &format!("/v1/dashboard?app={app}x"),
        b"",
    );
    assert_eq!(theirs.status, 403, "{}", theirs.text());
    let peek = format!("/v1/dashboard/messages/{app}x/hidden/v1");
    assert_eq!(g.req_as(&keys.admin, "GET", &peek, b"").status, 403);
    let empty = g.req_as(&other_admin, "GET", &peek, b"");
    assert_eq!(empty.status, 204, "{}", empty.text());
    // A name no topic can have is refused before any backend is asked (on Kafka, librdkafka
    // could not even make a handle for it), and the gateway goes on.
    let long = format!("/v1/dashboard/messages/{app}/{}/v1", "t".repeat(600));
    assert_eq!(g.op("GET", &long, b"").status, 400);
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
    let snap = g.op("GET", "/v1/dashboard", b"");
    assert_eq!(snap.status, 200, "{}", snap.text());
    let name = format!("{app}.t.v1");
    assert!(
        snap.json()["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["topic"] == name.as_str()),
        "{}",
        snap.text()
    );
    // A group that has consumed once, so that it has a lag to show.
    let r = g.req_as(&keys.publish, "POST", "/v1/msgs/t/v1", b"first");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.req_as(
        &keys.subscribe,
        "GET",
        &format!("/v1/msgs/{app}/t/v1?group=watch&reset=oldest&wait=5s"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let shot = std::env::temp_dir().join(format!("kateway-dashboard-{b:?}.png"));
    let (ok, out) = python(
        "dashboard.py",
        &[
            "--ui",
            &format!("http://{}", g.op_addr),
            "--key",
            &g.operator_key(),
            "--api",
            &format!("http://{}", g.addr),
            "--pub-key",
            &keys.publish,
            "--sub-key",
            &keys.subscribe,
            "--app",
            &app,
            "--topic",
            "t",
            "--group",
            "watch",
            "--screenshot",
            shot.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    eprintln!("dashboard screenshot: {}", shot.display());
}
