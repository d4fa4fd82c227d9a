//! `patron bench graphql`: GraphQL read latency on a loaded store, at a fixed request rate
//! (open loop: requests are sent on schedule whether or not earlier ones were answered, so a
//! slow answer cannot hide the ones queued behind it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::bar;
use crate::ingest::Ingestor;

/// One customer with the profile fields a UI's customer page shows.
const CUSTOMER_QUERY: &str = "query($id: ID!) { customer(id: $id) { id tier stage orders \
    touchpoints lastSeen revenue { currency minor } rfm { segment } tags segments } }";

/// A page of 50 customers with their tags and segments.
const PAGE_QUERY: &str = "query($after: String) { customers(first: 50, after: $after) { \
    edges { node { id tier stage tags segments } } } }";

/// The latencies of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// What was asked.
    pub name: String,
    /// Requests scheduled per second.
    pub rate_per_s: f64,
    /// The requests and their latencies.
    #[serde(flatten)]
    pub latencies: Latencies,
}

/// What `patron bench graphql` measured.
#[derive(Clone, Debug, Serialize)]
pub struct GraphqlBenchReport {
    /// Live customers in the store.
    pub customers: u64,
    /// The scenarios, in the order run.
    pub scenarios: Vec<Scenario>,
}

impl std::fmt::Display for GraphqlBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "customers:      {}", self.customers)?;
        for s in &self.scenarios {
            writeln!(
                f,
                "{}: {} requests at {:.0}/s, {} errors; p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                s.name,
                s.latencies.requests,
                s.rate_per_s,
                s.latencies.errors,
                s.latencies.p50_ms,
                s.latencies.p95_ms,
                s.latencies.p99_ms,
                s.latencies.max_ms
            )?;
        }
        Ok(())
    }
}

/// Serves the store of `ingestor` on a free port and measures `customer(id)` at `rate`
/// requests/s and a page of 50 customers at `page_rate` requests/s, each for `seconds`.
pub async fn run_graphql_bench(
    ingestor: Ingestor,
    rate: f64,
    page_rate: f64,
    seconds: u64,
) -> anyhow::Result<GraphqlBenchReport> {
    let store = ingestor.store().clone();
    let customers = store
        .live_customer_count()
        .await
        .context("cannot count the customers")?;
    anyhow::ensure!(
        customers > 0,
        "the store has no profiles: load data first (patron demo)"
    );
    let mut ids = store
        .live_customer_page(None, customers as usize)
        .await
        .context("cannot read the customer ids")?;
    ids.shuffle(&mut rand::thread_rng());
    ids.truncate(100_000);
    let served = super::Served::start(ingestor, "bench:viewer", "viewer").await?;
    let (url, secret) = (served.url.clone(), served.secret.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .context("cannot build an HTTP client")?;

    let mut scenarios = Vec::new();
    let ids = Arc::new(ids);
    let customer_ids = Arc::clone(&ids);
    scenarios.push(
        run(
            "customer(id)",
            &client,
            &url,
            &secret,
            rate,
            seconds,
            move |rng| {
                let id = customer_ids[rng.gen_range(0..customer_ids.len())];
                (CUSTOMER_QUERY, json!({"id": id.to_string()}))
            },
        )
        .await?,
    );
    let page_ids = Arc::clone(&ids);
    scenarios.push(
        run(
            "page of 50 customers with tags and segments",
            &client,
            &url,
            &secret,
            page_rate,
            seconds,
            move |rng| {
                // A page after a random customer: as deep in the list as a cursor goes.
                let after = page_ids[rng.gen_range(0..page_ids.len())];
                let after = patron_graphql::cursor::encode_customer(after.as_uuid());
                (PAGE_QUERY, json!({"after": after}))
            },
        )
        .await?,
    );
    served.stop().await?;
    Ok(GraphqlBenchReport {
        customers,
        scenarios,
    })
}

/// Sends `rate` requests/s for `seconds`, each made by `request`; returns the latencies.
async fn run(
    name: &str,
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    rate: f64,
    seconds: u64,
    request: impl Fn(&mut rand::rngs::ThreadRng) -> (&'static str, Value),
) -> anyhow::Result<Scenario> {
    let total = (rate * seconds as f64).round() as u64;
    let latencies = paced_with(rate, seconds, bar(total, name), |rng| {
        let (query, variables) = request(rng);
        client
            .post(url)
            .bearer_auth(secret)
            .json(&json!({"query": query, "variables": variables}))
    })
    .await?;
    Ok(Scenario {
        name: name.to_owned(),
        rate_per_s: rate,
        latencies,
    })
}

/// The latencies of requests sent at a fixed rate.
#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered with errors (an HTTP error status, or `errors` in the body).
    pub errors: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

/// Sends `rate` requests/s for `seconds`, each built by `request`, without a progress bar.
pub(super) async fn paced(
    rate: f64,
    seconds: u64,
    request: impl FnMut(&mut rand::rngs::ThreadRng) -> reqwest::RequestBuilder,
) -> anyhow::Result<Latencies> {
    paced_with(rate, seconds, indicatif::ProgressBar::hidden(), request).await
}

/// Sends `rate` requests/s for `seconds` (open loop), each built by `request`, counting them
/// on `progress`; returns the latencies.
async fn paced_with(
    rate: f64,
    seconds: u64,
    progress: indicatif::ProgressBar,
    mut request: impl FnMut(&mut rand::rngs::ThreadRng) -> reqwest::RequestBuilder,
) -> anyhow::Result<Latencies> {
    anyhow::ensure!(rate > 0.0, "a rate must be positive");
    let total = (rate * seconds as f64).round() as u64;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = rand::thread_rng();
    for _ in 0..total {
        ticks.tick().await;
        let call = request(&mut rng);
        let sent = Instant::now();
        let latencies = Arc::clone(&latencies);
        let errors = Arc::clone(&errors);
        let progress = progress.clone();
        tasks.spawn(async move {
            let answer = match call.send().await {
                Ok(response) if response.status().is_success() => {
                    response.json::<Value>().await.ok()
                }
                _ => None,
            };
            let elapsed = sent.elapsed();
            if answer.is_none_or(|a| a.get("errors").is_some()) {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Ok(mut l) = latencies.lock() {
                l.push(elapsed);
            }
            progress.inc(1);
        });
    }
    while tasks.join_next().await.is_some() {}
    progress.finish();
    let latencies = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("a request task panicked"))?
        .clone();
    Ok(Latencies::of(
        total,
        errors.load(std::sync::atomic::Ordering::Relaxed),
        latencies,
    ))
}

impl Latencies {
    /// The percentiles of `latencies`, of `requests` requests of which `errors` failed.
    pub(super) fn of(requests: u64, errors: u64, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
        };
        Self {
            requests,
            errors,
            p50_ms: percentile(0.5),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
            max_ms: percentile(1.0),
        }
    }
}
