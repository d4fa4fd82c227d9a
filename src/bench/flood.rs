//! `patron bench flood`: whether heavy analytics starve everything else. A server over a store
//! loaded with the demo data set answers `customer(id)` GraphQL reads and 1-record
//! `POST /v1/events` ingests at a fixed, modest rate (open loop), first idle, then while
//! concurrent clients send analytics requests back to back (several whole-base analyses each,
//! within the API's limits), and again on a server that lets every client's analyses run at once
//! (no analytics gate). The latencies of the reads and ingests are what a viewer and a shop's
//! back end feel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::graphql::{paced, Latencies};
use crate::analytics::AnalyticsLimits;
use crate::ingest::Ingestor;
use crate::projection::ProfileProjection;
use crate::server::{new_secret, secret_hash, Application, ServerOptions};
use crate::store::BackendKind;

/// What a flood client asks, back to back: three whole-base analyses in one request (40,000
/// of the 50,000 complexity a request may have).
pub const FLOOD_QUERY: &str = "{ analytics { \
    lifetimeValue(first: 5) { customers expectedValueMinor } \
    cohorts { customers } \
    attribution { conversions } } }";

/// One customer with the profile fields a UI's customer page shows.
const CUSTOMER_QUERY: &str = "query($id: ID!) { customer(id: $id) { id tier stage orders \
    touchpoints lastSeen revenue { currency minor } tags segments } }";

/// How the flood benchmark runs.
#[derive(Clone, Debug, Serialize)]
pub struct FloodConfig {
    /// People in the demo data set loaded first (about 15 records each).
    pub people: usize,
    /// `customer(id)` reads per second, and as many 1-record ingests per second.
    pub rate: f64,
    /// Seconds each scenario runs.
    pub seconds: u64,
    /// Concurrent analytics clients in the flood scenario.
    pub clients: usize,
}

/// The plain traffic's latencies in one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct FloodScenario {
    /// Idle, or under the analytics flood.
    pub name: String,
    /// `customer(id)` reads.
    pub reads: Latencies,
    /// 1-record `POST /v1/events` ingests.
    pub ingests: Latencies,
    /// Analytics requests answered in full during the scenario.
    pub analytics_answered: u64,
    /// Analytics requests refused as busy (or otherwise failed) during the scenario.
    pub analytics_refused: u64,
}

/// What `patron bench flood` measured.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    /// The database measured.
    pub backend: BackendKind,
    /// How it ran.
    pub config: FloodConfig,
    /// Live customers in the store.
    pub customers: u64,
    /// Seconds one flood request took alone (the analyses' cost on this data set).
    pub flood_request_alone_s: f64,
    /// Idle, then under the flood.
    pub scenarios: Vec<FloodScenario>,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend:        {}", self.backend)?;
        writeln!(
            f,
            "store:          {} customers (demo of {} people)",
            self.customers, self.config.people
        )?;
        writeln!(
            f,
            "one flood request alone: {:.2} s",
            self.flood_request_alone_s
        )?;
        writeln!(
            f,
            "| scenario | traffic | requests | errors | p50 ms | p99 ms | max ms |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|---:|---:|")?;
        for s in &self.scenarios {
            for (what, l) in [("customer(id)", &s.reads), ("POST /v1/events", &s.ingests)] {
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                    s.name, what, l.requests, l.errors, l.p50_ms, l.p99_ms, l.max_ms
                )?;
            }
        }
        for s in &self.scenarios {
            writeln!(
                f,
                "{}: analytics requests answered {}, refused {}",
                s.name, s.analytics_answered, s.analytics_refused
            )?;
        }
        Ok(())
    }
}

/// A 1-record ingestion body (NDJSON): a store visit by a random phone.
fn visit(rng: &mut impl Rng) -> String {
    let record = json!({
        "event_id": uuid::Uuid::now_v7().to_string(),
        "type": "store_visited",
        "channel": "store",
        "source": "bench-flood",
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "identifiers": {"phone": format!("139{:08}", rng.gen_range(0..100_000_000u32))},
        "store_id": "SH-1",
    });
    format!("{record}\n")
}

/// Sends [`FLOOD_QUERY`] with `secret` to `url`; whether it was answered without errors.
async fn flood_request(client: &reqwest::Client, url: &str, secret: &str) -> bool {
    let answer = match client
        .post(url)
        .bearer_auth(secret)
        .json(&json!({"query": FLOOD_QUERY}))
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
        _ => None,
    };
    answer.is_some_and(|a| a.get("errors").is_none())
}

