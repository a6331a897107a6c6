//! Keys and metadata: rotation with a grace period, revocation that ends open sessions,
//! metadata that survives a restart and holds no secret, secrets kept out of logs, and keys
//! shared by gateways (Kafka) or lost with damaged metadata.

use super::*;

/// The keys `app` holds, as listed by the operator API.
pub(crate) fn key_ids(g: &Gateway, app: &str) -> Vec<(String, bool, Option<i64>)> {
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

pub(crate) fn keyid(key: &str) -> &str {
    &key[4..16]
}

/// Revokes `key` of `app` with the app's admin key `admin`, through gateway `g`.
pub(crate) fn revoke(g: &Gateway, admin: &str, app: &str, key: &str) -> Resp {
    g.req_as(
        admin,
        "DELETE",
        &format!("/v1/keys/{app}/{}", keyid(key)),
        b"",
    )
}

pub(crate) fn rotation_grace_and_revocation(b: Backend) {
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
pub(crate) fn ws_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
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

pub(crate) fn revoked_websocket_closes_with_1008(b: Backend) {
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

pub(crate) fn metadata_survives_a_restart_holds_no_secret_and_is_audited(b: Backend) {
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

pub(crate) fn secrets_stay_out_of_logs(b: Backend) {
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
