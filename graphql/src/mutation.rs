//! The mutations: segments, ingestion, identity corrections, erasure, the export of a person's
//! data and API keys.

use async_graphql::{Context, Json, Object, Result, SimpleObject, ID};
use serde_json::Value;

use crate::access::{api_error, codes, require, ApiKey, Role};
use crate::analytics::POPULATION_COMPLEXITY;
use crate::backend::{Correction, ErasureRecord, IngestAnswer, PersonAsk, Purpose};
use crate::backend_error;
use crate::correction::{self, customer_arg, CorrectionResult, IdentifierInput};
use crate::query::{backend, parse_id, Segment};
use patron_domain::customer::CustomerId;

/// The most records one `ingest` mutation takes.
pub const MAX_INGEST_RECORDS: usize = 5_000;

/// The answer to one ingested record.
#[derive(SimpleObject)]
pub struct IngestResult {
    /// `accepted` (stored now), `duplicate` (stored before) or `rejected` (quarantined).
    pub status: String,
    /// The record's event id, unless rejected.
    pub event_id: Option<ID>,
    /// The customer it was resolved to, when accepted now.
    pub customer: Option<ID>,
    /// The rejection code.
    pub code: Option<String>,
    /// The field at fault.
    pub field: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
    /// Its number in the quarantine.
    pub quarantine_id: Option<u64>,
}

impl From<IngestAnswer> for IngestResult {
    fn from(a: IngestAnswer) -> Self {
        Self {
            status: a.status,
            event_id: a.event_id.map(|id| ID(id.to_string())),
            customer: a.customer.map(|id| ID(id.to_string())),
            code: a.code,
            field: a.field,
            reason: a.reason,
            quarantine_id: a.quarantine_id,
        }
    }
}

/// What an erasure did.
#[derive(SimpleObject)]
pub struct Erasure {
    /// The live customer erased.
    pub customer: ID,
    /// Every customer whose key was destroyed: the live one and those merged into it.
    pub keys_destroyed: Vec<ID>,
    /// Identity index entries removed.
    pub identifiers_removed: u64,
    /// Quarantined records removed because they held the customer's data.
    pub quarantined_removed: u64,
    /// Whether the deleted data was also scrubbed from the database files.
    pub scrubbed: bool,
}

impl From<ErasureRecord> for Erasure {
    fn from(e: ErasureRecord) -> Self {
        Self {
            customer: ID(e.customer.to_string()),
            keys_destroyed: e
                .keys_destroyed
                .into_iter()
                .map(|id| ID(id.to_string()))
                .collect(),
            identifiers_removed: e.identifiers_removed,
            quarantined_removed: e.quarantined_removed,
            scrubbed: e.scrubbed,
        }
    }
}

/// A new API key and its secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    /// The key.
    pub key: ApiKey,
    /// The secret, sent as `Authorization: Bearer <secret>`; it cannot be shown again.
    pub secret: String,
}

/// The root of every change.
pub struct Mutation;

#[Object]
impl Mutation {
    /// Saves a new segment and computes its members (analyst role). With a `purpose`, only
    /// customers who consent to it are members. `CONFLICT` if the name is taken;
    /// `INVALID_RULE` with the bad part pointed at.
    #[graphql(complexity = "POPULATION_COMPLEXITY.saturating_add(child_complexity)")]
    async fn create_segment(
        &self,
        ctx: &Context<'_>,
        name: String,
        rule: String,
        purpose: Option<Purpose>,
    ) -> Result<Segment> {
        require(ctx, Role::Analyst)?;
        let backend = backend(ctx)?;
        if backend
            .segments()
            .await
            .map_err(backend_error)?
            .iter()
            .any(|s| s.name == name)
        {
            return Err(api_error(
                "CONFLICT",
                format!("a segment named {name:?} exists"),
            ));
        }
        check_name(&name)?;
        Ok(Segment(
            backend
                .save_segment(&name, &rule, purpose)
                .await
                .map_err(backend_error)?,
        ))
    }

    /// Changes a segment's rule and purpose and recomputes its members (analyst role).
    #[graphql(complexity = "POPULATION_COMPLEXITY.saturating_add(child_complexity)")]
    async fn update_segment(
        &self,
        ctx: &Context<'_>,
        name: String,
        rule: String,
        purpose: Option<Purpose>,
    ) -> Result<Segment> {
        require(ctx, Role::Analyst)?;
        let backend = backend(ctx)?;
        if !backend
            .segments()
            .await
            .map_err(backend_error)?
            .iter()
            .any(|s| s.name == name)
        {
            return Err(api_error(
                codes::NOT_FOUND,
                format!("no segment named {name:?}"),
            ));
        }
        Ok(Segment(
            backend
                .save_segment(&name, &rule, purpose)
                .await
                .map_err(backend_error)?,
        ))
    }

