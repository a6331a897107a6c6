//! Tenancy, on the real binary with authentication on as shipped, on both backends: every route
//! (walked from the route table, so a route added later is covered) refuses a request without
//! credentials (401) and one whose key may not do it (403); apps cannot touch each other's topics
//! and groups; keys rotate with a grace period and revoke at once, ending open sessions; the
//! original's `Appid` + `Pubkey`/`Subkey` secrets work as legacy keys; what is stored holds no
//! secret; changes are audited and survive a restart.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{AppKeys, Backend, Gateway, Resp};

fn world(b: Backend, env: &[(&str, &str)]) -> (Gateway, String, AppKeys, String, AppKeys) {
    Gateway::secured_world(b, env, "a", "z")
}

/// `path` with the route table's sample names replaced by this gateway's apps.
fn path_for(p: &str, a: &str, z: &str) -> String {
    p.split('/')
        .map(|s| match s {
            "a" => a.to_string(),
            "b" => z.to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn every_route_needs_a_key(b: Backend) {
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

fn cross_app_attempts_change_nothing(b: Backend) {
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

/// The keys `app` holds, as listed by the operator API.
fn key_ids(g: &Gateway, app: &str) -> Vec<(String, bool, Option<i64>)> {
    let r = g.op("GET", &format!("/v1/keys/{app}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A refusal is not cached either (a 404 is cacheable by default).
    let missing = g.op("DELETE", &format!("/v1/keys/{app}/nokey"), b"");
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.header("cache-control"), Some("no-store"));
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["keyid"].as_str().unwrap().to_owned(),
                k["revoked"].as_bool().unwrap(),
                k["expires_ms"].as_i64(),
            )
        })
        .collect()
}

fn keyid(key: &str) -> &str {
    &key[4..16]
}

/// Revokes `key` of `app` with the app's admin key `admin`, through gateway `g`.
fn revoke(g: &Gateway, admin: &str, app: &str, key: &str) -> Resp {
    g.req_as(
        admin,
        "DELETE",
        &format!("/v1/keys/{app}/{}", keyid(key)),
        b"",
    )
}

fn rotation_grace_and_revocation(b: Backend) {
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let publish = |key: &str| g.req_as(key, "POST", "/v1/msgs/t/v1", b"m").status;
    // Rotation: the new key works at once, the old one through its grace period only.
    let r = g.req_as(
        &ka.admin,
        "POST",
        &format!("/v1/keys/{a}/{}/rotate?grace=2s", keyid(&ka.publish)),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let new = r.json()["key"].as_str().unwrap().to_owned();
    assert!(new.starts_with("kwp_"));
    assert_eq!(publish(&new), 201);
    assert_eq!(publish(&ka.publish), 201);
    let listed = key_ids(&g, &a);
    let old = listed.iter().find(|k| k.0 == keyid(&ka.publish)).unwrap();
    assert!(old.2.is_some(), "the old key is retiring: {listed:?}");
    let mut expired = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if publish(&ka.publish) == 401 {
            expired = true;
            break;
        }
    }
    assert!(expired, "the old key still works after its grace period");
    assert_eq!(publish(&new), 201);
    // A long poll with the subscribe key, revoked while it waits: it is answered 401, not
    // left to its 20 s wait.
    let addr = g.addr.clone();
    let sub_key = ka.subscribe.clone();
    let a2 = a.clone();
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let mut c = Gateway::connect_to(&addr);
        let auth = format!("Bearer {sub_key}");
        let path = format!("/v1/msgs/{a2}/t/v1?group=late&wait=20s&reset=newest");
        let r = c.req("GET", &path, &[("Authorization", &auth)], b"");
        (r.status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = revoke(&g, &ka.admin, &a, &ka.subscribe);
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, took) = poll.join().unwrap();
    assert_eq!(status, 401, "the parked poll ends when its key is revoked");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // Every core refuses it at once (fresh connections land on either core; a few, since
    // every failure counts toward the address's failed-authentication limit).
    for _ in 0..6 {
        let r = g.req_as(
            &ka.subscribe,
            "GET",
            &format!("/v1/msgs/{a}/t/v1?group=g&wait=0s"),
            b"",
        );
        r.assert_error(401);
    }
    // Revoking the new publish key: refused at once too.
    let r = revoke(&g, &ka.admin, &a, &new);
    assert_eq!(r.status, 200);
    for _ in 0..6 {
        assert_eq!(publish(&new), 401);
    }
}

/// Reads one server frame: `(opcode, payload)`.
fn ws_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let mut len = (h[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).unwrap();
        len = u64::from_be_bytes(b);
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

fn revoked_websocket_closes_with_1008(b: Backend) {
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET /v1/ws/msgs/{a}/t/v1?group=w HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        ka.subscribe
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let r = revoke(&g, &ka.admin, &a, &ka.subscribe);
    assert_eq!(r.status, 200);
    loop {
        let (op, p) = ws_frame(&mut s);
        if op == 0x9 {
            continue; // a ping
        }
        assert_eq!(op, 0x8, "a close frame, got opcode {op}");
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008);
        break;
    }
}

fn legacy_secrets_work_as_the_original_headers(b: Backend) {
    let (g, a, _ka, _z, _kz) = world(b, &[]);
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
}

fn metadata_survives_a_restart_holds_no_secret_and_is_audited(b: Backend) {
    let (mut g, a, ka, z, _kz) = world(b, &[]);
    // The operator key file is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(g.data_dir().join("operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = g.op("PUT", &format!("/v1/secrets/{z}"), b"legacy-secret-xyz");
    assert_eq!(r.status, 201);
    g.kill9();
    g.spawn();
    assert_eq!(
        g.req_as(&ka.publish, "POST", "/v1/msgs/t/v1", b"m").status,
        201
    );
    // No secret on disk (the operator key file aside) nor in the metadata topic.
    let secrets = [&ka.publish[17..49], &ka.admin[17..49], "legacy-secret-xyz"];
    let mut files = vec![g.data_dir().to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.file_name().unwrap() != "operator.key" {
            let bytes = std::fs::read(&p).unwrap();
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{} holds a secret",
                    p.display()
                );
            }
        }
    }
    if b == Backend::Kafka {
        let topic = format!("__kateway_meta{}", &g.app("")[..]);
        let records = support::kafka::read_topic(&support::kafka::shared_brokers(), &topic, 1);
        assert!(records.len() >= 6, "{} records", records.len());
        for r in &records {
            for s in secrets {
                assert!(!r.value.windows(s.len()).any(|w| w == s.as_bytes()));
            }
        }
    }
    // Every change is in the audit list, with its actor.
    let audit = g.op("GET", "/v1/audit?limit=100", b"").json();
    let entries = audit["audit"].as_array().unwrap();
    let has = |action: &str, target: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["target"].as_str().unwrap().contains(target))
    };
    assert!(has("create_app", &a) && has("create_key", &a), "{audit}");
    assert!(has("import_legacy_secret", &z), "{audit}");
    assert!(has("bootstrap_operator_key", "_operator"), "{audit}");
    assert!(entries
        .iter()
        .filter(|e| e["action"] == "create_app")
        .all(|e| e["stamp"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("operator:")));
}

