//! One function per command.

use anyhow::{Context, anyhow};
use libp2p::Multiaddr;
use messenger_proto::Identity;
use messenger_proto::chat::check_text;
use messenger_proto::directory::ErrorCode;
use messenger_proto::name::ScreenName;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::mpsc;

use super::{Args, Command, Failure, Output, exit};
use crate::chat::IncomingMessage;
use crate::client::{Client, ClientError, ClientEvent, PeerInfo, SendError, SendReport};
use crate::directory::DirectoryError;
use crate::home::{Config, Home};
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
        out: *out,
    };
    match args.command {
        Command::Id => ctx.id(),
        Command::Register { name } => ctx.register(&name).await,
        Command::Release { name } => ctx.release(&name).await,
        Command::Whois { name } => ctx.whois(&name).await,
        Command::Send { name, text } => ctx.send(&name, &text).await,
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
    out: Output,
}

fn parse_name(name: &str) -> Result<ScreenName, Failure> {
    ScreenName::parse(name).map_err(|e| Failure::new(exit::INVALID, e))
}

/// Maps a directory refusal to its exit status.
fn directory_failure(error: ClientError) -> Failure {
    let code = match &error {
        ClientError::Directory(DirectoryError::Refused { code, .. }) => match code {
            ErrorCode::NameTaken => exit::NAME_TAKEN,
            ErrorCode::NoSuchName => exit::NO_SUCH_NAME,
            ErrorCode::InvalidName => exit::INVALID,
            _ => exit::FAILURE,
        },
        ClientError::Directory(DirectoryError::BadAddress { .. }) | ClientError::Name(_) => {
            exit::INVALID
        }
        _ => exit::FAILURE,
    };
    Failure::new(code, error)
}

impl Ctx {
    fn my_name(&self) -> Result<ScreenName, Failure> {
        self.config.name.clone().ok_or_else(|| {
            anyhow!("you have no screen name yet: run `messenger register NAME` first").into()
        })
    }

    async fn connect(&self) -> Result<(Client, Multiaddr), Failure> {
        let addr = self.rendezvous.clone().ok_or_else(|| {
            Failure::new(
                exit::INVALID,
                anyhow!(
                    "no rendezvous node known: pass --rendezvous MULTIADDR (a line printed by `rendezvous`) or set MESSENGER_RENDEZVOUS"
                ),
            )
        })?;
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

    async fn send(self, name: &str, text: &str) -> Result<(), Failure> {
        let to = parse_name(name)?;
        let text = if text == "-" {
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
            buf
        } else {
            text.to_owned()
        };
        check_text(&text).map_err(|e| Failure::new(exit::INVALID, e))?;
        self.my_name()?;
        let (client, _) = self.connect().await?;
        let result = client.send(to.as_str(), &text).await;
        client.shutdown().await;
        let report = result.map_err(send_failure)?;
        self.out.emit(
            format!(
                "delivered to {} (id {}): resolve {}, dial {}, deliver {}",
                report.to,
                report.id,
                ms(report.resolve),
                ms(report.dial),
                ms(report.deliver)
            ),
            delivered_json(&report),
        );
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
        let (client, addr) = self.connect().await?;
        let mut events = client
            .go_online(name.clone(), listen)
            .await
            .map_err(directory_failure)?;
        let (lines_tx, mut lines) = mpsc::channel::<String>(64);
        if peer.is_some() {
            tokio::spawn(read_lines(lines_tx));
        } else {
            drop(lines_tx);
        }
        let (sent_tx, mut sent) = mpsc::channel::<Result<SendReport, SendError>>(64);
        let (queue_tx, queue_rx) = mpsc::channel::<String>(256);
        if let Some(peer) = &peer {
            tokio::spawn(send_in_order(
                client.clone(),
                peer.clone(),
                queue_rx,
                sent_tx,
            ));
        }
        let stdin_open = peer.is_some();
        let result = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        if let Some(failure) = self.show_event(event, &addr) {
                            break Err(failure);
                        }
                    }
                    None => break Ok(()),
                },
                line = lines.recv(), if stdin_open => match line {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        if let Err(e) = check_text(&line) {
                            eprintln!("not sent: {e}");
                        } else if queue_tx.send(line).await.is_err() {
                            break Ok(());
                        }
                    }
                    // End of input ends a chat, once what was typed is delivered.
                    None => break Ok(()),
                },
                Some(result) = sent.recv() => self.show_sent(result),
                _ = signals.recv() => break Ok(()),
            }
        };
        // Let messages still in flight finish (bounded), then go offline.
        drop(queue_tx);
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(20));
        tokio::pin!(deadline);
        if peer.is_some() {
            loop {
                tokio::select! {
                    r = sent.recv() => match r { Some(r) => self.show_sent(r), None => break },
                    _ = &mut deadline => break,
                }
            }
        }
        client.shutdown().await;
        self.out.emit(
            format!("offline: {name}"),
            json!({"event": "offline", "name": name.to_string()}),
        );
        result
    }

    /// Prints an event; returns a failure if the client cannot go on.
    fn show_event(&self, event: ClientEvent, rendezvous: &Multiaddr) -> Option<Failure> {
        match event {
            ClientEvent::Online { name, addrs, first } => {
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                let human = if first {
                    format!(
                        "online as {name} ({}) via {rendezvous}\nreachable at: {}",
                        self.identity.peer_id(),
                        list.join(", ")
                    )
                } else {
                    format!("back online as {name}")
                };
                self.out.emit(
                    human,
                    json!({"event": "online", "name": name.to_string(), "peer_id": self.identity.peer_id().to_string(),
                           "addrs": list, "reconnected": !first}),
                );
                None
            }
            ClientEvent::Reconnecting { reason } => {
                self.out.emit(
                    format!("{reason}; reconnecting..."),
                    json!({"event": "reconnecting", "reason": reason}),
                );
                None
            }
            ClientEvent::RegistrationRefused { reason } => Some(Failure::new(
                exit::FAILURE,
                anyhow!("registration refused: {reason}"),
            )),
            ClientEvent::Message(m) => {
                self.show_message(&m);
                None
            }
        }
    }

    fn show_message(&self, m: &IncomingMessage) {
        let msg = &m.message;
        self.out.emit(
            format!("[{}] {}: {}", time::clock(msg.sent_at), m.from, msg.text),
            json!({"event": "message", "from": m.from.to_string(), "to": msg.to.to_string(), "id": msg.id.to_string(),
                   "peer_id": m.peer.to_string(), "sent_at": time::rfc3339(msg.sent_at), "text": msg.text}),
        );
    }

    fn show_sent(&self, result: Result<SendReport, SendError>) {
        match result {
            Ok(report) => self.out.emit(
                format!(
                    "  delivered ({})",
                    ms(report.resolve + report.dial + report.deliver)
                ),
                delivered_json(&report),
            ),
            Err(e) => {
                let failure = send_failure(e);
                self.out.error(failure.code, &failure.error);
            }
        }
    }
}

