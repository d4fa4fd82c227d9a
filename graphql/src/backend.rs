//! What the schema needs from the rest of Patron: the [`Backend`] port, implemented over the
//! event store by the server, and the plain records it answers with.
//!
//! The schema decides who may see what and how it is shown (masking, pagination); the backend
//! only reads and writes.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use patron_projections::analytics::attribution::Attribution;
use patron_projections::analytics::campaign::CampaignEffect;
use patron_projections::analytics::cohort::{CohortTable, Period};
use patron_projections::analytics::funnel::{FunnelAsk, StepFigures};
use patron_projections::analytics::paths::PathRow;
use patron_projections::analytics::quality::QualityReport;
use patron_projections::analytics::report::{AssociationAsk, AssociationReport, ClvReport};
use patron_projections::profile::Profile;
use serde_json::Value;
use uuid::Uuid;

use crate::access::{ApiKey, Role};

/// A failure of the backend, with a stable code the API passes on.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// A stable, machine-readable code, for example `INVALID_RULE` or `STORE_UNAVAILABLE`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl BackendError {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A backend answer.
pub type BackendResult<T> = Result<T, BackendError>;

/// A customer's value and lifecycle scores, as of the last scoring run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// The value tier, for example `high_value`.
    pub tier: String,
    /// The lifecycle stage, for example `declining`.
    pub stage: String,
    /// The named RFM segment, for example `At Risk`; none without orders in the window.
    pub rfm_segment: Option<String>,
    /// Recency, frequency and monetary scores, 1-5 each.
    pub rfm: Option<(u8, u8, u8)>,
    /// Days since the last order in the window.
    pub recency_days: Option<i64>,
    /// Orders in the window.
    pub frequency: i64,
    /// Spend in the window, minor units of the scoring currency.
    pub monetary_minor: i64,
}

/// Everything the read models hold about one live customer.
#[derive(Clone, Debug, Default)]
pub struct CustomerRecord {
    /// The customer.
    pub id: Uuid,
    /// The profile.
    pub profile: Profile,
    /// Scores, once scored.
    pub scores: Option<Scores>,
    /// Tags, in name order.
    pub tags: Vec<String>,
    /// Saved segments the customer belongs to, in name order.
    pub segments: Vec<String>,
}

/// One event of a customer's history, its personal part opened (or marked erased).
#[derive(Clone, Debug)]
pub struct HistoryEvent {
    /// Its place in the log.
    pub position: u64,
    /// Its idempotency key.
    pub event_id: Uuid,
    /// The customer whose stream holds it (a customer merged into the one asked for, perhaps).
    pub customer: Uuid,
    /// Its type, for example `order_placed`.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
    /// Its channel, if a touchpoint.
    pub channel: Option<String>,
    /// The system that sent it.
    pub source: Option<String>,
    /// Who appended it.
    pub actor: Option<String>,
    /// Why, for manual actions.
    pub reason: Option<String>,
    /// The payload, opened.
    pub payload: Value,
}

/// A saved segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecord {
    /// Its name.
    pub name: String,
    /// Its rule.
    pub rule: String,
    /// The consent purpose it is for, if any.
    pub purpose: Option<Purpose>,
    /// Members as of the last refresh.
    pub size: u64,
}

/// An entry into or exit from a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// The segment.
    pub segment: String,
    /// The customer.
    pub customer: Uuid,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// A change the server announces to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A customer's profile was updated by new events.
    CustomerUpdated {
        /// The customer.
        customer: Uuid,
        /// The log position the profile now reflects.
        position: u64,
    },
    /// A customer entered or left a segment.
    Membership(MembershipChange),
}

/// How a list of customers is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum CustomerSort {
    /// By customer id: stable, and the cheapest.
    Id,
    /// Most recently seen first.
    LastSeen,
    /// Most revenue (scoring currency) first.
    Revenue,
    /// Most orders first.
    Orders,
}

/// One page of customers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerPage {
    /// The customers, in order.
    pub ids: Vec<Uuid>,
    /// Whether more follow.
    pub has_more: bool,
    /// How many match in all, when known without extra work.
    pub total: Option<u64>,
}