fn secrets_stay_out_of_logs(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut g = Gateway::new_on(b, &[("KATEWAY_LOG_LEVEL", "debug")]);
    g.auth = true;
    g.stderr_file = Some(log.clone());
    g.spawn();
    let a = g.app("a");
    let ka = g.make_app(&a);
    g.op("PUT", &format!("/v1/secrets/{a}"), b"legacy-in-logs");
    let r = g.req_as(&ka.admin, "POST", &format!("/v1/topics/{a}/t/v1"), b"");
    assert_eq!(r.status, 201);
    let mut wrong = ka.publish.clone();
    wrong.replace_range(20..24, "aaaa");
    for key in [&ka.publish, &wrong] {
        let auth = format!("Bearer {key}");
        g.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"x");
        g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[("Appid", &a), ("Pubkey", key)],
            b"x",
        );
        g.req(
            "GET",
            &format!("/v1/msgs/{a}/t/v1?group=g&wait=0s"),
            &[("Subkey", key)],
            b"",
        );
    }
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "legacy-in-logs")],
        b"x",
    );
    g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "legacy-wrong-one")],
        b"x",
    );
    g.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("DEBUG") || text.contains("INFO"),
        "debug logging is on: {text}"
    );
    for s in [
        &ka.publish[17..49],
        &wrong[17..49],
        "legacy-in-logs",
        "legacy-wrong-one",
    ] {
        assert!(!text.contains(s), "a secret in the log");
    }
    // The operator key is printed once, at the first start, and nowhere else.
    let op = g.operator_key();
    assert_eq!(text.matches(&op[17..49]).count(), 1, "printed once");
}

