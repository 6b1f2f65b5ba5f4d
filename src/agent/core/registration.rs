//! Our registration: the name we are online under, the record that
//! says where we are and how (status, addresses), its renewal before the
//! lease runs out, the node's certificate of our name, the relay slot and
//! the addresses worth advertising.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::directory::{ErrorCode, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use messenger_proto::record::{self, MAX_ADDRS, SignedRecord, without_peer_suffix};
use messenger_proto::time::now_ms;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::directory::{DirWork, may_retry};
use super::{Core, Done, failed};
use crate::agent::certificates::Certificates;
use crate::agent::error::{DirectoryFailure, OnlineError};
use crate::agent::outbox::{Mode, WorkerMsg};
use crate::agent::sink::StoreSink;
use crate::api::{Event, FailureKind, Response};
use crate::chat::Inbox;
use crate::directory::{DirectoryError, DirectorySession, Registered};
use crate::home::Config;
use crate::network::{Inbound, Network, Reachability, is_relayed};

/// How long a registration record is valid; the online client renews it
/// well before.
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// How often the registration is renewed (sooner if the certificate would
/// expire first).
const RENEW_EVERY: Duration = Duration::from_secs(180);

/// How long going online waits for the node's reachability verdict before
/// registering. A reachable client gets it in milliseconds; behind NAT the
/// verdict takes seconds (the node's dial-back must time out), so such a
/// client registers its relayed address meanwhile, then narrows down.
pub(super) const REACHABILITY_WAIT: Duration = Duration::from_millis(1500);

/// How long a relay reservation may take.
const RELAY_WAIT: Duration = Duration::from_secs(5);

/// How soon a renewal the node could not store (its store is down) is
/// tried again.
const RENEW_WHILE_UNAVAILABLE: Duration = Duration::from_secs(5);

/// Our standing at the node.
pub(super) struct Registration {
    /// Set while online (or going online).
    pub(super) online: Option<Online>,
    pub(super) status: OwnStatus,
    /// The sequence number of our last record.
    last_seq: u64,
    /// Our name certificate and whose we accept.
    pub(super) certificates: Certificates,
}

/// We are online: what the registration needs.
pub(super) struct Online {
    pub(super) name: ScreenName,
    /// The addresses in our last registration.
    registered: Vec<Multiaddr>,
    renew_at: Instant,
}

/// Our status and text.
#[derive(Debug, Clone)]
pub(super) struct OwnStatus {
    pub(super) status: Status,
    pub(super) text: String,
}

impl Registration {
    pub(super) fn new(config: &Config) -> Self {
        Self {
            online: None,
            status: OwnStatus {
                status: config.status.unwrap_or_default(),
                text: config.status_text.clone().unwrap_or_default(),
            },
            last_seq: 0,
            certificates: Certificates::new(),
        }
    }

    /// Going online as `name`: renewed from now on.
    fn go_online(&mut self, name: ScreenName) {
        self.online = Some(Online {
            name,
            registered: Vec::new(),
            renew_at: Instant::now() + RENEW_EVERY,
        });
    }

    /// A sequence number above every earlier one: microseconds of wall
    /// time, bumped if the clock has not moved.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.last_seq = now_ms().saturating_mul(1000).max(self.last_seq + 1);
        self.last_seq
    }

    /// Our record for `name` at `addrs`, signed, with a fresh sequence number.
    pub(super) fn record(
        &mut self,
        identity: &Identity,
        name: &ScreenName,
        addrs: Vec<Multiaddr>,
    ) -> SignedRecord {
        let seq = self.next_seq();
        sign_record(identity, name, addrs, seq, &self.status)
    }

    /// When the record is to be renewed, while online.
    pub(super) fn renew_at(&self) -> Option<Instant> {
        self.online.as_ref().map(|o| o.renew_at)
    }

    /// A renewal was sent: the next one is a period away.
    fn renewal_sent(&mut self) {
        if let Some(online) = &mut self.online {
            online.renew_at = Instant::now() + RENEW_EVERY;
        }
    }

    /// The node holds our record at `addrs`; the next renewal is in
    /// `renew_in`. Whether the addresses changed.
    fn registered(&mut self, addrs: &[Multiaddr], renew_in: Duration) -> bool {
        let Some(online) = &mut self.online else {
            return false;
        };
        let changed = online.registered != addrs;
        online.registered = addrs.to_vec();
        online.renew_at = Instant::now() + renew_in;
        changed
    }

    /// The node could not store the renewal (its store is down): tried
    /// again as soon as it may be back, before the lease runs out.
    fn renewal_unavailable(&mut self) {
        if let Some(online) = &mut self.online {
            online.renew_at = Instant::now() + RENEW_WHILE_UNAVAILABLE;
        }
    }

    /// Whether the addresses registered are not `addrs`, while online.
    fn registered_differ(&self, addrs: &[Multiaddr]) -> bool {
        self.online.as_ref().is_some_and(|o| o.registered != addrs)
    }
}

