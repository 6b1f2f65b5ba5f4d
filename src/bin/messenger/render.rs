//! How replies and events read: a line for people, or one JSON object
//! per line for programs (`--json`). The JSON shapes are stable: scripts
//! and the end-to-end tests read them.

use anyhow::anyhow;
use libp2p::{Multiaddr, PeerId};
use messenger::api::{ContactView, Event, Request, Response, SendOutcome, SettingsView, Snapshot};
use messenger::network::{Path, Reachability, is_relayed};
use messenger::peer::PeerInfo;
use messenger::proto::presence::Presence;
use messenger::size::human_size;
use messenger::store::{Direction, MessageRequest, StoredMessage, TransferState};
use messenger::time;
use serde_json::json;

use crate::output::Output;
use crate::printable::{inline, message_line};
use crate::{Failure, exit};

/// Prints an event; returns a failure if the client cannot go on.
pub(crate) fn show_event(
    out: &Output,
    me: PeerId,
    event: Event,
    rendezvous: &Multiaddr,
) -> Option<Failure> {
    match event {
        Event::Online {
            name,
            addrs,
            first,
            reachability,
        } => {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let human = if first {
                format!(
                    "online as {name} ({}) via {rendezvous}\n{}",
                    me,
                    describe_reach(reachability, &list)
                )
            } else {
                format!(
                    "back online as {name}\n{}",
                    describe_reach(reachability, &list)
                )
            };
            out.emit(
                human,
                json!({"event": "online", "name": name.to_string(), "peer_id": me.to_string(),
                       "addrs": list, "reconnected": !first, "reachability": reach_word(reachability, &addrs)}),
            );
            None
        }
        Event::Addresses {
            addrs,
            reachability,
        } => {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            out.emit(
                format!("addresses changed: {}", describe_reach(reachability, &list)),
                json!({"event": "addresses", "addrs": list, "reachability": reach_word(reachability, &addrs)}),
            );
            None
        }
        Event::Path {
            name,
            peer,
            path,
            detail,
        } => {
            let who = name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| peer.to_string());
            let human = match (&path, &detail) {
                (Path::Direct, _) => {
                    format!("* {who}: direct connection (hole punching succeeded)")
                }
                (Path::Relayed, Some(why)) => {
                    format!(
                        "* {who}: staying on the rendezvous relay (hole punching failed: {why})"
                    )
                }
                (Path::Relayed, None) => format!("* {who}: relayed"),
            };
            out.emit(
                human,
                json!({"event": "path", "name": name.map(|n| n.to_string()), "peer_id": peer.to_string(),
                       "path": path.to_string(), "detail": detail}),
            );
            None
        }
        Event::Reconnecting { reason } => {
            out.emit(
                format!("{reason}; reconnecting..."),
                json!({"event": "reconnecting", "reason": reason}),
            );
            None
        }
        Event::RegistrationRefused { reason } => Some(Failure::new(
            exit::FAILURE,
            anyhow!("registration refused: {reason}"),
        )),
        Event::Message { message: m, path } => {
            let msg = &m.message;
            let via = match path {
                Some(Path::Relayed) => "  (via relay)",
                _ => "",
            };
            let mut event = message_json("message", &m);
            event["path"] = json!(path.map(|p| p.to_string()));
            let offer = match (&msg.file, &msg.invite) {
                (Some(_), _) => format!(
                    "\n  accept: messenger file accept {}   decline: messenger file decline {}",
                    msg.id, msg.id
                ),
                (None, Some(invite)) if !invite.withdrawn => format!(
                    "\n  connect: messenger connect {} {}",
                    msg.from, invite.port
                ),
                _ => String::new(),
            };
            out.emit(
                format!(
                    "{}{via}{offer}",
                    message_line(&time::clock(msg.sent_at), msg.from.as_str(), &msg.text)
                ),
                event,
            );
            None
        }
        Event::Presence(info) => {
            let human = match (info.presence, info.status_text.is_empty()) {
                (Presence::Offline, _) => format!("* {} is offline", info.name),
                (p, true) => format!("* {} is {p}", info.name),
                (p, false) => format!("* {} is {p}: {}", info.name, inline(&info.status_text)),
            };
            out.emit(
                human,
                json!({"event": "presence", "name": info.name.to_string(), "status": info.presence.to_string(),
                       "text": info.status_text, "peer_id": info.peer_id.to_string()}),
            );
            None
        }
        Event::Delivered(m) => {
            out.emit(
                format!(
                    "  delivered to {}: {}",
                    m.message.to,
                    preview(&m.message.text)
                ),
                message_json("delivered", &m),
            );
            None
        }
        Event::Failed(m) => {
            out.emit(
                format!(
                    "  NOT delivered to {}: {} ({})",
                    m.message.to,
                    preview(&m.message.text),
                    inline(m.error.as_deref().unwrap_or("refused"))
                ),
                message_json("failed", &m),
            );
            None
        }
        Event::KeyChanged {
            name,
            pinned,
            current,
        } => {
            let warning = format!(
                "!!! KEY CHANGED: {name} was pinned to {pinned} but now has key {current}.\n\
                 !!! Messages to and from {name} are refused until you run `messenger contacts trust {name}`."
            );
            eprintln!("{warning}");
            out.emit(
                warning,
                json!({"event": "key_changed", "name": name.to_string(), "pinned": pinned.to_string(),
                       "current": current.to_string()}),
            );
            None
        }
        Event::Nudge { name } => {
            // The bell, as the classic nudge: on the terminal, not in JSON.
            out.emit(
                format!("\x07* {name} nudged you"),
                json!({"event": "nudge", "name": name.to_string()}),
            );
            None
        }
        Event::Typing { name, active } => {
            // Only for programs: a line per signal would drown people.
            if out.is_json() {
                out.emit(
                    "",
                    json!({"event": "typing", "name": name.to_string(), "active": active}),
                );
            }
            None
        }
        Event::Sent(m) => {
            if out.is_json() {
                out.emit("", message_json("sent", &m));
            }
            None
        }
        Event::Transfer(t) => {
            let what = t.describe();
            let what = inline(&what);
            out.emit(
                format!("* file {}: {what}", t.id),
                json!({"event": "transfer", "transfer": t}),
            );
            None
        }
        Event::Progress { id, done, size } => {
            if out.is_json() {
                out.emit(
                    "",
                    json!({"event": "progress", "id": id.to_string(), "received": done, "size": size}),
                );
            }
            None
        }
        Event::Receiving { id, offset, size } => {
            let human = if offset == 0 {
                format!("* file {id}: receiving {}", human_size(size))
            } else {
                format!(
                    "* file {id}: resuming from {} of {}",
                    human_size(offset),
                    human_size(size)
                )
            };
            out.emit(
                human,
                json!({"event": "receiving", "id": id.to_string(), "offset": offset, "size": size}),
            );
            None
        }
        Event::TransferWaiting { id, reason } => {
            out.emit(
                format!("* file {id}: {reason}"),
                json!({"event": "transfer_waiting", "id": id.to_string(), "reason": reason}),
            );
            None
        }
        Event::Tunnel(log) => {
            out.emit(
                format!("* {log}"),
                json!({"event": "tunnel", "tunnel": log}),
            );
            None
        }
        Event::Requests { requests } => {
            out.emit(describe_requests(&requests), requests_json(&requests));
            None
        }
        Event::Contacts { contacts } => {
            let names: Vec<String> = contacts.iter().map(describe_contact_briefly).collect();
            let human = match names.is_empty() {
                true => "* contacts: none".to_owned(),
                false => format!("* contacts: {}", names.join(", ")),
            };
            let list: Vec<_> = contacts.iter().map(contact_json).collect();
            out.emit(human, json!({"event": "contacts", "contacts": list}));
            None
        }
        Event::Blocked { names } => {
            let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            let human = match names.is_empty() {
                true => "* blocked: nobody".to_owned(),
                false => format!("* blocked: {}", names.join(", ")),
            };
            out.emit(human, json!({"event": "blocked", "names": names}));
            None
        }
        Event::MyStatus { status, text } => {
            let human = match text.is_empty() {
                true => format!("* my status: {status}"),
                false => format!("* my status: {status}: {}", inline(&text)),
            };
            out.emit(
                human,
                json!({"event": "my_status", "status": status.to_string(), "text": text}),
            );
            None
        }
        Event::Settings(settings) => {
            out.emit(
                format!("* settings: {}", describe_settings(&settings)),
                json!({"event": "settings", "settings": settings}),
            );
            None
        }
        Event::Unread(unread) => {
            // People see the messages themselves; programs get the count.
            if out.is_json() {
                out.emit(
                    "",
                    json!({"event": "unread", "name": unread.name.to_string(), "count": unread.count}),
                );
            }
            None
        }
        Event::Queued(m) => {
            out.emit(
                format!(
                    "* to {} (waiting to be delivered): {}",
                    m.message.to,
                    preview(&m.message.text)
                ),
                message_json("queued", &m),
            );
            None
        }
        Event::Invitations {
            invitations,
            invited_me,
        } => {
            let open = invitations.iter().filter(|i| i.open()).count();
            let offered = invited_me.iter().filter(|i| !i.withdrawn).count();
            out.emit(
                format!("* invitations: {open} of mine open, {offered} to me"),
                json!({"event": "invitations", "invitations": invitations, "invited_me": invited_me}),
            );
            None
        }
        // Later kinds of events this front end does not show.
        _ => None,
    }
}

