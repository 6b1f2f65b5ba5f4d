//! Tunnels: a contact's program reaching a TCP port on my machine, and
//! pipes between two people's terminals, over the direct connection.
//!
//! I *invite* a contact to a port: my client keeps the invitation (their
//! pinned key and the port) and tells them in a chat message carrying an
//! [`Invitation`]. Their client then opens one stream of [`PROTOCOL`] per
//! TCP connection it tunnels, says which port it wants
//! ([`TunnelRequest::Connect`]), and, once I answered
//! [`TunnelAnswer::Open`], both sides copy bytes raw until each closes its
//! half. I decide from the connection's key alone (a peer cannot claim to
//! be someone else), connect the stream to `127.0.0.1:PORT` on my side,
//! and refuse everything else with a [`TunnelRefusal`].
//!
//! A *pipe* is the same stream without a port: [`TunnelRequest::Pipe`]
//! reaches whoever waits with `messenger pipe --listen` on the other side.
//! See docs/protocol.md §6.7.

use std::fmt;

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::codec::CodecError;

/// Protocol id of a tunnel stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/tunnel/1");

/// Largest frame on a tunnel stream (the tunnelled bytes are not framed).
pub const MAX_FRAME: usize = 256;

/// An invitation, or its withdrawal, told to the contact in a chat
/// message ([`crate::chat::Message::invite`]); its text describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The port on the inviter's machine (`127.0.0.1`), 1 to 65535.
    pub port: u16,
    /// Set when the invitation is withdrawn: the port is closed to them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
}

/// Why an invitation in a message is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an invitation names port 0; ports are 1 to 65535")]
pub struct PortZero;

/// Checks an invitation carried by a message.
pub fn check_invitation(invitation: &Invitation) -> Result<(), PortZero> {
    if invitation.port == 0 {
        Err(PortZero)
    } else {
        Ok(())
    }
}

/// The first frame on a tunnel stream, from the side that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelRequest {
    /// Connect this stream to `127.0.0.1:port` on your machine.
    Connect {
        /// The invited port.
        port: u16,
    },
    /// Would you connect me to `port`? Answered [`TunnelAnswer::Allowed`]
    /// or refused; nothing is connected (`messenger connect` asks before
    /// it listens, so a refusal shows at once).
    Check {
        /// The port asked about.
        port: u16,
    },
    /// Connect this stream to whoever waits for a pipe on your side.
    Pipe,
}

/// The answer to a [`TunnelRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelAnswer {
    /// Connected: raw bytes follow both ways.
    Open,
    /// The answer to a check: a connect would be served now. The stream
    /// ends.
    Allowed,
    /// Not served; the stream ends.
    Refused {
        /// Why.
        code: TunnelRefusal,
    },
}

/// Why a tunnel is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelRefusal {
    /// No invitation for this key at all.
    NotInvited,
    /// The invitation to this port was withdrawn.
    Revoked,
    /// Invited, but to other ports.
    PortNotInvited,
    /// Too many tunnels are open (from this peer, or in all).
    Busy,
    /// Nothing accepts connections on the invited port now.
    Unreachable,
    /// Nobody waits for a pipe (`messenger pipe --listen`).
    NoListener,
    /// A request this version does not know.
    Unsupported,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for TunnelRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelRefusal::NotInvited => "they have not invited you to connect",
            TunnelRefusal::Revoked => "they withdrew their invitation to that port",
            TunnelRefusal::PortNotInvited => "they invited you to other ports, not this one",
            TunnelRefusal::Busy => "too many tunnels are open to them now; try again later",
            TunnelRefusal::Unreachable => "nothing accepts connections on that port on their side",
            TunnelRefusal::NoListener => {
                "nobody waits for a pipe on their side (`messenger pipe --listen`)"
            }
            TunnelRefusal::Unsupported => "their client does not know this kind of tunnel",
            TunnelRefusal::Unknown => "they refused (a reason this version does not know)",
        })
    }
}

/// A request as read: one this version knows, or a kind from a later
/// version (to be refused as [`TunnelRefusal::Unsupported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A known request.
    Known(TunnelRequest),
    /// A later kind.
    Unknown,
}