/// What the registration's tasks report.
pub(super) enum RegistrationDone {
    Registered {
        name: ScreenName,
        result: Result<Registered, DirectoryError>,
        reply: oneshot::Sender<Response>,
        attempt: u32,
    },
    Released {
        name: ScreenName,
        result: Result<ScreenName, DirectoryError>,
        reply: oneshot::Sender<Response>,
        attempt: u32,
    },
    Renewed {
        result: Result<(Registered, Vec<Multiaddr>), DirectoryError>,
        /// A request waiting for this registration, and its answer.
        reply: Option<Box<(oneshot::Sender<Response>, Response)>>,
        announce: bool,
    },
}

impl From<RegistrationDone> for Done {
    fn from(done: RegistrationDone) -> Self {
        Done::Registration(done)
    }
}

impl Core {
    /// The name I act as: the one online now, else the one remembered.
    pub(super) fn my_name(&self) -> Option<ScreenName> {
        self.registration
            .online
            .as_ref()
            .map(|o| o.name.clone())
            .or_else(|| self.config.name.clone())
    }

    pub(super) fn on_registration_done(&mut self, done: RegistrationDone) {
        match done {
            RegistrationDone::Registered {
                name,
                result,
                reply,
                attempt,
            } => {
                if may_retry(&result, attempt) {
                    self.retry_later(DirWork::Register { name, reply }, attempt + 1);
                } else {
                    let response = self.on_registered(name, result);
                    let _ = reply.send(response);
                }
            }
            RegistrationDone::Released {
                name,
                result,
                reply,
                attempt,
            } => match result {
                _ if may_retry(&result, attempt) => {
                    self.retry_later(DirWork::Release { name, reply }, attempt + 1);
                }
                Ok(released) => {
                    if self.config.name.as_ref() == Some(&released) {
                        self.config.name = None;
                        if let Err(e) = self.save_config() {
                            warn!("cannot save the config: {e}");
                        }
                    }
                    let _ = reply.send(Response::Released { name: released });
                }
                Err(e) => {
                    let _ = reply.send(self.directory_failed(e));
                }
            },
            RegistrationDone::Renewed {
                result,
                reply,
                announce,
            } => match result {
                Ok((registered, addrs)) => {
                    if let Some(waiting) = reply {
                        let (reply, done) = *waiting;
                        let _ = reply.send(done);
                    }
                    self.keep_certificate(&registered);
                    let renew_in = self.renew_in();
                    let changed = self.registration.registered(&addrs, renew_in);
                    if announce && changed {
                        let reachability = self.current_reachability();
                        self.emit(Event::Addresses {
                            addrs,
                            reachability,
                        });
                    }
                }
                Err(e) => {
                    warn!("registration failed: {e}");
                    if e.code() == Some(ErrorCode::Unavailable) {
                        self.registration.renewal_unavailable();
                    }
                    if let Some(waiting) = reply {
                        let _ = waiting.0.send(self.directory_failed(e));
                    }
                }
            },
        }
    }

    /// A session opened while online registered us: say so, watch whom we
    /// follow on it, and let everything queued go.
    pub(super) async fn on_online_registered(
        &mut self,
        session: &DirectorySession,
        registered: &Registered,
        addrs: Vec<Multiaddr>,
        first: bool,
    ) {
        self.keep_certificate(registered);
        let reachability = self.current_reachability();
        let renew_in = self.renew_in();
        self.registration.registered(&addrs, renew_in);
        if let Some(online) = &self.registration.online {
            if !first {
                info!("back online");
            }
            self.emit(Event::Online {
                name: online.name.clone(),
                addrs,
                first,
                reachability,
            });
        }
        // Watched after saying we are online: their presence follows as
        // pushes (a new session watches afresh).
        let names: Vec<String> = self.presence.watched().map(ScreenName::to_string).collect();
        let watching = session.clone();
        self.tasks.spawn(async move {
            for chunk in names.chunks(MAX_WATCH_PER_REQUEST) {
                if let Err(e) = watching.watch(chunk.to_vec()).await {
                    debug!("cannot watch: {e}");
                }
            }
            Done::Nothing
        });
        // Everything queued may go now.
        let outbox = self
            .store
            .call(|s| s.outbox(None))
            .await
            .unwrap_or_default();
        let mut recipients: Vec<ScreenName> = outbox.iter().map(|m| m.peer().clone()).collect();
        recipients.extend(self.workers.keys().cloned());
        recipients.sort();
        recipients.dedup();
        for to in recipients {
            self.worker(&to, WorkerMsg::Wake);
        }
    }

