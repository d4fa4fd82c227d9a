//! The `patron` command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use patron_domain::customer::CustomerId;
use patron_domain::privacy::MasterKey;

use crate::analytics::{
    self,
    command::{AnalyticsCommand, Output},
};
use crate::bench::{run_http_bench, run_read_bench, run_store_bench, Spread, StoreBenchConfig};
use crate::correction;
use crate::demo::{generate_people, run_demo, DemoConfig};
use crate::import::import_file;
use crate::import::mapping::Mapping;
use crate::ingest::Ingestor;
use crate::privacy::{self, Opener};
use crate::projection::{ProfileProjection, PROFILES};
use crate::scoring::{self, ScoringRules};
use crate::segmentation;
use crate::server::{Application, ServerOptions};
use crate::store::scratch::ScratchPostgres;
use crate::store::{redact_url, EventStore, StoreOptions};
use patron_domain::identity::{IdentityRules, RulesFile};
use patron_projections::segment::Rule;

/// The default store: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://patron.db";

/// Patron, the event-sourced customer data platform.
#[derive(Debug, Parser)]
#[command(name = "patron", version, about)]
pub struct Cli {
    /// A configuration file (TOML; keys are the PATRON_* variables' names without the prefix,
    /// in lower case); `patron.toml` in the working directory when there is one. See
    /// `docs/configuration.md`.
    #[arg(long, global = true, env = "PATRON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The store: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DATABASE`.
    #[arg(long, global = true, env = "PATRON_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The identity rules (TOML); the built-in retail rules when not given. See
    /// `docs/ingestion.md`.
    #[arg(long, global = true, env = "PATRON_IDENTITY_RULES")]
    pub identity_rules: Option<PathBuf>,
    /// The secret that pseudonymizes identifiers in the identity index. Without it, a key
    /// generated on first use is kept in the store (fine for a trial, not for production).
    #[arg(
        long,
        global = true,
        env = "PATRON_IDENTITY_KEY",
        hide_env_values = true
    )]
    pub identity_key: Option<String>,
    /// The key that wraps every customer's key (32 bytes as base64 or 64 hex digits; make one
    /// with `patron keys master`). Without it, a key generated on first use is kept in the
    /// store (fine for a trial, not for production). See `docs/privacy.md`.
    #[arg(long, global = true, env = "PATRON_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Days a quarantined record keeps its raw text (which may hold personal data) before it
    /// is blanked; the server expires records hourly.
    #[arg(
        long,
        global = true,
        env = "PATRON_QUARANTINE_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub quarantine_retention_days: u32,
    /// Touchpoints that happened before this time are refused (`invalid_time` on
    /// `occurred_at`): an RFC 3339 time (`1990-01-01T00:00:00Z`) or a date (`1990-01-01`,
    /// midnight UTC). See `docs/ingestion.md`.
    #[arg(
        long,
        global = true,
        env = "PATRON_EARLIEST_TIME",
        default_value = "1990-01-01T00:00:00Z",
        value_parser = parse_earliest_time
    )]
    pub earliest_time: DateTime<Utc>,
    /// Scoring rules (TOML: value tiers, lifecycle thresholds); the defaults when not given.
    /// See `docs/projections.md`.
    #[arg(long, global = true, env = "PATRON_SCORING_RULES")]
    pub scoring_rules: Option<PathBuf>,
    /// Database connections for short reads (a customer, an API key, segments).
    #[arg(long, global = true, env = "PATRON_READ_CONNECTIONS", default_value_t = 8, value_parser = at_least_one_u32)]
    pub read_connections: u32,
    /// Database connections for writes on PostgreSQL (ingestion, read models; at least 2);
    /// SQLite has one writing connection.
    #[arg(long, global = true, env = "PATRON_WRITE_CONNECTIONS", default_value_t = 4, value_parser = at_least_one_u32)]
    pub write_connections: u32,
    /// Database connections for analytics' long reads of the log.
    #[arg(long, global = true, env = "PATRON_ANALYTICS_CONNECTIONS", default_value_t = 2, value_parser = at_least_one_u32)]
    pub analytics_connections: u32,
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
        /// Bring the read models up to the log's head first.
        #[arg(long)]
        catch_up: bool,
    },
    /// Rebuild a read model from position 0 (with a progress bar), into a table of its own that
    /// replaces the live one when it has caught up: a running server keeps serving meanwhile.
    Rebuild {
        /// The read model: `profiles`, or `identity` (the identity index, written in one
        /// transaction that fails if the log moves meanwhile).
        #[arg(default_value = "profiles")]
        projection: String,
        /// Events per batch: larger batches write each profile fewer times (100,000 events
        /// hold about 400 MB).
        #[arg(long, default_value_t = 100_000)]
        batch: usize,
    },
    /// Fold the whole log again into a scratch table (with a progress bar) and report every
    /// difference from the live profiles; fails if there is one. The live read models are not
    /// touched.
    Verify {
        /// Events per batch.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
        /// Print the report as JSON.
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
    /// Serve the GraphQL API (/graphql), ingestion (POST /v1/events and the Segment-shaped
    /// endpoints), /healthz, /readyz and /metrics until stopped.
    Serve {
        /// The address to listen on. GraphQL and `/v1/events` take API keys (`patron keys
        /// create`); the Segment-shaped endpoints take write keys (`--write-key`).
        #[arg(long, env = "PATRON_ADDRESS", default_value = "127.0.0.1:8080")]
        address: String,
        /// `/readyz` answers 503 while the profiles lag the log by more than this, seconds.
        #[arg(long, env = "PATRON_READY_LAG_SECONDS", default_value_t = crate::server::DEFAULT_READY_LAG_SECONDS)]
        ready_lag_seconds: i64,
        /// A write key accepted by the Segment-shaped endpoints (/v1/batch, /v1/track ...);
        /// repeat for several. Without one, those endpoints refuse every request.
        #[arg(
            long = "write-key",
            env = "PATRON_WRITE_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )]
        write_keys: Vec<String>,
        /// Analyses (GraphQL `analytics` fields) that run at once across all requests, each
        /// on a thread of its own; the default is half the processors, at least 1.
        #[arg(
            long,
            env = "PATRON_ANALYTICS_CONCURRENCY",
            default_value_t = crate::analytics::default_analytics_concurrency(),
            value_parser = at_least_one
        )]
        analytics_concurrency: usize,
        /// How long an analysis waits for its turn before it is refused with `BUSY`,
        /// milliseconds (0: only if a turn is free at once).
        #[arg(
            long,
            env = "PATRON_ANALYTICS_WAIT_MS",
            default_value_t = crate::analytics::DEFAULT_ANALYTICS_WAIT_MS
        )]
        analytics_wait_ms: u64,
        /// Identifier lookups (`customerByIdentifier`) each API key may make per hour, by
        /// role, counted per server process; roles left out keep their default, 0 refuses.
        #[arg(
            long = "lookup-budget",
            env = "PATRON_LOOKUP_BUDGET",
            default_value_t = patron_graphql::loader::LookupAllowance::default()
        )]
        lookup_budget: patron_graphql::loader::LookupAllowance,
    },
    /// Import a CSV or NDJSON file of touchpoints: validated, resolved to customers and stored.
    /// Refused records go to the quarantine; importing the same file again stores nothing twice.
    Import {
        /// The file (`.csv`, `.ndjson`).
        file: PathBuf,
        /// How the file's columns map to touchpoint fields (required for CSV). Without it, an
        /// NDJSON file holds records in Patron's own shape.
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// Records per transaction. Larger transactions write each index page they touch
        /// once for more records; 20,000 records hold about 100 MB in memory.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a realistic multi-channel data set and load it (or write it to a file), then
    /// score the unified customers against the generator's ground truth.
    Demo {
        /// How many people.
        #[arg(long, default_value_t = 10_000)]
        people: usize,
        /// Mean touchpoints per person (on top of a few introductions).
        #[arg(long, default_value_t = 12.0)]
        touchpoints: f64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Records per transaction. Larger transactions write each index page they touch
        /// once for more records; 20,000 records hold about 100 MB in memory.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
        /// Write the records to this NDJSON file instead of loading them.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List quarantined records (refused at ingestion) with their reasons, oldest first; with
    /// `--expire`, first blank the raw text of those older than the retention period.
    Quarantine {
        /// Start after this quarantine number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Expire records older than --quarantine-retention-days before listing.
        #[arg(long)]
        expire: bool,
    },
    /// Erase a customer (right to be forgotten): destroy their keys, so the personal part of
    /// every event of theirs reads as erased, remove their identity index entries and the
    /// quarantined records holding their identifiers. The events stay; new touchpoints with the
    /// same identifiers start a new customer.
    Erase {
        /// The customer, by id (a merged id erases the customer it was merged into).
        #[arg(
            long,
            conflicts_with = "identifier",
            required_unless_present = "identifier"
        )]
        customer: Option<CustomerId>,
        /// The customer, by an identifier it holds: `KIND=VALUE`, for example
        /// `phone=13912340001`.
        #[arg(long)]
        identifier: Option<String>,
        /// Why (recorded on the erasure's event), for example a ticket number.
        #[arg(long)]
        reason: String,
        /// Who asks (recorded on the erasure's event).
        #[arg(long, default_value = "cli")]
        actor: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A person's data: `export` writes everything held on them as one JSON document.
    #[command(subcommand)]
    Person(crate::access_export::command::PersonCommand),
    /// Correct identity resolution by hand: merge, undo a merge, split, link, unlink, block.
    /// Each correction is recorded with --actor and --reason; the profiles of the customers
    /// involved are folded again at once.
    Correct {
        /// The correction.
        #[command(subcommand)]
        correction: crate::correction::command::CorrectCommand,
    },
    /// The review queue of likely duplicates: scan, list, accept (a merge), reject.
    Review {
        /// What to do.
        #[command(subcommand)]
        command: crate::correction::command::ReviewCommand,
    },
    /// Try a changed identity-rules file on the whole log (dry-run), or apply it as corrections.
    Rules {
        /// What to do.
        #[command(subcommand)]
        command: crate::correction::command::RulesCommand,
    },
    /// Explain why an identifier (`KIND=VALUE`) belongs to the customer holding it: the event
    /// that linked it, then each merge, with source, actor, reason and rules version.
    Explain {
        /// The identifier, for example `phone=13912340001`.
        identifier: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Score every live customer as of now (or --as-of): value tier, RFM scores and segment,
    /// lifecycle stage; record the stage transitions since the last run. Brings the profiles up
    /// to date first.
    Score {
        /// The moment to score as of (RFC 3339); default now.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Segments: preview a rule, save, delete, list, read members, refresh. The rule language
    /// is in `docs/projections.md`.
    #[command(subcommand)]
    Segment(SegmentCommand),
    /// Keys: API keys for GraphQL (`create`, `list`, `revoke`); `master` prints a new random
    /// master key for PATRON_MASTER_KEY.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Customer analytics: cohorts, funnels, paths, attribution, lifetime value, product
    /// associations, campaign effect, data quality; JSON or (--csv) CSV.
    Analytics {
        /// The analysis.
        #[command(subcommand)]
        analysis: AnalyticsCommand,
        /// How to print it.
        #[command(flatten)]
        output: Output,
    },
    /// Run a benchmark on a scratch database and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Segment commands.
#[derive(Debug, Subcommand)]
pub enum SegmentCommand {
    /// Save a segment (or replace the rule of the one with that name); members follow at the
    /// next refresh (`patron segment refresh`, `patron score`, hourly in the server).
    Save {
        /// The segment's name.
        name: String,
        /// Its rule.
        rule: String,
        /// The consent purpose the segment is for (marketing_sms, marketing_email, push,
        /// profiling): only customers who consent to it are members.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Write a segment's members as CSV (customer_id, tier, stage; no personal data), leaving
    /// out customers without consent for `--purpose` when given.
    Export {
        /// The segment's name.
        name: String,
        /// Only customers who consent to this purpose.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Delete a segment and its members (its log of entries and exits stays).
    Delete {
        /// The segment's name.
        name: String,
    },
    /// List the saved segments with their rules and member counts.
    List,
    /// Print a segment's members, one customer id per line.
    Members {
        /// The segment's name.
        name: String,
    },
    /// Recompute every saved segment's members now (profiles brought up to date first; scores
    /// and tags from the last `patron score`), logging who entered and who left.
    Refresh,
    /// Count the live customers a rule selects as of now (profiles brought up to date first;
    /// scores and tags from the last `patron score`).
    Preview {
        /// The rule, for example `tier = "high_value" and stage = "declining"`.
        rule: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Key management.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes). Keep it out of the database: in
    /// PATRON_MASTER_KEY, from a secret store.
    Master,
    /// Create an API key and print its secret (shown this once; only its hash is stored).
    Create {
        /// What it may do: ingest (POST /v1/events only), viewer (reads, personal data
        /// masked), analyst (segments), operator (personal data, quarantine, ingestion) or
        /// admin (erasure, keys).
        #[arg(long)]
        role: patron_graphql::Role,
        /// A name for people, for example `marketing-ui`.
        #[arg(long)]
        name: String,
    },
    /// List the API keys (never their secrets).
    List,
    /// Revoke an API key: it is refused from the next request on.
    Revoke {
        /// The key's id (from `patron keys list`).
        id: uuid::Uuid,
    },
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
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
            Command::Status { json, catch_up } => status(&self.database_url, json, catch_up).await,
            Command::Rebuild {
                ref projection,
                batch,
            } if projection == IDENTITY => rebuild_identity(&self.ingestor().await?, batch).await,
            Command::Rebuild {
                ref projection,
                batch,
            } => rebuild(&self.database_url, projection, batch).await,
            Command::Verify { batch, json } => verify(&self.ingestor().await?, batch, json).await,
            Command::Serve {
                ref address,
                ref write_keys,
                ready_lag_seconds,
                analytics_concurrency,
                analytics_wait_ms,
                lookup_budget,
            } => {
                let ingestor = self.ingestor().await?.with_actor("http");
                spawn_quarantine_expiry(ingestor.store().clone(), self.quarantine_retention_days);
                let scoring = self.scoring_rules()?;
                let currency = scoring.tiers.currency.clone();
                spawn_scoring(ingestor.store().clone(), scoring);
                let store = ingestor.store().clone();
                let options = ServerOptions {
                    currency,
                    write_keys: write_keys.clone(),
                    ready_lag_seconds,
                    analytics: crate::analytics::AnalyticsLimits {
                        concurrency: analytics_concurrency,
                        wait: std::time::Duration::from_millis(analytics_wait_ms),
                    },
                    lookup_budget,
                    ..ServerOptions::default()
                };
                let app = Application::build_with(ingestor, address, options)
                    .with_context(|| format!("cannot listen on {address}"))?;
                tracing::info!(port = app.port(), "serving on {address}");
                eprintln!("listening on http://{address} (Ctrl-C to stop); GraphiQL at http://{address}/graphql");
                if store
                    .api_keys()
                    .await
                    .context("cannot read the API keys")?
                    .is_empty()
                {
                    eprintln!("no API key yet: create one with `patron keys create --role admin --name <you>`");
                }
                for (name, err) in crate::segmentation::unreadable_rules(&store)
                    .await
                    .context("cannot read the saved segments")?
                {
                    eprintln!(
                        "warning: segment {name:?} is skipped, its saved rule does not read: {}",
                        err.message
                    );
                }
                let served = app.run_until_stopped().await.context("the server failed");
                // Every request in flight has been answered: fold the WAL back and close.
                store.close().await;
                served
            }
            Command::Import {
                ref file,
                ref mapping,
                batch,
                json,
            } => {
                let ingestor = self.ingestor().await?;
                import(&ingestor, file, mapping.as_deref(), batch, json).await
            }
            Command::Demo {
                people,
                touchpoints,
                seed,
                batch,
                ref write,
                json,
            } => {
                anyhow::ensure!(people > 0, "--people must be at least 1");
                anyhow::ensure!(touchpoints >= 1.0, "--touchpoints must be at least 1");
                let config = DemoConfig {
                    people,
                    touchpoints_per_person: touchpoints,
                    seed,
                    ..DemoConfig::default()
                };
                match write {
                    Some(path) => write_demo(&config, path),
                    None => {
                        let ingestor = self.ingestor().await?.with_actor("demo");
                        demo(&ingestor, &config, batch, json, &self.scoring_rules()?).await
                    }
                }
            }
            Command::Quarantine {
                after,
                limit,
                expire,
            } => {
                let store = open(&self.database_url).await?;
                if expire {
                    let expired =
                        privacy::expire_quarantine(&store, self.quarantine_retention_days)
                            .await
                            .context("cannot expire the quarantine")?;
                    eprintln!(
                        "expired {expired} records older than {} days",
                        self.quarantine_retention_days
                    );
                }
                for record in store
                    .quarantined(after, limit)
                    .await
                    .context("cannot read the quarantine")?
                {
                    println!("{}", serde_json::to_string(&record)?);
                }
                store.close().await;
                Ok(())
            }
            Command::Log { after, limit } => {
                let ingestor = self.ingestor().await?;
                log(&ingestor, after, limit).await
            }
            Command::Erase {
                customer,
                ref identifier,
                ref reason,
                ref actor,
                json,
            } => {
                let ingestor = self.ingestor().await?;
                erase(
                    &ingestor,
                    customer,
                    identifier.as_deref(),
                    reason,
                    actor,
                    json,
                )
                .await
            }
            Command::Person(ref command) => {
                let rules = self.scoring_rules()?;
                let ingestor = self.ingestor().await?;
                let done = crate::access_export::command::person(
                    &ingestor,
                    &rules.tiers.currency,
                    command,
                )
                .await;
                ingestor.store().close().await;
                done
            }
            Command::Correct { ref correction } => {
                let rules = self.scoring_rules()?;
                let ingestor = self.ingestor().await?;
                let done = crate::correction::command::correct(
                    &ingestor,
                    &rules.tiers.currency,
                    correction,
                )
                .await;
                ingestor.store().close().await;
                done
            }
            Command::Review { ref command } => {
                let scoring = self.scoring_rules()?;
                let ingestor = self.ingestor().await?;
                let done =
                    crate::correction::command::review(&ingestor, &scoring.tiers.currency, command)
                        .await;
                ingestor.store().close().await;
                done
            }
            Command::Rules { ref command } => {
                let scoring = self.scoring_rules()?;
                let ingestor = self.ingestor().await?;
                let done =
                    crate::correction::command::rules(&ingestor, &scoring.tiers.currency, command)
                        .await;
                ingestor.store().close().await;
                done
            }
            Command::Explain {
                ref identifier,
                json,
            } => {
                let ingestor = self.ingestor().await?;
                let done = crate::correction::command::explain(&ingestor, identifier, json).await;
                ingestor.store().close().await;
                done
            }
            Command::Score { as_of, json } => {
                let rules = self.scoring_rules()?;
                let as_of = as_of.map_or_else(chrono::Utc::now, |t| t.to_utc());
                score(&self.database_url, &rules, as_of, json).await
            }
            Command::Analytics {
                ref analysis,
                ref output,
            } => {
                let rules = self.rules()?;
                let store = open(&self.database_url).await?;
                let done = analytics::command::run(&store, &rules, analysis, output).await;
                store.close().await;
                done
            }
            Command::Segment(SegmentCommand::Save {
                ref name,
                ref rule,
                ref purpose,
            }) => {
                anyhow::ensure!(!name.trim().is_empty(), "a segment needs a name");
                Rule::parse(rule).map_err(|e| anyhow::anyhow!("the rule is invalid: {e}"))?;
                let purpose = purpose.as_deref().map(consent_purpose).transpose()?;
                let store = open(&self.database_url).await?;
                let created = store
                    .save_segment_for(name, rule, purpose, chrono::Utc::now())
                    .await
                    .context("cannot save the segment")?;
                store.close().await;
                println!(
                    "{} segment {name}; its members follow at the next refresh",
                    if created { "created" } else { "updated" }
                );
                Ok(())
            }
            Command::Segment(SegmentCommand::Export {
                ref name,
                ref purpose,
            }) => {
                let purpose = purpose.as_deref().map(consent_purpose).transpose()?;
                let store = open(&self.database_url).await?;
                let exported = export_segment(&store, name, purpose).await;
                store.close().await;
                exported
            }
            Command::Segment(SegmentCommand::Delete { ref name }) => {
                let store = open(&self.database_url).await?;
                let deleted = store
                    .delete_segment(name)
                    .await
                    .context("cannot delete the segment")?;
                store.close().await;
                anyhow::ensure!(deleted, "no segment named {name}");
                println!("deleted segment {name}");
                Ok(())
            }
            Command::Segment(SegmentCommand::List) => {
                let store = open(&self.database_url).await?;
                for segment in store.segments().await.context("cannot list the segments")? {
                    println!("{}", serde_json::to_string(&segment)?);
                }
                store.close().await;
                Ok(())
            }
            Command::Segment(SegmentCommand::Members { ref name }) => {
                let store = open(&self.database_url).await?;
                for customer in store
                    .segment_members(name)
                    .await
                    .context("cannot read the members")?
                {
                    println!("{customer}");
                }
                store.close().await;
                Ok(())
            }
            Command::Segment(SegmentCommand::Refresh) => {
                let rules = self.scoring_rules()?;
                let store = open(&self.database_url).await?;
                catch_up_profiles(&store).await?;
                let refreshed =
                    segmentation::refresh(&store, &rules.tiers.currency, chrono::Utc::now())
                        .await
                        .context("cannot refresh the segments")?;
                store.close().await;
                for r in refreshed {
                    println!("{}", serde_json::to_string(&r)?);
                }
                Ok(())
            }
            Command::Segment(SegmentCommand::Preview { ref rule, json }) => {
                let rule =
                    Rule::parse(rule).map_err(|e| anyhow::anyhow!("the rule is invalid: {e}"))?;
                let rules = self.scoring_rules()?;
                let store = open(&self.database_url).await?;
                catch_up_profiles(&store).await?;
                let preview =
                    segmentation::preview(&store, &rule, &rules.tiers.currency, chrono::Utc::now())
                        .await
                        .context("cannot judge the customers")?;
                store.close().await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&preview)?);
                } else {
                    println!(
                        "{} of {} customers match ({:.1} ms)",
                        preview.matched, preview.customers, preview.evaluation_ms
                    );
                }
                Ok(())
            }
            Command::Keys(KeysCommand::Master) => {
                println!("{}", MasterKey::generate());
                Ok(())
            }
            Command::Keys(KeysCommand::Create { role, ref name }) => {
                let store = open(&self.database_url).await?;
                let secret = crate::server::new_secret();
                let key = store
                    .create_api_key(
                        name,
                        role.as_str(),
                        &crate::server::secret_hash(&secret),
                        chrono::Utc::now(),
                    )
                    .await
                    .context("cannot store the key")?;
                store.close().await;
                eprintln!(
                    "created {} key {:?} ({}); its secret, shown this once:",
                    key.role, key.name, key.id
                );
                println!("{secret}");
                Ok(())
            }
            Command::Keys(KeysCommand::List) => {
                let store = open(&self.database_url).await?;
                let keys = store.api_keys().await.context("cannot read the keys")?;
                store.close().await;
                for key in keys {
                    let state = key.revoked_at.map_or("live".to_owned(), |at| {
                        format!("revoked {}", at.to_rfc3339())
                    });
                    println!(
                        "{}  {:<8}  {:<24}  created {}  {state}",
                        key.id,
                        key.role,
                        key.name,
                        key.created_at.to_rfc3339()
                    );
                }
                Ok(())
            }
            Command::Keys(KeysCommand::Revoke { id }) => {
                let store = open(&self.database_url).await?;
                let revoked = store
                    .revoke_api_key(id, chrono::Utc::now())
                    .await
                    .context("cannot revoke the key")?;
                store.close().await;
                anyhow::ensure!(revoked, "no live key {id}");
                eprintln!("revoked {id}");
                Ok(())
            }
            Command::Bench(BenchCommand::Store(args)) => bench_store(args).await,
            Command::Bench(BenchCommand::Http {
                ref postgres_url,
                people,
                batch,
                clients,
            }) => bench_http(postgres_url.as_deref(), people, batch, clients).await,
            Command::Bench(BenchCommand::Read { read_batch, json }) => {
                bench_read(&self.database_url, read_batch, json).await
            }
            Command::Bench(BenchCommand::Membership { customers }) => {
                bench_membership(&self.database_url, customers).await
            }
            Command::Bench(BenchCommand::Lag {
                ref postgres_url,
                rate,
                batch,
                seconds,
            }) => {
                let scratch = ScratchStore::create(postgres_url.as_deref(), None).await?;
                let report =
                    crate::bench::run_lag_bench(scratch.store.clone(), rate, batch, seconds).await;
                scratch.finish(false).await?;
                println!("{}", report?);
                Ok(())
            }
            Command::Bench(BenchCommand::Analytics { runs, json }) => {
                let rules = self.rules()?;
                let store = open(&self.database_url).await?;
                let report = crate::bench::run_analytics_bench(&store, &rules, runs).await;
                store.close().await;
                let report = report.context("the analytics benchmark failed")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Command::Bench(BenchCommand::Body { ref server, json }) => {
                let report = crate::bench::run_body_bench(server.clone())
                    .await
                    .context("the body benchmark failed")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Command::Bench(BenchCommand::Flood {
                ref postgres_url,
                people,
                rate,
                seconds,
                clients,
                json,
            }) => {
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
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Command::Bench(BenchCommand::Graphql {
                rate,
                page_rate,
                seconds,
                json,
            }) => {
                let ingestor = self.ingestor().await?;
                let store = ingestor.store().clone();
                let report = crate::bench::run_graphql_bench(ingestor, rate, page_rate, seconds)
                    .await
                    .context("the GraphQL benchmark failed")?;
                store.close().await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Command::Bench(BenchCommand::Corrections {
                pairs,
                ref url,
                ref key,
                json,
            }) => {
                let ingestor = self.ingestor().await?;
                let store = ingestor.store().clone();
                let target = url
                    .clone()
                    .zip(key.clone())
                    .map(|(url, key)| crate::bench::Target { url, key });
                let report = crate::bench::run_corrections_bench(ingestor, pairs, target)
                    .await
                    .context("the corrections benchmark failed")?;
                store.close().await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Command::Bench(BenchCommand::Soak {
                seconds,
                idle_seconds,
                window_seconds,
                subscribers,
                replay,
                json,
            }) => {
                anyhow::ensure!(
                    window_seconds > 0 && seconds > 0,
                    "--seconds and --window-seconds must be at least 1"
                );
                let report = crate::bench::soak::run_soak(crate::bench::soak::SoakConfig {
                    database_url: self.database_url.clone(),
                    binary: std::env::current_exe().context("cannot find this binary")?,
                    seconds,
                    idle_seconds,
                    window_seconds,
                    subscribers,
                    replay,
                })
                .await
                .context("the soak failed")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{report}");
                }
                Ok(())
            }
        }
    }
}

impl Cli {
    /// The scoring rules chosen on the command line, or the defaults.
    pub fn scoring_rules(&self) -> Result<ScoringRules> {
        self.scoring_rules
            .as_deref()
            .map_or_else(|| Ok(ScoringRules::default()), ScoringRules::load)
    }

    /// The identity rules chosen on the command line, or the built-in ones.
    pub fn rules(&self) -> Result<IdentityRules> {
        match &self.identity_rules {
            None => Ok(IdentityRules::default()),
            Some(path) => read_identity_rules(path),
        }
    }

    /// The store's connections as configured.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.read_connections,
            write_connections: self.write_connections,
            long_read_connections: self.analytics_connections,
            ..StoreOptions::default()
        }
    }

    /// An ingestor on the chosen store, rules and key.
    pub async fn ingestor(&self) -> Result<Ingestor> {
        let rules = self.rules()?;
        if let Some(key) = &self.identity_key {
            anyhow::ensure!(
                key.len() >= 16,
                "the identity key must be at least 16 bytes long"
            );
        }
        let master = self
            .master_key
            .as_deref()
            .map(MasterKey::parse)
            .transpose()
            .context("PATRON_MASTER_KEY (--master-key)")?;
        let store = EventStore::connect_with(&self.database_url, self.store_options())
            .await
            .with_context(|| {
                format!(
                    "cannot open the store at {}",
                    redact_url(&self.database_url)
                )
            })?;
        let ingestor = Ingestor::with_keys(
            store,
            rules,
            self.identity_key.as_deref().map(str::as_bytes),
            master,
        )
        .await
        .context("cannot read the keys kept in the store")?;
        Ok(ingestor.with_earliest_time(self.earliest_time))
    }
}

/// A time given as RFC 3339 with a zone, or as a date (midnight UTC).
fn parse_earliest_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    text.parse::<chrono::NaiveDate>()
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .ok_or_else(|| {
            format!("{text:?} is neither an RFC 3339 time with a zone nor a date (YYYY-MM-DD)")
        })
}

async fn import(
    ingestor: &Ingestor,
    file: &Path,
    mapping: Option<&Path>,
    batch: usize,
    json: bool,
) -> Result<()> {
    let mapping = mapping.map(Mapping::load).transpose()?;
    let ingestor = ingestor
        .clone()
        .with_actor(format!("import:{}", file.display()));
    let summary = import_file(&ingestor, file, mapping.as_ref(), batch).await?;
    ingestor.store().close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("records:        {}", summary.records);
    println!("accepted:       {}", summary.accepted);
    println!("duplicates:     {} (stored before)", summary.duplicates);
    println!(
        "rejected:       {} (kept in the quarantine: patron quarantine)",
        summary.rejected
    );
    println!("new customers:  {}", summary.new_customers);
    println!("merges:         {}", summary.merges);
    println!(
        "time:           {:.1} s ({:.0} records/s)",
        summary.seconds, summary.records_per_s
    );
    for r in &summary.first_rejections {
        println!("  line {}: {}: {}", r.line, r.field, r.reason);
    }
    if summary.rejected > summary.first_rejections.len() as u64 {
        println!(
            "  ... and {} more",
            summary.rejected - summary.first_rejections.len() as u64
        );
    }
    Ok(())
}

fn write_demo(config: &DemoConfig, path: &Path) -> Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut written = 0u64;
    let mut first = 0;
    while first < config.people {
        let count = 2_000.min(config.people - first);
        for r in generate_people(config, first, count) {
            writeln!(out, "{}", r.record)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written += 1;
        }
        first += count;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {written} records for {} people to {}",
        config.people,
        path.display()
    );
    Ok(())
}

