//! The `patron` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::bench::{run_read_bench, run_store_bench, Spread, StoreBenchConfig};
use crate::store::scratch::ScratchPostgres;
use crate::store::{redact_url, EventStore};

/// The default store: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://patron.db";

/// Patron, the event-sourced customer data platform.
#[derive(Debug, Parser)]
#[command(name = "patron", version, about)]
pub struct Cli {
    /// The store: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DATABASE`.
    #[arg(long, global = true, env = "PATRON_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the store (creating it and its schema if needed) and print what it holds.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print events from the log as NDJSON, in position order.
    Log {
        /// Start after this position (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// How many events at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run a benchmark on a scratch database and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event store: single appends, batched appends, read-all, and memory while reading.
    Store(StoreBenchArgs),
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
}

/// Options of `patron bench store`.
#[derive(Debug, Args)]
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

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<()> {
        match self.command {
            Command::Status { json } => status(&self.database_url, json).await,
            Command::Log { after, limit } => log(&self.database_url, after, limit).await,
            Command::Bench(BenchCommand::Store(args)) => bench_store(args).await,
            Command::Bench(BenchCommand::Read { read_batch, json }) => {
                bench_read(&self.database_url, read_batch, json).await
            }
        }
    }
}

async fn open(url: &str) -> Result<EventStore> {
    EventStore::connect(url)
        .await
        .with_context(|| format!("cannot open the store at {}", redact_url(url)))
}

async fn status(url: &str, json: bool) -> Result<()> {
    let store = open(url).await?;
    let stats = store
        .stats()
        .await
        .context("cannot read the log's counts")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!("store:    {} ({})", redact_url(url), stats.backend);
        println!("events:   {}", stats.events);
        println!("streams:  {}", stats.streams);
        println!("head:     position {}", stats.head);
    }
    store.close().await;
    Ok(())
}

async fn log(url: &str, after: u64, limit: usize) -> Result<()> {
    let store = open(url).await?;
    let events = store
        .read_all(after, limit)
        .await
        .with_context(|| format!("cannot read the log after position {after}"))?;
    for event in events {
        println!("{}", serde_json::to_string(&event)?);
    }
    store.close().await;
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
    let report = match &args.postgres_url {
        Some(server) => {
            let scratch = ScratchPostgres::create(server, "patron_bench")
                .await
                .with_context(|| {
                    format!("cannot create a scratch database on {}", redact_url(server))
                })?;
            let store = open(scratch.url()).await?;
            let report = run_store_bench(&store, config).await;
            store.close().await;
            if args.keep {
                eprintln!("kept the scratch database: {}", redact_url(scratch.url()));
            } else {
                scratch
                    .drop_database()
                    .await
                    .context("cannot drop the scratch database")?;
            }
            report?
        }
        None => {
            let dir = match &args.sqlite_dir {
                Some(dir) => tempfile::tempdir_in(dir),
                None => tempfile::tempdir(),
            }
            .context("cannot create a directory for the scratch SQLite file")?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let store = open(&url).await?;
            let report = run_store_bench(&store, config).await;
            store.close().await;
            if args.keep {
                let kept = dir.keep();
                eprintln!(
                    "kept the scratch database: sqlite://{}",
                    kept.join("bench.db").display()
                );
            }
            report?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