pub(crate) fn show_outcome(out: &Output, outcome: SendOutcome) -> Result<(), Failure> {
    match outcome {
        SendOutcome::Delivered {
            message,
            peer_id,
            path,
            resolve_ms,
            dial_ms,
            deliver_ms,
        } => {
            let path = path.map(|p| p.to_string());
            out.emit(
                format!(
                    "delivered to {} (id {}, {}): resolve {resolve_ms:.1} ms, dial {dial_ms:.1} ms, deliver {deliver_ms:.1} ms",
                    message.message.to,
                    message.message.id,
                    path.as_deref().unwrap_or("direct")
                ),
                json!({"event": "delivered", "to": message.message.to.to_string(), "id": message.message.id.to_string(),
                       "peer_id": peer_id.to_string(), "sent_at": time::rfc3339(message.message.sent_at),
                       "path": path, "resolve_ms": resolve_ms, "dial_ms": dial_ms, "deliver_ms": deliver_ms}),
            );
            Ok(())
        }
        SendOutcome::Queued { message, reason } => {
            let to = &message.message.to;
            out.emit(
                format!(
                    "queued: {reason}\nthe message (id {}) stays in the outbox and is delivered once {to} is reachable while `messenger online` runs",
                    message.message.id
                ),
                json!({"event": "queued", "to": to.to_string(), "id": message.message.id.to_string(), "reason": reason}),
            );
            Err(Failure {
                code: exit::QUEUED,
                error: anyhow!("queued: not delivered yet"),
                shown: true,
            })
        }
        other => Err(Failure::new(
            exit::FAILURE,
            anyhow!("an outcome this version does not know: {other:?}"),
        )),
    }
}

