//! What both binaries show an operator: a Prometheus registry served over
//! HTTP (`GET /metrics`, the OpenMetrics text format), and the process's
//! own figures read at each scrape.
//!
//! Like [`accept`](crate::accept), this is I/O shared by the node and the
//! client, kept here so that both serve the same thing the same way. It is
//! behind the `metrics` feature so that a user of the wire types alone does
//! not build an HTTP server.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, warn};

pub use prometheus_client;

/// The content type of the OpenMetrics text format, which
/// `prometheus_client` writes and Prometheus reads.
const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes answered at once; a scraper that opens more waits its turn in
/// the kernel's accept queue instead of costing the process a task each.
const MAX_SCRAPES_AT_ONCE: usize = 8;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// A metrics endpoint that is listening; it serves until the owner's
/// future ([`MetricsServer::run`]) is dropped.
///
/// It answers only requests whose `Host` names an IP address, `localhost`
/// or a name allowed with [`MetricsServer::allow_hosts`]. A web page the
/// user opens cannot read it through DNS rebinding (its own name made to
/// resolve to 127.0.0.1: the browser then sends that name as the Host),
/// which would tell it how busy the process is and whom it talks to.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    registry: Arc<Registry>,
    allowed_hosts: Arc<Vec<String>>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free one). Binding here, before
    /// anything else starts, makes a taken port an error at start.
    pub async fn bind(addr: SocketAddr, registry: Arc<Registry>) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError { addr, source })?;
        Ok(Self {
            listener,
            registry,
            allowed_hosts: Arc::default(),
        })
    }

    /// Also answers requests whose `Host` is one of `names` (any case,
    /// without a port): the names a scraper reaches the endpoint by.
    pub fn allow_hosts(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.allowed_hosts = Arc::new(names.into_iter().map(|n| n.to_ascii_lowercase()).collect());
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers scrapes until dropped: `GET /metrics` (or `/`) gets the
    /// registry's text, anything else a 404. Each connection is served by a
    /// task this future owns, so dropping it ends them all.
    pub async fn run(self) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept(), if connections.len() < MAX_SCRAPES_AT_ONCE => {
                    let (stream, from) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors, say: the next scrape
                            // may find one free.
                            warn!("metrics endpoint: cannot accept a connection: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let registry = self.registry.clone();
                    let allowed = self.allowed_hosts.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            let registry = registry.clone();
                            let allowed = allowed.clone();
                            async move { Ok::<_, Infallible>(answer(&request, &registry, &allowed)) }
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(5))
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            debug!(%from, "metrics scrape ended: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Whether a request's `Host` header (absent: not from a browser) names
/// this endpoint in a way a DNS-rebinding page cannot.
fn host_allowed(host: Option<&HeaderValue>, allowed: &[String]) -> Result<(), String> {
    let Some(host) = host else { return Ok(()) };
    let host = host
        .to_str()
        .map_err(|_| "a Host header that is not text".to_owned())?;
    // Without the port: `[::1]:9464`, `127.0.0.1:9464`, `name:9464`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let lower = name.to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() || lower == "localhost" || allowed.contains(&lower)
    {
        Ok(())
    } else {
        Err(format!("the Host header names {name:?}"))
    }
}

fn answer(
    request: &Request<Incoming>,
    registry: &Registry,
    allowed: &[String],
) -> Response<Full<Bytes>> {
    if let Err(why) = host_allowed(request.headers().get(hyper::header::HOST), allowed) {
        debug!("metrics request refused: {why}");
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "refused: {why}, which is not an IP address, localhost or a name this \
                 endpoint was told to answer to (a page in a browser must not read it \
                 through DNS rebinding)\n"
            ),
        );
    }
    let path = request.uri().path();
    if request.method() != Method::GET || !(path == "/metrics" || path == "/") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at GET /metrics\n".into(),
        );
    }
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The process's own figures under their customary names
/// (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
/// `process_open_fds`, `process_start_time_seconds`), read at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    started: f64,
}

impl ProcessCollector {
    /// Registers the process's figures in `registry`.
    pub fn register(registry: &mut Registry) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        registry.register_collector(Box::new(Self { started }));
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(memory) = memory_stats::memory_stats() {
            let rss = ConstGauge::new(memory.physical_mem as i64);
            encode_one(
                &mut encoder,
                "process_resident_memory",
                "Resident memory of the process",
                Some(&Unit::Bytes),
                rss,
            )?;
        }
        if let Some(cpu) = cpu_time() {
            let cpu = ConstCounter::new(cpu.as_secs_f64());
            encode_one(
                &mut encoder,
                "process_cpu",
                "CPU time the process has used, user and system",
                Some(&Unit::Seconds),
                cpu,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(fds.count() as i64);
            encode_one(
                &mut encoder,
                "process_open_fds",
                "File descriptors the process has open (each connection holds at least one)",
                None,
                fds,
            )?;
        }
        let started = ConstGauge::new(self.started);
        encode_one(
            &mut encoder,
            "process_start_time",
            "When the process started, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            started,
        )
    }
}

/// Encodes one metric without labels, read at scrape time (for a
/// [`Collector`]).
pub fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> Result<(), fmt::Error> {
    let descriptor = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(descriptor)
}

/// CPU time the process has used so far.
fn cpu_time() -> Option<std::time::Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Some(std::time::Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_allowed_names_are_answered() {
        let allowed = vec!["node1.internal".to_owned()];
        let check =
            |host: &str| host_allowed(Some(&HeaderValue::from_str(host).unwrap()), &allowed);
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "[::1]",
            "10.1.2.3:80",
            "localhost:9464",
            "LOCALHOST",
            "node1.internal:9464",
            "Node1.Internal",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "evil.example:9464",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9464",
            "node1.internal.evil:9464",
        ] {
            assert!(check(refused).is_err(), "{refused}");
        }
        assert_eq!(host_allowed(None, &allowed), Ok(()), "not a browser");
    }

    #[test]
    fn process_figures_are_encoded() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name:?} missing from:\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "a running test uses more than 1 MB: {rss}");
    }
}
