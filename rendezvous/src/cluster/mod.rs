//! Several nodes, one directory: claims and live registrations in
//! PostgreSQL, presence changes over NATS.
//!
//! Each node still owns its own sessions. What it shares: claims go to
//! [`claims::PgStore`] (the database keeps every rule of a claim); each
//! registration it holds is written to the [`live::LiveTable`] and
//! published on the name's subject ([`presence`]); it subscribes to the
//! subjects of the names its sessions watch, and asks the table for names
//! it is asked to resolve. Nodes beat in the table; the users of a node
//! that stops beating are offline everywhere within [`live::NODE_GRACE`]
//! plus one beat.
//!
//! One task per node ([`Cluster::run`]) does all of it; the registry
//! reaches it through a [`Shared`] that queues changes, coalesced per name.

pub mod claims;
pub mod live;
pub mod postgres;
pub mod presence;
mod recent;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use libp2p::PeerId;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::time::now_ms;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::Registry;
use crate::shared::{Held, NodeId, Shared, SharedLive};
use crate::store::StoreError;
use live::{BEAT_EVERY, LiveTable};
use presence::Note;

/// How long the node waits for NATS when it starts.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// NATS connection events not yet handled.
const NATS_EVENT_BACKLOG: usize = 64;

/// Presence notes received and not yet applied; past it, subscriptions
/// wait (NATS then counts this node a slow consumer and says so).
const NOTE_BACKLOG: usize = 4096;

/// Why the node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The shared database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS could not be reached.
    #[error("cannot reach NATS at {url}: {reason}")]
    Nats {
        /// The server given.
        url: String,
        /// Why.
        reason: String,
    },
}

/// What the registry has asked the cluster to do, coalesced per name.
#[derive(Debug, Default)]
struct Outbox {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    live: HashMap<ScreenName, Option<SharedLive>>,
    interest: HashMap<ScreenName, bool>,
    released: HashSet<ScreenName>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, change: impl FnOnce(&mut Pending)) {
        change(&mut self.lock());
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}

/// The registry's side of the cluster.
#[derive(Debug)]
struct Link {
    table: LiveTable,
    runtime: Handle,
    outbox: Arc<Outbox>,
    recent: recent::RecentLookups,
}

impl Shared for Link {
    fn lookup(&self, name: &ScreenName) -> Result<Option<Held>, StoreError> {
        let now = std::time::Instant::now();
        if let Some(held) = self.recent.get(name, now) {
            return Ok(held);
        }
        let held = postgres::block_on(&self.runtime, "looking a name up", self.table.lookup(name))?;
        self.recent.put(name, held.clone(), now);
        Ok(held)
    }

    fn lookup_owner(&self, owner: &PeerId) -> Result<Vec<(ScreenName, Held)>, StoreError> {
        postgres::block_on(
            &self.runtime,
            "looking a peer up",
            self.table.lookup_owner(owner),
        )
    }

    fn changed(&self, name: &ScreenName, live: Option<SharedLive>) {
        self.recent.forget(name);
        self.outbox.queue(|p| {
            p.live.insert(name.clone(), live);
        });
    }

    fn interest(&self, name: &ScreenName, watching: bool) {
        self.outbox.queue(|p| {
            p.interest.insert(name.clone(), watching);
        });
    }

    fn released(&self, name: &ScreenName) {
        self.recent.forget(name);
        self.outbox.queue(|p| {
            p.released.insert(name.clone());
        });
    }
}

/// This node's membership of a cluster.
#[derive(Debug)]
pub struct Cluster {
    table: LiveTable,
    outbox: Arc<Outbox>,
    nats: async_nats::Client,
    nats_events: mpsc::Receiver<async_nats::Event>,
    released: async_nats::Subscriber,
}

