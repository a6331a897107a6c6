//! The per-message work of the gateway, one piece at a time: parsing a publish request,
//! authorizing it, encoding a record, appending to a partition (with its write), and reading a
//! batch back.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kateway_log::{record, Floor, Partition, PartitionConfig};
use kateway_proto::http1::{Decoder, Event, Limits};

const REQ: &[u8] = b"POST /v1/msgs/orders/v1?ack=local HTTP/1.1\r\nHost: 127.0.0.1:9191\r\nAppid: app1\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn http_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_publish_request", |b| {
        let mut d = Decoder::new(Limits {
            max_head: 8192,
            max_body: 1 << 20,
        });
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.extend_from_slice(REQ);
            match d.decode(&mut buf) {
                Ok(Some(Event::Request(r))) => black_box(r.body.len()),
                _ => unreachable!(),
            }
        })
    });
    g.finish();
}

fn log(c: &mut Criterion) {
    let value = [b'a'; 100];
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_record_100B", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        let mut off = 0;
        b.iter(|| {
            if out.len() > (1 << 20) - 256 {
                out.clear();
            }
            record::encode(&mut out, off, 0, b"", b"", &value);
            off += 1;
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = PartitionConfig {
        segment_bytes: 256 << 20,
        index_interval: 4096,
        preallocate: 1 << 20,
        recovery: kateway_log::RecoveryMode::TolerateCorruption,
    };
    let files = kateway_log::Files::new(64);
    let (mut p, _) =
        Partition::open(&dir.path().join("append"), cfg, &files, Floor::default()).expect("open");
    g.bench_function("append_100B_write_every_64", |b| {
        let mut n = 0u64;
        b.iter(|| {
            black_box(p.append(0, b"", b"", &value));
            n += 1;
            if n.is_multiple_of(64) {
                p.write_pending().expect("write");
            }
        })
    });
    let (mut r, _) =
        Partition::open(&dir.path().join("read"), cfg, &files, Floor::default()).expect("open");
    for _ in 0..100_000 {
        r.append(0, b"", b"", &value);
    }
    r.write_pending().expect("write");
    g.throughput(Throughput::Elements(100));
    g.bench_function("read_100_records", |b| {
        let mut from = 0;
        b.iter(|| {
            let recs = r.read(from, 100, 1 << 20).expect("read");
            from = (from + 100) % 99_900;
            black_box(recs.len())
        })
    });
    g.finish();
}

/// What authorizing a publish costs: the key parsed from its header, looked up in the snapshot,
/// its secret checked (by the HMAC, or against a key verified already, as a core caches them),
/// and the scope and topic checked.
fn auth(c: &mut Criterion) {
    use kateway_core::keys::{self, Pepper, Scope};
    use kateway_core::tenancy::{Credential, Need, Op, Snapshot, Stamp, State};
    let pepper = Pepper::new(&[9; 32]).expect("pepper");
    let mut state = State::default();
    let mut key = String::new();
    for op in [
        Op::CreateApp { app: "app1".into() },
        Op::CreateKey {
            app: "app1".into(),
            scope: Scope::Publish,
            topics: None,
            expires_ms: None,
        },
    ] {
        let stamp = Stamp {
            actor: "bench".into(),
            ts_ms: 1,
            ip: None,
        };
        let p = state.plan(op, stamp, &pepper, "n").expect("plan");
        key = p.secret.unwrap_or(key);
        for r in p.records {
            state.apply(r);
        }
    }
    let snap = Snapshot::build(&state, 1, 2);
    let header = format!("Bearer {key}");
    let need = Need::Publish {
        topic: "orders",
        ver: "v1",
    };
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    let run = |verify: &dyn Fn(&str, &[u8; 32]) -> bool| {
        let k = keys::bearer(black_box(header.as_bytes())).expect("bearer");
        let cred = Credential::Key(keys::parse(k).expect("key"));
        let p = snap
            .authenticate(&cred, None, 0, |_, s, h| verify(s, h))
            .expect("authenticates");
        snap.authorize(&p, &need, 0).expect("authorized");
        black_box(p)
    };
    g.bench_function("publish_key_hmac", |b| {
        b.iter(|| run(&|s, h| pepper.verify_secret(s, h)))
    });
    let secret = key[17..49].to_owned();
    g.bench_function("publish_key_cached", |b| {
        b.iter(|| run(&|s, _| s.as_bytes() == secret.as_bytes()))
    });
    g.finish();
}

criterion_group!(benches, http_parse, auth, log);
criterion_main!(benches);
