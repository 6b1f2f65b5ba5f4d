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

/// Records, for every received message added to the page, the ms from
/// its client storing it (`updated_at`) to its element in the DOM.
const WATCH_ARRIVALS: &str = r#"
window.arrivals = [];
new MutationObserver((changes) => {
  const now = Date.now();
  for (const change of changes) {
    for (const node of change.addedNodes) {
      if (node.nodeType === 1 && node.matches('li.message.in')) {
        window.arrivals.push(now - Number(node.dataset.updated));
      }
    }
  }
}).observe(document.body, { subtree: true, childList: true });
"#;

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

    // Messages to the open conversation, one at a time.
    browser.run(WATCH_ARRIVALS, vec![]).await;
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
    let samples: Vec<Duration> = arrivals
        .as_array()
        .expect("a list")
        .iter()
        .map(|ms| Duration::from_secs_f64(ms.as_f64().unwrap_or_default().max(0.5) / 1000.0))
        .collect();
    let (median, p99) = percentiles(samples);

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
    browser.close().await;
    drop(web);
    node.shutdown().await;

    vec![
        time_figure(
            "web: a message from its client storing it to the page's DOM (median)",
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
