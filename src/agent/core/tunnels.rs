//! The core's side of tunnels: my invitations (stored, and published to
//! the serving task as one snapshot), the serving task itself, and
//! opening tunnels to others on a front end's behalf.

use std::sync::Arc;
use std::time::Duration;

use messenger_proto::chat::{Message, MessageId};
use messenger_proto::name::ScreenName;
use messenger_proto::time::now_ms;
use messenger_proto::tunnel::{self as wire, TunnelRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::{Core, Done, failed, store_response};
use crate::api::{Failure, FailureKind, Response};
use crate::directory::DirectorySession;
use crate::network::Streams;
use crate::store::Invitation;
use crate::tunnels::{self, ServeCommand, ServeEnv, Tunnel, TunnelError};

/// How long opening a tunnel waits for a session with the node (a client
/// that just went online, or is reconnecting).
const SESSION_WAIT: Duration = Duration::from_secs(10);

impl Core {
    /// Starts serving tunnel streams.
    pub(super) fn serve_tunnels(&mut self, streams: Streams) {
        let (commands, command_rx) = mpsc::channel(16);
        self.tunnel_server = Some(commands);
        let env = ServeEnv {
            invitations: self.invitations.subscribe(),
            trust: self.trust.subscribe(),
            events: self.events.clone(),
        };
        let cancel = self.cancel.child_token();
        self.tasks.spawn(async move {
            tunnels::serve(streams, env, command_rx, cancel).await;
            Done::Nothing
        });
    }

    /// Invites `name` to `port` (or withdraws it), and tells them.
    pub(super) async fn invite(
        &mut self,
        name: ScreenName,
        port: u16,
        revoke: bool,
        reply: oneshot::Sender<Response>,
    ) {
        let response = self.change_invitation(name, port, revoke).await;
        let _ = reply.send(response);
    }

    async fn change_invitation(&mut self, name: ScreenName, port: u16, revoke: bool) -> Response {
        if port == 0 {
            return failed(
                FailureKind::Invalid,
                "port 0 cannot be invited; ports are 1 to 65535",
            );
        }
        let Some(me) = self.my_name() else {
            return failed(
                FailureKind::NoName,
                "you have no screen name yet: register one first",
            );
        };
        let n = name.clone();
        let found = self
            .store
            .call(move |s| Ok((s.contact(&n)?, s.invitation(&n, port)?)))
            .await;
        let (contact, existing) = match found {
            Ok(found) => found,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        let Some(contact) = contact else {
            return failed(
                FailureKind::NotAContact,
                format!(
                    "{name} is not a contact: only contacts can be invited (adding them pins their key)"
                ),
            );
        };
        let now = now_ms();
        let invitation = match (existing, revoke) {
            (Some(i), false) if i.open() && i.key == contact.pinned => {
                return Response::Done {
                    message: format!("{name} is invited to port {port} already"),
                };
            }
            (_, false) => Invitation {
                name: name.clone(),
                key: contact.pinned,
                port,
                created_at: now,
                revoked_at: None,
            },
            (Some(i), true) if i.open() => Invitation {
                revoked_at: Some(now),
                ..i
            },
            (_, true) => {
                return failed(
                    FailureKind::Invalid,
                    format!("{name} has no invitation to port {port} to withdraw"),
                );
            }
        };
        let stored = invitation.clone();
        if let Err(e) = self.store.call(move |s| s.put_invitation(&stored)).await {
            return Response::Failed(Failure::from(&e));
        }
        self.reload_invitations().await;
        // For people whose client does not read `invite`: the fields say
        // it all, and each front end tells its user how to connect.
        let text = if revoke {
            format!("no longer lets you connect to port {port} on their computer")
        } else {
            format!("invites you to connect to port {port} on their computer")
        };
        let notice = Message {
            id: MessageId::random(),
            from: me,
            to: name.clone(),
            sent_at: now,
            text,
            file: None,
            invite: Some(wire::Invitation {
                port,
                withdrawn: revoke,
            }),
        };
        let (queued, answer) = oneshot::channel();
        self.queue_message(notice, queued, false, Duration::ZERO, None)
            .await;
        let told = match answer.await {
            Ok(Response::Failed(f)) => format!("; they could not be told: {}", f.message),
            _ => "; they are told in a message".into(),
        };
        Response::Done {
            message: if revoke {
                format!("{name} can no longer connect to port {port}{told}")
            } else {
                format!(
                    "{name} may connect to 127.0.0.1:{port} here, through your client, while it runs{told}"
                )
            },
        }
    }

    /// Reads my invitations from the store and publishes them.
    pub(super) async fn reload_invitations(&mut self) {
        match self.store.call(|s| s.invitations()).await {
            Ok(invitations) => {
                self.invitations.send_replace(Arc::new(invitations));
            }
            Err(e) => warn!("cannot read the invitations: {e}"),
        }
        self.tell_invitations().await;
    }

    pub(super) async fn list_invitations(&mut self, reply: oneshot::Sender<Response>) {
        let both = self
            .store
            .call(|s| Ok((s.invitations()?, s.invited_me()?)))
            .await;
        let _ = reply.send(store_response(both, |(invitations, invited_me)| {
            Response::Invitations {
                invitations,
                invited_me,
            }
        }));
    }

    /// Opens a tunnel to `to` for a front end.
    pub(super) fn open_tunnel(
        &mut self,
        to: ScreenName,
        request: TunnelRequest,
        reply: oneshot::Sender<Result<Tunnel, Failure>>,
    ) {
        let (Some(network), Some(_)) = (self.network.clone(), self.tunnel_server.as_ref()) else {
            let _ = reply.send(Err(not_online()));
            return;
        };
        let mut session = self.directory.subscribe();
        let trust = self.trust.borrow().clone();
        self.tasks.spawn(async move {
            let session = wait_for_session(&mut session).await;
            let opened = tunnels::open(&network, session, &trust, &to, request).await;
            let _ = reply.send(opened.map_err(|e| Failure::from(&e)));
            Done::Nothing
        });
    }

    /// Registers a pipe listener for a front end.
    pub(super) async fn listen_pipe(
        &mut self,
        from: Option<ScreenName>,
        reply: oneshot::Sender<Result<oneshot::Receiver<Tunnel>, Failure>>,
    ) {
        if let Some(from) = &from
            && !self.trust.borrow().is_contact(from)
        {
            let _ = reply.send(Err(Failure::new(
                FailureKind::Invalid,
                format!("{from} is not a contact: only contacts can open a pipe to you"),
            )));
            return;
        }
        let Some(server) = self.tunnel_server.clone() else {
            let _ = reply.send(Err(not_online()));
            return;
        };
        let (deliver, delivered) = oneshot::channel();
        let result = server
            .send(ServeCommand::ListenPipe { from, deliver })
            .await
            .map(|()| delivered)
            .map_err(|_| not_online());
        let _ = reply.send(result);
    }
}

fn not_online() -> Failure {
    Failure::new(
        FailureKind::NotOnline,
        "tunnels go through your client while it is online, and it is not",
    )
}

/// The session with the node, waiting a little for one.
async fn wait_for_session(
    session: &mut watch::Receiver<Option<DirectorySession>>,
) -> Option<DirectorySession> {
    let usable = |s: &Option<DirectorySession>| s.as_ref().is_some_and(|s| !s.is_closed());
    match tokio::time::timeout(SESSION_WAIT, session.wait_for(usable)).await {
        Ok(Ok(s)) => s.clone(),
        _ => None,
    }
}

impl From<&TunnelError> for Failure {
    fn from(e: &TunnelError) -> Self {
        use crate::direct::DirectError;
        let kind = match e {
            TunnelError::Refused { .. } => FailureKind::Refused,
            TunnelError::Direct(DirectError::NoSuchName(_)) => FailureKind::NoSuchName,
            TunnelError::Direct(DirectError::OtherKey { .. }) => FailureKind::KeyChanged,
            TunnelError::Direct(_) => FailureKind::Unreachable,
            TunnelError::Broken { .. } => FailureKind::Other,
        };
        Failure::new(kind, e.to_string())
    }
}
