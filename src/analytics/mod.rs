//! Customer analytics over the store: reads every customer's activity from the event log
//! ([`load_activity`], or a copy kept in the server's memory, [`ResidentActivity`]) and answers
//! the questions of `patron_projections::analytics` by name: steps and channels as written,
//! segments by name, times as dates. The CLI (`patron analytics ...`) and GraphQL both answer
//! through [`Analyst`]; [`csv`] writes each answer as CSV.
//!
//! A server bounds the analyses running at once across all requests with an
//! [`AnalyticsGate`] (an analysis waiting longer than its limit is refused with `BUSY`) and
//! runs each on a blocking thread ([`compute`]), so that the threads answering requests stay
//! free for everything else.

pub mod command;
pub mod csv;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use patron_domain::identity::{IdentityRules, Strength};
use patron_domain::Position;
use patron_projections::analytics::activity::{time_of, Activity, ActivityError, ORDER_PLACED};
use patron_projections::analytics::association::{self, AssociationError, Rule};
use patron_projections::analytics::attribution::{self, Attribution, Journey};
use patron_projections::analytics::campaign::{self, CampaignEffect, CampaignError, CampaignQuery};
use patron_projections::analytics::clv::{self, BgNbd, GammaGamma, Summary};
use patron_projections::analytics::cohort::{self, CohortTable, Period};
use patron_projections::analytics::funnel::{self, FunnelAsk, FunnelQuery, Step, StepFigures};
use patron_projections::analytics::paths::{self, PathRow};
use patron_projections::analytics::quality::{self, QualityReport, RefusalFact};
pub use patron_projections::analytics::report::{
    AssociationAsk, AssociationReport, ClvReport, CustomerValue, ProductRule,
};
use serde::Serialize;
use tokio::sync::{OwnedRwLockReadGuard, OwnedSemaphorePermit, RwLock, Semaphore};

use crate::store::quality::Refusal;
use crate::store::{EventStore, StoreError};

/// Events read per batch when loading the activity.
const BATCH: usize = 10_000;

/// Why an analysis could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event could not be read into the activity.
    #[error(transparent)]
    Activity(#[from] ActivityError),
    /// A parameter of the question is wrong; names the parameter.
    #[error("{parameter}: {problem}")]
    Invalid {
        /// The parameter at fault.
        parameter: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A parameter of product associations is out of range (the message names it).
    #[error(transparent)]
    Association(AssociationError),
    /// The question names a segment that does not exist.
    #[error("no segment named {0:?}")]
    UnknownSegment(String),
    /// Every turn to analyse was taken for longer than the caller may wait.
    #[error(
        "analytics are busy: {concurrency} analysis at a time (analytics_concurrency) and none \
         was free within {} ms (analytics_wait_ms); try again later",
        wait.as_millis()
    )]
    Busy {
        /// The analyses that may run at once.
        concurrency: usize,
        /// How long this one waited.
        wait: Duration,
    },
    /// The thread running the analysis failed.
    #[error("the analysis failed: {0}")]
    Failed(String),
}

impl AnalyticsError {
    /// A stable code for API answers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Activity(_) => "UNREADABLE_EVENT",
            Self::Invalid { .. } | Self::Association(_) => "INVALID_ARGUMENT",
            Self::UnknownSegment(_) => "NOT_FOUND",
            Self::Busy { .. } => BUSY,
            Self::Failed(_) => "INTERNAL",
        }
    }
}

/// The code of an analysis refused because every turn stayed taken ([`AnalyticsError::Busy`]).
pub const BUSY: &str = "BUSY";

/// How much analytics work a server runs at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnalyticsLimits {
    /// Analyses running at the same time across all requests (at least 1).
    pub concurrency: usize,
    /// The longest an analysis waits for its turn before it is refused with `BUSY` (0: it
    /// runs only if a turn is free at once).
    pub wait: Duration,
}

/// The default of [`AnalyticsLimits::wait`], milliseconds.
pub const DEFAULT_ANALYTICS_WAIT_MS: u64 = 10_000;

