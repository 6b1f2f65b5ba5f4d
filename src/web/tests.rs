//! The doors of point 4, knocked on with plain HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::agent::{Agent, AgentConfig};

/// An agent of its own, its store in memory (the node is never asked).
async fn agent() -> Agent {
    let identity = messenger_proto::Identity::generate().expect("a key");
    let node = "/ip4/127.0.0.1/tcp/9".parse().expect("an address");
    let config = AgentConfig::ephemeral(identity, node).expect("an agent's config");
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
    cookie: Option<&str>,
    body: &str,
) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
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
    let (status, head, _) = http(addr, &post(addr, "/session", Some(&origin), None, &offer)).await;
    assert_eq!(status, 204, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("httponly") && lower.contains("samesite=strict"),
        "{head}"
    );
    let cookie = session_cookie(&head).expect("a session cookie");

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

/// A session's cookie, bought with the server's token.
async fn signed_in(web: &WebServer) -> String {
    let addr = web.addr();
    let url = web.url();
    let token = url.split_once('#').map(|(_, t)| t).expect("a token");
    let offer = format!(r#"{{"token":"{token}"}}"#);
    let origin = format!("http://{addr}");
    let (status, head, _) = http(addr, &post(addr, "/session", Some(&origin), None, &offer)).await;
    assert_eq!(status, 204, "{head}");
    session_cookie(&head).expect("a cookie")
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
    let request = format!(
        "GET /api/events?run={run}&after={seq} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"
    );
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
            "GET /api/events?run=another&after=3 HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("events_missed"), "{body}");
    web.stop().await;
}
