//! Files by screen name: offered, accepted, fetched directly, checked
//! against the signed hash, resumed after kill -9, saved under safe names
//! that never replace a file; declines; a non-contact's offer waits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Lines, User, alice_and_bob};

/// Deterministic bytes that do not compress: BLAKE3's output stream.
fn content(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn json_event(lines: &mut Lines, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let line = lines.expect(what, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v))
    });
    serde_json::from_str(&line).unwrap()
}

/// Offers `path` from `from` to `to_name`; returns the offer id.
fn offer(from: &User, to_name: &str, path: &Path) -> String {
    let ran = from.ok(&[
        "--json",
        "file",
        "send",
        to_name,
        path.to_str().unwrap(),
        "--no-wait",
    ]);
    let v = ran.json();
    assert_eq!(v["event"], "offered", "{ran:?}");
    v["id"].as_str().unwrap().to_owned()
}

/// Waits for the offer `id` to arrive on a running client's output.
fn offered(lines: &mut Lines, id: &str) -> Value {
    json_event(lines, "the offer", |v| {
        v["event"] == "message" && v["id"] == id && v["file"].is_object()
    })
}

fn transfer_state(lines: &mut Lines, id: &str, state: &str) -> Value {
    json_event(lines, &format!("transfer {id} {state}"), |v| {
        v["event"] == "transfer" && v["transfer"]["id"] == id && v["transfer"]["state"] == state
    })
}