/// The default of [`AnalyticsLimits::concurrency`]: half the processors, at least one (one on
/// two cores), so that analyses leave the rest to ingestion and short reads.
pub fn default_analytics_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Default for AnalyticsLimits {
    fn default() -> Self {
        Self {
            concurrency: default_analytics_concurrency(),
            wait: Duration::from_millis(DEFAULT_ANALYTICS_WAIT_MS),
        }
    }
}

/// Counts of the analyses a gate let through or refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Analyses running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Analyses let through since the start.
    pub runs: u64,
    /// Analyses refused with `BUSY` since the start.
    pub busy: u64,
}

#[derive(Debug, Default)]
struct GateCounts {
    running: AtomicUsize,
    peak: AtomicUsize,
    runs: AtomicU64,
    busy: AtomicU64,
}

/// Turns to analyse, shared by every request: at most [`AnalyticsLimits::concurrency`]
/// analyses hold one at a time. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AnalyticsGate {
    permits: Arc<Semaphore>,
    limits: AnalyticsLimits,
    counts: Arc<GateCounts>,
}

/// A turn to analyse; the next waiting analysis gets it when this is dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    counts: Arc<GateCounts>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.counts.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AnalyticsGate {
    /// A gate letting `limits.concurrency` analyses (at least 1) run at once.
    pub fn new(limits: AnalyticsLimits) -> Self {
        let limits = AnalyticsLimits {
            concurrency: limits.concurrency.max(1),
            ..limits
        };
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrency)),
            limits,
            counts: Arc::default(),
        }
    }

    /// The gate's limits.
    pub fn limits(&self) -> AnalyticsLimits {
        self.limits
    }

    /// Waits for a turn, up to the limit's wait; [`AnalyticsError::Busy`] after it.
    pub async fn enter(&self) -> Result<Turn, AnalyticsError> {
        let permits = self.permits.clone();
        let permit = if self.limits.wait.is_zero() {
            permits.try_acquire_owned().ok()
        } else {
            tokio::time::timeout(self.limits.wait, permits.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        };
        let Some(permit) = permit else {
            self.counts.busy.fetch_add(1, Ordering::Relaxed);
            return Err(AnalyticsError::Busy {
                concurrency: self.limits.concurrency,
                wait: self.limits.wait,
            });
        };
        let running = self.counts.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.peak.fetch_max(running, Ordering::SeqCst);
        self.counts.runs.fetch_add(1, Ordering::Relaxed);
        Ok(Turn {
            _permit: permit,
            counts: self.counts.clone(),
        })
    }

    /// What the gate let through and refused so far.
    pub fn stats(&self) -> GateStats {
        GateStats {
            running: self.counts.running.load(Ordering::SeqCst),
            peak: self.counts.peak.load(Ordering::SeqCst),
            runs: self.counts.runs.load(Ordering::Relaxed),
            busy: self.counts.busy.load(Ordering::Relaxed),
        }
    }
}

/// Runs `work` over `activity` on a blocking thread, holding `turn` until it is done (also when
/// the caller stops waiting for it): the analysis counts against the gate while it runs.
pub async fn compute<T, F>(
    turn: Turn,
    activity: OwnedRwLockReadGuard<Activity>,
    work: F,
) -> Result<T, AnalyticsError>
where
    T: Send + 'static,
    F: FnOnce(&Activity) -> Result<T, AnalyticsError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work(&activity)
    })
    .await
    .map_err(|e| AnalyticsError::Failed(e.to_string()))?
}

/// An association error as asked: the longest itemset is `max_length` to the caller.
fn association_error(e: AssociationError) -> AnalyticsError {
    match e {
        AssociationError::MaxLen(n) => {
            invalid("max_length", format!("must be at least 1, got {n}"))
        }
        other => AnalyticsError::Association(other),
    }
}

fn invalid(parameter: &'static str, problem: impl Into<String>) -> AnalyticsError {
    AnalyticsError::Invalid {
        parameter,
        problem: problem.into(),
    }
}

