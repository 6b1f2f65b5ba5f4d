//! The window drawn into ratatui's test backend: what the buffer holds
//! for each state, at several sizes, with wide and combining characters.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::*;
use crate::api::{ContactView, Event, Request, Response};
use crate::chat::TYPING_SHOWN_FOR;
use crate::store::{Direction, MessageState, StoredMessage};

fn name(s: &str) -> ScreenName {
    ScreenName::parse(s).unwrap()
}

fn app() -> App {
    App::new(
        Me {
            name: Some(name("alice")),
            status: Status::Online,
            text: "working".into(),
            connection: Connection::Online,
        },
        None,
        Theme::new(true),
    )
}

fn contact(n: &str, presence: Presence, text: &str) -> ContactView {
    ContactView {
        name: name(n),
        pinned: PeerId::random(),
        key_changed_to: None,
        presence: Some(presence),
        status_text: text.into(),
        last_seen: Some(messenger_proto::time::now_ms() - 2 * 3_600_000),
        blocked: false,
        auto_accept_below: None,
    }
}

fn stored(seq: u64, from: &str, to: &str, text: &str, state: MessageState) -> StoredMessage {
    let direction = if from == "alice" {
        Direction::Out
    } else {
        Direction::In
    };
    StoredMessage {
        seq,
        message: Message {
            id: MessageId::random(),
            from: name(from),
            to: name(to),
            sent_at: messenger_proto::time::now_ms(),
            text: text.into(),
            file: None,
            invite: None,
        },
        direction,
        state,
        updated_at: 0,
        error: (state == MessageState::Failed).then(|| "not delivered".to_owned()),
        peer_id: None,
        signed: None,
    }
}

/// Draws `app` on a `width`×`height` screen; its lines.
fn screen(app: &mut App, width: u16, height: u16, now: Instant) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(app, f, now)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            let mut line = String::new();
            let mut x = 0;
            while x < width {
                let symbol = buffer[(x, y)].symbol();
                line.push_str(symbol);
                // A wide character covers the cell after it.
                x += unicode_width::UnicodeWidthStr::width(symbol).max(1) as u16;
            }
            line
        })
        .collect()
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn typed(app: &mut App, text: &str, now: Instant) -> Vec<Action> {
    text.chars()
        .flat_map(|c| app.on_key(key(KeyCode::Char(c)), now))
        .collect()
}

/// alice with bob (online, away), carol (online) and dave (offline).
fn with_contacts() -> App {
    let mut app = app();
    app.on_reply(
        Tag::Contacts,
        Response::Contacts {
            contacts: vec![
                contact("bob", Presence::Away, "at lunch"),
                contact("carol", Presence::Online, ""),
                contact("dave", Presence::Offline, ""),
            ],
        },
    );
    app
}

/// Opens the conversation with the selected contact (bob) and loads
/// `history` into it.
fn open_bob(app: &mut App, history: Vec<StoredMessage>, now: Instant) {
    app.buddies.select(&name("bob"));
    let actions = app.on_key(key(KeyCode::Enter), now);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Call(Tag::History(n), Request::History { .. }) if n.as_str() == "bob")),
        "opening asks for the history: {actions:?}"
    );
    app.on_reply(
        Tag::History(name("bob")),
        Response::Messages { messages: history },
    );
}

