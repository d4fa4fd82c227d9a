//! `patron bench lag`: how far the server's profiles fall behind the log under a steady rate of
//! HTTP ingestion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::bar;
use crate::projection::ProfileProjection;
use crate::server::Application;
use crate::store::EventStore;

/// What `patron bench lag` measured.
#[derive(Clone, Debug, Serialize)]
pub struct LagBenchReport {
    /// Records sent per second (scheduled).
    pub rate_per_s: u64,
    /// Records sent.
    pub records: u64,
    /// Records per request.
    pub batch: usize,
    /// Seconds the load ran.
    pub seconds: f64,
    /// Lag samples taken (every 100 ms).
    pub samples: usize,
    /// Median lag, milliseconds: the age of the oldest event not yet in the profiles.
    pub p50_ms: i64,
    /// 99th percentile lag, milliseconds.
    pub p99_ms: i64,
    /// Largest lag seen, milliseconds.
    pub max_ms: i64,
    /// 99th percentile latency of the ingestion requests, milliseconds.
    pub request_p99_ms: f64,
}

impl std::fmt::Display for LagBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "load:           {} records in {:.1} s at {} records/s ({} per request)",
            self.records, self.seconds, self.rate_per_s, self.batch
        )?;
        writeln!(
            f,
            "projection lag: p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.max_ms, self.samples
        )?;
        write!(f, "requests:       p99 {:.1} ms", self.request_p99_ms)
    }
}

/// Serves `store` on a free port and sends it the demo data set at `rate` records/s in
/// requests of `batch` for `seconds`, sampling the profile projection's lag every 100 ms.
pub async fn run_lag_bench(
    store: EventStore,
    rate: u64,
    batch: usize,
    seconds: u64,
) -> anyhow::Result<LagBenchReport> {
    anyhow::ensure!(
        rate > 0 && batch > 0 && seconds > 0,
        "rate, batch and seconds must be positive"
    );
    let wanted = rate * seconds;
    // About 16 records per person.
    let config = crate::demo::DemoConfig {
        people: (wanted / 14 + 1) as usize,
        seed: 17,
        ..crate::demo::DemoConfig::default()
    };
    let mut bodies = Vec::new();
    let mut records = 0u64;
    let mut first = 0;
    while first < config.people && records < wanted {
        let count = 2_000.min(config.people - first);
        let generated = crate::demo::generate_people(&config, first, count);
        first += count;
        for chunk in generated.chunks(batch) {
            if records >= wanted {
                break;
            }
            records += chunk.len() as u64;
            bodies.push(
                chunk
                    .iter()
                    .map(|r| format!("{}\n", r.record))
                    .collect::<String>(),
            );
        }
    }
    let ingestor = crate::ingest::Ingestor::new(
        store.clone(),
        patron_domain::identity::IdentityRules::default(),
        uuid::Uuid::new_v4().as_bytes(),
        patron_domain::privacy::MasterKey::parse(&patron_domain::privacy::MasterKey::generate())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let key = super::ingest_key(ingestor.store()).await?;
    let app = Application::build(ingestor, "127.0.0.1:0").context("cannot bind a port")?;
    let url = format!("http://127.0.0.1:{}/v1/events", app.port());
    let server = tokio::spawn(app.run_until_stopped());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let projection = ProfileProjection::new(store, 1);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                match projection.lag().await {
                    Ok(lag) => samples.push(lag.millis),
                    Err(e) => tracing::warn!(error = %e, "lag not sampled"),
                }
            }
            samples
        })
    };

    let client = reqwest::Client::new();
    let progress = bar(records, "steady ingestion");
    let interval = Duration::from_secs_f64(batch as f64 / rate as f64);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    let started = Instant::now();
    for body in bodies {
        ticks.tick().await;
        let lines = body.lines().count() as u64;
        let call = client
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/x-ndjson")
            .body(body);
        let progress = progress.clone();
        requests.spawn(async move {
            let sent = Instant::now();
            let ok = call
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            progress.inc(lines);
            (ok, sent.elapsed())
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(done) = requests.join_next().await {
        let (ok, elapsed) = done.context("a request task failed")?;
        if !ok {
            failed += 1;
        }
        latencies.push(elapsed);
    }
    let elapsed = started.elapsed();
    progress.finish();
    // One more second of samples: the lag the load left behind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.context("the lag sampler failed")?;
    server.abort();
    anyhow::ensure!(failed == 0, "{failed} ingestion requests failed");
    Ok(report(rate, records, batch, elapsed, samples, latencies))
}

fn report(
    rate: u64,
    records: u64,
    batch: usize,
    elapsed: Duration,
    mut samples: Vec<i64>,
    mut latencies: Vec<Duration>,
) -> LagBenchReport {
    samples.sort_unstable();
    latencies.sort();
    let at = |len: usize, p: f64| ((len as f64 * p).ceil() as usize).saturating_sub(1);
    let sample = |p: f64| samples.get(at(samples.len(), p)).copied().unwrap_or(0);
    LagBenchReport {
        rate_per_s: rate,
        records,
        batch,
        seconds: elapsed.as_secs_f64(),
        samples: samples.len(),
        p50_ms: sample(0.5),
        p99_ms: sample(0.99),
        max_ms: sample(1.0),
        request_p99_ms: latencies
            .get(at(latencies.len(), 0.99))
            .map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
    }
}
