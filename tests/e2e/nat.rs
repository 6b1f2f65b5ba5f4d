//! Through real NATs: test hosts in network namespaces (see `netlab`). Run
//! as root (CI is); otherwise each test says loudly that it was skipped.

use std::time::Instant;

use serde_json::Value;

use crate::netlab::{Lab, PUBLIC_NET};
use crate::servers::{Nats, Postgres, cluster_flags};
use crate::support::{Lines, Node, Proc, User};

const LISTEN: [&str; 4] = [
    "--listen",
    "/ip4/0.0.0.0/tcp/0",
    "--listen",
    "/ip4/0.0.0.0/udp/0/quic-v1",
];

/// Goes online and waits until the node's reachability verdict is
/// `reach` ("direct" or "relayed"); returns the process and its addresses.
fn online(user: &User, reach: &str) -> (Proc, Vec<String>) {
    let mut args = vec!["--json", "online"];
    args.extend_from_slice(&LISTEN);
    let mut proc = user.spawn(&args);
    let line = proc.stdout.expect(&format!("reachability {reach}"), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            (v["event"] == "online" || v["event"] == "addresses") && v["reachability"] == reach
        })
    });
    let event: Value = serde_json::from_str(&line).unwrap();
    let addrs = event["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (proc, addrs)
}

fn send(from: &User, to: &str, text: &str) -> (Value, std::time::Duration) {
    let started = Instant::now();
    let ran = from.run(&["--json", "send", to, text]);
    let took = started.elapsed();
    assert_eq!(ran.code, 0, "{ran:?}");
    (ran.json(), took)
}

fn expect_path(lines: &mut Lines, name: &str) -> Value {
    let line = lines.expect(&format!("the path to {name}"), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == "path" && v["name"] == name)
    });
    serde_json::from_str(&line).unwrap()
}

struct World {
    // Dropped first: processes before the hosts they run on.
    _node: Node,
    _data: tempfile::TempDir,
    lab: Lab,
    node_addr: String,
}

fn world(test: &str) -> Option<World> {
    let mut lab = Lab::new(test)?;
    let rdv = lab.public_host("rdv", 1);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_in(Some(&rdv), data.path(), &format!("{PUBLIC_NET}.1"), 4001);
    let node_addr = node.addr.clone();
    Some(World {
        _node: node,
        _data: data,
        lab,
        node_addr,
    })
}

fn user(world: &World, netns: String, name: &str) -> User {
    let mut user = User {
        home: crate::support::private_tempdir(),
        rendezvous: world.node_addr.clone(),
        netns: Some(netns),
    };
    user.ok(&["register", name]);
    user.rendezvous = world.node_addr.clone();
    user
}

/// alice and bob, registered, each behind a NAT of their own.
fn behind_separate_nats(w: &mut World) -> (User, User) {
    let (a_ns, b_ns) = (
        w.lab.private_host("a", 1, 11),
        w.lab.private_host("b", 2, 12),
    );
    (user(w, a_ns, "alice"), user(w, b_ns, "bob"))
}

#[test]
fn two_users_behind_separate_nats_reach_each_other() {
    let Some(mut w) = world("two_users_behind_separate_nats_reach_each_other") else {
        return;
    };
    let (alice, bob) = behind_separate_nats(&mut w);

    let (mut bob_online, bob_addrs) = online(&bob, "relayed");
    assert!(
        !bob_addrs.is_empty() && bob_addrs.iter().all(|a| a.contains("/p2p-circuit")),
        "behind NAT only the relayed address is registered: {bob_addrs:?}"
    );
    let (mut alice_online, _) = online(&alice, "relayed");

    let (first, took) = send(&alice, "bob", "hello through two NATs");
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "hello through two NATs"
    );
    // The first message may already go direct if hole punching won the race.
    let first_path = first["path"].as_str().unwrap_or("unknown").to_owned();

    let path = expect_path(&mut alice_online.stdout, "bob");
    let ended = path["path"].as_str().unwrap().to_owned();
    match ended.as_str() {
        "direct" => eprintln!(
            "NAT RESULT: first delivery {took:?} ({first_path}); the connection ended up direct after hole punching"
        ),
        _ => eprintln!(
            "NAT RESULT: first delivery {took:?} ({first_path}); the connection stayed relayed: hole punching failed: {}",
            path["detail"]
        ),
    }
    // Later messages take the path the connection ended up on.
    let (second, _) = send(&alice, "bob", "and again");
    assert_eq!(second["path"], ended.as_str(), "{second}");
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "and again"
    );
    // And bob can answer.
    let (reply, _) = send(&bob, "alice", "hi alice");
    assert_eq!(reply["path"], ended.as_str(), "{reply}");
    assert_eq!(
        alice_online.stdout.expect_event("message")["text"],
        "hi alice"
    );
}

