//! Benchmark workloads run by `patron bench`, on a scratch database, with progress bars.
//!
//! Figures are reported in events per second and mebibytes of resident memory; the results of
//! runs on the reference machine are kept in `docs/benchmarks.md`.

mod analytics;
mod body;
mod corrections;
mod flood;
mod graphql;
mod lag;
pub mod soak;

pub use analytics::{run_analytics_bench, AnalyticsBench, Timing};
pub use body::{measure_events, run_body_bench, BodyBenchReport, BodyCase};
pub use corrections::{run_corrections_bench, CorrectionsBenchReport, Target};
pub use flood::{run_flood_bench, FloodConfig, FloodReport, FloodScenario, FLOOD_QUERY};
pub use graphql::{run_graphql_bench, GraphqlBenchReport, Latencies, Scenario};
pub use lag::{run_lag_bench, LagBenchReport};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use patron_domain::{ExpectedVersion, Metadata, NewEvent, StreamAppend, StreamId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::demo::CATEGORIES;
use crate::store::{BackendKind, EventStore, StoreError};

/// How events are spread over customer streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Each event goes to a customer drawn at random: what live ingestion looks like.
    Random,
    /// Customers in turn, each receiving a run of consecutive events: what a replayed
    /// per-customer export looks like.
    Sequential,
}

/// What the event store benchmark runs.
#[derive(Clone, Debug, Serialize)]
pub struct StoreBenchConfig {
    /// Events appended one per transaction.
    pub single_events: u64,
    /// Events appended in batches.
    pub batched_events: u64,
    /// Events per batched transaction.
    pub batch_size: usize,
    /// Customer streams the events are spread over.
    pub streams: u64,
    /// How events are spread over the streams.
    pub spread: Spread,
    /// Events per read when reading the whole log.
    pub read_batch: usize,
    /// Seed of the workload generator.
    pub seed: u64,
}

impl Default for StoreBenchConfig {
    fn default() -> Self {
        Self {
            single_events: 5_000,
            batched_events: 1_000_000,
            batch_size: 1_000,
            streams: 100_000,
            spread: Spread::Random,
            read_batch: 5_000,
            seed: 7,
        }
    }
}

/// Resident memory at one point of the read.
#[derive(Clone, Debug, Serialize)]
pub struct RssSample {
    /// Events read so far.
    pub events_read: u64,
    /// Resident set size then, in MiB.
    pub rss_mib: f64,
}

/// What the event store benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct StoreBenchReport {
    /// The database measured.
    pub backend: BackendKind,
    /// The workload.
    pub config: StoreBenchConfig,
    /// Mean payload size, in bytes.
    pub mean_payload_bytes: f64,
    /// Single-event appends, events/s.
    pub single_append_events_per_s: f64,
    /// Batched appends, events/s.
    pub batched_append_events_per_s: f64,
    /// Reading the log back.
    pub read: ReadBenchReport,
}

/// A generator of realistic touchpoints: store purchases, app views, web orders.
pub struct TouchpointGenerator {
    rng: StdRng,
    streams: u64,
    spread: Spread,
    next_sequential: u64,
    start: DateTime<Utc>,
    emitted: u64,
}

const USER_AGENT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) \
    AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50";
const CITIES: [&str; 6] = [
    "Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan",
];

