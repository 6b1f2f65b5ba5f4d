//! The directory's state and rules, apart from the network.
//!
//! Durable claims live in a [`ClaimStore`]; addresses and presence are live
//! state tied to the session that registered them. Every method is plain
//! synchronous code that the session tasks call, and that unit tests call
//! directly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::{Multiaddr, PeerId};
use messenger_proto::CLOCK_SKEW_MS;
use messenger_proto::directory::{
    ErrorCode, MAX_RECORD_TTL_MS, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST, MAX_WATCHED, Reply,
    Resolution,
};
use messenger_proto::identity::PeerKey;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use messenger_proto::record::{RecordError, Registration, SignedRecord};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::shared::{Held, NodeId, Shared, SharedLive};
use crate::store::{Claim, ClaimOutcome, ClaimStore, StoreError};

/// Identifies one directory session (one stream) for the node's lifetime.
/// Sessions are numbered from 1.
pub type SessionId = u64;

/// The session of a registration held by another node of the cluster.
const ELSEWHERE: SessionId = 0;

/// A live registration: where the owner is now, and how it wants to be shown.
#[derive(Debug, Clone)]
struct Live {
    owner: PeerId,
    record: SignedRecord,
    seq: u64,
    expires_at: u64,
    session: SessionId,
    status: Status,
    status_text: String,
    addrs: Vec<Multiaddr>,
    visible_to: HashSet<PeerId>,
    /// When the owner went invisible during this session, if it did.
    hidden_since: Option<u64>,
}

impl Live {
    /// A registration another node holds, its record checked again.
    fn from_shared(shared: SharedLive) -> Result<(ScreenName, Self), RecordError> {
        let record = shared.record.open()?;
        Ok((
            record.name,
            Self {
                owner: record.peer_id,
                record: shared.record,
                seq: record.seq,
                expires_at: record.expires_at,
                session: ELSEWHERE,
                status: record.status,
                status_text: record.status_text,
                addrs: record.addrs,
                visible_to: shared.visible_to.into_iter().collect(),
                hidden_since: shared.hidden_since,
            },
        ))
    }

    /// What other nodes are told of it.
    fn to_shared(&self) -> SharedLive {
        SharedLive {
            record: self.record.clone(),
            visible_to: self.visible_to.iter().copied().collect(),
            hidden_since: self.hidden_since,
        }
    }

    /// What watchers could notice: a change here is pushed.
    fn shown(&self) -> (Status, &str, &[Multiaddr], &HashSet<PeerId>) {
        (
            self.status,
            &self.status_text,
            &self.addrs,
            &self.visible_to,
        )
    }

    /// When the owner stops being online: the last time others saw it.
    fn last_seen_at_end(&self, now: u64) -> Option<u64> {
        match self.status {
            Status::Invisible => self.hidden_since,
            _ => Some(now),
        }
    }
}

/// Names whose presence changed, waiting to be pushed on one session.
///
/// Coalescing: a name changed twice before the session writes is pushed
/// once, with its presence at writing time. Memory is bounded by the
/// number of names the session watches.
#[derive(Debug)]
pub struct PushQueue {
    pending: Mutex<Vec<ScreenName>>,
    notify: Notify,
    /// Names waiting over every session (a metric).
    depth: Gauge,
}

impl PushQueue {
    fn new(depth: Gauge) -> Self {
        Self {
            pending: Mutex::default(),
            notify: Notify::new(),
            depth,
        }
    }