#[test]
fn a_public_user_is_reached_directly_without_the_relay() {
    let Some(mut w) = world("a_public_user_is_reached_directly_without_the_relay") else {
        return;
    };
    let a_ns = w.lab.private_host("a", 1, 11);
    let c_ns = w.lab.public_host("c", 20);
    let alice = user(&w, a_ns, "alice");
    let carol = user(&w, c_ns, "carol");

    let (mut carol_online, carol_addrs) = online(&carol, "direct");
    assert!(
        carol_addrs
            .iter()
            .all(|a| a.starts_with(&format!("/ip4/{PUBLIC_NET}.20/"))),
        "only the public address is registered: {carol_addrs:?}"
    );
    let whois = alice.ok(&["--json", "whois", "carol"]).json();
    assert_eq!(whois["reach"], "direct");

    let (sent, _) = send(&alice, "carol", "straight to you");
    assert_eq!(sent["path"], "direct", "{sent}");
    let msg = carol_online.stdout.expect_event("message");
    assert_eq!(msg["text"], "straight to you");
    assert_eq!(msg["path"], "direct");
}

#[test]
fn a_user_whose_address_changes_is_reached_at_the_new_one() {
    let Some(mut w) = world("a_user_whose_address_changes_is_reached_at_the_new_one") else {
        return;
    };
    let a_ns = w.lab.private_host("a", 1, 11);
    let c_ns = w.lab.public_host("c", 20);
    let alice = user(&w, a_ns, "alice");
    let carol = user(&w, c_ns, "carol");
    let (mut carol_online, _) = online(&carol, "direct");
    let (_alice_online, _) = online(&alice, "relayed");
    send(&alice, "carol", "before the move");
    assert_eq!(
        carol_online.stdout.expect_event("message")["text"],
        "before the move"
    );

    let moved = Instant::now();
    w.lab.renumber("c", 20, 21);
    let new_prefix = format!("/ip4/{PUBLIC_NET}.21/");
    carol_online
        .stdout
        .expect("registration of the new address", |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                (v["event"] == "addresses" || v["event"] == "online")
                    && v["addrs"].as_array().is_some_and(|a| {
                        !a.is_empty()
                            && a.iter()
                                .all(|x| x.as_str().unwrap().starts_with(&new_prefix))
                    })
            })
        });
    eprintln!(
        "re-registered the new address {:?} after the change",
        moved.elapsed()
    );
    let whois = alice.ok(&["--json", "whois", "carol"]).json();
    assert!(
        whois["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.as_str().unwrap().starts_with(&new_prefix)),
        "{whois}"
    );
    // The conversation carries on at the new address.
    let (sent, _) = send(&alice, "carol", "after the move");
    assert_eq!(sent["path"], "direct", "{sent}");
    assert_eq!(
        carol_online.stdout.expect_event("message")["text"],
        "after the move"
    );
}

