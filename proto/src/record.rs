//! The registration record: "this name is mine, and this is where I am".
//!
//! The owner signs it; the node checks it before accepting it and hands it
//! out unchanged on resolve, so that clients check it themselves instead of
//! trusting the node for addresses.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, verifying_key_of};
use crate::name::ScreenName;
use crate::presence::{MAX_STATUS_TEXT, Status, check_status_text};
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
    /// Where the owner can be dialled now, without `/p2p/` suffix.
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
    /// A status text longer than allowed.
    #[error("the status text is {0} characters long; at most {MAX_STATUS_TEXT} are allowed")]
    StatusTooLong(usize),
}

impl Registration {
    /// Signs the record with the owner's identity.
    pub fn sign(&self, identity: &Identity) -> SignedRecord {
        SignedRecord(Signed::sign(identity, REGISTRATION_CONTEXT, self))
    }

    /// Checks the size limits on addresses.
    pub fn check_limits(&self) -> Result<(), RecordError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs(self.addrs.len()));
        }
        if let Some(long) = self.addrs.iter().find(|a| a.len() > MAX_ADDR_LEN) {
            return Err(RecordError::AddrTooLong(long.len()));
        }
        if check_status_text(&self.status_text).is_err() {
            return Err(RecordError::StatusTooLong(self.status_text.chars().count()));
        }
        Ok(())
    }
}

impl SignedRecord {
    /// Decodes the record and verifies it was signed by the peer it names.
    ///
    /// Does not check expiry or sequence: those depend on the reader's state.
    pub fn open(&self) -> Result<Registration, RecordError> {
        let claimed: Registration = self.0.decode_unverified()?;
        let key = verifying_key_of(&claimed.peer_id).ok_or(SignedError::NotEd25519)?;
        self.0.verify(REGISTRATION_CONTEXT, &key)?;
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
