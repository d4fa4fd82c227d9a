//! The GraphQL backend: the [`patron_graphql::Backend`] port implemented over the event store,
//! the ingestion queue and the keys.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use patron_domain::customer::CustomerId;
use patron_graphql::backend::{
    Bucket, Change, Correction, CorrectionRecord, CustomerPage, CustomerRecord, CustomerSort,
    Dimension, ErasureRecord, ExplanationRecord, ExplanationStepRecord, HistoryEvent, IngestAnswer,
    MembershipChange, NewApiKey, PersonAsk, Purpose, QuarantineRecord, ScanRecord, Scores,
    SegmentRecord, SuggestionRecord,
};
use patron_graphql::loader::{LookupAllowance, LookupBudget};
use patron_graphql::{codes, ApiKey, Backend, BackendError, BackendResult, Role};
use patron_projections::analytics::attribution::Attribution;
use patron_projections::analytics::campaign::CampaignEffect;
use patron_projections::analytics::cohort::{CohortTable, Period};
use patron_projections::analytics::funnel::{FunnelAsk, StepFigures};
use patron_projections::analytics::paths::PathRow;
use patron_projections::analytics::quality::QualityReport;
use patron_projections::analytics::report::{AssociationAsk, AssociationReport, ClvReport};
use patron_projections::profile::Profile;
use patron_projections::segment::Rule;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use crate::access_export::{Exporter, Person, Requester};
use crate::correction::{Corrector, Request};
use crate::ingest::{CommitQueue, Incoming, RecordOutcome};
use crate::population::{Order, ResidentPopulation};
use crate::privacy::{erase, Opener};
use crate::projection::{Announcement, ProfileProjection, ProjectionError};
use crate::review::Reviewer;
use crate::segmentation;
use crate::store::access::{AccessEntry, StoredKey};
use crate::store::projection::ProfileTable;
use crate::store::scores::{ScoreColumn, ScoreRow};
use crate::store::segments::consented;
use crate::store::{EventStore, StoreError};

use super::Metrics;
use crate::analytics::{
    campaign_effect, compute, funnel_among, Analyst, AnalyticsError, AnalyticsGate,
    ResidentActivity, Turn,
};

/// Events a correction's profile catch-up reads at a time.
const CORRECTION_BATCH: usize = 20_000;

/// Announcements kept for slow subscribers before they miss some.
pub const ANNOUNCEMENT_BUFFER: usize = 4_096;

/// The backend of the server's GraphQL schema.
pub struct StoreBackend {
    store: EventStore,
    commits: CommitQueue,
    opener: Opener,
    currency: String,
    announcements: broadcast::Sender<Announcement>,
    metrics: Arc<Metrics>,
    population: Arc<ResidentPopulation>,
    activity: ResidentActivity,
    analyst: Arc<Analyst>,
    /// Turns to analyse, shared by every request.
    gate: AnalyticsGate,
    corrector: Corrector,
    reviewer: Reviewer,
    lookups: LookupBudget,
    exporter: Exporter,
}

impl StoreBackend {
    /// A backend over `commits`' store, ingesting through `commits`, judging spend in
    /// `currency`, relaying `announcements` to subscribers, counting ingestion in `metrics`,
    /// searching the resident `population`, analysing in the turns of `gate` (over the store's
    /// long-read connections).
    pub fn new(
        commits: CommitQueue,
        currency: impl Into<String>,
        announcements: broadcast::Sender<Announcement>,
        metrics: Arc<Metrics>,
        population: Arc<ResidentPopulation>,
        gate: AnalyticsGate,
    ) -> Self {
        let store = commits.ingestor().store().clone();
        let opener = Opener::new(store.clone(), commits.ingestor().master_key().clone());
        let long_reads = store.long_reads();
        let analyst = Arc::new(Analyst::new(long_reads.clone(), commits.ingestor().rules()));
        let activity = ResidentActivity::new(long_reads);
        let currency = currency.into();
        let projection = ProfileProjection::new(store.clone(), CORRECTION_BATCH)
            .with_announcements(announcements.clone())
            .with_population(population.clone())
            .with_segments(&currency);
        let corrector = Corrector::new(commits.ingestor().clone(), projection.clone());
        let exporter = Exporter::new(commits.ingestor().clone(), projection);
        let reviewer = Reviewer::new(commits.ingestor().clone(), corrector.clone());
        Self {
            reviewer,
            exporter,
            store,
            commits,
            opener,
            currency,
            announcements,
            metrics,
            population,
            activity,
            analyst,
            gate,
            corrector,
            lookups: LookupBudget::new(LookupAllowance::default()),
        }
    }

