//! Framing: every protocol sends CBOR values, each preceded by its length.
//!
//! A frame is a 4-byte big-endian length `n` followed by `n` bytes of CBOR.
//! The reader refuses a length above the protocol's limit before reading or
//! allocating anything, so a peer cannot make us buffer more than the limit.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Stream};
use serde::{Serialize, de::DeserializeOwned};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// The announced or encoded frame is larger than allowed.
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// Size of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected value.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a value as CBOR.
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail, and all our types are serialisable.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    out
}

/// Decodes a CBOR value, rejecting trailing bytes.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut reader = bytes;
    let value =
        ciborium::from_reader(&mut reader).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the value",
            reader.len()
        )));
    }
    Ok(value)
}

/// Encodes `value` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    let len = out.len() - 4;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W, T>(writer: &mut W, value: &T, max: usize) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(value, max)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<R, T>(reader: &mut R, max: usize) -> Result<Option<T>, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let n = reader.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    from_cbor(&body).map(Some)
}

/// The frames of `reader` as a stream that ends after a clean end or after
/// yielding the first error. Unlike `read_frame` in a `select!` loop,
/// polling it is cancel-safe: a frame half read stays in the stream. One
/// task can then read and write a stream, so that nothing writes to it
/// after a failed read (libp2p's lazily negotiated streams panic on that).
pub fn frames<R, T>(reader: R, max: usize) -> impl Stream<Item = Result<T, CodecError>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    futures::stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        match read_frame(&mut reader, max).await {
            Ok(Some(frame)) => Some((Ok(frame), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use proptest::prelude::*;

    #[test]
    fn refuses_oversized_length_before_reading_the_body() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let err = block_on(read_frame::<_, String>(&mut bytes, 1024)).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 1024, .. }));
    }

    #[test]
    fn clean_end_truncation_and_garbage() {
        let mut empty: &[u8] = &[];
        assert!(
            block_on(read_frame::<_, String>(&mut empty, 16))
                .unwrap()
                .is_none()
        );
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            block_on(read_frame::<_, String>(&mut short, 16)),
            Err(CodecError::Io(_))
        ));
        let mut garbage: &[u8] = &[0, 0, 0, 1, 0xff];
        assert!(matches!(
            block_on(read_frame::<_, String>(&mut garbage, 16)),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            encode_frame(&"x".repeat(40), 16),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_frame_stream_ends_at_a_clean_end_or_after_its_first_error() {
        use futures::StreamExt;
        let mut bytes = Vec::new();
        block_on(write_frame(&mut bytes, &"one", 16)).unwrap();
        block_on(write_frame(&mut bytes, &"two", 16)).unwrap();
        let read: Vec<String> = block_on(
            frames::<_, String>(&bytes[..], 16)
                .map(Result::unwrap)
                .collect(),
        );
        assert_eq!(read, ["one", "two"]);
        bytes.extend_from_slice(&[0, 0, 0, 1, 0xff]);
        block_on(write_frame(&mut bytes, &"never", 16)).unwrap();
        let read: Vec<Result<String, CodecError>> = block_on(frames(&bytes[..], 16).collect());
        assert_eq!(read.len(), 3);
        assert!(matches!(read[2], Err(CodecError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn frames_round_trip(values in proptest::collection::vec(any::<(String, u64, Option<bool>)>(), 0..8)) {
            let mut buf = Vec::new();
            for v in &values {
                block_on(write_frame(&mut buf, v, 1 << 20)).unwrap();
            }
            let mut reader = &buf[..];
            for v in &values {
                let back: (String, u64, Option<bool>) = block_on(read_frame(&mut reader, 1 << 20)).unwrap().unwrap();
                prop_assert_eq!(&back, v);
            }
            prop_assert!(block_on(read_frame::<_, String>(&mut reader, 1 << 20)).unwrap().is_none());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_cbor::<crate::directory::Request>(&bytes);
            let _ = from_cbor::<crate::chat::ChatFrame>(&bytes);
        }
    }
}