/// Prints a reply the same way whichever path produced it.
pub(crate) fn show_reply(out: &Output, request: &Request, reply: Response) -> Result<(), Failure> {
    match reply {
        Response::Sent(outcome) => show_outcome(out, outcome),
        Response::Done { message } => {
            out.emit(&message, json!({"event": "done", "message": message}));
            Ok(())
        }
        Response::Contacts { contacts } => {
            if contacts.is_empty() && !out.is_json() {
                out.emit("no contacts yet: `messenger contacts add NAME`", json!({}));
            }
            for c in contacts {
                out.emit(describe_contact(&c), contact_json(&c));
            }
            Ok(())
        }
        Response::Messages { messages } => {
            let event = match request {
                Request::Outbox => "outbox",
                _ => "history",
            };
            if messages.is_empty() && !out.is_json() {
                out.emit("(nothing)", json!({}));
            }
            for m in messages {
                let human = match event {
                    "outbox" => format!(
                        "to {} since {} ({}): {}",
                        m.message.to,
                        time::describe(m.message.sent_at),
                        m.state,
                        preview(&m.message.text)
                    ),
                    _ => format!(
                        "{}{}",
                        message_line(
                            &time::date_clock(m.message.sent_at),
                            m.message.from.as_str(),
                            &m.message.text
                        ),
                        match m.direction {
                            Direction::Out => format!("  ({})", m.state),
                            Direction::In => String::new(),
                        }
                    ),
                };
                out.emit(human, message_json(event, &m));
            }
            Ok(())
        }
        Response::Peer { peer, path } => {
            let mut human = describe_peer(&peer);
            let mut json = peer_json(&peer);
            if let Some(path) = path {
                human.push_str(&format!("\nconnected:   {path}"));
            }
            json["connected"] = json!(path.map(|p| p.to_string()));
            out.emit(human, json);
            Ok(())
        }
        Response::Registered {
            name,
            new_claim,
            peer_id,
            rendezvous,
        } => {
            let human = if new_claim {
                format!("registered {name} for {peer_id}")
            } else {
                format!("{name} is already yours")
            };
            out.emit(
                human,
                json!({"event": "registered", "name": name.to_string(), "peer_id": peer_id.to_string(),
                       "new_claim": new_claim, "rendezvous": rendezvous.to_string()}),
            );
            Ok(())
        }
        Response::Released { name } => {
            out.emit(
                format!("released {name}"),
                json!({"event": "released", "name": name.to_string()}),
            );
            Ok(())
        }
        Response::Message { message } => {
            match message {
                Some(m) => out.emit(
                    format!("{} ({})", preview(&m.message.text), m.state),
                    message_json("message", &m),
                ),
                None => out.emit(
                    "(no such message)",
                    json!({"event": "message", "found": false}),
                ),
            }
            Ok(())
        }
        Response::Transfers { transfers } => {
            if transfers.is_empty() && !out.is_json() {
                out.emit(
                    "no files offered by you or to you: `messenger file send NAME PATH`",
                    json!({}),
                );
            }
            for view in transfers {
                let t = &view.transfer;
                let (arrow, hint) = match (t.direction, t.state) {
                    (Direction::In, TransferState::Offered) => {
                        ("from", format!("  (messenger file accept {})", t.id))
                    }
                    (Direction::In, _) => ("from", String::new()),
                    (Direction::Out, _) => ("to", String::new()),
                };
                let detail = match (&t.path, &t.error) {
                    (_, Some(error)) => format!(": {}", inline(error)),
                    (Some(path), None) if t.direction == Direction::In => {
                        format!(": {}", path.display())
                    }
                    _ => String::new(),
                };
                let progress = if t.direction == Direction::In && t.state == TransferState::Accepted
                {
                    format!(
                        " {}/{}",
                        human_size(view.received),
                        human_size(t.offer.size)
                    )
                } else {
                    format!(" {}", human_size(t.offer.size))
                };
                out.emit(
                    format!(
                        "{}  {} {arrow} {}{progress}  {}{detail}{hint}",
                        t.id,
                        inline(&t.offer.name),
                        t.peer,
                        t.state
                    ),
                    json!({"event": "transfer", "transfer": view}),
                );
            }
            Ok(())
        }
        Response::Invitations {
            invitations,
            invited_me,
        } => {
            if invitations.is_empty() && !out.is_json() {
                out.emit(
                    "you have invited nobody: `messenger invite NAME --port PORT`",
                    json!({}),
                );
            }
            for i in invitations {
                let state = match i.revoked_at {
                    None => format!("open since {}", time::rfc3339(i.created_at)),
                    Some(at) => format!("withdrawn {}", time::rfc3339(at)),
                };
                out.emit(
                    format!("{}  port {}  {state}", i.name, i.port),
                    json!({"event": "invitation", "name": i.name.to_string(), "port": i.port,
                           "key": i.key.to_string(), "open": i.open(),
                           "created_at": time::rfc3339(i.created_at),
                           "revoked_at": i.revoked_at.map(time::rfc3339)}),
                );
            }
            for i in invited_me {
                let human = if i.withdrawn {
                    format!("{} no longer lets you connect to port {}", i.from, i.port)
                } else {
                    format!(
                        "{} lets you connect to port {}: messenger connect {} {}",
                        i.from, i.port, i.from, i.port
                    )
                };
                out.emit(
                    human,
                    json!({"event": "invited_me", "from": i.from.to_string(), "port": i.port,
                           "open": !i.withdrawn, "at": time::rfc3339(i.at)}),
                );
            }
            Ok(())
        }
        Response::Requests { requests } => {
            if requests.is_empty() && !out.is_json() {
                out.emit("no message requests", json!({}));
            }
            for r in requests {
                out.emit(
                    format!(
                        "{:<20} {} message(s), {}, since {}",
                        r.name.as_str(),
                        r.count.messages,
                        human_size(r.count.bytes),
                        time::describe(r.count.since)
                    ),
                    json!({"event": "request", "name": r.name.to_string(), "messages": r.count.messages,
                           "bytes": r.count.bytes, "since": time::rfc3339(r.count.since)}),
                );
            }
            Ok(())
        }
        Response::Failed(failure) => Err(Failure::of(failure)),
        other => Err(Failure::new(
            exit::FAILURE,
            anyhow!("the client answered something unexpected: {other:?}"),
        )),
    }
}