    /// Deletes a segment (analyst role); `false` if there was none.
    async fn delete_segment(&self, ctx: &Context<'_>, name: String) -> Result<bool> {
        require(ctx, Role::Analyst)?;
        backend(ctx)?
            .delete_segment(&name)
            .await
            .map_err(backend_error)
    }

    /// Ingests touchpoint records (operator role), as `POST /v1/events` does: each record is
    /// answered; refused ones are quarantined with the field at fault.
    async fn ingest(
        &self,
        ctx: &Context<'_>,
        records: Vec<Json<Value>>,
    ) -> Result<Vec<IngestResult>> {
        let key = require(ctx, Role::Operator)?;
        if records.len() > MAX_INGEST_RECORDS {
            return Err(api_error(
                codes::INVALID_ARGUMENT,
                format!(
                    "`records`: at most {MAX_INGEST_RECORDS} per call, not {}",
                    records.len()
                ),
            ));
        }
        let texts = records.into_iter().map(|Json(v)| v.to_string()).collect();
        Ok(backend(ctx)?
            .ingest(texts, &format!("api-key:{}", key.name))
            .await
            .map_err(backend_error)?
            .into_iter()
            .map(IngestResult::from)
            .collect())
    }

    /// Merges `absorbed` into `survivor` by hand (operator role). `expectedVersion` is the
    /// survivor's `version` as the operator saw it: if it changed since, the merge fails with
    /// `VERSION_CONFLICT`. Merging customers that are one already changes nothing.
    async fn merge_customers(
        &self,
        ctx: &Context<'_>,
        survivor: ID,
        absorbed: ID,
        reason: String,
        expected_version: Option<u64>,
    ) -> Result<CorrectionResult> {
        let ask = Correction::Merge {
            survivor: CustomerId::from_uuid(customer_arg("survivor", &survivor)?),
            absorbed: CustomerId::from_uuid(customer_arg("absorbed", &absorbed)?),
        };
        correction::correct(ctx, ask, &reason, expected_version).await
    }

    /// Undoes the merge that closed `customer` (operator role): it is a customer again with
    /// its identifiers, the customers merged into it before, and every touchpoint that came
    /// through its identifiers, including those after the merge. Touchpoints that carried
    /// identifiers of both stay with the survivor and are listed in `kept`.
    async fn undo_merge(
        &self,
        ctx: &Context<'_>,
        customer: ID,
        reason: String,
        expected_version: Option<u64>,
    ) -> Result<CorrectionResult> {
        let ask = Correction::UndoMerge {
            customer: CustomerId::from_uuid(customer_arg("customer", &customer)?),
        };
        correction::correct(ctx, ask, &reason, expected_version).await
    }

    /// Moves identifiers, and the touchpoints that came through them, off `customer` into a
    /// new customer (operator role).
    async fn split_customer(
        &self,
        ctx: &Context<'_>,
        customer: ID,
        identifiers: Vec<IdentifierInput>,
        reason: String,
        expected_version: Option<u64>,
    ) -> Result<CorrectionResult> {
        let ask = Correction::Split {
            customer: CustomerId::from_uuid(customer_arg("customer", &customer)?),
            identifiers: identifiers.into_iter().map(|i| (i.kind, i.value)).collect(),
        };
        correction::correct(ctx, ask, &reason, expected_version).await
    }

    /// Links an identifier to `customer`, taking it from any customer holding it (operator
    /// role).
    async fn link_identifier(
        &self,
        ctx: &Context<'_>,
        customer: ID,
        identifier: IdentifierInput,
        reason: String,
        expected_version: Option<u64>,
    ) -> Result<CorrectionResult> {
        let ask = Correction::Link {
            customer: CustomerId::from_uuid(customer_arg("customer", &customer)?),
            kind: identifier.kind,
            value: identifier.value,
        };
        correction::correct(ctx, ask, &reason, expected_version).await
    }

    /// Unlinks an identifier from `customer` (operator role).
    async fn unlink_identifier(
        &self,
        ctx: &Context<'_>,
        customer: ID,
        identifier: IdentifierInput,
        reason: String,
        expected_version: Option<u64>,
    ) -> Result<CorrectionResult> {
        let ask = Correction::Unlink {
            customer: CustomerId::from_uuid(customer_arg("customer", &customer)?),
            kind: identifier.kind,
            value: identifier.value,
        };
        correction::correct(ctx, ask, &reason, expected_version).await
    }

