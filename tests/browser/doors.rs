//! The page's doors, knocked on with plain HTTP against a real `messenger
//! web`: no cookie, another Host (DNS rebinding), another Origin (a
//! cross-site form or script), a used token.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::page::web;
use crate::support::{Node, User};

/// One request; the status and the head.
fn http(addr: &str, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the page");
    stream.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A POST; `session` is header lines (the cookie, the page's key).
fn post(addr: &str, path: &str, origin: Option<&str>, session: Option<&str>, body: &str) -> String {
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

#[test]
fn each_door_is_closed_to_what_is_not_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    alice.register("alice");
    let (_web, url) = web(&alice);
    let rest = url.trim_start_matches("http://");
    let (addr, token) = rest.split_once("/#").expect("an address and a token");
    let origin = format!("http://{addr}");
    let snapshot = r#"{"op":"snapshot"}"#;

    // The page under its own address, with its closed headers.
    let (status, head, _) = http(addr, &get(addr, "/"));
    assert_eq!(status, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-frame-options: deny"));
    assert!(head.contains("referrer-policy: no-referrer"));
    assert!(!head.contains("access-control-allow-origin"), "no CORS");

    // Another Host: a site that rebinds its name to 127.0.0.1.
    let port = addr.rsplit(':').next().unwrap();
    let rebound = format!("attacker.example:{port}");
    let (status, _, body) = http(addr, &get(&rebound, "/"));
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = http(addr, &get(&rebound, "/api/events?run=x&after=0"));
    assert_eq!(status, 403);

    // No cookie: the API is closed.
    let (status, _, body) = http(
        addr,
        &post(addr, "/api/request", Some(&origin), None, snapshot),
    );
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = http(addr, &get(addr, "/api/events?run=x&after=0"));
    assert_eq!(status, 401);

    // A wrong token buys nothing; the right one, once, from the page.
    let wrong = r#"{"token":"00"}"#;
    let (status, _, _) = http(addr, &post(addr, "/session", Some(&origin), None, wrong));
    assert_eq!(status, 401);
    let offer = format!(r#"{{"token":"{token}"}}"#);
    let (status, _, _) = http(
        addr,
        &post(
            addr,
            "/session",
            Some("http://attacker.example"),
            None,
            &offer,
        ),
    );
    assert_eq!(
        status, 403,
        "the token is taken only from the page's origin"
    );
    let (status, head, body) = http(addr, &post(addr, "/session", Some(&origin), None, &offer));
    assert_eq!(status, 200, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie");
    assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"));
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let key: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key = key["key"].as_str().expect("the page's key").to_owned();
    let (status, _, _) = http(addr, &post(addr, "/session", Some(&origin), None, &offer));
    assert_eq!(status, 401, "the token works once");

    // The cookie alone, as a server on another port of this machine gets
    // it from the browser (cookies know no ports), is not the session.
    let cookie_alone = format!("Cookie: {cookie}\r\n");
    let (status, _, _) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some(&origin),
            Some(&cookie_alone),
            snapshot,
        ),
    );
    assert_eq!(status, 401, "the cookie without the page's key");
    let cookie = format!("Cookie: {cookie}\r\nX-Messenger-Key: {key}\r\n");

    // With the cookie: another Origin, or none, changes nothing.
    let (status, _, _) = http(
        addr,
        &post(
            addr,
            "/api/request",
            Some("http://attacker.example"),
            Some(&cookie),
            r#"{"op":"status","status":"busy","text":"pwned"}"#,
        ),
    );
    assert_eq!(status, 403);
    let (status, _, _) = http(
        addr,
        &post(
            addr,
            "/api/request",
            None,
            Some(&cookie),
            r#"{"op":"status","status":"busy","text":"pwned"}"#,
        ),
    );
    assert_eq!(status, 403);

    // The page itself is answered, and nothing above changed anything.
    let (status, _, body) = http(
        addr,
        &post(addr, "/api/request", Some(&origin), Some(&cookie), snapshot),
    );
    assert_eq!(status, 200, "{body}");
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snapshot["me"]["name"], "alice");
    assert_eq!(snapshot["me"]["status"], "online", "{snapshot}");
    assert_eq!(snapshot["me"]["text"], "");
}

#[test]
fn online_serves_the_page_when_asked_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    alice.register("alice");
    let mut online = alice.spawn(&[
        "--json",
        "online",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--web",
        "127.0.0.1:0",
    ]);
    let told = online.stdout.expect_event("web");
    let url = told["url"].as_str().expect("a url").to_owned();
    online.stdout.expect_event("online");
    let rest = url.trim_start_matches("http://");
    let (addr, _token) = rest.split_once("/#").expect("an address and a token");
    let (status, _, body) = http(addr, &get(addr, "/"));
    assert_eq!(status, 200);
    assert!(body.contains("<title>Messenger</title>"), "{body}");
    let (status, _, _) = http(addr, &get(addr, "/api/sign_in"));
    assert_eq!(status, 401);
    // Stopping `online` stops the page.
    online.signal("TERM");
    online.wait_exit();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the page is gone with its client"
    );

    // Without --web, nothing is served.
    let mut online = alice.online();
    let lines = online.stdout.drain().join("\n");
    assert!(!lines.contains("\"web\""), "{lines}");
}

#[test]
fn web_stays_until_sigterm_and_then_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    alice.register("alice");
    let (mut web, url) = web(&alice);
    let addr = url
        .trim_start_matches("http://")
        .split_once("/#")
        .expect("an address and a token")
        .0
        .to_owned();
    let (status, _, _) = http(&addr, &get(&addr, "/"));
    assert_eq!(status, 200);
    web.signal("TERM");
    assert_eq!(web.wait_exit(), Some(0), "SIGTERM ends it cleanly");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "nothing serves the page"
    );
    // Its client went with it: the home's control socket is gone.
    assert!(!alice.home.path().join("control.sock").exists());
}
