//! The node's name certificates: one with every accepted registration, so
//! that owners can show their peers that a name is theirs without the
//! peers asking the node (see `messenger_proto::certificate`).

use std::time::Duration;

use libp2p::PeerId;
use messenger_proto::Identity;
use messenger_proto::certificate::{MAX_VALIDITY_MS, NameCertificate, SignedCertificate};
use messenger_proto::name::ScreenName;

/// Signs certificates with the node's key.
#[derive(Debug, Clone)]
pub struct Certifier {
    identity: Identity,
    validity_ms: u64,
}

impl Certifier {
    /// Certificates signed by `identity`, valid for `validity` (at most the
    /// 24 hours recipients accept).
    pub fn new(identity: Identity, validity: Duration) -> Self {
        let validity_ms = u64::try_from(validity.as_millis()).unwrap_or(u64::MAX);
        Self {
            identity,
            validity_ms: validity_ms.clamp(1, MAX_VALIDITY_MS),
        }
    }

    /// A certificate that `name` is `owner`'s, from `now` (ms since epoch).
    pub fn issue(&self, name: &ScreenName, owner: PeerId, now: u64) -> SignedCertificate {
        NameCertificate {
            name: name.clone(),
            owner,
            node: self.identity.peer_id(),
            issued_at: now,
            expires_at: now.saturating_add(self.validity_ms),
        }
        .sign(&self.identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_verify_under_the_node_and_expire_on_time() {
        let node = Identity::from_seed([7; 32]);
        let alice = Identity::from_seed([1; 32]).peer_id();
        let certifier = Certifier::new(node.clone(), Duration::from_secs(60));
        let name = ScreenName::parse("alice").unwrap();
        let cert = certifier.issue(&name, alice, 1_000);
        let got = cert.verify(&node.peer_id(), 1_001).unwrap();
        assert!(got.vouches_for(&name, &alice));
        assert_eq!(got.expires_at, 61_000);
        assert!(cert.verify(&node.peer_id(), 61_000).is_err());
        // A validity over what recipients accept is cut down to it.
        let long = Certifier::new(node.clone(), Duration::from_secs(7 * 86_400));
        let cert = long
            .issue(&name, alice, 0)
            .verify(&node.peer_id(), 1)
            .unwrap();
        assert_eq!(cert.expires_at, MAX_VALIDITY_MS);
    }
}
