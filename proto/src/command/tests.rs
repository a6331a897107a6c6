//! Command parsing: routes, parameters, limits and their errors.

use super::*;

struct P {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Parts for P {
    fn method(&self) -> Method {
        self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> &str {
        &self.query
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }
    fn header_first(&self, name: &str) -> (Option<&[u8]>, bool) {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..]);
        let first = found.next();
        (first, found.next().is_some())
    }
    fn body(&self) -> &Bytes {
        &self.body
    }
}

fn req(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> P {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    P {
        method,
        path: path.into(),
        query: query.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Bytes::copy_from_slice(body),
    }
}

fn limits() -> Limits {
    Limits {
        max_message: 16,
        max_key: 8,
        max_tag: 16,
        max_batch_messages: 3,
        max_batch_bytes: 64,
        max_subscribe_batch: 100,
        default_wait: Duration::from_secs(30),
        max_wait: Duration::from_secs(60),
    }
}

fn parse(p: &P) -> Result<Command<'_>, Error> {
    Command::parse(p, &limits())
}

#[test]
fn publishes() {
    let p = req(
        Method::Post,
        "/v1/msgs/t/v1?key=k&ack=local",
        &[("X-Tag", " a;b ")],
        b"hi",
    );
    let Command::Publish(c) = parse(&p).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.topic, c.ver, c.ack, c.key.as_deref(), &c.tags[..]),
        ("t", "v1", Ack::Local, Some(&b"k"[..]), &b"a;b"[..])
    );
    assert_eq!(c.messages, Messages::One(Bytes::from_static(b"hi")));
    let p = req(
        Method::Post,
        "/v1/msgs/t/v1",
        &[("content-type", "application/x-ndjson; charset=utf-8")],
        b"a\nb\n",
    );
    let Command::Publish(c) = parse(&p).unwrap() else {
        panic!()
    };
    assert!(matches!(c.messages, Messages::Batch(ref v) if v.len() == 2));
    let code = |p: &P| parse(p).unwrap_err().kind().code();
    assert_eq!(code(&req(Method::Post, "/v1/msgs/t/v1", &[], b"")), 40006);
    assert_eq!(
        code(&req(Method::Post, "/v1/msgs/t/v1", &[], &[b'x'; 17])),
        41300
    );
    assert_eq!(
        code(&req(
            Method::Post,
            "/v1/msgs/t/v1?key=toolongkey",
            &[],
            b"x"
        )),
        40002
    );
    assert_eq!(
        code(&req(Method::Post, "/v1/msgs/t/v1?ack=maybe", &[], b"x")),
        40002
    );
    let due = |p: &P| match parse(p).unwrap() {
        Command::Publish(c) => c.due,
        _ => panic!(),
    };
    assert_eq!(
        due(&req(Method::Post, "/v1/msgs/t/v1?delay=5", &[], b"x")),
        Some(Due::After(Duration::from_secs(5)))
    );
    assert_eq!(
        due(&req(
            Method::Post,
            "/v1/msgs/t/v1",
            &[("x-deliver-at", "1970-01-01T00:00:01Z")],
            b"x"
        )),
        Some(Due::At(1000))
    );
    assert_eq!(due(&req(Method::Post, "/v1/msgs/t/v1", &[], b"x")), None);
    assert_eq!(
        code(&req(Method::Post, "/v1/msgs/t/v1?delay=soon", &[], b"x")),
        40002
    );
    assert_eq!(
        code(&req(
            Method::Post,
            "/v1/msgs/t/v1?delay=5s",
            &[("x-deliver-at", "1970-01-01T00:00:01Z")],
            b"x"
        )),
        40002
    );
    assert_eq!(
        code(&req(
            Method::Post,
            "/v1/msgs/t/v1",
            &[("x-deliver-at", "tomorrow")],
            b"x"
        )),
        40002
    );
    assert_eq!(
        code(&req(Method::Post, "/v1/msgs/t.x/v1", &[], b"x")),
        40001
    );
    let nd = [("content-type", "application/x-ndjson")];
    assert_eq!(
        code(&req(Method::Post, "/v1/msgs/t/v1", &nd, b"a\nb\nc\nd\n")),
        41300
    );
    assert_eq!(
        code(&req(Method::Get, "/v1/msgs/t/v1", &[], b"")),
        40500,
        "405 for a wrong method"
    );
    assert_eq!(
        parse(&req(Method::Get, "/v1/msgs/t/v1", &[], b""))
            .unwrap_err()
            .allow(),
        Some("POST")
    );
    assert_eq!(code(&req(Method::Get, "/nope", &[], b"")), 40401);
}