/// Loads the demo data set of `config.people` people through `ingestor` (on an empty store),
/// serves the store on a free port and measures the plain traffic idle and under the flood.
pub async fn run_flood_bench(
    ingestor: Ingestor,
    config: FloodConfig,
) -> anyhow::Result<FloodReport> {
    anyhow::ensure!(config.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(config.clients > 0, "--clients must be at least 1");
    let store = ingestor.store().clone();
    let demo = crate::demo::DemoConfig {
        people: config.people,
        ..crate::demo::DemoConfig::default()
    };
    crate::demo::run_demo(&ingestor, &demo, 2_000)
        .await
        .context("cannot load the demo data set")?;
    ProfileProjection::new(store.clone(), 20_000)
        .catch_up()
        .await
        .context("cannot fold the profiles")?;
    let customers = store
        .live_customer_count()
        .await
        .context("cannot count the customers")?;
    let ids = store
        .live_customer_page(None, customers.min(100_000) as usize)
        .await
        .context("cannot read the customer ids")?;
    anyhow::ensure!(!ids.is_empty(), "the demo made no customer");
    let mut secrets = Vec::new();
    for role in ["viewer", "analyst", "ingest"] {
        let secret = new_secret();
        store
            .create_api_key(
                &format!("bench:{role}"),
                role,
                &secret_hash(&secret),
                chrono::Utc::now(),
            )
            .await
            .context("cannot create the bench's keys")?;
        secrets.push(secret);
    }
    let (viewer, analyst, ingest) = (secrets[0].clone(), secrets[1].clone(), secrets[2].clone());
    let backend = store.kind();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .context("cannot build an HTTP client")?;
    // The server as configured by default, then one that lets every flood client's analyses
    // run at once (what the analytics gate prevents), side by side in one run.
    let gated = ServerOptions::default();
    let ungated = ServerOptions {
        analytics: AnalyticsLimits {
            concurrency: config.clients,
            ..AnalyticsLimits::default()
        },
        ..ServerOptions::default()
    };
    let servers = [gated, ungated];
    let plan = [
        ("idle", false, 0),
        ("flood", true, 0),
        ("flood, analyses not gated", true, 1),
    ];
    let mut flood_request_alone_s = 0.0;
    let mut running: Option<(usize, String, tokio::task::JoinHandle<_>)> = None;
    let mut scenarios = Vec::new();
    for (name, flooding, server) in plan {
        let same = running.as_ref().is_some_and(|(s, ..)| *s == server);
        if !same {
            if let Some((.., server)) = running.take() {
                server.abort();
                let _ = server.await;
            }
            let app =
                Application::build_with(ingestor.clone(), "127.0.0.1:0", servers[server].clone())
                    .context("cannot bind a port")?;
            let base = format!("http://127.0.0.1:{}", app.port());
            running = Some((server, base, tokio::spawn(app.run_until_stopped())));
        }
        let base = running
            .as_ref()
            .map(|(_, b, _)| b.clone())
            .unwrap_or_default();
        let graphql = format!("{base}/graphql");
        let events = format!("{base}/v1/events");
        if !same {
            // The first analytics request reads the activity into memory; then one alone is
            // timed (on the default server).
            anyhow::ensure!(
                flood_request(&client, &graphql, &analyst).await,
                "the flood's request is refused by the server"
            );
            if scenarios.is_empty() {
                let started = Instant::now();
                flood_request(&client, &graphql, &analyst).await;
                flood_request_alone_s = started.elapsed().as_secs_f64();
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut flooders = tokio::task::JoinSet::new();
        if flooding {
            for _ in 0..config.clients {
                let (client, url, secret) = (client.clone(), graphql.clone(), analyst.clone());
                let (stop, answered, refused) = (stop.clone(), answered.clone(), refused.clone());
                flooders.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if flood_request(&client, &url, &secret).await {
                            answered.fetch_add(1, Ordering::Relaxed);
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // A refusal comes back at once: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                });
            }
            // Let the flood build up before measuring.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let ids = &ids;
        let reads = paced(config.rate, config.seconds, |rng| {
            let id = ids[rng.gen_range(0..ids.len())];
            client
                .post(&graphql)
                .bearer_auth(&viewer)
                .json(&json!({"query": CUSTOMER_QUERY, "variables": {"id": id.to_string()}}))
        });
        let ingests = paced(config.rate, config.seconds, |rng| {
            client
                .post(&events)
                .bearer_auth(&ingest)
                .header("content-type", "application/x-ndjson")
                .body(visit(rng))
        });
        let (reads, ingests) = tokio::join!(reads, ingests);
        stop.store(true, Ordering::Relaxed);
        while flooders.join_next().await.is_some() {}
        scenarios.push(FloodScenario {
            name: name.to_owned(),
            reads: reads?,
            ingests: ingests?,
            analytics_answered: answered.load(Ordering::Relaxed),
            analytics_refused: refused.load(Ordering::Relaxed),
        });
    }
    if let Some((.., server)) = running {
        server.abort();
    }
    Ok(FloodReport {
        backend,
        config,
        customers,
        flood_request_alone_s,
        scenarios,
    })
}
