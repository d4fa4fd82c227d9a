//! Segments over the whole customer base: previewing a rule (how many customers it selects,
//! without saving anything), from the profiles and the last scoring run's scores and tags.

use std::collections::BTreeSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_projections::profile::Profile;
use patron_projections::segment::{Rule, Subject};
use serde::Serialize;

use crate::projection::ProjectionError;
use crate::store::projection::ProfileTable;
use crate::store::EventStore;

/// What a preview found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preview {
    /// The rule as written.
    pub rule: String,
    /// Live customers judged.
    pub customers: u64,
    /// Of them, those the rule selects.
    pub matched: u64,
    /// Up to 20 of them, as examples.
    pub examples: Vec<CustomerId>,
    /// Milliseconds spent judging (after loading).
    pub evaluation_ms: f64,
}

/// Judges every live, not erased customer against `rule` as of `as_of`, counting spend in
/// `currency`.
pub async fn preview(
    store: &EventStore,
    rule: &Rule,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Preview, ProjectionError> {
    let scores = store.all_scores().await?;
    let tags = store.all_tags().await?;
    let none = BTreeSet::new();
    let mut profiles: Vec<(CustomerId, Profile)> = Vec::new();
    for row in store.all_profiles(ProfileTable::Live).await? {
        if row.merged_into.is_some() {
            continue;
        }
        let profile: Profile =
            serde_json::from_str(&row.state).map_err(|e| ProjectionError::Row {
                customer: row.customer,
                reason: e.to_string(),
            })?;
        if !profile.erased {
            profiles.push((row.customer, profile));
        }
    }
    let started = Instant::now();
    let mut matched = 0;
    let mut examples = Vec::new();
    for (customer, profile) in &profiles {
        let score = scores.get(customer);
        let subject = Subject {
            profile,
            stage: score.map(|s| s.stage.as_str()),
            tier: score.map(|s| s.tier.as_str()),
            rfm_segment: score.and_then(|s| s.rfm_segment.as_deref()),
            rfm: score.and_then(|s| s.rfm),
            tags: tags.get(customer).unwrap_or(&none),
            currency,
            as_of,
        };
        if rule.matches(&subject) {
            matched += 1;
            if examples.len() < 20 {
                examples.push(*customer);
            }
        }
    }
    Ok(Preview {
        rule: rule.text().to_owned(),
        customers: profiles.len() as u64,
        matched,
        examples,
        evaluation_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}
