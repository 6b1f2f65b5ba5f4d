//! Delivery: messages stored once and handed to their recipient's
//! worker (one per recipient, started on demand), ephemeral signals,
//! what workers and servers tell the core, and messages kept unchecked
//! when the client last stopped.

use std::sync::Arc;
use std::time::Duration;

use messenger_proto::chat::{self, Message, MessageId};
use messenger_proto::identity::verifying_key_of;
use messenger_proto::name::ScreenName;
use messenger_proto::signed::MESSAGE_CONTEXT;
use messenger_proto::time::now_ms;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::directory::{AfterResolve, DirWork};
use super::{Core, Done, failed};
use crate::agent::error::SendError;
use crate::agent::outbox::{ResolveReply, SendReply, Unresolved, Worker, WorkerEnv, WorkerMsg};
use crate::agent::{FileSource, Note};
use crate::api::{Event, Failure, FailureKind, Response, SendOutcome};
use crate::chat::Signal;
use crate::store::MessageState;

impl Core {
    /// Stores a message (once, by id) and hands it to its recipient's
    /// worker. The recipient is resolved first only if nothing is known of
    /// it: pushes keep what is known fresh.
    pub(super) async fn send(
        &mut self,
        id: MessageId,
        to: ScreenName,
        text: String,
        tx: SendReply,
        wait: bool,
    ) {
        if let Err(e) = chat::check_text(&text) {
            return self.refuse_send(tx, SendError::Text(e));
        }
        let Some(from) = self.my_name() else {
            return self.refuse_send(tx, SendError::NoName);
        };
        let message = Message {
            id,
            from,
            to: to.clone(),
            sent_at: now_ms(),
            text,
            file: None,
            invite: None,
        };
        if self.presence.knows(&to) || self.directory.nodes.current().is_none() || !wait {
            self.queue_message(message, tx, wait, Duration::ZERO, None)
                .await;
        } else {
            // Resolved once, to refuse at once what could never be
            // delivered (no such name, a changed key).
            self.with_directory(DirWork::Resolve {
                name: to,
                then: AfterResolve::Send {
                    message,
                    reply: tx,
                    started: Instant::now(),
                },
            });
        }
    }

    pub(super) fn refuse_send(&mut self, reply: SendReply, error: SendError) {
        let _ = reply.send(Response::Failed(Failure::from(&error)));
    }

    /// Stores `message` (once, by id) and hands it to delivery. With
    /// `wait`, the reply is the first outcome; else it comes once stored.
    pub(super) async fn queue_message(
        &mut self,
        message: Message,
        reply: SendReply,
        wait: bool,
        resolved: Duration,
        source: Option<FileSource>,
    ) {
        let pin = self
            .presence
            .get(&message.to)
            .map(|info| self.trust.borrow().check_pin(info));
        if let Some(Err(change)) = pin {
            self.record_key_change(&change.name, change.current).await;
            return self.refuse_send(reply, SendError::KeyChanged(change));
        }
        let to = message.to.clone();
        let id = message.id;
        // Writing to someone accepts their message request, if they have one.
        let stranger = !self.trust.borrow().is_contact(&to);
        let stored = self
            .store
            .call(move |s| {
                let requested = stranger && s.requests()?.iter().any(|r| r.name == message.to);
                let stored = match source {
                    Some(FileSource { path, modified }) => {
                        s.add_outgoing_file(message, path, modified, now_ms())
                    }
                    None => s.add_outgoing(message, now_ms()),
                }?;
                Ok((stored, requested))
            })
            .await;
        let stored = match stored {
            Ok(((stored, new), requested)) => {
                if requested {
                    self.tell_requests().await;
                }
                if new {
                    self.emit(Event::Queued(stored.clone()));
                }
                stored
            }
            Err(e) => return self.refuse_send(reply, SendError::Store(e)),
        };
        // Stored before (the same request, repeated after its client died):
        // what happened to it since is the answer.
        let settled = match stored.state {
            MessageState::Delivered => Some(Response::Sent(SendOutcome::Delivered {
                peer_id: stored.peer_id.unwrap_or(self.identity.peer_id()),
                message: stored.clone(),
                path: None,
                resolve_ms: 0.0,
                dial_ms: 0.0,
                deliver_ms: 0.0,
            })),
            MessageState::Failed => Some(Response::Failed(Failure::new(
                FailureKind::NotDelivered,
                format!(
                    "{} to {}",
                    stored.error.as_deref().unwrap_or("not delivered"),
                    stored.message.to
                ),
            ))),
            _ => None,
        };
        if let Some(response) = settled {
            let _ = reply.send(response);
            return;
        }
        self.watch(std::slice::from_ref(&to));
        if wait {
            self.worker(
                &to,
                WorkerMsg::Deliver {
                    id,
                    reply,
                    resolved,
                },
            );
        } else {
            let _ = reply.send(Response::Sent(SendOutcome::Queued {
                message: stored,
                reason: "handed to delivery".into(),
            }));
            self.worker(&to, WorkerMsg::Wake);
        }
    }

