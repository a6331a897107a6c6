//! Starting up: a second gateway on a data directory or an address that one already uses
//! refuses to start (it would write the same files, or silently share the port through
//! `SO_REUSEPORT`), and the first one is unaffected.

mod support;
use support::Gateway;

#[test]
fn a_second_gateway_on_the_same_data_directory_or_port_refuses_to_start() {
    let g = Gateway::start();
    g.create_topic("app", "t", 1);
    g.publish("app", "t", "", b"first");

    let mut same_dir = Gateway::at(g.data_dir().to_path_buf(), &[]);
    let (code, stderr) = same_dir.run_to_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("in use by another kateway"), "{stderr}");

    let mut same_port = Gateway::new_with(&[]);
    let (code, stderr) = same_port.run_to_exit_at(&g.addr);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");

    // The first gateway serves on, and every request reaches it.
    for _ in 0..20 {
        assert_eq!(g.publish("app", "t", "", b"more").status, 201);
    }
    let got = g.drain("b", "app", "t", "group=g&batch=100&wait=1s");
    assert_eq!(got.len(), 21);
}

#[test]
fn of_two_gateways_starting_together_on_one_port_exactly_one_serves() {
    for _ in 0..3 {
        let addr = format!("127.0.0.1:{}", support::free_port());
        let (mut a, mut b) = (Gateway::new_with(&[]), Gateway::new_with(&[]));
        let mut children = [a.spawn_at(&addr), b.spawn_at(&addr)];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let refused = loop {
            let exited: Vec<usize> = (0..2)
                .filter(|&i| children[i].try_wait().unwrap().is_some())
                .collect();
            if !exited.is_empty() {
                assert_eq!(exited.len(), 1, "both gateways exited");
                break exited[0];
            }
            assert!(
                std::time::Instant::now() < deadline,
                "both gateways run on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let serving = 1 - refused;
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            children[serving].try_wait().unwrap().is_none(),
            "the first gateway stopped"
        );
        children[serving].kill().unwrap();
        let mut out = String::new();
        for c in children.iter_mut() {
            let _ = c.wait();
        }
        use std::io::Read;
        children[refused]
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.contains("already in use"), "{out}");
    }
}
