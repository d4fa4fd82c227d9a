//! The projection runner: feeds the log, in position order and in batches, to the read models
//! of `patron-projections`, and stores each batch's rows with the projection's checkpoint in one
//! transaction, so that a crash never applies an event twice or skips one.
//!
//! One projection exists so far, the customer profile ([`ProfileProjection`]). It follows the
//! live log in `patron serve`, catches up in `patron status --catch-up`, and is rebuilt from
//! position 0 by `patron rebuild` into a table of its own that is swapped in when it has caught
//! up, so readers keep reading the old one meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::Position;
use patron_projections::profile::{self, FoldError, Profile};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::broadcast;

use crate::store::projection::{ProfileRow, ProfileTable};

use crate::store::{EventStore, StoreError};

/// How often a following projection looks at the log.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// The write rate (events per second, over the last [`FOLLOW_RATE_WINDOW`]) above which a
/// following projection defers to ingestion.
pub const FOLLOW_DEFER_ABOVE: u64 = 20_000;
/// The window the write rate is measured over.
pub const FOLLOW_RATE_WINDOW: Duration = Duration::from_secs(1);
/// How long a following projection defers to a stream of writes at most.
pub const FOLLOW_DEFER_MAX: Duration = Duration::from_secs(30);

/// The profile projection's checkpoint.
pub const PROFILES: &str = "profiles";
/// The checkpoint of a profile rebuild in progress.
const PROFILES_REBUILD: &str = "profiles@rebuild";
/// The checkpoint of a `patron verify` in progress.
const PROFILES_VERIFY: &str = "profiles@verify";
/// How many times `verify` folds again to meet the live profiles at one position.
const VERIFY_ROUNDS: usize = 5;
/// How many differing customers a verification names.
const VERIFY_EXAMPLES: usize = 20;

/// What `patron verify` found: the live profiles against a fold of the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The position both were folded to.
    pub position: Position,
    /// Profiles compared (customers in either).
    pub profiles: u64,
    /// Customers whose live profile differs from the fold's.
    pub different: u64,
    /// Customers the fold has and the live profiles lack.
    pub missing: u64,
    /// Customers the live profiles have and the fold does not.
    pub extra: u64,
    /// Up to 20 of them, each with the fields that differ.
    pub examples: Vec<ProfileDifference>,
}

/// A customer whose live profile is not what the log folds to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProfileDifference {
    /// The customer.
    pub customer: CustomerId,
    /// `different`, `missing` (from the live profiles) or `extra` (in them).
    pub kind: String,
    /// The profile fields that differ (for `different`).
    pub fields: Vec<String>,
}

impl Verification {
    fn of(position: Position, live: &[ProfileRow], rebuilt: &[ProfileRow]) -> Self {
        let live: HashMap<CustomerId, &ProfileRow> = live.iter().map(|r| (r.customer, r)).collect();
        let rebuilt: HashMap<CustomerId, &ProfileRow> =
            rebuilt.iter().map(|r| (r.customer, r)).collect();
        let mut customers: Vec<CustomerId> = live.keys().chain(rebuilt.keys()).copied().collect();
        customers.sort();
        customers.dedup();
        let mut found = Verification {
            position,
            profiles: customers.len() as u64,
            ..Verification::default()
        };
        for customer in customers {
            let (kind, fields) = match (live.get(&customer), rebuilt.get(&customer)) {
                (Some(l), Some(r)) if l == r => continue,
                (Some(l), Some(r)) => {
                    found.different += 1;
                    ("different", differing_fields(&l.state, &r.state))
                }
                (None, _) => {
                    found.missing += 1;
                    ("missing", vec![])
                }
                (_, None) => {
                    found.extra += 1;
                    ("extra", vec![])
                }
            };
            if found.examples.len() < VERIFY_EXAMPLES {
                found.examples.push(ProfileDifference {
                    customer,
                    kind: kind.to_owned(),
                    fields,
                });
            }
        }
        found
    }