#[test]
fn a_file_offered_across_two_nats_arrives_over_the_direct_connection() {
    let Some(mut w) = world("a_file_offered_across_two_nats_arrives_over_the_direct_connection")
    else {
        return;
    };
    let (alice, bob) = behind_separate_nats(&mut w);
    let (mut alice_online, _) = online(&alice, "relayed");
    let (mut bob_online, _) = online(&bob, "relayed");

    // Four times what one relay circuit may carry (1 MiB): whole only if
    // it went over the punched, direct connection.
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let source = alice.home.path().join("across.bin");
    std::fs::write(&source, &data).unwrap();
    let offered = alice
        .ok(&[
            "--json",
            "file",
            "send",
            "bob",
            source.to_str().unwrap(),
            "--no-wait",
        ])
        .json();
    let id = offered["id"].as_str().unwrap().to_owned();
    bob_online.stdout.expect("the offer", |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == "message" && v["id"] == id)
    });
    let into = bob.home.path().join("received");
    let started = Instant::now();
    let accepted = bob.run(&[
        "--json",
        "file",
        "accept",
        &id,
        "--to",
        into.to_str().unwrap(),
    ]);
    assert_eq!(accepted.code, 0, "{accepted:?}");
    let saved = std::fs::read(into.join("across.bin")).unwrap();
    assert!(
        saved == data,
        "saved {} bytes of {}, or others",
        saved.len(),
        data.len()
    );
    // Hole punching is told on the side the relayed connection reached.
    let path = expect_path(&mut alice_online.stdout, "bob");
    assert_eq!(path["path"], "direct", "{path}");
    eprintln!(
        "NAT RESULT: 4 MiB across two NATs in {:?}, over the direct connection",
        started.elapsed()
    );
}

#[test]
fn a_user_behind_nat_at_one_node_is_reached_from_another_node_through_its_relay() {
    let test = "a_user_behind_nat_at_one_node_is_reached_from_another_node_through_its_relay";
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    // The cluster's servers on a public host of their own, both nodes on
    // two more; alice behind a NAT at node 1, carol public at node 2.
    let db = lab.public_host("db", 5);
    let db_ip = format!("{PUBLIC_NET}.5");
    let Some(pg) = Postgres::start_on(Some(&db), &db_ip) else {
        return;
    };
    let Some(nats) = Nats::start_on(Some(&db), &db_ip) else {
        return;
    };
    let key = tempfile::tempdir().unwrap();
    let flags = cluster_flags(&pg, &nats, &key.path().join("certificates.key"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (r1, r2) = (lab.public_host("rdv1", 1), lab.public_host("rdv2", 2));
    let node1 = Node::spawn(
        Some(&r1),
        d1.path(),
        &format!("{PUBLIC_NET}.1"),
        4001,
        &flags,
    );
    let node2 = Node::spawn(
        Some(&r2),
        d2.path(),
        &format!("{PUBLIC_NET}.2"),
        4001,
        &flags,
    );
    let at = |node: &Node, ns: String, name: &str| {
        let user = User {
            home: crate::support::private_tempdir(),
            rendezvous: node.addr.clone(),
            netns: Some(ns),
        };
        user.ok(&["register", name]);
        user
    };
    let alice = at(&node1, lab.private_host("a", 1, 11), "alice");
    let carol = at(&node2, lab.public_host("c", 20), "carol");

    let (mut alice_online, alice_addrs) = online(&alice, "relayed");
    assert!(
        !alice_addrs.is_empty()
            && alice_addrs
                .iter()
                .all(|a| a.contains(&format!("{}/p2p-circuit", node1.peer_id()))),
        "behind NAT she registers node 1's relay only: {alice_addrs:?}"
    );
    let (mut carol_online, _) = online(&carol, "direct");
    // carol's node resolves alice from the shared directory: the record
    // alice registered at node 1.
    let whois = carol.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["online"], true, "{whois}");
    assert_eq!(whois["reach"], "relayed", "{whois}");

    let (sent, took) = send(&carol, "alice", "through node 1's relay");
    assert_eq!(
        alice_online.stdout.expect_event("message")["text"],
        "through node 1's relay"
    );
    eprintln!(
        "NAT RESULT: across nodes, first delivery {took:?} ({})",
        sent["path"]
    );
    // And back, alice's client resolving carol through node 1.
    send(&alice, "carol", "got it");
    assert_eq!(
        carol_online.stdout.expect_event("message")["text"],
        "got it"
    );
}
