//! `connect` and `pipe`: tunnels by name. They go through the home's
//! running client (its control socket then carries their bytes) or, when
//! none runs, through a client this command runs, online, while it lasts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use libp2p::Multiaddr;
use messenger::agent::Agent;
use messenger::api::{Event, Request, Response};
use messenger::control;
use messenger::home::Home;
use messenger::proto::name::ScreenName;
use messenger::proto::tunnel::TunnelRequest;
use messenger::size::human_size;
use messenger::tunnels;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::output::Output;
use crate::render::show_event;
use crate::running::{Running, Signals};
use crate::{Failure, exit};

/// Local connections a `connect` carries at once; more wait to be
/// accepted.
const MAX_LOCAL_CONNECTIONS: usize = 64;

/// A tunnel's bytes, whichever way they travel.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}
type Carried = Box<dyn Duplex>;

/// How tunnels are opened: through the running client, or our own.
#[derive(Clone)]
enum Opener {
    Socket(PathBuf),
    Agent(Agent),
}

impl Opener {
    async fn tunnel(
        &self,
        to: &ScreenName,
        request: TunnelRequest,
    ) -> Result<(Carried, ScreenName), Failure> {
        match self {
            Opener::Socket(home) => {
                let request = Request::Tunnel {
                    to: to.clone(),
                    request,
                };
                let mut attached = control::attach(home, &request).await?.ok_or_else(gone)?;
                match attached.response().await? {
                    Response::TunnelOpened { peer, .. } => {
                        Ok((Box::new(attached.into_stream()), peer))
                    }
                    other => Err(refusal(other)),
                }
            }
            Opener::Agent(agent) => {
                let tunnel = agent.open_tunnel(to, request).await.map_err(Failure::of)?;
                Ok((Box::new(tunnel.stream.compat()), tunnel.peer))
            }
        }
    }

    async fn listen_pipe(
        &self,
        from: Option<&ScreenName>,
    ) -> Result<(Carried, ScreenName), Failure> {
        let waiting = |what: &str| eprintln!("{what} (`messenger pipe YOUR_NAME` on their side)");
        match self {
            Opener::Socket(home) => {
                let request = Request::PipeListen {
                    from: from.cloned(),
                };
                let mut attached = control::attach(home, &request).await?.ok_or_else(gone)?;
                match attached.response().await? {
                    Response::Done { message } => waiting(&message),
                    other => return Err(refusal(other)),
                }
                match attached.response().await? {
                    Response::TunnelOpened { peer, .. } => {
                        Ok((Box::new(attached.into_stream()), peer))
                    }
                    other => Err(refusal(other)),
                }
            }
            Opener::Agent(agent) => {
                let pipe = agent.listen_pipe(from).await.map_err(Failure::of)?;
                waiting(&match from {
                    Some(from) => format!("waiting for a pipe from {from}"),
                    None => "waiting for a pipe from a contact".into(),
                });
                let tunnel = pipe.await.map_err(|_| anyhow!("the client stopped"))?;
                Ok((Box::new(tunnel.stream.compat()), tunnel.peer))
            }
        }
    }
}

fn gone() -> Failure {
    anyhow!("the running client went away; run the command again").into()
}

fn refusal(response: Response) -> Failure {
    match response {
        Response::Failed(failure) => Failure::of(failure),
        other => anyhow!("the running client answered something unexpected: {other:?}").into(),
    }
}

/// The way to open tunnels, and the client we run ourselves, if we do.
struct Via {
    opener: Opener,
    own: Option<(Running, JoinSet<()>)>,
}

impl Via {
    /// The running client of `home`, or a client of our own, online.
    /// Ours shows the events of tunnels it serves when `show` is given.
    async fn open(
        home: &Home,
        rendezvous: Vec<Multiaddr>,
        show: Option<Output>,
    ) -> Result<Self, Failure> {
        if control::is_running(home.dir()).await {
            return Ok(Self {
                opener: Opener::Socket(home.dir().to_owned()),
                own: None,
            });
        }
        let mut running = Running::start(home, rendezvous, Vec::new(), None).await?;
        let mut events = running.take_events();
        let me = running.agent.peer_id();
        let node = running.rendezvous.clone();
        let mut drain = JoinSet::new();
        drain.spawn(async move {
            while let Some(event) = events.recv().await {
                if let (Some(out), Event::Tunnel(_), Some(node)) = (&show, &event, &node) {
                    let _ = show_event(out, me, event, node);
                }
            }
        });
        Ok(Self {
            opener: Opener::Agent(running.agent.clone()),
            own: Some((running, drain)),
        })
    }

    async fn stop(self) {
        if let Some((running, mut drain)) = self.own {
            running.stop().await;
            drain.shutdown().await;
        }
    }
}

/// How long opening a tunnel may take before the user is told why it
/// waits.
const PATIENCE: Duration = Duration::from_secs(2);

/// Runs `opening`, saying on stderr what it waits for if it takes long:
/// behind NATs, the direct connection comes from hole punching.
async fn patiently<T>(to: &ScreenName, opening: impl Future<Output = T>) -> T {
    tokio::pin!(opening);
    tokio::select! {
        done = &mut opening => return done,
        () = tokio::time::sleep(PATIENCE) => {}
    }
    eprintln!(
        "still connecting to {to}: tunnels need a direct connection, and one through NATs waits for hole punching (up to {} s)",
        messenger::direct::DIRECT_WAIT.as_secs()
    );
    opening.await
}