/// Folds the log after `activity`'s position into it, reporting `(position, head)` as it goes.
pub async fn catch_up(
    store: &EventStore,
    activity: &mut Activity,
    mut progress: impl FnMut(Position, Position),
) -> Result<(), AnalyticsError> {
    let head = store.head().await?;
    let mut batches = store.stream_all(activity.position(), BATCH);
    while let Some(events) = batches.try_next().await? {
        activity.apply(&events)?;
        for (customer, holdings) in activity.take_refolds() {
            let touchpoints = store
                .owned_touchpoints(customer, &holdings, activity.position())
                .await?;
            activity.refold(customer, &touchpoints)?;
        }
        progress(activity.position(), head.max(activity.position()));
    }
    Ok(())
}

/// Reads every customer's activity from the log.
pub async fn load_activity(
    store: &EventStore,
    progress: impl FnMut(Position, Position),
) -> Result<Activity, AnalyticsError> {
    let mut activity = Activity::new();
    catch_up(store, &mut activity, progress).await?;
    Ok(activity)
}

/// The activity kept in a server's memory: read whole on first use, then brought up to the
/// log's head before each answer by reading only the events appended since.
#[derive(Debug)]
pub struct ResidentActivity {
    store: EventStore,
    state: Arc<RwLock<Activity>>,
}

impl ResidentActivity {
    /// An empty resident activity over `store`; nothing is read until it is used.
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            state: Arc::new(RwLock::new(Activity::new())),
        }
    }

    /// The activity up to the log's head as of this call.
    pub async fn read(&self) -> Result<OwnedRwLockReadGuard<Activity>, AnalyticsError> {
        let head = self.store.head().await?;
        {
            let state = self.state.clone().read_owned().await;
            if state.position() >= head {
                return Ok(state);
            }
        }
        let mut state = self.state.clone().write_owned().await;
        let started = Instant::now();
        let from = state.position();
        catch_up(&self.store, &mut state, |_, _| {}).await?;
        tracing::info!(
            from,
            to = state.position(),
            seconds = started.elapsed().as_secs_f64(),
            "activity caught up"
        );
        Ok(state.downgrade())
    }
}

/// A step no touchpoint matches: there are ten channels, so none is numbered 255.
const NOTHING: Step = Step {
    kind: u16::MAX,
    channel: Some(u8::MAX),
};

/// A funnel step as written: `event_type` or `channel:event_type`.
fn parse_step(activity: &Activity, text: &str) -> Result<Step, AnalyticsError> {
    let (channel, kind) = match text.split_once(':') {
        Some((channel, kind)) => (Some(channel.trim()), kind.trim()),
        None => (None, text.trim()),
    };
    if kind.is_empty() || channel.is_some_and(str::is_empty) {
        return Err(invalid(
            "steps",
            format!("{text:?} is not `event_type` or `channel:event_type`"),
        ));
    }
    // A type or channel never seen matches nothing: nobody reaches that step.
    let Some(kind) = activity.event_types.get(kind) else {
        return Ok(NOTHING);
    };
    let channel = match channel {
        None => None,
        Some(name) => match activity.channels.get(name) {
            Some(c) => Some(c as u8),
            None => return Ok(NOTHING),
        },
    };
    Ok(Step {
        kind: kind as u16,
        channel,
    })
}

/// A funnel's answer: the steps as asked, with their figures.
#[derive(Clone, Debug, Serialize)]
pub struct FunnelReport {
    /// The steps as asked.
    pub steps: Vec<String>,
    /// The window from the first step to the last, days.
    pub window_days: u32,
    /// The segment the customers were limited to, if any.
    pub segment: Option<String>,
    /// Each step's figures, in order.
    pub figures: Vec<StepFigures>,
}

/// What the data-quality report reads from the store besides the activity.
#[derive(Clone, Debug)]
pub struct QualityFacts {
    /// The identifier kinds each customer (by number) holds.
    pub kinds: HashMap<u32, Vec<String>>,
    /// Every refused record.
    pub refusals: Vec<Refusal>,
}

