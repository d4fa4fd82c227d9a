//! Batch loading: a page of customers costs a constant number of reads of the read models,
//! however many customers it holds. The schema runs over the real backend and store, wrapped to
//! count the calls that reach the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use patron::analytics::{AnalyticsGate, AnalyticsLimits};
use patron::ingest::{CommitQueue, Ingestor};
use patron::population::ResidentPopulation;
use patron::projection::ProfileProjection;
use patron::server::{Metrics, StoreBackend};
use patron_domain::identity::IdentityRules;
use patron_graphql::backend::{
    Bucket, Change, Correction, CorrectionRecord, CustomerPage, CustomerRecord, CustomerSort,
    Dimension, ErasureRecord, ExplanationRecord, HistoryEvent, IngestAnswer, NewApiKey, PersonAsk,
    Purpose, QuarantineRecord, SegmentRecord,
};
use patron_graphql::{ApiKey, Backend, BackendResult, Role};
use patron_projections::analytics::attribution::Attribution;
use patron_projections::analytics::campaign::CampaignEffect;
use patron_projections::analytics::cohort::{CohortTable, Period};
use patron_projections::analytics::funnel::{FunnelAsk, StepFigures};
use patron_projections::analytics::paths::PathRow;
use patron_projections::analytics::quality::QualityReport;
use patron_projections::analytics::report::{AssociationAsk, AssociationReport, ClvReport};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{master_key, TestStore};

/// The store's backend, counting the batch reads of customers.
struct Counting {
    inner: StoreBackend,
    customer_batches: AtomicUsize,
    list_calls: AtomicUsize,
}

#[async_trait]
impl Backend for Counting {
    async fn live_customer(&self, id: Uuid) -> BackendResult<Option<Uuid>> {
        self.inner.live_customer(id).await
    }
    async fn customer_by_identifier(&self, kind: &str, value: &str) -> BackendResult<Option<Uuid>> {
        self.inner.customer_by_identifier(kind, value).await
    }
    async fn customers(&self, ids: &[Uuid]) -> BackendResult<HashMap<Uuid, CustomerRecord>> {
        self.customer_batches.fetch_add(1, Ordering::SeqCst);
        self.inner.customers(ids).await
    }
    async fn list(
        &self,
        after: Option<Uuid>,
        first: usize,
        count: bool,
    ) -> BackendResult<CustomerPage> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list(after, first, count).await
    }
    async fn search(
        &self,
        rule: Option<&str>,
        sort: CustomerSort,
        offset: usize,
        first: usize,
    ) -> BackendResult<CustomerPage> {
        self.inner.search(rule, sort, offset, first).await
    }
    async fn history(&self, id: Uuid) -> BackendResult<Vec<HistoryEvent>> {
        self.inner.history(id).await
    }
    async fn log_access(&self, key: &ApiKey, customer: Uuid, what: &str) -> BackendResult<()> {
        self.inner.log_access(key, customer, what).await
    }
    async fn segments(&self) -> BackendResult<Vec<SegmentRecord>> {
        self.inner.segments().await
    }
    async fn correct(
        &self,
        ask: Correction,
        actor: &str,
        reason: &str,
        expected_version: Option<u64>,
    ) -> BackendResult<CorrectionRecord> {
        self.inner
            .correct(ask, actor, reason, expected_version)
            .await
    }
    async fn explain_identifier(
        &self,
        kind: &str,
        value: &str,
    ) -> BackendResult<ExplanationRecord> {
        self.inner.explain_identifier(kind, value).await
    }
    async fn customer_version(&self, id: Uuid) -> BackendResult<u64> {
        self.inner.customer_version(id).await
    }
    async fn suggestions(
        &self,
        max: usize,
    ) -> BackendResult<Vec<patron_graphql::backend::SuggestionRecord>> {
        self.inner.suggestions(max).await
    }
    async fn scan_duplicates(&self) -> BackendResult<patron_graphql::backend::ScanRecord> {
        self.inner.scan_duplicates().await
    }
    async fn decide_suggestion(
        &self,
        id: i64,
        accept: bool,
        actor: &str,
        reason: &str,
    ) -> BackendResult<Option<CorrectionRecord>> {
        self.inner
            .decide_suggestion(id, accept, actor, reason)
            .await
    }
    async fn profile_as_of(
        &self,
        id: Uuid,
        at: chrono::DateTime<chrono::Utc>,
        known_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> BackendResult<Option<patron_projections::profile::Profile>> {
        self.inner.profile_as_of(id, at, known_at).await
    }
    async fn segment_members(
        &self,
        name: &str,
        after: Option<Uuid>,
        first: usize,
    ) -> BackendResult<Vec<Uuid>> {
        self.inner.segment_members(name, after, first).await
    }
    async fn preview_segment(&self, rule: &str) -> BackendResult<u64> {
        self.inner.preview_segment(rule).await
    }
    async fn save_segment(
        &self,
        name: &str,
        rule: &str,
        purpose: Option<Purpose>,
    ) -> BackendResult<SegmentRecord> {
        self.inner.save_segment(name, rule, purpose).await
    }
    async fn delete_segment(&self, name: &str) -> BackendResult<bool> {
        self.inner.delete_segment(name).await
    }
    async fn distribution(&self, dimension: Dimension) -> BackendResult<Vec<Bucket>> {
        self.inner.distribution(dimension).await
    }
    async fn quarantine(&self, after: u64, first: usize) -> BackendResult<Vec<QuarantineRecord>> {
        self.inner.quarantine(after, first).await
    }
    async fn ingest(&self, records: Vec<String>, actor: &str) -> BackendResult<Vec<IngestAnswer>> {
        self.inner.ingest(records, actor).await
    }
    async fn erase(&self, id: Uuid, actor: &str, reason: &str) -> BackendResult<ErasureRecord> {
        self.inner.erase(id, actor, reason).await
    }
    async fn export_person(
        &self,
        key: &ApiKey,
        person: PersonAsk,
        reason: &str,
    ) -> BackendResult<serde_json::Value> {
        self.inner.export_person(key, person, reason).await
    }
    async fn create_key(&self, name: &str, role: Role) -> BackendResult<NewApiKey> {
        self.inner.create_key(name, role).await
    }
    async fn key_is_live(&self, id: Uuid) -> BackendResult<bool> {
        self.inner.key_is_live(id).await
    }
    async fn revoke_key(&self, id: Uuid) -> BackendResult<bool> {
        self.inner.revoke_key(id).await
    }
    async fn keys(&self) -> BackendResult<Vec<ApiKey>> {
        self.inner.keys().await
    }
    async fn cohorts(
        &self,
        period: Period,
        by_channel: bool,
        periods: u32,
    ) -> BackendResult<CohortTable> {
        self.inner.cohorts(period, by_channel, periods).await
    }
    async fn funnel(&self, ask: FunnelAsk) -> BackendResult<Vec<StepFigures>> {
        self.inner.funnel(ask).await
    }
    async fn paths(&self, max_steps: usize, limit: usize) -> BackendResult<Vec<PathRow>> {
        self.inner.paths(max_steps, limit).await
    }
    async fn quality(&self, period: Period, periods: u32) -> BackendResult<QualityReport> {
        self.inner.quality(period, periods).await
    }
    async fn clv(&self, horizon: u32, churn: u32, top: usize) -> BackendResult<ClvReport> {
        self.inner.clv(horizon, churn, top).await
    }
    async fn attribution(&self, lookback_days: u32) -> BackendResult<Attribution> {
        self.inner.attribution(lookback_days).await
    }
    async fn associations(&self, ask: AssociationAsk) -> BackendResult<AssociationReport> {
        self.inner.associations(ask).await
    }
    async fn campaign(
        &self,
        segment: &str,
        at: DateTime<Utc>,
        window_days: u32,
        lookback_days: u32,
    ) -> BackendResult<CampaignEffect> {
        self.inner
            .campaign(segment, at, window_days, lookback_days)
            .await
    }
    fn changes(&self) -> BoxStream<'static, Change> {
        self.inner.changes()
    }
}