/// A record refused at ingestion, kept with its reason.
#[derive(Clone, Debug, PartialEq, Eq, async_graphql::SimpleObject)]
#[graphql(name = "QuarantinedRecord")]
pub struct QuarantineRecord {
    /// Its number in the quarantine.
    pub id: u64,
    /// When it was refused.
    pub received_at: DateTime<Utc>,
    /// The system that sent it.
    pub source: Option<String>,
    /// The rejection code.
    pub code: String,
    /// The field at fault.
    pub field: String,
    /// What is wrong; empty once expired.
    pub reason: String,
    /// The record as received; empty once expired (see the retention setting).
    pub record: String,
    /// When its text expired, if it has.
    pub expired_at: Option<DateTime<Utc>>,
}

/// The answer to one ingested record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestAnswer {
    /// `accepted`, `duplicate` or `rejected`.
    pub status: String,
    /// The record's event id, unless rejected.
    pub event_id: Option<Uuid>,
    /// The customer it was resolved to, when accepted now.
    pub customer: Option<Uuid>,
    /// The rejection code.
    pub code: Option<String>,
    /// The field at fault.
    pub field: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
    /// Its number in the quarantine.
    pub quarantine_id: Option<u64>,
}

/// What an erasure did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureRecord {
    /// The live customer erased.
    pub customer: Uuid,
    /// Every customer whose key was destroyed.
    pub keys_destroyed: Vec<Uuid>,
    /// Identity index entries removed.
    pub identifiers_removed: u64,
    /// Quarantined records removed.
    pub quarantined_removed: u64,
    /// Whether the deleted data was scrubbed from the files too.
    pub scrubbed: bool,
}

/// The person whose data an export gathers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersonAsk {
    /// By customer id (a merged id stands for the customer it was merged into).
    Customer(Uuid),
    /// By an identifier they hold, as at ingestion.
    Identifier {
        /// Its kind, for example `phone`.
        kind: String,
        /// Its value, normalized as at ingestion.
        value: String,
    },
}

/// An identity correction an operator asks for: the one command type every door shares.
pub use patron_domain::customer::Correction;

/// What a correction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrectionRecord {
    /// Whether anything was written (`false`: already in place).
    pub applied: bool,
    /// What was done, or why nothing was.
    pub note: String,
    /// The live customers concerned.
    pub customers: Vec<Uuid>,
    /// Touchpoints moved to another customer.
    pub touchpoints_moved: u64,
    /// Identifiers moved or unlinked.
    pub identifiers_moved: u64,
    /// Positions of touchpoints that carried identifiers of both sides and stayed.
    pub kept: Vec<u64>,
    /// The log position of the last event written.
    pub position: Option<u64>,
}

/// Why an identifier belongs to a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExplanationRecord {
    /// The live customer holding it, if any.
    pub customer: Option<Uuid>,
    /// Whether the value is blocked.
    pub blocked: bool,
    /// The path of evidence, oldest first.
    pub steps: Vec<ExplanationStepRecord>,
}

/// One step of an [`ExplanationRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplanationStepRecord {
    /// `linked` or `merged`.
    pub step: String,
    /// The event's position.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// The customer whose stream holds it.
    pub customer: Option<Uuid>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The system that sent it.
    pub source: Option<String>,
    /// Who appended it.
    pub actor: Option<String>,
    /// Why, for corrections by hand.
    pub reason: Option<String>,
    /// The identity rules version that decided, for decisions of the rules.
    pub rules_version: Option<u32>,
}

/// A likely duplicate in the review queue.
#[derive(Clone, Debug, PartialEq)]
pub struct SuggestionRecord {
    /// Its number.
    pub id: i64,
    /// The first customer (in id order).
    pub first: Uuid,
    /// The second customer.
    pub second: Uuid,
    /// The probability that they are one person, 0 to 1.
    pub score: f64,
    /// The evidence: signal, weight in bits, what was seen.
    pub evidence: Vec<(String, f64, String)>,
    /// When a scan first found it.
    pub found_at: DateTime<Utc>,
}

