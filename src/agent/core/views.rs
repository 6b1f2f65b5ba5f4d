//! What the front ends see of the core's state: the views it is shown
//! through, the snapshot a new front end starts from, and the events that
//! tell every front end of each change (contacts, blocks, my status,
//! settings, unread counts, invitations).

use std::collections::HashMap;
use std::sync::Arc;

use messenger_proto::name::ScreenName;
use tracing::warn;

use super::Core;
use crate::api::{ContactView, Event, Failure, MeView, Response, SettingsView, Snapshot};
use crate::peer::PeerInfo;
use crate::store::{Contact, Unread};

use super::files::transfer_view;
use crate::trust::Trust;

impl Core {
    /// Contacts as shown: with what is known of their presence, plus
    /// `found` (look-ups done for a listing).
    pub(super) fn contact_views(
        &self,
        contacts: Vec<Contact>,
        blocked: &[ScreenName],
        found: &HashMap<ScreenName, PeerInfo>,
    ) -> Vec<ContactView> {
        contacts
            .into_iter()
            .map(|c| {
                let info = found.get(&c.name).or(self.presence.get(&c.name));
                let key_changed_to = match info {
                    Some(info) if info.peer_id != c.pinned => Some(info.peer_id),
                    _ => c.key_changed_to,
                };
                ContactView {
                    blocked: blocked.contains(&c.name),
                    key_changed_to,
                    presence: info.map(|i| i.presence),
                    status_text: info.map(|i| i.status_text.clone()).unwrap_or_default(),
                    last_seen: info.and_then(|i| i.last_seen),
                    auto_accept_below: c.auto_accept_below,
                    name: c.name,
                    pinned: c.pinned,
                }
            })
            .collect()
    }

    /// The contacts or blocks changed: the pins and blocks in force are
    /// read again (the inbox, the file and tunnel servers follow them),
    /// and every front end is shown both lists.
    pub(super) async fn contacts_changed(&mut self) {
        let both = self.store.call(|s| Ok((s.contacts()?, s.blocked()?))).await;
        let (contacts, blocked) = match both {
            Ok(both) => both,
            Err(e) => return warn!("cannot read contacts and blocks: {e}"),
        };
        self.trust
            .send_replace(Arc::new(Trust::new(&contacts, &blocked)));
        let contacts = self.contact_views(contacts, &blocked, &HashMap::new());
        self.emit(Event::Contacts { contacts });
        self.emit(Event::Blocked { names: blocked });
    }

    /// My settings as shown.
    pub(super) fn settings_view(&self) -> SettingsView {
        SettingsView {
            send_typing: self.config.sends_typing(),
            bell: self.config.rings_bell(),
            downloads: self.config.downloads.clone(),
            max_file_size: self.config.max_file_size,
        }
    }

    /// Marks the conversation with `name` read, and says so to every
    /// front end.
    pub(super) async fn mark_read(&mut self, name: ScreenName) -> Response {
        let n = name.clone();
        match self.store.call(move |s| s.mark_read(&n)).await {
            Ok(changed) => {
                if changed {
                    self.emit(Event::Unread(Unread { name, count: 0 }));
                }
                Response::Done {
                    message: String::new(),
                }
            }
            Err(e) => Response::Failed(Failure::from(&e)),
        }
    }

    /// Tells every front end the unread count of `name` now.
    pub(super) async fn tell_unread(&mut self, name: ScreenName) {
        let n = name.clone();
        match self.store.call(move |s| s.unread(&n)).await {
            Ok(count) => self.emit(Event::Unread(Unread { name, count })),
            Err(e) => warn!("cannot read an unread count: {e}"),
        }
    }

    /// Everything a front end shows, with the number of the last event
    /// it includes (taken first: see [`Snapshot`]).
    pub(super) async fn snapshot(&mut self) -> Response {
        let journal = Arc::clone(self.events.journal());
        let seq = journal.last();
        let read = self
            .store
            .call(|s| {
                Ok((
                    (s.contacts()?, s.blocked()?, s.unread_counts()?),
                    (s.outbox(None)?, s.invitations()?, s.invited_me()?),
                    (s.requests()?, s.transfers()?),
                ))
            })
            .await;
        let ((contacts, blocked, unread), (outbox, invitations, invited_me), (requests, transfers)) =
            match read {
                Ok(read) => read,
                Err(e) => return Response::Failed(Failure::from(&e)),
            };
        let contacts = self.contact_views(contacts, &blocked, &HashMap::new());
        Response::Snapshot(Box::new(Snapshot {
            run: journal.run().to_owned(),
            seq,
            me: MeView {
                name: self.my_name(),
                peer_id: self.identity.peer_id(),
                status: self.registration.status.status,
                text: self.registration.status.text.clone(),
                online: self.registration.online.is_some(),
            },
            contacts,
            blocked,
            settings: self.settings_view(),
            unread,
            outbox,
            invitations,
            invited_me,
            requests,
            transfers: transfers.into_iter().map(transfer_view).collect(),
        }))
    }

    /// Tells every front end my invitations and the ones I was told of.
    pub(super) async fn tell_invitations(&self) {
        match self
            .store
            .call(|s| Ok((s.invitations()?, s.invited_me()?)))
            .await
        {
            Ok((invitations, invited_me)) => self.emit(Event::Invitations {
                invitations,
                invited_me,
            }),
            Err(e) => warn!("cannot read the invitations: {e}"),
        }
    }
}
