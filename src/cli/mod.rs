//! The `patron` command line: the options every command shares ([`Cli`]), the commands
//! ([`Command`]), and one module per group of commands.

mod bench;
mod data;
mod keys;
mod segments;
mod serve;
mod store;

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use patron_domain::customer::CustomerId;
use patron_domain::identity::{IdentityRules, RulesFile};
use patron_domain::privacy::MasterKey;

pub use bench::{BenchCommand, StoreBenchArgs};
pub use keys::KeysCommand;
pub use segments::SegmentCommand;
pub use serve::ServeArgs;

use crate::analytics::{
    self,
    command::{AnalyticsCommand, Output},
};
use crate::ingest::Ingestor;
use crate::scoring::ScoringRules;
use crate::store::{redact_url, EventStore, StoreOptions};
use store::{catch_up_profiles, IDENTITY};

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
    Serve(ServeArgs),
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

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<()> {
        let cli = &self;
        match &self.command {
            Command::Status { json, catch_up } => {
                store::status(&cli.database_url, *json, *catch_up).await
            }
            Command::Rebuild { projection, batch } if projection == IDENTITY => {
                store::rebuild_identity(&cli.ingestor().await?, *batch).await
            }
            Command::Rebuild { projection, batch } => {
                store::rebuild(&cli.database_url, projection, *batch).await
            }
            Command::Verify { batch, json } => {
                store::verify(&cli.ingestor().await?, *batch, *json).await
            }
            Command::Serve(args) => serve::serve(cli, args).await,
            Command::Import {
                file,
                mapping,
                batch,
                json,
            } => {
                let ingestor = cli.ingestor().await?;
                data::import(&ingestor, file, mapping.as_deref(), *batch, *json).await
            }
            Command::Demo {
                people,
                touchpoints,
                seed,
                batch,
                write,
                json,
            } => {
                data::demo_command(
                    cli,
                    *people,
                    *touchpoints,
                    *seed,
                    *batch,
                    write.as_ref(),
                    *json,
                )
                .await
            }
            Command::Quarantine {
                after,
                limit,
                expire,
            } => {
                store::quarantine(
                    &cli.database_url,
                    *after,
                    *limit,
                    *expire,
                    cli.quarantine_retention_days,
                )
                .await
            }
            Command::Log { after, limit } => {
                store::log(&cli.ingestor().await?, *after, *limit).await
            }
            Command::Erase {
                customer,
                identifier,
                reason,
                actor,
                json,
            } => {
                let ingestor = cli.ingestor().await?;
                store::erase(
                    &ingestor,
                    *customer,
                    identifier.as_deref(),
                    reason,
                    actor,
                    *json,
                )
                .await
            }
            Command::Person(command) => {
                let currency = cli.scoring_rules()?.tiers.currency;
                let ingestor = cli.ingestor().await?;
                let done =
                    crate::access_export::command::person(&ingestor, &currency, command).await;
                ingestor.store().close().await;
                done
            }
            Command::Correct { correction } => {
                let currency = cli.scoring_rules()?.tiers.currency;
                let ingestor = cli.ingestor().await?;
                let done =
                    crate::correction::command::correct(&ingestor, &currency, correction).await;
                ingestor.store().close().await;
                done
            }
            Command::Review { command } => {
                let currency = cli.scoring_rules()?.tiers.currency;
                let ingestor = cli.ingestor().await?;
                let done = crate::correction::command::review(&ingestor, &currency, command).await;
                ingestor.store().close().await;
                done
            }
            Command::Rules { command } => {
                let currency = cli.scoring_rules()?.tiers.currency;
                let ingestor = cli.ingestor().await?;
                let done = crate::correction::command::rules(&ingestor, &currency, command).await;
                ingestor.store().close().await;
                done
            }
            Command::Explain { identifier, json } => {
                let ingestor = cli.ingestor().await?;
                let done = crate::correction::command::explain(&ingestor, identifier, *json).await;
                ingestor.store().close().await;
                done
            }
            Command::Score { as_of, json } => {
                let rules = cli.scoring_rules()?;
                let as_of = as_of.map_or_else(chrono::Utc::now, |t| t.to_utc());
                data::score(&cli.database_url, &rules, as_of, *json).await
            }
            Command::Analytics { analysis, output } => {
                let rules = cli.rules()?;
                let store = open(&cli.database_url).await?;
                let done = analytics::command::run(&store, &rules, analysis, output).await;
                store.close().await;
                done
            }
            Command::Segment(command) => segments::run(cli, command.clone()).await,
            Command::Keys(command) => keys::run(cli, command.clone()).await,
            Command::Bench(command) => bench::run(cli, command.clone()).await,
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

/// A count of at least 1.
pub(super) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A count of at least 1 that fits 32 bits.
pub(super) fn at_least_one_u32(text: &str) -> Result<u32, String> {
    at_least_one(text).and_then(|n| u32::try_from(n).map_err(|_| format!("{text} is too large")))
}

pub(super) async fn open(url: &str) -> Result<EventStore> {
    EventStore::connect(url)
        .await
        .with_context(|| format!("cannot open the store at {}", redact_url(url)))
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
