//! `--metrics ADDR` of `jobsup serve` and `jobsup run`: Prometheus text on `GET /metrics`.
//!
//! The counts are kept with `prometheus-client` and updated where the serve loop decides
//! (a result stored, a lease renewed or lost, a stale completion), or, in `run`, where the
//! pool writes a record, so that a scrape shows the same numbers as the results stream. The HTTP side is the least that Prometheus
//! needs: one request per connection, its head bounded in size and time, so that a slow
//! or hostile client costs nothing but its own connection.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::record::Record;

type Labels = Vec<(&'static str, String)>;

/// A gauge of seconds.
type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What a serve counts.
pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Counter>,
    duration: Histogram,
    /// CPU time so far, by `who`: jobsup itself, and the processes it ran
    /// ([`crate::summary::Cpu`]); read anew at each scrape.
    cpu: Family<Labels, Seconds>,
    /// Jobs on a worker now.
    pub in_flight: Gauge,
    /// Worker processes now.
    pub workers: Gauge,
    /// Leases renewed.
    pub renewals: Counter,
    /// Renewals Redis did not answer.
    pub renewal_failures: Counter,
    /// Jobs stopped because their lease was lost.
    pub leases_lost: Counter,
    /// Completions the fence refused.
    pub stale: Counter,
    /// Entries taken over from another (or an earlier) consumer.
    pub reclaimed: Counter,
}

impl Metrics {
    /// Every metric of a serve, at zero.
    pub fn new() -> Metrics {
        Metrics::with(true)
    }

    /// The metrics a `run` keeps, at zero: jobs by outcome and their durations (a run has
    /// no leases, and its workers are not counted here).
    pub fn for_run() -> Metrics {
        Metrics::with(false)
    }

    fn with(serve: bool) -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<Labels, Counter>::default();
        // 1 ms to about 9 hours.
        let duration = Histogram::new(exponential_buckets(0.001, 4.0, 16));
        let cpu = Family::<Labels, Seconds>::default();
        let m = Metrics {
            jobs: jobs.clone(),
            duration: duration.clone(),
            cpu: cpu.clone(),
            in_flight: Gauge::default(),
            workers: Gauge::default(),
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            leases_lost: Counter::default(),
            stale: Counter::default(),
            reclaimed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobsup_jobs",
            "Jobs with a stored result, by outcome and kind",
            jobs,
        );
        registry.register(
            "jobsup_job_duration_seconds",
            "How long jobs with a stored result ran",
            duration,
        );
        registry.register(
            "jobsup_cpu_seconds",
            "CPU time (user and system) so far of jobsup itself (who=supervisor) and of the processes it ran (who=processes)",
            cpu,
        );
        if !serve {
            return Metrics { registry, ..m };
        }
        registry.register(
            "jobsup_jobs_in_flight",
            "Jobs on a worker",
            m.in_flight.clone(),
        );
        registry.register("jobsup_workers", "Worker processes", m.workers.clone());
        registry.register(
            "jobsup_lease_renewals",
            "Leases renewed",
            m.renewals.clone(),
        );
        registry.register(
            "jobsup_lease_renewal_failures",
            "Lease renewals Redis did not answer",
            m.renewal_failures.clone(),
        );
        registry.register(
            "jobsup_leases_lost",
            "Jobs stopped because their lease was lost",
            m.leases_lost.clone(),
        );
        registry.register(
            "jobsup_stale_completions",
            "Completions refused by the fence: not acknowledged, nothing stored",
            m.stale.clone(),
        );
        registry.register(
            "jobsup_reclaimed",
            "Entries taken over after their lease expired",
            m.reclaimed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A result stored.
    pub fn observe(&self, record: &Record) {
        let mut labels = vec![("outcome", record.outcome.as_str().to_string())];
        if let Some(kind) = &record.kind {
            labels.push(("kind", kind.clone()));
        }
        self.jobs.get_or_create(&labels).inc();
        self.duration.observe(record.duration_ms / 1000.0);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        if let Some(cpu) = crate::summary::Cpu::used_so_far() {
            for (who, used) in [("supervisor", cpu.supervisor), ("processes", cpu.processes)] {
                self.cpu
                    .get_or_create(&vec![("who", who.to_string())])
                    .set(used.as_secs_f64());
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Binds `--metrics ADDR` for `run`, with the error in the words serve uses.
pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    Ok(listener)
}

/// Serves a run's metrics on `listener` (from [`bind`]) for as long as the runtime runs.
/// Must be called inside the runtime.
pub fn start(listener: std::net::TcpListener) -> std::io::Result<Arc<Metrics>> {
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let metrics = Arc::new(Metrics::for_run());
    tracing::info!("metrics on http://{addr}/metrics");
    tokio::spawn(serve_http(listener, Arc::clone(&metrics)));
    Ok(metrics)
}

/// Answers `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
            let mut parts = line.split(|b| *b == b' ');
            let (method, path) = (parts.next(), parts.next());
            let response = match (method, path) {
                (Some(b"GET"), Some(b"/metrics")) => {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.write_all(response.as_bytes()))
                    .await;
        });
    }
}
