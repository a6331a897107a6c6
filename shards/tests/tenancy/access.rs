//! Who may do what: every route needs a key, apps cannot touch each other's topics and groups,
//! the original's secrets work as legacy keys, and HTTP/2 and event streams authenticate too.

use super::*;

pub(crate) fn every_route_needs_a_key(b: Backend) {
    let (g, a, _ka, z, kz) = world(b, &[]);
    for (m, p) in kateway_proto::route::EVERY_ROUTE {
        let path = path_for(p, &a, &z);
        // Health checks, the API's description and the dashboard's page (no data) are open.
        let open = matches!(*p, "/alive" | "/ready" | "/openapi.json" | "/ui");
        let r = g.req(m, &path, &[], b"");
        if open {
            assert_eq!(r.status, 200, "{m} {path}: {}", r.text());
            continue;
        }
        r.assert_error(401);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{m} {path}"
        );
        // z's subscribe key: z owns nothing under a, holds no grant, and is no admin.
        let r = g.req_as(&kz.subscribe, m, &path, b"");
        r.assert_error(403);
        // The operator key is refused on the main listener, and app keys on the operator's.
        let r = g.req_as(&g.operator_key(), m, &path, b"");
        r.assert_error(403);
        let mut c = Gateway::connect_to(&g.op_addr);
        let auth = format!("Bearer {}", kz.subscribe);
        c.req(m, &path, &[("Authorization", &auth)], b"")
            .assert_error(403);
        let mut c = Gateway::connect_to(&g.op_addr);
        c.req(m, &path, &[], b"").assert_error(401);
    }
    // A mistyped key, a stranger's and a malformed header: 401, naming no secret.
    let mut typo = kz.publish.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for h in [
        format!("Bearer {typo}"),
        "Basic YWJjOmRlZg==".to_string(),
        "Bearer kwp_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_string(),
    ] {
        let r = g.req("POST", "/v1/msgs/t/v1", &[("Authorization", &h)], b"x");
        r.assert_error(401);
        assert!(!r.text().contains(&typo[17..]), "{}", r.text());
    }
}

pub(crate) fn cross_app_attempts_change_nothing(b: Backend) {
    let (g, a, ka, z, kz) = world(b, &[]);
    let publish = |key: &str, extra: &[(&str, &str)]| {
        let auth = format!("Bearer {key}");
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        g.req("POST", "/v1/msgs/t/v1", &h, b"hello")
    };
    assert_eq!(publish(&ka.publish, &[]).status, 201);
    // z's key naming a as its app (the original's way to publish to a's topic): 403. z's own
    // topic t does not exist: 404.
    publish(&kz.publish, &[("Appid", &a)]).assert_error(403);
    publish(&kz.publish, &[]).assert_error(404);
    // No grant: z cannot read, commit or seek a's topic, nor administer it.
    // (A generous wait: on Kafka a new group first joins; an answer comes as soon as there is
    // a message.)
    let sub = format!("/v1/msgs/{a}/t/v1?group=g1&wait=15s&reset=oldest");
    g.req_as(&kz.subscribe, "GET", &sub, b"").assert_error(403);
    let commit = format!("/v1/offsets/{a}/t/v1/g1");
    g.req_as(
        &kz.subscribe,
        "PUT",
        &commit,
        br#"[{"partition":0,"offset":0}]"#,
    )
    .assert_error(403);
    let topic = format!("/v1/topics/{a}/t/v1");
    g.req_as(&kz.admin, "DELETE", &topic, b"").assert_error(403);
    g.req_as(&kz.admin, "PUT", &format!("/v1/grants/{a}/t/v1/{z}"), b"")
        .assert_error(403);
    // a's publish key is no admin key.
    g.req_as(&ka.publish, "DELETE", &topic, b"")
        .assert_error(403);
    // Nothing changed: a's message is there for a's group.
    let r = g.req_as(&ka.subscribe, "GET", &sub, b"");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    // With a grant, z reads it in its own group z.g1 (a's group g1 is a.g1: untouched).
    let r = g.req_as(&ka.admin, "PUT", &format!("/v1/grants/{a}/t/v1/{z}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g.req_as(&kz.subscribe, "GET", &sub, b"");
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let again = sub.replace("wait=15s", "wait=2s");
    assert_eq!(g.req_as(&ka.subscribe, "GET", &again, b"").status, 204);
    // Who consumes my topic: the owner sees both apps' groups, z only its own.
    let st = format!("/v1/status/{a}/t/v1");
    let owner = g.req_as(&ka.subscribe, "GET", &st, b"").json();
    let apps: Vec<&str> = owner["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["app"].as_str().unwrap())
        .collect();
    assert!(
        apps.contains(&a.as_str()) && apps.contains(&z.as_str()),
        "{owner}"
    );
    let mine = g.req_as(&kz.subscribe, "GET", &st, b"").json();
    let groups = mine["groups"].as_array().unwrap();
    assert!(groups.iter().all(|g| g["app"] == z.as_str()), "{mine}");
    assert_eq!(groups.len(), 1, "{mine}");
    // z cannot take a grant back, a can; then z is refused again.
    let grant = format!("/v1/grants/{a}/t/v1/{z}");
    g.req_as(&kz.admin, "DELETE", &grant, b"").assert_error(403);
    assert_eq!(g.req_as(&ka.admin, "DELETE", &grant, b"").status, 200);
    g.req_as(&kz.subscribe, "GET", &sub, b"").assert_error(403);
    // Still a's topic.
    assert_eq!(publish(&ka.publish, &[]).status, 201);
    // Deleted with a grant on it, then made again: the new topic has no grant.
    assert_eq!(g.req_as(&ka.admin, "PUT", &grant, b"").status, 200);
    assert_eq!(g.req_as(&ka.admin, "DELETE", &topic, b"").status, 200);
    // (Kafka deletes a topic in the background: made again once it is gone.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = g.req_as(&ka.admin, "POST", &format!("{topic}?partitions=1"), b"");
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    g.req_as(&kz.subscribe, "GET", &again, b"")
        .assert_error(403);
    let grants = g
        .req_as(&ka.admin, "GET", &format!("/v1/grants/{a}"), b"")
        .json();
    assert_eq!(grants["given"].as_array().unwrap().len(), 0, "{grants}");
}

pub(crate) fn legacy_secrets_work_as_the_original_headers(b: Backend) {
    let (g, a, ka, _z, kz) = world(b, &[]);
    // Two different credentials are ambiguous (a proxy may check one, the gateway the other):
    // refused, whichever pair; the same key twice is one credential.
    let bearer = format!("Bearer {}", ka.publish);
    for h in [
        [
            ("Authorization", bearer.as_str()),
            ("Pubkey", kz.publish.as_str()),
        ],
        [
            ("Pubkey", ka.publish.as_str()),
            ("Subkey", kz.subscribe.as_str()),
        ],
    ] {
        g.req("POST", "/v1/msgs/t/v1", &h, b"x").assert_error(400);
    }
    let r = g.op("PUT", &format!("/v1/secrets/{a}"), b"old-app-secret");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "old-app-secret")],
        b"legacy",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let sub = format!("/v1/msgs/{a}/t/v1?group=l&wait=15s&reset=oldest");
    let r = g.req(
        "GET",
        &sub,
        &[("Appid", &a), ("Subkey", "old-app-secret")],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "legacy"));
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "wrong")],
        b"x",
    )
    .assert_error(401);
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Pubkey", "old-app-secret")],
        b"x",
    )
    .assert_error(401);
    // A legacy secret is no admin key.
    g.req(
        "DELETE",
        &format!("/v1/topics/{a}/t/v1"),
        &[("Appid", &a), ("Pubkey", "old-app-secret")],
        b"",
    )
    .assert_error(403);
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Authorization", &bearer), ("Pubkey", &ka.publish)],
        b"same key",
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