#[test]
fn subscribes() {
    let h = [
        ("X-Partition", "2"),
        ("X-Offset", "7"),
        ("Accept", "application/x-ndjson"),
    ];
    let p = req(
        Method::Get,
        "/v1/msgs/a/t/v1?group=g&batch=10&wait=2s&reset=newest&ack=1",
        &h,
        b"",
    );
    let c = parse(&p).unwrap();
    assert!(c.may_park());
    let Command::Subscribe(s) = c else { panic!() };
    assert_eq!(
        (s.group, s.batch, s.wait, s.reset, s.explicit, s.ack, s.format),
        (
            "g",
            Some(10),
            Duration::from_secs(2),
            Reset::Newest,
            true,
            Some((2, 7)),
            RecordFormat::NdJson
        )
    );
    let code = |t: &str, h: &[(&str, &str)]| {
        parse(&req(Method::Get, t, h, b""))
            .unwrap_err()
            .kind()
            .code()
    };
    assert_eq!(code("/v1/msgs/a/t/v1", &[]), 40004);
    assert_eq!(code("/v1/msgs/a/t/v1?group=g&batch=0", &[]), 40002);
    assert_eq!(code("/v1/msgs/a/t/v1?group=g&wait=2h", &[]), 40002);
    assert_eq!(
        code("/v1/msgs/a/t/v1?group=g&ack=1", &[("X-Partition", "1")]),
        40005
    );
    assert_eq!(
        code(
            "/v1/msgs/a/t/v1?group=g&ack=1",
            &[("X-Partition", "-2"), ("X-Offset", "1")]
        ),
        40005
    );
    // Without ack=1 the ack headers are unused, but garbage in them is still refused.
    assert_eq!(
        code(
            "/v1/msgs/a/t/v1?group=g",
            &[("X-Offset", ""), ("X-Partition", ")5l")]
        ),
        40005
    );
    assert_eq!(code("/v1/msgs/a/t/v1?group=g", &[("X-Offset", "x")]), 40005);
    let p = req(
        Method::Get,
        "/v1/msgs/a/t/v1?group=g&wait=0s",
        &[("X-Partition", "1")],
        b"",
    );
    assert!(!parse(&p).unwrap().may_park());
}

#[test]
fn acks_seeks_and_topics() {
    let p = req(
        Method::Put,
        "/v1/offsets/a/t/v1/g",
        &[],
        br#"[{"partition":1,"offset":5}]"#,
    );
    assert_eq!(
        parse(&p).unwrap(),
        Command::AckBatch(AckBatch {
            topic: TopicPath {
                appid: "a",
                topic: "t",
                ver: "v1"
            },
            group: "g",
            acks: vec![(1, 5)]
        })
    );
    // A partition named twice commits its highest offset.
    for (body, want) in [
        (
            &br#"[{"partition":1,"offset":7},{"partition":1,"offset":5}]"#[..],
            vec![(1, 7)],
        ),
        (
            br#"[{"partition":1,"offset":7},{"partition":0,"offset":3}]"#,
            vec![(0, 3), (1, 7)],
        ),
    ] {
        match parse(&req(Method::Put, "/v1/offsets/a/t/v1/g", &[], body)).unwrap() {
            Command::AckBatch(a) => assert_eq!(a.acks, want),
            c => panic!("{c:?}"),
        }
    }
    for bad in [&b"[]"[..], b"{", br#"[{"partition":1}]"#] {
        let p = req(Method::Put, "/v1/offsets/a/t/v1/g", &[], bad);
        assert_eq!(parse(&p).unwrap_err().kind().code(), 40006);
    }
    let p = req(Method::Put, "/v1/offset/a/t/v1/g/3?offset=9", &[], b"");
    assert!(matches!(
        parse(&p).unwrap(),
        Command::Seek(Seek {
            partition: 3,
            offset: 9,
            ..
        })
    ));
    let p = req(Method::Put, "/v1/offset/a/t/v1/g/3?time=9", &[], b"");
    assert_eq!(parse(&p).unwrap_err().kind().code(), 40002);
    let p = req(Method::Put, "/v1/offset/a/t/v1/g/x?offset=1", &[], b"");
    assert_eq!(parse(&p).unwrap_err().kind().code(), 40005);
    let p = req(
        Method::Post,
        "/v1/topics/a/t/v1?partitions=4&retention.bytes=1MiB&retention.hours=2",
        &[],
        b"",
    );
    let Command::TopicAdmin(t) = parse(&p).unwrap() else {
        panic!()
    };
    assert_eq!(
        (t.op, t.partitions, t.retention_bytes, t.retention_hours),
        (TopicOp::Create, Some(4), Some(1 << 20), Some(2))
    );
    let p = req(Method::Post, "/v1/topics/a/t/v1?partitions=0", &[], b"");
    assert_eq!(parse(&p).unwrap_err().kind().code(), 40002);
}

#[test]
fn callers() {
    let p = req(Method::Get, "/alive", &[("Appid", " app1 ")], b"");
    assert_eq!(Caller::of(&p).appid().unwrap(), "app1");
    let p = req(Method::Get, "/alive", &[], b"");
    assert_eq!(Caller::of(&p).appid().unwrap_err().kind().code(), 40007);
    let p = req(Method::Get, "/alive", &[("Appid", "a.b")], b"");
    assert_eq!(Caller::of(&p).appid().unwrap_err().kind().code(), 40001);
    // A value that is not UTF-8 is an invalid name, not a missing header.
    let mut p = req(Method::Get, "/alive", &[], b"");
    p.headers.push(("Appid".into(), vec![0xff, b'a']));
    assert_eq!(Caller::of(&p).appid().unwrap_err().kind().code(), 40001);
}

