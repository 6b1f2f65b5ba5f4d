//! The live side of the directory: who is online where, how they want to
//! be shown, who watches whom, and each session's queue of changes to push.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::{Multiaddr, PeerId};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use messenger_proto::record::{RecordError, SignedRecord};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tracing::warn;

use super::{ELSEWHERE, SessionId};
use crate::shared::{Held, NodeId, SharedLive};

/// A live registration: where the owner is now, and how it wants to be shown.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) owner: PeerId,
    pub(super) record: SignedRecord,
    pub(super) seq: u64,
    pub(super) expires_at: u64,
    pub(super) session: SessionId,
    pub(super) status: Status,
    pub(super) status_text: String,
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) visible_to: HashSet<PeerId>,
    /// When the owner went invisible during this session, if it did.
    pub(super) hidden_since: Option<u64>,
}

impl Live {
    /// A registration another node holds, its record checked again.
    pub(super) fn from_shared(shared: SharedLive) -> Result<(ScreenName, Self), RecordError> {
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
    pub(super) fn to_shared(&self) -> SharedLive {
        SharedLive {
            record: self.record.clone(),
            visible_to: self.visible_to.iter().copied().collect(),
            hidden_since: self.hidden_since,
        }
    }

    /// What watchers could notice: a change here is pushed.
    pub(super) fn shown(&self) -> (Status, &str, &[Multiaddr], &HashSet<PeerId>) {
        (
            self.status,
            &self.status_text,
            &self.addrs,
            &self.visible_to,
        )
    }

    /// When the owner stops being online: the last time others saw it.
    pub(super) fn last_seen_at_end(&self, now: u64) -> Option<u64> {
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
    pub(super) pending: Mutex<Vec<ScreenName>>,
    pub(super) notify: Notify,
    /// Names waiting over every session (a metric).
    pub(super) depth: Gauge,
}

impl PushQueue {
    pub(super) fn new(depth: Gauge) -> Self {
        Self {
            pending: Mutex::default(),
            notify: Notify::new(),
            depth,
        }
    }

    pub(super) fn push(&self, name: &ScreenName) {
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
pub(super) struct SessionState {
    pub(super) queue: Arc<PushQueue>,
    pub(super) watching: HashSet<ScreenName>,
}

/// A registration another node holds, kept while this node's sessions
/// watch its name.
#[derive(Debug)]
pub(super) struct Remote {
    pub(super) node: NodeId,
    pub(super) live: Live,
}

#[derive(Debug, Default)]
pub(super) struct LiveState {
    pub(super) by_name: HashMap<ScreenName, Live>,
    /// Watched names online on other nodes of the cluster: kept current by
    /// the cluster, so that what is here (or missing) is the truth.
    pub(super) remote: HashMap<ScreenName, Remote>,
    /// Last seen of names that went offline while this node ran.
    pub(super) last_seen: HashMap<ScreenName, u64>,
    pub(super) watchers: HashMap<ScreenName, HashSet<SessionId>>,
    pub(super) sessions: HashMap<SessionId, SessionState>,
}

impl LiveState {
    /// Where `name` is online now: on this node, else on another.
    pub(super) fn current(&self, name: &ScreenName) -> Option<&Live> {
        self.by_name
            .get(name)
            .or_else(|| self.remote.get(name).map(|r| &r.live))
    }

    pub(super) fn notify(&self, name: &ScreenName) {
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
    pub(super) fn offline_where(
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
    pub(super) fn go_offline(&mut self, name: &ScreenName, now: u64) -> Option<u64> {
        let live = self.by_name.remove(name)?;
        let seen = live.last_seen_at_end(now);
        if let Some(at) = seen {
            self.last_seen.insert(name.clone(), at);
        }
        self.notify(name);
        seen
    }
}

/// A registration another node sent, if its record still verifies.
pub(super) fn decode_held(name: &ScreenName, held: Held) -> Option<Remote> {
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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
