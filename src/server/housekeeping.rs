//! The server's hourly work: score the customers and refresh the segments, and expire the
//! quarantine. Each runs as a task the [`super::Application`] owns, so it stops with the
//! server (or when the server is dropped unstarted).

use tokio::task::JoinHandle;

use crate::privacy;
use crate::projection::ProfileProjection;
use crate::scoring::{self, ScoringRules};
use crate::segmentation;
use crate::store::EventStore;

/// How often the housekeeping runs.
const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the server does every hour while it runs.
#[derive(Clone, Debug)]
pub struct Housekeeping {
    /// The rules the customers are scored with and the segments judged by.
    pub scoring: ScoringRules,
    /// Quarantined records older than this many days lose their raw text.
    pub quarantine_retention_days: u32,
}

impl Housekeeping {
    /// Starts the tasks on `store`: the first quarantine expiry and scoring run at once.
    pub(super) fn start(self, store: &EventStore) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(scoring_every_hour(store.clone(), self.scoring)),
            tokio::spawn(quarantine_expiry_every_hour(
                store.clone(),
                self.quarantine_retention_days,
            )),
        ]
    }
}

/// Scores the customers every hour (the profiles brought up to date first), then refreshes
/// the segments in the scoring rules' currency.
async fn scoring_every_hour(store: EventStore, rules: ScoringRules) {
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
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
}

/// Expires the quarantine every hour.
async fn quarantine_expiry_every_hour(store: EventStore, days: u32) {
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
        match privacy::expire_quarantine(&store, days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, days, "quarantined records expired"),
            Err(err) => tracing::warn!(error = %err, "quarantine expiry failed"),
        }
    }
}