#[test]
fn the_buddy_list_groups_contacts_by_presence_with_their_marks() {
    let mut app = with_contacts();
    let now = Instant::now();
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "● alice (online)"), "{lines:#?}");
    assert!(has(&lines, "“working”"));
    assert!(has(&lines, "Online (2)"));
    assert!(has(&lines, "◐ bob away: at lunch"));
    assert!(has(&lines, "● carol"));
    assert!(has(&lines, "Offline (1)"));
    assert!(has(&lines, "○ dave 2 h ago"));
    let online = lines.iter().position(|l| l.contains("Online (2)")).unwrap();
    let offline = lines
        .iter()
        .position(|l| l.contains("Offline (1)"))
        .unwrap();
    let dave = lines.iter().position(|l| l.contains("dave")).unwrap();
    assert!(online < offline && offline < dave, "grouped: {lines:#?}");

    // Live: carol goes offline, a changed key, a message from dave, bob
    // typing.
    app.on_event(
        Event::Presence(crate::peer::PeerInfo {
            name: name("carol"),
            peer_id: app.buddies.get(&name("carol")).unwrap().pinned,
            presence: Presence::Offline,
            status_text: String::new(),
            reachable: false,
            addrs: vec![],
            last_seen: Some(messenger_proto::time::now_ms()),
            valid_until: 0,
        }),
        now,
    );
    app.on_event(
        Event::KeyChanged {
            name: name("dave"),
            pinned: PeerId::random(),
            current: PeerId::random(),
        },
        now,
    );
    let from_dave = stored(1, "dave", "alice", "psst", MessageState::Received);
    let rang = app.on_event(
        Event::Message {
            message: from_dave,
            path: None,
        },
        now,
    );
    assert!(rang.contains(&Action::Bell), "a message not in front rings");
    app.on_event(
        Event::Typing {
            name: name("bob"),
            active: true,
        },
        now,
    );
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "Online (1)"), "{lines:#?}");
    assert!(has(&lines, "Offline (2)"));
    assert!(has(&lines, "○ carol just now"));
    assert!(
        has(&lines, "○ dave !key (1)"),
        "changed key and unread: {lines:#?}"
    );
    assert!(has(&lines, "◐ bob ✎"), "typing: {lines:#?}");
}

#[test]
fn a_conversation_shows_each_message_with_its_state_as_it_changes() {
    let mut app = with_contacts();
    let now = Instant::now();
    let queued = stored(1, "alice", "bob", "are you there?", MessageState::Queued);
    let failed = stored(2, "alice", "bob", "blocked one", MessageState::Failed);
    let theirs = stored(3, "bob", "alice", "yes, back now", MessageState::Received);
    open_bob(&mut app, vec![queued.clone(), failed, theirs], now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "bob away: at lunch"), "title: {lines:#?}");
    assert!(has(&lines, "  queued"), "{lines:#?}");
    assert!(has(&lines, "✗ NOT delivered (not delivered)"));
    assert!(has(&lines, "  are you there?"));
    assert!(has(&lines, "  yes, back now"));

    // Sent, then delivered; a late "queued" does not undo it.
    let mut sent = queued.clone();
    sent.state = MessageState::Sent;
    app.on_event(Event::Sent(sent.clone()), now);
    assert!(has(&screen(&mut app, 100, 30, now), "  sent"));
    let mut delivered = queued.clone();
    delivered.state = MessageState::Delivered;
    app.on_event(Event::Delivered(delivered), now);
    app.on_event(Event::Sent(sent), now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "✓ delivered"), "{lines:#?}");
    assert!(!has(&lines, "  queued") && !has(&lines, "  sent"));

    // Typing and sending.
    let actions = typed(&mut app, "lunch at noon?", now);
    let typing: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Call(_, Request::Typing { active: true, .. })))
        .collect();
    assert_eq!(
        typing.len(),
        1,
        "one typing signal for a burst of keys: {actions:?}"
    );
    assert!(has(&screen(&mut app, 100, 30, now), "> lunch at noon?"));
    let actions = app.on_key(key(KeyCode::Enter), now);
    let [Action::Call(Tag::Send(to), Request::Enqueue { text, .. })] = actions.as_slice() else {
        panic!("Enter sends: {actions:?}");
    };
    assert_eq!((to.as_str(), text.as_str()), ("bob", "lunch at noon?"));
    assert!(
        !has(&screen(&mut app, 100, 30, now), "> lunch at noon?"),
        "input cleared"
    );
}

#[test]
fn the_typing_indicator_shows_and_goes() {
    let mut app = with_contacts();
    let now = Instant::now();
    open_bob(&mut app, vec![], now);
    app.on_event(
        Event::Typing {
            name: name("bob"),
            active: true,
        },
        now,
    );
    assert!(has(&screen(&mut app, 100, 30, now), "bob is typing…"));
    // The window wakes when it goes, not before.
    assert_eq!(app.next_change(now), Some(now + TYPING_SHOWN_FOR));
    let later = now + TYPING_SHOWN_FOR + Duration::from_millis(1);
    app.tick(later);
    assert!(!has(&screen(&mut app, 100, 30, later), "is typing"));
    // Their message ends it at once.
    app.on_event(
        Event::Typing {
            name: name("bob"),
            active: true,
        },
        now,
    );
    app.on_event(
        Event::Message {
            message: stored(1, "bob", "alice", "done typing", MessageState::Received),
            path: None,
        },
        now,
    );
    assert!(!has(&screen(&mut app, 100, 30, now), "is typing"));
}

