//! `patron bench ...`: the benchmarks, on scratch databases or the store named by
//! --database-url, printing their figures (`docs/benchmarks.md`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{open, Cli};
use crate::bench::{run_http_bench, run_read_bench, run_store_bench, Spread, StoreBenchConfig};
use crate::segmentation;
use crate::store::scratch::ScratchPostgres;
use crate::store::{redact_url, EventStore};

/// The benchmarks.
#[derive(Clone, Debug, Subcommand)]
pub enum BenchCommand {
    /// Event store: single appends, batched appends, read-all, and memory while reading.
    Store(StoreBenchArgs),
    /// HTTP ingestion: the demo data set sent to `POST /v1/events` on a free port, over a
    /// scratch database, by concurrent clients.
    Http {
        /// Run on PostgreSQL: a scratch database is created on this server and dropped afterwards.
        #[arg(long)]
        postgres_url: Option<String>,
        /// People in the demo data set (about 16 records each).
        #[arg(long, default_value_t = 30_000)]
        people: usize,
        /// Records per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// Read the whole log of the store named by --database-url, streamed then in batches, and
    /// report events/s and memory. Writes nothing.
    Read {
        /// Events per read in the batched pass.
        #[arg(long, default_value_t = 5_000)]
        read_batch: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time how long one customer's profile change takes to update their segment memberships,
    /// on the store named by --database-url (profiles and scores as they are): ten segments
    /// named `bench:*` are saved for the run and deleted after it.
    Membership {
        /// Customers to time, one at a time.
        #[arg(long, default_value_t = 1_000)]
        customers: usize,
    },
    /// Projection lag under steady HTTP ingestion: a server on a scratch database is sent the
    /// demo data set at a fixed rate while the profiles' lag is sampled every 100 ms.
    Lag {
        /// Run on PostgreSQL: a scratch database is created on this server and dropped afterwards.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Records per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Records per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// How long each analysis takes on the store named by --database-url (load it first, for
    /// example with `patron demo --people 1000000`): the activity is read once, then the cohort
    /// table, a 4-step funnel, the CLV fit, association rules, attribution and paths run
    /// `--runs` times each. Writes nothing.
    Analytics {
        /// Runs of each analysis (the median and the slowest are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The server's peak memory while it reads large and hostile bodies (`POST /v1/events`:
    /// 5.2M NDJSON lines of `0`, a JSON array of 5M zeros, 10,000 real records, two hostile
    /// bodies at once, one record of 4.5M values, 1 GiB of spaces gzipped into 1 MiB;
    /// `POST /graphql` with 4.5M values in its variables; 20 Segment requests without a write
    /// key that stall before their body's end),
    /// each case against a fresh `patron serve` on a scratch SQLite store.
    Body {
        /// The `patron` binary to serve with (default: this one), to compare builds.
        #[arg(long)]
        server: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Whether analytics starve everything else: a server on a scratch database loaded with
    /// the demo data set answers `customer(id)` reads and 1-record `POST /v1/events` ingests
    /// at a fixed rate, idle and then while `--clients` clients send requests of three
    /// whole-base analyses back to back; prints the p50/p99 of the reads and ingests.
    Flood {
        /// Run on PostgreSQL: a scratch database is created on this server and dropped afterwards.
        #[arg(long)]
        postgres_url: Option<String>,
        /// People in the demo data set (about 15 records each).
        #[arg(long, default_value_t = 20_000)]
        people: usize,
        /// `customer(id)` reads per second, and as many 1-record ingests per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Seconds each scenario runs.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent analytics clients in the flood.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// GraphQL read latency on the store named by --database-url (load it first, for example
    /// with `patron demo --people 1000000 --touchpoints 2`): `customer(id)` for random
    /// customers at a fixed rate, then pages of 50 customers with their tags and segments.
    Graphql {
        /// `customer(id)` requests per second.
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// Page requests per second.
        #[arg(long, default_value_t = 50.0)]
        page_rate: f64,
        /// Seconds each scenario runs.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Identity corrections through GraphQL on the store named by --database-url (a demo
    /// store: the corrections stay in its log): the pairs of customers with the most orders
    /// merged one request at a time, then each merge undone; reports the latencies.
    Corrections {
        /// Pairs of customers.
        #[arg(long, default_value_t = 40)]
        pairs: usize,
        /// Send the corrections to this running server's GraphQL address instead of serving
        /// the store in-process (it must serve the store --database-url names).
        #[arg(long, requires = "key")]
        url: Option<String>,
        /// An operator key's secret for --url.
        #[arg(long, env = "PATRON_BENCH_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mixed load against one `patron serve` on the store named by --database-url (a demo
    /// store: the run writes into it): ingestion, Segment batches, reads, previews, analytics,
    /// websocket subscribers and hostile input at fixed rates, each class first alone; reports
    /// the server's memory curve, each class's p99 per window against its idle p99, and
    /// whether every accepted record is in the store after the server is killed.
    Soak {
        /// Seconds of mixed load.
        #[arg(long, default_value_t = 1_200)]
        seconds: u64,
        /// Seconds each class runs alone first.
        #[arg(long, default_value_t = 20)]
        idle_seconds: u64,
        /// Seconds per reporting window.
        #[arg(long, default_value_t = 120)]
        window_seconds: u64,
        /// Websocket subscribers held open.
        #[arg(long, default_value_t = 20)]
        subscribers: usize,
        /// Replay a fixed pool of ingestion and Segment records (stored once, duplicates
        /// after): a control run whose store stops growing.
        #[arg(long)]
        replay: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `patron bench store`.
#[derive(Clone, Debug, Args)]
pub struct StoreBenchArgs {
    /// Run on PostgreSQL: a scratch database is created on this server and dropped afterwards.
    /// Without it, a scratch SQLite file is used.
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// Directory for the scratch SQLite file (default: the system's temporary directory).
    #[arg(long)]
    pub sqlite_dir: Option<PathBuf>,
    /// Events appended one per transaction.
    #[arg(long, default_value_t = 5_000)]
    pub single: u64,
    /// Events appended in batches.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per batched transaction.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Customer streams the events are spread over.
    #[arg(long, default_value_t = 100_000)]
    pub streams: u64,
    /// How events are spread over the streams.
    #[arg(long, value_enum, default_value_t = Spread::Random)]
    pub spread: Spread,
    /// Events per read when reading the log back.
    #[arg(long, default_value_t = 5_000)]
    pub read_batch: usize,
    /// Keep the scratch database afterwards and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark.
pub(super) async fn run(cli: &Cli, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Store(args) => bench_store(args).await,
        BenchCommand::Http {
            ref postgres_url,
            people,
            batch,
            clients,
        } => bench_http(postgres_url.as_deref(), people, batch, clients).await,
        BenchCommand::Read { read_batch, json } => {
            bench_read(&cli.database_url, read_batch, json).await
        }
        BenchCommand::Membership { customers } => {
            bench_membership(&cli.database_url, customers).await
        }
        BenchCommand::Lag {
            ref postgres_url,
            rate,
            batch,
            seconds,
        } => {
            let scratch = ScratchStore::create(postgres_url.as_deref(), None).await?;
            let report =
                crate::bench::run_lag_bench(scratch.store.clone(), rate, batch, seconds).await;
            scratch.finish(false).await?;
            println!("{}", report?);
            Ok(())
        }
        BenchCommand::Analytics { runs, json } => {
            let rules = cli.rules()?;
            let store = open(&cli.database_url).await?;
            let report = crate::bench::run_analytics_bench(&store, &rules, runs).await;
            store.close().await;
            let report = report.context("the analytics benchmark failed")?;
            print_report(&report, json)
        }
        BenchCommand::Body { ref server, json } => {
            let report = crate::bench::run_body_bench(server.clone())
                .await
                .context("the body benchmark failed")?;
            print_report(&report, json)
        }
        BenchCommand::Flood {
            ref postgres_url,
            people,
            rate,
            seconds,
            clients,
            json,
        } => {
            let scratch = ScratchStore::create(postgres_url.as_deref(), None).await?;
            let config = crate::bench::FloodConfig {
                people,
                rate,
                seconds,
                clients,
            };
            let report = match crate::bench::scratch_ingestor(scratch.store.clone()) {
                Ok(ingestor) => crate::bench::run_flood_bench(ingestor, config).await,
                Err(e) => Err(e),
            };
            scratch.finish(false).await?;
            let report = report.context("the flood benchmark failed")?;
            print_report(&report, json)
        }
        BenchCommand::Graphql {
            rate,
            page_rate,
            seconds,
            json,
        } => {
            let ingestor = cli.ingestor().await?;
            let store = ingestor.store().clone();
            let report = crate::bench::run_graphql_bench(ingestor, rate, page_rate, seconds)
                .await
                .context("the GraphQL benchmark failed")?;
            store.close().await;
            print_report(&report, json)
        }
        BenchCommand::Corrections {
            pairs,
            ref url,
            ref key,
            json,
        } => {
            let ingestor = cli.ingestor().await?;
            let store = ingestor.store().clone();
            let target = url
                .clone()
                .zip(key.clone())
                .map(|(url, key)| crate::bench::Target { url, key });
            let report = crate::bench::run_corrections_bench(ingestor, pairs, target)
                .await
                .context("the corrections benchmark failed")?;
            store.close().await;
            print_report(&report, json)
        }
        BenchCommand::Soak {
            seconds,
            idle_seconds,
            window_seconds,
            subscribers,
            replay,
            json,
        } => {
            anyhow::ensure!(
                window_seconds > 0 && seconds > 0,
                "--seconds and --window-seconds must be at least 1"
            );
            let report = crate::bench::soak::run_soak(crate::bench::soak::SoakConfig {
                database_url: cli.database_url.clone(),
                binary: std::env::current_exe().context("cannot find this binary")?,
                seconds,
                idle_seconds,
                window_seconds,
                subscribers,
                replay,
            })
            .await
            .context("the soak failed")?;
            print_report(&report, json)
        }
    }
}

/// A store on a throw-away database: a temporary SQLite file, or a PostgreSQL database created
/// for the run.
struct ScratchStore {
    store: EventStore,
    dir: Option<tempfile::TempDir>,
    postgres: Option<ScratchPostgres>,
}

impl ScratchStore {
    async fn create(postgres_url: Option<&str>, sqlite_dir: Option<&Path>) -> Result<Self> {
        match postgres_url {
            Some(server) => {
                let scratch = ScratchPostgres::create(server, "patron_bench")
                    .await
                    .with_context(|| {
                        format!("cannot create a scratch database on {}", redact_url(server))
                    })?;
                let store = open(scratch.url()).await?;
                Ok(Self {
                    store,
                    dir: None,
                    postgres: Some(scratch),
                })
            }
            None => {
                let dir = match sqlite_dir {
                    Some(dir) => tempfile::tempdir_in(dir),
                    None => tempfile::tempdir(),
                }
                .context("cannot create a directory for the scratch SQLite file")?;
                let store = open(&format!(
                    "sqlite://{}",
                    dir.path().join("bench.db").display()
                ))
                .await?;
                Ok(Self {
                    store,
                    dir: Some(dir),
                    postgres: None,
                })
            }
        }
    }

    /// Closes the store and removes the database, or keeps it and says where.
    async fn finish(self, keep: bool) -> Result<()> {
        self.store.close().await;
        if let Some(scratch) = self.postgres {
            if keep {
                eprintln!("kept the scratch database: {}", redact_url(scratch.url()));
            } else {
                scratch
                    .drop_database()
                    .await
                    .context("cannot drop the scratch database")?;
            }
        }
        if let Some(dir) = self.dir {
            if keep {
                let kept = dir.keep();
                eprintln!(
                    "kept the scratch database: sqlite://{}",
                    kept.join("bench.db").display()
                );
            }
        }
        Ok(())
    }
}

async fn bench_http(
    postgres_url: Option<&str>,
    people: usize,
    batch: usize,
    clients: usize,
) -> Result<()> {
    anyhow::ensure!(
        people > 0 && batch > 0 && clients > 0,
        "--people, --batch and --clients must be at least 1"
    );
    let scratch = ScratchStore::create(postgres_url, None).await?;
    let report = run_http_bench(scratch.store.clone(), people, batch, clients).await;
    scratch.finish(false).await?;
    let report = report?;
    println!("{report}");
    Ok(())
}

async fn bench_membership(url: &str, customers: usize) -> Result<()> {
    use std::collections::HashMap;
    let store = open(url).await?;
    let rules = [
        "tier = \"high_value\"",
        "stage in (\"declining\", \"churned\") and orders >= 2",
        "count(order_placed, channel = \"store\") in last 365 days >= 1 and count(order_placed, channel = \"web\") in last 365 days = 0",
        "tag \"high_frequency\"",
        "spend in last 90 days >= 50000",
        "rfm_segment in (\"champions\", \"loyal\")",
        "consent.marketing_sms = true and days_since_last_seen <= 30",
        "count(page_viewed) in last 14 days >= 3 and orders = 0",
        "preferred_channel = \"app\" and average_order_value > 20000",
        "not tag \"promotion_sensitive\" and r >= 4",
    ];
    let names: Vec<String> = (0..rules.len()).map(|i| format!("bench:{i}")).collect();
    for (name, rule) in names.iter().zip(rules) {
        store.save_segment(name, rule, chrono::Utc::now()).await?;
    }
    let rows = store
        .read_all_profiles(crate::store::projection::ProfileTable::Live)
        .await?;
    let mut timings = Vec::with_capacity(customers);
    for (customer, _, profile) in rows
        .into_iter()
        .filter(|(_, merged_into, _)| merged_into.is_none())
        .take(customers)
    {
        let one: HashMap<_, _> = [(customer, profile)].into();
        let started = std::time::Instant::now();
        segmentation::follow_changes(&store, &one, "CNY", chrono::Utc::now()).await?;
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    for name in &names {
        store.delete_segment(name).await?;
    }
    store.close().await;
    anyhow::ensure!(
        !timings.is_empty(),
        "the store has no profiles: run `patron status --catch-up` first"
    );
    timings.sort_by(f64::total_cmp);
    let at = |q: f64| timings[((timings.len() - 1) as f64 * q) as usize];
    println!(
        "{} customers, {} segments: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms per profile change",
        timings.len(),
        rules.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

async fn bench_read(url: &str, read_batch: usize, json: bool) -> Result<()> {
    anyhow::ensure!(read_batch > 0, "--read-batch must be at least 1");
    let store = open(url).await?;
    let stats = store
        .stats()
        .await
        .context("cannot read the log's counts")?;
    let report = run_read_bench(&store, stats.events, read_batch)
        .await
        .context("reading the log failed")?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "store:              {} ({})",
            redact_url(url),
            stats.backend
        );
        println!("{report}");
    }
    Ok(())
}

async fn bench_store(args: StoreBenchArgs) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.read_batch > 0, "--read-batch must be at least 1");
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    let config = StoreBenchConfig {
        single_events: args.single,
        batched_events: args.events,
        batch_size: args.batch,
        streams: args.streams,
        spread: args.spread,
        read_batch: args.read_batch,
        ..StoreBenchConfig::default()
    };
    let scratch =
        ScratchStore::create(args.postgres_url.as_deref(), args.sqlite_dir.as_deref()).await?;
    let report = run_store_bench(&scratch.store, config).await;
    scratch.finish(args.keep).await?;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Prints a benchmark's report as JSON or as text.
fn print_report(report: &(impl serde::Serialize + std::fmt::Display), json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", report.to_string().trim_end());
    }
    Ok(())
}