/// Reads the request frame of a tunnel stream; `None` if the stream
/// ended before one.
pub async fn read_request<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Asked>, CodecError> {
    let Some(value) = crate::codec::read_frame::<_, ciborium::Value>(reader, MAX_FRAME).await?
    else {
        return Ok(None);
    };
    Ok(Some(match decode_request(value)? {
        Some(request) => Asked::Known(request),
        None => Asked::Unknown,
    }))
}

/// Reads a request from the CBOR value of its frame, telling an unknown
/// kind (from a later version: `Ok(None)`, to be refused as
/// [`TunnelRequest`]'s [`TunnelRefusal::Unsupported`]) from garbage.
pub fn decode_request(value: ciborium::Value) -> Result<Option<TunnelRequest>, CodecError> {
    use ciborium::Value;
    let known = |kind: &str| matches!(kind, "connect" | "check" | "pipe");
    let later_kind = match &value {
        Value::Text(kind) => !known(kind),
        Value::Map(entries) if entries.len() == 1 => {
            matches!(&entries[0].0, Value::Text(kind) if !known(kind))
        }
        _ => false,
    };
    match value.deserialized::<TunnelRequest>() {
        Ok(request) => Ok(Some(request)),
        Err(_) if later_kind => Ok(None),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn frames_round_trip_and_are_encoded_as_documented() {
        let connect = TunnelRequest::Connect { port: 8080 };
        let bytes = codec::to_cbor(&connect);
        // {"connect": {"port": 8080}}
        assert_eq!(hex::encode(&bytes), "a167636f6e6e656374a164706f7274191f90");
        let value = codec::from_cbor(&bytes).unwrap();
        assert_eq!(decode_request(value).unwrap(), Some(connect));
        assert_eq!(
            hex::encode(codec::to_cbor(&TunnelRequest::Pipe)),
            "6470697065"
        );
        assert_eq!(
            hex::encode(codec::to_cbor(&TunnelAnswer::Open)),
            "646f70656e"
        );
        let refused = TunnelAnswer::Refused {
            code: TunnelRefusal::Revoked,
        };
        assert_eq!(
            codec::from_cbor::<TunnelAnswer>(&codec::to_cbor(&refused)).unwrap(),
            refused
        );
        let doc = include_str!("../../docs/protocol.md");
        for encoded in [
            "a167636f6e6e656374a164706f7274191f90",
            "6470697065",
            "646f70656e",
        ] {
            assert!(
                doc.contains(encoded),
                "docs/protocol.md §6.7 shows {encoded}"
            );
        }
        let later = codec::to_cbor(&serde_json::json!({"refused": {"code": "on_fire"}}));
        assert_eq!(
            codec::from_cbor::<TunnelAnswer>(&later).unwrap(),
            TunnelAnswer::Refused {
                code: TunnelRefusal::Unknown
            }
        );
    }

    #[test]
    fn a_later_kind_of_request_is_unsupported_and_garbage_is_an_error() {
        let decode = |json: serde_json::Value| {
            decode_request(codec::from_cbor(&codec::to_cbor(&json)).unwrap())
        };
        assert_eq!(
            decode(serde_json::json!({"udp": {"port": 53}})).unwrap(),
            None
        );
        assert_eq!(decode(serde_json::json!("screen_share")).unwrap(), None);
        assert!(decode(serde_json::json!(17)).is_err());
        assert!(decode(serde_json::json!([1, 2])).is_err());
        assert!(decode(serde_json::json!({"connect": {"port": "http"}})).is_err());
    }

    #[test]
    fn invitations_name_a_port_and_say_when_withdrawn() {
        let open = Invitation {
            port: 3389,
            withdrawn: false,
        };
        let json = serde_json::to_string(&open).unwrap();
        assert_eq!(json, r#"{"port":3389}"#);
        assert!(check_invitation(&open).is_ok());
        assert!(
            check_invitation(&Invitation {
                port: 0,
                withdrawn: false
            })
            .is_err()
        );
        let withdrawn: Invitation =
            serde_json::from_str(r#"{"port":3389,"withdrawn":true}"#).unwrap();
        assert!(withdrawn.withdrawn);
    }
}
