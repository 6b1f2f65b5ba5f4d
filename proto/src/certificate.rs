//! Name certificates: the node's signed word that a screen name belongs to
//! a key, for a short while.
//!
//! The node hands one out with every accepted registration. A sender
//! attaches its certificate when it opens a chat stream, and a recipient
//! that trusts the issuing node (the `/p2p/<id>` of its own rendezvous
//! address) accepts the sender's name from it without asking the node:
//! the first message to a new peer costs no directory round trip, and two
//! peers who already talk keep verifying each other while the node is
//! unreachable, until the certificates expire.
//!
//! Validity is short (an hour by default) because a certificate cannot be
//! revoked: a name released or handed to a new key stays certified to the
//! old one until then. A pinned contact's key still wins over any
//! certificate.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::CLOCK_SKEW_MS;
use crate::identity::{Identity, verifying_key_of};
use crate::name::ScreenName;
use crate::signed::{CERTIFICATE_CONTEXT, Signed, SignedError};

/// How long the node's certificates are valid unless the operator says
/// otherwise.
pub const DEFAULT_VALIDITY_MS: u64 = 60 * 60 * 1000;

/// The longest validity a recipient accepts, whatever the node says.
pub const MAX_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;

/// What the node signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCertificate {
    /// The screen name (normal form).
    pub name: ScreenName,
    /// The key that owns it.
    pub owner: PeerId,
    /// The node that issued it; its key signs the certificate.
    pub node: PeerId,
    /// When it was issued (ms since epoch, the node's clock).
    pub issued_at: u64,
    /// When it stops being valid (ms since epoch).
    pub expires_at: u64,
}

/// A [`NameCertificate`] with the node's signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedCertificate(pub Signed);

/// Why a certificate was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// Undecodable, or the signature does not verify.
    #[error("the certificate does not verify: {0}")]
    Signed(#[from] SignedError),
    /// Issued by another node than the one trusted.
    #[error("the certificate was issued by node {issuer}, not by the trusted node {trusted}")]
    WrongNode {
        /// Who issued it (base58).
        issuer: String,
        /// Whom the recipient trusts (base58).
        trusted: String,
    },
    /// Past its validity.
    #[error("the certificate expired at {expires_at} ms (now {now} ms)")]
    Expired {
        /// When it expired.
        expires_at: u64,
        /// The recipient's clock.
        now: u64,
    },
    /// Issued in the future, or valid for longer than a recipient accepts.
    #[error(
        "the certificate's validity ({issued_at}..{expires_at} ms) is not acceptable at {now} ms: \
         it must start no later than 5 minutes from now and last at most 24 hours"
    )]
    BadValidity {
        /// Start.
        issued_at: u64,
        /// End.
        expires_at: u64,
        /// The recipient's clock.
        now: u64,
    },
}

impl NameCertificate {
    /// Signs the certificate with the node's identity.
    pub fn sign(&self, node: &Identity) -> SignedCertificate {
        SignedCertificate(Signed::sign(node, CERTIFICATE_CONTEXT, self))
    }

    /// Whether it vouches for `name` being owned by `peer`.
    pub fn vouches_for(&self, name: &ScreenName, peer: &PeerId) -> bool {
        &self.name == name && &self.owner == peer
    }
}

impl SignedCertificate {
    /// Decodes the certificate and checks, in this order: that `trusted`
    /// issued it, its signature by that node's key, and that it is valid
    /// at `now_ms`.
    pub fn verify(
        &self,
        trusted: &PeerId,
        now_ms: u64,
    ) -> Result<NameCertificate, CertificateError> {
        let claimed: NameCertificate = self.0.decode_unverified()?;
        if &claimed.node != trusted {
            return Err(CertificateError::WrongNode {
                issuer: claimed.node.to_base58(),
                trusted: trusted.to_base58(),
            });
        }
        let key = verifying_key_of(trusted).ok_or(SignedError::NotEd25519)?;
        self.0.verify(CERTIFICATE_CONTEXT, &key)?;
        check_validity(&claimed, now_ms)?;
        Ok(claimed)
    }

    /// [`Self::verify`] against whichever of `trusted` issued it: a client
    /// trusts its nodes' keys and the key its cluster signs with.
    pub fn verify_by_any(
        &self,
        trusted: &[PeerId],
        now_ms: u64,
    ) -> Result<NameCertificate, CertificateError> {
        let claimed: NameCertificate = self.0.decode_unverified()?;
        match trusted.iter().find(|t| **t == claimed.node) {
            Some(issuer) => self.verify(issuer, now_ms),
            None => Err(CertificateError::WrongNode {
                issuer: claimed.node.to_base58(),
                trusted: trusted
                    .iter()
                    .map(|t| t.to_base58())
                    .collect::<Vec<_>>()
                    .join(" or "),
            }),
        }
    }

