//! Segments over the whole customer base: previewing a rule (how many customers it selects,
//! without saving anything), refreshing the saved segments' members, and keeping the members
//! current as events change profiles; entries and exits are logged. All judge the profiles with
//! the last scoring run's scores and tags.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_projections::profile::Profile;
use patron_projections::segment::{Rule, Subject};
use serde::Serialize;

use crate::projection::{live_profiles, ProjectionError};
use crate::store::scores::ScoreRow;
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

/// Every live, not erased customer with what rules judge them on.
struct Population {
    profiles: Vec<(CustomerId, Profile)>,
    scores: HashMap<CustomerId, ScoreRow>,
    tags: HashMap<CustomerId, BTreeSet<String>>,
    no_tags: BTreeSet<String>,
}

impl Population {
    async fn load(store: &EventStore) -> Result<Self, ProjectionError> {
        let scores = store.all_scores().await?;
        let tags = store.all_tags().await?;
        let profiles = live_profiles(store).await?;
        Ok(Self {
            profiles,
            scores,
            tags,
            no_tags: BTreeSet::new(),
        })
    }

    /// The customers `rule` selects, in profile order.
    fn judge(&self, rule: &Rule, currency: &str, as_of: DateTime<Utc>) -> Vec<CustomerId> {
        self.selected(Some(rule), currency, as_of)
            .map(|(customer, _)| *customer)
            .collect()
    }

    /// The customers and profiles `rule` selects (all without one), in customer order.
    fn selected<'a>(
        &'a self,
        rule: Option<&'a Rule>,
        currency: &'a str,
        as_of: DateTime<Utc>,
    ) -> impl Iterator<Item = &'a (CustomerId, Profile)> + 'a {
        let none = &self.no_tags;
        self.profiles.iter().filter(move |(customer, profile)| {
            let Some(rule) = rule else {
                return true;
            };
            let score = self.scores.get(customer);
            rule.matches(&Subject {
                profile,
                stage: score.map(|s| s.stage.as_str()),
                tier: score.map(|s| s.tier.as_str()),
                rfm_segment: score.and_then(|s| s.rfm_segment.as_deref()),
                rfm: score.and_then(|s| s.rfm),
                tags: self.tags.get(customer).unwrap_or(none),
                currency,
                as_of,
            })
        })
    }
}

/// How [`search`] orders the customers it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By customer id.
    Id,
    /// Most recently seen first.
    LastSeen,
    /// Most revenue in the currency first.
    Revenue,
    /// Most orders first.
    Orders,
}

/// Every live, not erased customer `rule` selects (all without one) as of `as_of`, in
/// `order` (ties by customer id).
pub async fn search(
    store: &EventStore,
    rule: Option<&Rule>,
    order: Order,
    currency: &str,
    as_of: DateTime<Utc>,
) -> Result<Vec<CustomerId>, ProjectionError> {
    let population = Population::load(store).await?;
    let mut found: Vec<&(CustomerId, Profile)> =
        population.selected(rule, currency, as_of).collect();
    let revenue = |p: &Profile| p.revenue.get(currency).copied().unwrap_or(0);
    match order {
        Order::Id => {}
        Order::LastSeen => found.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_seen)),
        Order::Revenue => found.sort_by_key(|(_, p)| std::cmp::Reverse(revenue(p))),
        Order::Orders => found.sort_by_key(|(_, p)| std::cmp::Reverse(p.orders)),
    }
    Ok(found.into_iter().map(|(customer, _)| *customer).collect())
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
        customers: population.profiles.len() as u64,
        matched: matched.len() as u64,
        examples: matched.iter().take(20).copied().collect(),
        evaluation_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
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
        let rule = match Rule::parse(&rule) {
            Ok(rule) => rule,
            Err(err) => {
                tracing::warn!(segment = %name, error = %err, "a saved rule does not read; skipped");
                continue;
            }
        };
        let members: HashSet<CustomerId> = population
            .judge(&rule, currency, as_of)
            .into_iter()
            .collect();
        let changes = store.set_segment_members(&name, &members, as_of).await?;
        let entered = changes.iter().filter(|c| c.entered).count() as u64;
        refreshed.push(Refreshed {
            name,
            members: members.len() as u64,
            entered,
            left: changes.len() as u64 - entered,
        });
    }
    Ok(refreshed)
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
    let rules: Vec<(String, Rule)> = store
        .segment_rules()
        .await?
        .into_iter()
        .filter_map(|(name, rule)| Rule::parse(&rule).ok().map(|rule| (name, rule)))
        .collect();
    if rules.is_empty() || profiles.is_empty() {
        return Ok(Vec::new());
    }
    let customers: Vec<CustomerId> = profiles.keys().copied().collect();
    let standings = store.standings(&customers).await?;
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
            if belongs != current.contains(name) {
                changes.push(MembershipChange {
                    segment: name.clone(),
                    customer: *customer,
                    entered: belongs,
                });
            }
        }
    }
    Ok(store.apply_membership_changes(&changes, as_of).await?)
}