    /// A turn to analyse and the activity up to the log's head.
    async fn turn(
        &self,
    ) -> BackendResult<(
        Turn,
        tokio::sync::OwnedRwLockReadGuard<patron_projections::analytics::activity::Activity>,
    )> {
        let turn = self.gate.enter().await.map_err(analytics_error)?;
        let activity = self.activity.read().await.map_err(analytics_error)?;
        Ok((turn, activity))
    }

    /// Runs `work` in a turn, on a blocking thread.
    async fn analyse<T, F>(&self, work: F) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(
                &Analyst,
                &patron_projections::analytics::activity::Activity,
            ) -> Result<T, AnalyticsError>
            + Send
            + 'static,
    {
        let (turn, activity) = self.turn().await?;
        let analyst = self.analyst.clone();
        compute(turn, activity, move |activity| work(&analyst, activity))
            .await
            .map_err(analytics_error)
    }

    /// Runs `work` over the resident population in an analytics turn, on a blocking thread: a
    /// rule judged over every customer takes its turn like any whole-base analysis.
    async fn over_population<T, F>(&self, work: F) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&crate::population::Population) -> T + Send + 'static,
    {
        let turn = self.gate.enter().await.map_err(analytics_error)?;
        let population = self.population.read().await.map_err(projection_error)?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work(&population)
        })
        .await
        .map_err(|e| analytics_error(AnalyticsError::Failed(e.to_string())))
    }

    /// The same backend, allowing each key the identifier lookups per hour of its role in
    /// `allowance` (its buckets start full).
    pub fn with_lookup_allowance(mut self, allowance: LookupAllowance) -> Self {
        self.lookups = LookupBudget::new(allowance);
        self
    }

    /// Reads the customers' activity into memory (what analytics answers from), logging a
    /// failure: the first analytics request tries again.
    pub async fn warm_up(&self) {
        if let Err(e) = self.activity.read().await {
            tracing::warn!(error = %e, "cannot read the activity for analytics yet");
        }
    }
}

/// The SHA-256 of an API key's secret, as stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random API key secret: `patron_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("patron_{}", hex::encode(bytes))
}

fn store_error(e: StoreError) -> BackendError {
    BackendError::new(e.code(), e.to_string())
}

fn projection_error(e: ProjectionError) -> BackendError {
    BackendError::new(e.code(), e.to_string())
}

fn api_key(stored: StoredKey) -> BackendResult<ApiKey> {
    let role = stored
        .role
        .parse::<Role>()
        .map_err(|e| BackendError::new("CORRUPT_KEY", e.to_string()))?;
    Ok(ApiKey {
        id: stored.id,
        name: stored.name,
        role,
        created_at: stored.created_at,
        revoked_at: stored.revoked_at,
    })
}

fn parse_rule(rule: &str) -> BackendResult<Rule> {
    Rule::parse(rule).map_err(|e| BackendError::new("INVALID_RULE", e.to_string()))
}

fn scores(row: ScoreRow) -> Scores {
    Scores {
        tier: row.tier,
        stage: row.stage,
        rfm_segment: row.rfm_segment,
        rfm: row.rfm,
        recency_days: row.recency_days,
        frequency: row.frequency,
        monetary_minor: row.monetary_minor,
    }
}

fn ids(customers: &[Uuid]) -> Vec<CustomerId> {
    customers
        .iter()
        .map(|c| CustomerId::from_uuid(*c))
        .collect()
}

#[async_trait]
impl Backend for StoreBackend {
    async fn live_customer(&self, id: Uuid) -> BackendResult<Option<Uuid>> {
        let live = self
            .store
            .live_customer(CustomerId::from_uuid(id))
            .await
            .map_err(store_error)?;
        Ok(Some(live.as_uuid()))
    }

