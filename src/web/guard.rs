//! What keeps the web window closed to everyone but its user.
//!
//! - `Host` must name the address served (`127.0.0.1:PORT`, `[::1]:PORT`
//!   or `localhost:PORT`): a page of another site that rebinds its DNS
//!   name to 127.0.0.1 sends its own name, and gets 403.
//! - The API needs the session cookie (401 without). The cookie is given
//!   once, for the one-time token of the URL printed at start, and is
//!   `HttpOnly; SameSite=Strict`: no script reads it and no other site's
//!   request carries it.
//! - A request that may change something (any method but GET and HEAD)
//!   needs an `Origin` that is exactly this page's (403 otherwise).
//!
//! The token and the session change with every start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
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
}

impl Guard {
    pub(super) fn new(addr: std::net::SocketAddr) -> Result<Self, WebError> {
        let port = addr.port();
        let mut hosts = vec![addr.to_string(), format!("localhost:{port}")];
        if addr.ip().is_unspecified() {
            hosts.push(format!("127.0.0.1:{port}"));
        }
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Ok(Self {
            hosts,
            origins,
            token: random_hex()?,
            token_used: AtomicBool::new(false),
            session: random_hex()?,
        })
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

    fn has_session(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same(value.as_bytes(), self.session.as_bytes()))
    }
}

/// Checks every request before it is served.
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
    if request.uri().path().starts_with("/api/") && !guard.has_session(headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no session: open the address the client printed when it started",
        );
    }
    next.run(request).await
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
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
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
