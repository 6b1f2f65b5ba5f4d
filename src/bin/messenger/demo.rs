//! `messenger demo`: the whole path on loopback, in one process.
//!
//! A rendezvous node and two users with temporary homes, going through the
//! same [`Agent`] requests as the real commands: register, go online,
//! resolve, dial, store, deliver, acknowledge, both ways. (Only this front
//! end depends on the node's crate, to embed a node.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use libp2p::Multiaddr;
use messenger_proto::name::ScreenName;
use serde_json::json;
use tokio::sync::mpsc;

use messenger::agent::{Agent, AgentConfig};
use messenger::api::{Event, SendOutcome};
use messenger::home::Home;
use messenger::store::StoredMessage;

use crate::output::Output;

struct User {
    name: ScreenName,
    agent: Agent,
    events: mpsc::Receiver<Event>,
}

/// Runs the demo, printing a transcript with measured times.
pub(crate) async fn run(out: &Output) -> Result<()> {
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
        format!(
            "rendezvous node  {node_addr}  (started in {})",
            ms(started.elapsed())
        ),
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
        let outcome = from
            .agent
            .send(to.name.as_str(), text)
            .await
            .map_err(|e| anyhow!("{} could not send to {}: {e}", from.name, to.name))?;
        let SendOutcome::Delivered {
            message,
            resolve_ms,
            dial_ms,
            deliver_ms,
            ..
        } = outcome
        else {
            bail!("{} -> {}: not delivered: {outcome:?}", from.name, to.name);
        };
        let received = next_message(&mut to.events).await?;
        if received.message.id != message.message.id || received.message.text != text {
            bail!(
                "{} received something else than {} sent",
                to.name,
                from.name
            );
        }
        let total = resolve_ms + dial_ms + deliver_ms;
        out.emit(
            format!(
                "[{}] {} -> {}: {text}\n           resolve {resolve_ms:.2} ms + dial {dial_ms:.2} ms + deliver and acknowledge {deliver_ms:.2} ms = {total:.2} ms\n           {} verified the signature and that {} owns the sending key, stored it, then acknowledged",
                messenger::time::clock(message.message.sent_at),
                from.name,
                to.name,
                to.name,
                from.name,
            ),
            json!({"event": "exchange", "from": from.name.to_string(), "to": to.name.to_string(), "text": text,
                   "id": message.message.id.to_string(), "resolve_ms": resolve_ms, "dial_ms": dial_ms,
                   "deliver_ms": deliver_ms, "total_ms": total}),
        );
    }

    alice.agent.shutdown().await;
    bob.agent.shutdown().await;
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
    let name = ScreenName::parse(name)?;
    let config = AgentConfig::for_home(home, vec![node.clone()])?;
    let (agent, mut events) = Agent::start(config).await?;
    let started = Instant::now();
    agent.register(name.as_str()).await?;
    let registered = started.elapsed();
    agent
        .go_online(vec!["/ip4/127.0.0.1/tcp/0".parse()?])
        .await?;
    let online = async {
        while let Some(event) = events.recv().await {
            if let Event::Online { .. } = event {
                return Ok(());
            }
        }
        bail!("{name} did not come online")
    };
    tokio::time::timeout(Duration::from_secs(10), online)
        .await
        .context("not online within 10 s")??;
    out.emit(
        format!(
            "{:<6} {}  connected to the node and registered in {}, online in {}",
            name.as_str(),
            agent.peer_id(),
            ms(registered),
            ms(started.elapsed() - registered)
        ),
        json!({"event": "user_online", "name": name.to_string(), "peer_id": agent.peer_id().to_string(),
               "register_ms": millis(registered), "online_ms": millis(started.elapsed() - registered)}),
    );
    Ok(User {
        name,
        agent,
        events,
    })
}

async fn next_message(events: &mut mpsc::Receiver<Event>) -> Result<StoredMessage> {
    let wait = async {
        while let Some(event) = events.recv().await {
            if let Event::Message { message, .. } = event {
                return Some(message);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .context("no message arrived within 10 s")?
        .context("the client stopped")
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", millis(d))
}