fn a_flood_from_one_app_leaves_room_for_the_others(b: Backend) {
    let (g, a, ka, z, kz) = world(
        b,
        &[
            ("KATEWAY_LIMITS_MAX_REQUESTS_IN_FLIGHT_PER_CORE", "4"),
            ("KATEWAY_LIMITS_APP_SHARE_PER_CORE", "50"),
        ],
    );
    let r = g.req_as(&kz.admin, "POST", &format!("/v1/topics/{z}/t/v1"), b"");
    assert_eq!(r.status, 201);
    let _ = a;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (addr, key, stop) = (g.addr.clone(), ka.publish.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let auth = format!("Bearer {key}");
                let mut refused = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"f");
                    match r.status {
                        201 => {}
                        429 => {
                            assert!(r.header("retry-after").is_some());
                            refused += 1;
                        }
                        s => panic!("flood: {s} {}", r.text()),
                    }
                }
                refused
            })
        })
        .collect();
    // The other app, meanwhile: never refused.
    let mut c = Gateway::connect_to(&g.addr);
    let auth = format!("Bearer {}", kz.publish);
    for _ in 0..300 {
        let r: Resp = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"o");
        assert_eq!(r.status, 201, "{}", r.text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: u32 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        refused > 0,
        "the flooding app held more than its share and was never refused"
    );
}

/// HTTP/2 (curl with prior knowledge) and server-sent events authenticate at the same edge:
/// refused without a key, served with one, and ended when the key is revoked (a parked h2 poll
/// with 401, an event stream with an error event).
fn http2_and_event_streams_authenticate_and_end_on_revocation(b: Backend) {
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

fn subscribe_bytes_quota_holds_back_deliveries(b: Backend) {
    let (g, a, ka, _z, _kz) = world(b, &[]);
    let body: Vec<u8> = (0..100)
        .flat_map(|i| {
            let mut line = vec![b'a' + (i % 26) as u8; 99];
            line.push(b'\n');
            line
        })
        .collect();
    let auth = format!("Bearer {}", ka.publish);
    let r = g.req(
        "POST",
        "/v1/msgs/t/v1",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-ndjson"),
        ],
        &body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = g.op(
        "PUT",
        &format!("/v1/quotas/{a}"),
        br#"{"subscribe_bytes_per_sec":1000}"#,
    );
    assert_eq!(r.status, 200);
    // Four seconds of polling as fast as the answers allow: about the burst (1000 bytes) and
    // 1000 bytes a second get through, plus at most one batch beyond (charged after it).
    let t0 = Instant::now();
    let (mut bytes, mut refused) = (0usize, 0);
    let path = format!("/v1/msgs/{a}/t/v1?group=slow&batch=10&wait=1s&reset=oldest");
    let mut c = Gateway::connect_to(&g.addr);
    let auth = format!("Bearer {}", ka.subscribe);
    while t0.elapsed() < Duration::from_secs(4) {
        let r = c.req("GET", &path, &[("Authorization", &auth)], b"");
        match r.status {
            200 => {
                bytes += support::records(&r.body)
                    .iter()
                    .map(|m| m.2.len())
                    .sum::<usize>()
            }
            204 => {}
            429 => {
                refused += 1;
                assert!(r.header("retry-after").is_some());
                std::thread::sleep(Duration::from_millis(100));
            }
            s => panic!("{s} {}", r.text()),
        }
    }
    eprintln!("subscribe quota 1000 B/s: {bytes} bytes in 4 s, {refused} refusals");
    assert!(bytes >= 2000, "{bytes}");
    assert!(bytes <= 7000, "{bytes} bytes: the quota did not hold");
    assert!(refused > 0);
}

on_both_backends!(
    http2_and_event_streams_authenticate_and_end_on_revocation,
    subscribe_bytes_quota_holds_back_deliveries,
    every_route_needs_a_key,
    cross_app_attempts_change_nothing,
    rotation_grace_and_revocation,
    revoked_websocket_closes_with_1008,
    legacy_secrets_work_as_the_original_headers,
    metadata_survives_a_restart_holds_no_secret_and_is_audited,
    secrets_stay_out_of_logs,
    a_flood_from_one_app_leaves_room_for_the_others,
    failed_authentications_are_limited_per_address,
    quotas_hold_within_ten_percent_on_one_and_two_cores,
);

fn failed_authentications_are_limited_per_address(b: Backend) {
    let (g, _a, ka, _z, _kz) = world(b, &[]);
    let mut c = Gateway::connect_to(&g.addr);
    let bad = "Bearer kwp_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut limited = None;
    for i in 0..40 {
        let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", bad)], b"x");
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        r.assert_error(401);
    }
    let (i, r) = limited.expect("never limited");
    assert!(i >= 20, "the burst of 20 passes first ({i})");
    r.assert_error(429);
    assert!(r.header("retry-after").is_some());
    // Same connection, still open. A good key sharing the address still works; a legacy
    // secret (guessable) waits, even a right one.
    let auth = format!("Bearer {}", ka.publish);
    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"x");
    assert_eq!(r.status, 201, "{}", r.text());
    let a = g.app("a");
    assert_eq!(
        g.op("PUT", &format!("/v1/secrets/{a}"), b"legacy").status,
        201
    );
    c.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Appid", &a), ("Pubkey", "legacy")],
        b"x",
    )
    .assert_error(429);
    // Repeated credential headers are refused.
    let r = c.req(
        "POST",
        "/v1/msgs/t/v1",
        &[("Authorization", &auth), ("Authorization", bad)],
        b"x",
    );
    assert_eq!(r.status / 100, 4);
    assert_ne!(r.status, 201);
}