#[test]
fn nudges_flash_ring_and_are_rate_limited() {
    let mut app = with_contacts();
    let now = Instant::now();
    let actions = app.on_event(
        Event::Nudge {
            name: name("carol"),
        },
        now,
    );
    assert!(actions.contains(&Action::Bell));
    open_bob(&mut app, vec![], now);
    let sent = app.on_key(ctrl('g'), now);
    assert!(
        sent.iter()
            .any(|a| matches!(a, Action::Call(_, Request::Nudge { to }) if to.as_str() == "bob"))
    );
    assert!(
        app.on_key(ctrl('g'), now + Duration::from_secs(3))
            .is_empty(),
        "too soon"
    );
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("one nudge per 10 s"))
    );
    assert!(
        !app.on_key(ctrl('g'), now + Duration::from_secs(11))
            .is_empty()
    );
    // carol's conversation holds the nudge, unread.
    app.on_key(ctrl('n'), now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "carol sent you a nudge"), "{lines:#?}");
}

#[test]
fn below_80_by_24_the_window_says_so_and_at_80_by_24_it_fits() {
    let mut app = with_contacts();
    let now = Instant::now();
    let lines = screen(&mut app, 79, 24, now);
    assert!(
        lines
            .join(" ")
            .contains("at least 80×24; this one is 79×24"),
        "{lines:#?}"
    );
    let lines = screen(&mut app, 80, 23, now);
    assert!(lines.join(" ").contains("this one is 80×23"));
    open_bob(
        &mut app,
        vec![stored(1, "bob", "alice", "hi", MessageState::Received)],
        now,
    );
    let lines = screen(&mut app, 80, 24, now);
    assert!(has(&lines, "◐ bob"), "{lines:#?}");
    assert!(has(&lines, "  hi"));
    assert!(has(&lines, "Enter send"), "help line: {lines:#?}");
    // Every line is exactly the screen's width: nothing spills.
    assert!(
        lines
            .iter()
            .all(|l| unicode_width::UnicodeWidthStr::width(l.as_str()) == 80)
    );
}

#[test]
fn wide_and_combining_characters_and_long_messages_wrap_inside_the_pane() {
    let mut app = with_contacts();
    let now = Instant::now();
    let wide = "日本語のテキストはとても長いです。".repeat(6);
    let combining = "e\u{301}te\u{301} cafe\u{301} ".repeat(12);
    let long = "word ".repeat(400);
    open_bob(
        &mut app,
        vec![
            stored(1, "bob", "alice", &wide, MessageState::Received),
            stored(2, "bob", "alice", &combining, MessageState::Received),
            stored(3, "bob", "alice", &long, MessageState::Received),
        ],
        now,
    );
    let lines = screen(&mut app, 100, 30, now);
    for line in &lines {
        assert_eq!(
            unicode_width::UnicodeWidthStr::width(line.as_str()),
            100,
            "a line keeps the screen's width: {line:?}"
        );
    }
    // The newest (long) message fills the pane; scrolled up, the others.
    assert!(has(&lines, "  word word"));
    app.front_conversation().unwrap().top();
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "日本語のテキスト"), "{lines:#?}");
    assert!(
        has(&lines, "e\u{301}te\u{301}"),
        "combining marks stay with their letters: {lines:#?}"
    );
    assert!(has(&lines, "scrolled up"));
}

#[test]
fn ten_thousand_messages_scroll_page_by_page() {
    let mut app = with_contacts();
    let now = Instant::now();
    let history: Vec<StoredMessage> = (0..10_000)
        .map(|i| {
            stored(
                i,
                "bob",
                "alice",
                &format!("message number {i}"),
                MessageState::Received,
            )
        })
        .collect();
    open_bob(&mut app, history, now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "message number 9999"));
    app.on_key(key(KeyCode::PageUp), now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(!has(&lines, "message number 9999"), "a page up");
    assert!(has(&lines, "message number 99"));
    app.on_key(key(KeyCode::Home), now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "message number 0"), "{lines:#?}");
    app.on_key(key(KeyCode::End), now);
    assert!(has(&screen(&mut app, 100, 30, now), "message number 9999"));
}

