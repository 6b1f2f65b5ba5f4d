//! Message ids: chosen by the sender, kept by the recipient to drop
//! repeats, named by acknowledgements, file offers and the control socket.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A 128-bit random message id; shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // Fall back to time and address entropy rather than fail a send.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            bytes = (nanos ^ (&bytes as *const _ as u128)).to_be_bytes();
        }
        Self(bytes)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl std::str::FromStr for MessageId {
    type Err = String;

    /// 32 hex digits, as [`MessageId`] displays.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|e| format!("a message id is 32 hex digits: {e}"))?;
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| "a message id is 32 hex digits (16 bytes)".to_owned())?;
        Ok(Self(array))
    }
}

/// 16 bytes on the wire (CBOR); 32 hex digits in human-readable formats
/// (the control socket's JSON).
impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            return text.parse().map_err(serde::de::Error::custom);
        }
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let array: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
        Ok(Self(array))
    }
}
