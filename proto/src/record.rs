//! The registration record: "this name is mine, and this is where I am".
//!
//! The owner signs it; the node checks it before accepting it and hands it
//! out unchanged on resolve, so that clients check it themselves instead of
//! trusting the node for addresses.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PeerKey, verifying_key_of};
use crate::name::{NameError, ScreenName};
use crate::presence::{Status, StatusError, check_status_text};
use crate::signed::{REGISTRATION_CONTEXT, Signed, SignedError};

/// Most addresses one record may carry.
pub const MAX_ADDRS: usize = 16;
/// Longest encoded address, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// What an owner signs when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The claimed screen name (normalised).
    pub name: ScreenName,
    /// The owner; its key signs the record.
    pub peer_id: PeerId,
    /// Where the owner can be dialled now. None ends in `/p2p/<id>`: the
    /// dialler knows whom it dials from `peer_id` (see [`check_addr`]).
    pub addrs: Vec<Multiaddr>,
    /// Grows with every new record from this owner for this name.
    pub seq: u64,
    /// Milliseconds since the Unix epoch after which the record is void.
    pub expires_at: u64,
    /// The status the owner chose.
    pub status: Status,
    /// A short note shown with the status, at most 128 characters.
    pub status_text: String,
}

/// A [`Registration`] with the owner's signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedRecord(pub Signed);

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Signature, key or payload problem.
    #[error(transparent)]
    Signed(#[from] SignedError),
    /// More addresses than allowed.
    #[error("record has {0} addresses; at most {MAX_ADDRS} are allowed")]
    TooManyAddrs(usize),
    /// An address longer than allowed.
    #[error("an address is {0} bytes long; at most {MAX_ADDR_LEN} are allowed")]
    AddrTooLong(usize),
    /// An address that breaks the form of [`check_addr`].
    #[error("address {addr} is not allowed: {problem}")]
    BadAddr {
        /// The address.
        addr: Multiaddr,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The status text breaks its rule.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The record's name is not a screen name in normal form.
    #[error("the record's name: {0}")]
    Name(NameError),
}

/// Checks the form of a registered address: not empty, and not ending in
/// `/p2p/<id>`. A relayed address is `<node address>/p2p/<node id>/p2p-circuit`:
/// the `/p2p/<owner id>` that libp2p appends to it when listening is
/// removed, as from every address, before signing.
pub fn check_addr(addr: &Multiaddr) -> Result<(), RecordError> {
    let problem = match addr.iter().last() {
        None => "it is empty",
        Some(Protocol::P2p(_)) => {
            "it ends in /p2p/<id>; registered addresses carry no peer id suffix"
        }
        Some(_) => return Ok(()),
    };
    Err(RecordError::BadAddr {
        addr: addr.clone(),
        problem,
    })
}

/// `addr` without a trailing `/p2p/<id>`, the form [`check_addr`] wants.
pub fn without_peer_suffix(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

impl Registration {
    /// Signs the record with the owner's identity.
    pub fn sign(&self, identity: &Identity) -> SignedRecord {
        SignedRecord(Signed::sign(identity, REGISTRATION_CONTEXT, self))
    }

    /// Checks the limits and forms of §5.2: how many addresses, how long,
    /// their form, and the status text.
    pub fn check_limits(&self) -> Result<(), RecordError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs(self.addrs.len()));
        }
        for addr in &self.addrs {
            if addr.len() > MAX_ADDR_LEN {
                return Err(RecordError::AddrTooLong(addr.len()));
            }
            check_addr(addr)?;
        }
        check_status_text(&self.status_text)?;
        Ok(())
    }
}

/// Just the name of a record whose payload did not decode: to tell a name
/// in the wrong form from any other damage.
#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

impl SignedRecord {
    /// Decodes the record and verifies it was signed by the peer it names.
    ///
    /// Does not check expiry or sequence: those depend on the reader's state.
    pub fn open(&self) -> Result<Registration, RecordError> {
        self.open_with(None)
    }

    /// As [`SignedRecord::open`], with the key of the peer expected to have
    /// signed it already decoded (a record naming another peer is checked
    /// against the key it names, as by `open`).
    pub fn open_as(&self, signer: &PeerKey) -> Result<Registration, RecordError> {
        self.open_with(Some(signer))
    }