    async fn customer_by_identifier(&self, kind: &str, value: &str) -> BackendResult<Option<Uuid>> {
        let found = self
            .commits
            .ingestor()
            .customer_by_identifier(kind, value)
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(found.map(|c| c.as_uuid()))
    }

    async fn spend_lookup(&self, key: &ApiKey) -> BackendResult<()> {
        let spent = self.lookups.spend(key);
        self.metrics.count_lookup(key.role.as_str(), spent.is_err());
        spent.map_err(|exhausted| {
            tracing::warn!(
                key_id = %key.id,
                key_name = %key.name,
                role = %key.role,
                per_hour = exhausted.per_hour,
                retry_after_seconds = exhausted.retry_after.as_secs(),
                "identifier lookup refused: the key's lookup budget is spent"
            );
            BackendError::new(codes::LOOKUP_BUDGET_EXHAUSTED, exhausted.to_string())
        })
    }

    #[tracing::instrument(name = "api.customers", skip_all, fields(customers = customers.len()))]
    async fn customers(&self, customers: &[Uuid]) -> BackendResult<HashMap<Uuid, CustomerRecord>> {
        let wanted = ids(customers);
        let (states, mut scores_of, mut tags, mut segments) = tokio::try_join!(
            self.store.profiles_of(ProfileTable::Live, &wanted),
            self.store.scores_of(&wanted),
            self.store.tags_of_many(&wanted),
            self.store.memberships_of(&wanted),
        )
        .map_err(store_error)?;
        let mut found = HashMap::with_capacity(states.len());
        for (customer, profile) in states {
            if profile.merged_into.is_some() {
                continue;
            }
            found.insert(
                customer.as_uuid(),
                CustomerRecord {
                    id: customer.as_uuid(),
                    profile,
                    scores: scores_of.remove(&customer).map(scores),
                    tags: tags.remove(&customer).unwrap_or_default(),
                    segments: segments.remove(&customer).unwrap_or_default(),
                },
            );
        }
        Ok(found)
    }

    #[tracing::instrument(name = "api.list", skip(self))]
    async fn list(
        &self,
        after: Option<Uuid>,
        first: usize,
        count: bool,
    ) -> BackendResult<CustomerPage> {
        let page = self
            .store
            .live_customer_page(after.map(CustomerId::from_uuid), first + 1)
            .await
            .map_err(store_error)?;
        let total = if count {
            Some(
                self.store
                    .live_customer_count()
                    .await
                    .map_err(store_error)?,
            )
        } else {
            None
        };
        let has_more = page.len() > first;
        Ok(CustomerPage {
            ids: page.into_iter().take(first).map(|c| c.as_uuid()).collect(),
            has_more,
            total,
        })
    }

    #[tracing::instrument(name = "api.search", skip(self))]
    async fn search(
        &self,
        rule: Option<&str>,
        sort: CustomerSort,
        offset: usize,
        first: usize,
    ) -> BackendResult<CustomerPage> {
        let rule = rule.map(parse_rule).transpose()?;
        let order = match sort {
            CustomerSort::Id => Order::Id,
            CustomerSort::LastSeen => Order::LastSeen,
            CustomerSort::Revenue => Order::Revenue,
            CustomerSort::Orders => Order::Orders,
        };
        let currency = self.currency.clone();
        let found = self
            .over_population(move |population| {
                population.search(rule.as_ref(), order, &currency, Utc::now())
            })
            .await?;
        Ok(CustomerPage {
            total: Some(found.len() as u64),
            has_more: found.len() > offset.saturating_add(first),
            ids: found
                .into_iter()
                .skip(offset)
                .take(first)
                .map(|c| c.as_uuid())
                .collect(),
        })
    }