impl TouchpointGenerator {
    /// A generator over `streams` customers; the same seed gives the same events.
    pub fn new(seed: u64, streams: u64, spread: Spread) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            streams: streams.max(1),
            spread,
            next_sequential: 0,
            start: DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default(),
            emitted: 0,
        }
    }

    fn customer(&mut self) -> u64 {
        match self.spread {
            Spread::Random => self.rng.gen_range(0..self.streams),
            Spread::Sequential => {
                let c = (self.next_sequential / 10) % self.streams;
                self.next_sequential += 1;
                c
            }
        }
    }

    /// The next touchpoint and the customer stream it belongs to.
    pub fn next_event(&mut self) -> Result<(StreamId, NewEvent), StoreError> {
        let customer = self.customer();
        let rng = &mut self.rng;
        let phone = format!("+86138{:08}", customer % 100_000_000);
        let (event_type, channel, payload) = match rng.gen_range(0..10) {
            0..=3 => {
                let items: Vec<_> = (0..rng.gen_range(1..=3))
                    .map(|_| {
                        json!({
                            "sku": format!("SKU-{:05}", rng.gen_range(0..50_000)),
                            "category": CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
                            "quantity": rng.gen_range(1..4),
                            "unit_price_minor": rng.gen_range(990..99_900),
                            "discount_minor": if rng.gen_bool(0.3) { rng.gen_range(100..2_000) } else { 0 },
                        })
                    })
                    .collect();
                (
                    "order_placed",
                    "store",
                    json!({
                        "order_id": format!("PO-{:012}", rng.gen::<u32>()),
                        "store_id": format!("SH-{:04}", rng.gen_range(0..400)),
                        "identifiers": [
                            {"kind": "phone", "value": phone},
                            {"kind": "member_card", "value": format!("MC-{:08}", customer)},
                        ],
                        "items": items,
                        "currency": "CNY",
                        "payment": "wechat_pay",
                    }),
                )
            }
            4..=7 => (
                "screen_viewed",
                "app",
                json!({
                    "screen": format!("product/{}", rng.gen_range(0..50_000)),
                    "category": CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
                    "identifiers": [
                        {"kind": "device_id", "value": format!("{:032x}", rng.gen::<u128>())},
                        {"kind": "login_id", "value": format!("u{customer}")},
                    ],
                    "app_version": "5.12.0",
                    "os": "iOS 18.1",
                    "referrer": "push/spring_sale",
                    "session_id": format!("{:016x}", rng.gen::<u64>()),
                    "city": CITIES[rng.gen_range(0..CITIES.len())],
                }),
            ),
            _ => (
                "call_center_contact",
                "call_center",
                json!({
                    "ticket_id": format!("CC-{:010}", rng.gen::<u32>()),
                    "identifiers": [{"kind": "phone", "value": phone}],
                    "topic": "delivery_delay",
                    "agent": format!("agent-{}", rng.gen_range(0..200)),
                    "duration_s": rng.gen_range(30..900),
                    "satisfaction": rng.gen_range(1..=5),
                    "note": "customer asked about the delivery date of an online order",
                }),
            ),
        };
        let mut payload = payload;
        payload["context"] = json!({
            "ip": format!("203.0.113.{}", rng.gen_range(1..255)),
            "user_agent": USER_AGENT,
            "locale": "zh-CN",
            "campaign": format!("utm_{}", rng.gen_range(0..40)),
        });
        self.emitted += 1;
        let occurred = self.start + TimeDelta::seconds(i64::try_from(self.emitted).unwrap_or(0));
        let stream_id =
            StreamId::new(format!("customer-{customer}")).map_err(|e| StoreError::Corrupt {
                position: 0,
                reason: e.to_string(),
            })?;
        let event = NewEvent::new(event_type, &payload)
            .map_err(|e| StoreError::Corrupt {
                position: 0,
                reason: e.to_string(),
            })?
            .occurred_at(occurred)
            .with_metadata(Metadata {
                source: Some(format!("{channel}-system")),
                channel: Some(channel.to_owned()),
                ..Metadata::default()
            });
        Ok((stream_id, event))
    }

    /// `n` touchpoints grouped into one append per stream.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<StreamAppend>, StoreError> {
        let mut by_stream: BTreeMap<StreamId, Vec<NewEvent>> = BTreeMap::new();
        for _ in 0..n {
            let (stream, event) = self.next_event()?;
            by_stream.entry(stream).or_default().push(event);
        }
        Ok(by_stream
            .into_iter()
            .map(|(s, events)| StreamAppend::new(s, ExpectedVersion::Any, events))
            .collect())
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>16} [{bar:40}] {human_pos}/{human_len} events, {per_sec}, eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// The process's resident set size, in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    rss_mib_of("self")
}

/// The resident set size of process `pid` (a number, or `self`), in MiB (Linux; 0 elsewhere).
pub fn rss_mib_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs single appends, batched appends and a full read on an empty store.
pub async fn run_store_bench(
    store: &EventStore,
    config: StoreBenchConfig,
) -> Result<StoreBenchReport, StoreError> {
    let mut generator = TouchpointGenerator::new(config.seed, config.streams, config.spread);
    let mut payload_bytes = 0u64;

    let progress = bar(config.single_events, "single appends");
    let mut elapsed = Duration::ZERO;
    for _ in 0..config.single_events {
        let (stream, event) = generator.next_event()?;
        payload_bytes += event.payload().len() as u64;
        let started = Instant::now();
        store
            .append_to_stream(stream, ExpectedVersion::Any, vec![event])
            .await?;
        elapsed += started.elapsed();
        progress.inc(1);
    }
    progress.finish();
    let single = rate(config.single_events, elapsed);

    let progress = bar(config.batched_events, "batched appends");
    let mut elapsed = Duration::ZERO;
    let mut left = config.batched_events;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(config.batch_size);
        let batch = generator.next_batch(n)?;
        payload_bytes += batch
            .iter()
            .flat_map(|a| a.events.iter())
            .map(|e| e.payload().len() as u64)
            .sum::<u64>();
        let started = Instant::now();
        store.append(batch).await?;
        elapsed += started.elapsed();
        left -= n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    let batched = rate(config.batched_events, elapsed);

    let total = config.single_events + config.batched_events;
    let read = run_read_bench(store, total, config.read_batch).await?;

    Ok(StoreBenchReport {
        backend: store.kind(),
        mean_payload_bytes: payload_bytes as f64 / total.max(1) as f64,
        config,
        single_append_events_per_s: single,
        batched_append_events_per_s: batched,
        read,
    })
}