    /// Whether the live profiles are exactly what the log folds to.
    pub fn is_clean(&self) -> bool {
        self.different == 0 && self.missing == 0 && self.extra == 0
    }
}

/// The top-level fields of two profiles' JSON that differ.
fn differing_fields(a: &str, b: &str) -> Vec<String> {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let (a, b) = (parse(a), parse(b));
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}
/// The version of the profile fold: raised whenever what a profile holds changes, so that
/// stored profiles are rebuilt once by the new code.
pub const PROFILE_VERSION: u32 = 7;
/// The setting holding the version the stored profiles were folded with.
const PROFILE_VERSION_SETTING: &str = "projection.profiles.version";

/// What stops a projection.
#[derive(Debug, Error)]
pub enum ProjectionError {
    /// The store failed; the batch was not applied.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event does not read as the projection expects.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// Another rebuild moved the rebuild checkpoint.
    #[error("another rebuild of {0} is running")]
    ConcurrentRebuild(&'static str),
    /// The stored read model was folded by a newer version of Patron than this one.
    #[error(
        "the profiles were folded by a newer Patron (fold version {stored}; this one folds \
         version {current}): upgrade this binary rather than fold them back"
    )]
    NewerFold {
        /// The stored version.
        stored: String,
        /// This binary's version.
        current: u32,
    },
}

impl ProjectionError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Fold(_) => "UNREADABLE_EVENT",
            Self::ConcurrentRebuild(_) => "REBUILD_RUNNING",
            Self::NewerFold { .. } => "NEWER_FOLD",
        }
    }
}

/// How far a projection is behind the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// The projection's checkpoint.
    pub position: Position,
    /// The log's head.
    pub head: Position,
    /// Events stored but not yet applied.
    pub events: u64,
    /// Seconds since the oldest event not yet applied was stored (0 when caught up).
    pub seconds: i64,
    /// The same in milliseconds.
    pub millis: i64,
}

/// The customer profile projection.
#[derive(Clone, Debug)]
pub struct ProfileProjection {
    store: EventStore,
    batch: usize,
    /// Where profile updates and membership changes are announced, if anywhere.
    announce: Option<broadcast::Sender<Announcement>>,
    /// Told after each committed batch of live profiles, in the order they were added.
    observers: Vec<Arc<dyn ProfileObserver>>,
}

/// What keeps itself current with the live profiles (the resident population, segment
/// judging): told after each batch of live profiles is committed. The projection knows
/// observers only by this trait.
#[async_trait::async_trait]
pub trait ProfileObserver: Send + Sync + std::fmt::Debug {
    /// `profiles` (every customer the batch touched, merged-away ones included) were committed
    /// up to `position`; `announce` reaches the subscribers. The rows are committed whatever
    /// happens here: an observer that fails logs it and catches up later.
    async fn committed(
        &self,
        profiles: &HashMap<CustomerId, Profile>,
        position: Position,
        announce: &Announcer<'_>,
    );

    /// Brings what this observer keeps up to date with `profiles` as they are now, for a
    /// caller that answers with it (a correction answers with memberships): another instance
    /// of the projection may have committed the batch and not yet told its own observers. By
    /// default nothing.
    async fn settle(&self, profiles: &HashMap<CustomerId, Profile>, announce: &Announcer<'_>) {
        let _ = (profiles, announce);
    }
}

/// Sends announcements to the subscribers, if any listen.
pub struct Announcer<'a>(Option<&'a broadcast::Sender<Announcement>>);

impl Announcer<'_> {
    /// Sends `announcements` if anyone listens.
    pub fn send(&self, announcements: impl IntoIterator<Item = Announcement>) {
        if let Some(sender) = self.0.filter(|s| s.receiver_count() > 0) {
            for announcement in announcements {
                // No receiver left: nothing to do.
                let _ = sender.send(announcement);
            }
        }
    }
}