async fn demo(
    ingestor: &Ingestor,
    config: &DemoConfig,
    batch: usize,
    json: bool,
    rules: &ScoringRules,
) -> Result<()> {
    let summary = run_demo(ingestor, config, batch)
        .await
        .context("loading the demo data set failed")?;
    // Bring the read models up to date, so that profiles, scores and segments answer at once.
    let store = ingestor.store();
    catch_up_profiles(store).await?;
    let scored = scoring::score(store, rules, chrono::Utc::now())
        .await
        .context("cannot score the customers")?;
    segmentation::refresh(store, &rules.tiers.currency, scored.as_of)
        .await
        .context("cannot refresh the segments")?;
    // A first key, so that the GraphQL API can be tried at once.
    let admin_key = if store
        .api_keys()
        .await
        .context("cannot read the keys")?
        .is_empty()
    {
        let secret = crate::server::new_secret();
        store
            .create_api_key(
                "demo-admin",
                patron_graphql::Role::Admin.as_str(),
                &crate::server::secret_hash(&secret),
                chrono::Utc::now(),
            )
            .await
            .context("cannot store an API key")?;
        Some(secret)
    } else {
        None
    };
    store.close().await;
    if let Some(secret) = &admin_key {
        eprintln!(
            "created the admin API key \"demo-admin\" (shown this once; `patron keys` manages keys):\n  {secret}\n\
             start the server with `patron serve`, open http://127.0.0.1:8080/graphql and send the header\n  \
             {{\"Authorization\": \"Bearer {secret}\"}}"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    if summary.accepted == 0 && summary.records > 0 {
        println!(
            "this data set was loaded before: all {} records are already stored (use --seed for another)",
            summary.records - summary.rejected
        );
        return Ok(());
    }
    println!("people:         {}", summary.scores.people);
    println!(
        "records:        {} ({} stored, {} refused on purpose)",
        summary.records, summary.accepted, summary.rejected
    );
    println!(
        "customers:      {} ({} merges while loading)",
        summary.scores.customers, summary.merges
    );
    println!(
        "precision:      {:.4} (pairs put in one customer that are one person)",
        summary.scores.precision
    );
    println!(
        "recall:         {:.4} (pairs of one person put in one customer)",
        summary.scores.recall
    );
    println!(
        "time:           {:.1} s ({:.0} records/s)",
        summary.seconds, summary.records_per_s
    );
    let line = |counts: &std::collections::BTreeMap<String, u64>| {
        counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("value tiers:    {}", line(&scored.by_tier));
    println!("stages:         {}", line(&scored.by_stage));
    if summary.broken_accepted + summary.sound_rejected > 0 {
        println!(
            "warning: {} broken records stored, {} sound records refused",
            summary.broken_accepted, summary.sound_rejected
        );
    }
    Ok(())
}

/// A count of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A count of at least 1 that fits 32 bits.
fn at_least_one_u32(text: &str) -> Result<u32, String> {
    at_least_one(text).and_then(|n| u32::try_from(n).map_err(|_| format!("{text} is too large")))
}

async fn open(url: &str) -> Result<EventStore> {
    EventStore::connect(url)
        .await
        .with_context(|| format!("cannot open the store at {}", redact_url(url)))
}

async fn status(url: &str, json: bool, catch_up: bool) -> Result<()> {
    let store = open(url).await?;
    let profiles = ProfileProjection::new(store.clone(), 20_000);
    if catch_up {
        profiles
            .catch_up()
            .await
            .context("cannot bring the profiles up to date")?;
    }
    let lag = profiles
        .lag()
        .await
        .context("cannot read the profiles' checkpoint")?;
    let stats = store
        .stats()
        .await
        .context("cannot read the log's counts")?;
    let (customers, merged, quarantined) = store
        .identity_counts()
        .await
        .context("cannot read the identity counts")?;
    if json {
        let mut value = serde_json::to_value(&stats)?;
        value["customers"] = customers.into();
        value["merged_customers"] = merged.into();
        value["quarantined"] = quarantined.into();
        value["projections"] = serde_json::json!({ PROFILES: lag });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("store:        {} ({})", redact_url(url), stats.backend);
        println!("events:       {}", stats.events);
        println!("streams:      {}", stats.streams);
        println!("head:         position {}", stats.head);
        println!("customers:    {customers} ({merged} merged into others)");
        println!("quarantined:  {quarantined} records");
        println!(
            "profiles:     at position {} ({} events behind, {} s)",
            lag.position, lag.events, lag.seconds
        );
    }
    store.close().await;
    Ok(())
}

async fn log(ingestor: &Ingestor, after: u64, limit: usize) -> Result<()> {
    let store = ingestor.store();
    let events = store
        .read_all(after, limit)
        .await
        .with_context(|| format!("cannot read the log after position {after}"))?;
    let events = Opener::new(store.clone(), ingestor.master_key().clone())
        .open(events)
        .await
        .context("cannot open the events' personal data: is PATRON_MASTER_KEY the right key?")?;
    for event in events {
        println!("{}", serde_json::to_string(&event)?);
    }
    store.close().await;
    Ok(())
}

async fn erase(
    ingestor: &Ingestor,
    customer: Option<CustomerId>,
    identifier: Option<&str>,
    reason: &str,
    actor: &str,
    json: bool,
) -> Result<()> {
    let customer = match (customer, identifier) {
        (Some(customer), _) => customer,
        (None, Some(identifier)) => {
            let (kind, value) = identifier
                .split_once('=')
                .context("--identifier takes KIND=VALUE, for example phone=13912340001")?;
            ingestor
                .customer_by_identifier(kind, value)
                .await
                .context("cannot look the identifier up")?
                .with_context(|| format!("no customer holds {kind} {value}"))?
        }
        (None, None) => {
            anyhow::bail!("name the customer: --customer ID or --identifier KIND=VALUE")
        }
    };
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
    let erasure = privacy::erase(ingestor, customer, actor, reason)
        .await
        .with_context(|| format!("cannot erase customer {customer}"))?;
    ingestor.store().close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&erasure)?);
    } else {
        println!("erased customer {}", erasure.customer);
        println!("keys destroyed:      {}", erasure.keys_destroyed.len());
        println!("identifiers removed: {}", erasure.identifiers_removed);
        println!(
            "quarantine removed:  {} records",
            erasure.quarantined_removed
        );
        println!("recorded at:         position {}", erasure.position);
    }
    Ok(())
}

