//! The doors of point 4, knocked on with plain HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::agent::{Agent, AgentConfig};
use messenger_proto::name::ScreenName;

/// An agent of its own, its store in memory (the node is never asked).
async fn agent() -> Agent {
    let identity = messenger_proto::Identity::generate().expect("a key");
    let node = "/ip4/127.0.0.1/tcp/9".parse().expect("an address");
    let mut config = AgentConfig::ephemeral(identity, node).expect("an agent's config");
    config.config.name = Some(ScreenName::parse("alice").expect("a name"));
    Agent::start(config).await.expect("an agent").0
}

async fn server() -> (WebServer, Agent) {
    let agent = agent().await;
    let web = WebServer::start(
        WebOptions::loopback(None),
        Serving::Client(Backend::Agent(agent.clone())),
    )
    .await
    .expect("the web window");
    (web, agent)
}

/// Sends one request; returns the status, the headers and the body.
async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn post(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
    session: Option<&str>,
    body: &str,
) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if let Some(session) = session {
        request.push_str(session);
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

fn session_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
}

/// The header lines of a session: the cookie the answer to `/session`
/// set, and the page's key from its body.
fn session_headers(head: &str, body: &str) -> String {
    let cookie = session_cookie(head).expect("a session cookie");
    let key: serde_json::Value = serde_json::from_str(body).expect("the page's key");
    let key = key["key"].as_str().expect("a key");
    format!("Cookie: {cookie}\r\nX-Messenger-Key: {key}\r\n")
}