/// What reading the whole log measured.
#[derive(Clone, Debug, Serialize)]
pub struct ReadBenchReport {
    /// Events read.
    pub events_read: u64,
    /// Reading the whole log in position order as one stream, events/s.
    pub streamed_events_per_s: f64,
    /// Reading the whole log with `read_all` calls of `read_batch` events, events/s.
    pub batches_events_per_s: f64,
    /// Events per `read_all` call.
    pub read_batch: usize,
    /// Resident memory while streaming the log, sampled every 10% of it.
    pub rss: Vec<RssSample>,
}

/// Reads the whole log twice: streamed, then in batches of `read_batch`. `expected` (the number
/// of events in the log) sizes the progress bars and the memory samples.
pub async fn run_read_bench(
    store: &EventStore,
    expected: u64,
    read_batch: usize,
) -> Result<ReadBenchReport, StoreError> {
    let progress = bar(expected, "read all");
    let sample_every = (expected / 10).max(1);
    let mut rss = vec![RssSample {
        events_read: 0,
        rss_mib: rss_mib(),
    }];
    let started = Instant::now();
    let mut read = 0u64;
    let mut batches = store.stream_all(0, read_batch);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let before = read;
        read += batch.len() as u64;
        std::hint::black_box(&batch);
        if read / sample_every > before / sample_every {
            rss.push(RssSample {
                events_read: read,
                rss_mib: rss_mib(),
            });
        }
        progress.inc(batch.len() as u64);
    }
    drop(batches);
    let streamed = rate(read, started.elapsed());
    progress.finish();

    let progress = bar(expected, "read in batches");
    let started = Instant::now();
    let mut after = 0;
    let mut batched_read = 0u64;
    loop {
        let events = store.read_all(after, read_batch).await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        batched_read += events.len() as u64;
        progress.inc(events.len() as u64);
    }
    let batches = rate(batched_read, started.elapsed());
    progress.finish();
    Ok(ReadBenchReport {
        events_read: read,
        streamed_events_per_s: streamed,
        batches_events_per_s: batches,
        read_batch,
        rss,
    })
}

impl std::fmt::Display for ReadBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "read all, streamed: {:>10.0} events/s ({} events)",
            self.streamed_events_per_s, self.events_read
        )?;
        writeln!(
            f,
            "read all, batches:  {:>10.0} events/s ({} per read)",
            self.batches_events_per_s, self.read_batch
        )?;
        let rss: Vec<String> = self
            .rss
            .iter()
            .map(|s| format!("{:.0} MiB at {}", s.rss_mib, s.events_read))
            .collect();
        write!(f, "rss while streaming: {}", rss.join(", "))
    }
}

impl std::fmt::Display for StoreBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend:            {}", self.backend)?;
        writeln!(
            f,
            "workload:           {} single + {} batched events ({} per transaction), {} streams, {:?} spread, mean payload {:.0} bytes",
            self.config.single_events,
            self.config.batched_events,
            self.config.batch_size,
            self.config.streams,
            self.config.spread,
            self.mean_payload_bytes
        )?;
        writeln!(
            f,
            "single append:      {:>10.0} events/s",
            self.single_append_events_per_s
        )?;
        writeln!(
            f,
            "batched append:     {:>10.0} events/s",
            self.batched_append_events_per_s
        )?;
        write!(f, "{}", self.read)
    }
}

/// What the HTTP ingestion benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct HttpBenchReport {
    /// The database measured.
    pub backend: BackendKind,
    /// Records sent.
    pub records: u64,
    /// Records per request.
    pub batch: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Records stored.
    pub accepted: u64,
    /// Records refused (the generator breaks 0.2% on purpose).
    pub rejected: u64,
    /// Records per second, from the first request sent to the last answer received.
    pub records_per_s: f64,
    /// Median request latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile request latency, in milliseconds.
    pub p99_ms: f64,
}

impl std::fmt::Display for HttpBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend:        {}", self.backend)?;
        writeln!(
            f,
            "workload:       {} records in requests of {} from {} clients",
            self.records, self.batch, self.clients
        )?;
        writeln!(
            f,
            "stored:         {} ({} refused on purpose)",
            self.accepted, self.rejected
        )?;
        writeln!(f, "throughput:     {:.0} records/s", self.records_per_s)?;
        write!(
            f,
            "latency:        p50 {:.1} ms, p99 {:.1} ms per request",
            self.p50_ms, self.p99_ms
        )
    }
}