#[test]
fn ambiguous_queries_are_refused() {
    for target in [
        "/v1/msgs/t/v1?ack=local&ack=all",
        "/v1/msgs/t/v1?ack=local&ack=bogus",
        "/v1/msgs/t/v1?key=a&ack=all&key=b",
    ] {
        let p = req(Method::Post, target, &[("Appid", "a")], b"m");
        let e = parse(&p).unwrap_err();
        assert_eq!(e.status(), 400, "{target}");
        assert!(
            e.message().contains("more than once"),
            "{target}: {}",
            e.message()
        );
    }
    let many: Vec<String> = (0..40).map(|i| format!("p{i}=1")).collect();
    let p = req(
        Method::Post,
        &format!("/v1/msgs/t/v1?{}", many.join("&")),
        &[("Appid", "a")],
        b"m",
    );
    assert_eq!(parse(&p).unwrap_err().status(), 400);
    // Different parameters, and an empty query, are fine.
    let p = req(
        Method::Post,
        "/v1/msgs/t/v1?ack=local&key=k",
        &[("Appid", "a")],
        b"m",
    );
    assert!(parse(&p).is_ok());
    let p = req(Method::Post, "/v1/msgs/t/v1?", &[("Appid", "a")], b"m");
    assert!(parse(&p).is_ok());
}

#[test]
fn redrive_targets_take_a_slash_a_dot_or_an_encoded_slash() {
    for to in ["orders/v2", "orders.v2", "orders%2Fv2", "orders%2fv2"] {
        let t = redrive_target("a", to).unwrap();
        assert_eq!((t.appid, t.topic, t.ver), ("a", "orders", "v2"), "{to}");
    }
    for bad in ["orders", "", "orders/", "/v2"] {
        assert_eq!(redrive_target("a", bad).unwrap_err().status(), 400, "{bad}");
    }
}

/// Bodies that are JSON objects are refused as arrays (which derived impls would read by
/// position), and a list of acks holds objects only.
#[test]
fn object_bodies_refuse_arrays() {
    let cases: [(Method, &str, &[u8]); 7] = [
        (Method::Put, "/v1/quotas/a", b"[5]"),
        (Method::Put, "/v1/quotas/a", b"[]"),
        (Method::Put, "/v1/policies/a/g", b"[3,\"1m\"]"),
        (Method::Put, "/v1/offsets/a/t/v1/g", b"[[1,0]]"),
        (
            Method::Put,
            "/v1/webhooks/a/t/v1/g",
            b"[\"http://example.com/x\"]",
        ),
        (Method::Post, "/v1/queue/a/t/v1/g/nack", b"[[\"r\"],\"1s\"]"),
        (Method::Post, "/v1/queue/a/t/v1/g/ack", b"5"),
    ];
    for (m, path, body) in cases {
        let p = req(m, path, &[], body);
        let e = parse(&p).map(|_| ()).unwrap_err();
        assert_eq!(
            e.kind().code(),
            40006,
            "{path} {}: {e}",
            String::from_utf8_lossy(body)
        );
    }
    // The same as objects are read.
    let p = req(
        Method::Put,
        "/v1/quotas/a",
        &[],
        b"{\"publish_messages_per_sec\":5}",
    );
    assert!(parse(&p).is_ok());
    let p = req(
        Method::Put,
        "/v1/offsets/a/t/v1/g",
        &[],
        b"[{\"partition\":1,\"offset\":0}]",
    );
    assert!(parse(&p).is_ok());
}

/// A retention beyond 100 years is refused (its seconds would overflow into a short one).
#[test]
fn retention_is_bounded() {
    for q in [
        "retention.hours=876001",
        "retention.hours=18446744073709551615",
        "retention.bytes=9223372036854775808",
    ] {
        let p = req(Method::Put, &format!("/v1/topics/a/t/v1?{q}"), &[], b"");
        assert_eq!(
            parse(&p).map(|_| ()).unwrap_err().kind().code(),
            40002,
            "{q}"
        );
    }
    let p = req(
        Method::Put,
        "/v1/topics/a/t/v1?retention.hours=876000",
        &[],
        b"",
    );
    assert!(parse(&p).is_ok());
}

#[test]
fn the_test_clock_moves_at_most_a_century_at_once() {
    let p = req(
        Method::Post,
        "/v1/debug/clock?advance=18446744073709551615s",
        &[],
        b"",
    );
    assert_eq!(parse(&p).map(|_| ()).unwrap_err().kind().code(), 40002);
    let p = req(Method::Post, "/v1/debug/clock?advance=30d", &[], b"");
    assert!(parse(&p).is_ok());
}

#[test]
fn one_deliver_at_per_publish() {
    let p = req(
        Method::Post,
        "/v1/msgs/t/v1",
        &[
            ("X-Deliver-At", "2030-01-01T00:00:00Z"),
            ("X-Deliver-At", "2031-01-01T00:00:00Z"),
        ],
        b"m",
    );
    assert_eq!(parse(&p).map(|_| ()).unwrap_err().kind().code(), 40002);
}
