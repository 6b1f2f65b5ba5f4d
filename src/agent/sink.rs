//! The inbox's side of the store: whom to refuse (the core's published
//! pins and blocks), what was kept before, keeping a message durably
//! before it is acknowledged, and, once its signature checked out,
//! telling the front end.

use std::sync::Arc;

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId, RejectCode};
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, watch};

use super::Note;
use crate::chat::{KeepError, MessageSink, Signal};
use crate::events::Event;
use crate::events::EventSender;
use crate::network::{Network, Path};
use crate::store::{Direction, Received, RequestLimits, StoreHandle};
use crate::trust::{Distrust, Trust};

/// Keeps accepted messages in the home's store.
pub(super) struct StoreSink {
    store: StoreHandle,
    /// What senders not accepted yet may store.
    requests: RequestLimits,
    trust: watch::Receiver<Arc<Trust>>,
    events: EventSender,
    network: Network,
    notes: mpsc::Sender<Note>,
}

impl StoreSink {
    pub(super) fn new(
        store: StoreHandle,
        trust: watch::Receiver<Arc<Trust>>,
        events: EventSender,
        network: Network,
        notes: mpsc::Sender<Note>,
        requests: RequestLimits,
    ) -> Self {
        Self {
            store,
            requests,
            trust,
            events,
            network,
            notes,
        }
    }
}

impl MessageSink for StoreSink {
    fn refuse(&self, from: &ScreenName, peer: &PeerId) -> Option<RejectCode> {
        let distrust = self.trust.borrow().refuse(from, peer)?;
        if let Distrust::KeyChanged(change) = distrust {
            tracing::warn!(name = %from, pinned = %change.pinned, current = %peer, "KEY CHANGED: refusing a message");
            // The core records it and tells the user, once.
            let _ = self.notes.try_send(Note::KeyObserved {
                name: change.name,
                key: change.current,
            });
        }
        // Not saying why: "not delivered" alone.
        Some(RejectCode::NotDelivered)
    }

    async fn seen(&self, id: MessageId, peer: PeerId) -> bool {
        matches!(
            self.store.call(move |s| s.message(&id)).await,
            Ok(Some(m)) if m.direction == Direction::In && m.peer_id == Some(peer)
        )
    }

    type Kept = Kept;

    async fn keep(
        &self,
        message: Message,
        signed: Signed,
        peer: PeerId,
    ) -> Result<Option<Kept>, KeepError> {
        let id = message.id;
        let limits = self.requests;
        let received = self
            .store
            .call(move |s| s.receive(&message, signed, peer, now_ms(), Some(&limits)))
            .await
            .map_err(|e| KeepError::Failed(e.to_string()))?;
        let request = match received {
            Received::Kept { request, .. } => request,
            Received::Repeat => return Ok(None),
            Received::Refused(why) => {
                tracing::debug!(%id, %peer, "a message request refused: {why}");
                return Err(KeepError::Refused(RejectCode::RequestsFull));
            }
        };
        // How it came, while its connection is surely still there.
        let path = self.network.path(peer).await;
        Ok(Some(Kept { id, path, request }))
    }

    async fn verified(&self, kept: Kept) {
        self.settle(kept, true).await;
    }

    async fn forged(&self, kept: Kept) {
        self.settle(kept, false).await;
    }

    async fn signal(&self, from: ScreenName, _: PeerId, signal: Signal) {
        let event = match signal {
            Signal::Typing(active) => Event::Typing { name: from, active },
            Signal::Nudge => Event::Nudge { name: from },
        };
        // Ephemeral: dropped rather than waited for when the front end
        // lags.
        let _ = self.events.try_send(event);
    }
}

/// A kept message waiting for the verdict on its signature.
pub(super) struct Kept {
    id: MessageId,
    path: Option<Path>,
    /// Whether it is a message request (its sender not accepted yet).
    request: bool,
}

impl StoreSink {
    /// Records the verdict on a kept message's signature; shows it if good.
    async fn settle(&self, Kept { id, path, request }: Kept, good: bool) {
        let settled = self
            .store
            .call(move |s| s.settle_incoming(&id, good, now_ms()))
            .await;
        let stored = match settled {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                // Left unverified in the store: checked again at the next
                // start (see `Core::settle_unverified`).
                tracing::warn!(%id, "cannot record a message's checked signature: {e}");
                return;
            }
        };
        if stored.message.file.is_some() {
            let _ = self.notes.send(Note::Offered(stored.message.id)).await;
        }
        let name = stored.peer().clone();
        let invitation = stored.message.invite.is_some();
        // Waits for room: a message must not be dropped on its way to the
        // user (it is stored already either way).
        let _ = self
            .events
            .send(Event::Message {
                message: stored,
                path,
            })
            .await;
        let _ = self.notes.send(Note::Unread(name)).await;
        if invitation
            && let Ok((invitations, invited_me)) = self
                .store
                .call(|s| Ok((s.invitations()?, s.invited_me()?)))
                .await
        {
            let _ = self
                .events
                .send(Event::Invitations {
                    invitations,
                    invited_me,
                })
                .await;
        }
        if request {
            self.tell_requests().await;
        }
    }

    /// Tells the front ends what requests wait now.
    pub(super) async fn tell_requests(&self) {
        if let Ok(requests) = self.store.call(|s| s.requests()).await {
            let _ = self.events.send(Event::Requests { requests }).await;
        }
    }
}