/// What the live projection announces after each committed batch (subscriptions read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// A live customer's profile changed.
    ProfileUpdated {
        /// The customer.
        customer: CustomerId,
        /// The log position the profile now reflects.
        position: Position,
    },
    /// A customer entered or left a saved segment.
    Membership {
        /// The segment.
        segment: String,
        /// The customer.
        customer: CustomerId,
        /// Entered (`true`) or left.
        entered: bool,
        /// When.
        at: DateTime<Utc>,
    },
}

impl ProfileProjection {
    /// A projection reading `store` `batch` events at a time.
    pub fn new(store: EventStore, batch: usize) -> Self {
        Self {
            store,
            batch: batch.max(1),
            announce: None,
            observers: Vec::new(),
        }
    }

    /// Has the observers settle `customers` as their live profiles are now
    /// ([`ProfileObserver::settle`]).
    pub async fn settle(&self, customers: &[CustomerId]) -> Result<(), ProjectionError> {
        if self.observers.is_empty() || customers.is_empty() {
            return Ok(());
        }
        let profiles = self
            .store
            .profiles_of(ProfileTable::Live, customers)
            .await?;
        let announcer = self.announcer();
        for observer in &self.observers {
            observer.settle(&profiles, &announcer).await;
        }
        Ok(())
    }

    /// The store it reads and writes.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Tells `observer` of each committed batch of live profiles, after those added before.
    pub fn observed_by(mut self, observer: Arc<dyn ProfileObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Announces each committed batch's profile updates and membership changes on `sender`.
    pub fn with_announcements(mut self, sender: broadcast::Sender<Announcement>) -> Self {
        self.announce = Some(sender);
        self
    }

    /// The announcer of this projection's subscribers.
    fn announcer(&self) -> Announcer<'_> {
        Announcer(self.announce.as_ref())
    }

