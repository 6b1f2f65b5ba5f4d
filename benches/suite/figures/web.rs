//! The web window in headless Chromium, served by a real `messenger web`:
//! how long a message takes from the client storing it to the page's DOM,
//! how long opening a long conversation takes to draw, and what the page
//! weighs; each against its bound, beside the terminal window's figures
//! (the `window` group).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use messenger::testing::browser::Browser;
use serde_json::{Value, json};

use super::*;

/// One request to the running client of `home`.
fn ask(home: &Path, request: &Value) -> Value {
    let mut socket = UnixStream::connect(home.join("control.sock")).expect("the control socket");
    let mut line = request.to_string();
    line.push('\n');
    socket.write_all(line.as_bytes()).expect("write");
    socket
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("read");
    serde_json::from_str(&reply).expect("a JSON reply")
}

fn random_id() -> String {
    MessageId::random().to_string()
}

/// Opens bob's conversation and waits until its first page is drawn: ms
/// from the click to the frame after the messages are in the DOM.
const OPEN_CONVERSATION: &str = r#"
const [name, want, done] = arguments;
const open = [...document.querySelectorAll('[aria-label="Contacts"] button')]
  .find((b) => (b.getAttribute('aria-label') || '').startsWith(name + ','));
const started = performance.now();
open.click();
const check = () => {
  const panel = document.querySelector('.panel:not([hidden])');
  const shown = panel ? panel.querySelectorAll('.log li').length : 0;
  if (shown >= want) {
    requestAnimationFrame(() => done(performance.now() - started));
  } else {
    setTimeout(check, 1);
  }
};
check();
"#;

/// Records, for every received message added to the page, its id, when
/// its client stored it (`updated_at`) and when its element was added to
/// the DOM (ms since the epoch: the machine's one clock).
const WATCH_ARRIVALS: &str = r#"
window.arrivals = [];
new MutationObserver((changes) => {
  const now = Date.now();
  for (const change of changes) {
    for (const node of change.addedNodes) {
      if (node.nodeType === 1 && node.matches('li.message.in')) {
        window.arrivals.push([node.dataset.id, Number(node.dataset.updated), now]);
      }
    }
  }
}).observe(document.body, { subtree: true, childList: true });
"#;

/// Follows the client of `home` over its control socket, as `messenger
/// events` (and every other front end of the terminal) does: for each
/// message received, its id and when the event arrived here. Ends when
/// the client closes the socket.
fn follow_messages(home: &Path) -> std::thread::JoinHandle<Vec<(String, u64)>> {
    use std::io::BufRead;
    let snapshot = ask(home, &json!({"op": "snapshot"}));
    let follow = json!({"op": "follow", "run": snapshot["run"], "after": snapshot["seq"]});
    let mut socket = UnixStream::connect(home.join("control.sock")).expect("the control socket");
    let mut line = follow.to_string();
    line.push('\n');
    socket.write_all(line.as_bytes()).expect("write");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        // The writing side stays open: closing it would end the follow.
        let _writer = socket.try_clone().expect("a second handle");
        for line in std::io::BufReader::new(socket).lines() {
            let Ok(line) = line else { break };
            let at = now_ms();
            let Ok(reply) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if reply["event"]["event"] == "message" {
                let id = reply["event"]["message"]["message"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                seen.push((id, at));
            }
        }
        seen
    })
}