    #[tracing::instrument(name = "api.history", skip(self))]
    async fn history(&self, id: Uuid) -> BackendResult<Vec<HistoryEvent>> {
        let events = self
            .opener
            .history(CustomerId::from_uuid(id))
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(events
            .into_iter()
            .map(|e| {
                let payload: serde_json::Value =
                    serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null);
                let channel = payload
                    .get("channel")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned)
                    .or(e.metadata.channel.clone());
                let source = payload
                    .get("source")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned)
                    .or(e.metadata.source.clone());
                HistoryEvent {
                    position: e.position,
                    event_id: e.event_id.as_uuid(),
                    customer: CustomerId::from_stream(&e.stream_id)
                        .map_or(Uuid::nil(), |c| c.as_uuid()),
                    event_type: e.event_type,
                    occurred_at: e.occurred_at,
                    recorded_at: e.recorded_at,
                    channel,
                    source,
                    actor: e.metadata.actor,
                    reason: e.metadata.reason,
                    payload,
                }
            })
            .collect())
    }

    async fn log_access(&self, key: &ApiKey, customer: Uuid, what: &str) -> BackendResult<()> {
        self.store
            .log_access(&AccessEntry {
                at: Utc::now(),
                key_id: key.id,
                key_name: key.name.clone(),
                customer: CustomerId::from_uuid(customer),
                what: what.to_owned(),
                reason: None,
            })
            .await
            .map_err(store_error)
    }

    async fn segments(&self) -> BackendResult<Vec<SegmentRecord>> {
        Ok(self
            .store
            .segments()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|s| SegmentRecord {
                purpose: s.purpose.as_deref().and_then(Purpose::parse),
                name: s.name,
                rule: s.rule,
                size: s.members,
            })
            .collect())
    }

    async fn segment_members(
        &self,
        name: &str,
        after: Option<Uuid>,
        first: usize,
    ) -> BackendResult<Vec<Uuid>> {
        Ok(self
            .store
            .segment_member_page(name, after.map(CustomerId::from_uuid), first)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|c| c.as_uuid())
            .collect())
    }

    #[tracing::instrument(name = "api.preview_segment", skip(self))]
    async fn preview_segment(&self, rule: &str) -> BackendResult<u64> {
        let rule = parse_rule(rule)?;
        let currency = self.currency.clone();
        self.over_population(move |population| {
            population.judge(&rule, &currency, Utc::now()).len() as u64
        })
        .await
    }

    #[tracing::instrument(name = "api.save_segment", skip(self))]
    async fn save_segment(
        &self,
        name: &str,
        rule: &str,
        purpose: Option<Purpose>,
    ) -> BackendResult<SegmentRecord> {
        let parsed = parse_rule(rule)?;
        let now = Utc::now();
        let purpose = purpose.map(Purpose::as_str);
        // The rule judged (with its purpose's consent) must be readable before it is saved.
        let judged = match purpose {
            Some(purpose) => Rule::parse_judged(&consented(parsed.text(), purpose))
                .map_err(|e| BackendError::new("INVALID_RULE", e.to_string()))?,
            None => parsed.clone(),
        };
        self.store
            .save_segment_for(name, parsed.text(), purpose, now)
            .await
            .map_err(store_error)?;
        // Judging every customer takes an analytics turn, like a preview.
        let _turn = self.gate.enter().await.map_err(analytics_error)?;
        let population = self.population.read().await.map_err(projection_error)?;
        segmentation::refresh_one(&self.store, &population, name, &judged, &self.currency, now)
            .await
            .map_err(projection_error)?;
        drop(population);
        self.segments()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| BackendError::new("NOT_FOUND", format!("segment {name:?} vanished")))
    }

    async fn delete_segment(&self, name: &str) -> BackendResult<bool> {
        self.store.delete_segment(name).await.map_err(store_error)
    }

    async fn cohorts(
        &self,
        period: Period,
        by_channel: bool,
        periods: u32,
    ) -> BackendResult<CohortTable> {
        self.analyse(move |analyst, activity| {
            analyst.cohorts(activity, period, by_channel, periods, Utc::now())
        })
        .await
    }

    async fn funnel(&self, ask: FunnelAsk) -> BackendResult<Vec<StepFigures>> {
        let (turn, activity) = self.turn().await?;
        let members = match &ask.segment {
            Some(name) => Some(
                self.analyst
                    .members(&activity, name)
                    .await
                    .map_err(analytics_error)?,
            ),
            None => None,
        };
        compute(turn, activity, move |activity| {
            Ok(funnel_among(activity, &ask, members.as_ref())?.figures)
        })
        .await
        .map_err(analytics_error)
    }

    async fn clv(&self, horizon: u32, churn: u32, top: usize) -> BackendResult<ClvReport> {
        let currency = self.currency.clone();
        self.analyse(move |analyst, activity| {
            let (report, _) = analyst.clv(activity, &currency, Utc::now(), horizon, churn, top)?;
            Ok(report)
        })
        .await
    }

    async fn attribution(&self, lookback_days: u32) -> BackendResult<Attribution> {
        self.analyse(move |analyst, activity| {
            analyst.attribution(activity, lookback_days, Utc::now())
        })
        .await
    }

    async fn associations(&self, ask: AssociationAsk) -> BackendResult<AssociationReport> {
        self.analyse(move |analyst, activity| analyst.associations(activity, &ask))
            .await
    }

    async fn campaign(
        &self,
        segment: &str,
        at: DateTime<Utc>,
        window_days: u32,
        lookback_days: u32,
    ) -> BackendResult<CampaignEffect> {
        let (turn, activity) = self.turn().await?;
        let query = self
            .analyst
            .campaign_query(
                &activity,
                segment,
                at,
                window_days,
                lookback_days,
                &self.currency,
            )
            .await
            .map_err(analytics_error)?;
        compute(turn, activity, move |activity| {
            campaign_effect(activity, &query)
        })
        .await
        .map_err(analytics_error)
    }

    async fn quality(&self, period: Period, periods: u32) -> BackendResult<QualityReport> {
        let (turn, activity) = self.turn().await?;
        let facts = self
            .analyst
            .quality_facts(&activity)
            .await
            .map_err(analytics_error)?;
        let analyst = self.analyst.clone();
        compute(turn, activity, move |activity| {
            analyst.quality_of(activity, &facts, period, periods)
        })
        .await
        .map_err(analytics_error)
    }

    async fn paths(&self, max_steps: usize, limit: usize) -> BackendResult<Vec<PathRow>> {
        self.analyse(move |analyst, activity| analyst.paths(activity, max_steps, limit, Utc::now()))
            .await
    }

    async fn distribution(&self, dimension: Dimension) -> BackendResult<Vec<Bucket>> {
        let counts = match dimension {
            Dimension::Tier => self.store.score_counts(ScoreColumn::Tier).await,
            Dimension::Stage => self.store.score_counts(ScoreColumn::Stage).await,
            Dimension::RfmSegment => self.store.score_counts(ScoreColumn::RfmSegment).await,
            Dimension::Tag => self.store.tag_counts().await,
            Dimension::Channel => Ok(self
                .over_population(|population| population.preferred_channels().into_iter().collect())
                .await?),
        }
        .map_err(store_error)?;
        Ok(counts
            .into_iter()
            .map(|(value, customers)| Bucket { value, customers })
            .collect())
    }

    async fn quarantine(&self, after: u64, first: usize) -> BackendResult<Vec<QuarantineRecord>> {
        Ok(self
            .store
            .quarantined(after, first)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|r| QuarantineRecord {
                id: r.id,
                received_at: r.received_at,
                source: r.source,
                code: r.code,
                field: r.field,
                reason: r.reason,
                record: r.record,
                expired_at: r.expired_at,
            })
            .collect())
    }

    #[tracing::instrument(name = "api.ingest", skip_all, fields(records = records.len(), actor))]
    async fn ingest(&self, records: Vec<String>, actor: &str) -> BackendResult<Vec<IngestAnswer>> {
        tracing::Span::current().record("actor", actor);
        let report = self
            .commits
            .ingest(records.into_iter().map(Incoming::json).collect())
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        self.metrics.count_ingested(&report);
        Ok(report
            .records
            .into_iter()
            .map(|outcome| match outcome {
                RecordOutcome::Accepted {
                    event_id, customer, ..
                } => IngestAnswer {
                    status: "accepted".into(),
                    event_id: Some(event_id.as_uuid()),
                    customer: Some(customer.as_uuid()),
                    code: None,
                    field: None,
                    reason: None,
                    quarantine_id: None,
                },
                RecordOutcome::Duplicate { event_id, .. } => IngestAnswer {
                    status: "duplicate".into(),
                    event_id: Some(event_id.as_uuid()),
                    customer: None,
                    code: None,
                    field: None,
                    reason: None,
                    quarantine_id: None,
                },
                RecordOutcome::Rejected {
                    rejection,
                    quarantine_id,
                } => IngestAnswer {
                    status: "rejected".into(),
                    event_id: None,
                    customer: None,
                    code: Some(rejection.code.as_str().to_owned()),
                    field: Some(rejection.field),
                    reason: Some(rejection.reason),
                    quarantine_id: Some(quarantine_id),
                },
            })
            .collect())
    }

    #[tracing::instrument(name = "api.correct", skip(self, ask, reason))]
    async fn correct(
        &self,
        ask: Correction,
        actor: &str,
        reason: &str,
        expected_version: Option<u64>,
    ) -> BackendResult<CorrectionRecord> {
        let request = Request {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            expected_version,
        };
        let outcome = self
            .corrector
            .correct(ask, &request)
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(correction_record(outcome))
    }

    #[tracing::instrument(name = "api.explain_identifier", skip(self, value))]
    async fn explain_identifier(
        &self,
        kind: &str,
        value: &str,
    ) -> BackendResult<ExplanationRecord> {
        let explanation = self
            .corrector
            .explain(kind, value)
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(ExplanationRecord {
            customer: explanation.customer.map(|c| c.as_uuid()),
            blocked: explanation.blocked,
            steps: explanation
                .steps
                .into_iter()
                .map(|s| ExplanationStepRecord {
                    step: s.step,
                    position: s.position,
                    event_id: s.event_id.as_uuid(),
                    event_type: s.event_type,
                    customer: s.customer.map(|c| c.as_uuid()),
                    occurred_at: s.occurred_at,
                    source: s.source,
                    actor: s.actor,
                    reason: s.reason,
                    rules_version: s.rules_version,
                })
                .collect(),
        })
    }

    #[tracing::instrument(name = "api.profile_as_of", skip(self))]
    async fn profile_as_of(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        known_at: Option<DateTime<Utc>>,
    ) -> BackendResult<Option<Profile>> {
        crate::time_travel::profile_as_of(&self.store, CustomerId::from_uuid(id), at, known_at)
            .await
            .map_err(projection_error)
    }

    async fn suggestions(&self, max: usize) -> BackendResult<Vec<SuggestionRecord>> {
        let queue = self
            .reviewer
            .queue(max)
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(queue
            .into_iter()
            .map(|s| SuggestionRecord {
                id: s.stored.id,
                first: s.stored.first.as_uuid(),
                second: s.stored.second.as_uuid(),
                score: s.stored.score,
                evidence: s
                    .evidence
                    .into_iter()
                    .map(|e| (e.signal, e.weight_bits, e.detail))
                    .collect(),
                found_at: s.stored.found_at,
            })
            .collect())
    }

    #[tracing::instrument(name = "api.scan_duplicates", skip(self))]
    async fn scan_duplicates(&self) -> BackendResult<ScanRecord> {
        let report = self
            .reviewer
            .scan(|_, _| {})
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(ScanRecord {
            touchpoints: report.touchpoints,
            customers: report.customers,
            pairs: report.pairs,
            new: report.new,
            withdrawn: report.withdrawn,
            seconds: report.seconds,
        })
    }

    #[tracing::instrument(name = "api.decide_suggestion", skip(self, reason))]
    async fn decide_suggestion(
        &self,
        id: i64,
        accept: bool,
        actor: &str,
        reason: &str,
    ) -> BackendResult<Option<CorrectionRecord>> {
        let failed = |e: crate::review::ReviewError| BackendError::new(e.code(), e.to_string());
        if !accept {
            self.reviewer
                .reject(id, actor, reason)
                .await
                .map_err(failed)?;
            return Ok(None);
        }
        let outcome = self
            .reviewer
            .accept(id, actor, reason)
            .await
            .map_err(failed)?;
        Ok(Some(correction_record(outcome)))
    }

    async fn customer_version(&self, id: Uuid) -> BackendResult<u64> {
        self.store
            .stream_version(&CustomerId::from_uuid(id).stream_id())
            .await
            .map_err(store_error)
    }

    #[tracing::instrument(name = "api.erase", skip(self))]
    async fn erase(&self, id: Uuid, actor: &str, reason: &str) -> BackendResult<ErasureRecord> {
        let erasure = erase(
            self.commits.ingestor(),
            CustomerId::from_uuid(id),
            actor,
            reason,
        )
        .await
        .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        Ok(ErasureRecord {
            customer: erasure.customer.as_uuid(),
            keys_destroyed: erasure.keys_destroyed.iter().map(|c| c.as_uuid()).collect(),
            identifiers_removed: erasure.identifiers_removed,
            quarantined_removed: erasure.quarantined_removed,
            scrubbed: erasure.scrubbed,
        })
    }

    #[tracing::instrument(name = "api.export_person", skip(self, key, person, reason))]
    async fn export_person(
        &self,
        key: &ApiKey,
        person: PersonAsk,
        reason: &str,
    ) -> BackendResult<serde_json::Value> {
        let person = match person {
            PersonAsk::Customer(id) => Person::Customer(CustomerId::from_uuid(id)),
            PersonAsk::Identifier { kind, value } => Person::Identifier { kind, value },
        };
        let requester = Requester {
            key: Some((key.id, key.name.clone())),
            actor: format!("api-key:{}", key.name),
            reason: reason.to_owned(),
        };
        let document = self
            .exporter
            .export(&person, &requester)
            .await
            .map_err(|e| BackendError::new(e.code(), e.to_string()))?;
        serde_json::to_value(&document)
            .map_err(|e| BackendError::new("INTERNAL", format!("the export does not encode: {e}")))
    }

    async fn create_key(&self, name: &str, role: Role) -> BackendResult<NewApiKey> {
        let secret = new_secret();
        let stored = self
            .store
            .create_api_key(name, role.as_str(), &secret_hash(&secret), Utc::now())
            .await
            .map_err(store_error)?;
        Ok(NewApiKey {
            key: api_key(stored)?,
            secret,
        })
    }

    async fn key_is_live(&self, id: Uuid) -> BackendResult<bool> {
        Ok(self
            .store
            .api_key(id)
            .await
            .map_err(store_error)?
            .is_some_and(|k| k.revoked_at.is_none()))
    }

    async fn revoke_key(&self, id: Uuid) -> BackendResult<bool> {
        self.store
            .revoke_api_key(id, Utc::now())
            .await
            .map_err(store_error)
    }

    async fn keys(&self) -> BackendResult<Vec<ApiKey>> {
        self.store
            .api_keys()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(api_key)
            .collect()
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        BroadcastStream::new(self.announcements.subscribe())
            .filter_map(|announcement| async move {
                // A subscriber too slow to keep up misses announcements rather than stalling
                // the projection.
                match announcement.ok()? {
                    Announcement::ProfileUpdated { customer, position } => {
                        Some(Change::CustomerUpdated {
                            customer: customer.as_uuid(),
                            position,
                        })
                    }
                    Announcement::Membership {
                        segment,
                        customer,
                        entered,
                        at,
                    } => Some(Change::Membership(MembershipChange {
                        segment,
                        customer: customer.as_uuid(),
                        entered,
                        at,
                    })),
                }
            })
            .boxed()
    }
}

fn correction_record(outcome: crate::correction::Outcome) -> CorrectionRecord {
    CorrectionRecord {
        applied: outcome.applied,
        note: outcome.note,
        customers: outcome.customers.iter().map(|c| c.as_uuid()).collect(),
        touchpoints_moved: outcome.touchpoints_moved as u64,
        identifiers_moved: outcome.identifiers_moved as u64,
        kept: outcome.kept,
        position: outcome.position,
    }
}

fn analytics_error(e: AnalyticsError) -> BackendError {
    BackendError::new(e.code(), e.to_string())
}