    /// Applies one batch after the checkpoint `name` to `table`; returns the position reached,
    /// or `None` when there was nothing to apply.
    #[tracing::instrument(name = "projection.batch", skip(self), fields(events))]
    async fn step(
        &self,
        name: &'static str,
        table: ProfileTable,
    ) -> Result<Option<Position>, ProjectionError> {
        loop {
            let from = self.store.checkpoint(name).await?;
            let events = self.store.read_all(from, self.batch).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(None);
            };
            tracing::Span::current().record("events", events.len());
            let touched: Vec<CustomerId> = profile::touched(&events)?.into_iter().collect();
            let mut profiles: HashMap<CustomerId, Profile> =
                self.store.profiles_of(table, &touched).await?;
            let refolds = profile::fold(&mut profiles, &events)?;
            for customer in refolds {
                if let Some(profile) = profiles.get_mut(&customer) {
                    let touchpoints = self
                        .store
                        .owned_touchpoints(customer, &profile.holdings, last)
                        .await?;
                    profile.refold(&touchpoints)?;
                }
            }
            let rows = profiles
                .iter()
                .map(|(customer, profile)| {
                    Ok(ProfileRow {
                        customer: *customer,
                        merged_into: profile.merged_into,
                        state: serde_json::to_string(profile).map_err(|e| {
                            StoreError::UnreadableProfile {
                                customer: *customer,
                                reason: e.to_string(),
                            }
                        })?,
                    })
                })
                .collect::<Result<Vec<_>, ProjectionError>>()?;
            if self
                .store
                .commit_rows(name, table, from, last, &rows)
                .await?
            {
                if table == ProfileTable::Live {
                    // The observers first: a subscriber told of an update reads a resident
                    // population and memberships that have it.
                    let announcer = self.announcer();
                    for observer in &self.observers {
                        observer.committed(&profiles, last, &announcer).await;
                    }
                    announcer.send(
                        profiles
                            .iter()
                            .filter(|(_, p)| p.merged_into.is_none())
                            .map(|(customer, _)| Announcement::ProfileUpdated {
                                customer: *customer,
                                position: last,
                            }),
                    );
                }
                return Ok(Some(last));
            }
            // The checkpoint moved under us (a rebuild was swapped in): start again from it.
            tracing::debug!(projection = name, "checkpoint moved; batch read again");
        }
    }

    /// Applies every event stored so far; returns the position reached. Profiles folded by
    /// an earlier version of the fold are rebuilt first.
    pub async fn catch_up(&self) -> Result<Position, ProjectionError> {
        self.ensure_fold_version().await?;
        self.catch_up_to(Position::MAX).await
    }

    /// Rebuilds the profiles if an earlier version of the fold wrote them; refuses to touch
    /// profiles a newer version wrote.
    async fn ensure_fold_version(&self) -> Result<(), ProjectionError> {
        // Read first: the runner asks on every round, and only the first ever writes.
        let stored = match self.store.setting(PROFILE_VERSION_SETTING).await? {
            Some(stored) => stored,
            None => {
                // Profiles stored before versions were recorded are of version 1.
                let unversioned = if self.store.checkpoint(PROFILES).await? == 0 {
                    PROFILE_VERSION
                } else {
                    1
                };
                self.store
                    .setting_or_insert(PROFILE_VERSION_SETTING, &unversioned.to_string())
                    .await?
            }
        };
        let stored_version = stored.parse::<u32>().unwrap_or(0);
        if stored_version > PROFILE_VERSION {
            return Err(ProjectionError::NewerFold {
                stored,
                current: PROFILE_VERSION,
            });
        }
        if stored_version < PROFILE_VERSION {
            tracing::info!(from = %stored, to = PROFILE_VERSION, "profiles folded by an earlier version: rebuilding");
            self.rebuild(|_, _| {}).await?;
        }
        Ok(())
    }

    /// Applies events until the checkpoint reaches `target` or the head, whichever is first.
    async fn catch_up_to(&self, target: Position) -> Result<Position, ProjectionError> {
        let mut at = self.store.checkpoint(PROFILES).await?;
        while at < target {
            match self.step(PROFILES, ProfileTable::Live).await? {
                Some(reached) => at = reached,
                None => break,
            }
        }
        Ok(at)
    }

    /// Follows the log for as long as the task runs, looking every [`FOLLOW_INTERVAL`] and
    /// catching up to the head as it then is. Ingestion at full speed comes first: while the
    /// log grows faster than [`FOLLOW_DEFER_ABOVE`] events/s (over the last
    /// [`FOLLOW_RATE_WINDOW`]) the projection waits, catching up
    /// once the rate drops or at the latest every [`FOLLOW_DEFER_MAX`] (large batches cost
    /// least per event). Profiles therefore lag by a fraction of a second under ordinary
    /// load, and by at most [`FOLLOW_DEFER_MAX`] plus one catch-up under a flood. Other
    /// processes' writes are seen by polling.
    pub async fn follow(self) {
        loop {
            let round = async {
                self.ensure_fold_version().await?;
                let head = self.store.head().await?;
                self.catch_up_to(head).await
            }
            .await;
            if let Err(err) = round {
                tracing::error!(error = %err, code = err.code(), "the profile projection stopped a batch; retrying");
            }
            let last_round = tokio::time::Instant::now();
            // Wait for events, then for the write rate to drop below the deferral threshold or
            // for the deferral to run out.
            let mut heads: std::collections::VecDeque<(tokio::time::Instant, Position)> =
                std::collections::VecDeque::new();
            loop {
                let now = tokio::time::Instant::now();
                if let Ok(head) = self.store.head().await {
                    heads.push_back((now, head));
                }
                while heads
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > FOLLOW_RATE_WINDOW)
                {
                    heads.pop_front();
                }
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                let Ok(after) = self.store.head().await else {
                    continue;
                };
                let checkpoint = self.store.checkpoint(PROFILES).await.unwrap_or(after);
                let pending = checkpoint < after;
                let flooded = heads.front().is_some_and(|(at, before)| {
                    let seconds = at.elapsed().as_secs_f64().max(0.001);
                    after.saturating_sub(*before) as f64 / seconds > FOLLOW_DEFER_ABOVE as f64
                });
                if pending && (!flooded || last_round.elapsed() >= FOLLOW_DEFER_MAX) {
                    break;
                }
            }
        }
    }

    /// Rebuilds the profiles from position 0 into a table of their own, then swaps it in place
    /// of the live one in one transaction; readers read the old table until then. `progress` is
    /// told the position reached and the head after each batch.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(Position, Position),
    ) -> Result<Position, ProjectionError> {
        self.store.reset_next_profiles(PROFILES_REBUILD).await?;
        let mut at = 0;
        while let Some(reached) = self.step(PROFILES_REBUILD, ProfileTable::Next).await? {
            at = reached;
            progress(at, self.store.head().await?.max(at));
        }
        // Swapped only if the rebuild checkpoint is still where this rebuild left it.
        if !self
            .store
            .swap_in_next_profiles(PROFILES, PROFILES_REBUILD, at)
            .await?
        {
            return Err(ProjectionError::ConcurrentRebuild(PROFILES));
        }
        self.store
            .put_setting(PROFILE_VERSION_SETTING, &PROFILE_VERSION.to_string())
            .await?;
        Ok(at)
    }

    /// Folds the whole log again into a scratch table and compares it with the live profiles,
    /// at the same position (the live ones are brought there first); the scratch table is
    /// dropped afterwards. `progress` is told the position reached and the head.
    pub async fn verify(
        &self,
        mut progress: impl FnMut(Position, Position),
    ) -> Result<Verification, ProjectionError> {
        self.ensure_fold_version().await?;
        self.store
            .reset_profile_table(ProfileTable::Verify, PROFILES_VERIFY)
            .await?;
        let compared = async {
            let mut at = 0;
            // The live profiles may move on while the scratch ones are folded: fold both to
            // the same position before comparing.
            for _ in 0..VERIFY_ROUNDS {
                let live = self.catch_up().await?;
                while let Some(reached) = self.step(PROFILES_VERIFY, ProfileTable::Verify).await? {
                    at = reached;
                    progress(at, self.store.head().await?.max(at));
                }
                if self.store.checkpoint(PROFILES).await? == at && live <= at {
                    break;
                }
            }
            let live = self.store.all_profiles(ProfileTable::Live).await?;
            let rebuilt = self.store.all_profiles(ProfileTable::Verify).await?;
            Ok::<_, ProjectionError>(Verification::of(at, &live, &rebuilt))
        }
        .await;
        self.store.drop_verify_profiles(PROFILES_VERIFY).await?;
        compared
    }

    /// How far the live profiles are behind the log.
    pub async fn lag(&self) -> Result<Lag, ProjectionError> {
        let position = self.store.checkpoint(PROFILES).await?;
        let head = self.store.head().await?;
        let millis = match self.store.read_all(position, 1).await?.first() {
            Some(next) => (Utc::now() - next.recorded_at).num_milliseconds().max(0),
            None => 0,
        };
        Ok(Lag {
            position,
            head,
            events: head.saturating_sub(position),
            seconds: millis / 1_000,
            millis,
        })
    }

    /// The live profile of a customer (a merged id reads its survivor's), if it has one.
    pub async fn profile(&self, customer: CustomerId) -> Result<Option<Profile>, ProjectionError> {
        let live = self.store.live_customer(customer).await?;
        Ok(self.store.live_profile(live).await?)
    }
}

/// Every live customer's profile (not merged away, not erased), in customer order.
pub async fn live_profiles(
    store: &EventStore,
) -> Result<Vec<(CustomerId, Profile)>, ProjectionError> {
    let mut profiles = Vec::new();
    for (customer, merged_into, profile) in store.read_all_profiles(ProfileTable::Live).await? {
        if merged_into.is_none() && !profile.erased {
            profiles.push((customer, profile));
        }
    }
    Ok(profiles)
}
