//! My settings and my status: kept in the home's config, told to every
//! front end, and (my status) registered again while online.

use std::path::PathBuf;

use messenger_proto::presence::{Status, check_status_text};
use tokio::sync::oneshot;

use super::registration::OwnStatus;
use super::{Core, failed};
use crate::agent::error::SetStatusError;
use crate::api::{Event, Failure, FailureKind, Response};

impl Core {
    /// Changes what is given (none of it: nothing) and saves it.
    pub(super) fn apply_settings(
        &mut self,
        send_typing: Option<bool>,
        bell: Option<bool>,
        downloads: Option<PathBuf>,
        max_file_size: Option<u64>,
    ) -> Response {
        let mut said = Vec::new();
        if let Some(cap) = max_file_size {
            self.config.max_file_size = (cap > 0).then_some(cap);
            said.push(match cap {
                0 => "files of any size may be accepted (as the disk has room)".to_owned(),
                cap => format!("files over {} are refused", crate::size::human_size(cap)),
            });
        }
        if let Some(dir) = downloads {
            said.push(format!("files you accept go into {}", dir.display()));
            self.config.downloads = Some(dir);
        }
        if let Some(on) = send_typing {
            self.config.send_typing = Some(on);
            said.push(
                if on {
                    "others see when you type"
                } else {
                    "others no longer see when you type"
                }
                .to_owned(),
            );
        }
        if let Some(on) = bell {
            self.config.bell = Some(on);
            said.push(
                if on {
                    "the bell rings"
                } else {
                    "the bell is off"
                }
                .to_owned(),
            );
        }
        match self.save_config() {
            Ok(()) => {
                self.emit(Event::Settings(self.settings_view()));
                Response::Done {
                    message: said.join("; "),
                }
            }
            Err(e) => failed(FailureKind::Other, e),
        }
    }

    pub(super) async fn set_status(
        &mut self,
        status: Status,
        text: String,
        reply: oneshot::Sender<Response>,
    ) {
        if let Err(e) = check_status_text(&text) {
            let _ = reply.send(Response::Failed(Failure::from(&SetStatusError::from(e))));
            return;
        }
        self.config.status = Some(status);
        self.config.status_text = Some(text.clone());
        if let Err(e) = self.save_config() {
            let _ = reply.send(Response::Failed(Failure::from(&SetStatusError::Home(e))));
            return;
        }
        self.registration.status = OwnStatus {
            status,
            text: text.clone(),
        };
        self.emit(Event::MyStatus {
            status,
            text: text.clone(),
        });
        let shown = suffix(&text);
        if self.registration.online.is_some() && self.directory.connected() {
            let done = Response::Done {
                message: format!("status: {status}{shown}"),
            };
            self.register_again(Some((reply, done)), false);
        } else {
            let _ = reply.send(Response::Done {
                message: format!("status: {status}{shown} (applies when you go online)"),
            });
        }
    }
}

pub(super) fn suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" \"{text}\"")
    }
}
