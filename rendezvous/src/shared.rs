//! What the registry shares with the other nodes of a cluster.
//!
//! A lone node keeps live registrations in memory only. In a cluster each
//! node still holds its own sessions' registrations, and also tells the
//! others of them (through a [`Shared`]) and hears of theirs: the users
//! online elsewhere whom its sessions watch, and any name it is asked to
//! resolve. The registry stays plain synchronous code; the cluster's I/O
//! is behind this trait (see [`crate::cluster`]).

use std::fmt::Debug;

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::record::SignedRecord;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Which node of a cluster holds a registration (its peer id, as text).
pub type NodeId = String;

/// A live registration as it travels between nodes. Everything else
/// (owner, addresses, status, expiry) is read from the signed record, whose
/// signature the receiving node checks again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedLive {
    /// The record the owner registered.
    pub record: SignedRecord,
    /// Who may still dial the owner while it is invisible.
    pub visible_to: Vec<PeerId>,
    /// When the owner went invisible in this session, if it is.
    pub hidden_since: Option<u64>,
}

/// A registration held by another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The node the owner is connected to.
    pub node: NodeId,
    /// What it registered there.
    pub live: SharedLive,
}

/// The other nodes of a cluster, as the registry reaches them.
///
/// Look-ups may block (run them on a blocking thread); the rest only
/// queue work for the cluster's task and return at once.
pub trait Shared: Send + Sync + Debug + 'static {
    /// The live registration of `name` on another node, if there is one.
    fn lookup(&self, name: &ScreenName) -> Result<Option<Held>, StoreError>;
    /// The live registrations of `owner` on other nodes.
    fn lookup_owner(&self, owner: &PeerId) -> Result<Vec<(ScreenName, Held)>, StoreError>;
    /// A registration on this node changed (`Some`) or ended (`None`).
    fn changed(&self, name: &ScreenName, live: Option<SharedLive>);
    /// This node's sessions started (`true`) or stopped watching `name`.
    fn interest(&self, name: &ScreenName, watching: bool);
    /// `name` was released here: other nodes forget its claim.
    fn released(&self, name: &ScreenName);
    /// `name` was claimed here: other nodes whose sessions watch it start
    /// hearing of it (nobody hears of a name nobody claimed).
    fn claimed(&self, name: &ScreenName);
}