/// Publishes with `key` as fast as `threads` connections go for `secs` seconds; returns the
/// accepted publishes per second and the slowest refusal.
fn drive(g: &Gateway, key: &str, threads: usize, secs: u64) -> (f64, Duration) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, auth) = (g.addr.clone(), format!("Bearer {key}"));
            std::thread::spawn(move || {
                let mut c = Gateway::connect_to(&addr);
                let (mut ok, mut slowest) = (0u64, Duration::ZERO);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = c.req("POST", "/v1/msgs/t/v1", &[("Authorization", &auth)], b"q");
                    match r.status {
                        201 => ok += 1,
                        429 => {
                            slowest = slowest.max(t.elapsed());
                            let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            assert!(secs >= 1);
                            let policy = r.header("ratelimit-policy").unwrap();
                            assert!(policy.contains("q=200"), "{policy}");
                            assert!(r.header("ratelimit").is_some());
                            assert!(r.header("connection").is_none_or(|v| v != "close"));
                            // A client that honours nothing: back off a little, not a second.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        s => panic!("{s} {}", r.text()),
                    }
                }
                (ok, slowest)
            })
        })
        .collect();
    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    for w in workers {
        let (n, s) = w.join().unwrap();
        ok += n;
        slowest = slowest.max(s);
    }
    (ok as f64 / t0.elapsed().as_secs_f64(), slowest)
}