#[test]
fn the_first_run_form_asks_for_the_node_and_a_name_and_says_why_it_failed() {
    let mut app = App::new(
        Me {
            name: None,
            status: Status::Online,
            text: String::new(),
            connection: Connection::Connecting,
        },
        Some("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWexample".into()),
        Theme::new(false),
    );
    let now = Instant::now();
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "Sign in to Messenger"), "{lines:#?}");
    assert!(has(&lines, "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWexample"));
    // The cursor is on the name; an empty name is refused in place.
    assert!(app.on_key(key(KeyCode::Enter), now).is_empty());
    assert!(has(&screen(&mut app, 100, 30, now), "choose a screen name"));
    typed(&mut app, "alice", now);
    let actions = app.on_key(key(KeyCode::Enter), now);
    assert_eq!(
        actions,
        vec![Action::SignIn {
            rendezvous: "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWexample".into(),
            name: "alice".into()
        }]
    );
    assert!(has(&screen(&mut app, 100, 30, now), "Signing in…"));
    app.sign_in_failed("the name alice is taken by another key".into());
    assert!(has(
        &screen(&mut app, 100, 30, now),
        "the name alice is taken"
    ));
    app.signed_in(name("alice"));
    assert!(has(&screen(&mut app, 100, 30, now), "alice (connecting…)"));
}

#[test]
fn contact_actions_ask_first_and_go_to_the_agent() {
    let mut app = with_contacts();
    let now = Instant::now();
    app.buddies.select(&name("dave"));
    assert!(app.on_key(key(KeyCode::Char('d')), now).is_empty());
    assert!(has(
        &screen(&mut app, 100, 30, now),
        "Remove dave from your contacts?"
    ));
    let actions = app.on_key(key(KeyCode::Char('y')), now);
    assert!(matches!(
        actions.as_slice(),
        [Action::Call(Tag::Notice, Request::ContactsRemove { name })] if name.as_str() == "dave"
    ));
    // Status: s then a key.
    app.on_key(key(KeyCode::Char('s')), now);
    let actions = app.on_key(key(KeyCode::Char('b')), now);
    assert!(matches!(
        actions.as_slice(),
        [Action::Call(
            _,
            Request::Status {
                status: Status::Busy,
                ..
            }
        )]
    ));
    // Adding: a, the name, Enter.
    app.on_key(key(KeyCode::Char('a')), now);
    typed(&mut app, "erin", now);
    let actions = app.on_key(key(KeyCode::Enter), now);
    assert!(matches!(
        actions.as_slice(),
        [Action::Call(Tag::Notice, Request::ContactsAdd { name })] if name.as_str() == "erin"
    ));
    // The answer is a notice, and the list is read again.
    let actions = app.on_reply(
        Tag::Notice,
        Response::Done {
            message: "added erin".into(),
        },
    );
    assert_eq!(
        actions,
        vec![Action::Call(Tag::Contacts, Request::ContactsList)]
    );
    assert!(has(&screen(&mut app, 100, 30, now), "added erin"));
}

#[test]
fn without_colour_nothing_is_coloured() {
    let mut app = with_contacts();
    app.theme = Theme::new(true);
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let now = Instant::now();
    terminal.draw(|f| draw(&mut app, f, now)).unwrap();
    let coloured = |t: &Terminal<TestBackend>| {
        t.backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.fg != ratatui::style::Color::Reset)
    };
    assert!(coloured(&terminal));
    app.theme = Theme::new(false);
    terminal.draw(|f| draw(&mut app, f, now)).unwrap();
    assert!(!coloured(&terminal));
}