/// Answers analytics questions over a store, from an activity the caller provides.
#[derive(Clone, Debug)]
pub struct Analyst {
    store: EventStore,
    /// The identifier kinds the identity rules let merge.
    core: HashSet<String>,
}

impl Analyst {
    /// An analyst over `store`, whose identity rules are `rules`.
    pub fn new(store: EventStore, rules: &IdentityRules) -> Self {
        let core = rules
            .kinds()
            .filter(|(_, rule)| rule.strength == Strength::Core)
            .map(|(kind, _)| kind.as_str().to_owned())
            .collect();
        Self { store, core }
    }

    /// Fits BG/NBD and Gamma-Gamma over every live customer's orders in `currency` up to `as_of`
    /// and scores each customer: probability of being active, expected purchases and spend in
    /// the next `horizon_days`; churned by rule after `churn_days` without a purchase. Returns
    /// the report with the `top` customers by expected value, and every customer's values.
    pub fn clv(
        &self,
        activity: &Activity,
        currency: &str,
        as_of: DateTime<Utc>,
        horizon_days: u32,
        churn_days: u32,
        top: usize,
    ) -> Result<(ClvReport, Vec<CustomerValue>), AnalyticsError> {
        if horizon_days == 0 {
            return Err(invalid("horizon_days", "must be at least 1 day"));
        }
        if churn_days == 0 {
            return Err(invalid("churn_days", "must be at least 1 day"));
        }
        let code = activity
            .currencies
            .get(currency)
            .ok_or_else(|| invalid("currency", format!("no order is in {currency:?}")))?;
        let mut customers = Vec::new();
        let mut purchases = Vec::new();
        for (_, c) in activity.live() {
            purchases.clear();
            purchases.extend(
                c.orders
                    .iter()
                    .filter(|o| u32::from(o.currency) == code)
                    .map(|o| (time_of(o.at), o.total_minor)),
            );
            let last = purchases.iter().map(|p| p.0).filter(|t| *t <= as_of).max();
            if let (Some(summary), Some(last)) = (clv::summarize(&purchases, as_of), last) {
                customers.push((c.id, summary, last));
            }
        }
        let summaries: Vec<Summary> = customers.iter().map(|c| c.1).collect();
        let started = Instant::now();
        let fit = |e: clv::FitError| invalid("orders", e.to_string());
        let bg = BgNbd::fit(&summaries).map_err(fit)?;
        let gg = GammaGamma::fit(&summaries).map_err(fit)?;
        let fit_seconds = started.elapsed().as_secs_f64();
        let horizon = f64::from(horizon_days);
        let churn = TimeDelta::days(i64::from(churn_days));
        let values: Vec<CustomerValue> = customers
            .iter()
            .map(|(customer, s, last)| {
                let expected_purchases = bg.expected_purchases(s, horizon);
                let average = gg.expected_average_value(s);
                CustomerValue {
                    customer: *customer,
                    repeat_purchases: s.frequency,
                    recency_days: s.recency,
                    age_days: s.age,
                    days_since_last_purchase: (as_of - *last).num_seconds() as f64 / 86_400.0,
                    p_alive: bg.p_alive(s),
                    expected_purchases,
                    expected_average_value_minor: average,
                    expected_value_minor: expected_purchases * average,
                    churned_by_rule: as_of - *last > churn,
                }
            })
            .collect();
        let n = values.len().max(1) as f64;
        let mut best: Vec<&CustomerValue> = values.iter().collect();
        best.sort_by(|a, b| {
            b.expected_value_minor
                .total_cmp(&a.expected_value_minor)
                .then(a.customer.cmp(&b.customer))
        });
        let report = ClvReport {
            currency: currency.to_owned(),
            as_of,
            horizon_days,
            churn_days,
            customers: values.len() as u64,
            repeat_customers: summaries.iter().filter(|s| s.frequency > 0).count() as u64,
            bg_nbd_log_likelihood: bg.log_likelihood(&summaries),
            bg_nbd: bg,
            gamma_gamma: gg,
            fit_seconds,
            churned_by_rule: values.iter().filter(|v| v.churned_by_rule).count() as u64,
            mean_p_alive: values.iter().map(|v| v.p_alive).sum::<f64>() / n,
            expected_purchases: values.iter().map(|v| v.expected_purchases).sum(),
            expected_value_minor: values.iter().map(|v| v.expected_value_minor).sum(),
            top: best.into_iter().take(top).cloned().collect(),
        };
        Ok((report, values))
    }

