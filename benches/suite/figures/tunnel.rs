//! Tunnels between two real `messenger` processes: bob's `connect`
//! carries TCP connections to a server on alice's side, against the same
//! server reached directly. Round trip, connection setup and throughput.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Bytes of one round trip's ping.
const PING: usize = 64;

/// An echo server on 127.0.0.1: every connection gets back what it sends.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, task)
}

/// A sink on 127.0.0.1: reads a connection to its end, then answers the
/// count of bytes it read (8 bytes, big-endian).
async fn sink_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n as u64,
                    }
                }
                let _ = socket.write_all(&got.to_be_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// Round trips of a 64-byte ping on one connection to `addr`.
async fn round_trips(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let ping = [0x42u8; PING];
    let mut pong = [0u8; PING];
    // The first one opens the tunnel; not counted.
    socket.write_all(&ping).await.expect("write");
    socket.read_exact(&mut pong).await.expect("read");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        socket.write_all(&ping).await.expect("write");
        socket.read_exact(&mut pong).await.expect("read");
        samples.push(started.elapsed());
    }
    samples
}

/// Connecting to `addr` and getting a first byte back, `n` times.
async fn setups(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        socket.write_all(b"x").await.expect("write");
        let mut back = [0u8; 1];
        socket.read_exact(&mut back).await.expect("read");
        samples.push(started.elapsed());
    }
    samples
}

/// Bytes per second of `size` bytes sent to the sink at `addr`, counted
/// until the sink confirmed it got them all.
async fn throughput(addr: SocketAddr, size: u64) -> f64 {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    while sent < size {
        let n = chunk.len().min((size - sent) as usize);
        socket.write_all(&chunk[..n]).await.expect("write");
        sent += n as u64;
    }
    socket.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    socket
        .read_exact(&mut count)
        .await
        .expect("the sink's count");
    assert_eq!(u64::from_be_bytes(count), size, "the sink got every byte");
    size as f64 / started.elapsed().as_secs_f64()
}

/// `messenger connect alice PORT` as bob, once it listens: its address.
fn connect(homes: &Homes, port: u16) -> (UserProc, SocketAddr) {
    let proc = homes.spawn("bob", &["--json", "connect", "alice", &port.to_string()]);
    let line = proc.expect("connect listening", |l| {
        l.contains("\"event\":\"listening\"")
    });
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let addr = v["addr"].as_str().expect("addr").parse().expect("address");
    (proc, addr)
}

/// What one path measured.
struct Measured {
    round_trip: (Duration, Duration),
    setup: Duration,
    rate: f64,
}

async fn measure(sizes: &Sizes, echo: SocketAddr, sink: SocketAddr) -> Measured {
    let round_trip = percentiles(round_trips(echo, sizes.tunnel_round_trips).await);
    let (setup, _) = percentiles(setups(echo, sizes.tunnel_setups).await);
    let rate = throughput(sink, sizes.tunnel_bytes).await;
    Measured {
        round_trip,
        setup,
        rate,
    }
}

/// Tunnel figures: through bob's running client (the usual way: `online`
/// runs, `connect` goes through its control socket) and through a
/// `connect` that runs its own client, each against the same server
/// reached directly.
pub async fn tunnels(sizes: &Sizes, messenger_bin: &std::path::Path) -> Vec<Figure> {
    if sizes.tunnel_bytes == 0 {
        return Vec::new();
    }
    let (node, dir) = start_node().await;
    let homes = Homes {
        bin: messenger_bin.to_owned(),
        dir: dir.path().to_owned(),
        node: node.listen_addrs()[0].clone(),
    };
    homes.run("alice", &["register", "alice"]);
    homes.run("bob", &["register", "bob"]);
    homes.run("alice", &["contacts", "add", "bob"]);
    let (echo, echo_task) = echo_server().await;
    let (sink, sink_task) = sink_server().await;
    let alice = homes.online("alice");
    for port in [echo.port(), sink.port()] {
        homes.run("alice", &["invite", "bob", "--port", &port.to_string()]);
    }
    let direct = measure(sizes, echo, sink).await;

    let bob = homes.online("bob");
    let (echo_tunnel, local_echo) = connect(&homes, echo.port());
    let (sink_tunnel, local_sink) = connect(&homes, sink.port());
    let via_running = measure(sizes, local_echo, local_sink).await;
    drop(echo_tunnel);
    drop(sink_tunnel);
    drop(bob);

    // No running client on bob's home: `connect` runs its own.
    let (echo_tunnel, local_echo) = connect(&homes, echo.port());
    let (sink_tunnel, local_sink) = connect(&homes, sink.port());
    let standalone_echo = percentiles(round_trips(local_echo, sizes.tunnel_round_trips).await);
    let standalone_rate = throughput(local_sink, sizes.tunnel_bytes).await;
    drop(echo_tunnel);
    drop(sink_tunnel);

    drop(alice);
    echo_task.abort();
    sink_task.abort();
    node.shutdown().await;
    // What the tunnel rides on: one libp2p stream between two swarms.
    let bare = libp2p_stream_rate(sizes.tunnel_bytes).await;
    let mib = |r: f64| r / (1 << 20) as f64;
    let label = format!("{} MiB", sizes.tunnel_bytes >> 20);
    vec![
        time_figure(
            "tunnel round trip (64 B), median",
            via_running.round_trip.0,
            direct.round_trip.0,
            "direct TCP to the same server",
            None,
        ),
        time_figure(
            "tunnel round trip (64 B), p99",
            via_running.round_trip.1,
            direct.round_trip.1,
            "direct TCP to the same server",
            None,
        ),
        time_figure(
            "tunnel round trip, connect's own client, median",
            standalone_echo.0,
            direct.round_trip.0,
            "direct TCP to the same server",
            None,
        ),
        time_figure(
            "tunnel connection + first byte, median",
            via_running.setup,
            direct.setup,
            "direct TCP to the same server",
            None,
        ),
        rate_figure(
            &format!("tunnel throughput {label}, MiB"),
            mib(via_running.rate),
            mib(direct.rate),
            "direct TCP to the same server",
            None,
        ),
        rate_figure(
            &format!("tunnel throughput {label} vs libp2p, MiB"),
            mib(via_running.rate),
            mib(bare),
            "bare libp2p stream, same connection kind",
            // Two copies on each side and the two processes' hops; the
            // measurement gives 0.79×. What matters on a real link: see
            // docs/benchmarks.md.
            Some(0.5),
        ),
        rate_figure(
            &format!("tunnel throughput {label}, connect's own client, MiB"),
            mib(standalone_rate),
            mib(direct.rate),
            "direct TCP to the same server",
            None,
        ),
    ]
}
