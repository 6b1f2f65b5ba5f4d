//! Contacts: adding (and re-pinning) them to the key the node names,
//! removing and blocking them, message requests from strangers, and a
//! key that changed under a pinned name. Each change is told to every
//! front end, and withdraws what the old key was trusted with.

use std::collections::HashMap;

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use messenger_proto::time::now_ms;
use tracing::warn;

use super::{Core, failed};
use crate::agent::error::DirectoryFailure;
use crate::agent::outbox::WorkerMsg;
use crate::api::{Event, Failure, FailureKind, Response};
use crate::peer::PeerInfo;
use crate::store::Contact;

impl Core {
    pub(super) async fn remove_contact(&mut self, name: ScreenName) -> Response {
        let n = name.clone();
        let removed = self
            .store
            .call(move |s| {
                let contact = s.contact(&n)?;
                s.remove_contact(&n)?;
                Ok(contact)
            })
            .await;
        let contact = match removed {
            Ok(Some(contact)) => contact,
            Ok(None) => return failed(FailureKind::Other, format!("{name} is not a contact")),
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        self.after_contacts_change(&name, false).await;
        let withdrawn = self
            .withdraw_access(&name, Some(contact.pinned), "no longer a contact")
            .await;
        Response::Done {
            message: format!("removed {name}{withdrawn}"),
        }
    }

    /// Declines the message request of `name` (everyone's if none): what
    /// they sent is removed.
    pub(super) async fn decline_requests(&mut self, name: Option<ScreenName>) -> Response {
        let asked = name.clone();
        let declined = self
            .store
            .call(move |s| s.decline_requests(asked.as_ref()))
            .await;
        let declined = match declined {
            Ok(declined) => declined,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        if declined.is_empty() {
            return failed(
                FailureKind::Invalid,
                match name {
                    Some(name) => format!("{name} has no message request"),
                    None => "there are no message requests".to_owned(),
                },
            );
        }
        self.tell_requests().await;
        for name in &declined {
            // What they sent is gone, and with it their unread count.
            self.emit(Event::Unread(crate::store::Unread {
                name: name.clone(),
                count: 0,
            }));
        }
        let names: Vec<&str> = declined.iter().map(ScreenName::as_str).collect();
        Response::Done {
            message: format!(
                "declined the message request(s) of {}: what they sent is removed",
                names.join(", ")
            ),
        }
    }

    /// Tells the front ends what message requests wait now.
    pub(super) async fn tell_requests(&self) {
        match self.store.call(|s| s.requests()).await {
            Ok(requests) => self.emit(Event::Requests { requests }),
            Err(e) => warn!("cannot read the message requests: {e}"),
        }
    }

    /// Ends what `name` (under `key`, the key that was trusted) may do on
    /// this machine, once its contact is removed, re-pinned to another key
    /// or blocked: its invitations are withdrawn, its transfers that are
    /// not settled fail, and every connection of that key is closed, with
    /// its tunnels, pipes and transfers. (The tunnel and file servers also
    /// check the pins and blocks in force at every request.) Returns what
    /// was withdrawn, as the end of a sentence.
    pub(super) async fn withdraw_access(
        &mut self,
        name: &ScreenName,
        key: Option<PeerId>,
        why: &str,
    ) -> String {
        let (n, reason) = (name.clone(), format!("withdrawn: {name} is {why}"));
        let withdrawn = self
            .store
            .call(move |s| {
                let now = now_ms();
                Ok((
                    s.revoke_invitations_of(&n, now)?,
                    s.fail_transfers_with(&n, &reason, now)?,
                ))
            })
            .await;
        let (invitations, transfers) = match withdrawn {
            Ok(withdrawn) => withdrawn,
            Err(e) => {
                warn!("cannot withdraw {name}'s invitations and transfers: {e}");
                (0, Vec::new())
            }
        };
        if invitations > 0 {
            self.reload_invitations().await;
        }
        for transfer in &transfers {
            if let Some(fetch) = self.fetches.remove(&transfer.id) {
                fetch.cancel();
            }
            self.emit(Event::Transfer(transfer.clone()));
        }
        let key = key.or_else(|| self.presence.get(name).map(|info| info.peer_id));
        if let (Some(network), Some(key)) = (&self.network, key) {
            network.disconnect(key).await;
        }
        let mut told = String::new();
        if invitations > 0 {
            told.push_str(&format!(
                "; {invitations} invitation(s) to connect withdrawn"
            ));
        }
        if !transfers.is_empty() {
            told.push_str(&format!("; {} file transfer(s) stopped", transfers.len()));
        }
        told
    }

    pub(super) async fn set_blocked(&mut self, name: ScreenName, blocked: bool) -> Response {
        let n = name.clone();
        let changed = match self
            .store
            .call(move |s| s.set_blocked(&n, blocked, now_ms()))
            .await
        {
            Ok(changed) => changed,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        self.contacts_changed().await;
        let withdrawn = if blocked {
            let key = self.trust.borrow().pinned(&name);
            self.withdraw_access(&name, key, "blocked").await
        } else {
            String::new()
        };
        Response::Done {
            message: match (blocked, changed) {
                (true, true) => format!("blocked {name}: their messages are refused{withdrawn}"),
                (true, false) => format!("{name} was already blocked"),
                (false, true) => format!("unblocked {name}"),
                (false, false) => format!("{name} was not blocked"),
            },
        }
    }

    /// Contacts with their presence: what is known, plus `found` (look-ups
    /// done for this listing).
    pub(super) async fn list_contacts(&mut self, found: HashMap<ScreenName, PeerInfo>) -> Response {
        let both = self.store.call(|s| Ok((s.contacts()?, s.blocked()?))).await;
        let (contacts, blocked) = match both {
            Ok(both) => both,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        let recorded: Vec<_> = contacts
            .iter()
            .map(|c| (c.name.clone(), c.key_changed_to))
            .collect();
        let views = self.contact_views(contacts, &blocked, &found);
        for (view, (name, recorded)) in views.iter().zip(recorded) {
            if let Some(current) = view.key_changed_to
                && recorded != Some(current)
            {
                self.record_key_change(&name, current).await;
            }
        }
        Response::Contacts { contacts: views }
    }

    /// Adds (or, `trust`ing, re-pins) a contact to the key `info` names.
    pub(super) async fn add_contact(&mut self, info: PeerInfo, trust: bool) -> Response {
        let name = info.name.clone();
        let n = name.clone();
        let key = info.peer_id;
        let found = self
            .store
            .call(move |s| {
                let contacts = s.contacts()?;
                let existing = contacts.iter().find(|c| c.name == n).cloned();
                let other = contacts
                    .into_iter()
                    .find(|c| c.name != n && c.pinned == key)
                    .map(|c| c.name);
                Ok((existing, other))
            })
            .await;
        let (existing, other) = match found {
            Ok(found) => found,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        // One key, one contact: what comes from a key (a tunnel, a pipe,
        // a file) is attributed to its contact, which must be one name.
        if let Some(other) = other {
            return failed(
                FailureKind::Invalid,
                format!(
                    "{name}'s key {key} is pinned for your contact {other} already: a key is pinned under one name (remove {other} first to pin it under {name})"
                ),
            );
        }
        let message = match (&existing, trust) {
            (None, true) => return failed(FailureKind::Other, format!("{name} is not a contact")),
            (Some(c), false) if c.pinned == info.peer_id => {
                return Response::Done {
                    message: format!("{name} is already a contact (key {})", c.pinned),
                };
            }
            (Some(c), false) => {
                let change = crate::peer::KeyChange {
                    name: name.clone(),
                    pinned: c.pinned,
                    current: info.peer_id,
                };
                self.record_key_change(&name, info.peer_id).await;
                return Response::Failed(Failure::from(&DirectoryFailure::KeyChanged(Box::new(
                    change,
                ))));
            }
            (Some(c), true) if c.pinned == info.peer_id => {
                format!("{name} keeps key {}", info.peer_id)
            }
            (Some(c), true) => format!(
                "{name} is now pinned to key {} (was {})",
                info.peer_id, c.pinned
            ),
            (None, false) => format!("added {name}, pinned to key {}", info.peer_id),
        };
        let contact = Contact {
            name: name.clone(),
            pinned: info.peer_id,
            added_at: existing.as_ref().map_or(now_ms(), |c| c.added_at),
            key_changed_to: None,
            auto_accept_below: None,
        };
        let n = name.clone();
        let requested = self
            .store
            .call(move |s| {
                let requested = s.requests()?.iter().any(|r| r.name == n);
                s.put_contact(&contact)?;
                Ok(requested)
            })
            .await;
        match requested {
            Ok(true) => self.tell_requests().await,
            Ok(false) => {}
            Err(e) => return Response::Failed(Failure::from(&e)),
        }
        self.after_contacts_change(&name, true).await;
        let message = match existing {
            // The old key is trusted with nothing any more.
            Some(old) if old.pinned != info.peer_id => {
                let withdrawn = self
                    .withdraw_access(&name, Some(old.pinned), "pinned to another key")
                    .await;
                format!("{message}{withdrawn}")
            }
            _ => message,
        };
        Response::Done { message }
    }

    pub(super) async fn after_contacts_change(&mut self, name: &ScreenName, added: bool) {
        self.contacts_changed().await;
        if self.registration.online.is_some() {
            if added {
                self.watch(std::slice::from_ref(name));
            } else {
                self.unwatch(name);
            }
            // Who may still reach us while invisible follows the contacts.
            if self.registration.status.status == Status::Invisible {
                self.register_again(None, false);
            }
            self.worker_if_any(name, WorkerMsg::Wake);
        }
    }

    /// Records (once) that a contact's name now has another key, and says so.
    pub(super) async fn record_key_change(&mut self, name: &ScreenName, current: PeerId) {
        let n = name.clone();
        let Ok(Some(contact)) = self.store.call(move |s| s.contact(&n)).await else {
            return;
        };
        if contact.pinned == current || contact.key_changed_to == Some(current) {
            return;
        }
        let updated = Contact {
            key_changed_to: Some(current),
            // Whoever holds the new key is not trusted with files unasked.
            auto_accept_below: None,
            ..contact.clone()
        };
        if let Err(e) = self.store.call(move |s| s.put_contact(&updated)).await {
            warn!("cannot record a key change: {e}");
        }
        self.contacts_changed().await;
        warn!(name = %name, pinned = %contact.pinned, current = %current, "KEY CHANGED");
        self.emit(Event::KeyChanged {
            name: name.clone(),
            pinned: contact.pinned,
            current,
        });
    }
}