    /// Decodes without checking anything, e.g. to show when one expires.
    pub fn decode_unverified(&self) -> Result<NameCertificate, SignedError> {
        self.0.decode_unverified()
    }
}

fn check_validity(cert: &NameCertificate, now: u64) -> Result<(), CertificateError> {
    let bad = || CertificateError::BadValidity {
        issued_at: cert.issued_at,
        expires_at: cert.expires_at,
        now,
    };
    if cert.issued_at > now.saturating_add(CLOCK_SKEW_MS)
        || cert.expires_at < cert.issued_at
        || cert.expires_at - cert.issued_at > MAX_VALIDITY_MS
    {
        return Err(bad());
    }
    if cert.expires_at <= now {
        return Err(CertificateError::Expired {
            expires_at: cert.expires_at,
            now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn cert(node: &Identity, owner: &Identity) -> NameCertificate {
        NameCertificate {
            name: ScreenName::parse("alice").unwrap(),
            owner: owner.peer_id(),
            node: node.peer_id(),
            issued_at: NOW,
            expires_at: NOW + DEFAULT_VALIDITY_MS,
        }
    }

    #[test]
    fn a_certificate_from_the_trusted_node_verifies_until_it_expires() {
        let (node, alice) = (Identity::from_seed([7; 32]), Identity::from_seed([1; 32]));
        let signed = cert(&node, &alice).sign(&node);
        let got = signed.verify(&node.peer_id(), NOW + 1).unwrap();
        assert!(got.vouches_for(&ScreenName::parse("alice").unwrap(), &alice.peer_id()));
        assert!(!got.vouches_for(&ScreenName::parse("bob").unwrap(), &alice.peer_id()));
        assert!(matches!(
            signed.verify(&node.peer_id(), NOW + DEFAULT_VALIDITY_MS),
            Err(CertificateError::Expired { .. })
        ));
    }

    #[test]
    fn any_trusted_issuer_will_do_and_no_other() {
        let (cluster, node, alice) = (
            Identity::from_seed([7; 32]),
            Identity::from_seed([8; 32]),
            Identity::from_seed([1; 32]),
        );
        let signed = cert(&cluster, &alice).sign(&cluster);
        let trusted = [node.peer_id(), cluster.peer_id()];
        assert!(signed.verify_by_any(&trusted, NOW + 1).is_ok());
        let err = signed.verify_by_any(&trusted[..1], NOW + 1).unwrap_err();
        assert!(matches!(err, CertificateError::WrongNode { .. }), "{err}");
        // Naming a trusted issuer is not enough: its key must have signed.
        let mut forged = cert(&cluster, &alice);
        forged.node = cluster.peer_id();
        let forged = forged.sign(&node);
        assert!(forged.verify_by_any(&trusted, NOW + 1).is_err());
        assert!(signed.verify_by_any(&[], NOW + 1).is_err());
    }

    #[test]
    fn other_nodes_forgeries_and_odd_validities_are_refused() {
        let (node, alice) = (Identity::from_seed([7; 32]), Identity::from_seed([1; 32]));
        let other = Identity::from_seed([8; 32]);
        // Signed by another node, naming itself.
        let theirs = NameCertificate {
            node: other.peer_id(),
            ..cert(&node, &alice)
        }
        .sign(&other);
        assert!(matches!(
            theirs.verify(&node.peer_id(), NOW),
            Err(CertificateError::WrongNode { .. })
        ));
        // Naming the trusted node but signed by someone else (alice).
        let forged = cert(&node, &alice).sign(&alice);
        assert!(matches!(
            forged.verify(&node.peer_id(), NOW),
            Err(CertificateError::Signed(SignedError::BadSignature))
        ));
        let too_long = NameCertificate {
            expires_at: NOW + MAX_VALIDITY_MS + 1,
            ..cert(&node, &alice)
        }
        .sign(&node);
        assert!(matches!(
            too_long.verify(&node.peer_id(), NOW),
            Err(CertificateError::BadValidity { .. })
        ));
        let future = NameCertificate {
            issued_at: NOW + CLOCK_SKEW_MS + 1,
            expires_at: NOW + CLOCK_SKEW_MS + 2,
            ..cert(&node, &alice)
        }
        .sign(&node);
        assert!(matches!(
            future.verify(&node.peer_id(), NOW),
            Err(CertificateError::BadValidity { .. })
        ));
    }
}
