//! Scoring: the value tier, RFM scores and segment, lifecycle stage and tags of every live customer
//! as of a moment, from the profiles; and the lifecycle transitions since the last run.
//!
//! Scores depend on time as well as on events (a customer churns by not buying), so they are
//! computed by runs (`patron score`, and hourly in `patron serve`) rather than folded event by
//! event. The rules are in `patron-projections` (`value`, `lifecycle`).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_projections::lifecycle::LifecycleRules;
use patron_projections::tags::TagRules;
use patron_projections::value::{activity, score_rfm, RfmSegment, TierRules};
use serde::{Deserialize, Serialize};

use crate::projection::{live_profiles, ProjectionError};
use crate::store::scores::ScoreRow;
use crate::store::EventStore;

/// The rules a scoring run applies, from a TOML file or the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoringRules {
    /// Value tiers; their currency and window are also RFM's.
    pub tiers: TierRules,
    /// Lifecycle stages.
    pub lifecycle: LifecycleRules,
    /// Tags.
    pub tags: TagRules,
}

impl ScoringRules {
    /// Reads rules from a TOML file; what it leaves out keeps its default.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scoring rules {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("the scoring rules {} are invalid", path.display()))
    }
}

/// What a scoring run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScoringReport {
    /// The moment scored.
    pub as_of: DateTime<Utc>,
    /// Live customers scored.
    pub customers: u64,
    /// Of them, with an order in the window (and so RFM scores).
    pub with_rfm: u64,
    /// Lifecycle transitions recorded.
    pub transitions: u64,
    /// Customers per value tier.
    pub by_tier: BTreeMap<String, u64>,
    /// Customers per lifecycle stage.
    pub by_stage: BTreeMap<String, u64>,
    /// Customers per named RFM segment.
    pub by_rfm_segment: BTreeMap<String, u64>,
    /// Customers per tag.
    pub by_tag: BTreeMap<String, u64>,
}

fn name_of(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Scores every live, not erased customer as of `as_of`, replacing the previous scores and
/// recording each customer whose stage changed since the previous run.
#[tracing::instrument(name = "scoring.run", skip(store, rules))]
pub async fn score(
    store: &EventStore,
    rules: &ScoringRules,
    as_of: DateTime<Utc>,
) -> Result<ScoringReport, ProjectionError> {
    let profiles = live_profiles(store).await?;
    let tiers = &rules.tiers;
    let activities: Vec<(CustomerId, _)> = profiles
        .iter()
        .filter_map(|(c, p)| {
            activity(p, &tiers.currency, as_of, tiers.window_days).map(|a| (*c, a))
        })
        .collect();
    let rfm = score_rfm(&activities);
    let activity_of: std::collections::HashMap<CustomerId, _> = activities.into_iter().collect();

    let mut report = ScoringReport {
        as_of,
        ..ScoringReport::default()
    };
    let mut rows = Vec::with_capacity(profiles.len());
    for (customer, profile) in &profiles {
        let stage = name_of(&rules.lifecycle.stage(profile, as_of));
        let tier = tiers.tier(profile, as_of).to_owned();
        let scores = rfm.get(customer).copied();
        let segment = scores.map(|s| name_of(&RfmSegment::of(s)));
        let a = activity_of.get(customer);
        *report.by_tier.entry(tier.clone()).or_default() += 1;
        *report.by_stage.entry(stage.clone()).or_default() += 1;
        if let Some(segment) = &segment {
            *report.by_rfm_segment.entry(segment.clone()).or_default() += 1;
        }
        let tags: Vec<String> = rules.tags.tags(profile, as_of).into_iter().collect();
        for tag in &tags {
            *report.by_tag.entry(tag.clone()).or_default() += 1;
        }
        rows.push(ScoreRow {
            customer: *customer,
            recency_days: a.map(|a| a.recency_days),
            frequency: a.map_or(0, |a| i64::try_from(a.frequency).unwrap_or(i64::MAX)),
            monetary_minor: a.map_or(0, |a| a.monetary_minor),
            rfm: scores.map(|s| (s.r, s.f, s.m)),
            rfm_segment: segment,
            tier,
            stage,
            tags,
        });
    }
    report.customers = rows.len() as u64;
    report.with_rfm = rfm.len() as u64;
    report.transitions = store.write_scores(as_of, &rows).await?.len() as u64;
    store
        .put_setting(
            crate::population::SCORING_RUN_SETTING,
            &uuid::Uuid::now_v7().to_string(),
        )
        .await?;
    Ok(report)
}
