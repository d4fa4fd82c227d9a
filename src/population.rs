//! The customer base as segment rules see it: every live, not erased customer's profile with
//! the last scoring run's scores and tags. Loaded whole for a command ([`Population::load`]),
//! or kept in the server's memory ([`ResidentPopulation`]) and updated by the profile
//! projection as it commits, so that a rule over a million customers is judged without reading
//! a million profiles from the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::Position;
use patron_projections::profile::{touched, Profile};
use patron_projections::segment::{Rule, Subject};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock};

use crate::projection::{
    live_profiles, Announcer, ProfileObserver, ProfileProjection, ProjectionError, PROFILES,
};
use crate::store::projection::ProfileTable;
use crate::store::scores::ScoreRow;
use crate::store::EventStore;

/// The most events a resident population reads to catch up with profiles committed elsewhere;
/// past it, it reads the whole population again.
pub const CATCH_UP_LIMIT: u64 = 200_000;

/// The setting a scoring run stamps with an id of its own, so that resident copies of the
/// scores know when to read them again.
pub const SCORING_RUN_SETTING: &str = "scoring.run";

/// How a search orders the customers it finds.
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

/// Every live, not erased customer with what rules judge them on.
#[derive(Debug, Default)]
pub struct Population {
    /// The profile projection's checkpoint these profiles reflect.
    position: Position,
    profiles: BTreeMap<CustomerId, Profile>,
    scores: HashMap<CustomerId, ScoreRow>,
    tags: HashMap<CustomerId, BTreeSet<String>>,
    no_tags: BTreeSet<String>,
}

impl Population {
    /// Reads the population from the store.
    pub async fn load(store: &EventStore) -> Result<Self, ProjectionError> {
        let scores = store.all_scores().await?;
        let tags = store.all_tags().await?;
        // Read before the profiles: they are at least as new as it says.
        let position = store.checkpoint(PROFILES).await?;
        let profiles = live_profiles(store).await?.into_iter().collect();
        Ok(Self {
            position,
            profiles,
            scores,
            tags,
            no_tags: BTreeSet::new(),
        })
    }

    /// How many customers it holds.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether it holds no one.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Takes in profiles the projection just committed up to `position`: live ones are put
    /// in, customers merged away or erased are taken out.
    pub fn apply(&mut self, profiles: &HashMap<CustomerId, Profile>, position: Position) {
        self.position = self.position.max(position);
        for (customer, profile) in profiles {
            if profile.merged_into.is_some() || profile.erased {
                self.profiles.remove(customer);
            } else {
                self.profiles.insert(*customer, profile.clone());
            }
        }
    }

    /// Customers per preferred channel (most touchpoints).
    pub fn preferred_channels(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for profile in self.profiles.values() {
            if let Some(channel) = profile.preferred_channel() {
                *counts.entry(channel.to_owned()).or_default() += 1;
            }
        }
        counts
    }

    /// The customers `rule` selects, in customer order.
    pub fn judge(&self, rule: &Rule, currency: &str, as_of: DateTime<Utc>) -> Vec<CustomerId> {
        self.selected(Some(rule), currency, as_of)
            .map(|(customer, _)| *customer)
            .collect()
    }

    /// The customers `rule` selects (all without one), in `order` (ties by customer id).
    pub fn search(
        &self,
        rule: Option<&Rule>,
        order: Order,
        currency: &str,
        as_of: DateTime<Utc>,
    ) -> Vec<CustomerId> {
        let mut found: Vec<(&CustomerId, &Profile)> =
            self.selected(rule, currency, as_of).collect();
        let revenue = |p: &Profile| p.revenue.get(currency).copied().unwrap_or(0);
        match order {
            Order::Id => {}
            Order::LastSeen => found.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_seen)),
            Order::Revenue => found.sort_by_key(|(_, p)| std::cmp::Reverse(revenue(p))),
            Order::Orders => found.sort_by_key(|(_, p)| std::cmp::Reverse(p.orders)),
        }
        found.into_iter().map(|(customer, _)| *customer).collect()
    }

    /// The customers and profiles `rule` selects (all without one), in customer order.
    fn selected<'a>(
        &'a self,
        rule: Option<&'a Rule>,
        currency: &'a str,
        as_of: DateTime<Utc>,
    ) -> impl Iterator<Item = (&'a CustomerId, &'a Profile)> + 'a {
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
                tags: self.tags.get(customer).unwrap_or(&self.no_tags),
                currency,
                as_of,
            })
        })
    }
}

