//! The ed25519 identity of a user or a node, kept in a key file.
//!
//! The file is text so that a damaged one can be recognised and explained:
//!
//! ```text
//! messenger-ed25519-v1
//! secret <64 hex digits: the 32-byte ed25519 seed>
//! public <64 hex digits: the public key derived from it>
//! ```
//!
//! The public line is redundant on purpose: a file whose two lines disagree
//! is corrupt, and we say so instead of silently becoming someone else.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use libp2p::identity::{self, Keypair};

const HEADER: &str = "messenger-ed25519-v1";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Others than the owner may read the file.
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}); a secret key must be private: run `chmod 600 {path}`"
    )]
    Insecure {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file exists but does not hold a valid key.
    #[error(
        "key file {path} is corrupt ({reason}); refusing to create a new identity over it: restore it from a backup, or move it away to start over with a new identity"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// An ed25519 identity: signs records and messages, and gives the libp2p keypair.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    /// Derived once: deriving it decodes the public key again, and it is
    /// asked for with every record and certificate signed.
    peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The identity with this 32-byte seed (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        Self {
            peer_id: peer_id_of(&signing.verifying_key()),
            signing,
        }
    }

    /// Loads the key file at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.create(path)?;
                Ok(identity)
            }
            other => other,
        }
    }

    /// Loads an existing key file, checking its permissions and contents.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Insecure {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(io_err)?;
        Self::decode(&bytes).map_err(|reason| IdentityError::Corrupt {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the key file format; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not {HEADER:?}"));
        }
        let field = |line: Option<&str>, key: &str| -> Result<[u8; 32], String> {
            let line = line.ok_or_else(|| format!("missing `{key}` line (truncated?)"))?;
            let value = line
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| format!("expected a `{key}` line"))?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(value.trim(), &mut out)
                .map_err(|e| format!("`{key}` is not 64 hex digits: {e}"))?;
            Ok(out)
        };
        let secret = field(lines.next(), "secret")?;
        let public = field(lines.next(), "public")?;
        let identity = Self::from_seed(secret);
        if identity.verifying_key().to_bytes() != public {
            return Err("the public key does not match the secret key".to_owned());
        }
        Ok(identity)
    }

    /// The key file contents.
    pub fn encode(&self) -> String {
        format!(
            "{HEADER}\nsecret {}\npublic {}\n",
            hex::encode(self.signing.to_bytes()),
            hex::encode(self.verifying_key().to_bytes())
        )
    }

    /// Writes a new key file with mode 0600; never overwrites an existing one.
    pub fn create(&self, path: &Path) -> Result<(), IdentityError> {
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        file.write_all(self.encode().as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        if let Some(dir) = path.parent() {
            // Make the new directory entry durable too.
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// The ed25519 public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The libp2p keypair for the swarm.
    pub fn keypair(&self) -> Keypair {
        // The seed is always 32 bytes, which is all ed25519_from_bytes checks.
        let mut seed = self.signing.to_bytes();
        match Keypair::ed25519_from_bytes(&mut seed) {
            Ok(k) => k,
            Err(_) => unreachable!("a 32-byte seed is a valid ed25519 secret key"),
        }
    }

    /// The libp2p peer id of this identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Signs `context || payload` (see [`crate::signed`]).
    pub fn sign(&self, context: &[u8], payload: &[u8]) -> ed25519_dalek::Signature {
        let mut bytes = Vec::with_capacity(context.len() + payload.len());
        bytes.extend_from_slice(context);
        bytes.extend_from_slice(payload);
        self.signing.sign(&bytes)
    }
}

/// Creates `dir` (and parents) readable only by its owner, if missing.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The libp2p peer id of an ed25519 public key.
pub fn peer_id_of(key: &VerifyingKey) -> PeerId {
    match identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()) {
        Ok(pk) => identity::PublicKey::from(pk).to_peer_id(),
        Err(_) => unreachable!("a VerifyingKey is a valid ed25519 public key"),
    }
}

/// The ed25519 public key inside a peer id, if it is an ed25519 peer id.
///
/// Ed25519 peer ids embed the key itself (identity multihash), so any
/// signature by a peer can be checked from its peer id alone. Decoding a
/// key costs about a quarter of a signature check (a square root on the
/// curve): to check many signatures of one peer, decode once ([`PeerKey`]).
pub fn verifying_key_of(peer: &PeerId) -> Option<VerifyingKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    // The one encoding libp2p gives an ed25519 key (key type 1, then 32
    // bytes), read directly so that the point is decoded once, not twice.
    if let Some(key) = hash.digest().strip_prefix(&ED25519_PROTOBUF_PREFIX) {
        let bytes: &[u8; 32] = key.try_into().ok()?;
        return VerifyingKey::from_bytes(bytes).ok();
    }
    let pk = identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    VerifyingKey::from_bytes(&ed.to_bytes()).ok()
}

/// The protobuf fields before an ed25519 key in a peer id: `Type =
/// Ed25519` (field 1, varint 1), then `Data` (field 2, 32 bytes).
const ED25519_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// A peer id with its ed25519 key decoded once: for checking many
/// signatures of the same peer (a node checks every registration of a
/// session against the session's peer).
#[derive(Debug, Clone)]
pub struct PeerKey {
    peer_id: PeerId,
    key: VerifyingKey,
}

impl PeerKey {
    /// The key of `peer_id`, if it is an ed25519 peer id.
    pub fn of(peer_id: PeerId) -> Option<Self> {
        Some(Self {
            key: verifying_key_of(&peer_id)?,
            peer_id,
        })
    }

    /// The peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its decoded key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_the_key() {
        let id = Identity::from_seed([7; 32]);
        assert_eq!(id.peer_id(), id.keypair().public().to_peer_id());
        assert_eq!(verifying_key_of(&id.peer_id()), Some(id.verifying_key()));
        assert_eq!(verifying_key_of(&PeerId::random()), None);
        let key = PeerKey::of(id.peer_id()).unwrap();
        assert_eq!(
            (key.peer_id(), *key.key()),
            (id.peer_id(), id.verifying_key())
        );
        // The same key in another protobuf field order is still read.
        let mut reordered = vec![0x12, 0x20];
        reordered.extend_from_slice(id.verifying_key().as_bytes());
        reordered.extend_from_slice(&[0x08, 0x01]);
        let hash = libp2p::multihash::Multihash::<64>::wrap(0, &reordered).unwrap();
        let odd = PeerId::from_multihash(hash).unwrap();
        assert_eq!(verifying_key_of(&odd), Some(id.verifying_key()));
    }

    #[test]
    fn creates_private_file_and_loads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
    }

    #[test]
    fn refuses_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::Insecure { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn refuses_corrupt_and_truncated_files_without_replacing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let good = Identity::from_seed([1; 32]).encode();
        let mut flipped = good.clone().into_bytes();
        flipped[30] = if flipped[30] == b'0' { b'1' } else { b'0' };
        for (bytes, expect) in [
            (good.as_bytes()[..40].to_vec(), "hex"),
            (good.as_bytes()[..21].to_vec(), "truncated"),
            (flipped, "does not match"),
            (b"\xff\xfe".to_vec(), "UTF-8"),
            (Vec::new(), "first line"),
        ] {
            let _ = fs::remove_file(&path);
            fs::write(&path, &bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = Identity::load_or_create(&path).unwrap_err();
            assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string().contains(expect),
                "{err} should mention {expect}"
            );
            assert_eq!(fs::read(&path).unwrap(), bytes, "file must be left alone");
        }
    }
}
