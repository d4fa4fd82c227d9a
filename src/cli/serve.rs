//! `patron serve`: the HTTP server (GraphQL, `/v1/events`, the Segment-shaped endpoints,
//! health and metrics), with its hourly housekeeping.

use anyhow::{Context, Result};
use clap::Args;

use super::{at_least_one, Cli};
use crate::server::{Application, Housekeeping, ServerOptions};

/// What `patron serve` is asked.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on. GraphQL and `/v1/events` take API keys (`patron keys
    /// create`); the Segment-shaped endpoints take write keys (`--write-key`).
    #[arg(long, env = "PATRON_ADDRESS", default_value = "127.0.0.1:8080")]
    pub address: String,
    /// `/readyz` answers 503 while the profiles lag the log by more than this, seconds.
    #[arg(long, env = "PATRON_READY_LAG_SECONDS", default_value_t = crate::server::DEFAULT_READY_LAG_SECONDS)]
    pub ready_lag_seconds: i64,
    /// A write key accepted by the Segment-shaped endpoints (/v1/batch, /v1/track ...);
    /// repeat for several. Without one, those endpoints refuse every request.
    #[arg(
        long = "write-key",
        env = "PATRON_WRITE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub write_keys: Vec<String>,
    /// Analyses (GraphQL `analytics` fields) that run at once across all requests, each
    /// on a thread of its own; the default is half the processors, at least 1.
    #[arg(
        long,
        env = "PATRON_ANALYTICS_CONCURRENCY",
        default_value_t = crate::analytics::default_analytics_concurrency(),
        value_parser = at_least_one
    )]
    pub analytics_concurrency: usize,
    /// How long an analysis waits for its turn before it is refused with `BUSY`,
    /// milliseconds (0: only if a turn is free at once).
    #[arg(
        long,
        env = "PATRON_ANALYTICS_WAIT_MS",
        default_value_t = crate::analytics::DEFAULT_ANALYTICS_WAIT_MS
    )]
    pub analytics_wait_ms: u64,
    /// Identifier lookups (`customerByIdentifier`) each API key may make per hour, by
    /// role, counted per server process; roles left out keep their default, 0 refuses.
    #[arg(
        long = "lookup-budget",
        env = "PATRON_LOOKUP_BUDGET",
        default_value_t = patron_graphql::loader::LookupAllowance::default()
    )]
    pub lookup_budget: patron_graphql::loader::LookupAllowance,
}

/// Serves the store until stopped (Ctrl-C).
pub(super) async fn serve(cli: &Cli, args: &ServeArgs) -> Result<()> {
    let ingestor = cli.ingestor().await?.with_actor("http");
    let scoring = cli.scoring_rules()?;
    let store = ingestor.store().clone();
    let options = ServerOptions {
        currency: scoring.tiers.currency.clone(),
        write_keys: args.write_keys.clone(),
        ready_lag_seconds: args.ready_lag_seconds,
        analytics: crate::analytics::AnalyticsLimits {
            concurrency: args.analytics_concurrency,
            wait: std::time::Duration::from_millis(args.analytics_wait_ms),
        },
        lookup_budget: args.lookup_budget,
        housekeeping: Some(Housekeeping {
            scoring,
            quarantine_retention_days: cli.quarantine_retention_days,
        }),
        ..ServerOptions::default()
    };
    let address = &args.address;
    let app = Application::build_with(ingestor, address, options)
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(port = app.port(), "serving on {address}");
    eprintln!(
        "listening on http://{address} (Ctrl-C to stop); GraphiQL at http://{address}/graphql"
    );
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