fn files(user: &User) -> Vec<Value> {
    user.ok(&["--json", "files"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["transfer"].clone())
        .collect()
}

#[test]
fn a_file_arrives_whole_and_checked_and_a_killed_receiver_resumes_where_it_stopped() {
    let (dir, _node, alice, bob) = alice_and_bob();
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();
    let size = 48 << 20;
    let data = content(size, "resume");
    let source = dir.path().join("holiday photos.tar");
    std::fs::write(&source, &data).unwrap();
    let downloads = dir.path().join("downloads");

    let id = offer(&alice, "bob", &source);
    let message = offered(&mut bob_online.stdout, &id);
    assert_eq!(message["file"]["name"], "holiday photos.tar");
    assert_eq!(message["file"]["size"], size);
    // Not a contact's, and no auto-accept: it waits.
    let waiting = files(&bob);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["state"], "offered");

    bob.ok(&[
        "file",
        "accept",
        &id,
        "--to",
        downloads.to_str().unwrap(),
        "--no-wait",
    ]);
    let first = json_event(&mut bob_online.stdout, "receiving", |v| {
        v["event"] == "receiving" && v["id"] == id
    });
    assert_eq!(first["offset"], 0);
    // Half-way (some bytes, not all): freeze the sender, kill the receiver.
    let partial = downloads.join(format!(".{id}.part"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            alice_online.signal("STOP");
            break;
        }
        assert!(Instant::now() < deadline, "no bytes arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    bob_online.signal("KILL");
    bob_online.wait_exit();
    alice_online.signal("CONT");
    let had = std::fs::metadata(&partial).unwrap().len();
    assert!(
        had > 0 && had < size as u64,
        "killed half-way: {had} of {size}"
    );
    eprintln!("receiver killed with {had} of {size} bytes");

    // Back: the accepted transfer resumes from what is on disk.
    let started = Instant::now();
    let mut bob_online = bob.online();
    let resumed = json_event(&mut bob_online.stdout, "receiving again", |v| {
        v["event"] == "receiving" && v["id"] == id
    });
    assert_eq!(resumed["offset"], had, "resumed from what it had");
    transfer_state(&mut bob_online.stdout, &id, "completed");
    eprintln!(
        "resumed from {had} and completed {:?} after the restart",
        started.elapsed()
    );
    let saved = downloads.join("holiday photos.tar");
    assert!(
        std::fs::read(&saved).unwrap() == data,
        "byte-identical after resume"
    );
    assert!(!partial.exists(), "the partial file is gone");
    // The sender was told it arrived checked.
    transfer_state(&mut alice_online.stdout, &id, "completed");
    let mine = files(&alice);
    assert_eq!(mine[0]["state"], "completed", "{mine:?}");

    // The same name again never replaces the first file.
    let id2 = offer(&alice, "bob", &source);
    offered(&mut bob_online.stdout, &id2);
    let ran = bob.ok(&[
        "--json",
        "file",
        "accept",
        &id2,
        "--to",
        downloads.to_str().unwrap(),
    ]);
    let done = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "completed")
        .unwrap_or_else(|| panic!("{ran:?}"));
    assert_eq!(
        PathBuf::from(done["path"].as_str().unwrap()),
        downloads.join("holiday photos (1).tar")
    );
    assert_eq!(std::fs::read(&saved).unwrap().len(), size);
}

#[test]
fn hostile_names_are_saved_safely_and_declines_reach_the_sender() {
    let (dir, _node, alice, bob) = alice_and_bob();
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();
    let downloads = dir.path().join("in");
    std::fs::create_dir_all(&downloads).unwrap();
    // A file the offer must not reach.
    let outside = dir.path().join("passwd");
    std::fs::write(&outside, "root").unwrap();
    let cases = [
        ("..passwd", "passwd"),
        ("con", "_con"),
        ("line\nbreak.txt", "linebreak.txt"),
    ];
    for (i, (offered_name, saved_name)) in cases.iter().enumerate() {
        let sub = dir.path().join(format!("src{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join(offered_name);
        let data = content(1000 + i, offered_name);
        std::fs::write(&path, &data).unwrap();
        let id = offer(&alice, "bob", &path);
        offered(&mut bob_online.stdout, &id);
        bob.ok(&["file", "accept", &id, "--to", downloads.to_str().unwrap()]);
        let saved = downloads.join(saved_name);
        assert_eq!(std::fs::read(&saved).unwrap(), data, "{offered_name:?}");
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"root");
    let names: Vec<String> = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // Bytes that do not hash to what was signed (the sender's file was
    // rewritten in place, same size and time): refused, nothing saved.
    let path = dir.path().join("contract.pdf");
    std::fs::write(&path, content(300_000, "signed")).unwrap();
    let when = std::fs::metadata(&path).unwrap().modified().unwrap();
    let id = offer(&alice, "bob", &path);
    offered(&mut bob_online.stdout, &id);
    std::fs::write(&path, content(300_000, "forged")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let ran = bob.run(&["file", "accept", &id, "--to", downloads.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("does not match the hash"), "{ran:?}");
    assert!(!downloads.join("contract.pdf").exists());
    assert!(!downloads.join(format!(".{id}.part")).exists());

    // Declined: the sender is told, and its follow ends with exit 6.
    let path = dir.path().join("unwanted.bin");
    std::fs::write(&path, content(5000, "no")).unwrap();
    let id = offer(&alice, "bob", &path);
    offered(&mut bob_online.stdout, &id);
    bob.ok(&["file", "decline", &id]);
    transfer_state(&mut alice_online.stdout, &id, "declined");
    let again = bob.run(&["file", "accept", &id]);
    assert_eq!(
        again.code, 2,
        "a declined offer cannot be accepted: {again:?}"
    );
    assert!(again.stderr.contains("declined"), "{again:?}");
}

#[test]
fn a_contacts_small_files_come_in_unasked_and_file_commands_need_the_running_client() {
    let (dir, _node, alice, bob) = alice_and_bob();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "see you at 3").unwrap();
    let ran = alice.run(&["file", "send", "bob", path.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("running client"), "{ran:?}");

    bob.ok(&["contacts", "add", "alice"]);
    bob.ok(&["contacts", "auto-accept", "alice", "--below", "1k"]);
    let downloads = dir.path().join("auto");
    bob.ok(&["files", "--downloads", downloads.to_str().unwrap()]);
    let mut bob_online = bob.spawn(&["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    bob_online.stdout.expect_event("online");
    let _alice_online = alice.online();
    let id = offer(&alice, "bob", &path);
    let done = transfer_state(&mut bob_online.stdout, &id, "completed");
    let saved = PathBuf::from(done["transfer"]["path"].as_str().unwrap());
    assert_eq!(
        saved,
        downloads.join("notes.txt"),
        "into the remembered directory"
    );
    assert_eq!(std::fs::read(&saved).unwrap(), b"see you at 3");

    // Above the limit: it waits for an answer.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, content(4096, "big")).unwrap();
    let id = offer(&alice, "bob", &big);
    offered(&mut bob_online.stdout, &id);
    let listed = files(&bob);
    let t = listed.iter().find(|t| t["id"] == id).unwrap();
    assert_eq!(t["state"], "offered", "{listed:?}");

    // Over the size cap, it cannot be accepted at all, until raised.
    let said = bob.ok(&["files", "--max-size", "1KiB"]);
    assert!(
        said.stdout.contains("files over 1.0 KiB are refused"),
        "{said:?}"
    );
    let to = dir.path().join("big");
    let refused = bob.run(&["file", "accept", &id, "--to", to.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("over your limit of 1.0 KiB"),
        "{refused:?}"
    );
    assert!(!to.join("big.bin").exists());
    bob.ok(&["files", "--max-size", "0"]);
    bob.ok(&["file", "accept", &id, "--to", to.to_str().unwrap()]);
    assert!(std::fs::read(to.join("big.bin")).unwrap() == content(4096, "big"));
}

#[test]
fn a_killed_sender_serves_the_rest_once_it_is_back() {
    let (dir, _node, alice, bob) = alice_and_bob();
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();
    let size = 48 << 20;
    let data = content(size, "sender");
    let source = dir.path().join("dataset.bin");
    std::fs::write(&source, &data).unwrap();
    let downloads = dir.path().join("downloads");
    let id = offer(&alice, "bob", &source);
    offered(&mut bob_online.stdout, &id);
    bob.ok(&[
        "file",
        "accept",
        &id,
        "--to",
        downloads.to_str().unwrap(),
        "--no-wait",
    ]);
    let partial = downloads.join(format!(".{id}.part"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no bytes arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    alice_online.signal("KILL");
    alice_online.wait_exit();
    let had = std::fs::metadata(&partial).unwrap().len();
    assert!(had < size as u64, "killed half-way: {had} of {size}");
    // Bob's client keeps the transfer and waits for alice.
    json_event(&mut bob_online.stdout, "waiting for alice", |v| {
        v["event"] == "transfer_waiting" && v["id"] == id
    });
    let _alice_online = alice.online();
    let resumed = json_event(&mut bob_online.stdout, "receiving again", |v| {
        v["event"] == "receiving" && v["id"] == id && v["offset"].as_u64() > Some(0)
    });
    eprintln!(
        "sender killed with {had} of {size} received; resumed from {}",
        resumed["offset"]
    );
    transfer_state(&mut bob_online.stdout, &id, "completed");
    assert!(std::fs::read(downloads.join("dataset.bin")).unwrap() == data);
}
