//! What keeps the web window closed to everyone but its user.
//!
//! - `Host` must name the address served (`127.0.0.1:PORT`, `[::1]:PORT`
//!   or `localhost:PORT`): a page of another site that rebinds its DNS
//!   name to 127.0.0.1 sends its own name, and gets 403.
//! - The API needs the session (401 without): the cookie, given once for
//!   the one-time token of the URL printed at start, `HttpOnly;
//!   SameSite=Strict`, so that no script reads it and no other site's
//!   request carries it; and with it the page's key, given in the same
//!   answer, which the page keeps for its own origin and sends as
//!   `X-Messenger-Key` (or `key=` in the event stream's address). A
//!   browser sends cookies to every port of 127.0.0.1, so another local
//!   server the user visits gets the cookie; only this page has the key.
//! - A request that may change something (any method but GET and HEAD)
//!   needs an `Origin` that is exactly this page's (403 otherwise).
//!
//! The token, the cookie and the key change with every start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, WebError};

/// The session cookie's name.
pub(super) const COOKIE: &str = "messenger_session";

/// The doors of one server.
#[derive(Debug)]
pub(super) struct Guard {
    /// What `Host` may say.
    hosts: Vec<String>,
    /// What `Origin` may say.
    origins: Vec<String>,
    token: String,
    token_used: AtomicBool,
    session: String,
    /// The session's second half, which only the page holds.
    page_key: String,
    /// Told once the token is used.
    opened: tokio::sync::watch::Sender<bool>,
}

impl Guard {
    pub(super) fn new(addr: std::net::SocketAddr) -> Result<Self, WebError> {
        let port = addr.port();
        let mut hosts = vec![addr.to_string(), format!("localhost:{port}")];
        // Every address of the machine is served; the page is named by
        // the loopback ones (a Host of another machine's name is not
        // known to be this one).
        if addr.ip().is_unspecified() {
            hosts.push(format!("127.0.0.1:{port}"));
            hosts.push(format!("[::1]:{port}"));
        }
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Ok(Self {
            hosts,
            origins,
            token: random_hex()?,
            token_used: AtomicBool::new(false),
            session: random_hex()?,
            page_key: random_hex()?,
            opened: tokio::sync::watch::channel(false).0,
        })
    }

    /// Becomes true once the token bought the session.
    pub(super) fn opened(&self) -> tokio::sync::watch::Receiver<bool> {
        self.opened.subscribe()
    }

    /// The one-time token, for the URL.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        header_str(headers, header::HOST).is_some_and(|h| self.hosts.iter().any(|a| a == h))
    }

    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        header_str(headers, header::ORIGIN).is_some_and(|o| self.origins.iter().any(|a| a == o))
    }

    /// The cookie, and the page's key beside it.
    fn has_session(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let key = header_str(headers, HeaderName::from_static(KEY_HEADER)).or_else(|| {
            query?
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find_map(|(name, value)| (name == "key").then_some(value))
        });
        let keyed = key.is_some_and(|k| same(k.as_bytes(), self.page_key.as_bytes()));
        keyed && self.has_cookie(headers)
    }

    fn has_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same(value.as_bytes(), self.session.as_bytes()))
    }
}

/// The header that carries the page's key.
pub(super) const KEY_HEADER: &str = "x-messenger-key";

/// Checks every request before it is served: the Host, and the Origin of
/// a change.
pub(super) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if !guard.host_ok(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "this page is served only as {}: the Host header names another",
                guard.hosts.join(" or ")
            ),
        );
    }
    let reads_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads_only && !guard.origin_ok(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "a change must come from this page itself: the Origin header is missing or names another",
        );
    }
    next.run(request).await
}

/// Checks every request of the API for the session (the API's own layer:
/// no route under it is served without).
pub(super) async fn check_session(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    if !guard.has_session(request.headers(), request.uri().query()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no session: open the address the client printed when it started",
        );
    }
    next.run(request).await
}

/// What the page keeps for its own origin.
#[derive(Debug, serde::Serialize)]
struct PageKey<'a> {
    key: &'a str,
}

/// The token a page found after the `#` of its address.
#[derive(Debug, Deserialize)]
pub(super) struct TokenOffer {
    token: String,
}

/// Exchanges the one-time token for the session cookie.
pub(super) async fn open_session(
    State(state): State<AppState>,
    Json(offer): Json<TokenOffer>,
) -> Response {
    let guard = &state.guard;
    let right = same(offer.token.as_bytes(), guard.token.as_bytes());
    if !right || guard.token_used.swap(true, Ordering::SeqCst) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this token is not the client's, or was used already: open the address the client printed when it started (it changes with every start)",
        );
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        guard.session
    );
    guard.opened.send_replace(true);
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => (
            StatusCode::OK,
            [(header::SET_COOKIE, cookie)],
            Json(PageKey {
                key: &guard.page_key,
            }),
        )
            .into_response(),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot make the cookie"),
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.to_owned(),
    )
        .into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, in hex.
fn random_hex() -> Result<String, WebError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| WebError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
