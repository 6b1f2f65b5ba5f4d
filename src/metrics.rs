//! What a running client shows when asked (`messenger online --metrics`):
//! libp2p's recorder for its swarm (connections by transport and outcome,
//! identify, ping round trips, hole punching), and the messenger's own
//! figures, fed from the one stream of events every front end reads (by
//! [`crate::events`]): messages written, acknowledged, refused and
//! received, presence changes, reconnects to the node, and whether it is
//! online now.

use std::fmt;

use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The client's metrics; the network loop and the agent's core record.
pub struct ClientMetrics {
    libp2p: libp2p::metrics::Metrics,
    sent: Counter,
    delivered: Counter,
    failed: Counter,
    received: Counter,
    presence: Counter,
    reconnects: Counter,
    online: Gauge,
}

impl fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMetrics").finish_non_exhaustive()
    }
}

impl ClientMetrics {
    /// Registers the client's metrics (and the process's) in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(registry);
        messenger_proto::metrics::ProcessCollector::register(registry);
        let own = registry.sub_registry_with_prefix("messenger");
        let metrics = Self {
            libp2p,
            sent: Counter::default(),
            delivered: Counter::default(),
            failed: Counter::default(),
            received: Counter::default(),
            presence: Counter::default(),
            reconnects: Counter::default(),
            online: Gauge::default(),
        };
        own.register(
            "messages_sent",
            "Messages of mine written to their recipient (acknowledgement pending)",
            metrics.sent.clone(),
        );
        own.register(
            "messages_delivered",
            "Messages of mine acknowledged by their recipient",
            metrics.delivered.clone(),
        );
        own.register(
            "messages_failed",
            "Messages of mine refused for good",
            metrics.failed.clone(),
        );
        own.register(
            "messages_received",
            "Messages received and stored",
            metrics.received.clone(),
        );
        own.register(
            "presence_changes",
            "Presence changes of watched names",
            metrics.presence.clone(),
        );
        own.register(
            "reconnects",
            "Times the connection to the rendezvous node was lost",
            metrics.reconnects.clone(),
        );
        own.register(
            "online",
            "1 while registered at a rendezvous node, else 0",
            metrics.online.clone(),
        );
        metrics
    }

    /// Registered at the node, or not (lost it, refused).
    pub fn set_online(&self, online: bool) {
        self.online.set(i64::from(online));
    }

    /// Lost the node; reconnecting.
    pub fn reconnecting(&self) {
        self.online.set(0);
        self.reconnects.inc();
    }

    /// A message came (its signature checked).
    pub fn message_received(&self) {
        self.received.inc();
    }

    /// A watched name's presence changed.
    pub fn presence_changed(&self) {
        self.presence.inc();
    }

    /// A message of mine was written to its recipient.
    pub fn message_sent(&self) {
        self.sent.inc();
    }

    /// A message of mine was acknowledged.
    pub fn message_delivered(&self) {
        self.delivered.inc();
    }

    /// A message of mine was refused for good.
    pub fn message_failed(&self) {
        self.failed.inc();
    }

    /// A swarm event, for libp2p's recorder.
    pub(crate) fn swarm_event<E>(&self, event: &SwarmEvent<E>) {
        self.libp2p.record(event);
    }

    /// An identify event, for libp2p's recorder.
    pub(crate) fn identify(&self, event: &libp2p::identify::Event) {
        self.libp2p.record(event);
    }

    /// A ping event, for libp2p's recorder.
    pub(crate) fn ping(&self, event: &libp2p::ping::Event) {
        self.libp2p.record(event);
    }

    /// A hole-punching event, for libp2p's recorder.
    pub(crate) fn dcutr(&self, event: &libp2p::dcutr::Event) {
        self.libp2p.record(event);
    }
}
