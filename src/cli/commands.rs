//! One function per command. Commands that need the home's store go
//! through the running client's control socket when there is one, and run
//! on their own [`Agent`] otherwise; both paths execute the same
//! [`Agent::execute`].

use anyhow::{Context, anyhow};
use libp2p::Multiaddr;
use messenger_proto::Identity;
use messenger_proto::chat::check_text;
use messenger_proto::directory::ErrorCode;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::mpsc;

use super::{Args, Command, ContactsCommand, Failure, Output, exit};
use crate::agent::{Agent, AgentEvent};
use crate::client::{Client, ClientError, PeerInfo};
use crate::control::{self, ContactView, ControlReply, ControlRequest, SendOutcome};
use crate::home::{Config, Home};
use crate::network::{Path, Reachability, is_relayed};
use crate::store::{Direction, StoredMessage};
use crate::time;

/// Default addresses a client accepts peers on.
fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

pub(super) async fn run(args: Args, out: &Output) -> Result<(), Failure> {
    if let Command::Demo = args.command {
        return crate::demo::run(out).await.map_err(Failure::from);
    }
    let dir = args
        .home
        .clone()
        .or_else(Home::default_dir)
        .context("cannot find a per-user data directory; pass --home DIR")?;
    let home = Home::open(&dir)?;
    let identity = home.identity()?;
    let config = home.config()?;
    let rendezvous = args.rendezvous.clone().or(config.rendezvous.clone());
    let ctx = Ctx {
        home,
        identity,
        config,
        rendezvous,
        cli_rendezvous: args.rendezvous.clone(),
        out: *out,
    };
    match args.command {
        Command::Id => ctx.id(),
        Command::Register { name } => ctx.register(&name).await,
        Command::Release { name } => ctx.release(&name).await,
        Command::Whois { name } => ctx.whois(&name).await,
        Command::Send { name, text } => {
            let to = parse_name(&name)?;
            let text = read_text(text).await?;
            check_text(&text).map_err(|e| Failure::new(exit::INVALID, e))?;
            ctx.my_name()?;
            ctx.request(ControlRequest::Send {
                to: to.to_string(),
                text,
            })
            .await
        }
        Command::Status { status, text } => {
            let status: Status = status.parse().map_err(|e| Failure::new(exit::INVALID, e))?;
            ctx.request(ControlRequest::Status { status, text }).await
        }
        Command::Contacts(c) => {
            let request = match c {
                ContactsCommand::Add { name } => ControlRequest::ContactsAdd { name },
                ContactsCommand::List => ControlRequest::ContactsList,
                ContactsCommand::Remove { name } => ControlRequest::ContactsRemove { name },
                ContactsCommand::Trust { name } => ControlRequest::ContactsTrust { name },
            };
            ctx.request(request).await
        }
        Command::Block { name } => ctx.request(ControlRequest::Block { name }).await,
        Command::Unblock { name } => ctx.request(ControlRequest::Unblock { name }).await,
        Command::History { name, limit } => {
            parse_name(&name)?;
            ctx.request(ControlRequest::History { name, limit }).await
        }
        Command::Outbox => ctx.request(ControlRequest::Outbox).await,
        Command::Online { listen } => ctx.online(listen, None).await,
        Command::Chat { name, listen } => {
            let peer = parse_name(&name)?;
            ctx.online(listen, Some(peer)).await
        }
        Command::Demo => Ok(()),
    }
}

/// What every command needs: the home, its identity and config.
struct Ctx {
    home: Home,
    identity: Identity,
    config: Config,
    rendezvous: Option<Multiaddr>,
    cli_rendezvous: Option<Multiaddr>,
    out: Output,
}

fn parse_name(name: &str) -> Result<ScreenName, Failure> {
    ScreenName::parse(name).map_err(|e| Failure::new(exit::INVALID, e))
}

async fn read_text(text: String) -> Result<String, Failure> {
    if text != "-" {
        return Ok(text);
    }
    let mut buf = String::new();
    tokio::io::stdin()
        .read_to_string(&mut buf)
        .await
        .map_err(|e| {
            Failure::new(
                exit::INVALID,
                anyhow!("cannot read the text from stdin: {e}"),
            )
        })?;
    if buf.ends_with('\n') {
        buf.pop();
    }
    Ok(buf)
}

/// Maps a directory refusal to its exit status (the agent's mapping).
fn directory_failure(error: ClientError) -> Failure {
    let error = crate::agent::AgentError::from(error);
    Failure::new(error.exit_code, anyhow!(error.message))
}

impl Ctx {
    fn my_name(&self) -> Result<ScreenName, Failure> {
        self.config.name.clone().ok_or_else(|| {
            anyhow!("you have no screen name yet: run `messenger register NAME` first").into()
        })
    }

