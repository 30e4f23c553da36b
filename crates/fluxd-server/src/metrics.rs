//! Prometheus metrics: a process-wide recorder, an HTTP middleware that counts and times every
//! request by route, and the `/metrics` text. Names carry the `fluxd_` prefix; durations are
//! `_seconds` histograms.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets (seconds) for HTTP handling: sub-millisecond to seconds.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Histogram buckets (seconds) for whole generations: a tiny model to 50 steps of FLUX.1 at 1440².
const GENERATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The process's recorder, installed on first use (tests build many routers in one process).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("fluxd_http_request_duration_seconds".into()),
                    HTTP_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("fluxd_generation_duration_seconds".into()),
                        GENERATION_BUCKETS,
                    )
                });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(err) => {
                    tracing::warn!(%err, "metrics recorder not installed; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts and times each request under its route pattern (never the raw path, whose ids would
/// make unbounded label values).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("fluxd_http_requests_total", &labels).increment(1);
    metrics::histogram!("fluxd_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// A finished task: its final status and, for generations, how long the engine took.
pub fn task_finished(status: &'static str, generation_seconds: Option<f64>) {
    metrics::counter!("fluxd_tasks_finished_total", "status" => status).increment(1);
    if let Some(s) = generation_seconds {
        metrics::histogram!("fluxd_generation_duration_seconds").record(s);
    }
}

/// One webhook delivery attempt: `delivered`, `retry` (failed, tried again later) or `failed`
/// (given up).
pub fn webhook_attempt(outcome: &'static str) {
    metrics::counter!("fluxd_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// The Prometheus text exposition of every metric so far.
pub fn render(store: &dyn fluxd_store::Store) -> String {
    if let Some(stats) = store.writer_stats() {
        // Their ratio is the average group commit: how many writes shared one fsync.
        metrics::counter!("fluxd_store_commits_total").absolute(stats.commits);
        metrics::counter!("fluxd_store_writes_total").absolute(stats.writes);
    }
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
