//! What became of a tunnel someone opened to me, step by step: the
//! entries of [`crate::events::Event::Tunnel`], apart from the serving so
//! that the events can name them without depending on it.

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::tunnel::TunnelRefusal;
use serde::{Deserialize, Serialize};

/// What a tunnel reaches on the serving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A port on 127.0.0.1.
    Port(u16),
    /// Whoever waits with `messenger pipe --listen`.
    Pipe,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Port(port) => write!(f, "port {port}"),
            Target::Pipe => f.write_str("a pipe"),
        }
    }
}

/// What became of a tunnel someone opened to me: the log line of each
/// step, as [`Event::Tunnel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelLog {
    /// Which tunnel (counted from 1 since the client started).
    pub id: u64,
    /// Who opened it: the contact's name, if the key is one's.
    pub peer: Option<ScreenName>,
    /// Their key.
    pub peer_id: PeerId,
    /// What it reaches.
    pub target: Target,
    /// What happened.
    pub state: TunnelState,
}

impl std::fmt::Display for TunnelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = self.peer.as_ref().map_or_else(
            || format!("a stranger ({})", self.peer_id),
            |n| n.to_string(),
        );
        let (id, target) = (self.id, self.target);
        match &self.state {
            TunnelState::Opened => write!(f, "tunnel {id}: {who} connected to {target}"),
            TunnelState::Refused { code } => {
                write!(f, "tunnel {id}: refused {who} {target}: {code}")
            }
            TunnelState::Closed {
                sent,
                received,
                millis,
                error,
            } => {
                write!(
                    f,
                    "tunnel {id}: {who} disconnected from {target} after {:.1} s ({} sent, {} received)",
                    *millis as f64 / 1000.0,
                    crate::size::human_size(*sent),
                    crate::size::human_size(*received),
                )?;
                match error {
                    Some(e) => write!(f, ": {e}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A step of a served tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TunnelState {
    /// Connected: bytes flow.
    Opened,
    /// Refused, and why.
    Refused {
        /// The code the peer was told.
        code: TunnelRefusal,
    },
    /// Ended.
    Closed {
        /// Bytes sent to the peer.
        sent: u64,
        /// Bytes received from the peer.
        received: u64,
        /// How long it was open, in ms.
        millis: u64,
        /// Why it ended, if not by both sides closing.
        error: Option<String>,
    },
}