/// The identity index, as `patron rebuild` names it.
const IDENTITY: &str = "identity";

/// A progress bar over the log for `what`.
fn log_bar(what: &str, head: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Rebuilds the identity index from the log.
async fn rebuild_identity(ingestor: &Ingestor, batch: usize) -> Result<()> {
    let bar = log_bar("rebuilding the identity index", 0);
    let started = std::time::Instant::now();
    let folded = correction::index::rebuild(ingestor, batch, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
    .context("cannot rebuild the identity index")?;
    bar.finish_and_clear();
    println!(
        "rebuilt the identity index up to position {} in {:.1} s: {} identifiers held, {} \
         merged customers, {} blocked values",
        folded.position,
        started.elapsed().as_secs_f64(),
        folded.index.holders.len(),
        folded.index.aliases.len(),
        folded.index.blocked.len()
    );
    ingestor.store().close().await;
    Ok(())
}

async fn rebuild(url: &str, projection: &str, batch: usize) -> Result<()> {
    anyhow::ensure!(
        projection == PROFILES,
        "no read model named {projection:?}; the read models are: {PROFILES}, {IDENTITY}"
    );
    let store = open(url).await?;
    let head = store.head().await.context("cannot read the log's head")?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rebuilding {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(projection.to_owned());
    let started = std::time::Instant::now();
    let reached = ProfileProjection::new(store.clone(), batch)
        .rebuild(|at, head| {
            bar.set_length(head);
            bar.set_position(at);
        })
        .await
        .with_context(|| format!("cannot rebuild {projection}"))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rebuilt {projection} up to position {reached} in {seconds:.1} s ({:.0} events/s)",
        reached as f64 / seconds.max(1e-9)
    );
    store.close().await;
    Ok(())
}

/// Folds the log again and compares it with the live profiles and the identity index.
async fn verify(ingestor: &Ingestor, batch: usize, json: bool) -> Result<()> {
    let store = ingestor.store();
    let bar = log_bar(
        "verifying profiles",
        store.head().await.context("cannot read the log's head")?,
    );
    let started = std::time::Instant::now();
    let found = ProfileProjection::new(store.clone(), batch)
        .verify(|at, head| {
            bar.set_length(head);
            bar.set_position(at);
        })
        .await
        .context("cannot verify the profiles")?;
    bar.finish_and_clear();
    let profiles_seconds = started.elapsed().as_secs_f64();
    let bar = log_bar("verifying the identity index", 0);
    let started = std::time::Instant::now();
    let identity = correction::index::verify(ingestor, batch, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
    .context("cannot verify the identity index")?;
    bar.finish_and_clear();
    store.close().await;
    if json {
        let mut value = serde_json::to_value(&found)?;
        if let Some(report) = value.as_object_mut() {
            report.insert("identity".into(), serde_json::to_value(&identity)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "verified {} profiles at position {} in {profiles_seconds:.1} s",
            found.profiles, found.position,
        );
        println!("different: {}", found.different);
        println!("missing:   {}", found.missing);
        println!("extra:     {}", found.extra);
        for d in &found.examples {
            println!("  {} {} {}", d.kind, d.customer, d.fields.join(", "));
        }
        println!(
            "verified the identity index at position {} in {:.1} s: {} identifiers held, {} \
             merged customers, {} blocked values",
            identity.position,
            started.elapsed().as_secs_f64(),
            identity.identifiers,
            identity.aliases,
            identity.blocked
        );
        println!("different: {}", identity.different);
        for d in &identity.examples {
            println!(
                "  {} {}: stored {}, log {}",
                d.table,
                d.key,
                d.stored.as_deref().unwrap_or("nothing"),
                d.folded.as_deref().unwrap_or("nothing")
            );
        }
    }
    anyhow::ensure!(
        found.is_clean(),
        "the live profiles differ from a fold of the log: `patron rebuild profiles` replaces them"
    );
    anyhow::ensure!(
        identity.is_clean(),
        "the identity index differs from a fold of the log: `patron rebuild identity` replaces it"
    );
    Ok(())
}

/// Brings the profiles up to the log's head.
async fn catch_up_profiles(store: &EventStore) -> Result<()> {
    ProfileProjection::new(store.clone(), 20_000)
        .catch_up()
        .await
        .context("cannot bring the profiles up to date")?;
    Ok(())
}

async fn score(
    url: &str,
    rules: &ScoringRules,
    as_of: chrono::DateTime<chrono::Utc>,
    json: bool,
) -> Result<()> {
    let store = open(url).await?;
    catch_up_profiles(&store).await?;
    let report = scoring::score(&store, rules, as_of)
        .await
        .context("cannot score the customers")?;
    let refreshed = segmentation::refresh(&store, &rules.tiers.currency, as_of)
        .await
        .context("cannot refresh the segments")?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scored {} customers as of {}",
            report.customers, report.as_of
        );
        println!("with orders in the window: {}", report.with_rfm);
        println!("stage transitions:         {}", report.transitions);
        for (title, counts) in [
            ("tier", &report.by_tier),
            ("stage", &report.by_stage),
            ("RFM segment", &report.by_rfm_segment),
            ("tag", &report.by_tag),
        ] {
            let line: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("by {title}: {}", line.join(", "));
        }
        for r in &refreshed {
            println!(
                "segment {}: {} members ({} entered, {} left)",
                r.name, r.members, r.entered, r.left
            );
        }
    }
    Ok(())
}

/// Scores the customers every hour, for as long as the process runs.
fn spawn_scoring(store: EventStore, rules: ScoringRules) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every.tick().await;
            // Scores are only as good as the profiles: bring them up to date first.
            if let Err(err) = ProfileProjection::new(store.clone(), 20_000)
                .catch_up()
                .await
            {
                tracing::warn!(error = %err, "scoring skipped: the profiles are not up to date");
                continue;
            }
            match scoring::score(&store, &rules, chrono::Utc::now()).await {
                Ok(report) => {
                    tracing::info!(
                        customers = report.customers,
                        transitions = report.transitions,
                        "customers scored"
                    );
                    if let Err(err) =
                        segmentation::refresh(&store, &rules.tiers.currency, report.as_of).await
                    {
                        tracing::warn!(error = %err, "segment refresh failed");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "scoring failed"),
            }
        }
    });
}

