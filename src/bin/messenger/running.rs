//! The home's running client, as `online`, `chat` and the window start it:
//! the agent online, and its control socket served so that the other
//! commands on the home go through it; and the signals that stop it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use libp2p::Multiaddr;
use messenger::agent::{Agent, AgentConfig};
use messenger::api::Event;
use messenger::control;
use messenger::home::Home;
use messenger::metrics::ClientMetrics;
use messenger::proto::metrics::MetricsServer;
use messenger::proto::metrics::prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Failure, exit};

/// Default addresses a client accepts peers on.
pub(crate) fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The agent, online, with its control socket served.
pub(crate) struct Running {
    /// The first node it knows (to name in messages).
    pub(crate) rendezvous: Option<Multiaddr>,
    pub(crate) agent: Agent,
    pub(crate) events: mpsc::Receiver<Event>,
    /// Where its metrics are served, if they are.
    pub(crate) metrics_addr: Option<SocketAddr>,
    socket: std::path::PathBuf,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Starts the home's client (with `rendezvous` instead of the
    /// remembered nodes, if given) and takes it online on `listen` (the
    /// defaults when empty), serving its metrics on `metrics` if given.
    pub(crate) async fn start(
        home: &Home,
        rendezvous: Vec<Multiaddr>,
        listen: Vec<Multiaddr>,
        metrics: Option<SocketAddr>,
    ) -> Result<Self, Failure> {
        // First: if another client runs on this home, nothing else starts.
        let listener = control::bind(home.dir())
            .await
            .map_err(|e| Failure::new(exit::FAILURE, anyhow!("control socket: {e}")))?;
        let unbind = || {
            let _ = std::fs::remove_file(control::socket_path(home.dir()));
        };
        let mut config = match AgentConfig::for_home(home.clone(), rendezvous) {
            Ok(config) => config,
            Err(e) => {
                unbind();
                return Err(Failure::of(messenger::api::Failure::from(&e)));
            }
        };
        let scrapes = match metrics {
            Some(addr) => {
                let mut registry = Registry::default();
                config.metrics = Some(Arc::new(ClientMetrics::new(&mut registry)));
                match MetricsServer::bind(addr, Arc::new(registry)).await {
                    Ok(server) => Some(server),
                    Err(e) => {
                        unbind();
                        return Err(Failure::new(exit::FAILURE, e));
                    }
                }
            }
            None => None,
        };
        let (agent, events) = match Agent::start(config).await {
            Ok(started) => started,
            Err(e) => {
                unbind();
                return Err(Failure::of(messenger::api::Failure::from(&e)));
            }
        };
        let mut running = Self::serve(home, agent, events, listener, listen).await?;
        if let Some(scrapes) = scrapes {
            running.metrics_addr = scrapes.local_addr();
            let stop = running.cancel.child_token();
            running.tasks.spawn(async move {
                tokio::select! {
                    () = scrapes.run() => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        Ok(running)
    }

    /// Takes an agent already started (the window signed in with it)
    /// online, and serves its control socket.
    pub(crate) async fn adopt(
        home: &Home,
        agent: Agent,
        events: mpsc::Receiver<Event>,
        listen: Vec<Multiaddr>,
    ) -> Result<Self, Failure> {
        let listener = match control::bind(home.dir()).await {
            Ok(listener) => listener,
            Err(e) => {
                agent.shutdown().await;
                return Err(Failure::new(exit::FAILURE, anyhow!("control socket: {e}")));
            }
        };
        Self::serve(home, agent, events, listener, listen).await
    }

    async fn serve(
        home: &Home,
        agent: Agent,
        events: mpsc::Receiver<Event>,
        listener: tokio::net::UnixListener,
        listen: Vec<Multiaddr>,
    ) -> Result<Self, Failure> {
        let socket = control::socket_path(home.dir());
        let listen = if listen.is_empty() {
            default_listen()
        } else {
            listen
        };
        if let Err(e) = agent.go_online(listen).await {
            agent.shutdown().await;
            let _ = std::fs::remove_file(&socket);
            return Err(Failure::of(messenger::api::Failure::from(&e)));
        }
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(control::serve(
            listener,
            agent.clone(),
            cancel.child_token(),
        ));
        let rendezvous = home
            .config()
            .ok()
            .and_then(|c| c.rendezvous.first().cloned());
        Ok(Self {
            rendezvous,
            agent,
            events,
            metrics_addr: None,
            socket,
            cancel,
            tasks,
        })
    }

    /// The events, for a front end that reads them elsewhere (ours are
    /// then closed).
    pub(crate) fn take_events(&mut self) -> mpsc::Receiver<Event> {
        std::mem::replace(&mut self.events, mpsc::channel(1).1)
    }

    /// Stops serving, goes offline, and ends the agent.
    pub(crate) async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&self.socket);
        self.agent.shutdown().await;
    }
}

/// SIGINT and SIGTERM, both meaning "go offline and exit".
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