    fn push(&self, name: &ScreenName) {
        let mut pending = lock(&self.pending);
        if !pending.contains(name) {
            pending.push(name.clone());
            self.depth.inc();
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Waits until something is pending.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes the names to push.
    pub fn take(&self) -> Vec<ScreenName> {
        let taken = std::mem::take(&mut *lock(&self.pending));
        self.depth.dec_by(taken.len() as i64);
        taken
    }
}

impl Drop for PushQueue {
    fn drop(&mut self) {
        self.depth.dec_by(lock(&self.pending).len() as i64);
    }
}

#[derive(Debug)]
struct SessionState {
    queue: Arc<PushQueue>,
    watching: HashSet<ScreenName>,
}

/// A registration another node holds, kept while this node's sessions
/// watch its name.
#[derive(Debug)]
struct Remote {
    node: NodeId,
    live: Live,
}

#[derive(Debug, Default)]
struct LiveState {
    by_name: HashMap<ScreenName, Live>,
    /// Watched names online on other nodes of the cluster: kept current by
    /// the cluster, so that what is here (or missing) is the truth.
    remote: HashMap<ScreenName, Remote>,
    /// Last seen of names that went offline while this node ran.
    last_seen: HashMap<ScreenName, u64>,
    watchers: HashMap<ScreenName, HashSet<SessionId>>,
    sessions: HashMap<SessionId, SessionState>,
}

impl LiveState {
    /// Where `name` is online now: on this node, else on another.
    fn current(&self, name: &ScreenName) -> Option<&Live> {
        self.by_name
            .get(name)
            .or_else(|| self.remote.get(name).map(|r| &r.live))
    }

    fn notify(&self, name: &ScreenName) {
        if let Some(sessions) = self.watchers.get(name) {
            for session in sessions {
                if let Some(state) = self.sessions.get(session) {
                    state.queue.push(name);
                }
            }
        }
    }

    /// Takes every registration matching `which` offline; returns the
    /// names with when they were last seen, to persist.
    fn offline_where(
        &mut self,
        now: u64,
        which: impl Fn(&Live) -> bool,
    ) -> Vec<(ScreenName, Option<u64>)> {
        let names: Vec<ScreenName> = self
            .by_name
            .iter()
            .filter(|(_, l)| which(l))
            .map(|(n, _)| n.clone())
            .collect();
        names
            .into_iter()
            .map(|name| {
                let seen = self.go_offline(&name, now);
                (name, seen)
            })
            .collect()
    }

    /// Takes `name` offline, remembering when it was last seen.
    fn go_offline(&mut self, name: &ScreenName, now: u64) -> Option<u64> {
        let live = self.by_name.remove(name)?;
        let seen = live.last_seen_at_end(now);
        if let Some(at) = seen {
            self.last_seen.insert(name.clone(), at);
        }
        self.notify(name);
        seen
    }
}

/// Who sends a registration: the session's peer, with its key decoded
/// once for the session when it is an ed25519 key.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// The peer at the other end of the connection.
    pub peer: PeerId,
    /// Its key, if decoded.
    pub key: Option<&'a PeerKey>,
}

/// A registration that passed every check but its claim.
struct CheckedRegistration {
    record: Registration,
    signed: SignedRecord,
    visible_to: Vec<PeerId>,
    session: SessionId,
    /// Not a renewal within its session: the store must accept the claim.
    needs_claim: bool,
}

/// The directory: durable claims plus live presence and watchers.
#[derive(Debug)]
pub struct Registry<S: ?Sized = dyn ClaimStore> {
    store: Arc<S>,
    /// The other nodes, when this one is part of a cluster.
    shared: Option<Arc<dyn Shared>>,
    live: Mutex<LiveState>,
    /// Claims read or written so far, so that resolving a name does not
    /// open a database transaction. Every claim change goes through the
    /// registry, which keeps this in step with the store.
    claims: std::sync::RwLock<HashMap<ScreenName, Claim>>,
    /// Presence changes waiting to be pushed, over every session.
    push_depth: Gauge,
}

impl<S: ClaimStore + ?Sized> Registry<S> {
    /// A registry over `store`, with nobody online.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            shared: None,
            live: Mutex::new(LiveState::default()),
            claims: Default::default(),
            push_depth: Gauge::default(),
        }
    }

    /// How many presence changes wait to be pushed, over every session.
    pub fn push_depth(&self) -> Gauge {
        self.push_depth.clone()
    }

    /// How long the store's commits take, if it measures them.
    pub fn commit_latency(&self) -> Histogram {
        self.store
            .commit_latency()
            .unwrap_or_else(crate::store::commit_histogram)
    }

    /// A registry that shares live registrations with other nodes.
    pub fn with_shared(mut self, shared: Arc<dyn Shared>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether this node is part of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.shared.is_some()
    }

    /// The claim on `name`: from memory, else from the store.
    fn claim_of(&self, name: &ScreenName) -> Result<Option<Claim>, StoreError> {
        if let Some(claim) = self
            .claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(Some(claim.clone()));
        }
        let claim = self.store.get(name)?;
        if let Some(claim) = &claim {
            self.remember(name, claim.clone());
        }
        Ok(claim)
    }

    fn remember(&self, name: &ScreenName, claim: Claim) {
        self.claims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), claim);
    }

    fn forget(&self, name: &ScreenName) {
        self.claims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn live(&self) -> MutexGuard<'_, LiveState> {
        lock(&self.live)
    }

    /// A session starts; pushes for it go to the returned queue.
    pub fn open_session(&self, session: SessionId) -> Arc<PushQueue> {
        let queue = Arc::new(PushQueue::new(self.push_depth.clone()));
        self.live().sessions.insert(
            session,
            SessionState {
                queue: queue.clone(),
                watching: HashSet::new(),
            },
        );
        queue
    }

    /// Handles a registration from `peer` on `session`, blocking until
    /// its claim (if any) is committed: for the tests' synchronous calls
    /// only (the node awaits [`Registry::register_async`]).
    #[cfg(test)]
    pub(crate) fn register(
        &self,
        peer: PeerId,
        session: SessionId,
        signed: SignedRecord,
        visible_to: Vec<PeerId>,
        now: u64,
    ) -> Reply {
        let key = PeerKey::of(peer);
        let signer = Signer {
            peer,
            key: key.as_ref(),
        };
        futures::executor::block_on(self.register_async(signer, session, signed, visible_to, now))
    }

    /// Handles a registration from `signer` on `session`; the claim, if
    /// one is needed, is awaited without holding a thread while it commits.
    pub async fn register_async(
        &self,
        signer: Signer<'_>,
        session: SessionId,
        signed: SignedRecord,
        visible_to: Vec<PeerId>,
        now: u64,
    ) -> Reply {
        let checked = match self.check_registration(signer, session, signed, visible_to, now) {
            Ok(checked) => checked,
            Err(refused) => return *refused,
        };
        let claimed = if checked.needs_claim {
            let record = &checked.record;
            let claim = self
                .store
                .claim(&record.name, record.peer_id, record.seq, now);
            Some(claim.await)
        } else {
            None
        };
        self.settle_registration(checked, claimed, now)
    }

    /// Every check of a registration that needs no claim: signature,
    /// limits, who registers, expiry, and a renewal's sequence number.
    fn check_registration(
        &self,
        signer: Signer<'_>,
        session: SessionId,
        signed: SignedRecord,
        visible_to: Vec<PeerId>,
        now: u64,
    ) -> Result<CheckedRegistration, Box<Reply>> {
        let opened = match signer.key {
            Some(key) => signed.open_as(key),
            None => signed.open(),
        };
        let record = match opened {
            Ok(record) => record,
            Err(e) => {
                let code = ErrorCode::from(&e);
                let message = match code {
                    ErrorCode::BadSignature => {
                        format!("{e}: a record must be signed by the key of the peer id it names")
                    }
                    // `malformed` is kept for frames that do not decode at
                    // all (which end the session).
                    ErrorCode::InvalidRecord if matches!(e, RecordError::Signed(_)) => {
                        format!("the record's payload is not a registration: {e}")
                    }
                    _ => e.to_string(),
                };
                return Err(Box::new(Reply::error(code, message)));
            }
        };
        if visible_to.len() > MAX_VISIBLE_TO {
            return Err(Box::new(Reply::error(
                ErrorCode::LimitExceeded,
                format!(
                    "visible_to lists {} peers; at most {MAX_VISIBLE_TO} are allowed",
                    visible_to.len()
                ),
            )));
        }
        let peer = signer.peer;
        if record.peer_id != peer {
            return Err(Box::new(Reply::error(
                ErrorCode::WrongPeer,
                format!(
                    "the record names peer {} but this connection is peer {peer}; a peer registers only itself",
                    record.peer_id
                ),
            )));
        }
        if record.expires_at <= now || record.expires_at > now + MAX_RECORD_TTL_MS + CLOCK_SKEW_MS {
            return Err(Box::new(Reply::error(
                ErrorCode::BadExpiry,
                format!(
                    "the record expires at {} ms but the node's clock says {now} ms; expiry must be in the future and at most {} hours ahead (check your clock)",
                    record.expires_at,
                    MAX_RECORD_TTL_MS / 3_600_000
                ),
            )));
        }
        // A renewal within the same session is checked and kept in memory;
        // the first registration of a session goes to disk.
        let renewal = {
            let live = self.live();
            match live.by_name.get(&record.name) {
                Some(l) if l.owner == peer && l.session == session => {
                    if record.seq <= l.seq {
                        return Err(Box::new(stale(&record.name, record.seq, l.seq)));
                    }
                    true
                }
                _ => false,
            }
        };
        Ok(CheckedRegistration {
            record,
            signed,
            visible_to,
            session,
            needs_claim: !renewal,
        })
    }

    /// Takes in a checked registration once its claim, if it needed one,
    /// is answered: the record goes live, watchers are told.
    fn settle_registration(
        &self,
        checked: CheckedRegistration,
        claimed: Option<Result<ClaimOutcome, StoreError>>,
        now: u64,
    ) -> Reply {
        let CheckedRegistration {
            record,
            signed,
            visible_to,
            session,
            needs_claim: _,
        } = checked;
        let (name, peer) = (record.name, record.peer_id);
        let mut new_claim = false;
        match claimed {
            None => {}
            Some(Ok(ClaimOutcome::Created(claim))) => {
                info!(%name, %peer, "name claimed");
                self.remember(&name, claim);
                new_claim = true;
                if let Some(shared) = &self.shared {
                    shared.claimed(&name);
                }
            }
            Some(Ok(ClaimOutcome::Renewed(claim))) => self.remember(&name, claim),
            Some(Ok(ClaimOutcome::Taken(_))) => {
                return Reply::error(
                    ErrorCode::NameTaken,
                    format!("name taken: {name} is owned by another key"),
                );
            }
            Some(Ok(ClaimOutcome::Stale(claim))) => return stale(&name, record.seq, claim.seq),
            Some(Ok(ClaimOutcome::TooMany(held))) => {
                warn!(%name, %peer, held, "claim refused: the key holds the most names allowed");
                return Reply::error(
                    ErrorCode::LimitExceeded,
                    format!(
                        "this key already holds {held} names, the most one key may hold on this node; release one to claim {name}"
                    ),
                );
            }
            Some(Err(e)) => return internal(e),
        }

        let expires_at = record.expires_at;
        let mut live = self.live();
        let previous = live.by_name.get(&name);
        let hidden_since = match (previous, record.status) {
            (Some(p), Status::Invisible) if p.status == Status::Invisible => p.hidden_since,
            (Some(_), Status::Invisible) => Some(now),
            _ => None,
        };
        let next = Live {
            owner: peer,
            record: signed,
            seq: record.seq,
            expires_at,
            session,
            status: record.status,
            status_text: record.status_text,
            addrs: record.addrs,
            visible_to: visible_to.into_iter().collect(),
            hidden_since,
        };
        let changed = previous.is_none_or(|p| p.shown() != next.shown());
        if next.status != Status::Invisible {
            live.last_seen.remove(&name);
        }
        if let Some(shared) = &self.shared {
            shared.changed(&name, Some(next.to_shared()));
        }
        live.by_name.insert(name.clone(), next);
        if changed {
            live.notify(&name);
        }
        Reply::Registered {
            name,
            new_claim,
            expires_at,
            certificate: None,
        }
    }

    /// Looks a name up for `viewer`.
    pub fn resolve(&self, raw: &str, viewer: PeerId, now: u64) -> Reply {
        let name = match ScreenName::parse(raw) {
            Ok(name) => name,
            Err(e) => return Reply::error(ErrorCode::InvalidName, e.to_string()),
        };
        let elsewhere = self.fetch_elsewhere(&name);
        match self.view_with(&name, viewer, now, elsewhere) {
            Ok(Some(resolution)) => Reply::Resolved(resolution),
            Ok(None) => Reply::error(ErrorCode::NoSuchName, format!("no such name: {name}")),
            Err(e) => internal(e),
        }
    }

    /// The registration of `name` on another node, when this node does not
    /// know it already (it is not online here, nor watched here). A store
    /// that cannot be reached leaves what this node knows. May block.
    fn fetch_elsewhere(&self, name: &ScreenName) -> Option<Live> {
        let shared = self.shared.as_ref()?;
        {
            let live = self.live();
            if live.by_name.contains_key(name) || live.watchers.contains_key(name) {
                return None;
            }
        }
        match shared.lookup(name) {
            Ok(held) => held
                .and_then(|held| decode_held(name, held))
                .map(|r| r.live),
            Err(e) => {
                warn!(%name, "cannot look the name up on the other nodes: {e}");
                None
            }
        }
    }

    /// What `viewer` is shown of `name`; `None` if nobody owns it. Never
    /// asks other nodes: what this node knows.
    pub fn view(
        &self,
        name: &ScreenName,
        viewer: PeerId,
        now: u64,
    ) -> Result<Option<Resolution>, StoreError> {
        self.view_with(name, viewer, now, None)
    }

    /// [`Self::view`], with a registration fetched from another node.
    fn view_with(
        &self,
        name: &ScreenName,
        viewer: PeerId,
        now: u64,
        elsewhere: Option<Live>,
    ) -> Result<Option<Resolution>, StoreError> {
        let Some(claim) = self.claim_of(name)? else {
            return Ok(None);
        };
        let live = self.live();
        let current = live
            .current(name)
            .or(elsewhere.as_ref())
            .filter(|l| l.owner == claim.owner && l.expires_at > now);
        let stored_last_seen = live.last_seen.get(name).copied().or(claim.last_seen);
        let resolution = match current {
            Some(l) if l.status != Status::Invisible => Resolution {
                name: name.clone(),
                owner: claim.owner,
                presence: Presence::from(l.status),
                status_text: l.status_text.clone(),
                last_seen: Some(now),
                record: Some(l.record.clone()),
            },
            Some(l) => {
                let may_dial = viewer == l.owner || l.visible_to.contains(&viewer);
                Resolution {
                    name: name.clone(),
                    owner: claim.owner,
                    presence: Presence::Offline,
                    status_text: String::new(),
                    last_seen: l.hidden_since.or(stored_last_seen),
                    record: may_dial.then(|| l.record.clone()),
                }
            }
            None => Resolution {
                name: name.clone(),
                owner: claim.owner,
                presence: Presence::Offline,
                status_text: String::new(),
                last_seen: stored_last_seen,
                record: None,
            },
        };
        Ok(Some(resolution))
    }

    /// Watches `raw` names on `session`; their presence is pushed.
    pub fn watch(&self, session: SessionId, raw: &[String]) -> Reply {
        if raw.len() > MAX_WATCH_PER_REQUEST {
            return Reply::error(
                ErrorCode::LimitExceeded,
                format!(
                    "{} names in one watch request; at most {MAX_WATCH_PER_REQUEST} are allowed",
                    raw.len()
                ),
            );
        }
        let names = match raw
            .iter()
            .map(|n| ScreenName::parse(n))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(names) => names,
            Err(e) => return Reply::error(ErrorCode::InvalidName, e.to_string()),
        };
        let mut live = self.live();
        let Some(state) = live.sessions.get_mut(&session) else {
            return Reply::error(ErrorCode::Internal, "session is not open");
        };
        let after: HashSet<&ScreenName> = state.watching.iter().chain(names.iter()).collect();
        if after.len() > MAX_WATCHED {
            return Reply::error(
                ErrorCode::LimitExceeded,
                format!("a session may watch at most {MAX_WATCHED} names"),
            );
        }
        for name in &names {
            state.watching.insert(name.clone());
            // The current presence is pushed right away.
            state.queue.push(name);
        }
        let watched = state.watching.len() as u32;
        for name in names {
            let sessions = live.watchers.entry(name.clone()).or_default();
            if sessions.is_empty()
                && let Some(shared) = &self.shared
            {
                shared.interest(&name, true);
            }
            sessions.insert(session);
        }
        Reply::Watching { watched }
    }

    /// Stops watching `raw` names on `session`.
    pub fn unwatch(&self, session: SessionId, raw: &[String]) -> Reply {
        let mut live = self.live();
        let names: Vec<ScreenName> = raw
            .iter()
            .filter_map(|n| ScreenName::parse(n).ok())
            .collect();
        let Some(state) = live.sessions.get_mut(&session) else {
            return Reply::error(ErrorCode::Internal, "session is not open");
        };
        for name in &names {
            state.watching.remove(name);
        }
        let watched = state.watching.len() as u32;
        for name in &names {
            self.unwatch_one(&mut live, name, session);
        }
        Reply::Unwatched { watched }
    }

    /// The names `peer_id` has registered now and `viewer` may see. Only
    /// current registrations are answered, so the directory cannot be
    /// walked by peer id: a peer that is offline or invisible to the viewer
    /// gets the same answer as one that never existed.
    pub fn resolve_peer(&self, peer_id: PeerId, viewer: PeerId, now: u64) -> Reply {
        let owned = match self.store.names_of(&peer_id) {
            Ok(names) => names,
            Err(e) => return internal(e),
        };
        // Registrations on other nodes, for names not online here.
        let mut elsewhere: HashMap<ScreenName, Live> = HashMap::new();
        if let Some(shared) = &self.shared {
            match shared.lookup_owner(&peer_id) {
                Ok(held) => {
                    for (name, held) in held {
                        if let Some(remote) = decode_held(&name, held) {
                            elsewhere.insert(name, remote.live);
                        }
                    }
                }
                Err(e) => warn!(%peer_id, "cannot look the peer up on the other nodes: {e}"),
            }
        }
        let names: Vec<ScreenName> = {
            let live = self.live();
            owned
                .into_iter()
                .filter(|name| {
                    live.current(name).or(elsewhere.get(name)).is_some_and(|l| {
                        l.owner == peer_id
                            && l.expires_at > now
                            && (l.status != Status::Invisible
                                || viewer == l.owner
                                || l.visible_to.contains(&viewer))
                    })
                })
                .collect()
        };
        if names.is_empty() {
            return Reply::error(
                ErrorCode::NoSuchName,
                format!("no current registration for peer {peer_id}"),
            );
        }
        Reply::Names { peer_id, names }
    }

    /// Releases the names nobody has registered for `lease`; names online
    /// now stay. Returns how many were released. May block on disk.
    pub fn release_unused(&self, lease: std::time::Duration, now: u64) -> usize {
        let cutoff = now.saturating_sub(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let keep = |name: &ScreenName| self.live().by_name.contains_key(name);
        let released = match self.store.release_unused(cutoff, &keep) {
            Ok(released) => released,
            Err(e) => {
                warn!("cannot release unused names: {e}");
                return 0;
            }
        };
        for (name, owner) in &released {
            self.forget(name);
            if let Some(shared) = &self.shared {
                shared.released(name);
            }
            let mut live = self.live();
            live.last_seen.remove(name);
            live.notify(name);
            info!(%name, %owner, "name released: unused for longer than its lease");
        }
        released.len()
    }

    /// Gives a name up, if `peer` owns it. May block on disk.
    pub fn release(&self, peer: PeerId, raw: &str) -> Reply {
        let name = match ScreenName::parse(raw) {
            Ok(name) => name,
            Err(e) => return Reply::error(ErrorCode::InvalidName, e.to_string()),
        };
        match self.claim_of(&name) {
            Ok(None) => {
                return Reply::error(ErrorCode::NoSuchName, format!("no such name: {name}"));
            }
            Ok(Some(claim)) if claim.owner != peer => {
                return Reply::error(
                    ErrorCode::NotOwner,
                    format!("{name} is owned by another key; only its owner may release it"),
                );
            }
            Ok(Some(_)) => {}
            Err(e) => return internal(e),
        }
        match self.store.release(&name, &peer) {
            Ok(true) => {
                self.forget(&name);
                if let Some(shared) = &self.shared {
                    shared.changed(&name, None);
                    shared.released(&name);
                }
                let mut live = self.live();
                live.by_name.remove(&name);
                live.remote.remove(&name);
                live.last_seen.remove(&name);
                live.notify(&name);
                info!(%name, %peer, "name released");
                Reply::Released { name }
            }
            Ok(false) => Reply::error(
                ErrorCode::NotOwner,
                format!("{name} is not owned by this key"),
            ),
            Err(e) => internal(e),
        }
    }

    /// The session ended: everything it registered goes offline and its
    /// watches end. May block on disk.
    pub fn session_ended(&self, session: SessionId, now: u64) {
        let gone: Vec<(ScreenName, Option<u64>)> = {
            let mut live = self.live();
            if let Some(state) = live.sessions.remove(&session) {
                for name in &state.watching {
                    self.unwatch_one(&mut live, name, session);
                }
            }
            live.offline_where(now, |l| l.session == session)
        };
        self.persist_last_seen(gone);
    }

    /// `session` no longer watches `name`; when nobody here does, the
    /// cluster stops telling this node of it.
    fn unwatch_one(&self, live: &mut LiveState, name: &ScreenName, session: SessionId) {
        let Some(set) = live.watchers.get_mut(name) else {
            return;
        };
        set.remove(&session);
        if set.is_empty() {
            live.watchers.remove(name);
            live.remote.remove(name);
            if let Some(shared) = &self.shared {
                shared.interest(name, false);
            }
        }
    }

    fn persist_last_seen(&self, gone: Vec<(ScreenName, Option<u64>)>) {
        for (name, seen) in gone {
            info!(%name, "offline");
            if let Some(shared) = &self.shared {
                shared.changed(&name, None);
            }
            if let Some(at) = seen {
                if let Err(e) = self.store.set_last_seen(&name, at) {
                    warn!(%name, "cannot record last seen: {e}");
                }
                if let Some(claim) = self
                    .claims
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&name)
                {
                    claim.last_seen = Some(at);
                }
            }
        }
    }

    /// Drops registrations whose record expired. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let gone = self.live().offline_where(now, |l| l.expires_at <= now);
        let n = gone.len();
        self.persist_last_seen(gone);
        n
    }

    /// Everyone goes offline (the node is stopping). May block on disk.
    pub fn all_offline(&self, now: u64) {
        let gone = self.live().offline_where(now, |_| true);
        self.persist_last_seen(gone);
    }

    /// How many names are online now (on this node).
    pub fn online_count(&self) -> usize {
        self.live().by_name.len()
    }

    // ---- what the cluster tells this node ----

    /// Another node says what `name` is now: online there (`Some`), or no
    /// longer online at `node`. Kept only while this node watches `name`;
    /// an older record (lower sequence number) does not undo a newer one.
    pub fn remote_changed(
        &self,
        name: &ScreenName,
        node: &str,
        held: Option<SharedLive>,
        now: u64,
    ) {
        let mut live = self.live();
        if !live.watchers.contains_key(name) {
            return;
        }
        let changed = match held {
            Some(shared) => {
                let Some(remote) = decode_held(
                    name,
                    Held {
                        node: node.to_owned(),
                        live: shared,
                    },
                ) else {
                    return;
                };
                let newer = live.remote.get(name).is_none_or(|r| {
                    remote.live.owner != r.live.owner || remote.live.seq >= r.live.seq
                });
                if !newer {
                    return;
                }
                let changed = live
                    .remote
                    .get(name)
                    .is_none_or(|r| r.live.shown() != remote.live.shown());
                if self.claim_owner_differs(name, remote.live.owner) {
                    // The name changed hands on another node.
                    self.forget(name);
                }
                if remote.live.status != Status::Invisible {
                    live.last_seen.remove(name);
                }
                live.remote.insert(name.clone(), remote);
                changed
            }
            None => self.remote_gone(&mut live, name, |r| r.node == node, now),
        };
        if changed {
            live.notify(name);
        }
    }

    /// What the cluster's store holds of a watched name (after this node
    /// lost track, e.g. its messaging link was down): replaces what this
    /// node kept.
    pub fn remote_refreshed(&self, name: &ScreenName, held: Option<Held>, now: u64) {
        match held {
            Some(held) => self.remote_changed(name, &held.node.clone(), Some(held.live), now),
            None => {
                let mut live = self.live();
                if self.remote_gone(&mut live, name, |_| true, now) {
                    live.notify(name);
                }
            }
        }
    }

    /// Nodes that stopped beating are gone, and so are their users.
    pub fn nodes_gone(&self, dead: &HashSet<NodeId>, now: u64) {
        let mut live = self.live();
        let names: Vec<ScreenName> = live
            .remote
            .iter()
            .filter(|(_, r)| dead.contains(&r.node))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self.remote_gone(&mut live, &name, |_| true, now) {
                info!(%name, "offline: its node stopped");
                live.notify(&name);
            }
        }
    }

    /// Drops the remote registration of `name` if `which` says so;
    /// returns whether it did.
    fn remote_gone(
        &self,
        live: &mut LiveState,
        name: &ScreenName,
        which: impl Fn(&Remote) -> bool,
        now: u64,
    ) -> bool {
        if !live.remote.get(name).is_some_and(which) {
            return false;
        }
        let Some(remote) = live.remote.remove(name) else {
            return false;
        };
        if let Some(at) = remote.live.last_seen_at_end(now) {
            live.last_seen.insert(name.clone(), at);
        }
        true
    }

    /// Another node released `name`: its claim is read again when needed.
    pub fn claim_released(&self, name: &ScreenName) {
        self.forget(name);
        let mut live = self.live();
        live.remote.remove(name);
        live.last_seen.remove(name);
        live.notify(name);
    }

    /// Whether a session of this node watches `name` now.
    pub fn is_watched(&self, name: &ScreenName) -> bool {
        self.live().watchers.contains_key(name)
    }

    /// The names this node's sessions watch now.
    pub fn watched_names(&self) -> Vec<ScreenName> {
        self.live().watchers.keys().cloned().collect()
    }

    /// Every registration this node holds, as the cluster is told of them.
    pub fn held_here(&self) -> Vec<(ScreenName, SharedLive)> {
        self.live()
            .by_name
            .iter()
            .map(|(n, l)| (n.clone(), l.to_shared()))
            .collect()
    }

    fn claim_owner_differs(&self, name: &ScreenName, owner: PeerId) -> bool {
        self.claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|c| c.owner != owner)
    }
}

