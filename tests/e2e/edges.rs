//! A user's machine misbehaving: a damaged store, a full disk, a client
//! killed in the middle of a send. Nothing is lost, nothing is silently
//! replaced, and every outcome is known.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::netlab::{Lab, PUBLIC_NET};
use crate::support::{Node, User, alice_and_bob};

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `len` bytes of noise.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_damaged_store_is_reported_named_and_left_as_it_is() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut bob_online = bob.online();
    for i in 0..20 {
        alice.ok(&["send", "bob", &format!("message {i}")]);
    }
    bob_online.signal("INT");
    assert_eq!(bob_online.wait_exit(), Some(0));
    let store = bob.home.path().join("messenger.redb");
    let pristine = std::fs::read(&store).unwrap();
    assert!(
        pristine.len() > 8192,
        "a store with history: {} bytes",
        pristine.len()
    );

    let mid = pristine.len() / 2;
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to 0 bytes", Vec::new()),
        ("truncated to 4 KiB", pristine[..4096].to_vec()),
        ("truncated to half", pristine[..mid].to_vec()),
        ("random bytes over the header", {
            let mut d = pristine.clone();
            d[..512].copy_from_slice(&noise(512, 7));
            d
        }),
        // Where the history is (most of a new store's file is free space,
        // or old copies of pages, which no reader looks at): every copy of
        // one message, the live one among them.
        ("random bytes in the middle of the history", {
            let mut d = pristine.clone();
            let mut from = 0;
            let mut hits = 0;
            while let Some(at) = find(&d[from..], b"message 7") {
                let start = (from + at).saturating_sub(32);
                let end = (start + 96).min(d.len());
                let n = end - start;
                d[start..end].copy_from_slice(&noise(n, 11 + hits));
                from = end;
                hits += 1;
            }
            assert!(hits > 0, "the history is in the file");
            d
        }),
    ];
    let shown = store.display().to_string();
    for (what, damaged) in damages {
        std::fs::write(&store, &damaged).unwrap();
        for args in [
            vec!["history", "alice"],
            vec!["online", "--listen", "/ip4/127.0.0.1/tcp/0"],
            vec!["send", "alice", "anyone there?"],
        ] {
            let ran = bob.run(&args);
            assert_eq!(ran.code, 10, "{what}: messenger {args:?}: {ran:?}");
            for needle in [
                shown.as_str(),
                "damaged",
                "nothing in it was changed",
                "mv ",
            ] {
                assert!(
                    ran.stderr.contains(needle),
                    "{what}: messenger {args:?} says {needle:?}: {}",
                    ran.stderr
                );
            }
            assert!(!ran.stderr.contains("panicked"), "{what}: {}", ran.stderr);
            assert!(
                std::fs::read(&store).unwrap() == damaged,
                "{what}: messenger {args:?} left the file as it was"
            );
        }
        eprintln!("DAMAGE RESULT: {what}: refused with exit 10, the file left as it was");
    }

    // Put back, everything is there.
    std::fs::write(&store, &pristine).unwrap();
    let history = json_lines(&bob.ok(&["--json", "history", "alice"]).stdout);
    assert_eq!(history.len(), 20);
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop; `None` (said
/// loudly) without root, which CI has.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Self> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            crate::support::skip(test, "root, to mount a small tmpfs");
            return None;
        }
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Some(Self(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the disk holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_is_said_plainly_loses_nothing_and_heals_by_itself() {
    let (_dir, node, alice, bob) = alice_and_bob();
    // Alice is bob's contact: on a disk this small, strangers' messages
    // are not taken in at all (below the floor of free space).
    bob.ok(&["contacts", "add", "alice"]);
    // bob's home moves onto a 4 MiB disk, with everything it had.
    let small = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(small.path(), "4m", "a_full_disk_is_said_plainly") else {
        return;
    };
    let moved = User {
        home: tempfile::TempDir::new_in(small.path()).unwrap(),
        rendezvous: node.addr.clone(),
        netns: None,
    };
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", bob.home.path().display()))
        .arg(moved.home.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let bob = moved;

    let mut bob_online = bob.online();
    let _alice_online = alice.online();
    for i in 0..5 {
        alice.ok(&["send", "bob", &format!("before {i}")]);
        bob.ok(&["send", "alice", &format!("reply {i}")]);
    }
    let filler = fill(small.path());

    // The first send that cannot be stored (the store keeps a reserve
    // free, so that is at once or within a few) says why, with its own
    // status.
    let holding = format!(
        "no space left on the device holding {}",
        bob.home.path().display()
    );
    let mut stored = 10;
    let refused = loop {
        let ran = bob.run(&["send", "alice", &format!("on a full disk {stored}")]);
        match ran.code {
            0 => stored += 1,
            9 => break ran,
            _ => panic!("a send either goes or says the disk is full: {ran:?}"),
        }
        assert!(stored < 500, "the disk never filled");
    };
    assert!(refused.stderr.contains(&holding), "{refused:?}");
    // The running client still answers reads, and nothing was lost.
    let history = json_lines(
        &bob.ok(&["--json", "history", "alice", "--limit", "1000"])
            .stdout,
    );
    assert_eq!(history.len(), stored, "{history:?}");
    assert!(
        bob_online.child.try_wait().unwrap().is_none(),
        "still running"
    );

    // Space again: it works, without a restart.
    std::fs::remove_file(filler).unwrap();
    let sent = bob.ok(&["--json", "send", "alice", "space again"]).json();
    assert_eq!(sent["event"], "delivered", "{sent}");
    let history = json_lines(
        &bob.ok(&["--json", "history", "alice", "--limit", "1000"])
            .stdout,
    );
    assert_eq!(history.len(), stored + 1);
    eprintln!(
        "DISK RESULT: {} more messages stored before the disk was full: refused with exit 9 ({holding}); {stored} messages kept and read back; healed after freeing space",
        stored - 10
    );
}

/// Waits until `pred` holds of `user`'s outbox, read through its running
/// client; panics after 20 s.
fn until_outbox(user: &User, what: &str, pred: impl Fn(usize) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n = json_lines(&user.ok(&["--json", "outbox"]).stdout).len();
        if pred(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: outbox holds {n}"
        );
        // Each read is a round trip to the running client: no spin.
        std::thread::yield_now();
    }
}

#[test]
fn a_client_killed_mid_send_leaves_no_outcome_unknown_and_nothing_twice() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut outcomes: HashMap<String, i32> = HashMap::new();

    // 1. Killed while sends wait on it: bob's client is stopped (SIGSTOP),
    //    so five sends through alice's running client are stored and wait
    //    for an acknowledgement when alice's client dies.
    let mut bob_online = bob.online();
    let alice_online = alice.online();
    let alice_pid = alice_online.child.id();
    bob_online.signal("STOP");
    std::thread::scope(|scope| {
        let sends: Vec<_> = (0..5)
            .map(|i| {
                let alice = &alice;
                scope.spawn(move || {
                    let text = format!("waiting {i}");
                    (text.clone(), alice.run(&["--json", "send", "bob", &text]))
                })
            })
            .collect();
        until_outbox(&alice, "five sends stored", |n| n == 5);
        let killed = Command::new("kill")
            .args(["-9", &alice_pid.to_string()])
            .status();
        assert!(killed.unwrap().success());
        bob_online.signal("CONT");
        for send in sends {
            let (text, ran) = send.join().unwrap();
            assert!(
                ran.code == 0 || ran.code == 7,
                "a send whose client died finds out what became of it: {ran:?}"
            );
            assert!(ran.stderr.contains("the running client stopped"), "{ran:?}");
            outcomes.insert(text, ran.code);
        }
    });
    drop(alice_online);

    // 2. Killed in the middle of a burst: four senders at once, alice's
    //    client killed after the tenth answer, with the others in flight.
    let alice_online = alice.online();
    let alice_pid = alice_online.child.id();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let (alice, answered) = (&alice, &answered);
                scope.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let text = format!("burst {t}.{i}");
                            let ran = alice.run(&["--json", "send", "bob", &text]);
                            if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 9 {
                                let _ = Command::new("kill")
                                    .args(["-9", &alice_pid.to_string()])
                                    .status();
                            }
                            (text, ran)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for sender in senders {
            for (text, ran) in sender.join().unwrap() {
                assert!(
                    ran.code == 0 || ran.code == 7,
                    "every send knows its outcome (delivered or queued): {ran:?}"
                );
                outcomes.insert(text, ran.code);
            }
        }
    });
    drop(alice_online);

    // alice again: whatever is queued goes, and bob has each message once.
    let _alice_again = alice.online();
    let total = outcomes.len();
    assert_eq!(total, 45);
    let mut received = Vec::new();
    while received.len() < total {
        let m = bob_online.stdout.expect_event("message");
        received.push(m["text"].as_str().unwrap().to_owned());
    }
    until_outbox(&alice, "everything delivered", |n| n == 0);
    let history = json_lines(
        &bob.ok(&["--json", "history", "alice", "--limit", "1000"])
            .stdout,
    );
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), total, "{texts:?}");
    for text in outcomes.keys() {
        assert_eq!(
            texts.iter().filter(|t| *t == text).count(),
            1,
            "{text:?} is in bob's history exactly once: {texts:?}"
        );
    }
    let mine = json_lines(
        &alice
            .ok(&["--json", "history", "bob", "--limit", "1000"])
            .stdout,
    );
    assert_eq!(mine.len(), total, "alice's history holds each once too");
    assert!(mine.iter().all(|m| m["state"] == "delivered"), "{mine:?}");
    let queued = outcomes.values().filter(|c| **c == 7).count();
    eprintln!(
        "KILL RESULT: {total} sends, alice's client killed twice (with 5 waiting, then mid-burst): {} said delivered, {queued} said queued, none unknown; all {total} delivered after restart, each exactly once in both histories",
        total - queued
    );
}