    /// Each channel's share of conversions. A conversion is an order; its journey is the
    /// channels of the customer's touchpoints in the `lookback_days` before it (and after their
    /// previous order), or the order's own channel when there were none. Touchpoints after a
    /// customer's last order (within the lookback before `end`) make a journey that did not
    /// convert.
    pub fn attribution(
        &self,
        activity: &Activity,
        lookback_days: u32,
        end: DateTime<Utc>,
    ) -> Result<Attribution, AnalyticsError> {
        if lookback_days == 0 {
            return Err(invalid("lookback_days", "must be at least 1 day"));
        }
        let lookback = i64::from(lookback_days) * 86_400;
        let end = end.timestamp();
        let order = activity.event_types.get(ORDER_PLACED).map(|k| k as u16);
        let channel = |c: u8| activity.channels.name(u32::from(c));
        let mut journeys: Vec<Journey<'_>> = Vec::new();
        let mut pending: Vec<(i64, u8)> = Vec::new();
        for (_, customer) in activity.live() {
            pending.clear();
            for touch in customer.touches.iter().take_while(|t| t.at <= end) {
                if Some(touch.kind) == order {
                    let mut touches: Vec<&str> = pending
                        .iter()
                        .filter(|(at, _)| *at >= touch.at - lookback)
                        .map(|&(_, c)| channel(c))
                        .collect();
                    if touches.is_empty() {
                        touches.push(channel(touch.channel));
                    }
                    journeys.push(Journey::new(touches, true));
                    pending.clear();
                } else {
                    pending.push((touch.at, touch.channel));
                }
            }
            let rest: Vec<&str> = pending
                .iter()
                .filter(|(at, _)| *at >= end - lookback)
                .map(|&(_, c)| channel(c))
                .collect();
            if !rest.is_empty() {
                journeys.push(Journey::new(rest, false));
            }
        }
        attribution::attribute(&journeys).map_err(|e| invalid("channels", e.to_string()))
    }

    /// Frequent itemsets and rules over every live customer's orders (FP-growth).
    pub fn associations(
        &self,
        activity: &Activity,
        ask: &AssociationAsk,
    ) -> Result<AssociationReport, AnalyticsError> {
        let baskets: Vec<Vec<u32>> = activity
            .live()
            .flat_map(|(_, c)| c.orders.iter().map(|o| o.items.to_vec()))
            .collect();
        let itemsets = association::frequent_itemsets(&baskets, ask.min_support, ask.max_length)
            .map_err(association_error)?;
        let rules = association::rules(&itemsets, baskets.len() as u64, ask.min_confidence)
            .map_err(association_error)?;
        let chosen: Vec<&Rule> = match &ask.product {
            Some(sku) => match activity.skus.get(sku) {
                Some(item) => association::bought_together(&rules, item, ask.limit),
                None => return Err(invalid("product", format!("no order holds {sku:?}"))),
            },
            None => rules.iter().take(ask.limit).collect(),
        };
        let names = |items: &[u32]| -> Vec<String> {
            items
                .iter()
                .map(|&i| activity.skus.name(i).to_owned())
                .collect()
        };
        Ok(AssociationReport {
            orders: baskets.len() as u64,
            itemsets: itemsets.len() as u64,
            rules_found: rules.len() as u64,
            rules: chosen
                .into_iter()
                .map(|r| ProductRule {
                    antecedent: names(&r.antecedent),
                    consequent: names(&r.consequent),
                    orders: r.count,
                    support: r.support,
                    confidence: r.confidence,
                    lift: r.lift,
                })
                .collect(),
        })
    }

