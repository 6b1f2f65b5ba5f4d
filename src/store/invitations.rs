//! Invitations to connect: which contact (by the key pinned when I
//! invited them) may reach which port of mine through my client, and the
//! ones I withdrew (kept, so that their tunnels are refused as revoked
//! rather than as never invited). Keyed by name and port. Also the
//! invitations others told me of, as their last word on each port.

use libp2p::PeerId;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{INVITATIONS, INVITED_ME, Raw, Store, StoreError, StoredMessage, decode};

/// One invitation of mine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The contact invited.
    pub name: ScreenName,
    /// Their key when invited: only this key is let in.
    pub key: PeerId,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// When it was made (ms since epoch).
    pub created_at: u64,
    /// When it was withdrawn, if it was.
    pub revoked_at: Option<u64>,
}

impl Invitation {
    /// Whether it lets its contact in now.
    pub fn open(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// An invitation someone told me of: their last word on one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitedMe {
    /// Who invited me.
    pub from: ScreenName,
    /// Their key, as the message was signed by.
    pub key: Option<PeerId>,
    /// The port on their side.
    pub port: u16,
    /// Whether they withdrew it since.
    pub withdrawn: bool,
    /// When they said so (their clock, ms since epoch).
    pub at: u64,
}

fn key(name: &ScreenName, port: u16) -> String {
    format!("{}:{port}", name.as_str())
}

/// A verified message that carries an invitation: remembered as the
/// sender's last word on that port (an older message arriving late does
/// not undo a newer one).
pub(super) fn told_me(txn: &redb::WriteTransaction, stored: &StoredMessage) -> Result<(), Raw> {
    let Some(invite) = stored.message.invite else {
        return Ok(());
    };
    let k = key(&stored.message.from, invite.port);
    let mut table = txn.open_table(INVITED_ME)?;
    let newer = match table.get(k.as_str())? {
        Some(v) => decode::<InvitedMe>(v.value())?.at <= stored.message.sent_at,
        None => true,
    };
    if newer {
        let told = InvitedMe {
            from: stored.message.from.clone(),
            key: stored.peer_id,
            port: invite.port,
            withdrawn: invite.withdrawn,
            at: stored.message.sent_at,
        };
        table.insert(k.as_str(), codec::to_cbor(&told).as_slice())?;
    }
    Ok(())
}

impl Store {
    /// Stores `invitation`, replacing the one for the same name and port
    /// (inviting again after a withdrawal opens the port again).
    pub fn put_invitation(&self, invitation: &Invitation) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(INVITATIONS)?.insert(
                key(&invitation.name, invitation.port).as_str(),
                codec::to_cbor(invitation).as_slice(),
            )?;
            Ok(())
        })
    }

    /// Withdraws every open invitation of `name` (their key is no longer
    /// trusted, or they are no longer a contact); returns how many.
    pub fn revoke_invitations_of(&self, name: &ScreenName, now: u64) -> Result<usize, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(INVITATIONS)?;
            let mut open: Vec<Invitation> = Vec::new();
            for entry in table.iter()? {
                let invitation: Invitation = decode(entry?.1.value())?;
                if invitation.name == *name && invitation.open() {
                    open.push(invitation);
                }
            }
            for mut invitation in open.iter().cloned() {
                invitation.revoked_at = Some(now);
                table.insert(
                    key(&invitation.name, invitation.port).as_str(),
                    codec::to_cbor(&invitation).as_slice(),
                )?;
            }
            Ok(open.len())
        })
    }

    /// The invitation of `name` to `port`, if any (open or withdrawn).
    pub fn invitation(
        &self,
        name: &ScreenName,
        port: u16,
    ) -> Result<Option<Invitation>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(INVITATIONS)?;
            let v = t.get(key(name, port).as_str())?;
            v.map(|v| decode(v.value())).transpose()
        })
    }

    /// The invitations others told me of, by name then port.
    pub fn invited_me(&self) -> Result<Vec<InvitedMe>, StoreError> {
        self.read(|txn| {
            let mut out: Vec<InvitedMe> = Vec::new();
            for entry in txn.open_table(INVITED_ME)?.iter()? {
                out.push(decode(entry?.1.value())?);
            }
            out.sort_by(|a, b| (a.from.as_str(), a.port).cmp(&(b.from.as_str(), b.port)));
            Ok(out)
        })
    }

    /// Every invitation, by name then port.
    pub fn invitations(&self) -> Result<Vec<Invitation>, StoreError> {
        self.read(|txn| {
            let mut out: Vec<Invitation> = Vec::new();
            for entry in txn.open_table(INVITATIONS)?.iter()? {
                out.push(decode(entry?.1.value())?);
            }
            out.sort_by(|a, b| (a.name.as_str(), a.port).cmp(&(b.name.as_str(), b.port)));
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitations_are_kept_by_name_and_port_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let bob = ScreenName::parse("bob").unwrap();
        let key = PeerId::random();
        {
            let store = Store::open(&path, false).unwrap();
            let mut invitation = Invitation {
                name: bob.clone(),
                key,
                port: 8080,
                created_at: 1,
                revoked_at: None,
            };
            store.put_invitation(&invitation).unwrap();
            invitation.port = 22;
            invitation.revoked_at = Some(2);
            store.put_invitation(&invitation).unwrap();
        }
        let store = Store::open(&path, true).unwrap();
        let all = store.invitations().unwrap();
        assert_eq!(
            all.iter().map(|i| (i.port, i.open())).collect::<Vec<_>>(),
            [(22, false), (8080, true)]
        );
        assert_eq!(store.invitation(&bob, 8080).unwrap().unwrap().key, key);
        assert!(store.invitation(&bob, 9).unwrap().is_none());
    }

    #[test]
    fn an_invitation_told_me_is_its_senders_last_word_on_the_port() {
        use messenger_proto::chat::{Message, MessageId};
        let store =
            Store::open(&tempfile::tempdir().unwrap().path().join("s.redb"), false).unwrap();
        let told = |sent_at: u64, withdrawn: bool| StoredMessage {
            seq: sent_at,
            message: Message {
                id: MessageId::random(),
                from: ScreenName::parse("alice").unwrap(),
                to: ScreenName::parse("bob").unwrap(),
                sent_at,
                text: "invites you".into(),
                file: None,
                invite: Some(messenger_proto::tunnel::Invitation {
                    port: 8000,
                    withdrawn,
                }),
            },
            direction: super::super::Direction::In,
            state: super::super::MessageState::Received,
            updated_at: sent_at,
            error: None,
            peer_id: None,
            signed: None,
        };
        for (at, withdrawn) in [(10, false), (30, true), (20, false)] {
            store
                .write(|txn| told_me(txn, &told(at, withdrawn)))
                .unwrap();
        }
        let all = store.invited_me().unwrap();
        assert_eq!(all.len(), 1);
        assert!(
            all[0].withdrawn,
            "the late, older invitation does not undo the withdrawal"
        );
        assert_eq!(all[0].at, 30);
    }
}