/// Expires the quarantine now and then every hour, for as long as the process runs.
fn spawn_quarantine_expiry(store: EventStore, days: u32) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every.tick().await;
            match privacy::expire_quarantine(&store, days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, days, "quarantined records expired"),
                Err(err) => tracing::warn!(error = %err, "quarantine expiry failed"),
            }
        }
    });
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

/// The consent purpose named `name`, checked.
fn consent_purpose(name: &str) -> Result<&str> {
    patron_graphql::backend::Purpose::parse(name)
        .map(|p| p.as_str())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown purpose {name:?}: expected marketing_sms, marketing_email, push or profiling"
            )
        })
}

/// Writes a segment's members as CSV to standard output: those who consent to `purpose`, when
/// given, with their tier and stage.
async fn export_segment(store: &EventStore, name: &str, purpose: Option<&str>) -> Result<()> {
    use patron_domain::touchpoint::ConsentPurpose;
    anyhow::ensure!(
        store
            .segment_rules()
            .await
            .context("cannot read the segments")?
            .iter()
            .any(|(n, _)| n == name),
        "no segment named {name}"
    );
    let purpose: Option<ConsentPurpose> = purpose
        .map(|p| serde_json::from_value(serde_json::Value::String(p.to_owned())))
        .transpose()
        .context("the purpose")?;
    let mut writer = csv::Writer::from_writer(std::io::stdout().lock());
    writer.write_record(["customer_id", "tier", "stage"])?;
    let mut after = None;
    let (mut written, mut left_out) = (0u64, 0u64);
    loop {
        let page = store
            .segment_member_page(name, after, 1_000)
            .await
            .context("cannot read the members")?;
        let Some(last) = page.last().copied() else {
            break;
        };
        after = Some(last);
        let scores = store
            .scores_of(&page)
            .await
            .context("cannot read the scores")?;
        let profiles = store
            .load_profiles(crate::store::projection::ProfileTable::Live, &page)
            .await
            .context("cannot read the profiles")?;
        for customer in page {
            if let Some(purpose) = purpose {
                let consents = profiles
                    .get(&customer)
                    .and_then(|state| {
                        serde_json::from_str::<patron_projections::profile::Profile>(state).ok()
                    })
                    .and_then(|p| p.consent.get(&purpose).map(|c| c.granted))
                    .unwrap_or(false);
                if !consents {
                    left_out += 1;
                    continue;
                }
            }
            let score = scores.get(&customer);
            writer.write_record([
                customer.to_string(),
                score.map(|s| s.tier.clone()).unwrap_or_default(),
                score.map(|s| s.stage.clone()).unwrap_or_default(),
            ])?;
            written += 1;
        }
    }
    writer.flush()?;
    eprintln!("{written} customers exported; {left_out} left out without consent");
    Ok(())
}

async fn bench_membership(url: &str, customers: usize) -> Result<()> {
    use patron_projections::profile::Profile;
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
        .all_profiles(crate::store::projection::ProfileTable::Live)
        .await?;
    let mut timings = Vec::with_capacity(customers);
    for row in rows
        .iter()
        .filter(|r| r.merged_into.is_none())
        .take(customers)
    {
        let profile: Profile = serde_json::from_str(&row.state)?;
        let one: HashMap<_, _> = [(row.customer, profile)].into();
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

/// Reads an identity-rules file (TOML), naming the file in any error.
pub fn read_identity_rules(path: &std::path::Path) -> Result<IdentityRules> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the identity rules {}", path.display()))?;
    let file: RulesFile = toml::from_str(&text)
        .with_context(|| format!("the identity rules {} are invalid", path.display()))?;
    IdentityRules::from_file(file)
        .with_context(|| format!("the identity rules {} are invalid", path.display()))
}
