//! The Messenger window as a web page, served by the running client on a
//! loopback address to the user's own browser.
//!
//! Closed by default (see [`guard`]): the page at `/` and its files are
//! served to anyone who names this address in `Host`, and nothing else is;
//! the API needs the session cookie, which only the one-time token of the
//! URL printed at start buys, and a state change needs the page's own
//! `Origin`. The page speaks the library's own requests and responses
//! (JSON over HTTP), so it has no model of its own.

mod backend;
mod guard;
mod upload;

pub use backend::Backend;
pub use upload::sweep as sweep_uploads;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::warn;

use crate::agent::SignedIn;
use crate::api::{Failure, FailureKind, Request, Response};
use crate::home::Home;
use guard::Guard;

/// The largest request body the API reads (a request is a few names and a
/// message of at most 64 KiB, in JSON).
const MAX_BODY: usize = 256 * 1024;

/// How long stopping waits for requests still running (an upload, a
/// `send` waiting for its acknowledgement) before it cuts them off.
const STOP_GRACE: Duration = Duration::from_secs(5);

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

/// Where and how the page is served.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// The address (port 0: a free one).
    pub listen: SocketAddr,
    /// Whether an address beyond this machine may be served (named
    /// explicitly by the user; warned about).
    pub any_address: bool,
    /// Where files the page offers are kept while they are offered (the
    /// home's `uploads/`); `None`: the page cannot offer files.
    pub uploads: Option<PathBuf>,
}

impl WebOptions {
    /// Loopback, a free port, files kept in `uploads`.
    pub fn loopback(uploads: Option<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            any_address: false,
            uploads,
        }
    }
}

/// What the page starts with.
#[derive(Debug)]
pub enum Serving {
    /// A client, signed in.
    Client(Backend),
    /// A home with no name yet: the page shows the sign-in form, and the
    /// client it signs in with is handed to `signed_in` (whose owner takes
    /// it online) while the page goes on with it.
    SignIn {
        /// The home.
        home: Home,
        /// Where the signed-in client goes.
        signed_in: mpsc::Sender<SignedIn>,
    },
}

/// The running web window's server. It stops when stopped or dropped.
#[derive(Debug)]
pub struct WebServer {
    addr: SocketAddr,
    token: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Sign-ins under way (each ends by itself, within the sign-in's own
    /// time bounds).
    tasks: TaskTracker,
    opened: tokio::sync::watch::Receiver<bool>,
}

impl WebServer {
    /// Serves the page on `options.listen`. A non-loopback address is
    /// refused unless `options.any_address`.
    pub async fn start(options: WebOptions, serving: Serving) -> Result<Self, WebError> {
        let listen = options.listen;
        if !listen.ip().is_loopback() {
            if !options.any_address {
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
        let opened = guard.opened();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stage = match serving {
            Serving::Client(backend) => Stage::Ready(backend),
            Serving::SignIn { home, signed_in } => Stage::SignIn { home, signed_in },
        };
        let state = AppState {
            stage: Arc::new(Mutex::new(stage)),
            guard,
            stop: stop.clone(),
            uploads: options.uploads,
            reserved: Arc::new(AtomicU64::new(0)),
            tasks: tasks.clone(),
        };
        let app = router(state);
        let stopping = stop.clone();
        // Events are small writes that must go at once: without
        // TCP_NODELAY one waits for the browser's delayed acknowledgement
        // of the last (tens of ms).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                warn!("cannot set TCP_NODELAY on the page's connection: {e}");
            }
        });
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
            tasks,
            opened,
        })
    }

    /// Resolves once the page used the one-time token (told to the user,
    /// who then knows the address is spent).
    pub async fn opened(&self) {
        let mut opened = self.opened.clone();
        let _ = opened.wait_for(|used| *used).await;
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

    /// Stops serving; requests still running get a few seconds to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        // The task ends by itself once told (its event streams end with
        // the token too).
        self.stop.cancel();
    }
}

/// Whether the page has a client to talk to yet.
#[derive(Debug)]
enum Stage {
    /// Signed in.
    Ready(Backend),
    /// Waiting for the sign-in form.
    SignIn {
        home: Home,
        signed_in: mpsc::Sender<SignedIn>,
    },
    /// A sign-in is being tried.
    SigningIn,
}

#[derive(Clone)]
struct AppState {
    stage: Arc<Mutex<Stage>>,
    guard: Arc<Guard>,
    /// Ends the event streams when the server stops (a graceful shutdown
    /// waits for every response to end, and these never would).
    stop: CancellationToken,
    uploads: Option<PathBuf>,
    /// Bytes that uploads under way may still write (the disk's room is
    /// shared among them).
    reserved: Arc<AtomicU64>,
    tasks: TaskTracker,
}

impl AppState {
    /// The client, once signed in.
    fn backend(&self) -> Option<Backend> {
        match &*self.stage.lock().unwrap_or_else(|e| e.into_inner()) {
            Stage::Ready(backend) => Some(backend.clone()),
            _ => None,
        }
    }
}