#[tokio::test]
async fn the_page_is_served_only_under_its_own_host_and_with_closed_headers() {
    let (web, _agent) = server().await;
    let addr = web.addr();
    let (status, head, body) = http(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("<title>Messenger</title>"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // DNS rebinding: another name for this address.
    let (status, _, body) = http(
        addr,
        "GET / HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Host"), "{body}");
    let port = addr.port();
    let (status, _, _) = http(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "localhost names this address too");
    web.stop().await;
}

#[tokio::test]
async fn the_api_needs_the_cookie_the_one_time_token_buys_and_the_pages_origin() {
    let (web, _agent) = server().await;
    let addr = web.addr();
    let origin = format!("http://{addr}");
    let snapshot = r#"{"op":"snapshot"}"#;

    // No cookie: 401.
    let (status, _, body) = http(
        addr,
        &post(addr, "/api/request", Some(&origin), None, snapshot),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // A wrong token buys nothing.
    let (status, _, _) = http(
        addr,
        &post(addr, "/session", Some(&origin), None, r#"{"token":"00"}"#),
    )
    .await;
    assert_eq!(status, 401);

    // The token from the URL, from the page's origin: the cookie.
    let url = web.url();
    let token = url
        .split_once('#')
        .map(|(_, t)| t)
        .expect("a token after #");
    let offer = format!(r#"{{"token":"{token}"}}"#);
    let (status, head, body) =
        http(addr, &post(addr, "/session", Some(&origin), None, &offer)).await;
    assert_eq!(status, 200, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("httponly") && lower.contains("samesite=strict"),
        "{head}"
    );
    let cookie = session_headers(&head, &body);

    // The cookie alone (as any server on another port of 127.0.0.1 gets
    // it from the browser) is not the session: the page's key is needed.
    let cookie_alone = format!("Cookie: {}\r\n", session_cookie(&head).expect("a cookie"));
    let (status, _, _) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some(&origin),
            Some(&cookie_alone),
            snapshot,
        ),
    )
    .await;
    assert_eq!(status, 401, "the cookie without the page's key");

    // Used once: the same token again is refused.
    let (status, _, _) = http(addr, &post(addr, "/session", Some(&origin), None, &offer)).await;
    assert_eq!(status, 401, "a token is good once");

    // With the cookie and the page's origin: the library's own answer.
    let (status, _, body) = http(
        addr,
        &post(addr, "/api/request", Some(&origin), Some(&cookie), snapshot),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(reply["reply"], "snapshot", "{reply}");

    // The cookie, but from another site, or with no Origin at all: 403.
    for origin in [Some("http://attacker.example"), None] {
        let (status, _, body) = http(
            addr,
            &post(addr, "/api/request", origin, Some(&cookie), snapshot),
        )
        .await;
        assert_eq!(status, 403, "{origin:?}: {body}");
    }

    // A body over the bound is refused, not read.
    let big = format!(
        r#"{{"op":"send","id":"abababababababababababababababab","to":"bob","text":"{}"}}"#,
        "x".repeat(MAX_BODY)
    );
    let (status, _, _) = http(
        addr,
        &post(addr, "/api/request", Some(&origin), Some(&cookie), &big),
    )
    .await;
    assert_eq!(status, 413);
    web.stop().await;
}

#[tokio::test]
async fn a_non_loopback_address_is_refused_unless_named_explicitly() {
    let agent = agent().await;
    let options = WebOptions {
        listen: "0.0.0.0:0".parse().expect("an address"),
        any_address: false,
        uploads: None,
    };
    let refused = WebServer::start(options, Serving::Client(Backend::Agent(agent))).await;
    assert!(
        matches!(refused, Err(WebError::NotLoopback(_))),
        "{refused:?}"
    );
}

/// A session's header lines, bought with the server's token.
async fn signed_in(web: &WebServer) -> String {
    let addr = web.addr();
    let url = web.url();
    let token = url.split_once('#').map(|(_, t)| t).expect("a token");
    let offer = format!(r#"{{"token":"{token}"}}"#);
    let origin = format!("http://{addr}");
    let (status, head, body) =
        http(addr, &post(addr, "/session", Some(&origin), None, &offer)).await;
    assert_eq!(status, 200, "{head}");
    session_headers(&head, &body)
}

/// Reads `stream` until `want` is in what came, or fails after 10 s.
async fn read_until(stream: &mut TcpStream, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in 10 s; got {seen}"))
            .expect("read");
        assert!(n > 0, "the stream ended before {want:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn events_follow_a_snapshot_numbered_and_a_lost_run_says_take_a_new_one() {
    let (web, _agent) = server().await;
    let addr = web.addr();
    let origin = format!("http://{addr}");
    let cookie = signed_in(&web).await;
    let (_, _, body) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some(&origin),
            Some(&cookie),
            r#"{"op":"snapshot"}"#,
        ),
    )
    .await;
    let snapshot: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let run = snapshot["run"].as_str().expect("a run").to_owned();
    let seq = snapshot["seq"].as_u64().expect("a number");

    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET /api/events?run={run}&after={seq} HTTP/1.1\r\nHost: {addr}\r\n{cookie}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "text/event-stream").await;

    // A change made through the API is an event on the stream, numbered
    // one past the snapshot.
    let (status, _, body) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some(&origin),
            Some(&cookie),
            r#"{"op":"settings","send_typing":null,"bell":false}"#,
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut stream, &mut seen, "\"settings\"").await;
    assert!(seen.contains(&format!("id: {}", seq + 1)), "{seen}");
    assert!(seen.contains(r#""reply":"event""#), "{seen}");

    // Another run's numbers mean nothing here: one `failed`, then the end.
    let (status, _, body) = http(
        addr,
        &format!(
            "GET /api/events?run=another&after=3 HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("events_missed"), "{body}");
    web.stop().await;
}

/// A server that keeps the page's files in `uploads`.
async fn server_keeping(uploads: &std::path::Path) -> (WebServer, Agent) {
    let agent = agent().await;
    let web = WebServer::start(
        WebOptions::loopback(Some(uploads.to_owned())),
        Serving::Client(Backend::Agent(agent.clone())),
    )
    .await
    .expect("the web window");
    (web, agent)
}

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.expect("an entry").path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_upload_is_kept_whole_or_not_at_all_and_unneeded_copies_are_swept() {
    let uploads = tempfile::tempdir().expect("a directory");
    let (web, agent) = server_keeping(uploads.path()).await;
    let addr = web.addr();
    let origin = format!("http://{addr}");
    let session = signed_in(&web).await;

    // Whole: kept under its own name, in a directory of its own.
    let upload = |name: &str, length: usize, body: &str| {
        format!(
            "POST /api/upload?name={name} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n{session}Connection: close\r\nContent-Length: {length}\r\n\r\n{body}"
        )
    };
    let (status, _, body) = http(addr, &upload("notes.txt", 5, "hello")).await;
    assert_eq!(status, 200, "{body}");
    let kept: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let path = std::path::PathBuf::from(kept["path"].as_str().expect("a path"));
    assert_eq!(std::fs::read(&path).expect("the copy"), b"hello");
    assert!(path.starts_with(uploads.path()), "{path:?}");
    assert_eq!(kept["size"], 5);

    // A name with a path in it keeps only its last part; none at all is refused.
    let (status, _, body) = http(addr, &upload("..", 1, "x")).await;
    assert_eq!(status, 400, "{body}");

    // Broken off in the middle: nothing is left of it.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = upload("partial.bin", 1_000_000, "");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&[7u8; 10_000]).await.expect("write");
    // Its directory is made once the request is taken in; then the page
    // goes away in the middle.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while entries(uploads.path()).len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never started: {:?}",
            entries(uploads.path())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(stream);
    while entries(uploads.path()).len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken upload's directory stays: {:?}",
            entries(uploads.path())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Announced larger than allowed: refused before a byte is kept.
    let too_big = format!(
        "POST /api/upload?name=huge.bin HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n{session}Connection: close\r\nContent-Length: {}\r\n\r\n",
        upload::MAX_UPLOAD + 1
    );
    let (status, _, body) = http(addr, &too_big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(entries(uploads.path()).len(), 1);

    // Offered: the sweep keeps it while the offer may be fetched; a copy
    // no offer names is removed.
    let offer = serde_json::json!({
        "op": "file_send",
        "id": "abababababababababababababababab",
        "to": "bob",
        "path": path,
    });
    let (status, _, body) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some(&origin),
            Some(&session),
            &offer.to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reply\":\"sent\""), "{body}");
    let (status, _, _) = http(addr, &upload("orphan.txt", 3, "abc")).await;
    assert_eq!(status, 200);
    assert_eq!(entries(uploads.path()).len(), 2);
    web.stop().await;
    sweep_uploads(&Backend::Agent(agent), uploads.path()).await;
    let left = entries(uploads.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        path.starts_with(&left[0]),
        "the offered copy stays: {left:?}"
    );
}
