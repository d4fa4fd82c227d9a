//! `patron bench corrections`: identity corrections by hand through GraphQL on a loaded store.
//! The customers with the most orders are merged in pairs, one request at a time, each answered
//! with both customers' profiles and segments; then each merge is undone the same way, which
//! leaves the customers as they were (the corrections stay in the log).

use std::time::{Duration, Instant};

use anyhow::Context;
use patron_domain::customer::CustomerId;
use serde::Serialize;
use serde_json::{json, Value};

use super::{bar, Latencies};
use crate::ingest::Ingestor;
use crate::store::projection::ProfileTable;

/// The merge, answered with both customers as corrected.
const MERGE: &str = "mutation($survivor: ID!, $absorbed: ID!) { mergeCustomers(survivor: \
    $survivor, absorbed: $absorbed, reason: \"bench\") { applied customers { id orders tier \
    segments } } }";

/// The undone merge, answered the same way.
const UNDO: &str = "mutation($customer: ID!) { undoMerge(customer: $customer, reason: \"bench\") \
    { applied touchpointsMoved customers { id orders tier segments } } }";

/// What `patron bench corrections` measured.
#[derive(Clone, Debug, Serialize)]
pub struct CorrectionsBenchReport {
    /// Live customers in the store.
    pub customers: u64,
    /// Pairs merged and taken apart again.
    pub pairs: usize,
    /// `mergeCustomers`, one at a time.
    pub merge: Latencies,
    /// `undoMerge` of each, one at a time.
    pub undo: Latencies,
}

impl std::fmt::Display for CorrectionsBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "customers:      {}", self.customers)?;
        writeln!(f, "pairs:          {}", self.pairs)?;
        for (name, l) in [("mergeCustomers", &self.merge), ("undoMerge", &self.undo)] {
            writeln!(
                f,
                "{name}: {} requests, {} errors; p50 {:.2} ms, p95 {:.2} ms, max {:.1} ms",
                l.requests, l.errors, l.p50_ms, l.p95_ms, l.max_ms
            )?;
        }
        Ok(())
    }
}

/// A running server to send the corrections to instead: its GraphQL address and an operator
/// key's secret (to compare two builds side by side, each serving a copy of one store).
#[derive(Clone, Debug)]
pub struct Target {
    /// The GraphQL address, `http://host:port/graphql`.
    pub url: String,
    /// An operator key's secret.
    pub key: String,
}

/// Merges the `pairs` pairs of customers with the most orders in the store of `ingestor`
/// through GraphQL, one request at a time, then undoes each merge: on the store served on a free
/// port, or on the server `target` names.
pub async fn run_corrections_bench(
    ingestor: Ingestor,
    pairs: usize,
    target: Option<Target>,
) -> anyhow::Result<CorrectionsBenchReport> {
    let store = ingestor.store().clone();
    let customers = store
        .live_customer_count()
        .await
        .context("cannot count the customers")?;
    let mut by_orders: Vec<(u64, CustomerId)> = Vec::new();
    for (customer, merged_into, profile) in store
        .read_all_profiles(ProfileTable::Live)
        .await
        .context("cannot read the profiles")?
    {
        if merged_into.is_none() && !profile.erased {
            by_orders.push((profile.orders, customer));
        }
    }
    by_orders.sort_by(|a, b| b.cmp(a));
    let chosen: Vec<CustomerId> = by_orders.iter().take(pairs * 2).map(|(_, c)| *c).collect();
    anyhow::ensure!(
        chosen.len() == pairs * 2,
        "the store has {} live customers; {pairs} pairs need {}: load data first (patron demo)",
        chosen.len(),
        pairs * 2
    );
    let (url, secret, served) = match target {
        Some(target) => (target.url, target.key, None),
        None => {
            let served = super::Served::start(ingestor, "bench:operator", "operator").await?;
            (served.url.clone(), served.secret.clone(), Some(served))
        }
    };
    let client = reqwest::Client::new();
    let call = |query: &'static str, variables: Value| {
        let request = client
            .post(&url)
            .bearer_auth(&secret)
            .json(&json!({"query": query, "variables": variables}));
        async move {
            let sent = Instant::now();
            let answer: Option<Value> = match request.send().await {
                Ok(response) if response.status().is_success() => response.json().await.ok(),
                _ => None,
            };
            let applied = answer.as_ref().is_some_and(|a| {
                a.get("errors").is_none()
                    && a["data"]
                        .as_object()
                        .and_then(|d| d.values().next())
                        .is_some_and(|r| r["applied"] == true)
            });
            (sent.elapsed(), applied)
        }
    };
    let mut merges = Vec::with_capacity(pairs);
    let mut merge_errors = 0;
    let progress = bar(pairs as u64, "mergeCustomers");
    for pair in chosen.chunks(2) {
        let vars = json!({"survivor": pair[0].to_string(), "absorbed": pair[1].to_string()});
        let (took, applied) = call(MERGE, vars).await;
        merges.push(took);
        merge_errors += u64::from(!applied);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let mut undos: Vec<Duration> = Vec::with_capacity(pairs);
    let mut undo_errors = 0;
    let progress = bar(pairs as u64, "undoMerge");
    for pair in chosen.chunks(2) {
        let (took, applied) = call(UNDO, json!({"customer": pair[1].to_string()})).await;
        undos.push(took);
        undo_errors += u64::from(!applied);
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(served) = served {
        served.stop().await?;
    }
    Ok(CorrectionsBenchReport {
        customers,
        pairs,
        merge: Latencies::of(pairs as u64, merge_errors, merges),
        undo: Latencies::of(pairs as u64, undo_errors, undos),
    })
}