fn router(state: AppState) -> Router {
    let guard = state.guard.clone();
    let api = Router::new()
        .route("/request", post(call))
        .route("/events", get(events))
        .route("/sign_in", get(sign_in_form).post(sign_in))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/upload", post(upload::upload))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            guard::check_session,
        ));
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/session", post(guard::open_session))
        .nest("/api", api)
        .with_state(state)
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

fn not_signed_in() -> Response {
    Response::Failed(Failure::new(
        FailureKind::NoName,
        "not signed in yet: give a rendezvous node and a screen name",
    ))
}

/// One request of the library's own, answered with its response.
async fn call(State(state): State<AppState>, Json(request): Json<Request>) -> HttpResponse {
    let response = match (&request, state.backend()) {
        // These keep their connection for bytes or events: the page has
        // `/api/events` for events, and no tunnels.
        (Request::Tunnel { .. } | Request::PipeListen { .. } | Request::Follow { .. }, _) => {
            Response::Failed(Failure::new(
                FailureKind::Invalid,
                "tunnels, pipes and follows are not served to the page: it follows events at /api/events",
            ))
        }
        (_, Some(backend)) => backend.call(request).await,
        (_, None) => not_signed_in(),
    };
    (StatusCode::OK, Json(response)).into_response()
}

/// What the sign-in form starts from.
#[derive(Debug, Serialize)]
struct SignInForm {
    /// Whether a client is signed in already (the form is not shown).
    signed_in: bool,
    /// The nodes remembered in the home, separated by commas.
    rendezvous: String,
}

async fn sign_in_form(State(state): State<AppState>) -> Json<SignInForm> {
    let stage = state.stage.lock().unwrap_or_else(|e| e.into_inner());
    let (signed_in, rendezvous) = match &*stage {
        Stage::Ready(_) => (true, String::new()),
        Stage::SignIn { home, .. } => {
            let nodes = home
                .config()
                .map(|c| {
                    c.rendezvous
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            (false, nodes)
        }
        Stage::SigningIn => (false, String::new()),
    };
    Json(SignInForm {
        signed_in,
        rendezvous,
    })
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
struct SignInFields {
    rendezvous: String,
    name: String,
}

/// Signs the home in with the form's node and name: answered `registered`
/// (the page then takes a snapshot) or `failed` with why. The sign-in runs
/// apart from the request, so that a page that goes away meanwhile (a
/// reload) leaves the form usable, or the client signed in.
async fn sign_in(
    State(state): State<AppState>,
    Json(fields): Json<SignInFields>,
) -> Json<Response> {
    let taken = {
        let mut stage = state.stage.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *stage, Stage::SigningIn) {
            Stage::SignIn { home, signed_in } => Ok((home, signed_in)),
            other => Err(std::mem::replace(&mut *stage, other)),
        }
    };
    let (home, signed_in) = match taken {
        Ok(taken) => taken,
        Err(Stage::Ready(_)) => {
            return Json(Response::Failed(Failure::new(
                FailureKind::Invalid,
                "signed in already",
            )));
        }
        Err(_) => {
            return Json(Response::Failed(Failure::new(
                FailureKind::Invalid,
                "a sign-in is being tried already: wait for its answer",
            )));
        }
    };
    let stage = state.stage.clone();
    let trying = state.tasks.spawn(async move {
        let tried = crate::agent::sign_in(home.clone(), &fields.rendezvous, &fields.name).await;
        let signed = match tried {
            Ok(signed) => signed,
            Err(failure) => {
                *stage.lock().unwrap_or_else(|e| e.into_inner()) =
                    Stage::SignIn { home, signed_in };
                return Response::Failed(failure);
            }
        };
        let agent = signed.agent.clone();
        let registered = Response::Registered {
            name: signed.name.clone(),
            new_claim: signed.new_claim,
            peer_id: agent.peer_id(),
            rendezvous: signed.rendezvous.clone(),
        };
        let refused = match signed_in.try_send(signed) {
            Ok(()) => None,
            Err(refused) => Some(refused.into_inner()),
        };
        if let Some(signed) = refused {
            signed.agent.shutdown().await;
            *stage.lock().unwrap_or_else(|e| e.into_inner()) = Stage::SignIn { home, signed_in };
            return Response::Failed(Failure::new(FailureKind::Other, "the client is stopping"));
        }
        *stage.lock().unwrap_or_else(|e| e.into_inner()) = Stage::Ready(Backend::Agent(agent));
        registered
    });
    Json(trying.await.unwrap_or_else(|e| {
        Response::Failed(Failure::new(
            FailureKind::Other,
            format!("the sign-in stopped: {e}"),
        ))
    }))
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
    let responses = match state.backend() {
        Some(backend) => backend.follow(&resume.run, after).await,
        None => futures::stream::once(async { not_signed_in() }).boxed(),
    };
    let frames = responses.map(|response| {
        let frame = sse_frame(&response);
        Ok(match response {
            Response::Event { seq, .. } => frame.id(seq.to_string()),
            _ => frame,
        })
    });
    Sse::new(frames.take_until(state.stop.cancelled_owned())).keep_alive(KeepAlive::default())
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
