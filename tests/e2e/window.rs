//! The window in a real terminal: each user's `messenger ui` runs in a
//! tmux session of its own (a private tmux server per test), keys go in
//! with `send-keys`, and the screens are read back with `capture-pane`.
//! Waiting is on what the screen shows, with a time-out.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Node, User, messenger_bin};

/// A tmux server of this test's own, killed on drop.
struct Tmux {
    socket: String,
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Tmux {
    fn new(test: &str) -> Option<Self> {
        if !have_tmux() {
            crate::support::skip(test, "tmux");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let socket = format!(
            "messenger-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Some(Self { socket })
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-u")
            .args(["-L", &self.socket])
            .args(args)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `messenger ui` for `user` in a session `name` of `width`×`height`.
    fn window(&self, name: &str, user: &User, width: u16, height: u16) {
        let command = format!(
            "env MESSENGER_HOME={home} MESSENGER_RENDEZVOUS={node} RUST_LOG=warn TERM=xterm-256color {bin} ui --listen /ip4/127.0.0.1/tcp/0; echo EXITED $?; sleep 600",
            home = user.home.path().display(),
            node = user.rendezvous,
            bin = messenger_bin().display(),
        );
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &command,
        ]);
    }

    fn keys(&self, session: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", session];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types `text` literally.
    fn type_text(&self, session: &str, text: &str) {
        self.tmux(&["send-keys", "-t", session, "-l", text]);
    }

    fn screen(&self, session: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", session])
    }

    /// Waits until the screen of `session` shows `what`; panics with the
    /// screen after 20 s.
    fn wait_for(&self, session: &str, what: &str) -> String {
        self.wait_until(session, what, |s| s.contains(what))
    }

    fn wait_until(&self, session: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen(session);
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{session}'s screen never showed {what:?}; it shows:\n{screen}"
            );
            // Between two looks at the screen (each a tmux round trip).
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, session: &str, width: u16, height: u16) {
        self.tmux(&[
            "resize-window",
            "-t",
            session,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn two_windows_sign_in_talk_see_typing_and_status_and_hold_two_conversations() {
    let test = "two_windows_sign_in_talk";
    let Some(tmux) = Tmux::new(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let (alice, bob, carol) = (User::new(&node), User::new(&node), User::new(&node));

    // alice's first run: the window signs her in.
    tmux.window("alice", &alice, 100, 30);
    tmux.wait_for("alice", "Sign in to Messenger");
    tmux.type_text("alice", "alice");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "alice (online)");

    // bob is registered already and has alice as a contact; carol too.
    bob.register("bob");
    bob.ok(&["contacts", "add", "alice"]);
    carol.register("carol");
    tmux.window("bob", &bob, 100, 30);
    tmux.wait_for("bob", "bob (online)");
    tmux.wait_until("bob", "alice online in bob's list", |s| {
        s.contains("Online (1)") && s.contains("● alice")
    });

    // alice adds bob and opens the conversation.
    tmux.keys("alice", &["a"]);
    tmux.wait_for("alice", "Add a contact");
    tmux.type_text("alice", "bob");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "added bob");
    tmux.wait_for("alice", "● bob");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "No messages with bob yet");

    // She types: bob sees it in his list.
    tmux.type_text("alice", "hello bob, lunch at noon?");
    tmux.wait_for("bob", "alice ✎");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_until("alice", "delivered", |s| {
        s.contains("hello bob, lunch at noon?") && s.contains("✓ delivered")
    });
    let shown = tmux.wait_for("bob", "alice (1)");
    assert!(shown.contains("hello bob, lunch at noon?"), "{shown}");

    // bob answers from his conversation: alice sees him typing, then it.
    tmux.keys("bob", &["Enter"]);
    tmux.wait_for("bob", "> ");
    tmux.type_text("bob", "yes! see you there");
    tmux.wait_for("alice", "bob is typing…");
    tmux.keys("bob", &["Enter"]);
    tmux.wait_for("alice", "yes! see you there");
    tmux.wait_until("alice", "typing gone", |s| !s.contains("is typing"));

    // carol (online on the command line) writes to alice meanwhile: a
    // second conversation, unread.
    let mut carol_online = carol.online();
    carol.ok(&["send", "alice", "are you free later?"]);
    tmux.wait_for("alice", "carol (1)");
    tmux.keys("alice", &["C-n"]);
    tmux.wait_for("alice", "are you free later?");
    tmux.type_text("alice", "after lunch");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_until("alice", "carol's reply delivered", |s| {
        s.contains("after lunch") && s.contains("✓ delivered")
    });
    assert_eq!(
        carol_online.stdout.expect_event("message")["text"],
        "after lunch"
    );
    // And back to bob's, which kept its history.
    tmux.keys("alice", &["C-p"]);
    tmux.wait_for("alice", "yes! see you there");

    // bob goes away: alice's list shows it.
    // Tab, not Escape, leaves the input: a terminal reads Escape followed
    // by a letter it has not yet read apart as Alt+letter, which a loaded
    // machine makes likely.
    tmux.keys("bob", &["Tab"]);
    tmux.keys("bob", &["s"]);
    tmux.wait_for("bob", "o online · a away");
    tmux.keys("bob", &["a"]);
    tmux.wait_for("alice", "◐ bob away");

    // Resizes: larger, to the smallest layout, and below it.
    tmux.resize("alice", 140, 40);
    tmux.wait_until("alice", "the wider layout", |s| {
        s.lines()
            .any(|l| l.chars().count() == 140 && l.contains("bob away"))
    });
    tmux.resize("alice", 80, 24);
    tmux.wait_until("alice", "80×24 layout", |s| {
        s.contains("Messenger") && s.contains("yes! see you there")
    });
    tmux.resize("alice", 70, 20);
    tmux.wait_for("alice", "at least 80×24");
    tmux.resize("alice", 100, 30);
    tmux.wait_for("alice", "yes! see you there");

    // Ctrl-C: the window closes and the terminal is given back.
    tmux.keys("alice", &["C-c"]);
    let after = tmux.wait_for("alice", "EXITED 0");
    assert!(
        !after.contains("Messenger"),
        "the alternate screen is gone:\n{after}"
    );
    tmux.keys("bob", &["C-c"]);
    tmux.wait_for("bob", "EXITED 0");

    // What was said is in the store, for the command line too.
    let history = alice.ok(&["history", "bob"]).stdout;
    assert!(
        history.contains("hello bob, lunch at noon?") && history.contains("yes! see you there")
    );
}

#[test]
fn the_window_gives_the_terminal_back_on_sigterm() {
    let test = "the_window_gives_the_terminal_back_on_sigterm";
    let Some(tmux) = Tmux::new(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let dave = User::new(&node);
    dave.register("dave");
    tmux.window("dave", &dave, 100, 30);
    tmux.wait_for("dave", "dave (online)");
    let pid = tmux
        .tmux(&["list-panes", "-t", "dave", "-F", "#{pane_pid}"])
        .trim()
        .to_owned();
    // The pane runs a shell whose child is the window.
    let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
    let window = String::from_utf8_lossy(&children.stdout)
        .lines()
        .next()
        .expect("the window's process")
        .to_owned();
    assert!(
        Command::new("kill")
            .args(["-TERM", &window])
            .status()
            .unwrap()
            .success()
    );
    let after = tmux.wait_for("dave", "EXITED 0");
    assert!(!after.contains("Messenger"), "{after}");
    // Offline at the node: whois says so.
    let whois = dave.ok(&["--json", "whois", "dave"]).json();
    assert_eq!(whois["online"], false, "{whois}");
}

#[test]
fn what_the_command_line_changes_shows_in_the_running_window() {
    let test = "what_the_command_line_changes_shows_in_the_running_window";
    let Some(tmux) = Tmux::new(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let (erin, frank) = (User::new(&node), User::new(&node));
    erin.register("erin");
    frank.register("frank");
    tmux.window("erin", &erin, 100, 30);
    tmux.wait_for("erin", "erin (online)");
    tmux.wait_for("erin", "No contacts");

    // Through the running window's control socket, not the window.
    erin.ok(&["contacts", "add", "frank"]);
    tmux.wait_for("erin", "frank");
    erin.ok(&["status", "busy", "in a meeting"]);
    tmux.wait_until("erin", "my new status", |s| {
        s.contains("erin (busy)") && s.contains("“in a meeting”")
    });
    erin.ok(&["block", "frank"]);
    tmux.wait_for("erin", "blocked");

    // Unread counts are the client's: kept across a restart of the window.
    erin.ok(&["unblock", "frank"]);
    frank.ok(&["send", "erin", "ping"]);
    tmux.wait_for("erin", "frank (1)");
    tmux.keys("erin", &["C-c"]);
    tmux.wait_for("erin", "EXITED 0");
    tmux.tmux(&["kill-session", "-t", "erin"]);
    tmux.window("erin", &erin, 100, 30);
    tmux.wait_for("erin", "frank (1)");
    // Read here, read everywhere: a follower sees the count go.
    let mut follower = erin.spawn(&["--json", "events"]);
    let snapshot = follower
        .stdout
        .expect("the snapshot", |l| l.contains("\"snapshot\""));
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(
        snapshot["unread"],
        serde_json::json!([{"name": "frank", "count": 1}]),
        "{snapshot}"
    );
    tmux.keys("erin", &["C-n"]);
    tmux.wait_for("erin", "ping");
    follower.stdout.expect("frank's count read", |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["event"]["event"] == "unread"
                && v["event"]["name"] == "frank"
                && v["event"]["count"] == 0
        })
    });
    tmux.keys("erin", &["C-c"]);
    tmux.wait_for("erin", "EXITED 0");
}
