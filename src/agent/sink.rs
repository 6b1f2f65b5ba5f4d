//! The inbox's side of the store: whom to refuse (the core's published
//! pins and blocks), what was kept before, and keeping a message durably
//! before it is acknowledged, then telling the front end.

use std::sync::Arc;

use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId, RejectCode};
use messenger_proto::name::ScreenName;
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, watch};

use super::Note;
use super::trust::{Distrust, Trust};
use crate::api::Event;
use crate::chat::MessageSink;
use crate::network::Network;
use crate::store::{Direction, StoreHandle};

/// Keeps accepted messages in the home's store.
pub(super) struct StoreSink {
    store: StoreHandle,
    trust: watch::Receiver<Arc<Trust>>,
    events: mpsc::Sender<Event>,
    network: Network,
    notes: mpsc::Sender<Note>,
}

impl StoreSink {
    pub(super) fn new(
        store: StoreHandle,
        trust: watch::Receiver<Arc<Trust>>,
        events: mpsc::Sender<Event>,
        network: Network,
        notes: mpsc::Sender<Note>,
    ) -> Self {
        Self {
            store,
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

    async fn keep(&self, message: Message, peer: PeerId) -> Result<bool, String> {
        let kept = self
            .store
            .call(move |s| s.add_incoming(&message, peer, now_ms()))
            .await
            .map_err(|e| e.to_string())?;
        let Some(stored) = kept else {
            return Ok(false);
        };
        let path = self.network.path(peer).await;
        // Waits for room: a message must not be dropped on its way to the
        // user (it is stored already either way).
        let _ = self
            .events
            .send(Event::Message {
                message: stored,
                path,
            })
            .await;
        Ok(true)
    }
}