/// HTTP/2 (curl with prior knowledge) and server-sent events authenticate at the same edge:
/// refused without a key, served with one, and ended when the key is revoked (a parked h2 poll
/// with 401, an event stream with an error event).
pub(crate) fn http2_and_event_streams_authenticate_and_end_on_revocation(b: Backend) {
    use support::clients::curl;
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let url = |p: &str| format!("http://{}{p}", g.addr);
    let bearer = |k: &str| format!("Authorization: Bearer {k}");
    let h2 = "--http2-prior-knowledge";
    let (_, v, status) = curl(&[h2, "-X", "POST", "-d", "x", &url("/v1/msgs/t/v1")]);
    assert_eq!((v.as_str(), status), ("2", 401));
    let pub_h = bearer(&ka.publish);
    let (body, _, status) = curl(&[
        h2,
        "-X",
        "POST",
        "-H",
        &pub_h,
        "-d",
        "x",
        &url("/v1/msgs/t/v1"),
    ]);
    assert_eq!(status, 201, "{body}");
    // A parked h2 poll and an event stream, both with the subscribe key, then revoked.
    let sub_h = bearer(&ka.subscribe);
    let poll_url = url(&format!("/v1/msgs/{a}/t/v1?group=h2&wait=20s&reset=newest"));
    let sse_url = url(&format!("/v1/msgs/{a}/t/v1?group=sse&reset=newest"));
    let (h, u) = (sub_h.clone(), poll_url.clone());
    let poll = std::thread::spawn(move || curl(&["--http2-prior-knowledge", "-H", &h, &u]));
    let (h, u) = (sub_h.clone(), sse_url.clone());
    let sse =
        std::thread::spawn(move || curl(&["-N", "-H", &h, "-H", "Accept: text/event-stream", &u]));
    std::thread::sleep(Duration::from_millis(1500));
    let r = revoke(&g, &ka.admin, &a, &ka.subscribe);
    assert_eq!(r.status, 200);
    let (body, v, status) = poll.join().unwrap();
    assert_eq!((v.as_str(), status), ("2", 401), "{body}");
    let (body, _, status) = sse.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("retry:"), "{body}");
    assert!(
        body.contains("event: error"),
        "the stream ends with an error event: {body}"
    );
}

/// An app-admin key narrowed with `topics=` administers only those topics and makes no
/// app-wide call: it neither touches the app's other topics nor mints keys (which would reach
/// them).
pub(crate) fn a_narrowed_app_admin_key_stays_within_its_topics(b: Backend) {
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let r = g.op(
        "POST",
        &format!("/v1/keys/{a}?scope=app_admin&topics=t.v1"),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let narrow = r.json()["key"].as_str().unwrap().to_owned();
    let r = g.req_as(
        &narrow,
        "PUT",
        &format!("/v1/topics/{a}/t/v1?partitions=2"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    g.req_as(&narrow, "POST", &format!("/v1/topics/{a}/other/v1"), b"")
        .assert_error(403);
    let r = g.req_as(&narrow, "POST", &format!("/v1/keys/{a}?scope=publish"), b"");
    r.assert_error(403);
    assert!(r.text().contains("narrowed"), "{}", r.text());
    // The app's own unnarrowed admin key still does both.
    let r = g.req_as(&ka.admin, "POST", &format!("/v1/topics/{a}/other/v1"), b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.req_as(
        &ka.admin,
        "POST",
        &format!("/v1/keys/{a}?scope=publish"),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
}
