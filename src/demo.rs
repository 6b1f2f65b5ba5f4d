//! `messenger demo`: the whole path on loopback, in one process.
//!
//! A rendezvous node and two users with temporary homes, going through the
//! same [`Client`] calls as the real commands: register, go online, resolve,
//! dial, deliver, acknowledge, both ways.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use messenger_proto::name::ScreenName;
use serde_json::json;
use tokio::sync::mpsc;

use crate::cli::Output;
use crate::client::{Client, ClientEvent, SendReport};
use crate::home::Home;

struct User {
    name: ScreenName,
    client: Client,
    events: mpsc::Receiver<ClientEvent>,
}

/// Runs the demo, printing a transcript with measured times.
pub async fn run(out: &Output) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    out.emit(
        "messenger demo: a rendezvous node and two users on 127.0.0.1, in one process\n",
        json!({"event": "demo_started"}),
    );

    let started = Instant::now();
    let mut config = rendezvous::Config::new(tmp.path().join("rendezvous"));
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    let node = rendezvous::Server::bind(config)
        .await
        .context("cannot start the rendezvous node")?;
    let node_addr = node
        .listen_addrs()
        .first()
        .cloned()
        .context("the node has no address")?;
    out.emit(
        format!("rendezvous node  {node_addr}  (started in {})", ms(started.elapsed())),
        json!({"event": "node", "addr": node_addr.to_string(), "start_ms": millis(started.elapsed())}),
    );

    let mut alice = start_user(out, &tmp, "alice", &node_addr).await?;
    let mut bob = start_user(out, &tmp, "bob", &node_addr).await?;
    out.emit("", json!({"event": "users_online"}));

    let conversation = [
        (true, "Hi Bob! Found you by name alone."),
        (false, "Hi Alice. And the node never saw this text."),
        (true, "Second message: the stream is already open."),
        (false, "Same here: no resolve, no dial."),
    ];
    for (alice_speaks, text) in conversation {
        let (from, to) = if alice_speaks {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let report = from
            .client
            .send(to.name.as_str(), text)
            .await
            .with_context(|| format!("{} could not send to {}", from.name, to.name))?;
        let received = next_message(&mut to.events).await?;
        if received.message.id != report.id || received.message.text != text {
            bail!(
                "{} received something else than {} sent",
                to.name,
                from.name
            );
        }
        show_exchange(out, &from.name, &to.name, text, &report, received.peer);
    }

    alice.client.shutdown().await;
    bob.client.shutdown().await;
    node.shutdown().await;
    out.emit(
        "\nAll messages were acknowledged by their recipient. Try it across machines: see README.md.",
        json!({"event": "demo_finished"}),
    );
    Ok(())
}

async fn start_user(
    out: &Output,
    tmp: &tempfile::TempDir,
    name: &str,
    node: &Multiaddr,
) -> Result<User> {
    let home = Home::open(&tmp.path().join(name))?;
    let identity = home.identity()?;
    let name = ScreenName::parse(name)?;
    let started = Instant::now();
    let client = Client::connect(identity, node.clone(), None).await?;
    let connected = started.elapsed();
    let mut events = client
        .go_online(name.clone(), vec!["/ip4/127.0.0.1/tcp/0".parse()?])
        .await?;
    match events.recv().await {
        Some(ClientEvent::Online { .. }) => {}
        other => bail!("{name} did not come online: {other:?}"),
    }
    out.emit(
        format!(
            "{:<6} {}  connected to the node in {}, registered and online in {}",
            name.as_str(),
            client.peer_id(),
            ms(connected),
            ms(started.elapsed() - connected)
        ),
        json!({"event": "user_online", "name": name.to_string(), "peer_id": client.peer_id().to_string(),
               "connect_ms": millis(connected), "register_ms": millis(started.elapsed() - connected)}),
    );
    Ok(User {
        name,
        client,
        events,
    })
}

async fn next_message(
    events: &mut mpsc::Receiver<ClientEvent>,
) -> Result<crate::chat::IncomingMessage> {
    let wait = async {
        while let Some(event) = events.recv().await {
            if let ClientEvent::Message(m) = event {
                return Some(m);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .context("no message arrived within 10 s")?
        .context("the client stopped")
}

fn show_exchange(
    out: &Output,
    from: &ScreenName,
    to: &ScreenName,
    text: &str,
    report: &SendReport,
    sender_peer: libp2p::PeerId,
) {
    let total = report.resolve + report.dial + report.deliver;
    out.emit(
        format!(
            "[{}] {from} -> {to}: {text}\n           resolve {} + dial {} + deliver and acknowledge {} = {}\n           {to} verified the signature and that {from} is owned by {}",
            crate::time::clock(report.sent_at),
            ms(report.resolve),
            ms(report.dial),
            ms(report.deliver),
            ms(total),
            short(&sender_peer.to_string()),
        ),
        json!({"event": "exchange", "from": from.to_string(), "to": to.to_string(), "text": text,
               "id": report.id.to_string(), "resolve_ms": millis(report.resolve), "dial_ms": millis(report.dial),
               "deliver_ms": millis(report.deliver), "total_ms": millis(total)}),
    );
}

fn short(peer: &str) -> String {
    let tail = peer.len().saturating_sub(6);
    format!("{}…{}", &peer[..12.min(peer.len())], &peer[tail..])
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", millis(d))
}