/// The message requests waiting, in a line.
pub(crate) fn describe_requests(requests: &[MessageRequest]) -> String {
    if requests.is_empty() {
        return "* no message requests".to_owned();
    }
    let messages: u32 = requests.iter().map(|r| r.count.messages).sum();
    let names: Vec<&str> = requests.iter().take(5).map(|r| r.name.as_str()).collect();
    let more = match requests.len().saturating_sub(names.len()) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "* {messages} message request(s) from {}{more}: `messenger contacts add NAME` accepts, \
         `messenger requests decline NAME` removes what they sent",
        names.join(", ")
    )
}

fn requests_json(requests: &[MessageRequest]) -> serde_json::Value {
    json!({"event": "requests",
           "messages": requests.iter().map(|r| r.count.messages).sum::<u32>(),
           "requests": requests.iter().map(|r| json!({"name": r.name.to_string(),
                "messages": r.count.messages, "bytes": r.count.bytes,
                "since": time::rfc3339(r.count.since)})).collect::<Vec<_>>()})
}

/// The start of a message's first line, escaped for the terminal.
pub(crate) fn preview(text: &str) -> String {
    let first: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect();
    let shown = inline(&first);
    if first.len() < text.len() {
        format!("{shown}…")
    } else {
        shown.into_owned()
    }
}

