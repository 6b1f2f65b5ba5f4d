//! A user's home: the directory holding their key, config and local data.
//!
//! ```text
//! <home>/identity.key   ed25519 key (mode 0600), see messenger_proto::identity
//! <home>/config.json    remembered settings: rendezvous address, screen name, status
//! <home>/messenger.redb  contacts, blocks, history and outbox (see crate::store)
//! <home>/control.sock    the running client's control socket (see crate::control)
//! ```

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use messenger_proto::Identity;
use messenger_proto::identity::{IdentityError, create_private_dir};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use serde::{Deserialize, Serialize};

/// Why the home could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The config file is not valid.
    #[error("config file {path} is invalid: {reason}; fix or delete it")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Other users may write in the home: they could replace the key, the
    /// store or the control socket.
    #[error(
        "the home {} can be written by other users (mode {mode:o}); \
         only its owner may write there (e.g. `chmod 700 {}`)",
        .path.display(), .path.display()
    )]
    Unsafe {
        /// The home.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Settings remembered between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The rendezvous nodes (the doors of one directory, tried in turn),
    /// remembered after the first successful register. Written as one
    /// address when there is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub rendezvous: Vec<Multiaddr>,
    /// Our screen name, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ScreenName>,
    /// The status to go online with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// Whether others are told while I type (unset: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_typing: Option<bool>,
    /// Whether the window rings the terminal bell for a message or a nudge
    /// in a conversation not in front (unset: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bell: Option<bool>,
    /// Where accepted files are saved when no directory is given (unset:
    /// the user's downloads directory, else `downloads` in the home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<std::path::PathBuf>,
    /// The largest file accepted, in bytes (unset: no limit but the room
    /// on the disk it goes to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
}

impl Config {
    /// Whether others are told while I type.
    pub fn sends_typing(&self) -> bool {
        self.send_typing.unwrap_or(true)
    }

    /// Whether the window rings the bell.
    pub fn rings_bell(&self) -> bool {
        self.bell.unwrap_or(true)
    }

    /// Reads `config.json`'s bytes; unknown fields are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Refuses a home others may write in; warns when they may look inside.
fn check_mode(dir: &Path, mode: u32) -> Result<(), HomeError> {
    let mode = mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(HomeError::Unsafe {
            path: dir.to_owned(),
            mode,
        });
    }
    if mode & 0o055 != 0 {
        tracing::warn!(
            "the home {} can be listed by other users (mode {mode:o}); `chmod 700` it to keep \
             what is in it private",
            dir.display()
        );
    }
    Ok(())
}

/// A user's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The per-user default (e.g. `~/.local/share/messenger`).
    pub fn default_dir() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "messenger").map(|d| d.data_dir().to_owned())
    }

    /// Opens `dir`, creating it (owner-only) if needed. A home that others
    /// may write in is refused; one they may read is used with a warning
    /// (the key file itself is owner-only).
    pub fn open(dir: &Path) -> Result<Self, HomeError> {
        let io = |source| HomeError::Io {
            path: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let meta = fs::metadata(dir).map_err(io)?;
        check_mode(dir, meta.permissions().mode())?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key file path.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Whether settings were ever saved here: the home is in use (so an
    /// empty store file in it is damage, not a new store).
    pub fn config_exists(&self) -> bool {
        self.config_path().exists()
    }

    /// The store's file.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("messenger.redb")
    }

    /// Our identity, created on first use.
    pub fn identity(&self) -> Result<Identity, HomeError> {
        Ok(Identity::load_or_create(&self.key_path())?)
    }

    /// The remembered settings (defaults if none were saved yet).
    pub fn config(&self) -> Result<Config, HomeError> {
        let path = self.config_path();
        match fs::read(&path) {
            Ok(bytes) => Config::decode(&bytes).map_err(|e| HomeError::BadConfig {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(HomeError::Io { path, source }),
        }
    }

    /// Saves the settings atomically: a crash leaves the old or the new
    /// file, never a torn one.
    pub fn save_config(&self, config: &Config) -> Result<(), HomeError> {
        let path = self.config_path();
        let tmp = self.dir.join("config.json.tmp");
        let io_err = |source| HomeError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(config).map_err(|e| HomeError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)
    }
}

/// A list written as its only element when it has one (as the config
/// was before a client knew several nodes), else as a list.
mod one_or_many {
    use libp2p::Multiaddr;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Multiaddr),
        Many(Vec<Multiaddr>),
    }

    pub(super) fn serialize<S: Serializer>(addrs: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        match addrs {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        assert_eq!(home.config().unwrap(), Config::default());
        let config = Config {
            rendezvous: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            name: Some(ScreenName::parse("alice").unwrap()),
            status: Some(Status::Away),
            status_text: Some("back at 3".into()),
            send_typing: Some(false),
            bell: None,
            downloads: Some("/tmp/downloads".into()),
            max_file_size: Some(1 << 30),
        };
        home.save_config(&config).unwrap();
        assert_eq!(home.config().unwrap(), config);
        fs::write(dir.path().join("config.json"), b"{\"name\": \"9bad\"}").unwrap();
        assert!(matches!(home.config(), Err(HomeError::BadConfig { .. })));
    }

    #[test]
    fn a_home_others_may_write_in_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set = |mode| fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            set(mode);
            match Home::open(dir.path()) {
                Err(HomeError::Unsafe { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        for mode in [0o700, 0o750, 0o755] {
            set(mode);
            assert!(Home::open(dir.path()).is_ok(), "mode {mode:o}");
        }
        let made = dir.path().join("new");
        Home::open(&made).unwrap();
        assert_eq!(
            fs::metadata(&made).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn one_node_is_written_as_before_and_several_as_a_list() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip4/127.0.0.2/tcp/4001".parse().unwrap();
        let one = Config {
            rendezvous: vec![a.clone()],
            ..Config::default()
        };
        let text = serde_json::to_string(&one).unwrap();
        assert_eq!(text, r#"{"rendezvous":"/ip4/127.0.0.1/tcp/4001"}"#);
        assert_eq!(Config::decode(text.as_bytes()).unwrap(), one);
        let two = Config {
            rendezvous: vec![a, b],
            ..Config::default()
        };
        let text = serde_json::to_string(&two).unwrap();
        assert!(text.contains(r#"["/ip4/127.0.0.1/tcp/4001","/ip4/127.0.0.2/tcp/4001"]"#));
        assert_eq!(Config::decode(text.as_bytes()).unwrap(), two);
    }
}