    /// Blocks an identifier value (operator role): it is unlinked from whoever holds it and
    /// links no customer again.
    async fn block_identifier(
        &self,
        ctx: &Context<'_>,
        identifier: IdentifierInput,
        reason: String,
    ) -> Result<CorrectionResult> {
        let ask = Correction::Block {
            kind: identifier.kind,
            value: identifier.value,
        };
        correction::correct(ctx, ask, &reason, None).await
    }

    /// Scans the whole log for likely duplicates and adds them to the review queue (operator
    /// role). Pairs rejected before are not suggested again.
    async fn scan_duplicates(&self, ctx: &Context<'_>) -> Result<correction::DuplicateScan> {
        correction::scan(ctx).await
    }

    /// Accepts a suggestion of the review queue: the two customers are merged by hand, the
    /// one seen first surviving (operator role).
    async fn accept_suggestion(
        &self,
        ctx: &Context<'_>,
        id: i64,
        reason: String,
    ) -> Result<Option<CorrectionResult>> {
        correction::decide(ctx, id, true, &reason).await
    }

    /// Rejects a suggestion of the review queue: the pair is never suggested again (operator
    /// role).
    async fn reject_suggestion(&self, ctx: &Context<'_>, id: i64, reason: String) -> Result<bool> {
        correction::decide(ctx, id, false, &reason).await?;
        Ok(true)
    }

    /// Erases a customer for good (admin role): their keys and identity index entries are
    /// destroyed, their history reads as erased, their quarantined records are removed.
    async fn erase_customer(&self, ctx: &Context<'_>, id: ID, reason: String) -> Result<Erasure> {
        let key = require(ctx, Role::Admin)?;
        if reason.trim().is_empty() {
            return Err(api_error(
                codes::INVALID_ARGUMENT,
                "`reason`: say why the customer is erased",
            ));
        }
        let id = parse_id(&id)?;
        Ok(backend(ctx)?
            .erase(id, &format!("api-key:{}", key.name), &reason)
            .await
            .map_err(backend_error)?
            .into())
    }

    /// Everything Patron holds on one person, as one JSON document (admin role): the right of
    /// access. Name the person by `customer` id or by an `identifier` they hold, one of the
    /// two. The export is written to the access log with the key and `reason` before it is
    /// answered. `NOT_FOUND` when nobody holds the identifier or there is no such customer (and
    /// nothing is logged); an erased person, named by id, reads as erased.
    async fn export_person(
        &self,
        ctx: &Context<'_>,
        customer: Option<ID>,
        identifier: Option<IdentifierInput>,
        reason: String,
    ) -> Result<Json<Value>> {
        let key = require(ctx, Role::Admin)?;
        let person = match (customer, identifier) {
            (Some(id), None) => PersonAsk::Customer(customer_arg("customer", &id)?),
            (None, Some(i)) => PersonAsk::Identifier {
                kind: i.kind,
                value: i.value,
            },
            _ => {
                return Err(api_error(
                    codes::INVALID_ARGUMENT,
                    "name the person by `customer` or by `identifier`, one of the two",
                ))
            }
        };
        Ok(Json(
            backend(ctx)?
                .export_person(key, person, &reason)
                .await
                .map_err(backend_error)?,
        ))
    }

    /// Creates an API key (admin role).
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        role: Role,
    ) -> Result<CreatedApiKey> {
        require(ctx, Role::Admin)?;
        check_name(&name)?;
        let created = backend(ctx)?
            .create_key(&name, role)
            .await
            .map_err(backend_error)?;
        Ok(CreatedApiKey {
            key: created.key,
            secret: created.secret,
        })
    }

    /// Revokes an API key (admin role): it is refused from the next request on. `false` if
    /// there was no such live key.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        require(ctx, Role::Admin)?;
        let id = id
            .parse()
            .map_err(|_| api_error(codes::INVALID_ARGUMENT, "`id`: not a key id (a UUID)"))?;
        backend(ctx)?.revoke_key(id).await.map_err(backend_error)
    }
}

/// Names of segments and keys: 1 to 100 characters, not blank.
fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(api_error(
            codes::INVALID_ARGUMENT,
            "`name`: 1 to 100 characters, not blank",
        ));
    }
    Ok(())
}