pub(crate) fn message_json(event: &str, m: &StoredMessage) -> serde_json::Value {
    let msg = &m.message;
    json!({"event": event, "id": msg.id.to_string(), "from": msg.from.to_string(), "to": msg.to.to_string(),
           "sent_at": time::rfc3339(msg.sent_at), "text": msg.text, "state": m.state.to_string(),
           "direction": match m.direction { Direction::Out => "out", Direction::In => "in" },
           "peer_id": m.peer_id.map(|p| p.to_string()), "error": m.error, "file": msg.file,
           "invite": msg.invite})
}

pub(crate) fn describe_contact(c: &ContactView) -> String {
    let presence = match c.presence {
        Some(p) if p.is_online() && !c.status_text.is_empty() => {
            format!("{p}: {}", inline(&c.status_text))
        }
        Some(p) if p.is_online() => p.to_string(),
        Some(_) => match c.last_seen {
            Some(ms) => format!("offline, last seen {}", time::describe(ms)),
            None => "offline".to_owned(),
        },
        None => "presence unknown (node unreachable)".to_owned(),
    };
    let mut line = format!("{:<20} {presence}", c.name.as_str());
    if c.blocked {
        line.push_str("  [blocked]");
    }
    if let Some(new) = c.key_changed_to {
        line.push_str(&format!(
            "\n  !!! KEY CHANGED: pinned {} but the node now says {new}; run `messenger contacts trust {}` if you trust it",
            c.pinned, c.name
        ));
    }
    line
}

/// "bob (online)", for a list on one line.
fn describe_contact_briefly(c: &ContactView) -> String {
    let presence = match c.presence {
        Some(p) => p.to_string(),
        None => "presence unknown".to_owned(),
    };
    let blocked = if c.blocked { ", blocked" } else { "" };
    format!("{} ({presence}{blocked})", c.name)
}

fn describe_settings(s: &SettingsView) -> String {
    let yes_no = |on: bool| if on { "on" } else { "off" };
    format!(
        "typing shown {}, bell {}, downloads {}, largest file {}",
        yes_no(s.send_typing),
        yes_no(s.bell),
        s.downloads
            .as_ref()
            .map_or("the default directory".to_owned(), |d| inline(
                &d.display().to_string()
            )
            .into_owned()),
        s.max_file_size.map_or("no limit".to_owned(), human_size)
    )
}