/// The population kept in memory by a server: read from the store on first use, then kept
/// current by the profile projection ([`ResidentPopulation::apply`]); scores and tags are read
/// again whenever a scoring run has stamped [`SCORING_RUN_SETTING`] since.
#[derive(Debug)]
pub struct ResidentPopulation {
    store: EventStore,
    state: Arc<RwLock<Option<Population>>>,
    /// The scoring run whose scores are held.
    scored: Mutex<Option<String>>,
}

impl ResidentPopulation {
    /// An empty resident population over `store`; nothing is read until it is used.
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            state: Arc::new(RwLock::new(None)),
            scored: Mutex::new(None),
        }
    }

    /// The population, read first if it is not yet resident, with the latest scores and with
    /// the profiles committed by other processes since (another server on the same database,
    /// `patron status --catch-up`).
    /// The guard owns its hold, so that work over the population can run on a blocking thread.
    pub async fn read(
        &self,
    ) -> Result<OwnedRwLockReadGuard<Option<Population>, Population>, ProjectionError> {
        let run = self.store.setting(SCORING_RUN_SETTING).await?;
        let checkpoint = self.store.checkpoint(PROFILES).await?;
        {
            let state = self.state.clone().read_owned().await;
            let scored = self.scored.lock().await;
            let current = state.as_ref().is_some_and(|p| p.position >= checkpoint);
            if current && *scored == run {
                drop(scored);
                return Ok(OwnedRwLockReadGuard::map(state, |s| {
                    s.as_ref().unwrap_or_else(|| unreachable!("checked above"))
                }));
            }
        }
        let mut state = self.state.clone().write_owned().await;
        let mut scored = self.scored.lock().await;
        let started = Instant::now();
        match state.as_mut() {
            None => {
                *state = Some(Population::load(&self.store).await?);
                tracing::info!(
                    customers = state.as_ref().map_or(0, Population::len),
                    seconds = started.elapsed().as_secs_f64(),
                    "population resident"
                );
            }
            Some(population) => {
                if population.position < checkpoint {
                    self.catch_up(population, checkpoint).await?;
                }
                if *scored != run {
                    population.scores = self.store.all_scores().await?;
                    population.tags = self.store.all_tags().await?;
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "resident population rescored"
                    );
                }
            }
        }
        *scored = run;
        drop(scored);
        let state = state.downgrade();
        Ok(OwnedRwLockReadGuard::map(state, |s| {
            s.as_ref().unwrap_or_else(|| unreachable!("loaded above"))
        }))
    }

    /// Takes in profiles the projection just committed up to `position` (nothing to do until
    /// resident).
    pub async fn apply(&self, profiles: &HashMap<CustomerId, Profile>, position: Position) {
        if let Some(population) = self.state.write().await.as_mut() {
            population.apply(profiles, position);
        }
    }

    /// Reads the profiles of the customers whose events lie between the population's position
    /// and `checkpoint`: what another process committed. A gap of more than
    /// [`CATCH_UP_LIMIT`] events reads the whole population again.
    async fn catch_up(
        &self,
        population: &mut Population,
        checkpoint: Position,
    ) -> Result<(), ProjectionError> {
        if checkpoint - population.position > CATCH_UP_LIMIT {
            *population = Population::load(&self.store).await?;
            return Ok(());
        }
        let mut at = population.position;
        while at < checkpoint {
            let events = self.store.read_all(at, 10_000).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            let events: Vec<_> = events
                .into_iter()
                .filter(|e| e.position <= checkpoint)
                .collect();
            let customers: Vec<CustomerId> = touched(&events)?.into_iter().collect();
            let profiles = self
                .store
                .profiles_of(ProfileTable::Live, &customers)
                .await?;
            at = last.min(checkpoint);
            population.apply(&profiles, at);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ProfileObserver for ResidentPopulation {
    async fn committed(
        &self,
        profiles: &HashMap<CustomerId, Profile>,
        position: Position,
        _: &Announcer<'_>,
    ) {
        self.apply(profiles, position).await;
    }
}

impl ProfileProjection {
    /// Keeps `population` current with each committed batch of live profiles.
    pub fn with_population(self, population: Arc<ResidentPopulation>) -> Self {
        self.observed_by(population)
    }
}
