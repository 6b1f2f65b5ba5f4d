//! Whom the page's requests go to: a client in this process, or the home's
//! client running in another (`messenger online`, `chat`, `ui`), reached
//! through its control socket. Either way the page speaks the library's
//! own requests, responses and numbered events.

use std::path::PathBuf;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::agent::Agent;
use crate::api::{Failure, FailureKind, Request, Response};
use crate::control;

/// The client the page talks to.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A client of this process.
    Agent(Agent),
    /// The running client of the home at this path, through its control
    /// socket (it may stop and start again: the page follows it).
    Control(PathBuf),
}

impl Backend {
    /// Runs one request.
    pub(super) async fn call(&self, request: Request) -> Response {
        match self {
            Self::Agent(agent) => agent.call(request).await,
            Self::Control(home) => match control::call(home, &request).await {
                Ok(Some(response)) => response,
                Ok(None) => Response::Failed(not_running()),
                Err(e) => Response::Failed(Failure::new(FailureKind::Other, e)),
            },
        }
    }

    /// The events after `after` of run `run`, each as a
    /// [`Response::Event`]; a follow that cannot go on ends with one
    /// [`Response::Failed`] (`events_missed`, or why the client cannot be
    /// reached).
    pub(super) async fn follow(&self, run: &str, after: u64) -> BoxStream<'static, Response> {
        match self {
            Self::Agent(agent) => {
                let follower = agent.follow(run, after);
                futures::stream::unfold(Some(follower), |follower| async move {
                    let missed = match follower? {
                        Ok(mut follower) => match follower.next().await {
                            Ok((seq, event)) => {
                                let event = Response::Event { seq, event };
                                return Some((event, Some(Ok(follower))));
                            }
                            Err(missed) => missed,
                        },
                        Err(missed) => missed,
                    };
                    let failed = Failure::new(FailureKind::EventsMissed, missed);
                    Some((Response::Failed(failed), None))
                })
                .boxed()
            }
            Self::Control(home) => {
                let request = Request::Follow {
                    run: run.to_owned(),
                    after,
                };
                let attached = match control::attach(home, &request).await {
                    Ok(Some(attached)) => attached,
                    Ok(None) => return failed(not_running()),
                    Err(e) => return failed(Failure::new(FailureKind::Other, e)),
                };
                futures::stream::unfold(Some(attached), |attached| async move {
                    let mut attached = attached?;
                    match attached.response().await {
                        Ok(event @ Response::Event { .. }) => Some((event, Some(attached))),
                        Ok(other) => Some((other, None)),
                        Err(e) => {
                            let gone = Failure::new(FailureKind::EventsMissed, e);
                            Some((Response::Failed(gone), None))
                        }
                    }
                })
                .boxed()
            }
        }
    }
}

fn failed(failure: Failure) -> BoxStream<'static, Response> {
    futures::stream::once(async move { Response::Failed(failure) }).boxed()
}

fn not_running() -> Failure {
    Failure::new(
        FailureKind::Other,
        "the home's client is not running: this page comes back when it starts again",
    )
}
