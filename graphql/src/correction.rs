//! Identity corrections and their audit: the results of the correction mutations and the
//! explanation of why an identifier belongs to a customer.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::access::{api_error, codes, require, Role};
use crate::backend::{Correction, CorrectionRecord, ExplanationRecord, ExplanationStepRecord};
use crate::backend_error;
use crate::customer::Customer;
use crate::query::backend;

/// An identifier as given at ingestion.
#[derive(Clone, Debug, InputObject)]
pub struct IdentifierInput {
    /// Its kind, for example `phone` or `email`.
    pub kind: String,
    /// Its value as the source system writes it; normalized the same way as at ingestion.
    pub value: String,
}

/// What a correction did.
pub struct CorrectionResult(pub CorrectionRecord);

#[Object]
impl CorrectionResult {
    /// Whether anything was written (`false`: the correction was already in place, and
    /// `note` says why nothing changed).
    async fn applied(&self) -> bool {
        self.0.applied
    }

    /// What was done, or why nothing was.
    async fn note(&self) -> &str {
        &self.0.note
    }

    /// The live customers concerned, their profiles as corrected.
    async fn customers(&self, ctx: &Context<'_>) -> Result<Vec<Customer>> {
        let mut customers = Vec::with_capacity(self.0.customers.len());
        for id in &self.0.customers {
            customers.extend(Customer::load(ctx, *id).await?);
        }
        Ok(customers)
    }

    /// The ids of the live customers concerned (a customer without touchpoints has no
    /// profile, so `customers` may list fewer).
    async fn customer_ids(&self) -> Vec<ID> {
        self.0.customers.iter().map(|c| ID(c.to_string())).collect()
    }

    /// Touchpoints that moved to another customer.
    async fn touchpoints_moved(&self) -> u64 {
        self.0.touchpoints_moved
    }

    /// Identifiers that moved to another customer, or were unlinked.
    async fn identifiers_moved(&self) -> u64 {
        self.0.identifiers_moved
    }

    /// Log positions of touchpoints that carried identifiers of both sides and stayed with
    /// the customer they were with.
    async fn kept(&self) -> &[u64] {
        &self.0.kept
    }

    /// The log position of the last event written.
    async fn position(&self) -> Option<u64> {
        self.0.position
    }
}

/// Why an identifier belongs to a customer.
pub struct IdentifierExplanation(pub ExplanationRecord);

#[Object]
impl IdentifierExplanation {
    /// The live customer holding the identifier; null when nobody does.
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        match self.0.customer {
            Some(id) => Customer::load(ctx, id).await,
            None => Ok(None),
        }
    }

    /// Whether the value is blocked (by the rules or by an operator): it links nobody.
    async fn blocked(&self) -> bool {
        self.0.blocked
    }

    /// The path of evidence, oldest first: the event that linked the identifier to a
    /// customer, then each merge that brought that customer into the one holding it now.
    async fn steps(&self) -> Vec<ExplanationStep> {
        self.0
            .steps
            .iter()
            .cloned()
            .map(ExplanationStep::from)
            .collect()
    }
}

/// One step of an explanation.
#[derive(SimpleObject)]
pub struct ExplanationStep {
    /// `linked` (a touchpoint, a link by hand, an undone merge or a split gave the identifier
    /// to a customer) or `merged` (that customer was merged into another).
    pub step: String,
    /// The event's position in the log.
    pub position: u64,
    /// The event's id.
    pub event_id: ID,
    /// The event's type.
    pub event_type: String,
    /// The customer whose stream holds the event.
    pub customer: Option<ID>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The system that sent it, for a touchpoint.
    pub source: Option<String>,
    /// Who appended it: `ingestion`, an import, an API key.
    pub actor: Option<String>,
    /// Why, for corrections by hand.
    pub reason: Option<String>,
    /// The version of the identity rules that decided; null for corrections by hand.
    pub rules_version: Option<u32>,
}

impl From<ExplanationStepRecord> for ExplanationStep {
    fn from(s: ExplanationStepRecord) -> Self {
        Self {
            step: s.step,
            position: s.position,
            event_id: ID(s.event_id.to_string()),
            event_type: s.event_type,
            customer: s.customer.map(|c| ID(c.to_string())),
            occurred_at: s.occurred_at,
            source: s.source,
            actor: s.actor,
            reason: s.reason,
            rules_version: s.rules_version,
        }
    }
}

/// Applies a correction for the calling operator.
pub(crate) async fn correct(
    ctx: &Context<'_>,
    ask: Correction,
    reason: &str,
    expected_version: Option<u64>,
) -> Result<CorrectionResult> {
    let key = require(ctx, Role::Operator)?;
    if reason.trim().is_empty() {
        return Err(api_error(
            codes::INVALID_ARGUMENT,
            "`reason`: say why, for the history",
        ));
    }
    let record = backend(ctx)?
        .correct(
            ask,
            &format!("api-key:{}", key.name),
            reason,
            expected_version,
        )
        .await
        .map_err(backend_error)?;
    Ok(CorrectionResult(record))
}

