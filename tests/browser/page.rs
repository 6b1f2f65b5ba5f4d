//! What a person does in the page, against real processes: sign in, add a
//! contact, talk with someone at a terminal, see presence and typing,
//! accept a file; and the page following its client through a restart.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::support::{Node, Proc, User, alice_and_bob};

/// `messenger web` for `user`, and the address it printed.
pub fn web(user: &User) -> (Proc, String) {
    let mut web = user.spawn(&["web", "--no-open", "--peer-listen", "/ip4/127.0.0.1/tcp/0"]);
    let line = web
        .stdout
        .expect("the address to open", |l| l.starts_with("web http://"));
    let url = line.trim_start_matches("web ").to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/#"),
        "a loopback address with the token after '#': {url}"
    );
    (web, url)
}

/// One request to the running client of `home`, over its control socket
/// (what `messenger` does for a command the CLI has no words for).
pub fn ask(home: &Path, request: Value) -> Value {
    let mut socket = UnixStream::connect(home.join("control.sock")).expect("the control socket");
    let mut line = request.to_string();
    line.push('\n');
    socket.write_all(line.as_bytes()).expect("write a request");
    socket
        .shutdown(std::net::Shutdown::Write)
        .expect("end the request");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("read the reply");
    serde_json::from_str(&reply).expect("a JSON reply")
}

