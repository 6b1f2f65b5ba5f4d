//! Why an operation of the client failed: one error type per kind of
//! operation, each mapped to a [`Failure`] (its stable kind and sentence)
//! for the front ends, which map kinds to exit statuses in one place.

use messenger_proto::chat::TextError;
use messenger_proto::directory::{ErrorCode, ResolutionError};
use messenger_proto::name::{NameError, ScreenName};
use messenger_proto::presence::StatusError;

use crate::api::{Failure, FailureKind};
use crate::directory::DirectoryError;
use crate::home::HomeError;
use crate::network::NetworkError;
use crate::peer::KeyChange;
use crate::store::StoreError;

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The home's key or config is unusable.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The home's store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<&StartError> for Failure {
    fn from(e: &StartError) -> Self {
        match e {
            StartError::Home(_) => Failure::new(FailureKind::Other, e),
            StartError::Store(store) => Failure::from(store),
        }
    }
}

impl From<&StoreError> for Failure {
    fn from(e: &StoreError) -> Self {
        let kind = match e {
            StoreError::DiskFull { .. } => FailureKind::DiskFull,
            StoreError::Damaged { .. } => FailureKind::StoreDamaged,
            StoreError::InUse(_) => FailureKind::StoreInUse,
            _ => FailureKind::Other,
        };
        Failure::new(kind, e)
    }
}

/// Why a request to the rendezvous node failed (register, whois, release,
/// and the look-ups behind contacts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryFailure {
    /// No node address is known.
    #[error("no rendezvous node known")]
    NoNode,
    /// The name typed is not a screen name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The node failed or refused.
    #[error("rendezvous node {node}: {source}")]
    Node {
        /// The node's address.
        node: String,
        /// What it said, or how reaching it failed.
        source: Box<DirectoryError>,
    },
    /// The node's answer does not verify.
    #[error("the rendezvous node gave a record that does not verify: {0}")]
    BadResolution(#[from] ResolutionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A contact's key changed.
    #[error("{0}")]
    KeyChanged(Box<KeyChange>),
    /// Something about contacts: not one, say.
    #[error("{0}")]
    Contact(String),
}

impl From<&DirectoryFailure> for Failure {
    fn from(e: &DirectoryFailure) -> Self {
        let kind = match e {
            DirectoryFailure::NoNode => FailureKind::NoNode,
            DirectoryFailure::Name(_) => FailureKind::Invalid,
            DirectoryFailure::Node { source, .. } => match source.as_ref() {
                DirectoryError::Refused { code, .. } => match code {
                    ErrorCode::NameTaken => FailureKind::NameTaken,
                    ErrorCode::NoSuchName => FailureKind::NoSuchName,
                    ErrorCode::InvalidName => FailureKind::Invalid,
                    _ => FailureKind::Other,
                },
                DirectoryError::BadAddress { .. } => FailureKind::Invalid,
                _ => FailureKind::Unreachable,
            },
            DirectoryFailure::Store(store) => return Failure::from(store),
            DirectoryFailure::KeyChanged(_) => FailureKind::KeyChanged,
            DirectoryFailure::Network(_)
            | DirectoryFailure::BadResolution(_)
            | DirectoryFailure::Contact(_) => FailureKind::Other,
        };
        Failure::new(kind, e)
    }
}

/// Why a message could not be sent (or even queued).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// We have no screen name to send from.
    #[error("you have no screen name yet: register one first")]
    NoName,
    /// The text breaks the limits.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The recipient name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Nobody owns the recipient name.
    #[error("no such name: {0}")]
    NoSuchName(ScreenName),
    /// The node's answer does not verify.
    #[error("the rendezvous node gave a record for the recipient that does not verify: {0}")]
    BadResolution(#[from] ResolutionError),
    /// The recipient is a contact whose key changed since it was pinned.
    #[error("{0}")]
    KeyChanged(Box<KeyChange>),
    /// The recipient refused it, for good.
    #[error("{0}")]
    NotDelivered(String),
    /// The store failed: nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client stopped before the outcome was known.
    #[error("the client stopped before the message's outcome was known")]
    Stopped,
}

impl From<&SendError> for Failure {
    fn from(e: &SendError) -> Self {
        let kind = match e {
            SendError::NoName => FailureKind::NoName,
            SendError::Text(_) | SendError::Name(_) => FailureKind::Invalid,
            SendError::NoSuchName(_) => FailureKind::NoSuchName,
            SendError::KeyChanged(_) => FailureKind::KeyChanged,
            SendError::NotDelivered(_) => FailureKind::NotDelivered,
            SendError::Store(store) => return Failure::from(store),
            SendError::BadResolution(_) | SendError::Stopped => FailureKind::Other,
        };
        Failure::new(kind, e)
    }
}

/// Why a status could not be set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetStatusError {
    /// The status or its text breaks the rules.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The home's config could not be saved.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Registering the new status failed.
    #[error(transparent)]
    Directory(#[from] DirectoryFailure),
}

impl From<&SetStatusError> for Failure {
    fn from(e: &SetStatusError) -> Self {
        match e {
            SetStatusError::Status(_) => Failure::new(FailureKind::Invalid, e),
            SetStatusError::Home(_) => Failure::new(FailureKind::Other, e),
            SetStatusError::Directory(d) => Failure::from(d),
        }
    }
}

/// Why going online failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnlineError {
    /// We have no screen name to go online as.
    #[error("you have no screen name yet: register one first")]
    NoName,
    /// The client is online already.
    #[error("this client is online already")]
    AlreadyOnline,
    /// Listening or the node failed.
    #[error(transparent)]
    Directory(#[from] DirectoryFailure),
}

impl From<&OnlineError> for Failure {
    fn from(e: &OnlineError) -> Self {
        match e {
            OnlineError::NoName => Failure::new(FailureKind::NoName, e),
            OnlineError::AlreadyOnline => Failure::new(FailureKind::Other, e),
            OnlineError::Directory(d) => Failure::from(d),
        }
    }
}
