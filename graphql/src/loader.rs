//! Batch loading: every customer a request names is read in one batch per table, however
//! deep in the query it is named, and each customer's history is read once per request. And
//! the budget of identifier lookups each API key may make across requests
//! ([`LookupBudget`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::access::{ApiKey, Role};

use crate::backend::{Backend, BackendError, CustomerRecord, HistoryEvent};

/// Loads customers' read models in batches.
pub struct CustomerLoader(pub Arc<dyn Backend>);

impl Loader<Uuid> for CustomerLoader {
    type Value = Arc<CustomerRecord>;
    type Error = BackendError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        Ok(self
            .0
            .customers(keys)
            .await?
            .into_iter()
            .map(|(id, record)| (id, Arc::new(record)))
            .collect())
    }
}

/// Loads customers' opened histories.
pub struct HistoryLoader(pub Arc<dyn Backend>);

impl Loader<Uuid> for HistoryLoader {
    type Value = Arc<Vec<HistoryEvent>>;
    type Error = BackendError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut found = HashMap::with_capacity(keys.len());
        for key in keys {
            found.insert(*key, Arc::new(self.0.history(*key).await?));
        }
        Ok(found)
    }
}

/// The loaders of one request (or one websocket connection): their caches live as long as it.
pub struct Loaders {
    /// Customers' read models.
    pub customers: DataLoader<CustomerLoader, HashMapCache>,
    /// Customers' histories.
    pub histories: DataLoader<HistoryLoader, HashMapCache>,
    /// Identifier lookups made by this request so far.
    pub lookups: std::sync::atomic::AtomicUsize,
}

impl Loaders {
    /// Loaders over `backend`, spawning their batches with `spawn` (for example
    /// `tokio::spawn`).
    pub fn new<S>(backend: Arc<dyn Backend>, spawn: S) -> Self
    where
        S: Fn(BoxFuture<'static, ()>) + Send + Sync + Clone + 'static,
    {
        let delay = std::time::Duration::from_micros(200);
        Self {
            customers: DataLoader::with_cache(
                CustomerLoader(backend.clone()),
                spawn.clone(),
                HashMapCache::default(),
            )
            .delay(delay),
            histories: DataLoader::with_cache(
                HistoryLoader(backend),
                spawn,
                HashMapCache::default(),
            )
            .delay(delay),
            lookups: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Identifier lookups (`customerByIdentifier`) each role's keys may make per hour.
///
/// Written `viewer=30,analyst=120,operator=600,admin=600` (`PATRON_LOOKUP_BUDGET`); roles left
/// out keep their default, and `0` refuses every lookup to that role. A lookup of a masked
/// value's hidden digits needs hundreds of tries: the viewer's default allows 30.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupAllowance {
    /// Lookups per hour for viewer keys.
    pub viewer: u32,
    /// Lookups per hour for analyst keys.
    pub analyst: u32,
    /// Lookups per hour for operator keys.
    pub operator: u32,
    /// Lookups per hour for admin keys.
    pub admin: u32,
}

impl Default for LookupAllowance {
    fn default() -> Self {
        Self {
            viewer: 30,
            analyst: 120,
            operator: 600,
            admin: 600,
        }
    }
}

impl LookupAllowance {
    /// Lookups per hour allowed to a key of `role` (none to ingest keys).
    pub fn per_hour(&self, role: Role) -> u32 {
        match role {
            Role::Ingest => 0,
            Role::Viewer => self.viewer,
            Role::Analyst => self.analyst,
            Role::Operator => self.operator,
            Role::Admin => self.admin,
        }
    }
}

impl std::fmt::Display for LookupAllowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "viewer={},analyst={},operator={},admin={}",
            self.viewer, self.analyst, self.operator, self.admin
        )
    }
}

/// A lookup budget that does not read as `role=N,...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lookup budget {text:?}: {reason} (expected for example viewer=30,analyst=120,operator=600,admin=600)")]
pub struct InvalidAllowance {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::str::FromStr for LookupAllowance {
    type Err = InvalidAllowance;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| InvalidAllowance {
            text: text.to_owned(),
            reason,
        };
        let mut allowance = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, count) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not role=lookups-per-hour")))?;
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| bad(format!("{count:?} is not a whole number of lookups")))?;
            let slot = match role
                .trim()
                .parse::<Role>()
                .map_err(|e| bad(e.to_string()))?
            {
                Role::Viewer => &mut allowance.viewer,
                Role::Analyst => &mut allowance.analyst,
                Role::Operator => &mut allowance.operator,
                Role::Admin => &mut allowance.admin,
                Role::Ingest => return Err(bad("ingest keys make no lookups".into())),
            };
            *slot = count;
        }
        Ok(allowance)
    }
}