    fn rendezvous(&self) -> Result<Multiaddr, Failure> {
        self.rendezvous.clone().ok_or_else(|| {
            Failure::new(
                exit::INVALID,
                anyhow!(
                    "no rendezvous node known: pass --rendezvous MULTIADDR (a line printed by `rendezvous`) or set MESSENGER_RENDEZVOUS"
                ),
            )
        })
    }

    /// A store-less client for directory-only commands.
    async fn connect(&self) -> Result<(Client, Multiaddr), Failure> {
        let addr = self.rendezvous()?;
        let client = Client::connect(
            self.identity.clone(),
            addr.clone(),
            self.config.name.clone(),
        )
        .await
        .map_err(|e| {
            let f = directory_failure(e);
            Failure::new(f.code, f.error.context(format!("rendezvous node {addr}")))
        })?;
        Ok((client, addr))
    }

    /// Runs a store command through the running client, or on our own.
    async fn request(self, request: ControlRequest) -> Result<(), Failure> {
        let reply = match control::call(self.home.dir(), &request).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let agent = Agent::open(self.home.clone(), self.cli_rendezvous.clone())
                    .map_err(|e| Failure::new(e.exit_code, anyhow!(e.message)))?;
                let reply = agent.execute(request.clone()).await;
                agent.shutdown().await;
                reply
            }
            Err(e) => return Err(anyhow!("cannot reach the running client: {e}").into()),
        };
        show_reply(&self.out, &request, reply)
    }

    fn id(&self) -> Result<(), Failure> {
        let peer_id = self.identity.peer_id();
        let name = self.config.name.as_ref().map(|n| n.to_string());
        let human = match &name {
            Some(n) => format!("peer id: {peer_id}\nname:    {n}"),
            None => {
                format!("peer id: {peer_id}\nname:    (none yet: run `messenger register NAME`)")
            }
        };
        self.out.emit(
            human,
            json!({"event": "id", "peer_id": peer_id.to_string(), "name": name}),
        );
        Ok(())
    }

    async fn register(mut self, name: &str) -> Result<(), Failure> {
        let name = parse_name(name)?;
        let (client, addr) = self.connect().await?;
        // Owning it already is success, and must not disturb a running
        // `online` of the same key.
        let already = match client.whois(name.as_str()).await {
            Ok(info) => info.peer_id == client.peer_id(),
            Err(ClientError::Directory(e)) if e.code() == Some(ErrorCode::NoSuchName) => false,
            Err(e) => return Err(directory_failure(e)),
        };
        let new_claim = if already {
            false
        } else {
            let registered = client
                .register(&name, Vec::new())
                .await
                .map_err(directory_failure)?;
            registered.new_claim
        };
        client.shutdown().await;
        self.config.name = Some(name.clone());
        self.config.rendezvous = Some(addr.clone());
        self.home.save_config(&self.config)?;
        let human = if new_claim {
            format!("registered {name} for {}", client.peer_id())
        } else {
            format!("{name} is already yours")
        };
        self.out.emit(
            human,
            json!({"event": "registered", "name": name.to_string(), "peer_id": client.peer_id().to_string(),
                   "new_claim": new_claim, "rendezvous": addr.to_string()}),
        );
        Ok(())
    }

    async fn release(mut self, name: &str) -> Result<(), Failure> {
        let name = parse_name(name)?;
        let (client, _) = self.connect().await?;
        let released = client
            .release(name.as_str())
            .await
            .map_err(directory_failure);
        client.shutdown().await;
        let released = released?;
        if self.config.name.as_ref() == Some(&released) {
            self.config.name = None;
            self.home.save_config(&self.config)?;
        }
        self.out.emit(
            format!("released {released}"),
            json!({"event": "released", "name": released.to_string()}),
        );
        Ok(())
    }

    async fn whois(self, name: &str) -> Result<(), Failure> {
        let name = parse_name(name)?;
        let (client, _) = self.connect().await?;
        let info = client.whois(name.as_str()).await.map_err(directory_failure);
        client.shutdown().await;
        let info = info?;
        self.out.emit(describe_peer(&info), peer_json(&info));
        Ok(())
    }

    /// `online`, and `chat` when `peer` is given.
    async fn online(self, listen: Vec<Multiaddr>, peer: Option<ScreenName>) -> Result<(), Failure> {
        let name = self.my_name()?;
        let listen = if listen.is_empty() {
            default_listen()
        } else {
            listen
        };
        // Watch for signals before announcing that we are online.
        let mut signals = Signals::new()?;
        let listener = control::bind(self.home.dir())
            .await
            .map_err(|e| Failure::new(exit::FAILURE, anyhow!("control socket: {e}")))?;
        let agent = Agent::open(self.home.clone(), self.cli_rendezvous.clone())
            .map_err(|e| Failure::new(e.exit_code, anyhow!(e.message)))?;
        let rendezvous = self.rendezvous()?;
        let mut events = match agent.go_online(listen).await {
            Ok(events) => events,
            Err(e) => {
                agent.shutdown().await;
                return Err(Failure::new(e.exit_code, anyhow!(e.message)));
            }
        };
        let serving = {
            let agent = agent.clone();
            tokio::spawn(control::serve(listener, move |request| {
                let agent = agent.clone();
                async move { agent.execute(request).await }
            }))
        };
        let (lines_tx, mut lines) = mpsc::channel::<String>(64);
        if peer.is_some() {
            tokio::spawn(read_lines(lines_tx));
        } else {
            drop(lines_tx);
        }
        let result = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        if let Some(failure) = self.show_event(event, &rendezvous) {
                            break Err(failure);
                        }
                    }
                    None => break Ok(()),
                },
                line = lines.recv(), if peer.is_some() => match line {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        let Some(to) = &peer else { continue };
                        if let Err(e) = agent.enqueue(to, &line).await {
                            self.out.error(e.exit_code, &anyhow!(e.message));
                        }
                    }
                    // End of input ends a chat.
                    None => break Ok(()),
                },
                _ = signals.recv() => break Ok(()),
            }
        };
        serving.abort();
        let _ = std::fs::remove_file(control::socket_path(self.home.dir()));
        agent.shutdown().await;
        self.out.emit(
            format!("offline: {name}"),
            json!({"event": "offline", "name": name.to_string()}),
        );
        result
    }

    /// Prints an event; returns a failure if the client cannot go on.
    fn show_event(&self, event: AgentEvent, rendezvous: &Multiaddr) -> Option<Failure> {
        match event {
            AgentEvent::Online {
                name,
                addrs,
                first,
                reachability,
            } => {
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                let human = if first {
                    format!(
                        "online as {name} ({}) via {rendezvous}\n{}",
                        self.identity.peer_id(),
                        describe_reach(reachability, &list)
                    )
                } else {
                    format!(
                        "back online as {name}\n{}",
                        describe_reach(reachability, &list)
                    )
                };
                self.out.emit(
                    human,
                    json!({"event": "online", "name": name.to_string(), "peer_id": self.identity.peer_id().to_string(),
                           "addrs": list, "reconnected": !first, "reachability": reach_word(reachability, &addrs)}),
                );
                None
            }
            AgentEvent::Addresses {
                addrs,
                reachability,
            } => {
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                self.out.emit(
                    format!("addresses changed: {}", describe_reach(reachability, &list)),
                    json!({"event": "addresses", "addrs": list, "reachability": reach_word(reachability, &addrs)}),
                );
                None
            }
            AgentEvent::Path {
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
                self.out.emit(
                    human,
                    json!({"event": "path", "name": name.map(|n| n.to_string()), "peer_id": peer.to_string(),
                           "path": path.to_string(), "detail": detail}),
                );
                None
            }
            AgentEvent::Reconnecting { reason } => {
                self.out.emit(
                    format!("{reason}; reconnecting..."),
                    json!({"event": "reconnecting", "reason": reason}),
                );
                None
            }
            AgentEvent::RegistrationRefused { reason } => Some(Failure::new(
                exit::FAILURE,
                anyhow!("registration refused: {reason}"),
            )),
            AgentEvent::Message(m, path) => {
                let msg = &m.message;
                let via = match path {
                    Some(Path::Relayed) => "  (via relay)",
                    _ => "",
                };
                let mut event = message_json("message", &m);
                event["path"] = json!(path.map(|p| p.to_string()));
                self.out.emit(
                    format!(
                        "[{}] {}: {}{via}",
                        time::clock(msg.sent_at),
                        msg.from,
                        msg.text
                    ),
                    event,
                );
                None
            }
            AgentEvent::Presence(info) => {
                let human = match (info.presence, info.status_text.is_empty()) {
                    (Presence::Offline, _) => format!("* {} is offline", info.name),
                    (p, true) => format!("* {} is {p}", info.name),
                    (p, false) => format!("* {} is {p}: {}", info.name, info.status_text),
                };
                self.out.emit(
                    human,
                    json!({"event": "presence", "name": info.name.to_string(), "status": info.presence.to_string(),
                           "text": info.status_text, "peer_id": info.peer_id.to_string()}),
                );
                None
            }
            AgentEvent::Delivered(m) => {
                self.out.emit(
                    format!(
                        "  delivered to {}: {}",
                        m.message.to,
                        preview(&m.message.text)
                    ),
                    message_json("delivered", &m),
                );
                None
            }
            AgentEvent::Failed(m) => {
                self.out.emit(
                    format!(
                        "  NOT delivered to {}: {} ({})",
                        m.message.to,
                        preview(&m.message.text),
                        m.error.as_deref().unwrap_or("refused")
                    ),
                    message_json("failed", &m),
                );
                None
            }
            AgentEvent::KeyChanged {
                name,
                pinned,
                current,
            } => {
                let warning = format!(
                    "!!! KEY CHANGED: {name} was pinned to {pinned} but now has key {current}.\n\
                     !!! Messages to and from {name} are refused until you run `messenger contacts trust {name}`."
                );
                eprintln!("{warning}");
                self.out.emit(
                    warning,
                    json!({"event": "key_changed", "name": name.to_string(), "pinned": pinned.to_string(),
                           "current": current.to_string()}),
                );
                None
            }
        }
    }
}

