//! Directory sessions in process: the node's session handler against raw
//! frames over a real stream (an in-process node on loopback), and the
//! client's session against a scripted node on the other end of an
//! in-memory pipe, on tokio's paused clock.

#![allow(clippy::unwrap_used)]

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use messenger::directory::{DirectoryError, DirectorySession};
use messenger::proto::codec;
use messenger::proto::directory::{
    self, ErrorCode, MAX_FRAME, Op, PUSH_ID, Reply, Request, Resolution, Response,
};
use messenger::proto::name::ScreenName;
use messenger::proto::presence::Presence;
use messenger::testing::{Key, TestNode};
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt;

// ---- the node's session handler ----

async fn raw_stream(key: &Key, node: PeerId) -> libp2p::Stream {
    key.network
        .control()
        .open_stream(node, directory::PROTOCOL)
        .await
        .unwrap()
}

/// Reads the node's frames until the stream ends; what it said.
async fn until_closed(stream: &mut libp2p::Stream) -> Vec<Response> {
    let mut said = Vec::new();
    while let Ok(Some(response)) = codec::read_frame::<_, Response>(stream, MAX_FRAME).await {
        said.push(response);
    }
    said
}

#[tokio::test]
async fn a_bad_frame_closes_its_session_with_the_reason_and_nothing_else() {
    let node = TestNode::start().await;
    let key = Key::named(&node.addr, "alice", "").await;
    let node_id = node.server.peer_id();

    // Not CBOR.
    let mut garbage = raw_stream(&key, node_id).await;
    garbage.write_all(&4u32.to_be_bytes()).await.unwrap();
    garbage.write_all(&[0xff, 0x00, 0xff, 0x00]).await.unwrap();
    garbage.flush().await.unwrap();
    let said = until_closed(&mut garbage).await;
    assert!(
        matches!(
            said.as_slice(),
            [Response {
                id: PUSH_ID,
                reply: Reply::Error {
                    code: ErrorCode::Malformed,
                    ..
                }
            }]
        ),
        "{said:?}"
    );

    // An operation this version does not know: malformed as well.
    let mut unknown = raw_stream(&key, node_id).await;
    #[derive(serde::Serialize)]
    struct Later {
        id: u64,
        op: std::collections::BTreeMap<&'static str, ()>,
    }
    let later = Later {
        id: 7,
        op: [("dance", ())].into_iter().collect(),
    };
    codec::write_frame(&mut unknown, &later, MAX_FRAME)
        .await
        .unwrap();
    let said = until_closed(&mut unknown).await;
    assert!(
        matches!(
            said.as_slice(),
            [Response {
                reply: Reply::Error {
                    code: ErrorCode::Malformed,
                    ..
                },
                ..
            }]
        ),
        "{said:?}"
    );

    // Longer than a frame may be: refused before anything is read of it.
    let mut huge = raw_stream(&key, node_id).await;
    huge.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    huge.flush().await.unwrap();
    let said = until_closed(&mut huge).await;
    assert!(
        matches!(&said[..], [Response { reply: Reply::Error { code: ErrorCode::Malformed, message }, .. }] if message.contains("16384")),
        "{said:?}"
    );

    // The connection, the other session and the node are all still there.
    let me = key.session.resolve("alice").await.unwrap();
    assert_eq!(me.owner, key.id.peer_id());
    assert_eq!(node.server.registry().online_count(), 1);
    node.stop().await;
}

