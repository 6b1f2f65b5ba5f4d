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
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free one). Binding here, before
    /// anything else starts, makes a taken port an error at start.
    pub async fn bind(addr: SocketAddr, registry: Arc<Registry>) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError { addr, source })?;
        Ok(Self { listener, registry })
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
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            let registry = registry.clone();
                            async move { Ok::<_, Infallible>(answer(&request, &registry)) }
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

fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
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