    /// Sends `msg` to the worker of `to`, starting one if needed.
    pub(super) fn worker(&mut self, to: &ScreenName, msg: WorkerMsg) {
        if let Some(worker) = self.workers.get(to)
            && !worker.is_closed()
        {
            // Full: it has a backlog to look at anyway; a send's reply
            // would be lost, so that one waits for room.
            if let Err(mpsc::error::TrySendError::Full(msg)) = worker.try_send(msg) {
                let worker = worker.clone();
                self.tasks.spawn(async move {
                    let _ = worker.send(msg).await;
                    Done::Nothing
                });
            }
            return;
        }
        let Some(network) = self.network.clone() else {
            warn!("no network to deliver to {to} with");
            return;
        };
        let env = Arc::new(WorkerEnv {
            identity: self.identity.clone(),
            store: self.store.clone(),
            network,
            session: self.directory.subscribe(),
            certificate: self.registration.certificates.current(),
            trust: self.trust.subscribe(),
            events: self.events.clone(),
            notes: self.notes.clone(),
            mode: self.worker_mode,
        });
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(msg);
        let worker = Worker::new(to.clone(), env, self.presence.get(to).cloned());
        let cancel = self.cancel.child_token();
        self.tasks.spawn(async move {
            worker.run(rx, cancel).await;
            Done::Nothing
        });
        self.workers.insert(to.clone(), tx);
    }

    pub(super) fn worker_if_any(&mut self, name: &ScreenName, msg: WorkerMsg) {
        if self.workers.contains_key(name) {
            self.worker(name, msg);
        }
    }

    /// Hands an ephemeral signal to the recipient's worker; dropped when
    /// the worker is busy (a signal is worth nothing late).
    pub(super) fn signal(&mut self, to: ScreenName, signal: Signal) -> Response {
        if self.registration.online.is_none() {
            return failed(
                FailureKind::Unreachable,
                "not online: signals go only from the running client",
            );
        }
        match self.workers.get(&to).filter(|w| !w.is_closed()) {
            Some(worker) => {
                let _ = worker.try_send(WorkerMsg::Signal(signal));
            }
            None => self.worker(&to, WorkerMsg::Signal(signal)),
        }
        Response::Done {
            message: format!("sent to {to}"),
        }
    }

    /// Resolves a worker's recipient through the directory (which then
    /// knows it too). While online and cut off from the node, at once: the
    /// worker waits for the session to come back, not for the answer.
    fn resolve_for_delivery(&mut self, name: ScreenName, reply: ResolveReply) {
        if self.registration.online.is_some() && !self.directory.connected() {
            let _ = reply.send(Err(Unresolved::Other(
                "not connected to the rendezvous node".to_owned(),
            )));
            return;
        }
        self.with_directory(DirWork::Resolve {
            name,
            then: AfterResolve::Deliver(reply),
        });
    }

    /// Checks the signatures of messages kept and acknowledged, but not yet
    /// checked, when the client last stopped; shows the good ones and
    /// removes the rest.
    pub(super) async fn settle_unverified(&mut self) {
        let waiting = match self.store.call(|s| s.unverified()).await {
            Ok(waiting) => waiting,
            Err(e) => return warn!("cannot read the messages still to be checked: {e}"),
        };
        for stored in waiting {
            let id = stored.message.id;
            let key = stored.peer_id.as_ref().and_then(verifying_key_of);
            let good = match (&stored.signed, key) {
                (Some(signed), Some(key)) => signed.verify(MESSAGE_CONTEXT, &key).is_ok(),
                _ => false,
            };
            if !good {
                warn!(%id, from = %stored.message.from, "a kept message's signature does not verify; removing it");
            }
            match self
                .store
                .call(move |s| s.settle_incoming(&id, good, now_ms()))
                .await
            {
                Ok(Some(message)) => {
                    let name = message.peer().clone();
                    let _ = self
                        .events
                        .send(Event::Message {
                            message,
                            path: None,
                        })
                        .await;
                    self.tell_unread(name).await;
                }
                Ok(None) => {}
                Err(e) => warn!(%id, "cannot record a message's checked signature: {e}"),
            }
        }
    }

    pub(super) async fn on_note(&mut self, note: Note) {
        match note {
            Note::Resolve { name, reply } => self.resolve_for_delivery(name, reply),
            Note::KeyObserved { name, key } => self.record_key_change(&name, key).await,
            Note::Offered(id) => self.on_offered(id).await,
            Note::Unread(name) => self.tell_unread(name).await,
            Note::FileReady {
                message,
                source,
                reply,
            } => {
                self.queue_message(message, reply, false, Duration::ZERO, Some(source))
                    .await;
            }
        }
    }
}