/// CPU time (user + system, all threads) `pid` has used so far.
fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    std::time::Duration::from_millis(ticks * 1000 / per_second)
}

fn presence(line: &str, name: &str, status: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .is_ok_and(|v| v["event"] == "presence" && v["name"] == name && v["status"] == status)
}

#[test]
fn a_client_whose_network_vanishes_waits_quietly_and_comes_back_by_itself() {
    let test = "a_client_whose_network_vanishes_waits_quietly";
    let Some(mut lab) = Lab::new(test) else {
        return;
    };
    let rdv = lab.public_host("rdv", 1);
    let c_ns = lab.public_host("c", 20);
    let w_ns = lab.public_host("w", 30);
    let data = tempfile::tempdir().unwrap();
    let node = Node::spawn(
        Some(&rdv),
        data.path(),
        &format!("{PUBLIC_NET}.1"),
        4001,
        &[],
    );
    let user = |ns: String, name: &str| {
        let user = User {
            home: crate::support::private_tempdir(),
            rendezvous: node.addr.clone(),
            netns: Some(ns),
        };
        user.ok(&["register", name]);
        user
    };
    let carol = user(c_ns, "carol");
    let walter = user(w_ns, "walter");
    walter.ok(&["contacts", "add", "carol"]);
    let listen = ["--json", "online", "--listen", "/ip4/0.0.0.0/tcp/0"];
    let mut carol_online = carol.spawn(&listen);
    carol_online.stdout.expect_event("online");
    let mut walter_online = walter.spawn(&listen);
    walter_online.stdout.expect_event("online");
    walter_online
        .stdout
        .expect("carol online", |l| presence(l, "carol", "online"));

    // carol's only interface goes away. She notices (her pings to the node
    // go unanswered) and starts reconnecting; the node pushes her offline.
    lab.unplug("c");
    carol_online.stdout.expect_event("reconnecting");
    walter_online
        .stdout
        .expect("carol offline", |l| presence(l, "carol", "offline"));

    // Offline: how much CPU she uses while she waits, over 10 s (a
    // measurement window, not a synchronisation).
    let pid = carol_online.child.id();
    let window = std::time::Duration::from_secs(10);
    let before = cpu_time(pid);
    std::thread::sleep(window);
    let used = cpu_time(pid) - before;
    let share = used.as_secs_f64() / window.as_secs_f64();
    assert!(
        carol_online.child.try_wait().unwrap().is_none(),
        "carol still runs"
    );

    // The interface returns: she is back online by herself, reachable.
    let back = std::time::Instant::now();
    lab.replug("c", 20);
    let online = carol_online.stdout.expect_event("online");
    walter_online
        .stdout
        .expect("carol online again", |l| presence(l, "carol", "online"));
    let took = back.elapsed();
    walter.ok(&["send", "carol", "welcome back"]);
    let got = carol_online.stdout.expect_event("message");
    assert_eq!(got["text"], "welcome back");
    eprintln!(
        "OFFLINE RESULT: while her network was gone carol used {used:?} of CPU in {window:?} ({:.2}% of a core); back online {took:?} after the interface returned ({online})",
        share * 100.0
    );
    assert!(
        share < 0.01,
        "CPU while offline: {:.2}% of a core",
        share * 100.0
    );
    drop(carol_online);
    drop(walter_online);
    drop(node);
}