async fn a_page_of_customers_is_loaded_in_one_batch(t: &TestStore) {
    let ingestor = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        master_key(),
    );
    let records: Vec<String> = (0..120)
        .map(|i| {
            json!({
                "event_id": Uuid::new_v4().to_string(), "type": "page_viewed", "channel": "web",
                "source": "site", "occurred_at": "2026-03-08T09:30:15+08:00",
                "identifiers": {"cookie": format!("cookie-{i:04}")}, "url": "/home"
            })
            .to_string()
        })
        .collect();
    ingestor.ingest_json(&records).await.expect("ingest");
    ProfileProjection::new(t.store.clone(), 1_000)
        .catch_up()
        .await
        .expect("catch up");
    let gate = AnalyticsGate::new(AnalyticsLimits::default());
    let counting = Arc::new(Counting {
        inner: StoreBackend::new(
            CommitQueue::start(ingestor),
            "CNY",
            tokio::sync::broadcast::channel(16).0,
            Metrics::new(gate.clone()).expect("metrics"),
            Arc::new(ResidentPopulation::new(t.store.clone())),
            gate,
        ),
        customer_batches: AtomicUsize::new(0),
        list_calls: AtomicUsize::new(0),
    });
    let backend: Arc<dyn Backend> = counting.clone();
    let schema = patron_graphql::schema(backend.clone());
    let key = ApiKey {
        id: Uuid::new_v4(),
        name: "test".into(),
        role: Role::Viewer,
        created_at: chrono::Utc::now(),
        revoked_at: None,
    };
    for first in [1, 10, 100] {
        counting.customer_batches.store(0, Ordering::SeqCst);
        counting.list_calls.store(0, Ordering::SeqCst);
        let request = async_graphql::Request::new(format!(
            "{{ customers(first: {first}) {{ edges {{ node {{ id tier stage tags segments touchpoints }} }} }} }}"
        ));
        let request = patron_graphql::prepare(request, backend.clone(), key.clone(), |f| {
            tokio::spawn(f);
        });
        let response = schema.execute(request).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response.data.into_json().expect("json");
        assert_eq!(
            data["customers"]["edges"].as_array().map(Vec::len),
            Some(first)
        );
        assert_eq!(counting.list_calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            counting.customer_batches.load(Ordering::SeqCst),
            1,
            "{first} customers in one batch"
        );
    }
}

crate::on_both_stores!(a_page_of_customers_is_loaded_in_one_batch);