/// The delivery state shown for my message `text`, in words.
const MESSAGE_STATE: &str = r#"
for (const item of document.querySelectorAll('.log li.out')) {
  if (item.querySelector('.text')?.textContent === arguments[0]) {
    return item.querySelector('.state')?.textContent || 'shown';
  }
}
return '';
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_signs_in_adds_a_contact_and_talks_with_presence_and_typing() {
    let Some(browser) = Browser::start("page::a_new_user_signs_in…").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let bob = User::new(&node);
    bob.register("bob");
    let mut bob_online = bob.online();

    // A fresh home: the page asks for a node and a name.
    let alice = User::new(&node);
    let (_web, url) = web(&alice);
    browser.goto(&url).await;
    browser.fill("textbox", "Rendezvous node", &node.addr).await;
    browser.fill("textbox", "Screen name", "alice").await;
    browser.press("Sign in").await;
    browser.shows("Signed in as alice").await;
    // The token left the address bar once used.
    let address = browser.client.current_url().await.unwrap();
    assert_eq!(address.fragment(), None, "{address}");

    // A contact added in the page is online in "Contacts".
    browser
        .fill("textbox", "Contact's screen name", "bob")
        .await;
    browser.press("Add contact").await;
    browser
        .contact_until("bob", "online", |w| w.starts_with("bob, Online"))
        .await;
    bob.ok(&["contacts", "add", "alice"]);

    // A message typed in the page reaches bob's terminal, and is marked
    // delivered once bob's client acknowledged it.
    let open = browser
        .until(
            "bob in Contacts",
            "return [...document.querySelectorAll('[aria-label=\"Contacts\"] button')].find(b => (b.getAttribute('aria-label') || '').startsWith('bob,'))",
            vec![],
        )
        .await;
    assert!(!open.is_null());
    browser
        .run(
            "[...document.querySelectorAll('[aria-label=\"Contacts\"] button')].find(b => (b.getAttribute('aria-label') || '').startsWith('bob,')).click()",
            vec![],
        )
        .await;
    browser
        .fill("textbox", "Message", "hello from the page")
        .await;
    browser.press("Send").await;
    bob_online
        .stdout
        .expect("alice's message at bob's terminal", |l| {
            l.contains("\"message\"") && l.contains("hello from the page")
        });
    browser
        .until(
            "the message marked delivered",
            &format!("return (() => {{ {MESSAGE_STATE} }})() === 'delivered'"),
            vec![json!("hello from the page")],
        )
        .await;

    // bob answers from his terminal: the reply is shown in the page.
    bob.ok(&["send", "alice", "hi from the terminal"]);
    browser.shows("hi from the terminal").await;

    // bob's status and personal message are pushed to the page.
    bob.ok(&["status", "away", "out to lunch"]);
    browser
        .contact_until("bob", "away with his message", |w| {
            w.starts_with("bob, Away") && w.contains("out to lunch")
        })
        .await;

    // Typing, both ways.
    let said = ask(
        bob.home.path(),
        json!({"op": "typing", "to": "alice", "active": true}),
    );
    assert_eq!(said["reply"], "done", "{said}");
    browser.shows("bob is typing…").await;
    browser
        .contact_until("bob", "typing", |w| w.contains("typing"))
        .await;
    let message = browser.control("textbox", "Message").await;
    message.send_keys("a").await.unwrap();
    bob_online.stdout.expect("alice typing at bob's", |l| {
        l.contains("\"typing\"") && l.contains("\"alice\"") && l.contains("true")
    });

    // My own status, changed in the page, is what bob's client sees.
    let status = browser.control("combobox", "Status").await;
    status.select_by_value("busy").await.unwrap();
    bob_online.stdout.expect("alice busy at bob's", |l| {
        l.contains("\"presence\"") && l.contains("\"alice\"") && l.contains("busy")
    });

    if let Some(path) = std::env::var_os("MESSENGER_SCREENSHOT") {
        browser.screenshot(Path::new(&path)).await;
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_offered_at_the_terminal_is_accepted_in_the_page_with_its_progress() {
    let Some(browser) = Browser::start("page::a_file_offered…").await else {
        return;
    };
    let (dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    bob.ok(&["contacts", "add", "alice"]);
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    alice.ok(&["files", "--downloads", downloads.to_str().unwrap()]);
    let _bob_online = bob.online();
    let (_web, url) = web(&alice);
    browser.goto(&url).await;
    browser.shows("Signed in as alice").await;

    // Large enough that the transfer takes several of the client's
    // progress reports (one per 250 ms).
    let payload: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let offered = dir.path().join("holiday.bin");
    std::fs::write(&offered, &payload).unwrap();
    bob.ok(&[
        "file",
        "send",
        "alice",
        offered.to_str().unwrap(),
        "--no-wait",
    ]);

    // The offer opens bob's conversation with Accept and Decline.
    browser.shows("offers the file holiday.bin").await;
    let accept = browser.control("button", "Accept").await;
    browser.control("button", "Decline").await;
    // Every value the progress bar takes is recorded as the page draws it.
    browser
        .run(
            r#"
window.progressSeen = [];
new MutationObserver(() => {
  for (const bar of document.querySelectorAll('[role="progressbar"]')) {
    window.progressSeen.push([Number(bar.getAttribute('aria-valuenow')), Number(bar.getAttribute('aria-valuemax'))]);
  }
}).observe(document.body, { subtree: true, childList: true, attributes: true });
"#,
            vec![],
        )
        .await;
    accept.click().await.unwrap();
    let saved = downloads.join("holiday.bin");
    browser
        .shows(&format!("saved as {}", saved.display()))
        .await;
    let seen = browser.run("return window.progressSeen", vec![]).await;
    let size = payload.len() as f64;
    let between: Vec<_> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|pair| pair[0].as_f64())
        .filter(|done| *done > 0.0 && *done < size)
        .collect();
    assert!(
        !between.is_empty(),
        "the progress bar moved between 0 and {size}: {seen}"
    );
    assert!(
        std::fs::read(&saved).unwrap() == payload,
        "the saved file is the one offered"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_its_client_through_a_restart() {
    let Some(browser) = Browser::start("page::the_page_follows…").await else {
        return;
    };
    let (_dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    bob.ok(&["contacts", "add", "alice"]);
    let _bob_online = bob.online();

    // The page is served for the client `online` runs on the home.
    let mut online = alice.online();
    let (_web, url) = web(&alice);
    browser.goto(&url).await;
    browser.shows("Signed in as alice").await;
    bob.ok(&["send", "alice", "before the restart"]);
    browser.shows("before the restart").await;

    // The client stops: the page says it waits, and comes back with it.
    online.signal("TERM");
    online.wait_exit();
    browser.shows("Waiting for your client").await;
    let _online = alice.online();
    bob.ok(&["send", "alice", "after the restart"]);
    browser.shows("after the restart").await;
    browser
        .until(
            "the banner gone",
            "return document.getElementById('banner').hidden",
            vec![],
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nudges_a_file_chosen_in_the_page_an_invitation_blocks_and_the_whole_history() {
    let Some(browser) = Browser::start("page::nudges_a_file_chosen…").await else {
        return;
    };
    let (dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    bob.ok(&["contacts", "add", "alice"]);
    let mut bob_online = bob.online();
    let (_web, url) = web(&alice);

    // A conversation longer than a page of history, all delivered.
    const LONG: usize = 250;
    for i in 0..LONG {
        let said = ask(
            alice.home.path(),
            json!({"op": "enqueue", "id": format!("{i:032x}"), "to": "bob", "text": format!("line {i}")}),
        );
        assert_eq!(said["reply"], "sent", "{said}");
    }
    browser.goto(&url).await;
    browser.shows("Signed in as alice").await;
    browser
        .contact_until("bob", "online", |w| w.starts_with("bob, Online"))
        .await;
    browser
        .run(
            "[...document.querySelectorAll('[aria-label=\"Contacts\"] button')].find(b => (b.getAttribute('aria-label') || '').startsWith('bob,')).click()",
            vec![],
        )
        .await;
    browser.shows(&format!("line {}", LONG - 1)).await;
    let shown = browser
        .run(
            "return document.querySelectorAll('.log li.message').length",
            vec![],
        )
        .await;
    assert!(
        shown.as_u64().unwrap() < LONG as u64,
        "one page of history at first, not all {LONG}: {shown}"
    );
    // Scrolling up pages back to the very first message.
    browser
        .until(
            "line 0 after scrolling up",
            r#"
const log = document.querySelector('.panel:not([hidden]) .log');
log.scrollTop = 0;
log.dispatchEvent(new Event('scroll'));
return [...log.querySelectorAll('.text')].some((t) => t.textContent === 'line 0');
"#,
            vec![],
        )
        .await;
    let order = browser
        .run(
            "return [...document.querySelectorAll('.panel:not([hidden]) .log li.message .text')].map((t) => t.textContent)",
            vec![],
        )
        .await;
    let order: Vec<String> = serde_json::from_value(order).unwrap();
    let expected: Vec<String> = (0..LONG).map(|i| format!("line {i}")).collect();
    assert_eq!(order, expected, "the whole history, once each, in order");

    // Nudges, both ways. (A nudge is ephemeral: one sent while the
    // delivery worker is still busy with the conversation above may be
    // dropped, so it waits for the outbox to empty.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ask(alice.home.path(), json!({"op": "outbox"}))["messages"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's outbox never emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    browser.press("Nudge").await;
    bob_online.stdout.expect("alice's nudge at bob's", |l| {
        l.contains("\"nudge\"") && l.contains("alice")
    });
    let said = ask(bob.home.path(), json!({"op": "nudge", "to": "alice"}));
    assert_eq!(said["reply"], "done", "{said}");
    browser.shows("bob sent you a nudge!").await;

    // A file chosen in the page is offered to bob, who takes it whole.
    let chosen = dir.path().join("notes.txt");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&chosen, &content).unwrap();
    let input = browser.control("file", "Send a file").await;
    input.send_keys(chosen.to_str().unwrap()).await.unwrap();
    let offer = bob_online.stdout.expect("the offer at bob's", |l| {
        l.contains("\"message\"") && l.contains("notes.txt")
    });
    let offer: Value = serde_json::from_str(&offer).unwrap();
    let id = offer["id"]
        .as_str()
        .or_else(|| offer["message"]["id"].as_str())
        .unwrap_or_else(|| panic!("an offer's id: {offer}"))
        .to_owned();
    let downloads = dir.path().join("bob-downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    bob.ok(&["file", "accept", &id, "--to", downloads.to_str().unwrap()]);
    assert_eq!(std::fs::read(downloads.join("notes.txt")).unwrap(), content);
    browser
        .until(
            "the offer marked sent",
            "return [...document.querySelectorAll('.transfer .saved')].some((s) => s.textContent === 'sent')",
            vec![],
        )
        .await;

    // An invitation to a port reaches bob.
    browser.fill("textbox", "Port", "8080").await;
    browser.press("Invite to port").await;
    bob_online.stdout.expect("the invitation at bob's", |l| {
        l.contains("8080") && l.contains("invit")
    });
    browser.shows("invited to port 8080").await;

    // Blocking from the page is the client's: the CLI sees it. (A
    // contact's buttons show when its item has the focus, as from the
    // keyboard, or the pointer.)
    let focus_bob = "[...document.querySelectorAll('[aria-label=\"Contacts\"] button')].find(b => (b.getAttribute('aria-label') || '').startsWith('bob,')).focus()";
    browser.run(focus_bob, vec![]).await;
    browser.press("Block bob").await;
    browser
        .contact_until("bob", "blocked", |w| w.starts_with("bob, Blocked"))
        .await;
    let contacts = alice.ok(&["--json", "contacts", "list"]);
    assert!(
        contacts.stdout.contains("\"blocked\":true"),
        "{}",
        contacts.stdout
    );
    browser.run(focus_bob, vec![]).await;
    browser.press("Unblock bob").await;
    browser
        .contact_until("bob", "unblocked", |w| w.starts_with("bob, Online"))
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_is_a_loud_warning_and_a_strangers_request_stands_apart() {
    let Some(browser) = Browser::start("page::a_changed_key…").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    alice.register("alice");
    let bob = User::new(&node);
    bob.register("bob");
    alice.ok(&["contacts", "add", "bob"]);
    let (_web, url) = web(&alice);
    browser.goto(&url).await;
    browser.shows("Signed in as alice").await;

    // A stranger writes: a request with Accept and Decline, not a contact.
    let carol = User::new(&node);
    carol.register("carol");
    let sent = carol.run(&["send", "alice", "hello, we met at the conference"]);
    assert_eq!(sent.code, 0, "{sent:?}");
    browser.control("button", "Accept carol's request").await;
    browser.control("button", "Decline carol's request").await;
    assert_eq!(
        browser.contact_words("carol").await,
        "",
        "not a contact yet"
    );
    browser.press("Accept carol's request").await;
    browser
        .contact_until("carol", "a contact", |w| w.starts_with("carol,"))
        .await;
    browser
        .until(
            "the request gone",
            "return document.getElementById('requests').hidden",
            vec![],
        )
        .await;

    // bob's name goes to another key: the page warns, loudly, until the
    // new key is trusted.
    bob.ok(&["release", "bob"]);
    let impostor = User::new(&node);
    impostor.register("bob");
    let _impostor_online = impostor.online();
    let warning = browser
        .until(
            "the key-change warning",
            "return document.getElementById('key-warnings').innerText",
            vec![],
        )
        .await;
    assert!(
        warning.as_str().unwrap().contains("bob's key has changed"),
        "{warning}"
    );
    browser
        .contact_until("bob", "marked", |w| w.contains("key changed"))
        .await;
    browser.press("Trust bob's new key").await;
    browser
        .until(
            "the warning gone",
            "return document.getElementById('key-warnings').innerText === ''",
            vec![],
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyboard_alone_signs_in_adds_a_contact_and_talks() {
    let Some(browser) = Browser::start("page::the_keyboard_alone…").await else {
        return;
    };
    let enter = fantoccini::key::Key::Enter.to_string();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let bob = User::new(&node);
    bob.register("bob");
    let mut bob_online = bob.online();
    let alice = User::new(&node);
    let (_web, url) = web(&alice);
    browser.goto(&url).await;

    // The form opens with the focus in its first field.
    browser
        .until(
            "the focus in the form",
            "return document.activeElement && document.activeElement.id === 'sign-in-node'",
            vec![],
        )
        .await;
    browser.keys(&node.addr).await;
    browser
        .tab_to("Screen name", |name| name == "Screen name")
        .await;
    browser.keys(&format!("alice{enter}")).await;
    browser.shows("Signed in as alice").await;

    browser
        .tab_to("the contact's name field", |name| {
            name == "Contact's screen name"
        })
        .await;
    browser.keys(&format!("bob{enter}")).await;
    browser
        .contact_until("bob", "online", |w| w.starts_with("bob, Online"))
        .await;
    bob.ok(&["contacts", "add", "alice"]);

    // Enter on a contact opens the conversation, with the focus where a
    // message is typed; Enter sends it.
    browser
        .tab_to("bob in Contacts", |name| name.starts_with("bob,"))
        .await;
    browser.keys(&enter).await;
    browser
        .until(
            "the focus in the message field",
            "return document.activeElement && document.activeElement.getAttribute('aria-label') === 'Message'",
            vec![],
        )
        .await;
    browser.keys(&format!("typed with keys alone{enter}")).await;
    bob_online.stdout.expect("the message at bob's", |l| {
        l.contains("\"message\"") && l.contains("typed with keys alone")
    });

    // The status, from the keyboard: Tab to it, then arrows choose.
    let status = browser.tab_to("Status", |name| name == "Status").await;
    assert_eq!(status, "Status");
    let down = fantoccini::key::Key::Down.to_string();
    browser.keys(&down).await;
    bob_online.stdout.expect("alice away at bob's", |l| {
        l.contains("\"presence\"") && l.contains("\"alice\"") && l.contains("away")
    });
    browser.close().await;
}