/// `messenger connect NAME PORT [--local LOCAL_PORT]`.
pub(crate) async fn connect(
    home: &Home,
    rendezvous: Vec<Multiaddr>,
    out: Output,
    to: ScreenName,
    port: u16,
    local: u16,
) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    let via = Via::open(home, rendezvous, Some(out)).await?;
    let result = carry_connections(&via.opener, &mut signals, out, &to, port, local).await;
    via.stop().await;
    result
}

async fn carry_connections(
    opener: &Opener,
    signals: &mut Signals,
    out: Output,
    to: &ScreenName,
    port: u16,
    local: u16,
) -> Result<(), Failure> {
    // Asked first: a refusal shows now, not at the first connection.
    patiently(to, opener.tunnel(to, TunnelRequest::Check { port })).await?;
    let listener = TcpListener::bind(("127.0.0.1", local)).await.map_err(|e| {
        Failure::new(
            exit::FAILURE,
            anyhow!("cannot listen on 127.0.0.1:{local}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    out.emit(
        format!("listening on {addr}: connections go to {to}'s port {port} (Ctrl-C to stop)"),
        json!({"event": "listening", "addr": addr.to_string(), "to": to.to_string(), "port": port}),
    );
    let mut connections = JoinSet::new();
    let mut count = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_LOCAL_CONNECTIONS => {
                let (mut tcp, from) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting a local connection failed: {e}");
                        continue;
                    }
                };
                count += 1;
                let id = count;
                let opener = opener.clone();
                let to = to.clone();
                connections.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let mut carried = match opener.tunnel(&to, TunnelRequest::Connect { port }).await {
                        Ok((carried, _)) => carried,
                        Err(failure) => {
                            out.emit(
                                format!("connection {id} from {from}: {:#}", failure.error),
                                json!({"event": "connection", "id": id, "from": from.to_string(),
                                       "state": "refused", "exit_code": failure.code,
                                       "error": format!("{:#}", failure.error)}),
                            );
                            return;
                        }
                    };
                    out.emit(
                        format!("connection {id} from {from} opened to {to}'s port {port}"),
                        json!({"event": "connection", "id": id, "from": from.to_string(), "state": "opened"}),
                    );
                    let started = Instant::now();
                    let copied = tunnels::splice(&mut tcp, &mut carried).await;
                    let seconds = started.elapsed().as_secs_f64();
                    let (sent, received, error) = match copied {
                        Ok((sent, received)) => (sent, received, None),
                        Err(e) => (0, 0, Some(e.to_string())),
                    };
                    out.emit(
                        format!(
                            "connection {id} from {from} closed after {seconds:.1} s ({} sent, {} received){}",
                            human_size(sent),
                            human_size(received),
                            error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                        ),
                        json!({"event": "connection", "id": id, "from": from.to_string(), "state": "closed",
                               "sent": sent, "received": received, "seconds": seconds, "error": error}),
                    );
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = signals.recv() => break,
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// `messenger pipe NAME` and `messenger pipe --listen [NAME]`.
pub(crate) async fn pipe(
    home: &Home,
    rendezvous: Vec<Multiaddr>,
    name: Option<ScreenName>,
    listen: bool,
) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    let via = Via::open(home, rendezvous, None).await?;
    let result = async {
        let opened = if listen {
            tokio::select! {
                opened = via.opener.listen_pipe(name.as_ref()) => opened?,
                () = signals.recv() => return Ok(()),
            }
        } else {
            let Some(to) = &name else {
                return Err(Failure::new(exit::INVALID, anyhow!("whom to pipe to?")));
            };
            patiently(to, via.opener.tunnel(to, TunnelRequest::Pipe)).await?
        };
        let (carried, peer) = opened;
        if listen {
            eprintln!("pipe from {peer} opened");
        }
        tokio::select! {
            done = pipe_stdio(carried) => done,
            () = signals.recv() => Ok(()),
        }
    }
    .await;
    via.stop().await;
    result
}

/// Copies stdin to the pipe and the pipe to stdout until both directions
/// ended (our stdin's end is passed on as a half-close). From a terminal,
/// it ends once the other side finished sending: nobody has to type
/// Ctrl-D to end a transfer that came to them.
async fn pipe_stdio(carried: Carried) -> Result<(), Failure> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let (mut from_peer, mut to_peer) = tokio::io::split(carried);
    let up = async {
        let copied = tokio::io::copy(&mut tokio::io::stdin(), &mut to_peer).await;
        let shut = to_peer.shutdown().await;
        copied.and(shut.map(|()| 0))
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut from_peer, &mut stdout).await;
        copied.and(stdout.flush().await.map(|()| 0))
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            copied = &mut down, if !down_done => {
                down_done = true;
                copied.map_err(|e| anyhow!("the pipe broke: {e}"))?;
                if interactive {
                    break;
                }
            }
            copied = &mut up, if !up_done => {
                up_done = true;
                copied.map_err(|e| anyhow!("cannot send stdin into the pipe: {e}"))?;
            }
        }
    }
    Ok(())
}