/// An ingestor over a scratch `store` with the built-in identity rules and throw-away keys.
pub fn scratch_ingestor(store: EventStore) -> anyhow::Result<crate::ingest::Ingestor> {
    Ok(crate::ingest::Ingestor::new(
        store,
        patron_domain::identity::IdentityRules::default(),
        uuid::Uuid::new_v4().as_bytes(),
        patron_domain::privacy::MasterKey::parse(&patron_domain::privacy::MasterKey::generate())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

/// A new API key of the `ingest` role in `store`, for a benchmark's clients.
pub(crate) async fn ingest_key(store: &EventStore) -> anyhow::Result<String> {
    use anyhow::Context;
    let secret = crate::server::new_secret();
    store
        .create_api_key(
            "bench:ingest",
            "ingest",
            &crate::server::secret_hash(&secret),
            chrono::Utc::now(),
        )
        .await
        .context("cannot create the benchmark's key")?;
    Ok(secret)
}

/// Sends the demo data set of `people` people to a server on a free port over `store`, as
/// NDJSON requests of `batch` records from `clients` concurrent clients.
pub async fn run_http_bench(
    store: EventStore,
    people: usize,
    batch: usize,
    clients: usize,
) -> Result<HttpBenchReport, anyhow::Error> {
    use anyhow::Context;
    use std::sync::{Arc, Mutex};

    let backend = store.kind();
    let ingestor = scratch_ingestor(store)?;
    let key = ingest_key(ingestor.store()).await?;
    let app = crate::server::Application::build(ingestor, "127.0.0.1:0")
        .context("cannot bind a port on 127.0.0.1")?;
    let url = format!("http://127.0.0.1:{}/v1/events", app.port());
    let server = tokio::spawn(app.run_until_stopped());

    let config = crate::demo::DemoConfig {
        people,
        seed: 11,
        ..crate::demo::DemoConfig::default()
    };
    let mut bodies = std::collections::VecDeque::new();
    let mut records = 0u64;
    let mut first = 0;
    while first < people {
        let count = 2_000.min(people - first);
        let generated = crate::demo::generate_people(&config, first, count);
        first += count;
        for chunk in generated.chunks(batch.max(1)) {
            records += chunk.len() as u64;
            let body: String = chunk.iter().map(|r| format!("{}\n", r.record)).collect();
            bodies.push_back(body);
        }
    }
    let progress = bar(records, "http ingestion");
    let queue = Arc::new(Mutex::new(bodies));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let queue = Arc::clone(&queue);
        let client = client.clone();
        let url = url.clone();
        let progress = progress.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut accepted, mut rejected) = (0u64, 0u64);
            loop {
                let body = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(body) = body else { break };
                let lines = body.lines().count() as u64;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .context("request failed")?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "the server answered {}",
                    response.status()
                );
                let answer: serde_json::Value =
                    response.json().await.context("unreadable answer")?;
                latencies.push(sent.elapsed());
                accepted += answer["accepted"].as_u64().unwrap_or(0);
                rejected += answer["rejected"].as_u64().unwrap_or(0);
                progress.inc(lines);
            }
            Ok::<_, anyhow::Error>((latencies, accepted, rejected))
        }));
    }
    let mut latencies = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    for task in tasks {
        let (l, a, r) = task.await.context("a client stopped")??;
        latencies.extend(l);
        accepted += a;
        rejected += r;
    }
    let elapsed = started.elapsed();
    progress.finish();
    server.abort();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
    };
    Ok(HttpBenchReport {
        backend,
        records,
        batch,
        clients,
        accepted,
        rejected,
        records_per_s: rate(records, elapsed),
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
    })
}

/// The store of an ingestor served on a free port for a benchmark, with an API key of its own.
pub(crate) struct Served {
    /// The GraphQL address.
    pub url: String,
    /// The key's secret.
    pub secret: String,
    key: uuid::Uuid,
    store: EventStore,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Serves `ingestor`'s store on a free port with a new `role` key named `name`.
    pub(crate) async fn start(
        ingestor: crate::ingest::Ingestor,
        name: &str,
        role: &str,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let store = ingestor.store().clone();
        let secret = crate::server::new_secret();
        let key = store
            .create_api_key(
                name,
                role,
                &crate::server::secret_hash(&secret),
                chrono::Utc::now(),
            )
            .await
            .context("cannot create the bench's key")?;
        let app = crate::server::Application::build(ingestor, "127.0.0.1:0")
            .context("cannot bind a port")?;
        let url = format!("http://127.0.0.1:{}/graphql", app.port());
        Ok(Self {
            url,
            secret,
            key: key.id,
            store,
            server: tokio::spawn(app.run_until_stopped()),
        })
    }

    /// Stops the server and revokes the key.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        use anyhow::Context;
        self.server.abort();
        self.store
            .revoke_api_key(self.key, chrono::Utc::now())
            .await
            .context("cannot revoke the bench's key")?;
        Ok(())
    }
}