fn quotas_hold_within_ten_percent_on_one_and_two_cores(b: Backend) {
    for cores in [1, 2] {
        let mut g = Gateway::new_on(b, &[]);
        g.auth = true;
        g.cores = cores;
        g.spawn();
        let a = g.app("q");
        let k = g.make_app(&a);
        let r = g.req_as(
            &k.admin,
            "POST",
            &format!("/v1/topics/{a}/t/v1?partitions=2"),
            b"",
        );
        assert_eq!(r.status, 201);
        let r = g.op(
            "PUT",
            &format!("/v1/quotas/{a}"),
            br#"{"publish_messages_per_sec":200,"max_streams":2}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // An optional field is left out, never null (the schema's type is an integer): refused,
        // and the quota set above stays (the limits below hold).
        let r = g.op(
            "PUT",
            &format!("/v1/quotas/{a}"),
            br#"{"publish_messages_per_sec":200,"max_streams":null}"#,
        );
        r.assert_error(400);
        assert!(r.text().contains("max_streams"), "{}", r.text());
        // A batch larger than the burst could never pass: 413, at once.
        let auth = format!("Bearer {}", k.publish);
        let batch = "m\n".repeat(201);
        let r = g.req(
            "POST",
            "/v1/msgs/t/v1",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/x-ndjson"),
            ],
            batch.as_bytes(),
        );
        r.assert_error(413);
        // Spend the burst (a second's worth), then measure the sustained rate.
        drive(&g, &k.publish, 2, 1);
        let (rate, slowest) = drive(&g, &k.publish, 4, 10);
        eprintln!("quota 200/s on {cores} core(s): {rate:.1}/s, slowest 429 {slowest:?}");
        assert!(
            (180.0..=220.0).contains(&rate),
            "{rate}/s on {cores} core(s)"
        );
        // A refusal is answered at once, not after a punishment sleep.
        assert!(slowest < Duration::from_millis(500), "{slowest:?}");
        // Two concurrent long polls at most: the third is refused, the first two unharmed.
        let polls: Vec<_> = (0..2)
            .map(|i| {
                let mut c = Gateway::connect_to(&g.addr);
                let auth = format!("Bearer {}", k.subscribe);
                let path = format!("/v1/msgs/{a}/t/v1?group=p{i}&wait=3s&reset=newest");
                c.send("GET", &path, &[("Authorization", &auth)], b"")
                    .unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let path = format!("/v1/msgs/{a}/t/v1?group=p9&wait=1s&reset=newest");
        g.req_as(&k.subscribe, "GET", &path, b"").assert_error(429);
        for mut c in polls {
            assert_eq!(c.read_response().unwrap().status, 204);
        }
    }
}

#[test]
fn kafka_a_key_made_on_one_gateway_works_on_another() {
    let mut a = Gateway::new_on(Backend::Kafka, &[]);
    a.auth = true;
    a.spawn();
    let topic = format!("__kateway_meta{}", a.app(""));
    let pepper = a.data_dir().join("meta").join("pepper");
    let mut b = Gateway::new_on(
        Backend::Kafka,
        &[
            ("KATEWAY_KAFKA_META_TOPIC", &topic),
            ("KATEWAY_AUTH_PEPPER_FILE", pepper.to_str().unwrap()),
        ],
    );
    b.auth = true;
    b.makes_operator_key = false;
    b.spawn();
    let app = a.app("x");
    let k = a.make_app(&app);
    let made = Instant::now();
    let r = a.req_as(&k.admin, "POST", &format!("/v1/topics/{app}/t/v1"), b"");
    assert_eq!(r.status, 201);
    let mut took = None;
    while made.elapsed() < Duration::from_secs(20) {
        if b.req_as(&k.publish, "POST", "/v1/msgs/t/v1", b"via b")
            .status
            == 201
        {
            took = Some(made.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = took.expect("the key never worked on the other gateway");
    eprintln!("a key made on gateway A worked on gateway B after {took:?}");
    // Revoked through B: refused on A.
    let r = revoke(&b, &k.admin, &app, &k.publish);
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked = Instant::now();
    let mut refused = false;
    while revoked.elapsed() < Duration::from_secs(20) {
        if a.req_as(&k.publish, "POST", "/v1/msgs/t/v1", b"x").status == 401 {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "a key revoked on B still works on A");
    eprintln!("revoked on B, refused on A after {:?}", revoked.elapsed());
}

#[test]
fn kafka_unreadable_metadata_is_not_ready_and_serves_nothing_open() {
    // Brokers that do not answer: the metadata topic cannot be read.
    let mut g = Gateway::new_on(Backend::Kafka, &[("KATEWAY_KAFKA_BROKERS", "127.0.0.1:1")]);
    g.auth = true;
    g.waits_ready = false;
    g.spawn();
    std::thread::sleep(Duration::from_secs(2));
    let r = g.req("GET", "/ready", &[], b"");
    r.assert_error(503);
    assert!(r.text().contains("metadata"), "{}", r.text());
    let fake = "Bearer kwp_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (m, p) in [
        ("POST", "/v1/msgs/t/v1"),
        ("GET", "/v1/msgs/a/t/v1?wait=0s&group=g"),
    ] {
        g.req(m, p, &[("Authorization", fake)], b"x")
            .assert_error(503);
        g.req(m, p, &[("Appid", "a")], b"x").assert_error(503);
    }
    assert_eq!(g.req("GET", "/alive", &[], b"").status, 200);
}

#[test]
fn embedded_lost_or_damaged_metadata_refuses_to_start() {
    let mut g = Gateway::new_on(Backend::Embedded, &[]);
    g.auth = true;
    g.spawn();
    let a = g.app("a");
    let k = g.make_app(&a);
    let r = revoke(&g, &k.admin, &a, &k.publish);
    assert_eq!(r.status, 200);
    g.kill9();
    let meta = g.data_dir().join("meta");
    let log = std::fs::read(meta.join("tenancy.log")).unwrap();
    // The pepper gone: every key would fail for good.
    std::fs::rename(meta.join("pepper"), meta.join("pepper.aside")).unwrap();
    let (code, err) = g.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(err.contains("pepper"), "{err}");
    std::fs::rename(meta.join("pepper.aside"), meta.join("pepper")).unwrap();
    // The log gone while the pepper is there: everything would be reset.
    std::fs::remove_file(meta.join("tenancy.log")).unwrap();
    let (code, err) = g.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(err.contains("metadata log"), "{err}");
    // Damage in the middle (a revocation after it would be dropped): refused, left alone.
    let mut damaged = log.clone();
    damaged[200] ^= 0x20;
    std::fs::write(meta.join("tenancy.log"), &damaged).unwrap();
    let (code, err) = g.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(meta.join("tenancy.log")).unwrap(), damaged);
    // Restored: it starts, and the revoked key stays revoked.
    std::fs::write(meta.join("tenancy.log"), &log).unwrap();
    g.spawn();
    g.req_as(&k.publish, "POST", "/v1/msgs/t/v1", b"x")
        .assert_error(401);
    assert_eq!(
        g.req_as(&k.admin, "GET", &format!("/v1/keys/{a}"), b"")
            .status,
        200
    );
}