impl Cluster {
    /// Joins the cluster as `node`: the live table in `pool`'s database
    /// (rows of this node's previous run are dropped) and NATS at `nats`.
    pub async fn join(pool: Pool, node: NodeId, nats_url: &str) -> Result<Self, ClusterError> {
        let table = LiveTable::new(pool, node.clone());
        postgres::timed("leaving the live table", table.leave()).await?;
        postgres::timed("beating", table.beat()).await?;
        // Connection events are few; the client waits for room rather
        // than lose a reconnection (which triggers catching up).
        let (events_tx, nats_events) = mpsc::channel(NATS_EVENT_BACKLOG);
        let nats_err = |reason: String| ClusterError::Nats {
            url: nats_url.to_owned(),
            reason,
        };
        let connecting = async_nats::ConnectOptions::new()
            .name(format!("rendezvous {node}"))
            .connection_timeout(NATS_CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send(event).await;
                }
            })
            .connect(nats_url);
        let nats = tokio::time::timeout(NATS_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| nats_err("no answer".into()))?
            .map_err(|e| nats_err(e.to_string()))?;
        let released = nats
            .subscribe(presence::RELEASED)
            .await
            .map_err(|e| nats_err(e.to_string()))?;
        info!(node = %node, "joined the cluster");
        Ok(Self {
            table,
            outbox: Arc::default(),
            nats,
            nats_events,
            released,
        })
    }

    /// What the registry uses to reach the cluster; look-ups block the
    /// calling thread on the current runtime.
    pub fn shared(&self) -> Arc<dyn Shared> {
        Arc::new(Link {
            table: self.table.clone(),
            runtime: Handle::current(),
            outbox: self.outbox.clone(),
            recent: recent::RecentLookups::default(),
        })
    }

    /// Keeps `registry` in step with the cluster until `stop`; then says
    /// what is still queued (the node's users going offline) and leaves.
    pub async fn run(self, registry: Arc<Registry>, stop: CancellationToken) {
        let Self {
            table,
            outbox,
            nats,
            mut nats_events,
            mut released,
        } = self;
        let mut node = Member {
            table,
            nats,
            registry,
            subscriptions: HashMap::new(),
            forwarders: JoinSet::new(),
            notes: mpsc::channel(NOTE_BACKLOG),
            out_of_step: false,
            dead: HashSet::new(),
            beating_since: None,
        };
        let mut beat = tokio::time::interval(BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = outbox.notify.notified() => node.flush(outbox.take()).await,
                Some(message) = node.notes.1.recv() => node.on_note(&message),
                Some(message) = released.next() => node.on_released(&message),
                Some(event) = nats_events.recv() => node.on_nats_event(event).await,
                _ = beat.tick() => node.beat().await,
                Some(_) = node.forwarders.join_next(), if !node.forwarders.is_empty() => {}
            }
        }
        node.flush(outbox.take()).await;
        if let Err(e) = node.nats.flush().await {
            debug!("cannot flush NATS while leaving: {e}");
        }
        if let Err(e) = postgres::timed("leaving", node.table.leave()).await {
            warn!("cannot remove this node's users from the live table: {e}");
        }
        node.forwarders.shutdown().await;
        info!("left the cluster");
    }
}

/// The cluster task's state.
struct Member {
    table: LiveTable,
    nats: async_nats::Client,
    registry: Arc<Registry>,
    /// One forwarding task per watched name's subject.
    subscriptions: HashMap<ScreenName, AbortHandle>,
    forwarders: JoinSet<()>,
    notes: (
        mpsc::Sender<async_nats::Message>,
        mpsc::Receiver<async_nats::Message>,
    ),
    /// A write to the live table failed: this node's rows are rewritten at
    /// the next beat that reaches the database.
    out_of_step: bool,
    /// Nodes known dead at the last beat.
    dead: HashSet<NodeId>,
    /// Since when this node's beats reach the database without a gap.
    /// Until that is [`live::NODE_GRACE`] ago the others may not have
    /// beaten since the database came back, and are not judged.
    beating_since: Option<tokio::time::Instant>,
}

impl Member {
    async fn flush(&mut self, pending: Pending) {
        for (name, watching) in pending.interest {
            if watching {
                self.subscribe(name).await;
            } else if let Some(forwarder) = self.subscriptions.remove(&name) {
                forwarder.abort();
            }
        }
        let changes: Vec<(ScreenName, Option<SharedLive>)> = pending.live.into_iter().collect();
        for (name, live) in &changes {
            self.publish(name, live.clone()).await;
        }
        if !changes.is_empty()
            && let Err(e) = postgres::timed("writing presence", self.table.write(&changes)).await
        {
            if !self.out_of_step {
                warn!(
                    names = changes.len(),
                    "cannot write presence to the live table (rewritten when it is back): {e}"
                );
            }
            self.out_of_step = true;
        }
        for name in pending.released {
            if let Err(e) = self
                .nats
                .publish(presence::RELEASED, name.as_str().to_owned().into())
                .await
            {
                warn!(%name, "cannot announce a released name: {e}");
            }
        }
    }

