//! Others as the node tells of them: whom we watch, the pushes of their
//! presence (verified, checked against the pins), and the paths the
//! network finds to them. [`Presence`](crate::agent::presence::Presence)
//! owns what is known; workers are told from here.

use messenger_proto::directory::{MAX_WATCH_PER_REQUEST, Resolution};
use messenger_proto::name::ScreenName;
use tracing::{debug, warn};

use super::{Core, Done};
use crate::agent::Note;
use crate::agent::outbox::WorkerMsg;
use crate::api::Event;
use crate::network::{NetworkEvent, Path};
use crate::peer::PeerInfo;

impl Core {
    pub(super) fn watch(&mut self, names: &[ScreenName]) {
        let new: Vec<String> = self
            .presence
            .watch(names)
            .iter()
            .map(ScreenName::to_string)
            .collect();
        if new.is_empty() {
            return;
        }
        if let Some(session) = self
            .directory
            .session()
            .filter(|_| self.registration.online.is_some())
        {
            self.tasks.spawn(async move {
                for chunk in new.chunks(MAX_WATCH_PER_REQUEST) {
                    if let Err(e) = session.watch(chunk.to_vec()).await {
                        debug!("cannot watch: {e}");
                    }
                }
                Done::Nothing
            });
        }
    }

    pub(super) fn unwatch(&mut self, name: &ScreenName) {
        if !self.presence.unwatch(name) {
            return;
        }
        if let Some(session) = self.directory.session() {
            let names = vec![name.to_string()];
            self.tasks.spawn(async move {
                if let Err(e) = session.unwatch(names).await {
                    debug!("cannot unwatch: {e}");
                }
                Done::Nothing
            });
        }
    }

    /// Keeps what the node says of a name (verified), and acts on changes.
    pub(super) fn learn(&mut self, info: PeerInfo) -> bool {
        let learned = self.presence.learn(info.clone());
        if learned.for_delivery {
            let name = info.name.clone();
            self.worker_if_any(&name, WorkerMsg::Peer(info));
        }
        learned.shown
    }

    pub(super) fn on_push(&mut self, resolution: Resolution) {
        let info = match PeerInfo::from_resolution(&resolution) {
            Ok(info) => info,
            Err(e) => {
                warn!("ignoring a presence push that does not verify: {e}");
                return;
            }
        };
        let pin = self.trust.borrow().check_pin(&info);
        if let Err(change) = pin {
            // Known (a send checks it), recorded and reported, not shown as
            // the contact's presence: nothing goes to or comes from it.
            let _ = self.notes.try_send(Note::KeyObserved {
                name: change.name,
                key: change.current,
            });
            self.learn(info);
            return;
        }
        if self.learn(info.clone()) {
            self.emit(Event::Presence(info));
        }
    }

    pub(super) fn on_network_event(&mut self, event: Option<NetworkEvent>) {
        let (peer, path, detail) = match event {
            Some(NetworkEvent::HolePunched { peer }) => (peer, Path::Direct, None),
            Some(NetworkEvent::HolePunchFailed { peer, reason }) => {
                (peer, Path::Relayed, Some(reason))
            }
            Some(NetworkEvent::Disconnected { .. }) => return,
            None => {
                self.network_events = None;
                return;
            }
        };
        let name = self.presence.name_of(&peer).cloned();
        self.emit(Event::Path {
            name,
            peer,
            path,
            detail,
        });
    }
}
