//! Liveness under a silent partition: a client whose packets are all
//! dropped (no FIN, no RST: a cable pulled, a NAT mapping gone) must be
//! offline at the node, and pushed as such to its watchers, within the
//! node's `--ping-interval + --ping-timeout`. Test hosts in network
//! namespaces (see `netlab`), iptables DROP on the client's link; run as
//! root (CI is), otherwise the test says loudly that it was skipped.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netlab::{Lab, PUBLIC_NET};
use crate::support::{Node, User};

fn iptables(ns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "iptables"])
        .args(args)
        .status()
        .expect("iptables");
    assert!(status.success(), "iptables {args:?} in {ns}");
}

fn partition_while(transport: &str, listen: &str, node_flags: &[&str], bound: Duration) {
    let test = format!("a_silently_partitioned_client_goes_offline_in_time ({transport})");
    let Some(mut lab) = Lab::new(&test) else {
        return;
    };
    let rdv = lab.public_host("rdv", 1);
    let c_ns = lab.public_host("c", 20);
    let w_ns = lab.public_host("w", 30);
    let data = tempfile::tempdir().unwrap();
    // In a namespace the node listens on TCP and QUIC.
    let node = Node::spawn(
        Some(&rdv),
        data.path(),
        &format!("{PUBLIC_NET}.1"),
        4001,
        node_flags,
    );
    let node_addr = match transport {
        "quic" => format!(
            "/ip4/{PUBLIC_NET}.1/udp/4001/quic-v1/p2p/{}",
            node.peer_id()
        ),
        _ => node.addr.clone(),
    };
    let user = |ns: String, name: &str| {
        let user = User {
            home: crate::support::private_tempdir(),
            rendezvous: node_addr.clone(),
            netns: Some(ns),
        };
        user.ok(&["register", name]);
        user
    };
    let carol = user(c_ns.clone(), "carol");
    let watcher = user(w_ns, "walter");
    watcher.ok(&["contacts", "add", "carol"]);
    // carol's only interface, not loopback, carries the partition.
    let mut carol_online = carol.spawn(&["--json", "online", "--listen", listen]);
    carol_online.stdout.expect_event("online");
    let mut walter_online = watcher.spawn(&["--json", "online", "--listen", listen]);
    walter_online.stdout.expect_event("online");
    walter_online
        .stdout
        .expect("carol shown online to her watcher", |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["event"] == "presence" && v["name"] == "carol" && v["status"] == "online"
            })
        });

    // Everything to and from carol is dropped from now on, silently.
    let cut = Instant::now();
    iptables(&c_ns, &["-I", "INPUT", "-i", "eth0", "-j", "DROP"]);
    iptables(&c_ns, &["-I", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    walter_online
        .stdout
        .expect("carol pushed offline to her watcher", |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["event"] == "presence" && v["name"] == "carol" && v["status"] == "offline"
            })
        });
    let took = cut.elapsed();
    let resolved = watcher.ok(&["--json", "whois", "carol"]).json();
    eprintln!(
        "PARTITION RESULT ({transport}): carol pushed offline to her watcher {took:?} after the cut (bound {bound:?}); whois says online={}",
        resolved["online"]
    );
    assert_eq!(resolved["online"], false, "{resolved}");
    assert!(
        took <= bound,
        "offline after {took:?}, later than the node promises ({bound:?})"
    );
    drop(carol_online);
    drop(walter_online);
    drop(node);
}

#[test]
fn a_silently_partitioned_tcp_client_is_offline_within_ping_interval_plus_timeout() {
    // The defaults: pings every 5 s, 5 s to answer.
    partition_while(
        "tcp",
        "/ip4/0.0.0.0/tcp/0",
        &[],
        Duration::from_millis(10_500),
    );
}

#[test]
fn a_silently_partitioned_quic_client_is_offline_within_ping_interval_plus_timeout() {
    partition_while(
        "quic",
        "/ip4/0.0.0.0/udp/0/quic-v1",
        // Over QUIC interval + timeout is the node's idle time-out, which
        // must stay above the client's keep-alive interval (5 s). Counted
        // from the last packet heard, except that by QUIC's idle rule the
        // first packet the node sends after it (a ping on a dial-back
        // connection, a push) restarts the count once: at most twice it.
        &["--ping-interval", "3", "--ping-timeout", "3"],
        Duration::from_millis(12_500),
    );
}
