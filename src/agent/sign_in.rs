//! Signing in on a home that has no name yet: the first-run form of every
//! front end (the terminal window's, the web page's) asks for a node and a
//! name, and this makes them the home's.

use libp2p::Multiaddr;
use messenger_proto::name::ScreenName;
use tokio::sync::mpsc;

use super::{Agent, AgentConfig};
use crate::api::{Event, Failure, FailureKind, Request, Response};
use crate::home::Home;

/// A client signed in: registered under `name`, not online yet (its owner
/// takes it online, as it would any other).
#[derive(Debug)]
pub struct SignedIn {
    /// The client.
    pub agent: Agent,
    /// Its events.
    pub events: mpsc::Receiver<Event>,
    /// The name it registered.
    pub name: ScreenName,
    /// Whether this claimed it (false: the key owned it already).
    pub new_claim: bool,
    /// The node that answered, remembered in the home.
    pub rendezvous: Multiaddr,
}

/// Starts the client of `home` with the node(s) `rendezvous` (multiaddrs
/// separated by commas; empty: the remembered ones) and claims `name`,
/// both remembered in the home. On failure nothing runs, and the failure
/// says what was wrong in words for the form.
pub async fn sign_in(home: Home, rendezvous: &str, name: &str) -> Result<SignedIn, Failure> {
    let mut nodes = Vec::new();
    for addr in rendezvous
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match addr.parse::<Multiaddr>() {
            Ok(node) => nodes.push(node),
            Err(e) => {
                return Err(Failure::new(
                    FailureKind::Invalid,
                    format!(
                        "{addr:?} is not a multiaddr ({e}): give one of the lines `rendezvous` prints, like /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW…"
                    ),
                ));
            }
        }
    }
    let name = ScreenName::parse(name.trim()).map_err(|e| Failure::new(FailureKind::Invalid, e))?;
    let config = AgentConfig::for_home(home, nodes).map_err(|e| Failure::from(&e))?;
    let (agent, events) = Agent::start(config).await.map_err(|e| Failure::from(&e))?;
    match agent.call(Request::Register { name }).await {
        Response::Registered {
            name,
            new_claim,
            rendezvous,
            ..
        } => Ok(SignedIn {
            agent,
            events,
            name,
            new_claim,
            rendezvous,
        }),
        Response::Failed(failure) => {
            agent.shutdown().await;
            Err(failure)
        }
        other => {
            agent.shutdown().await;
            Err(Failure::new(
                FailureKind::Other,
                format!("unexpected answer: {other:?}"),
            ))
        }
    }
}