    /// The effect of targeting a segment's members at `at`: conversion, average order value
    /// and visits in the `window_days` after, against the customers not targeted, made
    /// comparable by their behaviour in the `lookback_days` before. The members are those the
    /// segment held at `at`, by its log of entries and exits.
    pub async fn campaign(
        &self,
        activity: &Activity,
        segment: &str,
        at: DateTime<Utc>,
        window_days: u32,
        lookback_days: u32,
        currency: &str,
    ) -> Result<CampaignEffect, AnalyticsError> {
        let query = self
            .campaign_query(activity, segment, at, window_days, lookback_days, currency)
            .await?;
        campaign_effect(activity, &query)
    }

    /// The question [`Analyst::campaign`] asks of the activity: the segment's members at `at`
    /// (read from the store) and the windows.
    pub async fn campaign_query(
        &self,
        activity: &Activity,
        segment: &str,
        at: DateTime<Utc>,
        window_days: u32,
        lookback_days: u32,
        currency: &str,
    ) -> Result<CampaignQuery, AnalyticsError> {
        self.require_segment(segment).await?;
        let mut members = HashSet::new();
        for change in self.store.segment_log(segment).await? {
            if change.at > at {
                continue;
            }
            if change.entered {
                members.insert(change.customer);
            } else {
                members.remove(&change.customer);
            }
        }
        let targeted = members
            .into_iter()
            .filter_map(|c| activity.number_of(c))
            .collect();
        let currency = activity
            .currencies
            .get(currency)
            .ok_or_else(|| invalid("currency", format!("no order is in {currency:?}")))?;
        Ok(CampaignQuery {
            targeted,
            at: at.timestamp(),
            window_days,
            lookback_days,
            currency: currency as u16,
        })
    }

    /// The data-quality report per `period`, over the last `periods` periods up to now (1 to
    /// [`cohort::MAX_COHORT_PERIODS`]).
    pub async fn quality(
        &self,
        activity: &Activity,
        period: Period,
        periods: u32,
    ) -> Result<QualityReport, AnalyticsError> {
        let facts = self.quality_facts(activity).await?;
        self.quality_of(activity, &facts, period, periods)
    }

    /// What the data-quality report reads from the store besides the activity.
    pub async fn quality_facts(&self, activity: &Activity) -> Result<QualityFacts, AnalyticsError> {
        let kinds = self
            .store
            .identifier_kinds()
            .await?
            .into_iter()
            .filter_map(|(customer, kinds)| Some((activity.number_of(customer)?, kinds)))
            .collect();
        let refusals = self.store.refusals().await?;
        Ok(QualityFacts { kinds, refusals })
    }

    /// The data-quality report per `period` from the activity and `facts`.
    pub fn quality_of(
        &self,
        activity: &Activity,
        facts: &QualityFacts,
        period: Period,
        periods: u32,
    ) -> Result<QualityReport, AnalyticsError> {
        if !(1..=cohort::MAX_COHORT_PERIODS).contains(&periods) {
            return Err(invalid(
                "periods",
                format!("must be 1 to {}, not {periods}", cohort::MAX_COHORT_PERIODS),
            ));
        }
        let last = quality::LastPeriods {
            count: periods,
            end: Utc::now().timestamp(),
        };
        let refusals: Vec<RefusalFact<'_>> = facts
            .refusals
            .iter()
            .map(|r| RefusalFact {
                at: r.received_at.timestamp(),
                source: r.source.as_deref().unwrap_or(""),
                code: &r.code,
            })
            .collect();
        Ok(quality::quality(
            activity,
            &facts.kinds,
            &self.core,
            &refusals,
            period,
            last,
        ))
    }