/// A registration another node sent, if its record still verifies.
fn decode_held(name: &ScreenName, held: Held) -> Option<Remote> {
    match Live::from_shared(held.live) {
        Ok((named, live)) if &named == name => Some(Remote {
            node: held.node,
            live,
        }),
        Ok(_) => {
            warn!(%name, node = %held.node, "a node shared a record of another name; ignored");
            None
        }
        Err(e) => {
            warn!(%name, node = %held.node, "a node shared a record that does not verify ({e}); ignored");
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stale(name: &ScreenName, got: u64, have: u64) -> Reply {
    Reply::error(
        ErrorCode::StaleSequence,
        format!(
            "record for {name} has sequence {got}, not above the last accepted {have}; sequence numbers must grow"
        ),
    )
}

fn internal(e: StoreError) -> Reply {
    warn!("store failure: {e}");
    match e {
        StoreError::Unavailable(_) => Reply::error(
            ErrorCode::Unavailable,
            "store unavailable: the node cannot reach its claim store now; retry later",
        ),
        _ => Reply::error(ErrorCode::Internal, "the node's store failed; retry later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use messenger_proto::Identity;
    use messenger_proto::record::Registration;

    const NOW: u64 = 1_700_000_000_000;

    fn registry() -> (tempfile::TempDir, Registry<RedbStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("claims.redb")).unwrap();
        (dir, Registry::new(Arc::new(store)))
    }

    fn record_with(
        id: &Identity,
        name: &str,
        seq: u64,
        status: Status,
        text: &str,
    ) -> SignedRecord {
        Registration {
            name: ScreenName::parse(name).unwrap(),
            peer_id: id.peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/5000".parse().unwrap()],
            seq,
            expires_at: NOW + 60_000,
            status,
            status_text: text.into(),
        }
        .sign(id)
    }

    fn record(id: &Identity, name: &str, seq: u64) -> SignedRecord {
        record_with(id, name, seq, Status::Online, "")
    }

    fn code(reply: Reply) -> Option<ErrorCode> {
        match reply {
            Reply::Error { code, .. } => Some(code),
            _ => None,
        }
    }

    fn resolved(reg: &Registry<RedbStore>, name: &str, viewer: PeerId, now: u64) -> Resolution {
        match reg.resolve(name, viewer, now) {
            Reply::Resolved(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn register_resolve_and_go_offline() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let viewer = PeerId::random();
        let reply = reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        assert!(
            matches!(
                reply,
                Reply::Registered {
                    new_claim: true,
                    ..
                }
            ),
            "{reply:?}"
        );
        let res = resolved(&reg, "ALICE", viewer, NOW);
        assert_eq!(res.presence, Presence::Online);
        assert_eq!(res.owner, alice.peer_id());
        let rec = res.verified_record(NOW).unwrap().unwrap();
        assert_eq!(rec.addrs.len(), 1);

        reg.session_ended(1, NOW + 5);
        let res = resolved(&reg, "alice", viewer, NOW + 10);
        assert_eq!(res.presence, Presence::Offline);
        assert!(res.record.is_none());
        assert_eq!(res.last_seen, Some(NOW + 5));
    }

    #[test]
    fn name_taken_wrong_peer_and_forgery() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        // Another key claims the name.
        assert_eq!(
            code(reg.register(
                mallory.peer_id(),
                2,
                record(&mallory, "alice", 9),
                vec![],
                NOW
            )),
            Some(ErrorCode::NameTaken)
        );
        // Mallory relays Alice's genuine record on her own connection.
        assert_eq!(
            code(reg.register(
                mallory.peer_id(),
                2,
                record(&alice, "alice", 2),
                vec![],
                NOW
            )),
            Some(ErrorCode::WrongPeer)
        );
        // Mallory signs a record naming Alice's peer id.
        let forged = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: alice.peer_id(),
            addrs: vec![],
            seq: 5,
            expires_at: NOW + 1000,
            status: Status::Online,
            status_text: String::new(),
        }
        .sign(&mallory);
        assert_eq!(
            code(reg.register(alice.peer_id(), 2, forged, vec![], NOW)),
            Some(ErrorCode::BadSignature)
        );
        assert_eq!(
            resolved(&reg, "alice", PeerId::random(), NOW).owner,
            alice.peer_id()
        );
    }

    #[test]
    fn sequence_must_grow_within_and_across_sessions() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let p = alice.peer_id();
        assert!(code(reg.register(p, 1, record(&alice, "alice", 5), vec![], NOW)).is_none());
        assert_eq!(
            code(reg.register(p, 1, record(&alice, "alice", 5), vec![], NOW)),
            Some(ErrorCode::StaleSequence)
        );
        assert!(code(reg.register(p, 1, record(&alice, "alice", 6), vec![], NOW)).is_none());
        reg.session_ended(1, NOW);
        assert_eq!(
            code(reg.register(p, 2, record(&alice, "alice", 4), vec![], NOW)),
            Some(ErrorCode::StaleSequence)
        );
    }

    #[test]
    fn expiry_bounds_records() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        let res = resolved(&reg, "alice", PeerId::random(), NOW + 60_001);
        assert_eq!(res.presence, Presence::Offline);
        assert_eq!(reg.sweep(NOW + 60_001), 1);
        assert_eq!(reg.online_count(), 0);
        let far = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: alice.peer_id(),
            addrs: vec![],
            seq: 9,
            expires_at: NOW + 2 * MAX_RECORD_TTL_MS,
            status: Status::Online,
            status_text: String::new(),
        }
        .sign(&alice);
        assert_eq!(
            code(reg.register(alice.peer_id(), 1, far, vec![], NOW)),
            Some(ErrorCode::BadExpiry)
        );
    }

    #[test]
    fn unknown_invalid_release_and_reverse_lookup() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let viewer = PeerId::random();
        assert_eq!(
            code(reg.resolve("nobody", viewer, NOW)),
            Some(ErrorCode::NoSuchName)
        );
        assert_eq!(
            code(reg.resolve("9x", viewer, NOW)),
            Some(ErrorCode::InvalidName)
        );
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        assert_eq!(
            reg.resolve_peer(alice.peer_id(), viewer, NOW),
            Reply::Names {
                peer_id: alice.peer_id(),
                names: vec![ScreenName::parse("alice").unwrap()]
            }
        );
        // Unknown peers and peers without a current registration get the
        // same answer: the directory cannot be walked by peer id.
        assert_eq!(
            code(reg.resolve_peer(mallory.peer_id(), viewer, NOW)),
            Some(ErrorCode::NoSuchName)
        );
        reg.session_ended(1, NOW + 1);
        assert_eq!(
            code(reg.resolve_peer(alice.peer_id(), viewer, NOW + 2)),
            Some(ErrorCode::NoSuchName)
        );
        assert_eq!(
            code(reg.release(mallory.peer_id(), "alice")),
            Some(ErrorCode::NotOwner)
        );
        assert!(matches!(
            reg.release(alice.peer_id(), "alice"),
            Reply::Released { .. }
        ));
        assert_eq!(
            code(reg.resolve("alice", viewer, NOW)),
            Some(ErrorCode::NoSuchName)
        );
    }

    #[test]
    fn a_name_unused_past_its_lease_goes_to_the_next_key() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let bob = Identity::from_seed([3; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let day = 24 * 60 * 60 * 1000;
        let lease = std::time::Duration::from_secs(180 * 24 * 60 * 60);
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        reg.register(bob.peer_id(), 2, record(&bob, "bob", 1), vec![], NOW);
        reg.session_ended(1, NOW + 1);
        // Bob stays online (renewing in his session) for the whole time.
        let later = NOW + 181 * day;
        assert_eq!(reg.release_unused(lease, later), 1);
        assert_eq!(
            code(reg.resolve("alice", mallory.peer_id(), later)),
            Some(ErrorCode::NoSuchName)
        );
        assert!(matches!(
            reg.resolve("bob", mallory.peer_id(), later),
            Reply::Resolved(_)
        ));
        let taken = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: mallory.peer_id(),
            addrs: vec![],
            seq: 1,
            expires_at: later + 60_000,
            status: Status::Online,
            status_text: String::new(),
        };
        assert!(matches!(
            reg.register(mallory.peer_id(), 3, taken.sign(&mallory), vec![], later),
            Reply::Registered {
                new_claim: true,
                ..
            }
        ));
    }

    #[test]
    fn one_key_holds_a_bounded_number_of_names() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        for (i, n) in ["alice", "alice2", "alice3"].iter().enumerate() {
            assert!(matches!(
                reg.register(alice.peer_id(), i as u64, record(&alice, n, 1), vec![], NOW),
                Reply::Registered { .. }
            ));
        }
        assert_eq!(
            code(reg.register(alice.peer_id(), 9, record(&alice, "alice4", 1), vec![], NOW)),
            Some(ErrorCode::LimitExceeded)
        );
    }

    #[test]
    fn watchers_get_each_change_once_and_nothing_after_unwatch() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let queue = reg.open_session(7);
        assert!(matches!(
            reg.watch(7, &["Alice".into()]),
            Reply::Watching { watched: 1 }
        ));
        // The current state is pushed on watch (alice is unclaimed: the
        // session writer skips names nobody owns).
        assert_eq!(queue.take(), vec![ScreenName::parse("alice").unwrap()]);

        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        reg.register(
            alice.peer_id(),
            1,
            record_with(&alice, "alice", 2, Status::Away, "back at 3"),
            vec![],
            NOW,
        );
        // Two changes before the writer ran: one push, coalesced.
        assert_eq!(queue.take().len(), 1);
        let res = reg
            .view(&ScreenName::parse("alice").unwrap(), PeerId::random(), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            (res.presence, res.status_text.as_str()),
            (Presence::Away, "back at 3")
        );

        // A renewal that changes nothing shown is not pushed.
        reg.register(
            alice.peer_id(),
            1,
            record_with(&alice, "alice", 3, Status::Away, "back at 3"),
            vec![],
            NOW,
        );
        assert!(queue.take().is_empty());

        reg.session_ended(1, NOW + 1);
        assert_eq!(queue.take().len(), 1, "going offline is pushed");

        reg.unwatch(7, &["alice".into()]);
        reg.register(
            alice.peer_id(),
            2,
            record(&alice, "alice", 9),
            vec![],
            NOW + 2,
        );
        assert!(queue.take().is_empty());
        reg.session_ended(7, NOW);
    }

    #[test]
    fn watch_limits() {
        let (_dir, reg) = registry();
        reg.open_session(1);
        let many: Vec<String> = (0..=MAX_WATCH_PER_REQUEST)
            .map(|i| format!("name{i}"))
            .collect();
        assert_eq!(code(reg.watch(1, &many)), Some(ErrorCode::LimitExceeded));
        assert_eq!(
            code(reg.watch(1, &["9bad".into()])),
            Some(ErrorCode::InvalidName)
        );
        for chunk in 0..(MAX_WATCHED / MAX_WATCH_PER_REQUEST) {
            let names: Vec<String> = (0..MAX_WATCH_PER_REQUEST)
                .map(|i| format!("n{chunk}x{i}"))
                .collect();
            assert!(code(reg.watch(1, &names)).is_none());
        }
        assert_eq!(
            code(reg.watch(1, &["onemore".into()])),
            Some(ErrorCode::LimitExceeded)
        );
    }

    #[test]
    fn invisible_shows_offline_but_named_peers_can_still_dial() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let (friend, stranger) = (PeerId::random(), PeerId::random());
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
        reg.session_ended(1, NOW + 10);
        reg.register(
            alice.peer_id(),
            2,
            record_with(&alice, "alice", 2, Status::Invisible, "secret"),
            vec![friend],
            NOW + 20,
        );
        for viewer in [friend, stranger] {
            let res = resolved(&reg, "alice", viewer, NOW + 30);
            assert_eq!(res.presence, Presence::Offline);
            assert_eq!(res.status_text, "");
            assert_eq!(res.last_seen, Some(NOW + 10), "last seen is from before");
            assert_eq!(res.record.is_some(), viewer == friend);
        }
        // Leaving while invisible does not reveal when.
        reg.session_ended(2, NOW + 40);
        assert_eq!(
            resolved(&reg, "alice", stranger, NOW + 50).last_seen,
            Some(NOW + 10)
        );
    }
}