/// A key's lookup budget is spent for now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the identifier lookup budget of {role} keys ({per_hour} per hour, per key) is spent for \
     this key; the next lookup is allowed in {} s",
    retry_after.as_secs().max(1)
)]
pub struct BudgetExhausted {
    /// The key's role.
    pub role: Role,
    /// Lookups per hour the role allows.
    pub per_hour: u32,
    /// How long until the next lookup is allowed (one lookup comes back every hour / N).
    pub retry_after: Duration,
}

type KeyedLimiter = RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, DefaultClock>;

/// The identifier lookups each API key may still make: a token bucket per key id (GCRA, the
/// `governor` crate) holding the role's hourly allowance, one lookup coming back every
/// hour / allowance. It lives in the server process: each node counts its own lookups.
pub struct LookupBudget {
    allowance: LookupAllowance,
    /// One limiter per role that may look up (viewer, analyst, operator, admin); none for a
    /// role allowed no lookups.
    limiters: [Option<KeyedLimiter>; 4],
}

impl std::fmt::Debug for LookupBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupBudget")
            .field("allowance", &self.allowance)
            .finish_non_exhaustive()
    }
}

impl LookupBudget {
    /// Full buckets for every key, holding `allowance`.
    pub fn new(allowance: LookupAllowance) -> Self {
        let limiter = |n: u32| NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_hour(n)));
        Self {
            allowance,
            limiters: [
                limiter(allowance.viewer),
                limiter(allowance.analyst),
                limiter(allowance.operator),
                limiter(allowance.admin),
            ],
        }
    }

    /// The allowance it holds.
    pub fn allowance(&self) -> LookupAllowance {
        self.allowance
    }

    /// Spends one lookup of `key`'s budget, or says when the next one is allowed.
    pub fn spend(&self, key: &ApiKey) -> Result<(), BudgetExhausted> {
        let per_hour = self.allowance.per_hour(key.role);
        let slot = match key.role {
            Role::Ingest => None,
            Role::Viewer => self.limiters[0].as_ref(),
            Role::Analyst => self.limiters[1].as_ref(),
            Role::Operator => self.limiters[2].as_ref(),
            Role::Admin => self.limiters[3].as_ref(),
        };
        let exhausted = |retry_after: Duration| BudgetExhausted {
            role: key.role,
            per_hour,
            retry_after,
        };
        let Some(limiter) = slot else {
            return Err(exhausted(Duration::from_secs(3_600)));
        };
        limiter
            .check_key(&key.id)
            .map_err(|not_until| exhausted(not_until.wait_time_from(limiter.clock().now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            name: format!("{role}-key"),
            role,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn an_allowance_reads_role_counts_and_keeps_the_rest() {
        let allowance: LookupAllowance = "viewer=5, admin=0".parse().unwrap();
        assert_eq!(
            allowance,
            LookupAllowance {
                viewer: 5,
                admin: 0,
                ..LookupAllowance::default()
            }
        );
        let text = LookupAllowance::default().to_string();
        assert_eq!(
            text.parse::<LookupAllowance>().unwrap(),
            LookupAllowance::default()
        );
        for bad in ["viewer", "viewer=-1", "owner=3", "ingest=3"] {
            let e = bad.parse::<LookupAllowance>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn each_key_spends_its_own_budget() {
        let budget = LookupBudget::new("viewer=2,admin=0".parse().unwrap());
        let (a, b) = (key(Role::Viewer), key(Role::Viewer));
        assert!(budget.spend(&a).is_ok() && budget.spend(&a).is_ok());
        let refused = budget.spend(&a).unwrap_err();
        assert_eq!((refused.role, refused.per_hour), (Role::Viewer, 2));
        // One lookup comes back every half hour.
        assert!(
            refused.retry_after > Duration::from_secs(29 * 60),
            "{refused:?}"
        );
        assert!(
            refused.retry_after <= Duration::from_secs(30 * 60),
            "{refused:?}"
        );
        assert!(budget.spend(&b).is_ok());
        assert!(budget.spend(&key(Role::Admin)).is_err());
        assert!(budget.spend(&key(Role::Ingest)).is_err());
        assert!(budget.spend(&key(Role::Operator)).is_ok());
    }
}