    /// Fails with [`AnalyticsError::UnknownSegment`] unless `segment` is saved.
    async fn require_segment(&self, segment: &str) -> Result<(), AnalyticsError> {
        if self
            .store
            .segments()
            .await?
            .iter()
            .any(|s| s.name == segment)
        {
            Ok(())
        } else {
            Err(AnalyticsError::UnknownSegment(segment.to_owned()))
        }
    }

    /// The customer numbers of a segment's current members.
    pub async fn members(
        &self,
        activity: &Activity,
        segment: &str,
    ) -> Result<HashSet<u32>, AnalyticsError> {
        self.require_segment(segment).await?;
        let members = self.store.segment_members(segment).await?;
        Ok(members
            .into_iter()
            .filter_map(|c| activity.number_of(c))
            .collect())
    }

    /// The retention table by period of first purchase, of the cohorts of the last `periods`
    /// periods up to `end` (1 to [`cohort::MAX_COHORT_PERIODS`]).
    pub fn cohorts(
        &self,
        activity: &Activity,
        period: Period,
        by_channel: bool,
        periods: u32,
        end: DateTime<Utc>,
    ) -> Result<CohortTable, AnalyticsError> {
        if !(1..=cohort::MAX_COHORT_PERIODS).contains(&periods) {
            return Err(invalid(
                "periods",
                format!("must be 1 to {}, not {periods}", cohort::MAX_COHORT_PERIODS),
            ));
        }
        Ok(cohort::cohorts(
            activity,
            period,
            by_channel,
            periods,
            end.timestamp(),
        ))
    }

    /// Conversion through the asked steps (of the asked segment's current members).
    pub async fn funnel(
        &self,
        activity: &Activity,
        ask: &FunnelAsk,
    ) -> Result<FunnelReport, AnalyticsError> {
        let members = match &ask.segment {
            Some(name) => Some(self.members(activity, name).await?),
            None => None,
        };
        funnel_among(activity, ask, members.as_ref())
    }

    /// The most common paths to a first purchase, observed up to `end`.
    pub fn paths(
        &self,
        activity: &Activity,
        max_steps: usize,
        limit: usize,
        end: DateTime<Utc>,
    ) -> Result<Vec<PathRow>, AnalyticsError> {
        if !(1..=20).contains(&max_steps) {
            return Err(invalid("max_steps", "must be 1 to 20"));
        }
        Ok(paths::paths(activity, max_steps, limit, end.timestamp()))
    }
}

/// The effect of the targeting `query` asks about.
pub fn campaign_effect(
    activity: &Activity,
    query: &CampaignQuery,
) -> Result<CampaignEffect, AnalyticsError> {
    campaign::campaign_effect(activity, query).map_err(|e| {
        let parameter = match e {
            CampaignError::EmptyWindow => "window_days",
            _ => "segment",
        };
        invalid(parameter, e.to_string())
    })
}

/// The funnel `ask` over the customers numbered in `members` (everyone without), checking the
/// steps and the window.
pub fn funnel_among(
    activity: &Activity,
    ask: &FunnelAsk,
    members: Option<&HashSet<u32>>,
) -> Result<FunnelReport, AnalyticsError> {
    if !(2..=10).contains(&ask.steps.len()) {
        return Err(invalid(
            "steps",
            format!("a funnel has 2 to 10 steps, not {}", ask.steps.len()),
        ));
    }
    if ask.window_days == 0 {
        return Err(invalid("window_days", "must be at least 1 day"));
    }
    let steps = ask
        .steps
        .iter()
        .map(|s| parse_step(activity, s))
        .collect::<Result<Vec<_>, _>>()?;
    let figures = funnel::funnel(
        activity,
        &FunnelQuery {
            steps,
            window: i64::from(ask.window_days) * 86_400,
            from: ask.from.map_or(i64::MIN, |t| t.timestamp()),
            to: ask.to.map_or(i64::MAX, |t| t.timestamp()),
            customers: members,
        },
    );
    Ok(FunnelReport {
        steps: ask.steps.clone(),
        window_days: ask.window_days,
        segment: ask.segment.clone(),
        figures,
    })
}
