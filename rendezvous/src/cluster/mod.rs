//! Several nodes, one directory: claims and live registrations in
//! PostgreSQL, presence changes over NATS.
//!
//! Each node still owns its own sessions. What it shares: claims go to
//! [`claims::PgStore`] (the database keeps every rule of a claim); each
//! registration it holds is written to the [`live::LiveTable`] and
//! published on the name's subject ([`presence`]); it subscribes to the
//! subjects of the names its sessions watch that somebody claimed (a name
//! nobody claimed costs nothing until it is claimed, which is announced),
//! and asks the table for names it is asked to resolve. What watched names
//! are (claimed, and online where) is read in one statement per batch,
//! by a task of its own: never one by one, and never in the way of
//! publishing the node's own changes. Nodes beat in the table; the users of a node
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
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use libp2p::PeerId;
use messenger_proto::Identity;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;
use messenger_proto::time::now_ms;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
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

/// Names one node subscribes to at most: past it, a watched name's
/// changes on other nodes are not pushed to this node's watchers (they
/// still resolve it), and the node says so.
pub const MAX_SUBSCRIPTIONS: usize = 65_536;

/// Names read from the database in one statement at most.
const LOOKUP_BATCH: usize = 1_000;

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
    claimed: HashSet<ScreenName>,
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

    fn claimed(&self, name: &ScreenName) {
        self.outbox.queue(|p| {
            p.claimed.insert(name.clone());
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
    claimed: async_nats::Subscriber,
    /// The cluster's certificate key: signs what this node publishes, and
    /// checks what the others do.
    signer: Identity,
    /// How many names this node follows (for the metrics).
    followed: Gauge,
    /// What was ignored for want of the cluster's signature.
    unsigned: Counter,
}

impl Cluster {
    /// Joins the cluster as `node`: the live table in `pool`'s database
    /// (rows of this node's previous run are dropped) and NATS at `nats`;
    /// what it publishes there is signed by `signer`, the certificate key
    /// every node of the cluster shares, and what it reads is checked
    /// against it.
    pub async fn join(
        pool: Pool,
        node: NodeId,
        nats_url: &str,
        signer: Identity,
    ) -> Result<Self, ClusterError> {
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
        let claimed = nats
            .subscribe(presence::CLAIMED)
            .await
            .map_err(|e| nats_err(e.to_string()))?;
        info!(node = %node, "joined the cluster");
        Ok(Self {
            table,
            outbox: Arc::default(),
            nats,
            nats_events,
            released,
            claimed,
            signer,
            followed: Gauge::default(),
            unsigned: Counter::default(),
        })
    }

    /// How many names the node follows across the cluster, as it changes.
    pub fn followed(&self) -> Gauge {
        self.followed.clone()
    }

    /// How many notes and announcements were ignored, not signed with the
    /// cluster's certificate key.
    pub fn unsigned(&self) -> Counter {
        self.unsigned.clone()
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
            mut claimed,
            signer,
            followed,
            unsigned,
        } = self;
        let verifier = signer.verifying_key();
        let mut node = Member {
            table,
            nats,
            registry,
            signer,
            verifier,
            subscriptions: HashMap::new(),
            forwarders: JoinSet::new(),
            lookups: JoinSet::new(),
            notes: mpsc::channel(NOTE_BACKLOG),
            out_of_step: false,
            dead: HashSet::new(),
            beating_since: None,
            said: Said::default(),
            followed,
            unsigned,
            notes_applied: 0,
            last_note: HashMap::new(),
        };
        let mut beat = tokio::time::interval(BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = outbox.notify.notified() => node.flush(outbox.take()).await,
                Some(message) = node.notes.1.recv() => node.on_note(&message),
                Some(message) = released.next() => node.on_released(&message),
                Some(message) = claimed.next() => node.on_claimed(&message).await,
                Some(done) = node.lookups.join_next(), if !node.lookups.is_empty() => {
                    if let Ok(done) = done {
                        node.on_looked_up(done).await;
                    }
                }
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
        node.lookups.shutdown().await;
        info!("left the cluster");
    }
}

/// What a look-up task of the cluster's brings back.
enum LookedUp {
    /// Which of the names asked about are claimed: those are subscribed
    /// to, then read again.
    Claimed(Result<Vec<(ScreenName, Option<Held>)>, StoreError>),
    /// Where names now subscribed to are online (`asked`: every name the
    /// statement was about; one not in `found` is not claimed any more),
    /// as read after note `since` was applied.
    Refreshed {
        asked: Vec<ScreenName>,
        found: Result<Vec<(ScreenName, Option<Held>)>, StoreError>,
        since: u64,
    },
}

/// When the node last said something that could repeat without end.
#[derive(Debug, Default)]
struct Said {
    full: Option<tokio::time::Instant>,
    forged: Option<tokio::time::Instant>,
    forged_since: u64,
}

/// How often such a thing is said at most.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// The cluster task's state.
struct Member {
    table: LiveTable,
    nats: async_nats::Client,
    registry: Arc<Registry>,
    /// Signs what this node publishes.
    signer: Identity,
    /// Checks what the others publish: the shared certificate key.
    verifier: ed25519_dalek::VerifyingKey,
    /// One forwarding task per watched name's subject.
    subscriptions: HashMap<ScreenName, AbortHandle>,
    forwarders: JoinSet<()>,
    /// Batched reads of watched names, off the publishing path.
    lookups: JoinSet<LookedUp>,
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
    said: Said,
    followed: Gauge,
    unsigned: Counter,
    /// Notes applied so far, and the count when each followed name's
    /// last one was: a read that started before a name's last note is
    /// older than what that note said, and is not applied to it.
    notes_applied: u64,
    last_note: HashMap<ScreenName, u64>,
}

impl Member {
    async fn flush(&mut self, pending: Pending) {
        let mut wanted = Vec::new();
        for (name, watching) in pending.interest {
            if watching {
                if !self.subscriptions.contains_key(&name) {
                    wanted.push(name);
                }
            } else if let Some(forwarder) = self.subscriptions.remove(&name) {
                forwarder.abort();
                self.last_note.remove(&name);
            }
        }
        self.followed.set(self.subscriptions.len() as i64);
        self.look_up_claims(wanted);
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
        for (subject, context, names) in [
            (
                presence::RELEASED,
                presence::RELEASED_CONTEXT,
                pending.released,
            ),
            (
                presence::CLAIMED,
                presence::CLAIMED_CONTEXT,
                pending.claimed,
            ),
        ] {
            for name in names {
                let signed = Signed::sign(&self.signer, context, &name);
                if let Err(e) = self
                    .nats
                    .publish(subject, codec::to_cbor(&signed).into())
                    .await
                {
                    warn!(%name, subject, "cannot announce a name: {e}");
                }
            }
        }
    }

    async fn publish(&self, name: &ScreenName, live: Option<SharedLive>) {
        let note = Note {
            name: name.clone(),
            node: self.table.node().to_owned(),
            live,
        };
        let signed = Signed::sign(&self.signer, presence::NOTE_CONTEXT, &note);
        if let Err(e) = self
            .nats
            .publish(presence::subject(name), codec::to_cbor(&signed).into())
            .await
        {
            warn!(%name, "cannot publish a presence change: {e}");
        }
    }

    /// What a look-up task found.
    async fn on_looked_up(&mut self, done: LookedUp) {
        match done {
            LookedUp::Claimed(Ok(claimed)) => {
                let mut subscribed = Vec::new();
                for (name, _) in claimed {
                    // Still watched, and not subscribed since.
                    if self.registry.is_watched(&name) && self.subscribe(&name).await {
                        subscribed.push(name);
                    }
                }
                self.refresh(subscribed);
            }
            LookedUp::Refreshed {
                asked,
                found: Ok(found),
                since,
            } => {
                let now = now_ms();
                let mut found: HashMap<ScreenName, Option<Held>> = found.into_iter().collect();
                for name in asked {
                    let held = found.remove(&name).flatten();
                    if self.last_note.get(&name).is_some_and(|at| *at > since) {
                        continue;
                    }
                    self.registry.remote_refreshed(&name, held, now);
                }
            }
            LookedUp::Claimed(Err(e)) | LookedUp::Refreshed { found: Err(e), .. } => {
                warn!("cannot read watched names from the database: {e}");
            }
        }
    }

    /// Reads, in batches apart, which of `names` anybody claimed (those
    /// are then followed).
    fn look_up_claims(&mut self, names: Vec<ScreenName>) {
        for batch in names.chunks(LOOKUP_BATCH) {
            let (table, names) = (self.table.clone(), batch.to_vec());
            self.lookups.spawn(async move {
                LookedUp::Claimed(
                    postgres::timed("looking watched names up", table.claimed_among(&names)).await,
                )
            });
        }
    }

    /// Reads again, in batches apart, where `names` are online.
    fn refresh(&mut self, names: Vec<ScreenName>) {
        let since = self.notes_applied;
        for batch in names.chunks(LOOKUP_BATCH) {
            let (table, asked) = (self.table.clone(), batch.to_vec());
            self.lookups.spawn(async move {
                let found =
                    postgres::timed("reading watched names", table.claimed_among(&asked)).await;
                LookedUp::Refreshed {
                    asked,
                    found,
                    since,
                }
            });
        }
    }

    /// Starts hearing of `name` (claimed, and watched here). False when it
    /// was heard of already, or cannot be.
    async fn subscribe(&mut self, name: &ScreenName) -> bool {
        if self.subscriptions.contains_key(name) {
            return false;
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            if self.said.full.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                warn!(
                    limit = MAX_SUBSCRIPTIONS,
                    "this node's sessions watch more names than it follows across the cluster; \
                     changes of the others on other nodes are not pushed here"
                );
                self.said.full = Some(tokio::time::Instant::now());
            }
            return false;
        }
        // Subscribing only hands a line to the connection's task: it is
        // in place before the names are read again.
        let mut subscriber = match self.nats.subscribe(presence::subject(name)).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                warn!(%name, "cannot subscribe to presence changes: {e}");
                return false;
            }
        };
        let notes = self.notes.0.clone();
        let forwarder = self.forwarders.spawn(async move {
            while let Some(message) = subscriber.next().await {
                if notes.send(message).await.is_err() {
                    break;
                }
            }
        });
        self.subscriptions.insert(name.clone(), forwarder);
        self.followed.set(self.subscriptions.len() as i64);
        true
    }

    /// What another node signed with the cluster's key, or `None` (said,
    /// at most every few seconds: anyone who can publish on the NATS
    /// server may send these).
    fn opened<T: serde::de::DeserializeOwned>(
        &mut self,
        message: &async_nats::Message,
        context: &[u8],
    ) -> Option<T> {
        let opened = codec::from_cbor::<Signed>(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                signed
                    .open::<T>(context, &self.verifier)
                    .map_err(|e| e.to_string())
            });
        match opened {
            Ok(value) => Some(value),
            Err(e) => {
                self.unsigned.inc();
                self.said.forged_since += 1;
                if self.said.forged.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                    warn!(
                        subject = %message.subject,
                        ignored = self.said.forged_since,
                        "ignoring what was published on NATS without the cluster's certificate key's \
                         signature (do the nodes share --certificate-key?): {e}"
                    );
                    self.said.forged = Some(tokio::time::Instant::now());
                    self.said.forged_since = 0;
                }
                None
            }
        }
    }

    fn on_note(&mut self, message: &async_nats::Message) {
        let Some(note) = self.opened::<Note>(message, presence::NOTE_CONTEXT) else {
            return;
        };
        if note.node == self.table.node() {
            return;
        }
        if presence::subject(&note.name) != message.subject.as_str() {
            warn!(name = %note.name, subject = %message.subject, "a presence note on another name's subject; ignored");
            return;
        }
        self.notes_applied += 1;
        if self.subscriptions.contains_key(&note.name) {
            self.last_note.insert(note.name.clone(), self.notes_applied);
        }
        self.registry
            .remote_changed(&note.name, &note.node, note.live, now_ms());
    }

    fn on_released(&mut self, message: &async_nats::Message) {
        if let Some(name) = self.opened::<ScreenName>(message, presence::RELEASED_CONTEXT) {
            self.registry.claim_released(&name);
        }
    }

    /// A name was claimed on another node: watched here, it is heard of
    /// from now on.
    async fn on_claimed(&mut self, message: &async_nats::Message) {
        if let Some(name) = self.opened::<ScreenName>(message, presence::CLAIMED_CONTEXT)
            && self.registry.is_watched(&name)
            && self.subscribe(&name).await
        {
            self.refresh(vec![name]);
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
                let (followed, unfollowed): (Vec<ScreenName>, Vec<ScreenName>) = self
                    .registry
                    .watched_names()
                    .into_iter()
                    .partition(|name| self.subscriptions.contains_key(name));
                self.refresh(followed);
                // Claims announced meanwhile were missed: asked again.
                self.look_up_claims(unfollowed);
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