/// The web window's figures; none when Chromium is not installed.
pub async fn web(sizes: &Sizes, messenger_bin: &Path) -> Vec<Figure> {
    let Some(browser) = Browser::start("the web window's figures").await else {
        return Vec::new();
    };
    let (node, dir) = start_node().await;
    let homes = Homes {
        bin: messenger_bin.to_owned(),
        dir: dir.path().to_owned(),
        node: node.listen_addrs()[0].clone(),
    };
    homes.run("alice", &["register", "alice"]);
    homes.run("bob", &["register", "bob"]);
    homes.run("alice", &["contacts", "add", "bob"]);
    homes.run("bob", &["contacts", "add", "alice"]);
    let _bob = homes.online("bob");
    let web = homes.spawn(
        "alice",
        &["web", "--no-open", "--peer-listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let line = web.expect("the page's address", |l| l.starts_with("web http://"));
    let url = line.trim_start_matches("web ").to_owned();
    let alice_home = dir.path().join("alice");
    let bob_home = dir.path().join("bob");

    // A long conversation: alice's messages, all delivered.
    let n = sizes.web_messages;
    for i in 0..n {
        let said = ask(
            &alice_home,
            &json!({"op": "enqueue", "id": random_id(), "to": "bob", "text": format!("{i}: {TEXT}")}),
        );
        assert_eq!(said["reply"], "sent", "{said}");
    }
    let waiting = Instant::now();
    loop {
        let outbox = ask(&alice_home, &json!({"op": "outbox"}));
        if outbox["messages"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(600),
            "alice's outbox never emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    browser.goto(&url).await;
    browser.shows("Signed in as alice").await;
    browser
        .contact_until("bob", "online", |w| w.starts_with("bob, Online"))
        .await;
    let first_page = n.min(100);
    let opened = browser
        .client
        .execute_async(OPEN_CONVERSATION, vec![json!("bob"), json!(first_page)])
        .await
        .expect("open the conversation");
    let open = Duration::from_secs_f64(opened.as_f64().expect("ms") / 1000.0);

    // Messages to the open conversation, one at a time, followed by the
    // page and, side by side, by a follower on the control socket.
    browser.run(WATCH_ARRIVALS, vec![]).await;
    let follower = follow_messages(&alice_home);
    let m = sizes.web_events;
    for i in 0..m {
        let said = ask(
            &bob_home,
            &json!({"op": "send", "id": random_id(), "to": "alice", "text": format!("event {i}")}),
        );
        assert_eq!(said["outcome"], "delivered", "{said}");
    }
    let arrivals = browser
        .until(
            "every message in the page",
            "return window.arrivals.length >= arguments[0] ? window.arrivals : null",
            vec![json!(m)],
        )
        .await;
    // What the page weighs: its three files, as served.
    let weight = browser
        .run(
            r#"
return Promise.all(['/', '/app.js', '/app.css'].map(
  (path) => fetch(path).then((r) => r.arrayBuffer()).then((b) => b.byteLength)))
  .then((sizes) => sizes.reduce((a, b) => a + b, 0));
"#,
            vec![],
        )
        .await
        .as_f64()
        .expect("bytes");
    let arrivals: Vec<(String, u64, u64)> =
        serde_json::from_value(arrivals).expect("[id, stored, drawn] triples");
    // The follower ends when the client goes.
    drop(web);
    let followed = follower.join().expect("the follower");
    let ms = |ms: u64| Duration::from_millis(ms.max(1));
    let mut to_dom = Vec::new();
    let mut stored_to_dom = Vec::new();
    let mut stored_to_follower = Vec::new();
    for (id, stored, drawn) in &arrivals {
        stored_to_dom.push(ms(drawn.saturating_sub(*stored)));
        if let Some((_, at)) = followed.iter().find(|(seen, _)| seen == id) {
            to_dom.push(ms(drawn.saturating_sub(*at)));
            stored_to_follower.push(ms(at.saturating_sub(*stored)));
        }
    }
    assert!(!to_dom.is_empty(), "the follower saw the messages");
    let (median, p99) = percentiles(to_dom);
    let (stored_median, _) = percentiles(stored_to_dom);
    let (follower_median, _) = percentiles(stored_to_follower);

    browser.close().await;
    node.shutdown().await;

    vec![
        time_figure(
            "web: a message event to the page's DOM (median; from a control-socket follower's receipt)",
            median,
            Duration::from_millis(100),
            "the bound: 100 ms",
            Some(1.0),
        ),
        time_figure(
            "web: the same, 99th percentile",
            p99,
            Duration::from_millis(100),
            "the bound of the median: 100 ms",
            None,
        ),
        time_figure(
            "web: a message from its client storing it to the page's DOM (median)",
            stored_median,
            follower_median,
            "the same to a control-socket follower (the terminal's front ends)",
            None,
        ),
        time_figure(
            &format!("web: open a {n}-message conversation (first page drawn)"),
            open,
            Duration::from_millis(300),
            "the bound: 300 ms",
            Some(1.0),
        ),
        Figure {
            name: "web: the page's files (HTML, JavaScript, CSS)".into(),
            ours: weight,
            baseline: 300_000.0,
            unit: "B".into(),
            baseline_name: "the bound: 300 KB".into(),
            ratio: weight / 300_000.0,
            target: Some("≤ 1×".into()),
            met: Some(weight <= 300_000.0),
        },
    ]
}