/// Sends queued chat lines one after another, so they arrive in order.
async fn send_in_order(
    client: Client,
    to: ScreenName,
    mut lines: mpsc::Receiver<String>,
    results: mpsc::Sender<Result<SendReport, SendError>>,
) {
    while let Some(line) = lines.recv().await {
        let result = client.send(to.as_str(), &line).await;
        if results.send(result).await.is_err() {
            break;
        }
    }
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

fn send_failure(error: SendError) -> Failure {
    let code = match &error {
        SendError::Text(_) | SendError::InvalidName(_) => exit::INVALID,
        SendError::NoSuchName(_) => exit::NO_SUCH_NAME,
        SendError::Offline { .. } => exit::OFFLINE,
        SendError::Unreachable { .. } | SendError::NotDelivered { .. } => exit::NOT_DELIVERED,
        SendError::Directory(DirectoryError::Refused {
            code: ErrorCode::InvalidName,
            ..
        }) => exit::INVALID,
        _ => exit::FAILURE,
    };
    Failure::new(code, error)
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn delivered_json(report: &SendReport) -> serde_json::Value {
    json!({"event": "delivered", "to": report.to.to_string(), "id": report.id.to_string(),
           "peer_id": report.peer_id.to_string(), "sent_at": time::rfc3339(report.sent_at),
           "resolve_ms": report.resolve.as_secs_f64() * 1000.0, "dial_ms": report.dial.as_secs_f64() * 1000.0,
           "deliver_ms": report.deliver.as_secs_f64() * 1000.0})
}

fn describe_peer(info: &PeerInfo) -> String {
    let status = if info.online { "online" } else { "offline" };
    let last_seen = match (info.online, info.last_seen) {
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
            .join("\n           ")
    };
    format!(
        "{}\n  peer id:   {}\n  status:    {status}\n  last seen: {last_seen}\n  addresses: {addrs}",
        info.name, info.peer_id
    )
}

fn peer_json(info: &PeerInfo) -> serde_json::Value {
    json!({"event": "whois", "name": info.name.to_string(), "peer_id": info.peer_id.to_string(),
           "online": info.online, "addrs": info.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
           "last_seen": info.last_seen.map(time::rfc3339)})
}
