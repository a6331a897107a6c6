//! gzip, on both backends: a gzip-coded publish body (made by the `gzip` tool) is stored
//! inflated, over HTTP/1.1 and h2c; a decompression bomb is a 413 and stores nothing; an
//! unknown coding is a 415; a large subscribe batch comes gzip-coded to a client that accepts
//! it (curl --compressed inflates it), and uncoded to one that does not.

mod support;
use std::io::Write;
use std::process::{Command, Stdio};
use support::clients::{curl, run};
use support::{Backend, Gateway};

on_both_backends!(
    gzip_bodies_are_inflated_and_bombs_refused,
    large_replies_are_gzip_coded_when_accepted,
);

/// `data` through the system's gzip.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut c = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = c.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = c.wait_with_output().unwrap();
    feeder.join().unwrap();
    out.stdout
}

fn gzip_bodies_are_inflated_and_bombs_refused(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    let dir = tempfile::tempdir().unwrap();
    // An ndjson batch: each line is a message.
    let batch: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let files = [
        (
            "one",
            gzip(b"a gzip-coded message"),
            "application/octet-stream",
        ),
        ("batch", gzip(batch.as_bytes()), "application/x-ndjson"),
        (
            "bomb",
            gzip(&vec![0u8; 64 << 20]),
            "application/octet-stream",
        ),
    ];
    let appid = format!("Appid: {app1}");
    let url = format!("http://{}/v1/msgs/t/v1", g.addr);
    let mut statuses = Vec::new();
    for (name, data, ctype) in &files {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let file = format!("@{}", path.display());
        let ct = format!("Content-Type: {ctype}");
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (body, _, status) = curl(&[
                proto,
                "-H",
                &appid,
                "-H",
                "Content-Encoding: gzip",
                "-H",
                &ct,
                "--data-binary",
                &file,
                &url,
            ]);
            statuses.push((name.to_string(), status, body));
        }
    }
    let st: Vec<u16> = statuses.iter().map(|s| s.1).collect();
    assert_eq!(st, [201, 201, 201, 201, 413, 413], "{statuses:?}");
    assert!(
        statuses[4].2.contains("inflates to more than"),
        "{statuses:?}"
    );
    // Two members, one after the other: both inflated; bytes after a member that are none:
    // refused, nothing stored.
    let mut two = gzip(b"first member, ");
    two.extend(gzip(b"second member"));
    let mut tail = gzip(b"then garbage");
    tail.extend_from_slice(b"GARBAGE");
    for (name, data, want) in [("two", two, 201), ("tail", tail, 400)] {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let file = format!("@{}", path.display());
        let (body, _, status) = curl(&[
            "-H",
            &appid,
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &file,
            &url,
        ]);
        assert_eq!(status, want, "{name}: {body}");
    }
    let (body, _, status) = curl(&["-H", &appid, "-H", "Content-Encoding: br", "-d", "x", &url]);
    assert_eq!(status, 415, "{body}");
    let got = g.drain(&app2, &app1, "t", "group=g&batch=500&wait=1s");
    assert_eq!(
        got.len(),
        2 + 100 + 1,
        "the messages, the batches and the two members, inflated; no bomb, no garbage"
    );
    assert_eq!(got[0].2, b"a gzip-coded message");
    assert!(got[2..102].iter().all(|(_, _, v)| v.starts_with(b"line ")));
    assert_eq!(got[102].2, b"first member, second member");
}

fn large_replies_are_gzip_coded_when_accepted(b: Backend) {
    let g = Gateway::on(b, &[]);
    let (app1, app2) = (g.app("app1"), g.app("app2"));
    g.create_topic(&app1, "t", 1);
    for i in 0..200 {
        g.publish(
            &app1,
            "t",
            "",
            format!("message number {i} with some text").as_bytes(),
        );
    }
    let appid = format!("Appid: {app2}");
    for (proto, group) in [("--http1.1", "g1"), ("--http2-prior-knowledge", "g2")] {
        let url = format!(
            "http://{}/v1/msgs/{app1}/t/v1?group={group}&batch=200",
            g.addr
        );
        let (_, out) = run(
            "curl",
            &[
                "-s",
                "-D",
                "-",
                "--compressed",
                proto,
                "-H",
                &appid,
                "-H",
                "Accept: application/x-ndjson",
                "-w",
                "\nsize_download=%{size_download}",
                &url,
            ],
        );
        assert!(
            out.to_lowercase().contains("content-encoding: gzip"),
            "{proto}: {out}"
        );
        let lines = out
            .lines()
            .filter(|l| l.starts_with("{\"partition\""))
            .count();
        assert_eq!(lines, 200, "{proto}: curl inflated all of it");
        let size: usize = out
            .rsplit("size_download=")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let inflated: usize = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| l.len() + 1)
            .sum();
        assert!(
            size * 3 < inflated,
            "{proto}: {size} bytes on the wire for {inflated}"
        );
    }
    // Without Accept-Encoding: not coded.
    let url = format!(
        "http://{}/v1/msgs/{app1}/t/v1?group=g3&batch=200&reset=oldest",
        g.addr
    );
    let (_, out) = run("curl", &["-s", "-D", "-", "-H", &appid, &url]);
    assert!(!out.to_lowercase().contains("content-encoding"), "{out}");
}
