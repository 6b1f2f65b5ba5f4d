//! The directory as a cluster: 1, 2 and 3 nodes on one PostgreSQL and one
//! NATS (private servers, started as the cluster tests start them), against
//! libp2p's rendezvous server in the same run; and how fast a presence
//! change on one node reaches a watcher on another, against a watcher on
//! the same node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger::proto::presence::{Presence, Status};
use tokio::sync::mpsc;

use super::{
    Bare, Figure, Sizes, bench_config, libp2p_rendezvous, ops_per_second, percentiles,
    push_showing, rate_figure, time_figure,
};

use messenger::testing::servers::{self, Nats, Postgres};

/// Every figure of the group, or none (said loudly) without the servers.
pub async fn cluster(sizes: &Sizes) -> Vec<Figure> {
    let Some((pg, nats)) = servers::postgres_and_nats() else {
        return Vec::new();
    };
    let key = tempfile::tempdir().expect("tempdir");
    let key = key.path().join("certificates.key");
    let (base_reg, base_res) = libp2p_rendezvous(sizes).await;
    let mut figures = Vec::new();
    for n in 1..=3 {
        let cluster = Cluster::start(&pg, &nats, &key, n).await;
        let (reg, res) = cluster.directory(sizes).await;
        cluster.shutdown().await;
        let nodes = if n == 1 { "node" } else { "nodes" };
        figures.push(rate_figure(
            &format!("registrations, {n} {nodes} on PostgreSQL"),
            reg,
            base_reg,
            "libp2p rendezvous server",
            Some(2.0),
        ));
        figures.push(rate_figure(
            &format!("resolves, {n} {nodes} on PostgreSQL"),
            res,
            base_res,
            "libp2p rendezvous server",
            Some(2.0),
        ));
    }
    let cluster = Cluster::start(&pg, &nats, &key, 2).await;
    let (across, same) = cluster.presence_latency(sizes.presence_changes).await;
    cluster.shutdown().await;
    let (am, ap) = percentiles(across);
    let (sm, sp) = percentiles(same);
    figures.push(time_figure(
        "presence change to a watcher on another node, median",
        am,
        sm,
        "a watcher on the same node",
        None,
    ));
    figures.push(time_figure(
        "presence change to a watcher on another node, p99",
        ap,
        sp,
        "a watcher on the same node",
        None,
    ));
    figures
}

/// Nodes in this process, sharing a fresh database.
struct Cluster {
    nodes: Vec<(rendezvous::Server, tempfile::TempDir)>,
}

impl Cluster {
    async fn start(pg: &Postgres, nats: &Nats, key: &std::path::Path, n: usize) -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let database = format!("bench_{run}_{n}_nodes");
        pg.sql(&format!("CREATE DATABASE {database}"));
        let store = format!("postgres://postgres@127.0.0.1:{}/{database}", pg.port);
        let mut nodes = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = bench_config(dir.path());
            config.store = Some(store.clone());
            config.presence = Some(nats.url());
            config.certificate_key = Some(key.to_owned());
            let node = rendezvous::Server::bind(config)
                .await
                .expect("a cluster node starts");
            nodes.push((node, dir));
        }
        Self { nodes }
    }

    fn addr(&self, i: usize) -> libp2p::Multiaddr {
        let node = &self.nodes[i % self.nodes.len()].0;
        node.listen_addrs()[0].clone()
    }

    /// Registrations of new names, then resolves of names held on the
    /// next client's node, per second; clients spread over the nodes.
    async fn directory(&self, sizes: &Sizes) -> (f64, f64) {
        let mut clients = Vec::new();
        for c in 0..sizes.directory_clients {
            clients.push(Arc::new(Bare::connect(&self.addr(c), None).await));
        }
        let ops = sizes.directory_ops_per_client;
        let reg = ops_per_second(&clients, ops, |client, c, i| async move {
            client.register(&format!("c{c}n{i}"), Status::Online).await;
        })
        .await;
        let count = clients.len();
        let res = ops_per_second(&clients, ops, move |client, c, i| async move {
            let info = client.whois(&format!("c{}n{i}", (c + 1) % count)).await;
            assert!(info.is_some_and(|i| i.online()), "resolved across nodes");
        })
        .await;
        (reg, res)
    }

    /// `changes` status changes of a user on node 0: how long each took to
    /// reach a watcher on node 1, and one on node 0.
    async fn presence_latency(&self, changes: usize) -> (Vec<Duration>, Vec<Duration>) {
        let user = Bare::connect(&self.addr(0), None).await;
        user.register("mover", Status::Online).await;
        let (far_tx, mut far) = mpsc::channel(1024);
        let (near_tx, mut near) = mpsc::channel(1024);
        let far_watcher = Bare::connect(&self.addr(1), Some(far_tx)).await;
        let near_watcher = Bare::connect(&self.addr(0), Some(near_tx)).await;
        for watcher in [&far_watcher, &near_watcher] {
            watcher
                .session
                .watch(vec!["mover".into()])
                .await
                .expect("watch");
        }
        let (mut across, mut same) = (Vec::new(), Vec::new());
        for i in 0..changes {
            let (status, presence) = if i % 2 == 0 {
                (Status::Away, Presence::Away)
            } else {
                (Status::Online, Presence::Online)
            };
            let started = Instant::now();
            user.register("mover", status).await;
            push_showing(&mut near, "mover", presence).await;
            same.push(started.elapsed());
            push_showing(&mut far, "mover", presence).await;
            across.push(started.elapsed());
        }
        (across, same)
    }

    async fn shutdown(self) {
        for (node, _dir) in self.nodes {
            node.shutdown().await;
        }
    }
}