fn show_outcome(out: &Output, outcome: SendOutcome) -> Result<(), Failure> {
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
    }
}

/// Prints a control reply the same way whichever path produced it.
fn show_reply(out: &Output, request: &ControlRequest, reply: ControlReply) -> Result<(), Failure> {
    match reply {
        ControlReply::Sent(outcome) => show_outcome(out, *outcome),
        ControlReply::Done { message } => {
            out.emit(&message, json!({"event": "done", "message": message}));
            Ok(())
        }
        ControlReply::Contacts { contacts } => {
            if contacts.is_empty() && !out.is_json() {
                out.emit("no contacts yet: `messenger contacts add NAME`", json!({}));
            }
            for c in contacts {
                out.emit(describe_contact(&c), contact_json(&c));
            }
            Ok(())
        }
        ControlReply::Messages { messages } => {
            let event = match request {
                ControlRequest::Outbox => "outbox",
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
                        "[{}] {}: {}{}",
                        time::date_clock(m.message.sent_at),
                        m.message.from,
                        m.message.text,
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
        ControlReply::Error { exit_code, message } => {
            Err(Failure::new(exit_code, anyhow!(message)))
        }
    }
}

fn preview(text: &str) -> String {
    let first: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect();
    if first.len() < text.len() {
        format!("{first}…")
    } else {
        first
    }
}

fn message_json(event: &str, m: &StoredMessage) -> serde_json::Value {
    let msg = &m.message;
    json!({"event": event, "id": msg.id.to_string(), "from": msg.from.to_string(), "to": msg.to.to_string(),
           "sent_at": time::rfc3339(msg.sent_at), "text": msg.text, "state": m.state.to_string(),
           "direction": match m.direction { Direction::Out => "out", Direction::In => "in" },
           "peer_id": m.peer_id.map(|p| p.to_string()), "error": m.error})
}

fn describe_contact(c: &ContactView) -> String {
    let presence = match c.presence {
        Some(p) if p.is_online() && !c.status_text.is_empty() => format!("{p}: {}", c.status_text),
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

fn contact_json(c: &ContactView) -> serde_json::Value {
    json!({"event": "contact", "name": c.name.to_string(), "pinned": c.pinned.to_string(),
           "key_changed_to": c.key_changed_to.map(|k| k.to_string()),
           "status": c.presence.map(|p| p.to_string()), "text": c.status_text,
           "last_seen": c.last_seen.map(time::rfc3339), "blocked": c.blocked})
}

async fn read_lines(tx: mpsc::Sender<String>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).await.is_err() {
            break;
        }
    }
}

/// SIGINT and SIGTERM, both meaning "go offline and exit".
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// "direct" or "relayed", for JSON.
fn reach_word(reachability: Reachability, addrs: &[Multiaddr]) -> &'static str {
    match reachability {
        Reachability::Private => "relayed",
        Reachability::Public => "direct",
        Reachability::Unknown if !addrs.is_empty() && addrs.iter().all(is_relayed) => "relayed",
        Reachability::Unknown => "unknown",
    }
}

fn describe_reach(reachability: Reachability, addrs: &[String]) -> String {
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
fn peer_reach(info: &PeerInfo) -> &'static str {
    if info.addrs.is_empty() {
        "none"
    } else if info.addrs.iter().all(is_relayed) {
        "relayed"
    } else {
        "direct"
    }
}

fn describe_peer(info: &PeerInfo) -> String {
    let status = match (info.presence, info.status_text.is_empty()) {
        (p, false) if p.is_online() => format!("{p}: {}", info.status_text),
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

fn peer_json(info: &PeerInfo) -> serde_json::Value {
    json!({"event": "whois", "name": info.name.to_string(), "peer_id": info.peer_id.to_string(),
           "online": info.online(), "status": info.presence.to_string(), "text": info.status_text,
           "reach": peer_reach(info),
           "addrs": info.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
           "last_seen": info.last_seen.map(time::rfc3339)})
}
