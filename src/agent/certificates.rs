//! Our name certificate, and whose certificates of others' names we
//! accept (docs/protocol.md §5.7): the one place that decides which
//! certificate the links send and which issuers the inbox trusts. The core
//! owns it; the links and the inbox follow it through watch channels.

use std::time::Duration;

use libp2p::PeerId;
use messenger_proto::certificate::SignedCertificate;
use tokio::sync::watch;

use crate::directory::Registered;

/// How many keys our node's certificates came signed with are trusted
/// besides the nodes' own (a cluster's certificate key, and the one
/// before it while it changes).
const LEARNED_ISSUERS: usize = 2;

/// Our certificate and the issuers we trust.
#[derive(Debug)]
pub(super) struct Certificates {
    /// What the links send ahead of messages.
    current: watch::Sender<Option<SignedCertificate>>,
    /// Whose certificates of others' names the inbox accepts.
    issuers: watch::Sender<Vec<PeerId>>,
    /// The keys our node's certificates came signed with, newest first.
    learned: Vec<PeerId>,
}

impl Certificates {
    pub(super) fn new() -> Self {
        Self {
            current: watch::channel(None).0,
            issuers: watch::channel(Vec::new()).0,
            learned: Vec::new(),
        }
    }

    /// Our certificate, as it changes.
    pub(super) fn current(&self) -> watch::Receiver<Option<SignedCertificate>> {
        self.current.subscribe()
    }

    /// The issuers trusted, as they change.
    pub(super) fn issuers(&self) -> watch::Receiver<Vec<PeerId>> {
        self.issuers.subscribe()
    }

    /// Keeps the certificate of our own `registered` answer if it checks
    /// out (§5.7: it verifies under the key it names, its times hold at
    /// `now`, and it vouches for the registered name and `me`); its issuer
    /// is then trusted besides `nodes`. Otherwise says why, and what we
    /// had stays. `Ok(false)`: the answer brought none.
    pub(super) fn keep(
        &mut self,
        registered: &Registered,
        me: &PeerId,
        nodes: &[PeerId],
        now: u64,
    ) -> Result<bool, String> {
        let Some(signed) = &registered.certificate else {
            return Ok(false);
        };
        let issuer = signed
            .decode_unverified()
            .map_err(|e| format!("it does not decode: {e}"))?
            .node;
        let cert = signed
            .verify(&issuer, now)
            .map_err(|e| format!("it does not verify: {e}"))?;
        if !cert.vouches_for(&registered.name, me) {
            return Err("it is for another name or key".into());
        }
        self.current.send_replace(Some(signed.clone()));
        if self.learned.first() != Some(&issuer) {
            self.learned.retain(|k| *k != issuer);
            self.learned.insert(0, issuer);
            self.learned.truncate(LEARNED_ISSUERS);
        }
        self.publish(nodes);
        Ok(true)
    }

    /// Trusts the certificates of `nodes` (the rendezvous nodes we know)
    /// and of the issuers learned.
    pub(super) fn publish(&self, nodes: &[PeerId]) {
        let mut trusted = nodes.to_vec();
        for key in &self.learned {
            if !trusted.contains(key) {
                trusted.push(*key);
            }
        }
        self.issuers.send_if_modified(|now| {
            let changed = *now != trusted;
            *now = trusted;
            changed
        });
    }

    /// When to renew, at `now`: at half our certificate's remaining
    /// validity if that is sooner than `usual`. A lapsed one (the last
    /// renewal brought none that passed) does not hurry us: asking sooner
    /// would not bring one either.
    pub(super) fn renew_in(&self, now: u64, usual: Duration) -> Duration {
        let cert = self
            .current
            .borrow()
            .as_ref()
            .and_then(|c| c.decode_unverified().ok());
        let Some(cert) = cert else {
            return usual;
        };
        let left = Duration::from_millis(cert.expires_at.saturating_sub(now));
        if left.is_zero() {
            return usual;
        }
        (left / 2).clamp(Duration::from_secs(1), usual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::Identity;
    use messenger_proto::certificate::NameCertificate;
    use messenger_proto::name::ScreenName;

    const NOW: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn registered(name: &str, cert: Option<SignedCertificate>) -> Registered {
        Registered {
            name: ScreenName::parse(name).unwrap(),
            new_claim: false,
            expires_at: NOW + HOUR,
            certificate: cert,
        }
    }

    fn certificate(
        node: &Identity,
        name: &str,
        owner: PeerId,
        expires_at: u64,
    ) -> SignedCertificate {
        NameCertificate {
            name: ScreenName::parse(name).unwrap(),
            owner,
            node: node.peer_id(),
            issued_at: NOW - 1000,
            expires_at,
        }
        .sign(node)
    }

    #[test]
    fn only_a_certificate_that_vouches_for_me_is_kept_and_its_issuer_trusted() {
        let (me, node, cluster) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        let nodes = [node.peer_id()];
        let mut certs = Certificates::new();
        let issuers = certs.issuers();
        let current = certs.current();
        assert_eq!(
            certs.keep(&registered("alice", None), &me.peer_id(), &nodes, NOW),
            Ok(false)
        );

        // For another key, another name, or lapsed: refused, nothing kept.
        let other = Identity::generate().unwrap().peer_id();
        for (cert, why) in [
            (
                certificate(&cluster, "alice", other, NOW + HOUR),
                "another name or key",
            ),
            (
                certificate(&cluster, "bob", me.peer_id(), NOW + HOUR),
                "another name or key",
            ),
            (
                certificate(&cluster, "alice", me.peer_id(), NOW - 1),
                "does not verify",
            ),
        ] {
            let refused = certs
                .keep(&registered("alice", Some(cert)), &me.peer_id(), &nodes, NOW)
                .unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        assert!(current.borrow().is_none());

        // Mine, signed by the cluster's key: kept, and that key trusted.
        let good = certificate(&cluster, "alice", me.peer_id(), NOW + HOUR);
        assert_eq!(
            certs.keep(
                &registered("alice", Some(good.clone())),
                &me.peer_id(),
                &nodes,
                NOW
            ),
            Ok(true)
        );
        assert_eq!(current.borrow().as_ref(), Some(&good));
        assert_eq!(*issuers.borrow(), [node.peer_id(), cluster.peer_id()]);

        // Two issuers are remembered, newest first.
        let (second, third) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        for issuer in [&second, &third] {
            let cert = certificate(issuer, "alice", me.peer_id(), NOW + HOUR);
            certs
                .keep(&registered("alice", Some(cert)), &me.peer_id(), &nodes, NOW)
                .unwrap();
        }
        assert_eq!(
            *issuers.borrow(),
            [node.peer_id(), third.peer_id(), second.peer_id()]
        );
    }

    #[test]
    fn renewal_comes_at_half_the_certificate_s_time_left_and_not_in_a_hurry_once_lapsed() {
        let (me, node) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let usual = Duration::from_secs(180);
        let mut certs = Certificates::new();
        assert_eq!(certs.renew_in(NOW, usual), usual, "none yet");
        let cert = certificate(&node, "alice", me.peer_id(), NOW + 120_000);
        certs
            .keep(&registered("alice", Some(cert)), &me.peer_id(), &[], NOW)
            .unwrap();
        assert_eq!(certs.renew_in(NOW, usual), Duration::from_secs(60));
        assert_eq!(certs.renew_in(NOW + 119_000, usual), Duration::from_secs(1));
        assert_eq!(certs.renew_in(NOW + 200_000, usual), usual, "lapsed");
    }
}
