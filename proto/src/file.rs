//! Files sent directly between two clients.
//!
//! A file is *offered* in a chat message ([`crate::chat::Message::file`]):
//! its name, size and BLAKE3 hash, signed by the sender with the rest of
//! the message and delivered like any message (stored, acknowledged,
//! resent). The recipient *fetches* it when it accepts: it opens a stream
//! of [`PROTOCOL`] to the sender, asks for the file from an offset (what
//! it already has: a transfer resumes), receives the bytes raw, checks the
//! whole content against the offered hash and says what it found. So the
//! sender serves only what it offered, only to the key that acknowledged
//! the offer, and the recipient keeps only what hashes to what was signed.
//! See docs/protocol.md §6.6.

use std::fmt;

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::id::MessageId;

/// Protocol id of a file stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/file/1");

/// Largest frame on a file stream (the bytes of the file are not framed).
pub const MAX_FRAME: usize = 1024;

/// Longest offered name, in bytes of UTF-8.
pub const MAX_NAME: usize = 255;

/// A file offered in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The file's name, a base name (see [`safe_name`]).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The BLAKE3 hash of its content.
    pub hash: ContentHash,
}

/// A BLAKE3 hash: 32 bytes on the wire, 64 hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = if d.is_human_readable() {
            let text = String::deserialize(d)?;
            hex::decode(&text).map_err(serde::de::Error::custom)?
        } else {
            serde_bytes::ByteBuf::deserialize(d)?.into_vec()
        };
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        Ok(Self(array))
    }
}

/// What an offer must be, for its message to be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The name is not a safe base name.
    #[error(
        "the offered file name {0:?} is not a plain file name (1 to 255 bytes, no directories, control characters or reserved names)"
    )]
    BadName(String),
}

/// Checks an offer as it arrives: its name must be what [`safe_name`]
/// makes of it (a sender offers safe names; a receiver still saves under
/// `safe_name` of whatever came).
pub fn check_offer(offer: &FileOffer) -> Result<(), OfferError> {
    if safe_name(&offer.name) != offer.name {
        return Err(OfferError::BadName(offer.name.clone()));
    }
    Ok(())
}

/// Device names Windows reserves, with or without an extension.
const RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// A name that is safe to create in any directory: the last component of
/// `offered` (after `/` or `\`), without control characters, not hidden
/// (no leading dot), not a reserved device name, at most [`MAX_NAME`]
/// bytes (the extension kept), never empty.
pub fn safe_name(offered: &str) -> String {
    let base = offered.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .trim_end_matches(['.', ' '])
        .to_owned();
    let mut name = if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    };
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if RESERVED.contains(&stem.trim_end()) {
        name.insert(0, '_');
    }
    if name.len() > MAX_NAME {
        let ext = name
            .rfind('.')
            .map(|i| name[i..].to_owned())
            .filter(|e| e.len() <= 16)
            .unwrap_or_default();
        let mut cut = MAX_NAME - ext.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{ext}", &name[..cut]);
    }
    name
}

/// The first frame on a file stream, from the recipient of an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRequest {
    /// Send me the file of offer `id` from byte `offset` on.
    Get {
        /// The offer's message id.
        id: MessageId,
        /// Bytes I have already.
        offset: u64,
    },
    /// I decline offer `id`: do not expect me to fetch it.
    Decline {
        /// The offer's message id.
        id: MessageId,
    },
}

/// The sender's answer to a [`FileRequest::Get`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAnswer {
    /// The bytes from `offset` to `size` follow, unframed; then the
    /// recipient sends its [`FileVerdict`].
    Sending {
        /// Where the bytes start.
        offset: u64,
        /// The file's size: the bytes end there.
        size: u64,
    },
    /// Not served; the stream ends.
    Refused {
        /// Why.
        code: FileRefusal,
    },
}

/// Why a sender does not serve a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRefusal {
    /// No such offer to this peer (or it was withdrawn).
    NoSuchOffer,
    /// The file changed or went away since it was offered.
    Changed,
    /// The offer is settled (completed or declined).
    Settled,
    /// The offset lies past the end of the file.
    BadOffset,
    /// The sender cannot read its file now; asking later may work.
    Unavailable,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for FileRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRefusal::NoSuchOffer => "the sender has no such offer for us (withdrawn?)",
            FileRefusal::Changed => "the file changed or went away on the sender's side",
            FileRefusal::Settled => "the sender considers the transfer settled",
            FileRefusal::BadOffset => "we asked for bytes past the end of the file",
            FileRefusal::Unavailable => "the sender cannot read the file now",
            FileRefusal::Unknown => "the sender refused (a reason this version does not know)",
        })
    }
}

/// The recipient's last frame: what the whole content hashed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileVerdict {
    /// It matches the offered hash: saved.
    Verified,
    /// It does not: thrown away.
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn hostile_names_become_plain_base_names() {
        let cases = [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("/abs", "abs"),
            ("C:\\Windows\\system32\\evil.dll", "evil.dll"),
            ("con", "_con"),
            ("CON.txt", "_CON.txt"),
            ("lpt1", "_lpt1"),
            ("console.txt", "console.txt"),
            ("line\nbreak\r.txt", "linebreak.txt"),
            ("..", "file"),
            (".", "file"),
            ("", "file"),
            ("dir/", "file"),
            (".bashrc", "bashrc"),
            ("trailing. ", "trailing"),
            ("\u{1b}[31mred", "[31mred"),
        ];
        for (offered, want) in cases {
            assert_eq!(safe_name(offered), want, "{offered:?}");
            assert_eq!(safe_name(want), want, "{want:?} is stable");
        }
        let long = format!("{}.tar.gz", "é".repeat(200));
        let safe = safe_name(&long);
        assert!(safe.len() <= MAX_NAME, "{}", safe.len());
        assert!(safe.ends_with(".gz"), "{safe}");
        assert_eq!(safe_name(&safe), safe);
    }

    #[test]
    fn an_offer_must_carry_a_safe_name() {
        let offer = |name: &str| FileOffer {
            name: name.into(),
            size: 1,
            hash: ContentHash([7; 32]),
        };
        assert!(check_offer(&offer("a.txt")).is_ok());
        assert!(check_offer(&offer("../a.txt")).is_err());
        assert!(check_offer(&offer("nul")).is_err());
    }

    #[test]
    fn frames_round_trip_and_are_encoded_as_documented() {
        let get = FileRequest::Get {
            id: MessageId([0xab; 16]),
            offset: 1024,
        };
        let bytes = codec::to_cbor(&get);
        assert_eq!(codec::from_cbor::<FileRequest>(&bytes).unwrap(), get);
        assert_eq!(
            hex::encode(codec::to_cbor(&FileVerdict::Verified)),
            "687665726966696564"
        );
        assert!(
            include_str!("../../docs/protocol.md").contains("687665726966696564"),
            "docs/protocol.md §6.6 shows the verdict's encoding"
        );
        let refused = FileAnswer::Refused {
            code: FileRefusal::Changed,
        };
        assert_eq!(
            codec::from_cbor::<FileAnswer>(&codec::to_cbor(&refused)).unwrap(),
            refused
        );
        // A refusal code from a later version reads as unknown.
        let later = codec::to_cbor(&serde_json::json!({"refused": {"code": "on_fire"}}));
        assert_eq!(
            codec::from_cbor::<FileAnswer>(&later).unwrap(),
            FileAnswer::Refused {
                code: FileRefusal::Unknown
            }
        );
    }

    #[test]
    fn hashes_are_hex_in_json() {
        let hash = ContentHash([1; 32]);
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", "01".repeat(32)));
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), hash);
    }
}
