//! `GET /metrics`: Prometheus counters of requests, their latencies, ingested records,
//! identifier lookups (and those refused by the lookup budget), the profile projection's lag and
//! the analyses run and refused.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::HttpResponse;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use super::AppState;
use crate::analytics::AnalyticsGate;
use crate::ingest::IngestReport;

/// The server's metrics, in a registry of their own (several servers may run in one process).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    records: IntCounterVec,
    lookups: IntCounterVec,
    lookups_refused: IntCounterVec,
    lag_events: IntGauge,
    lag_seconds: IntGauge,
    /// The gate whose counts the analytics metrics show.
    gate: AnalyticsGate,
    analytics_running: IntGauge,
    analytics_running_max: IntGauge,
    analytics_runs: IntCounter,
    analytics_busy: IntCounter,
}

impl Metrics {
    /// Registers the metrics, those of analytics read from `gate`.
    pub fn new(gate: AnalyticsGate) -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new_custom(Some("patron".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency, seconds",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["route"],
        )?;
        let records = IntCounterVec::new(
            Opts::new(
                "ingested_records_total",
                "Touchpoint records ingested, by outcome (accepted, duplicate, rejected)",
            ),
            &["outcome"],
        )?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "identifier_lookups_total",
                "customerByIdentifier lookups asked for, by the key's role (refused ones too)",
            ),
            &["role"],
        )?;
        let lookups_refused = IntCounterVec::new(
            Opts::new(
                "identifier_lookups_refused_total",
                "customerByIdentifier lookups refused because the key's lookup budget was spent, \
                 by the key's role",
            ),
            &["role"],
        )?;
        let lag_events = IntGauge::new(
            "projection_lag_events",
            "Events stored but not yet in the profiles (at the last scrape)",
        )?;
        let lag_seconds = IntGauge::new(
            "projection_lag_seconds",
            "Age of the oldest event not yet in the profiles, seconds (at the last scrape)",
        )?;
        let analytics_running =
            IntGauge::new("analytics_running", "Analyses running (at the last scrape)")?;
        let analytics_running_max = IntGauge::new(
            "analytics_running_max",
            "The most analyses that ran at once since the start",
        )?;
        let analytics_runs = IntCounter::new("analytics_runs_total", "Analyses let run")?;
        let analytics_busy = IntCounter::new(
            "analytics_busy_total",
            "Analyses refused with BUSY: no turn was free within analytics_wait_ms",
        )?;
        registry.register(Box::new(analytics_running.clone()))?;
        registry.register(Box::new(analytics_running_max.clone()))?;
        registry.register(Box::new(analytics_runs.clone()))?;
        registry.register(Box::new(analytics_busy.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(lookups_refused.clone()))?;
        registry.register(Box::new(lag_events.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        Ok(Arc::new(Self {
            registry,
            requests,
            latency,
            records,
            lookups,
            lookups_refused,
            lag_events,
            lag_seconds,
            gate,
            analytics_running,
            analytics_running_max,
            analytics_runs,
            analytics_busy,
        }))
    }

    /// Brings the analytics metrics to the gate's counts.
    fn observe_analytics(&self) {
        let stats = self.gate.stats();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.analytics_running.set(gauge(stats.running));
        self.analytics_running_max.set(gauge(stats.peak));
        for (counter, total) in [
            (&self.analytics_runs, stats.runs),
            (&self.analytics_busy, stats.busy),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Counts an ingestion report's records.
    pub fn count_ingested(&self, report: &IngestReport) {
        for (outcome, n) in [
            ("accepted", report.accepted),
            ("duplicate", report.duplicates),
            ("rejected", report.rejected),
        ] {
            self.records.with_label_values(&[outcome]).inc_by(n as u64);
        }
    }

    /// Counts an identifier lookup by a key of `role`, and whether the budget refused it.
    pub fn count_lookup(&self, role: &str, refused: bool) {
        self.lookups.with_label_values(&[role]).inc();
        if refused {
            self.lookups_refused.with_label_values(&[role]).inc();
        }
    }
}

/// Counts and times every request, by its route pattern (not its path: ids stay out of the
/// labels).
pub(crate) async fn track(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = request
        .app_data::<Data<AppState>>()
        .map(|s| s.metrics.clone());
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.call(request).await?;
    if let Some(metrics) = metrics {
        metrics
            .requests
            .with_label_values(&[route.as_str(), response.status().as_str()])
            .inc();
        metrics
            .latency
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// `GET /metrics`, in the Prometheus text format.
pub(crate) async fn metrics(state: Data<AppState>) -> HttpResponse {
    match state.projection.lag().await {
        Ok(lag) => {
            state.metrics.lag_events.set(lag.events as i64);
            state.metrics.lag_seconds.set(lag.seconds);
        }
        Err(e) => tracing::warn!(error = %e, "projection lag not measured"),
    }
    state.metrics.observe_analytics();
    let mut text = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&state.metrics.registry.gather(), &mut text) {
        return HttpResponse::InternalServerError().body(format!("metrics not encoded: {e}"));
    }
    HttpResponse::Ok()
        .content_type(encoder.format_type())
        .body(text)
}
