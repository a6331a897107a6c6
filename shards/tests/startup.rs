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