/// What a scan for duplicates did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanRecord {
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Live customers seen.
    pub customers: u64,
    /// Pairs in the queue after the scan (scored at least 0.5).
    pub pairs: u64,
    /// Of those, pairs not suggested before.
    pub new: u64,
    /// Open suggestions the scan no longer found, withdrawn.
    pub withdrawn: u64,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// A newly created API key, with its secret (shown once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiKey {
    /// The key's record.
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer ...`.
    pub secret: String,
}

/// A count per value of a dimension (tier, stage, RFM segment, channel, tag).
#[derive(Clone, Debug, PartialEq, Eq, async_graphql::SimpleObject)]
pub struct Bucket {
    /// The value.
    pub value: String,
    /// Customers with it.
    pub customers: u64,
}

/// What the schema reads and writes. Implemented over the event store by the server.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The live customer an id stands for: itself, or the survivor it was merged into; none
    /// if unknown.
    async fn live_customer(&self, id: Uuid) -> BackendResult<Option<Uuid>>;
    /// The live customer holding an identifier (kind and raw value, normalized as at
    /// ingestion), if any.
    async fn customer_by_identifier(&self, kind: &str, value: &str) -> BackendResult<Option<Uuid>>;
    /// Spends one identifier lookup of `key`'s budget over time, refusing with
    /// `LOOKUP_BUDGET_EXHAUSTED` once it is spent (see [`crate::loader::LookupBudget`]). A
    /// backend keeping no budget allows every lookup; the per-request limit still applies.
    async fn spend_lookup(&self, key: &ApiKey) -> BackendResult<()> {
        let _ = key;
        Ok(())
    }
    /// The read models of live customers, by id; ids without a profile are left out.
    async fn customers(&self, ids: &[Uuid]) -> BackendResult<HashMap<Uuid, CustomerRecord>>;
    /// A page of every live customer in id order, after a customer; the total counted only
    /// when `count` is set.
    async fn list(
        &self,
        after: Option<Uuid>,
        first: usize,
        count: bool,
    ) -> BackendResult<CustomerPage>;
    /// A page of live customers matching a segment rule (all if none), in `sort` order,
    /// skipping `offset`.
    async fn search(
        &self,
        rule: Option<&str>,
        sort: CustomerSort,
        offset: usize,
        first: usize,
    ) -> BackendResult<CustomerPage>;
    /// Every event of a live customer and of those merged into it, opened, in log order.
    async fn history(&self, id: Uuid) -> BackendResult<Vec<HistoryEvent>>;
    /// Writes that `key` read `customer`'s unmasked personal data (`what`: which fields).
    async fn log_access(&self, key: &ApiKey, customer: Uuid, what: &str) -> BackendResult<()>;
    /// Saved segments, by name.
    async fn segments(&self) -> BackendResult<Vec<SegmentRecord>>;
    /// Applies an identity correction for `actor`, with `reason`; `expected_version` is the
    /// version of its first customer the operator saw, if given.
    async fn correct(
        &self,
        ask: Correction,
        actor: &str,
        reason: &str,
        expected_version: Option<u64>,
    ) -> BackendResult<CorrectionRecord>;
    /// Why an identifier (kind, value as at ingestion) belongs to its customer.
    async fn explain_identifier(&self, kind: &str, value: &str)
        -> BackendResult<ExplanationRecord>;
    /// The version of a customer's stream: the number of events on it.
    async fn customer_version(&self, id: Uuid) -> BackendResult<u64>;
    /// The open suggestions of the review queue, highest score first.
    async fn suggestions(&self, max: usize) -> BackendResult<Vec<SuggestionRecord>>;
    /// Scans the log for likely duplicates.
    async fn scan_duplicates(&self) -> BackendResult<ScanRecord>;
    /// Accepts (a merge: its record) or rejects (`None`) a suggestion.
    async fn decide_suggestion(
        &self,
        id: i64,
        accept: bool,
        actor: &str,
        reason: &str,
    ) -> BackendResult<Option<CorrectionRecord>>;
    /// A customer's profile as it was at `at`, as the log knew it at `known_at` (now when
    /// `None`); `None` if the customer did not exist then.
    async fn profile_as_of(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        known_at: Option<DateTime<Utc>>,
    ) -> BackendResult<Option<Profile>>;
    /// A page of a segment's members, after a customer id.
    async fn segment_members(
        &self,
        name: &str,
        after: Option<Uuid>,
        first: usize,
    ) -> BackendResult<Vec<Uuid>>;
    /// How many live customers a rule selects now, without saving it.
    async fn preview_segment(&self, rule: &str) -> BackendResult<u64>;
    /// Saves a segment (new or changed rule and purpose) and computes its members.
    async fn save_segment(
        &self,
        name: &str,
        rule: &str,
        purpose: Option<Purpose>,
    ) -> BackendResult<SegmentRecord>;
    /// Deletes a segment; `false` if there was none.
    async fn delete_segment(&self, name: &str) -> BackendResult<bool>;
    /// Live customers per value of a dimension.
    async fn distribution(&self, dimension: Dimension) -> BackendResult<Vec<Bucket>>;
    /// Quarantined records, after a number, oldest first.
    async fn quarantine(&self, after: u64, first: usize) -> BackendResult<Vec<QuarantineRecord>>;
    /// Ingests records (JSON text each), answering each.
    async fn ingest(&self, records: Vec<String>, actor: &str) -> BackendResult<Vec<IngestAnswer>>;
    /// Erases a customer.
    async fn erase(&self, id: Uuid, actor: &str, reason: &str) -> BackendResult<ErasureRecord>;
    /// Everything held on a person, as one JSON document (`docs/privacy.md`, "Right of
    /// access"), written to the access log for `key` with `reason` before it is answered.
    async fn export_person(
        &self,
        key: &ApiKey,
        person: PersonAsk,
        reason: &str,
    ) -> BackendResult<Value>;
    /// Creates an API key.
    async fn create_key(&self, name: &str, role: Role) -> BackendResult<NewApiKey>;
    /// Whether the key `id` exists and is not revoked.
    async fn key_is_live(&self, id: Uuid) -> BackendResult<bool>;
    /// Revokes an API key; `false` if there was no such live key.
    async fn revoke_key(&self, id: Uuid) -> BackendResult<bool>;
    /// API keys, revoked ones included.
    async fn keys(&self) -> BackendResult<Vec<ApiKey>>;
    /// Retention by cohort of first purchase, of the cohorts of the last `periods` periods up
    /// to now.
    async fn cohorts(
        &self,
        period: Period,
        by_channel: bool,
        periods: u32,
    ) -> BackendResult<CohortTable>;
    /// Customers through a funnel's steps.
    async fn funnel(&self, ask: FunnelAsk) -> BackendResult<Vec<StepFigures>>;
    /// The most common paths to a first purchase.
    async fn paths(&self, max_steps: usize, limit: usize) -> BackendResult<Vec<PathRow>>;
    /// The data-quality report per period.
    async fn quality(&self, period: Period, periods: u32) -> BackendResult<QualityReport>;
    /// Lifetime value and churn, fitted now over every customer's orders in the main currency.
    async fn clv(&self, horizon_days: u32, churn_days: u32, top: usize)
        -> BackendResult<ClvReport>;
    /// Each channel's share of conversions.
    async fn attribution(&self, lookback_days: u32) -> BackendResult<Attribution>;
    /// Product associations.
    async fn associations(&self, ask: AssociationAsk) -> BackendResult<AssociationReport>;
    /// The effect of targeting a segment at a time, in the main currency.
    async fn campaign(
        &self,
        segment: &str,
        at: DateTime<Utc>,
        window_days: u32,
        lookback_days: u32,
    ) -> BackendResult<CampaignEffect>;
    /// Changes as they happen: profiles updated and segment entries and exits.
    fn changes(&self) -> BoxStream<'static, Change>;
}

/// A purpose customers consent to (or not), as the consent events name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum Purpose {
    /// Marketing text messages.
    MarketingSms,
    /// Marketing email.
    MarketingEmail,
    /// Push notifications.
    Push,
    /// Building a profile from behaviour.
    Profiling,
}

impl Purpose {
    /// The purpose's name in events and rules (`marketing_sms`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MarketingSms => "marketing_sms",
            Self::MarketingEmail => "marketing_email",
            Self::Push => "push",
            Self::Profiling => "profiling",
        }
    }

    /// The purpose named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::MarketingSms,
            Self::MarketingEmail,
            Self::Push,
            Self::Profiling,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// A dimension customers are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum Dimension {
    /// Value tier.
    Tier,
    /// Lifecycle stage.
    Stage,
    /// Named RFM segment.
    RfmSegment,
    /// Preferred channel (most touchpoints).
    Channel,
    /// Tag.
    Tag,
}