    fn open_with(&self, signer: Option<&PeerKey>) -> Result<Registration, RecordError> {
        let claimed: Registration = match self.0.decode_unverified() {
            Ok(claimed) => claimed,
            Err(e) => {
                if let Ok(NameOnly { name }) = self.0.decode_unverified()
                    && let Err(bad) = ScreenName::parse_normal(&name)
                {
                    return Err(RecordError::Name(bad));
                }
                return Err(e.into());
            }
        };
        match signer.filter(|s| s.peer_id() == claimed.peer_id) {
            Some(signer) => self.0.verify(REGISTRATION_CONTEXT, signer.key())?,
            None => {
                let key = verifying_key_of(&claimed.peer_id).ok_or(SignedError::NotEd25519)?;
                self.0.verify(REGISTRATION_CONTEXT, &key)?;
            }
        }
        claimed.check_limits()?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &Identity) -> Registration {
        Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: id.peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            seq: 1,
            expires_at: 2_000_000_000_000,
            status: Status::Away,
            status_text: "back at 3".into(),
        }
    }

    #[test]
    fn opens_when_signed_by_the_named_peer() {
        let id = Identity::from_seed([9; 32]);
        let rec = record(&id);
        assert_eq!(rec.sign(&id).open().unwrap(), rec);
    }

    #[test]
    fn refuses_a_record_naming_another_peer() {
        let id = Identity::from_seed([9; 32]);
        let mallory = Identity::from_seed([6; 32]);
        let signed = record(&id).sign(&mallory);
        assert!(matches!(
            signed.open(),
            Err(RecordError::Signed(SignedError::BadSignature))
        ));
        // Nor does a known signer's key let one through: the record is
        // checked against the key it names.
        for signer in [id.peer_id(), mallory.peer_id()] {
            let signer = PeerKey::of(signer).unwrap();
            assert!(matches!(
                signed.open_as(&signer),
                Err(RecordError::Signed(SignedError::BadSignature))
            ));
        }
        let own = record(&mallory).sign(&mallory);
        assert_eq!(
            own.open_as(&PeerKey::of(id.peer_id()).unwrap()).unwrap(),
            record(&mallory)
        );
        assert_eq!(
            own.open_as(&PeerKey::of(mallory.peer_id()).unwrap())
                .unwrap(),
            record(&mallory)
        );
    }

    #[test]
    fn refuses_addresses_with_a_peer_id_suffix_and_names_not_in_normal_form() {
        let id = Identity::from_seed([9; 32]);
        let mut rec = record(&id);
        rec.addrs = vec![
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", id.peer_id())
                .parse()
                .unwrap(),
        ];
        assert!(matches!(
            rec.sign(&id).open(),
            Err(RecordError::BadAddr { .. })
        ));
        // A relayed address keeps the relay's id, before /p2p-circuit.
        let relayed: Multiaddr = format!(
            "/ip4/203.0.113.1/tcp/4001/p2p/{}/p2p-circuit/p2p/{}",
            Identity::from_seed([1; 32]).peer_id(),
            id.peer_id()
        )
        .parse()
        .unwrap();
        rec.addrs = vec![without_peer_suffix(&relayed)];
        assert!(rec.sign(&id).open().is_ok());

        #[derive(Serialize)]
        struct Upper<'a> {
            name: &'a str,
            peer_id: PeerId,
            addrs: Vec<Multiaddr>,
            seq: u64,
            expires_at: u64,
            status: Status,
            status_text: &'a str,
        }
        let upper = Upper {
            name: "ALICE",
            peer_id: id.peer_id(),
            addrs: vec![],
            seq: 1,
            expires_at: 2_000_000_000_000,
            status: Status::Online,
            status_text: "",
        };
        let signed = SignedRecord(Signed::sign(&id, REGISTRATION_CONTEXT, &upper));
        assert!(matches!(signed.open(), Err(RecordError::Name(_))));
    }

    #[test]
    fn refuses_too_many_addresses() {
        let id = Identity::from_seed([9; 32]);
        let mut rec = record(&id);
        rec.addrs = vec![rec.addrs[0].clone(); MAX_ADDRS + 1];
        assert!(matches!(
            rec.sign(&id).open(),
            Err(RecordError::TooManyAddrs(17))
        ));
    }
}