    async fn publish(&self, name: &ScreenName, live: Option<SharedLive>) {
        let note = Note {
            name: name.clone(),
            node: self.table.node().to_owned(),
            live,
        };
        if let Err(e) = self
            .nats
            .publish(presence::subject(name), codec::to_cbor(&note).into())
            .await
        {
            warn!(%name, "cannot publish a presence change: {e}");
        }
    }

    /// Starts hearing of `name`, then reads where it is now.
    async fn subscribe(&mut self, name: ScreenName) {
        if self.subscriptions.contains_key(&name) {
            return;
        }
        match self.nats.subscribe(presence::subject(&name)).await {
            Ok(mut subscriber) => {
                let notes = self.notes.0.clone();
                let forwarder = self.forwarders.spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        if notes.send(message).await.is_err() {
                            break;
                        }
                    }
                });
                self.subscriptions.insert(name.clone(), forwarder);
            }
            Err(e) => warn!(%name, "cannot subscribe to presence changes: {e}"),
        }
        self.refresh(&name).await;
    }

    async fn refresh(&self, name: &ScreenName) {
        match postgres::timed("looking a watched name up", self.table.lookup(name)).await {
            Ok(held) => self.registry.remote_refreshed(name, held, now_ms()),
            Err(e) => warn!(%name, "cannot read where a watched name is online: {e}"),
        }
    }

    fn on_note(&self, message: &async_nats::Message) {
        let note: Note = match codec::from_cbor(&message.payload) {
            Ok(note) => note,
            Err(e) => {
                warn!(subject = %message.subject, "a presence note does not decode; ignored: {e}");
                return;
            }
        };
        if note.node == self.table.node() {
            return;
        }
        if presence::subject(&note.name) != message.subject.as_str() {
            warn!(name = %note.name, subject = %message.subject, "a presence note on another name's subject; ignored");
            return;
        }
        self.registry
            .remote_changed(&note.name, &note.node, note.live, now_ms());
    }

    fn on_released(&self, message: &async_nats::Message) {
        match std::str::from_utf8(&message.payload).map(ScreenName::parse) {
            Ok(Ok(name)) => self.registry.claim_released(&name),
            _ => warn!("an announced release does not name a screen name; ignored"),
        }
    }

    async fn on_nats_event(&mut self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                // Changes may have been missed meanwhile, ours and theirs.
                info!("connected to NATS; catching up on presence");
                for (name, live) in self.registry.held_here() {
                    self.publish(&name, Some(live)).await;
                }
                for name in self.registry.watched_names() {
                    self.refresh(&name).await;
                }
            }
            async_nats::Event::Disconnected => {
                warn!("lost NATS: presence changes on other nodes wait until it is back");
            }
            other => debug!(%other, "NATS"),
        }
    }

    async fn beat(&mut self) {
        match postgres::timed("beating", self.table.beat()).await {
            Ok(dead) => {
                let since = *self
                    .beating_since
                    .get_or_insert_with(tokio::time::Instant::now);
                let dead: HashSet<NodeId> = if since.elapsed() >= live::NODE_GRACE {
                    dead.into_iter().collect()
                } else {
                    // Only those already known dead.
                    dead.into_iter().filter(|n| self.dead.contains(n)).collect()
                };
                for node in dead.difference(&self.dead) {
                    warn!(%node, "a node of the cluster stopped beating: its users are offline");
                }
                self.registry.nodes_gone(&dead, now_ms());
                self.dead = dead;
                if self.out_of_step {
                    let held = self.registry.held_here();
                    match postgres::timed("rewriting presence", self.table.replace_mine(&held))
                        .await
                    {
                        Ok(()) => {
                            info!(
                                online = held.len(),
                                "the live table has this node's users again"
                            );
                            self.out_of_step = false;
                        }
                        Err(e) => debug!("cannot rewrite presence yet: {e}"),
                    }
                }
            }
            Err(e) => {
                self.out_of_step = true;
                self.beating_since = None;
                debug!("cannot beat: {e}");
            }
        }
    }
}