    pub(super) async fn go_online(
        &mut self,
        listen: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), OnlineError>>,
    ) {
        if self.registration.online.is_some() || self.worker_mode == Mode::Online {
            let _ = reply.send(Err(OnlineError::AlreadyOnline));
            return;
        }
        let Some(name) = self.config.name.clone() else {
            let _ = reply.send(Err(OnlineError::NoName));
            return;
        };
        let network = match self.ensure_network() {
            Ok(network) => network,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        // Listen before dialling the node, so that the connection to it
        // leaves from a listening port (which hole punching needs).
        if network.listen_addrs().borrow().is_empty() {
            for addr in listen {
                if let Err(e) = network.listen(addr).await {
                    let _ = reply.send(Err(DirectoryFailure::Network(e).into()));
                    return;
                }
            }
        }
        self.worker_mode = Mode::Online;
        if let Some(Inbound {
            chat: streams,
            files,
            tunnels,
        }) = self.inbound.take()
        {
            self.serve_files(files, &network).await;
            self.serve_tunnels(tunnels);
            let sink = StoreSink::new(
                self.store.clone(),
                self.trust.subscribe(),
                self.events.clone(),
                network.clone(),
                self.notes.clone(),
                self.message_requests,
            );
            self.registration
                .certificates
                .publish(&self.directory.nodes.peer_ids());
            let inbox = Inbox::new(
                name.clone(),
                self.registration.certificates.issuers(),
                self.directory.subscribe(),
                sink,
                self.message_rate,
            );
            let cancel = self.cancel.child_token();
            self.tasks.spawn(async move {
                inbox.serve(streams, cancel).await;
                Done::Nothing
            });
        }
        // Watch everyone we care about; their pushes wake the outbox.
        let mut names: Vec<ScreenName> = self.trust.borrow().contact_names().cloned().collect();
        if let Ok(outbox) = self.store.call(|s| s.outbox(None)).await {
            for m in outbox {
                if !names.contains(m.peer()) {
                    names.push(m.peer().clone());
                }
            }
        }
        self.presence.watch(&names);
        // A session opened for one-off requests has no registration; the
        // online one is opened afresh.
        if let Some(session) = self.directory.take_session() {
            self.tasks.spawn(async move {
                session.close().await;
                Done::Nothing
            });
        }
        self.registration.go_online(name);
        self.connect(true, Some(reply));
    }

    pub(super) fn visible_to(&self) -> Vec<PeerId> {
        match self.registration.status.status {
            Status::Invisible => {
                let mut keys = self.trust.borrow().pinned_keys();
                keys.truncate(MAX_VISIBLE_TO);
                keys
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn record(&mut self, name: &ScreenName, addrs: Vec<Multiaddr>) -> SignedRecord {
        self.registration.record(&self.identity, name, addrs)
    }

    /// Registers again on the current session (renewal, a new status, new
    /// addresses); `reply` answers a request once done.
    pub(super) fn register_again(
        &mut self,
        reply: Option<(oneshot::Sender<Response>, Response)>,
        announce: bool,
    ) {
        let (Some(session), Some(online), Some(network)) = (
            self.directory.session(),
            &self.registration.online,
            self.network.clone(),
        ) else {
            if let Some((reply, _)) = reply {
                let _ = reply.send(failed(
                    FailureKind::Unreachable,
                    "not connected to the rendezvous node; the change applies when the connection is back",
                ));
            }
            return;
        };
        let name = online.name.clone();
        let loopback_ok = self.directory.nodes.current().is_some_and(is_loopback);
        let addrs = advertised(&network, loopback_ok);
        let record = self.record(&name, addrs.clone());
        let visible_to = self.visible_to();
        self.registration.renewal_sent();
        self.tasks.spawn(async move {
            let result = session
                .register(record, visible_to)
                .await
                .map(|r| (r, addrs));
            RegistrationDone::Renewed {
                result,
                reply: reply.map(Box::new),
                announce,
            }
            .into()
        });
    }

    /// A new address of ours (an interface came back, a network joined) is
    /// a reason to try the node again now, rather than at the end of a
    /// backoff that grew while there was no network.
    pub(super) fn reconnect_on_new_address(&mut self) {
        let now: Vec<Multiaddr> = self
            .listen_addrs
            .as_ref()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_default();
        let appeared = now.iter().any(|a| !self.seen_addrs.contains(a));
        self.seen_addrs = now;
        if appeared && self.directory.reconnect_now() {
            info!("a new address of ours; reconnecting to the rendezvous node now");
        }
    }

    /// Registers our current addresses if they changed.
    pub(super) fn follow_addresses(&mut self) {
        let Some(network) = &self.network else {
            return;
        };
        let loopback_ok = self.directory.nodes.current().is_some_and(is_loopback);
        if self
            .registration
            .registered_differ(&advertised(network, loopback_ok))
        {
            info!("addresses changed; registering them");
            self.register_again(None, true);
        }
    }

    /// Unless reachable directly, we hold a relay slot: after a new
    /// reachability verdict, make sure.
    pub(super) fn ensure_relay_later(&mut self) {
        let (Some(network), Some(node)) = (
            self.network.clone(),
            self.directory.nodes.current().cloned(),
        ) else {
            return;
        };
        if self.registration.online.is_none() {
            return;
        }
        self.tasks.spawn(async move {
            ensure_relay(&network, &node).await;
            Done::Nothing
        });
    }

    pub(super) fn on_registered(
        &mut self,
        name: ScreenName,
        result: Result<Registered, DirectoryError>,
    ) -> Response {
        let registered = match result {
            Ok(registered) => registered,
            Err(e) => return self.directory_failed(e),
        };
        // Online under another name, the client stays that name (its
        // certificate, its messages' sender) until it starts again.
        let online_as = self.registration.online.as_ref().map(|o| &o.name);
        if online_as.is_none_or(|online| *online == name) {
            self.keep_certificate(&registered);
        }
        let Some(rendezvous) = self.directory.nodes.current().cloned() else {
            return failed(FailureKind::NoNode, DirectoryFailure::NoNode);
        };
        self.config.name = Some(name.clone());
        self.config.rendezvous = self.directory.nodes.in_use_first();
        if let Err(e) = self.save_config() {
            return failed(FailureKind::Other, e);
        }
        info!(%name, "registration remembered");
        Response::Registered {
            name,
            new_claim: registered.new_claim,
            peer_id: self.identity.peer_id(),
            rendezvous,
        }
    }

    /// Keeps the node's certificate of our name, if it is one our peers
    /// will accept (issued by our node, to us, for this name, valid now).
    ///
    /// Its issuer need not be the node's own key: the nodes of a cluster
    /// sign with one they share. The node we chose vouches for that key by
    /// handing us the certificate, so certificates it signs for others are
    /// accepted from now on.
    pub(super) fn keep_certificate(&mut self, registered: &Registered) {
        let me = self.identity.peer_id();
        let nodes = self.directory.nodes.peer_ids();
        if let Err(why) = self
            .registration
            .certificates
            .keep(registered, &me, &nodes, now_ms())
        {
            warn!("not using the node's certificate: {why}");
        }
    }

    /// How long until the next renewal: the usual period, or sooner if our
    /// certificate would expire first.
    pub(super) fn renew_in(&self) -> Duration {
        self.registration
            .certificates
            .renew_in(now_ms(), RENEW_EVERY)
    }

    pub(super) fn current_reachability(&self) -> Reachability {
        self.reachability
            .as_ref()
            .map_or(Reachability::Unknown, |r| *r.borrow())
    }

    pub(super) fn on_timer(&mut self) {
        let now = Instant::now();
        if self.directory.reconnect_due(now)
            && !self.directory.connecting
            && self.registration.online.is_some()
        {
            self.connect(true, None);
        }
        if self.registration.renew_at().is_some_and(|at| at <= now) {
            self.register_again(None, false);
        }
    }
}

pub(super) fn sign_record(
    identity: &Identity,
    name: &ScreenName,
    mut addrs: Vec<Multiaddr>,
    seq: u64,
    status: &OwnStatus,
) -> messenger_proto::record::SignedRecord {
    addrs.truncate(MAX_ADDRS);
    record::Registration {
        name: name.clone(),
        peer_id: identity.peer_id(),
        addrs,
        seq,
        expires_at: now_ms() + RECORD_TTL.as_millis() as u64,
        status: status.status,
        status_text: status.text.clone(),
    }
    .sign(identity)
}

/// The addresses worth registering now: those that others can dial.
pub(super) fn advertised(network: &Network, loopback_ok: bool) -> Vec<Multiaddr> {
    let listen = network.listen_addrs().borrow().clone();
    let reachability = *network.reachability().borrow();
    advertised_addrs(&listen, reachability, loopback_ok)
}

/// The addresses worth registering: those that others can dial.
pub fn advertised_addrs(
    listen: &[Multiaddr],
    reachability: Reachability,
    loopback_ok: bool,
) -> Vec<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let usable = |a: &Multiaddr| {
        a.iter().all(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            Protocol::Ip6(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            _ => true,
        })
    };
    // libp2p reports relayed listen addresses with our own /p2p/<id> at the
    // end; registered addresses carry none (docs/protocol.md §5.2).
    let (relayed, direct): (Vec<Multiaddr>, Vec<Multiaddr>) = listen
        .iter()
        .filter(|a| usable(a))
        .map(without_peer_suffix)
        .partition(is_relayed);
    match reachability {
        Reachability::Public => direct,
        Reachability::Private => relayed,
        Reachability::Unknown => direct.into_iter().chain(relayed).collect(),
    }
}

pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Unless reachable directly, we are reachable through a reservation on
/// the node's relay: make sure we hold one.
pub(super) async fn ensure_relay(network: &Network, node: &Multiaddr) {
    if *network.reachability().borrow() == Reachability::Public {
        return;
    }
    if network.listen_addrs().borrow().iter().any(is_relayed) {
        return;
    }
    let circuit = node.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    match tokio::time::timeout(RELAY_WAIT, network.listen(circuit)).await {
        Ok(Ok(())) => info!("reserved a slot on the rendezvous relay"),
        Ok(Err(e)) => warn!("cannot reserve a slot on the rendezvous relay: {e}"),
        Err(_) => warn!("the rendezvous relay did not grant a reservation in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online() -> Registration {
        let mut registration = Registration::new(&Config::default());
        registration.go_online(ScreenName::parse("alice").expect("a name"));
        registration
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/192.0.2.1/tcp/{port}")
            .parse()
            .expect("an address")
    }

    #[test]
    fn sequence_numbers_rise_even_when_the_clock_stands_still() {
        let mut registration = online();
        let mut last = 0;
        for _ in 0..1000 {
            let seq = registration.next_seq();
            assert!(seq > last, "{seq} after {last}");
            last = seq;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_due_a_period_after_the_last_one() {
        let mut registration = online();
        registration.renewal_sent();
        let due = registration.renew_at().expect("online");
        assert_eq!(due, Instant::now() + RENEW_EVERY);
        tokio::time::advance(RENEW_EVERY - Duration::from_secs(1)).await;
        assert!(
            registration
                .renew_at()
                .is_some_and(|at| at > Instant::now())
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            registration
                .renew_at()
                .is_some_and(|at| at <= Instant::now())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_the_node_could_not_store_is_tried_again_soon() {
        let mut registration = online();
        registration.renewal_unavailable();
        assert_eq!(
            registration.renew_at(),
            Some(Instant::now() + RENEW_WHILE_UNAVAILABLE)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registered_addresses_are_compared_with_the_last_ones() {
        let mut registration = online();
        assert!(registration.registered_differ(&[addr(1)]));
        assert!(registration.registered(&[addr(1)], Duration::from_secs(60)));
        assert_eq!(
            registration.renew_at(),
            Some(Instant::now() + Duration::from_secs(60))
        );
        assert!(!registration.registered_differ(&[addr(1)]));
        assert!(
            !registration.registered(&[addr(1)], RENEW_EVERY),
            "same addresses"
        );
        assert!(registration.registered(&[addr(1), addr(2)], RENEW_EVERY));
    }

    #[test]
    fn offline_there_is_nothing_to_renew() {
        let mut registration = Registration::new(&Config::default());
        assert_eq!(registration.renew_at(), None);
        assert!(!registration.registered(&[addr(1)], RENEW_EVERY));
        assert!(!registration.registered_differ(&[addr(1)]));
    }

    #[test]
    fn a_record_carries_our_status_and_a_fresh_sequence_number() {
        let identity = Identity::generate().expect("a key");
        let mut registration = online();
        registration.status = OwnStatus {
            status: Status::Away,
            text: "lunch".into(),
        };
        let name = ScreenName::parse("alice").expect("a name");
        let first = registration.record(&identity, &name, vec![addr(1)]);
        let second = registration.record(&identity, &name, vec![addr(1)]);
        let first = first.open().expect("signed by us");
        let second = second.open().expect("signed by us");
        assert_eq!(first.status, Status::Away);
        assert_eq!(first.status_text, "lunch");
        assert!(second.seq > first.seq);
    }
}
