//! The `rendezvous` binary on its own: it prints its addresses, keeps its
//! identity across restarts, and stops cleanly on SIGTERM and SIGINT.
//! (Having this test also makes `cargo test --workspace` build the binary
//! that the messenger's end-to-end tests drive.)

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn start(data_dir: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Both lines are printed together once the node is ready; a node that
    // fails to start closes stdout and this fails instead of hanging.
    let addrs: Vec<String> = (0..2).map(|_| lines.next().unwrap().unwrap()).collect();
    (child, addrs)
}

fn stop(mut child: std::process::Child, signal: &str) -> Option<i32> {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

#[test]
fn prints_real_addresses_and_keeps_its_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addrs) = start(dir.path());
    assert!(addrs[0].starts_with("/ip4/127.0.0.1/tcp/"), "{addrs:?}");
    assert!(
        addrs[1].starts_with("/ip4/127.0.0.1/udp/") && addrs[1].contains("/quic-v1/"),
        "{addrs:?}"
    );
    assert!(
        !addrs[0].contains("/tcp/0/"),
        "the real port is shown: {addrs:?}"
    );
    let peer_id = addrs[0].rsplit('/').next().unwrap().to_owned();
    assert!(
        addrs
            .iter()
            .all(|a| a.ends_with(&format!("/p2p/{peer_id}")))
    );
    assert_eq!(stop(child, "-TERM"), Some(0));

    let (child, addrs) = start(dir.path());
    assert!(
        addrs[0].ends_with(&peer_id),
        "same key after restart: {addrs:?}"
    );
    assert_eq!(stop(child, "-INT"), Some(0));
}

#[test]
fn refuses_a_group_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (child, _) = start(dir.path());
    stop(child, "-TERM");
    let key = dir.path().join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rendezvous"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
}