/// What the running client shows, as `messenger events` starts.
pub(crate) fn show_snapshot(out: &Output, s: &Snapshot) {
    if out.is_json() {
        let line = Response::Snapshot(Box::new(s.clone()));
        out.emit("", serde_json::to_value(&line).unwrap_or_default());
        return;
    }
    let name =
        s.me.name
            .as_ref()
            .map_or("(no name yet)".to_owned(), |n| n.to_string());
    let mut lines = vec![format!(
        "me: {name}, {}{}, {}",
        s.me.status,
        if s.me.text.is_empty() {
            String::new()
        } else {
            format!(": {}", inline(&s.me.text))
        },
        if s.me.online { "online" } else { "offline" }
    )];
    let contacts: Vec<String> = s.contacts.iter().map(describe_contact_briefly).collect();
    lines.push(format!(
        "contacts: {}",
        if contacts.is_empty() {
            "none".to_owned()
        } else {
            contacts.join(", ")
        }
    ));
    if !s.blocked.is_empty() {
        let names: Vec<&str> = s.blocked.iter().map(|n| n.as_str()).collect();
        lines.push(format!("blocked: {}", names.join(", ")));
    }
    for u in &s.unread {
        lines.push(format!("unread: {} from {}", u.count, u.name));
    }
    if !s.outbox.is_empty() {
        lines.push(format!("outbox: {} message(s) waiting", s.outbox.len()));
    }
    if !s.requests.is_empty() {
        lines.push(describe_requests(&s.requests));
    }
    lines.push(format!("settings: {}", describe_settings(&s.settings)));
    lines.push("following what happens; Ctrl-C to stop".to_owned());
    out.emit(lines.join("\n"), serde_json::Value::Null);
}

pub(crate) fn contact_json(c: &ContactView) -> serde_json::Value {
    json!({"event": "contact", "name": c.name.to_string(), "pinned": c.pinned.to_string(),
           "key_changed_to": c.key_changed_to.map(|k| k.to_string()),
           "status": c.presence.map(|p| p.to_string()), "text": c.status_text,
           "last_seen": c.last_seen.map(time::rfc3339), "blocked": c.blocked})
}

/// "direct" or "relayed", for JSON.
pub(crate) fn reach_word(reachability: Reachability, addrs: &[Multiaddr]) -> &'static str {
    match reachability {
        Reachability::Private => "relayed",
        Reachability::Public => "direct",
        Reachability::Unknown if !addrs.is_empty() && addrs.iter().all(is_relayed) => "relayed",
        Reachability::Unknown => "unknown",
    }
}

pub(crate) fn describe_reach(reachability: Reachability, addrs: &[String]) -> String {
    let list = if addrs.is_empty() {
        "(no address yet)".to_owned()
    } else {
        addrs.join(", ")
    };
    match reachability {
        Reachability::Public => format!("reachable directly at {list}"),
        Reachability::Private => {
            format!("behind NAT: reachable through the rendezvous relay at {list}")
        }
        Reachability::Unknown => format!("reachability not confirmed yet; registered {list}"),
    }
}

/// How a peer is reached, judged from the addresses it registered.
pub(crate) fn peer_reach(info: &PeerInfo) -> &'static str {
    if info.addrs.is_empty() {
        "none"
    } else if info.addrs.iter().all(is_relayed) {
        "relayed"
    } else {
        "direct"
    }
}

pub(crate) fn describe_peer(info: &PeerInfo) -> String {
    let status = match (info.presence, info.status_text.is_empty()) {
        (p, false) if p.is_online() => format!("{p}: {}", inline(&info.status_text)),
        (p, _) => p.to_string(),
    };
    let last_seen = match (info.online(), info.last_seen) {
        (true, _) => "now".to_owned(),
        (false, Some(ms)) => time::describe(ms),
        (false, None) => "never".to_owned(),
    };
    let addrs = if info.addrs.is_empty() {
        "(none)".to_owned()
    } else {
        info.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("\n             ")
    };
    let reach = match peer_reach(info) {
        "relayed" => {
            "relayed: behind NAT, reachable through the rendezvous relay (then hole punching)"
        }
        "direct" => "direct",
        _ => "not reachable now",
    };
    format!(
        "{}\n  peer id:   {}\n  status:    {status}\n  last seen: {last_seen}\n  reached:   {reach}\n  addresses: {addrs}",
        info.name, info.peer_id
    )
}

pub(crate) fn peer_json(info: &PeerInfo) -> serde_json::Value {
    json!({"event": "whois", "name": info.name.to_string(), "peer_id": info.peer_id.to_string(),
           "online": info.online(), "status": info.presence.to_string(), "text": info.status_text,
           "reach": peer_reach(info),
           "addrs": info.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
           "last_seen": info.last_seen.map(time::rfc3339)})
}