#[tokio::test]
async fn requests_are_answered_by_id_in_any_order_and_a_session_only_speaks_for_its_peer() {
    let node = TestNode::start().await;
    let alice = Key::named(&node.addr, "alice", "here").await;
    let mallory = Key::new(&node.addr).await;
    let node_id = node.server.peer_id();

    // Several requests written at once on one stream: one answer each,
    // under its own id.
    let mut stream = raw_stream(&mallory, node_id).await;
    for (id, name) in [(11u64, "alice"), (12, "nobody"), (13, "Bad Name!")] {
        let request = Request {
            id,
            op: Op::Resolve {
                name: name.into(),
                sender_check: false,
            },
        };
        codec::write_frame(&mut stream, &request, MAX_FRAME)
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response: Response = codec::read_frame(&mut stream, MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        answers.push(response);
    }
    answers.sort_by_key(|r| r.id);
    assert!(
        matches!(&answers[0].reply, Reply::Resolved(r) if r.owner == alice.id.peer_id() && r.status_text == "here")
    );
    assert!(matches!(
        &answers[1].reply,
        Reply::Error {
            code: ErrorCode::NoSuchName,
            ..
        }
    ));
    assert!(matches!(
        &answers[2].reply,
        Reply::Error {
            code: ErrorCode::InvalidName,
            ..
        }
    ));

    // alice's own record, replayed by mallory on mallory's connection.
    let record = messenger::testing::record(&alice.id, "alice", u64::MAX / 2).sign(&alice.id);
    let replayed = mallory.session.register(record, vec![]).await;
    assert!(
        matches!(
            replayed,
            Err(DirectoryError::Refused {
                code: ErrorCode::WrongPeer,
                ..
            })
        ),
        "{replayed:?}"
    );
    node.stop().await;
}

// ---- the client's directory session ----

/// The node's end of an in-memory pipe: reads the client's requests and
/// answers as the test says.
struct ScriptedNode {
    stream: tokio_util::compat::Compat<tokio::io::DuplexStream>,
}

impl ScriptedNode {
    async fn request(&mut self) -> Request {
        codec::read_frame(&mut self.stream, MAX_FRAME)
            .await
            .unwrap()
            .unwrap()
    }

    async fn answer(&mut self, id: u64, reply: Reply) {
        codec::write_frame(&mut self.stream, &Response { id, reply }, MAX_FRAME)
            .await
            .unwrap();
    }
}

fn session() -> (DirectorySession, ScriptedNode, mpsc::Receiver<Resolution>) {
    let (client, node) = tokio::io::duplex(64 * 1024);
    let (pushes, pushed) = mpsc::channel(8);
    // The pipe has no connection under it to lose: only its end counts.
    let session = DirectorySession::over_stream(
        PeerId::random(),
        client.compat(),
        Some(pushes),
        std::future::pending(),
    );
    (
        session,
        ScriptedNode {
            stream: node.compat(),
        },
        pushed,
    )
}

fn resolution(name: &str) -> Resolution {
    Resolution {
        name: ScreenName::parse(name).unwrap(),
        owner: PeerId::random(),
        presence: Presence::Online,
        status_text: String::new(),
        last_seen: None,
        record: None,
    }
}

#[tokio::test(start_paused = true)]
async fn answers_find_their_requests_by_id_and_pushes_go_to_the_watcher() {
    let (session, mut node, mut pushed) = session();
    let asking_alice = tokio::spawn({
        let session = session.clone();
        async move { session.resolve("alice").await }
    });
    let first = node.request().await;
    let asking_bob = tokio::spawn({
        let session = session.clone();
        async move { session.resolve("bob").await }
    });
    let second = node.request().await;
    assert_ne!(first.id, second.id);
    assert_ne!(first.id, PUSH_ID, "0 is for pushes");

    // A push between the two answers, then the answers the other way round.
    node.answer(PUSH_ID, Reply::Presence(resolution("carol")))
        .await;
    node.answer(second.id, Reply::Resolved(resolution("bob")))
        .await;
    node.answer(first.id, Reply::Resolved(resolution("alice")))
        .await;
    assert_eq!(asking_bob.await.unwrap().unwrap().name.as_str(), "bob");
    assert_eq!(asking_alice.await.unwrap().unwrap().name.as_str(), "alice");
    assert_eq!(pushed.recv().await.unwrap().name.as_str(), "carol");

    // An answer for another name than the one asked is not taken.
    let asking = tokio::spawn({
        let session = session.clone();
        async move { session.resolve("dave").await }
    });
    let request = node.request().await;
    node.answer(request.id, Reply::Resolved(resolution("eve")))
        .await;
    assert!(matches!(
        asking.await.unwrap(),
        Err(DirectoryError::Unexpected)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_goes_fails_what_waits_and_what_comes_after() {
    let (session, mut node, _pushed) = session();
    let waiting = tokio::spawn({
        let session = session.clone();
        async move { session.resolve("alice").await }
    });
    let _ = node.request().await;
    drop(node);
    assert!(
        waiting.await.unwrap().is_err(),
        "the node went without answering"
    );
    session.closed().await;
    assert!(session.is_closed());
    assert!(session.resolve("alice").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_answer_ends_the_session() {
    let (session, mut node, _pushed) = session();
    let waiting = tokio::spawn({
        let session = session.clone();
        async move { session.resolve("alice").await }
    });
    let _ = node.request().await;
    node.stream.write_all(&3u32.to_be_bytes()).await.unwrap();
    node.stream.write_all(b"\xff\xff\xff").await.unwrap();
    node.stream.flush().await.unwrap();
    assert!(waiting.await.unwrap().is_err());
    session.closed().await;
    // The node's side sees the session go.
    let mut rest = Vec::new();
    let _ = node.stream.read_to_end(&mut rest).await;
}