#[test]
fn a_presence_push_answered_before_the_list_is_not_undone_by_it() {
    let mut app = app();
    let now = Instant::now();
    let bob = contact("bob", Presence::Online, "");
    // The list was read before the push, but its answer comes after.
    app.on_event(
        Event::Presence(crate::peer::PeerInfo {
            name: name("bob"),
            peer_id: bob.pinned,
            presence: Presence::Busy,
            status_text: "in a meeting".into(),
            reachable: true,
            addrs: vec![],
            last_seen: None,
            valid_until: 0,
        }),
        now,
    );
    let stale = ContactView {
        presence: None,
        ..bob
    };
    app.on_reply(
        Tag::Contacts,
        Response::Contacts {
            contacts: vec![stale],
        },
    );
    assert!(has(
        &screen(&mut app, 100, 30, now),
        "⊖ bob busy: in a meeting"
    ));
}

#[test]
fn a_file_offered_in_a_conversation_is_accepted_there_and_its_arrival_told() {
    let mut app = with_contacts();
    let now = Instant::now();
    let mut offer = stored(
        1,
        "bob",
        "alice",
        "offers the file photos.tar (48.0 MiB)",
        MessageState::Received,
    );
    offer.message.file = Some(messenger_proto::file::FileOffer {
        name: "photos.tar".into(),
        size: 48 << 20,
        hash: messenger_proto::file::ContentHash([7; 32]),
    });
    let id = offer.message.id;
    open_bob(&mut app, vec![offer.clone()], now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(has(&lines, "offers the file photos.tar"), "{lines:#?}");

    let actions = typed(&mut app, "/accept", now)
        .into_iter()
        .chain(app.on_key(key(KeyCode::Enter), now))
        .collect::<Vec<_>>();
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Call(Tag::Notice, Request::FileAccept { id: i, dir: None }) if *i == id)),
        "/accept answers the newest offer here: {actions:?}"
    );
    let actions = typed(&mut app, "/send ~/notes.txt", now)
        .into_iter()
        .chain(app.on_key(key(KeyCode::Enter), now))
        .collect::<Vec<_>>();
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Call(Tag::Send(n), Request::FileSend { to, path, .. })
                if n.as_str() == "bob" && to.as_str() == "bob" && path.is_absolute() && path.ends_with("notes.txt"))),
        "{actions:?}"
    );

    let mut transfer = crate::store::Transfer {
        id,
        direction: Direction::In,
        peer: name("bob"),
        offer: offer.message.file.clone().unwrap(),
        state: crate::store::TransferState::Completed,
        path: Some("/home/alice/Downloads/photos.tar".into()),
        dir: None,
        modified: None,
        error: None,
        peer_id: None,
        updated_at: 0,
        completed_at: None,
        started_at: None,
    };
    app.on_event(Event::Transfer(transfer.clone()), now);
    let lines = screen(&mut app, 100, 30, now);
    assert!(
        has(
            &lines,
            "received photos.tar from bob: saved as /home/alice/Downloads/photos.tar"
        ),
        "{lines:#?}"
    );
    transfer.state = crate::store::TransferState::Failed;
    transfer.error = Some("the content bob sent does not match the hash it offered".into());
    app.on_event(Event::Transfer(transfer), now);
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("does not match the hash")),
        "{:?}",
        app.notice
    );

    // Where nothing was offered: said so, nothing asked.
    let mut app = with_contacts();
    open_bob(&mut app, vec![], now);
    let actions = typed(&mut app, "/decline", now)
        .into_iter()
        .chain(app.on_key(key(KeyCode::Enter), now))
        .collect::<Vec<_>>();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Call(_, Request::FileDecline { .. }))),
        "{actions:?}"
    );
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("bob has offered you no file here")),
        "{:?}",
        app.notice
    );
}

#[test]
fn message_requests_show_in_the_list_as_they_change() {
    let mut app = with_contacts();
    let now = Instant::now();
    assert!(!has(&screen(&mut app, 100, 24, now), "message request"));
    let request = |n: &str, messages| crate::store::MessageRequest {
        name: name(n),
        count: crate::store::RequestCount {
            messages,
            bytes: 1_000,
            since: 1,
        },
    };
    app.on_event(
        Event::Requests {
            requests: vec![request("mallory", 3), request("trudy", 1)],
        },
        now,
    );
    let lines = screen(&mut app, 100, 24, now);
    assert!(has(&lines, "✉ 4 message request(s): mal"), "{lines:#?}");
    // Accepted or declined: gone.
    app.on_event(Event::Requests { requests: vec![] }, now);
    assert!(!has(&screen(&mut app, 100, 24, now), "message request"));
}
