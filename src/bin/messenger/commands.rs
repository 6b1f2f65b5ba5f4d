//! One function per command. Commands that need the home's client go
//! through the running one's control socket when there is one, and run
//! their own client for the one request otherwise; both paths run the same
//! [`Request`] through the same core.

use std::time::Duration;

use anyhow::{Context, anyhow};
use libp2p::Multiaddr;
use messenger::agent::{Agent, AgentConfig};
use messenger::api::{Event, FailureKind, Request, Response};
use messenger::control::{self, CallError};
use messenger::home::Home;
use messenger::proto::chat::{MessageId, check_text};
use messenger::proto::name::ScreenName;
use messenger::proto::presence::Status;
use messenger::web::{Backend, Serving};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cli::{Args, Command, ContactsCommand, FileCommand, RequestsCommand};
use crate::output::Output;
use crate::render::{show_event, show_reply};
use crate::running::{Running, Signals};
use crate::{Failure, exit};

pub(crate) async fn run(args: Args, out: &Output) -> Result<(), Failure> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let command = match args.command {
        Some(Command::Ui { .. }) if !terminal => {
            return Err(Failure::new(
                exit::INVALID,
                anyhow!(
                    "the window needs a terminal (stdin and stdout); use `messenger online` or `chat` otherwise"
                ),
            ));
        }
        Some(command) => command,
        // Plain `messenger` in a terminal is the window.
        None if terminal => Command::Ui { listen: Vec::new() },
        None => {
            return Err(Failure::new(
                exit::INVALID,
                anyhow!(
                    "no command given: see `messenger --help` (in a terminal, plain `messenger` opens the window)"
                ),
            ));
        }
    };
    match command {
        Command::Demo => return crate::demo::run(out).await.map_err(Failure::from),
        Command::Completions { shell } => {
            let mut cli = <Args as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "messenger", &mut script);
            // A closed stdout (`| head`) is not worth failing over.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return Ok(());
        }
        Command::Man => {
            let cli = <Args as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(cli)
                .render(&mut page)
                .context("cannot render the manual page")?;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &page);
            return Ok(());
        }
        _ => {}
    }
    let dir = args
        .home
        .clone()
        .or_else(Home::default_dir)
        .context("cannot find a per-user data directory; pass --home DIR")?;
    let home = Home::open(&dir)?;
    let ctx = Ctx {
        home,
        rendezvous: args.rendezvous.clone(),
        out: *out,
    };
    match command {
        Command::Id => ctx.id(),
        Command::Register { name } => {
            parse_name(&name)?;
            ctx.needs_node()?;
            ctx.request(Request::Register {
                name: parse_name(&name)?,
            })
            .await
        }
        Command::Release { name } => {
            parse_name(&name)?;
            ctx.request(Request::Release {
                name: parse_name(&name)?,
            })
            .await
        }
        Command::Whois { name } => {
            parse_name(&name)?;
            ctx.request(Request::Whois {
                name: parse_name(&name)?,
            })
            .await
        }
        Command::Send { name, text } => {
            let to = parse_name(&name)?;
            let text = read_text(text).await?;
            check_text(&text).map_err(|e| Failure::new(exit::INVALID, e))?;
            ctx.my_name()?;
            // The id is fixed here, before anything is submitted: if the
            // running client dies without answering, the store says what
            // became of this very message.
            let request = Request::Send {
                id: MessageId::random(),
                to,
                text,
            };
            ctx.request(request).await
        }
        Command::Status { status, text } => {
            let status: Status = status.parse().map_err(|e| Failure::new(exit::INVALID, e))?;
            ctx.request(Request::Status { status, text }).await
        }
        Command::Contacts(c) => {
            let request = match c {
                ContactsCommand::Add { name } => Request::ContactsAdd {
                    name: parse_name(&name)?,
                },
                ContactsCommand::List => Request::ContactsList,
                ContactsCommand::Remove { name } => Request::ContactsRemove {
                    name: parse_name(&name)?,
                },
                ContactsCommand::Trust { name } => Request::ContactsTrust {
                    name: parse_name(&name)?,
                },
                ContactsCommand::AutoAccept {
                    name,
                    below,
                    off: _,
                } => Request::AutoAccept {
                    name: parse_name(&name)?,
                    below: below
                        .map(|b| crate::transfer::parse_size(&b))
                        .transpose()
                        .map_err(|e| Failure::new(exit::INVALID, e))?,
                },
            };
            ctx.request(request).await
        }
        Command::Events => ctx.follow_events().await,
        Command::Block { name } => {
            ctx.request(Request::Block {
                name: parse_name(&name)?,
            })
            .await
        }
        Command::Unblock { name } => {
            ctx.request(Request::Unblock {
                name: parse_name(&name)?,
            })
            .await
        }
        Command::History { name, limit } => {
            parse_name(&name)?;
            ctx.request(Request::History {
                name: parse_name(&name)?,
                limit,
                before: None,
            })
            .await
        }
        Command::Outbox => ctx.request(Request::Outbox).await,
        Command::Requests { action: None } => ctx.request(Request::Requests).await,
        Command::Requests {
            action: Some(RequestsCommand::Decline { name, .. }),
        } => {
            ctx.request(Request::RequestsDecline {
                name: name.as_deref().map(parse_name).transpose()?,
            })
            .await
        }
        Command::Files {
            downloads: None,
            max_size: None,
        } => ctx.request(Request::Files).await,
        Command::Files {
            downloads,
            max_size,
        } => {
            let downloads = downloads
                .map(|dir| {
                    std::path::absolute(&dir)
                        .map_err(|e| Failure::new(exit::INVALID, anyhow!("{}: {e}", dir.display())))
                })
                .transpose()?;
            let max_file_size = max_size
                .map(|s| crate::transfer::parse_size(&s))
                .transpose()
                .map_err(|e| Failure::new(exit::INVALID, e))?;
            ctx.request(Request::Settings {
                send_typing: None,
                bell: None,
                downloads,
                max_file_size,
            })
            .await
        }
        Command::File(FileCommand::Send {
            name,
            path,
            no_wait,
        }) => {
            let to = parse_name(&name)?;
            ctx.my_name()?;
            let path = std::path::absolute(&path)
                .map_err(|e| Failure::new(exit::INVALID, anyhow!("{}: {e}", path.display())))?;
            if path.to_str().is_none() {
                return Err(Failure::new(
                    exit::INVALID,
                    anyhow!(
                        "{}: only file paths in UTF-8 can be offered",
                        path.display()
                    ),
                ));
            }
            let id = MessageId::random();
            let request = Request::FileSend {
                id,
                to: to.clone(),
                path,
            };
            ctx.running_request(request).await?;
            if no_wait {
                return Ok(());
            }
            crate::transfer::follow(ctx.home.dir(), id, &ctx.out).await
        }
        Command::File(FileCommand::Accept { id, to, no_wait }) => {
            let id = parse_id(&id)?;
            let dir =
                match to {
                    Some(dir) => Some(std::path::absolute(&dir).map_err(|e| {
                        Failure::new(exit::INVALID, anyhow!("{}: {e}", dir.display()))
                    })?),
                    None => None,
                };
            ctx.running_request(Request::FileAccept { id, dir }).await?;
            if no_wait {
                return Ok(());
            }
            crate::transfer::follow(ctx.home.dir(), id, &ctx.out).await
        }
        Command::File(FileCommand::Decline { id }) => {
            let id = parse_id(&id)?;
            ctx.running_request(Request::FileDecline { id }).await
        }
        Command::Invite { name, port, revoke } => {
            parse_name(&name)?;
            ctx.my_name()?;
            ctx.request(Request::Invite {
                name: parse_name(&name)?,
                port,
                revoke,
            })
            .await
        }
        Command::Invites => ctx.request(Request::Invitations).await,
        Command::Connect { name, port, local } => {
            let to = parse_name(&name)?;
            ctx.my_name()?;
            crate::tunnel::connect(&ctx.home, ctx.rendezvous.clone(), ctx.out, to, port, local)
                .await
        }
        Command::Pipe { name, listen } => {
            let name = name.as_deref().map(parse_name).transpose()?;
            ctx.my_name()?;
            crate::tunnel::pipe(&ctx.home, ctx.rendezvous.clone(), name, listen).await
        }
        Command::Online {
            listen,
            metrics,
            web,
        } => ctx.online(listen, None, metrics, web).await,
        Command::Chat { name, listen } => {
            let peer = parse_name(&name)?;
            ctx.online(listen, Some(peer), None, None).await
        }
        Command::Web {
            listen,
            no_open,
            peer_listen,
        } => {
            let options = crate::web::Options {
                listen,
                open: !no_open,
                peer_listen,
            };
            crate::web::run(ctx.home, ctx.rendezvous, options, &ctx.out).await
        }
        Command::Ui { listen } => crate::window::run(ctx.home, ctx.rendezvous, listen).await,
        Command::Demo | Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// What every command needs: the home and the node given on the command
/// line (if any).
struct Ctx {
    home: Home,
    rendezvous: Vec<Multiaddr>,
    out: Output,
}

fn parse_id(id: &str) -> Result<MessageId, Failure> {
    id.parse()
        .map_err(|e: String| Failure::new(exit::INVALID, anyhow!("{id:?}: {e}")))
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

/// How long a command waits for the home's store while another process
/// holds it without answering on the control socket: another command
/// finishing, a client still starting, or one that just died.
const STORE_WAIT: Duration = Duration::from_secs(10);
const STORE_RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Ctx {
    /// Runs `request` through the home's running client, or a client of
    /// our own; while the store is held by a process that does not answer,
    /// waits for one of the two (up to [`STORE_WAIT`]).
    async fn request(self, request: Request) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + STORE_WAIT;
        let mut told = false;
        let reply = loop {
            let ours = match control::call(self.home.dir(), &request).await {
                Ok(Some(reply)) => break reply,
                Ok(None) => self.on_our_own(&request).await,
                // The running client died between taking the request and
                // answering it. A send's message may or may not be stored:
                // the same request (the same id) stores it once and says
                // what became of it.
                Err(CallError::NoAnswer) if matches!(request, Request::Send { .. }) => {
                    if !std::mem::replace(&mut told, true) {
                        eprintln!(
                            "the running client stopped before answering; finding out from the store what became of the message"
                        );
                    }
                    self.on_our_own(&request).await
                }
                Err(e) => return Err(anyhow!(e).into()),
            };
            match ours {
                Ok(reply) => break reply,
                Err(failure)
                    if failure.kind == FailureKind::StoreInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(STORE_RETRY_PAUSE).await;
                }
                Err(failure) => return Err(Failure::of(failure)),
            }
        };
        show_reply(&self.out, &request, reply)
    }

    /// Prints what the running client shows, then every change, until
    /// Ctrl-C or the client stops.
    async fn follow_events(&self) -> Result<(), Failure> {
        let rendezvous = self
            .rendezvous
            .first()
            .cloned()
            .unwrap_or(Multiaddr::empty());
        let mut signals = Signals::new()?;
        // A follower that fell too far behind starts again from a new
        // snapshot.
        loop {
            let (snapshot, mut attached) = self.snapshot_and_follow().await?;
            let me = snapshot.me.peer_id;
            loop {
                let response = tokio::select! {
                    response = attached.response() => response,
                    () = signals.recv() => return Ok(()),
                };
                match response {
                    Ok(Response::Event { seq, event }) => {
                        if self.out.is_json() {
                            let line = Response::Event { seq, event };
                            self.out
                                .emit("", serde_json::to_value(&line).unwrap_or_default());
                        } else if let Some(failure) = show_event(&self.out, me, event, &rendezvous)
                        {
                            return Err(failure);
                        }
                    }
                    Ok(Response::Failed(failure)) if failure.kind == FailureKind::EventsMissed => {
                        eprintln!("{}; taking a new snapshot", failure.message);
                        break;
                    }
                    Ok(Response::Failed(failure)) => return Err(Failure::of(failure)),
                    Ok(other) => return Err(anyhow!("unexpected answer: {other:?}").into()),
                    Err(CallError::NoAnswer) => {
                        return Err(Failure::new(
                            exit::FAILURE,
                            anyhow!("the running client stopped"),
                        ));
                    }
                    Err(e) => return Err(anyhow!(e).into()),
                }
            }
        }
    }

    /// What the running client shows now (printed), and its events from
    /// there on.
    async fn snapshot_and_follow(
        &self,
    ) -> Result<(Box<messenger::api::Snapshot>, control::Attached), Failure> {
        let not_running = || {
            Failure::new(
                exit::FAILURE,
                anyhow!(
                    "no client runs on this home: start `messenger online`, `chat` or the window first"
                ),
            )
        };
        let snapshot = match control::call(self.home.dir(), &Request::Snapshot).await {
            Ok(Some(Response::Snapshot(snapshot))) => snapshot,
            Ok(Some(Response::Failed(failure))) => return Err(Failure::of(failure)),
            Ok(Some(other)) => return Err(anyhow!("unexpected answer: {other:?}").into()),
            Ok(None) => return Err(not_running()),
            Err(e) => return Err(anyhow!(e).into()),
        };
        crate::render::show_snapshot(&self.out, &snapshot);
        let follow = Request::Follow {
            run: snapshot.run.clone(),
            after: snapshot.seq,
        };
        let attached = control::attach(self.home.dir(), &follow)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(not_running)?;
        Ok((snapshot, attached))
    }

    /// Runs `request` through the home's running client only (files are
    /// served and fetched by it); prints the reply.
    async fn running_request(&self, request: Request) -> Result<(), Failure> {
        match control::call(self.home.dir(), &request).await {
            Ok(Some(Response::Sent(_))) => {
                if let Request::FileSend { id, to, path } = &request {
                    self.out.emit(
                        format!("offered {} to {to} (offer {id})", path.display()),
                        json!({"event": "offered", "id": id.to_string(), "to": to, "path": path}),
                    );
                }
                Ok(())
            }
            Ok(Some(reply)) => show_reply(&self.out, &request, reply),
            Ok(None) => Err(Failure::new(
                exit::FAILURE,
                anyhow!(
                    "files are sent and fetched by your running client: start `messenger online` (or the window) on this home first"
                ),
            )),
            Err(e) => Err(anyhow!(e).into()),
        }
    }

    fn my_name(&self) -> Result<ScreenName, Failure> {
        self.home.config()?.name.ok_or_else(|| {
            anyhow!("you have no screen name yet: run `messenger register NAME` first").into()
        })
    }

    fn needs_node(&self) -> Result<(), Failure> {
        if !self.rendezvous.is_empty() || !self.home.config()?.rendezvous.is_empty() {
            return Ok(());
        }
        Err(Failure::new(
            exit::INVALID,
            anyhow!(
                "no rendezvous node known: pass --rendezvous MULTIADDR (a line printed by `rendezvous`) or set MESSENGER_RENDEZVOUS"
            ),
        ))
    }

    /// Runs one request on a client of our own.
    async fn on_our_own(&self, request: &Request) -> Result<Response, messenger::api::Failure> {
        let config = AgentConfig::for_home(self.home.clone(), self.rendezvous.clone())
            .map_err(|e| messenger::api::Failure::from(&e))?;
        let (agent, mut events) = Agent::start(config)
            .await
            .map_err(|e| messenger::api::Failure::from(&e))?;
        let reply = {
            let call = agent.call(request.clone());
            tokio::pin!(call);
            // Nobody shows events of a one-off command: they are let go.
            loop {
                tokio::select! {
                    reply = &mut call => break reply,
                    Some(_) = events.recv() => {}
                }
            }
        };
        agent.shutdown().await;
        Ok(reply)
    }

    fn id(&self) -> Result<(), Failure> {
        let identity = self.home.identity()?;
        let config = self.home.config()?;
        let peer_id = identity.peer_id();
        let name = config.name.as_ref().map(|n| n.to_string());
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

    /// `online`, and `chat` when `peer` is given.
    async fn online(
        self,
        listen: Vec<Multiaddr>,
        peer: Option<ScreenName>,
        metrics: Option<std::net::SocketAddr>,
        web: Option<std::net::SocketAddr>,
    ) -> Result<(), Failure> {
        let name = self.my_name()?;
        // Watch for signals before announcing that we are online.
        let mut signals = Signals::new()?;
        let mut running =
            Running::start(&self.home, self.rendezvous.clone(), listen, metrics).await?;
        if let Some(addr) = running.metrics_addr {
            let url = format!("http://{addr}/metrics");
            self.out.emit(
                format_args!("metrics {url}"),
                serde_json::json!({"event": "metrics", "url": url}),
            );
        }
        let web = match web {
            Some(addr) => {
                let serving = Serving::Client(Backend::Agent(running.agent.clone()));
                match crate::web::serve(&self.home, Some(addr), serving, &self.out).await {
                    Ok(web) => Some(web),
                    Err(failure) => {
                        running.stop().await;
                        return Err(failure);
                    }
                }
            }
            None => None,
        };
        let me = running.agent.peer_id();
        let Some(rendezvous) = self
            .rendezvous
            .first()
            .cloned()
            .or(running.rendezvous.clone())
        else {
            running.stop().await;
            return Err(Failure::new(
                exit::INVALID,
                anyhow!("no rendezvous node known"),
            ));
        };
        let mut lines_task = JoinSet::new();
        let (lines_tx, mut lines) = mpsc::channel::<String>(64);
        if peer.is_some() {
            lines_task.spawn(read_lines(lines_tx));
        } else {
            drop(lines_tx);
        }
        let result = loop {
            tokio::select! {
                event = running.events.recv() => match event {
                    Some(event) => {
                        let refused = matches!(event, Event::RegistrationRefused { .. });
                        // What `chat` printed of its partner is read, for
                        // every front end.
                        let read = match (&event, &peer) {
                            (Event::Unread(unread), Some(peer))
                                if unread.count > 0 && unread.name == *peer =>
                            {
                                Some(peer.clone())
                            }
                            _ => None,
                        };
                        if let Some(failure) = show_event(&self.out, me, event, &rendezvous) {
                            break Err(failure);
                        }
                        if let Some(name) = read {
                            let _ = running.agent.call(Request::MarkRead { name }).await;
                        }
                        if refused {
                            break Ok(());
                        }
                    }
                    None => break Ok(()),
                },
                line = lines.recv(), if peer.is_some() => match line {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        let Some(to) = &peer else { continue };
                        let request = Request::Enqueue {
                            id: MessageId::random(),
                            to: to.clone(),
                            text: line,
                        };
                        if let Response::Failed(failure) = running.agent.call(request).await {
                            let failure = Failure::of(failure);
                            self.out.error(failure.code, &failure.error);
                        }
                    }
                    // End of input ends a chat.
                    None => break Ok(()),
                },
                _ = signals.recv() => break Ok(()),
            }
        };
        lines_task.abort_all();
        while lines_task.join_next().await.is_some() {}
        if let Some(web) = web {
            web.stop().await;
        }
        running.stop().await;
        self.out.emit(
            format!("offline: {name}"),
            json!({"event": "offline", "name": name.to_string()}),
        );
        result
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
