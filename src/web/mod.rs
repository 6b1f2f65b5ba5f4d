//! The Messenger window as a web page, served by the running client on a
//! loopback address to the user's own browser.
//!
//! Closed by default (see [`guard`]): the page at `/` and its files are
//! served to anyone who names this address in `Host`, and nothing else is;
//! the API needs the session cookie, which only the one-time token of the
//! URL printed at start buys, and a state change needs the page's own
//! `Origin`. The page speaks the library's own requests and responses
//! (JSON over HTTP), so it has no model of its own.

mod guard;

use std::net::SocketAddr;
use std::sync::Arc;

use std::convert::Infallible;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::warn;

use crate::agent::Agent;
use crate::api::{Failure, FailureKind, Request, Response};
use guard::Guard;

/// The largest request body the API reads (a request is a few names and a
/// message of at most 64 KiB, in JSON).
const MAX_BODY: usize = 256 * 1024;

/// What the page may load and reach: its own files and this server only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Why the web window could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address is not a loopback one, and was not named explicitly.
    #[error(
        "{0} is not a loopback address: the web window serves 127.0.0.1 or ::1 unless told otherwise"
    )]
    NotLoopback(SocketAddr),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No randomness for the token.
    #[error("cannot draw a random token: {0}")]
    Random(String),
}

/// The running web window's server.
#[derive(Debug)]
pub struct WebServer {
    addr: SocketAddr,
    token: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl WebServer {
    /// Serves the page for `agent` on `listen` (port 0: a free one). A
    /// non-loopback address is refused unless `any_address`.
    pub async fn start(
        agent: Agent,
        listen: SocketAddr,
        any_address: bool,
    ) -> Result<Self, WebError> {
        if !listen.ip().is_loopback() {
            if !any_address {
                return Err(WebError::NotLoopback(listen));
            }
            warn!(%listen, "the web window listens beyond this machine, as asked");
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| WebError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| WebError::Listen {
            addr: listen,
            source,
        })?;
        let guard = Arc::new(Guard::new(addr)?);
        let token = guard.token().to_owned();
        let stop = CancellationToken::new();
        let app = router(agent, guard, stop.clone());
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopping.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!("the web window's server stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            token,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open: the one-time token after the `#`, which a
    /// browser never sends (so it reaches no log and no `Referer`).
    pub fn url(&self) -> String {
        format!("http://{}/#{}", self.addr, self.token)
    }

    /// Stops serving; open requests end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[derive(Clone)]
struct AppState {
    agent: Agent,
    guard: Arc<Guard>,
    /// Ends the event streams when the server stops (a graceful shutdown
    /// waits for every response to end, and these never would).
    stop: CancellationToken,
}

fn router(agent: Agent, guard: Arc<Guard>, stop: CancellationToken) -> Router {
    let api = Router::new()
        .route("/request", post(call))
        .route("/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/session", post(guard::open_session))
        .nest("/api", api)
        .with_state(AppState {
            agent,
            guard: guard.clone(),
            stop,
        })
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// One request of the library's own, answered with its response.
async fn call(State(state): State<AppState>, Json(request): Json<Request>) -> HttpResponse {
    let response = state.agent.call(request).await;
    (StatusCode::OK, Json(response)).into_response()
}

/// Where a page resumes the event stream: after `after` of run `run`
/// (from a snapshot), or after the `Last-Event-ID` its browser sends when
/// it reconnects by itself.
#[derive(Debug, Deserialize)]
struct Resume {
    run: String,
    after: u64,
}

/// The client's events from a point on, as server-sent events: each one's
/// `id` is its number, its data the library's `{"reply":"event", …}`. A
/// follower that cannot go on gets one `failed` (`events_missed`: take a
/// new snapshot) and the stream ends.
async fn events(
    State(state): State<AppState>,
    Query(resume): Query<Resume>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(resume.after);
    let follower = state.agent.follow(&resume.run, after);
    let stream = futures::stream::unfold(Some(follower), |follower| async move {
        let frame = match follower? {
            Ok(mut follower) => match follower.next().await {
                Ok((seq, event)) => {
                    let frame = sse_frame(&Response::Event { seq, event }).id(seq.to_string());
                    return Some((Ok(frame), Some(Ok(follower))));
                }
                Err(missed) => missed,
            },
            Err(missed) => missed,
        };
        let failed = Response::Failed(Failure::new(FailureKind::EventsMissed, frame));
        Some((Ok(sse_frame(&failed)), None))
    });
    Sse::new(stream.take_until(state.stop.cancelled_owned())).keep_alive(KeepAlive::default())
}

fn sse_frame(response: &Response) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(response).unwrap_or_default())
}

async fn index() -> HttpResponse {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn script() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

fn asset(kind: &'static str, body: &'static str) -> HttpResponse {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

#[cfg(test)]
mod tests;