/// Explains an identifier for the calling operator.
pub(crate) async fn explain(
    ctx: &Context<'_>,
    kind: &str,
    value: &str,
) -> Result<IdentifierExplanation> {
    require(ctx, Role::Operator)?;
    let record = backend(ctx)?
        .explain_identifier(kind, value)
        .await
        .map_err(backend_error)?;
    Ok(IdentifierExplanation(record))
}

/// The id of a customer argument named `name`.
pub(crate) fn customer_arg(name: &str, id: &ID) -> Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| {
        api_error(
            codes::INVALID_ARGUMENT,
            format!("`{name}`: {:?} is not a customer id (a UUID)", id.as_str()),
        )
    })
}

/// A likely duplicate in the review queue.
pub struct DuplicateSuggestion(pub crate::backend::SuggestionRecord);

#[Object]
impl DuplicateSuggestion {
    /// Its number, for `acceptSuggestion` and `rejectSuggestion`.
    async fn id(&self) -> i64 {
        self.0.id
    }

    /// The probability that the two are one person, 0 to 1 (see docs/corrections.md).
    async fn score(&self) -> f64 {
        self.0.score
    }

    /// The two customers, their profiles as they are now.
    async fn customers(&self, ctx: &Context<'_>) -> Result<Vec<Customer>> {
        let mut customers = Vec::with_capacity(2);
        for id in [self.0.first, self.0.second] {
            let live = backend(ctx)?
                .live_customer(id)
                .await
                .map_err(backend_error)?
                .unwrap_or(id);
            customers.extend(Customer::load(ctx, live).await?);
        }
        Ok(customers)
    }

    /// The ids of the two customers, as the scan found them.
    async fn customer_ids(&self) -> Vec<ID> {
        [self.0.first, self.0.second]
            .iter()
            .map(|c| ID(c.to_string()))
            .collect()
    }

    /// Why they look like one person.
    async fn evidence(&self) -> Vec<DuplicateEvidence> {
        self.0
            .evidence
            .iter()
            .map(|(signal, weight_bits, detail)| DuplicateEvidence {
                signal: signal.clone(),
                weight_bits: *weight_bits,
                detail: detail.clone(),
            })
            .collect()
    }

    /// When a scan first found it.
    async fn found_at(&self) -> DateTime<Utc> {
        self.0.found_at
    }
}

/// One signal that two customers are one person.
#[derive(SimpleObject)]
pub struct DuplicateEvidence {
    /// `same_name_birthday_city`, `shared_auxiliary_identifier` or `email_one_typo_apart`.
    pub signal: String,
    /// Its weight: log2 of how much likelier it is for one person than for two, in bits.
    pub weight_bits: f64,
    /// What was seen (kinds and positions, no personal data).
    pub detail: String,
}

/// What a scan for duplicates did.
#[derive(SimpleObject)]
pub struct DuplicateScan {
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Live customers seen.
    pub customers: u64,
    /// Pairs in the queue after the scan.
    pub pairs: u64,
    /// Of those, pairs not suggested before.
    pub new: u64,
    /// Open suggestions the scan no longer found (their customers changed), withdrawn.
    pub withdrawn: u64,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// The open suggestions, for an operator.
pub(crate) async fn suggestions(
    ctx: &Context<'_>,
    first: usize,
) -> Result<Vec<DuplicateSuggestion>> {
    require(ctx, Role::Operator)?;
    if first == 0 || first > 500 {
        return Err(api_error(
            codes::INVALID_ARGUMENT,
            format!("`first`: between 1 and 500, got {first}"),
        ));
    }
    Ok(backend(ctx)?
        .suggestions(first)
        .await
        .map_err(backend_error)?
        .into_iter()
        .map(DuplicateSuggestion)
        .collect())
}

/// Scans for duplicates, for an operator.
pub(crate) async fn scan(ctx: &Context<'_>) -> Result<DuplicateScan> {
    require(ctx, Role::Operator)?;
    let r = backend(ctx)?
        .scan_duplicates()
        .await
        .map_err(backend_error)?;
    Ok(DuplicateScan {
        touchpoints: r.touchpoints,
        customers: r.customers,
        pairs: r.pairs,
        new: r.new,
        withdrawn: r.withdrawn,
        seconds: r.seconds,
    })
}

/// Accepts or rejects a suggestion, for an operator.
pub(crate) async fn decide(
    ctx: &Context<'_>,
    id: i64,
    accept: bool,
    reason: &str,
) -> Result<Option<CorrectionResult>> {
    let key = require(ctx, Role::Operator)?;
    if reason.trim().is_empty() {
        return Err(api_error(
            codes::INVALID_ARGUMENT,
            "`reason`: say why, for the history",
        ));
    }
    Ok(backend(ctx)?
        .decide_suggestion(id, accept, &format!("api-key:{}", key.name), reason)
        .await
        .map_err(backend_error)?
        .map(CorrectionResult))
}
