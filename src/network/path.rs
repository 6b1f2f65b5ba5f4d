//! How a peer is reached, and whether we can be: the network's findings
//! that front ends show, kept apart from the event loop so that the
//! command set and the events can name them without depending on it.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

/// Whether others can dial us, as the rendezvous node found by dialling back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not known yet.
    Unknown,
    /// The node could dial our addresses: others can too.
    Public,
    /// The node could not: we are behind NAT or a firewall.
    Private,
}

/// How we are connected to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// A direct connection (possibly after hole punching).
    Direct,
    /// Only through the rendezvous node's relay.
    Relayed,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        })
    }
}

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}
