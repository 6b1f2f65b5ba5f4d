//! The directory's state and rules, apart from the network.
//!
//! Durable claims live in a [`ClaimStore`]; addresses and presence are live
//! state tied to the session that registered them ([`live`]), shared with
//! the other nodes of a cluster ([`cluster`]). Methods answer with domain
//! outcomes or a [`Refusal`]; the session turns them into wire replies.
//! Everything but a registration's claim is plain synchronous code that
//! the session tasks call, and that unit tests call directly.

mod cluster;
mod live;
mod refusal;
#[cfg(test)]
mod tests;

pub use live::PushQueue;
pub use refusal::Refusal;

use live::{Live, LiveState, SessionState, decode_held, lock};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use messenger_proto::CLOCK_SKEW_MS;
use messenger_proto::directory::{
    MAX_RECORD_TTL_MS, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST, MAX_WATCHED, Resolution,
};
use messenger_proto::identity::PeerKey;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use messenger_proto::record::{Registration, SignedRecord};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tracing::{info, warn};

use crate::shared::Shared;
use crate::store::{Claim, ClaimOutcome, ClaimStore, StoreError};

/// Identifies one directory session (one stream) for the node's lifetime.
/// Sessions are numbered from 1.
pub type SessionId = u64;

/// The session of a registration held by another node of the cluster.
const ELSEWHERE: SessionId = 0;

/// Who sends a registration: the session's peer, with its key decoded
/// once for the session when it is an ed25519 key.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// The peer at the other end of the connection.
    pub peer: PeerId,
    /// Its key, if decoded.
    pub key: Option<&'a PeerKey>,
}

/// A registration the registry accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: ScreenName,
    /// Whether the name was claimed by this registration (not held before).
    pub new_claim: bool,
    /// When the record expires, in ms since the epoch.
    pub expires_at: u64,
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

    /// Handles a registration from `signer` on `session`; the claim, if
    /// one is needed, is awaited without holding a thread while it commits.
    pub async fn register(
        &self,
        signer: Signer<'_>,
        session: SessionId,
        signed: SignedRecord,
        visible_to: Vec<PeerId>,
        now: u64,
    ) -> Result<Registered, Refusal> {
        let checked = self.check_registration(signer, session, signed, visible_to, now)?;
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
    ) -> Result<CheckedRegistration, Refusal> {
        let opened = match signer.key {
            Some(key) => signed.open_as(key),
            None => signed.open(),
        };
        let record = opened.map_err(Refusal::BadRecord)?;
        if visible_to.len() > MAX_VISIBLE_TO {
            return Err(Refusal::TooManyVisible(visible_to.len()));
        }
        let peer = signer.peer;
        if record.peer_id != peer {
            return Err(Refusal::WrongPeer {
                named: Box::new(record.peer_id),
                connection: Box::new(peer),
            });
        }
        if record.expires_at <= now || record.expires_at > now + MAX_RECORD_TTL_MS + CLOCK_SKEW_MS {
            return Err(Refusal::BadExpiry {
                expires_at: record.expires_at,
                now,
            });
        }
        // A renewal within the same session is checked and kept in memory;
        // the first registration of a session goes to disk.
        let renewal = {
            let live = self.live();
            match live.by_name.get(&record.name) {
                Some(l) if l.owner == peer && l.session == session => {
                    if record.seq <= l.seq {
                        return Err(Refusal::StaleSequence {
                            name: record.name,
                            got: record.seq,
                            have: l.seq,
                        });
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
    ) -> Result<Registered, Refusal> {
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
            Some(Ok(ClaimOutcome::Taken(_))) => return Err(Refusal::NameTaken(name)),
            Some(Ok(ClaimOutcome::Stale(claim))) => {
                return Err(Refusal::StaleSequence {
                    name,
                    got: record.seq,
                    have: claim.seq,
                });
            }
            Some(Ok(ClaimOutcome::TooMany(held))) => {
                warn!(%name, %peer, held, "claim refused: the key holds the most names allowed");
                return Err(Refusal::TooManyNames { held, name });
            }
            Some(Err(e)) => return Err(e.into()),
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
        Ok(Registered {
            name,
            new_claim,
            expires_at,
        })
    }

    /// Looks a name up for `viewer`.
    pub fn resolve(&self, raw: &str, viewer: PeerId, now: u64) -> Result<Resolution, Refusal> {
        let name = ScreenName::parse(raw)?;
        let elsewhere = self.fetch_elsewhere(&name);
        self.view_with(&name, viewer, now, elsewhere)?
            .ok_or(Refusal::NoSuchName(name))
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
    /// Returns how many names the session watches now.
    pub fn watch(&self, session: SessionId, raw: &[String]) -> Result<u32, Refusal> {
        if raw.len() > MAX_WATCH_PER_REQUEST {
            return Err(Refusal::WatchRequestTooLarge(raw.len()));
        }
        let names = raw
            .iter()
            .map(|n| ScreenName::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut live = self.live();
        let Some(state) = live.sessions.get_mut(&session) else {
            return Err(Refusal::SessionNotOpen);
        };
        let after: HashSet<&ScreenName> = state.watching.iter().chain(names.iter()).collect();
        if after.len() > MAX_WATCHED {
            return Err(Refusal::WatchingTooMany);
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
        Ok(watched)
    }

    /// Stops watching `raw` names on `session`.
    /// Returns how many names the session watches now.
    pub fn unwatch(&self, session: SessionId, raw: &[String]) -> Result<u32, Refusal> {
        let mut live = self.live();
        let names: Vec<ScreenName> = raw
            .iter()
            .filter_map(|n| ScreenName::parse(n).ok())
            .collect();
        let Some(state) = live.sessions.get_mut(&session) else {
            return Err(Refusal::SessionNotOpen);
        };
        for name in &names {
            state.watching.remove(name);
        }
        let watched = state.watching.len() as u32;
        for name in &names {
            self.unwatch_one(&mut live, name, session);
        }
        Ok(watched)
    }

    /// The names `peer_id` has registered now and `viewer` may see. Only
    /// current registrations are answered, so the directory cannot be
    /// walked by peer id: a peer that is offline or invisible to the viewer
    /// gets the same answer as one that never existed.
    pub fn resolve_peer(
        &self,
        peer_id: PeerId,
        viewer: PeerId,
        now: u64,
    ) -> Result<Vec<ScreenName>, Refusal> {
        let owned = self.store.names_of(&peer_id)?;
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
            return Err(Refusal::NotRegistered(peer_id));
        }
        Ok(names)
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
    pub fn release(&self, peer: PeerId, raw: &str) -> Result<ScreenName, Refusal> {
        let name = ScreenName::parse(raw)?;
        match self.claim_of(&name)? {
            None => return Err(Refusal::NoSuchName(name)),
            Some(claim) if claim.owner != peer => return Err(Refusal::NotOwner(name)),
            Some(_) => {}
        }
        match self.store.release(&name, &peer)? {
            true => {
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
                Ok(name)
            }
            false => Err(Refusal::NotOwner(name)),
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
}
