//! Segments over the whole customer base: previewing a rule (how many customers it selects,
//! without saving anything), refreshing the saved segments' members, and keeping the members
//! current as events change profiles; entries and exits are logged. All judge the profiles with
//! the last scoring run's scores and tags.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_projections::profile::Profile;
use patron_projections::segment::{Rule, RuleError, Subject};
use serde::Serialize;

use crate::population::Population;
use crate::projection::{
    Announcement, Announcer, ProfileObserver, ProfileProjection, ProjectionError,
};
use crate::store::segments::MembershipChange;
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

/// What a refresh did to one saved segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refreshed {
    /// The segment.
    pub name: String,
    /// Its members now.
    pub members: u64,
    /// Customers who entered.
    pub entered: u64,
    /// Customers who left.
    pub left: u64,
}

/// Judges every live, not erased customer against `rule` as of `as_of`, counting spend in
/// `currency`.
pub async fn preview(
    store: &EventStore,
    rule: &Rule,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Preview, ProjectionError> {
    let population = Population::load(store).await?;
    let started = Instant::now();
    let matched = population.judge(rule, currency, as_of);
    Ok(Preview {
        rule: rule.text().to_owned(),
        customers: population.len() as u64,
        matched: matched.len() as u64,
        examples: matched.iter().take(20).copied().collect(),
        evaluation_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The saved segments whose rules do not read (saved by another version, or stored past the
/// rule language's bounds), each with why; each is logged as a warning. They are skipped
/// whenever members are judged, so they never stop the server.
pub async fn unreadable_rules(
    store: &EventStore,
) -> Result<Vec<(String, RuleError)>, crate::store::StoreError> {
    let mut unreadable = Vec::new();
    for (name, rule) in store.segment_rules().await? {
        if let Err(err) = Rule::parse_judged(&rule) {
            tracing::warn!(segment = %name, error = %err.message, "a saved rule does not read; the segment is skipped");
            unreadable.push((name, err));
        }
    }
    Ok(unreadable)
}

/// Refreshes every saved segment as of `as_of`: sets its members to the customers its rule
/// selects now and logs who entered and who left. A saved rule that no longer reads (saved by
/// another version) is skipped with a warning.
#[tracing::instrument(name = "segments.refresh", skip(store))]
pub async fn refresh(
    store: &EventStore,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Vec<Refreshed>, ProjectionError> {
    let saved = store.segment_rules().await?;
    if saved.is_empty() {
        return Ok(Vec::new());
    }
    let population = Population::load(store).await?;
    let mut refreshed = Vec::with_capacity(saved.len());
    for (name, rule) in saved {
        let rule = match Rule::parse_judged(&rule) {
            Ok(rule) => rule,
            Err(err) => {
                tracing::warn!(segment = %name, error = %err, "a saved rule does not read; skipped");
                continue;
            }
        };
        refreshed.push(refresh_one(store, &population, &name, &rule, currency, as_of).await?);
    }
    Ok(refreshed)
}

/// Refreshes one saved segment over `population` as of `as_of`: sets its members to the
/// customers `rule` selects and logs who entered and who left.
pub async fn refresh_one(
    store: &EventStore,
    population: &Population,
    name: &str,
    rule: &Rule,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Refreshed, ProjectionError> {
    let members: HashSet<CustomerId> = population
        .judge(rule, currency, as_of)
        .into_iter()
        .collect();
    let changes = store.set_segment_members(name, &members, as_of).await?;
    let entered = changes.iter().filter(|c| c.entered).count() as u64;
    Ok(Refreshed {
        name: name.to_owned(),
        members: members.len() as u64,
        entered,
        left: changes.len() as u64 - entered,
    })
}

/// Keeps the saved segments' memberships of customers whose profiles just changed current:
/// judges each against every saved rule as of `as_of` (with their last scores and tags) and
/// records who entered and who left. A customer merged away or erased leaves every segment.
#[tracing::instrument(name = "segments.follow", skip_all, fields(customers = profiles.len()))]
pub async fn follow_changes(
    store: &EventStore,
    profiles: &HashMap<CustomerId, Profile>,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Vec<MembershipChange>, ProjectionError> {
    if profiles.is_empty() {
        return Ok(Vec::new());
    }
    let customers: Vec<CustomerId> = profiles.keys().copied().collect();
    let judge =
        |rules: &[(String, String)],
         standings: &HashMap<CustomerId, crate::store::segments::Standing>| {
            let rules: Vec<(&String, Rule)> = rules
                .iter()
                .filter_map(|(name, rule)| Rule::parse_judged(rule).ok().map(|rule| (name, rule)))
                .collect();
            let no_tags = Vec::new();
            let nobody = Default::default();
            let mut changes = Vec::new();
            for (customer, profile) in profiles {
                let live = profile.merged_into.is_none() && !profile.erased;
                let standing: &crate::store::segments::Standing =
                    standings.get(customer).unwrap_or(&nobody);
                let score = standing.scores.as_ref();
                let tags: BTreeSet<String> = score
                    .map_or(&no_tags, |s| &s.tags)
                    .iter()
                    .cloned()
                    .collect();
                let subject = Subject {
                    profile,
                    stage: score.map(|s| s.stage.as_str()),
                    tier: score.map(|s| s.tier.as_str()),
                    rfm_segment: score.and_then(|s| s.rfm_segment.as_deref()),
                    rfm: score.and_then(|s| s.rfm),
                    tags: &tags,
                    currency,
                    as_of,
                };
                let current = &standing.memberships;
                for (name, rule) in &rules {
                    let belongs = live && rule.matches(&subject);
                    if belongs != current.contains(*name) {
                        changes.push(MembershipChange {
                            segment: (*name).clone(),
                            customer: *customer,
                            entered: belongs,
                        });
                    }
                }
            }
            changes
        };
    Ok(store.judge_memberships(&customers, as_of, judge).await?)
}

/// Keeps the saved segments' memberships of the customers each batch of live profiles touches
/// current, judging spend in its currency, and announces who entered and left.
#[derive(Debug)]
struct SegmentJudge {
    store: EventStore,
    currency: String,
}

#[async_trait::async_trait]
impl ProfileObserver for SegmentJudge {
    async fn committed(
        &self,
        profiles: &HashMap<CustomerId, Profile>,
        _: patron_domain::Position,
        announce: &Announcer<'_>,
    ) {
        self.settle(profiles, announce).await;
    }

    async fn settle(&self, profiles: &HashMap<CustomerId, Profile>, announce: &Announcer<'_>) {
        // The rows are committed; a membership update that fails is made good by the next
        // refresh.
        let at = Utc::now();
        match follow_changes(&self.store, profiles, &self.currency, at).await {
            Ok(changes) => announce.send(changes.into_iter().map(|c| Announcement::Membership {
                segment: c.segment,
                customer: c.customer,
                entered: c.entered,
                at,
            })),
            Err(err) => {
                tracing::warn!(error = %err, "segment memberships not updated for a batch")
            }
        }
    }
}

impl ProfileProjection {
    /// Also keeps the saved segments' memberships of the customers each batch touches current
    /// (spend counted in `currency`), as the server does.
    pub fn with_segments(self, currency: impl Into<String>) -> Self {
        let judge = SegmentJudge {
            store: self.store().clone(),
            currency: currency.into(),
        };
        self.observed_by(std::sync::Arc::new(judge))
    }
}
