//! Signatures over exact bytes.
//!
//! A signed value travels as the CBOR bytes that were signed plus the
//! signature, never re-encoded: the verifier checks the bytes it received
//! and only then decodes them. The signature covers a context string that
//! names what the bytes are, so a signature made for one purpose cannot be
//! replayed as another: `ed25519(context || payload)`.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::codec::{self, CodecError};
use crate::identity::Identity;

/// Context of a registration record.
pub const REGISTRATION_CONTEXT: &[u8] = b"messenger/registration/v1\0";
/// Context of a direct message.
pub const MESSAGE_CONTEXT: &[u8] = b"messenger/message/v1\0";
/// Context of a node's name certificate.
pub const CERTIFICATE_CONTEXT: &[u8] = b"messenger/name-certificate/v1\0";

/// Payload bytes and the ed25519 signature over `context || payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// CBOR encoding of the signed value.
    #[serde(with = "bytes_or_hex")]
    pub payload: Vec<u8>,
    /// 64-byte ed25519 signature.
    #[serde(with = "bytes_or_hex")]
    pub signature: Vec<u8>,
}

/// Byte strings on the wire (CBOR); hex in human-readable formats (the
/// control socket's JSON).
mod bytes_or_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            return hex::decode(text).map_err(serde::de::Error::custom);
        }
        Ok(serde_bytes::ByteBuf::deserialize(d)?.into_vec())
    }
}

/// Why a signed value was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    /// The signature does not verify under the expected key.
    #[error("bad signature")]
    BadSignature,
    /// The signer's peer id is not an ed25519 key.
    #[error("signer is not an ed25519 peer id")]
    NotEd25519,
    /// The payload is not a valid encoding of the expected value.
    #[error("malformed payload: {0}")]
    Malformed(#[from] CodecError),
}

impl Signed {
    /// Encodes `value` and signs it under `context`.
    pub fn sign<T: Serialize>(identity: &Identity, context: &[u8], value: &T) -> Self {
        let payload = codec::to_cbor(value);
        let signature = identity.sign(context, &payload).to_bytes().to_vec();
        Self { payload, signature }
    }

    /// Checks the signature under `context` with `key`.
    pub fn verify(&self, context: &[u8], key: &VerifyingKey) -> Result<(), SignedError> {
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| SignedError::BadSignature)?;
        let mut bytes = Vec::with_capacity(context.len() + self.payload.len());
        bytes.extend_from_slice(context);
        bytes.extend_from_slice(&self.payload);
        key.verify(&bytes, &signature)
            .map_err(|_| SignedError::BadSignature)
    }

    /// Decodes the payload without checking the signature.
    ///
    /// Only for finding out who claims to have signed it; call
    /// [`Signed::verify`] before trusting anything in it.
    pub fn decode_unverified<T: DeserializeOwned>(&self) -> Result<T, SignedError> {
        Ok(codec::from_cbor(&self.payload)?)
    }

    /// Verifies with `key`, then decodes.
    pub fn open<T: DeserializeOwned>(
        &self,
        context: &[u8],
        key: &VerifyingKey,
    ) -> Result<T, SignedError> {
        self.verify(context, key)?;
        self.decode_unverified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sign_then_open_round_trips(seed in any::<[u8; 32]>(), value in any::<(String, u64, Vec<u8>)>()) {
            let id = Identity::from_seed(seed);
            let signed = Signed::sign(&id, MESSAGE_CONTEXT, &value);
            let back: (String, u64, Vec<u8>) = signed.open(MESSAGE_CONTEXT, &id.verifying_key()).unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn any_flipped_bit_is_refused(seed in any::<[u8; 32]>(), bit in 0usize..(8 * 70)) {
            let id = Identity::from_seed(seed);
            let mut signed = Signed::sign(&id, MESSAGE_CONTEXT, &"hello");
            let total = signed.payload.len() + signed.signature.len();
            let bit = bit % (8 * total);
            let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
            if byte < signed.payload.len() {
                signed.payload[byte] ^= mask;
            } else {
                signed.signature[byte - signed.payload.len()] ^= mask;
            }
            prop_assert!(signed.verify(MESSAGE_CONTEXT, &id.verifying_key()).is_err());
        }
    }

    #[test]
    fn context_and_key_matter() {
        let id = Identity::from_seed([3; 32]);
        let other = Identity::from_seed([4; 32]);
        let signed = Signed::sign(&id, MESSAGE_CONTEXT, &42u32);
        assert!(signed.verify(MESSAGE_CONTEXT, &id.verifying_key()).is_ok());
        assert!(
            signed
                .verify(REGISTRATION_CONTEXT, &id.verifying_key())
                .is_err()
        );
        assert!(
            signed
                .verify(MESSAGE_CONTEXT, &other.verifying_key())
                .is_err()
        );
    }
}
