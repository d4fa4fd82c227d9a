//! The right of access (PIPL articles 45 and 47, GDPR articles 15 and 20): everything Patron
//! holds on one person, as one machine-readable JSON document, each export written to the
//! access log with who asked and why.
//!
//! The document is assembled from what the rest of Patron reads already: the customer's
//! history opened as the timeline opens it ([`Opener::history`]), the live profile, the scores
//! and tags, the segment memberships and their log, [`Corrector::explain`] for each identifier
//! held, and the quarantine matched as erasure matches it ([`record_matcher`]). It names no
//! other customer: customer ids a touchpoint or a correction names that are not the person's
//! own (the holder of a shared tablet, a customer a wrong merge was undone from) are left out.
//! The shape is documented in `docs/privacy.md` ("Right of access").

pub mod command;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{is_touchpoint, EventKind};
use patron_domain::identifier::Identifier;
use patron_domain::RecordedEvent;
use patron_projections::profile::{Consent, Profile};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::correction::{CorrectionError, Corrector, Step};
use crate::ingest::Ingestor;
use crate::privacy::{record_matcher, Opener, PrivacyFailure};
use crate::projection::{ProfileProjection, ProjectionError};
use crate::store::access::AccessEntry;
use crate::store::person::MembershipEntry;
use crate::store::scores::Transition;
use crate::store::{QuarantinedRecord, StoreError};

/// The document's schema: its name and version. A change that removes or renames a member
/// takes a new version.
pub const SCHEMA: &str = "patron.person-export/1";

/// What the access log's `what` says of an export.
pub const EXPORTED: &str = "export";

/// Quarantined records read at a time while looking for the person's.
const QUARANTINE_PAGE: usize = 1_000;

/// What went wrong exporting a person's data.
#[derive(Debug, Error)]
pub enum ExportError {
    /// Nobody holds the identifier, or there is no such customer.
    #[error("{0}")]
    NotFound(String),
    /// No reason was given.
    #[error("say why the person's data is exported (a ticket number, the request)")]
    MissingReason,
    /// The identifier does not read under the identity rules.
    #[error(transparent)]
    Correction(#[from] CorrectionError),
    /// The history did not open.
    #[error(transparent)]
    Privacy(#[from] PrivacyFailure),
    /// The profiles could not be brought up to date.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExportError {
    /// A stable, machine-readable code: `NOT_FOUND`, `REASON_REQUIRED`, `INVALID_IDENTIFIER`,
    /// or the underlying failure's.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NOT_FOUND",
            Self::MissingReason => "REASON_REQUIRED",
            Self::Correction(e) => e.code(),
            Self::Privacy(e) => e.code(),
            Self::Projection(e) => e.code(),
            Self::Store(e) => e.code(),
        }
    }
}

/// The person whose data is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Person {
    /// By customer id (a merged id stands for the customer it was merged into). An erased
    /// person can only be named so: their identifiers are gone from the index.
    Customer(CustomerId),
    /// By an identifier they hold, as at ingestion (`phone`, `139 1234 0001`).
    Identifier {
        /// Its kind.
        kind: String,
        /// Its value, in any form the rules normalize.
        value: String,
    },
}

/// Who asks for an export and why: written to the access log and into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The API key asking (id and name); `None` on the command line.
    pub key: Option<(Uuid, String)>,
    /// Who asks: `api-key:NAME`, or the command line's `--actor`.
    pub actor: String,
    /// Why: a ticket number, the person's request.
    pub reason: String,
}

/// Everything Patron holds on one person.
#[derive(Clone, Debug, Serialize)]
pub struct PersonExport {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// When the document was made.
    pub generated_at: DateTime<Utc>,
    /// Who asked and why.
    pub request: RequestRecord,
    /// The person's live customer id.
    pub customer: CustomerId,
    /// The customer ids merged into it: they stand for the same person.
    pub merged_customers: Vec<CustomerId>,
    /// Whether the person was erased: their personal data is gone for good, and the document
    /// holds nothing more than the erasure.
    pub erased: bool,
    /// The erasure, for an erased person.
    pub erasure: Option<ErasureEntry>,
    /// Every figure of the customer profile.
    pub profile: Option<Value>,
    /// Value tier, lifecycle stage and RFM, as of the last scoring run.
    pub scores: Option<ScoresRecord>,
    /// Lifecycle stage changes, oldest first.
    pub lifecycle: Vec<StageChange>,
    /// Tags, in name order.
    pub tags: Vec<String>,
    /// Segment memberships now, and every entry and exit.
    pub segments: SegmentsRecord,
    /// Consent per purpose now, and every change.
    pub consent: ConsentRecord,
    /// The identifiers the person's touchpoints carried, and those held without a value.
    pub identifiers: Vec<IdentifierRecord>,
    /// Every touchpoint the person owns, opened, oldest first (as the timeline has them).
    pub touchpoints: Vec<TouchpointRecord>,
    /// Identity decisions on the person's customers: merges by the rules, corrections by hand
    /// (merges, undone merges, splits, links, unlinks, blocks), erasure.
    pub corrections: Vec<CorrectionRecord>,
    /// Quarantined records (refused at ingestion, kept as sent until they expire) holding one
    /// of the person's identifiers.
    pub quarantine: Vec<QuarantinedRecord>,
    /// Deliveries of the person's data to destinations.
    pub destinations: Vec<Value>,
    /// What a member of the document means, where that needs saying.
    pub notes: BTreeMap<&'static str, &'static str>,
}

/// Who asked for the export and why.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// When and by whom the person was erased.
#[derive(Clone, Debug, Serialize)]
pub struct ErasureEntry {
    /// When the erasure was recorded.
    pub at: DateTime<Utc>,
    /// Who erased.
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// The scores of the last scoring run.
#[derive(Clone, Debug, Serialize)]
pub struct ScoresRecord {
    /// The value tier.
    pub tier: String,
    /// The lifecycle stage.
    pub stage: String,
    /// The named RFM segment.
    pub rfm_segment: Option<String>,
    /// Recency, frequency and monetary scores, 1-5 each.
    pub rfm: Option<(u8, u8, u8)>,
    /// Days since the last order in the window.
    pub recency_days: Option<i64>,
    /// Orders in the window.
    pub frequency: i64,
    /// Spend in the window, minor units.
    pub monetary_minor: i64,
}

/// A lifecycle stage change.
#[derive(Clone, Debug, Serialize)]
pub struct StageChange {
    /// The stage before (none: the first one).
    pub from: Option<String>,
    /// The stage after.
    pub to: String,
    /// The scoring run that saw it.
    pub at: DateTime<Utc>,
}

/// Segment memberships.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SegmentsRecord {
    /// The saved segments the person is in now.
    pub current: Vec<String>,
    /// Every entry and exit, oldest first.
    pub log: Vec<MembershipEntry>,
}

/// Consent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsentRecord {
    /// The latest per purpose, by the time it was given.
    pub current: BTreeMap<String, Consent>,
    /// Every consent touchpoint, oldest first.
    pub history: Vec<ConsentChange>,
}

/// One consent given or withdrawn.
#[derive(Clone, Debug, Serialize)]
pub struct ConsentChange {
    /// The purpose.
    pub purpose: Value,
    /// Given or withdrawn.
    pub granted: Value,
    /// When.
    pub at: DateTime<Utc>,
    /// Through which channel.
    pub channel: Value,
    /// From which system.
    pub source: Value,
    /// The touchpoint.
    pub event_id: Uuid,
}

/// An identifier of the person.
#[derive(Clone, Debug, Serialize)]
pub struct IdentifierRecord {
    /// Its kind.
    pub kind: String,
    /// Its value as normalized; none for an identifier linked by hand that no touchpoint
    /// carried (the index keeps only a keyed hash of it).
    pub value: Option<String>,
    /// Whether the person holds it in the identity index (a device shared with another
    /// customer who holds it is carried, not held).
    pub held: bool,
    /// Why the person holds it (`explainIdentifier`), for identifiers held with a value.
    pub explanation: Option<ExplanationRecord>,
}

/// Why the person holds an identifier.
#[derive(Clone, Debug, Serialize)]
pub struct ExplanationRecord {
    /// Whether the value is blocked.
    pub blocked: bool,
    /// The event that linked it, then each merge, oldest first.
    pub steps: Vec<Step>,
}

/// A touchpoint, opened.
#[derive(Clone, Debug, Serialize)]
pub struct TouchpointRecord {
    /// Its id.
    pub event_id: Uuid,
    /// Its place in the log.
    pub position: u64,
    /// Its type, for example `order_placed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
    /// The channel it came through.
    pub channel: Value,
    /// The system that sent it.
    pub source: Value,
    /// Who stored it (an API key, an import).
    pub actor: Option<String>,
    /// Which of the person's customer ids it was stored under; none when a correction moved
    /// it to the person from another customer.
    pub customer: Option<CustomerId>,
    /// The identifiers it carried.
    pub identifiers: Value,
    /// What happened.
    pub action: Value,
    /// The record's other properties.
    pub properties: Value,
    /// How it was resolved (identifiers by position; customers that are not the person's
    /// left out).
    pub resolution: Value,
}

/// An identity decision on one of the person's customers.
#[derive(Clone, Debug, Serialize)]
pub struct CorrectionRecord {
    /// The event's id.
    pub event_id: Uuid,
    /// Its place in the log.
    pub position: u64,
    /// What was decided: `customer_merged`, `merge_undone`, `customer_split`,
    /// `identifier_linked` ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Who decided (`ingestion` for the rules, `api-key:NAME`, an operator).
    pub actor: Option<String>,
    /// Why, for a decision by hand.
    pub reason: Option<String>,
    /// The person's customer ids it names.
    pub customers: Vec<CustomerId>,
    /// Whether it also concerns a customer who is not this person (the other side of an
    /// undone merge or a split, the previous holder of a linked identifier), not named here.
    pub another_customer: bool,
}

/// Exports people's data from one store.
#[derive(Clone, Debug)]
pub struct Exporter {
    ingestor: Ingestor,
    opener: Opener,
    projection: ProfileProjection,
    corrector: Corrector,
}

impl Exporter {
    /// Exports through `ingestor` (its store, rules and keys), bringing `projection` (the live
    /// profiles) up to date first.
    pub fn new(ingestor: Ingestor, projection: ProfileProjection) -> Self {
        let opener = Opener::new(ingestor.store().clone(), ingestor.master_key().clone());
        let corrector = Corrector::new(ingestor.clone(), projection.clone());
        Self {
            ingestor,
            opener,
            projection,
            corrector,
        }
    }

    /// Everything held on `person`, written to the access log for `requester` before it is
    /// answered. An unknown person is `NOT_FOUND` and logs nothing.
    #[tracing::instrument(name = "privacy.export", skip_all)]
    pub async fn export(
        &self,
        person: &Person,
        requester: &Requester,
    ) -> Result<PersonExport, ExportError> {
        if requester.reason.trim().is_empty() {
            return Err(ExportError::MissingReason);
        }
        self.projection.catch_up().await?;
        let live = self.find(person).await?;
        let profile = self
            .projection
            .profile(live)
            .await?
            .ok_or_else(|| ExportError::NotFound(format!("no customer {live}")))?;
        let store = self.ingestor.store();
        let merged = store.absorbed_into(live).await?;
        let mut own: BTreeSet<CustomerId> = merged.iter().copied().collect();
        own.insert(live);
        let history = self.opener.history(live).await?;
        let mut document = PersonExport {
            schema: SCHEMA,
            generated_at: Utc::now(),
            request: RequestRecord {
                actor: requester.actor.clone(),
                reason: requester.reason.clone(),
            },
            customer: live,
            merged_customers: merged,
            erased: profile.erased,
            erasure: None,
            profile: None,
            scores: None,
            lifecycle: Vec::new(),
            tags: Vec::new(),
            segments: SegmentsRecord::default(),
            consent: ConsentRecord::default(),
            identifiers: Vec::new(),
            touchpoints: Vec::new(),
            corrections: Vec::new(),
            quarantine: Vec::new(),
            destinations: Vec::new(),
            notes: notes(),
        };
        if profile.erased {
            document.erasure = history
                .iter()
                .rev()
                .find(|e| EventKind::of(&e.event_type) == EventKind::Erased)
                .map(|e| ErasureEntry {
                    at: e.recorded_at,
                    actor: e.metadata.actor.clone(),
                    reason: e.metadata.reason.clone(),
                });
        } else {
            self.fill(&mut document, &profile, &history, &own).await?;
        }
        let (key_id, key_name) = requester
            .key
            .clone()
            .unwrap_or_else(|| (Uuid::nil(), requester.actor.clone()));
        store
            .log_access(&AccessEntry {
                at: document.generated_at,
                key_id,
                key_name,
                customer: live,
                what: EXPORTED.to_owned(),
                reason: Some(requester.reason.clone()),
            })
            .await?;
        Ok(document)
    }

    /// The live customer `person` names.
    async fn find(&self, person: &Person) -> Result<CustomerId, ExportError> {
        match person {
            Person::Customer(id) => Ok(self.ingestor.store().live_customer(*id).await?),
            Person::Identifier { kind, value } => self
                .corrector
                .explain(kind, value)
                .await?
                .customer
                // The value stays out of the message: it is personal data.
                .ok_or_else(|| ExportError::NotFound(format!("no customer holds this {kind}"))),
        }
    }

    /// The sections of a person who was not erased.
    async fn fill(
        &self,
        document: &mut PersonExport,
        profile: &Profile,
        history: &[RecordedEvent],
        own: &BTreeSet<CustomerId>,
    ) -> Result<(), ExportError> {
        let store = self.ingestor.store();
        let live = document.customer;
        let members: Vec<CustomerId> = own.iter().copied().collect();
        let just = [live];
        let (mut scores, tags, mut current, log, transitions) = tokio::try_join!(
            store.scores_of(&just),
            store.tags_of(live),
            store.memberships_of(&just),
            store.segment_log_of(&members),
            store.transitions_of(&members),
        )?;
        document.profile = Some(profile_figures(profile));
        document.scores = scores.remove(&live).map(|s| ScoresRecord {
            tier: s.tier,
            stage: s.stage,
            rfm_segment: s.rfm_segment,
            rfm: s.rfm,
            recency_days: s.recency_days,
            frequency: s.frequency,
            monetary_minor: s.monetary_minor,
        });
        document.lifecycle = transitions.into_iter().map(stage_change).collect();
        document.tags = tags;
        document.segments = SegmentsRecord {
            current: current.remove(&live).unwrap_or_default(),
            log,
        };
        document.consent.current = profile
            .consent
            .iter()
            .map(|(purpose, consent)| (purpose_name(purpose), *consent))
            .collect();
        let mut carried: BTreeSet<Identifier> = BTreeSet::new();
        for event in history {
            let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
            if !is_touchpoint(&event.event_type) {
                document.corrections.push(correction(event, &payload, own));
                continue;
            }
            for item in payload
                .get("identifiers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Ok(identifier) = serde_json::from_value::<Identifier>(item.clone()) {
                    carried.insert(identifier);
                }
            }
            let touchpoint = touchpoint(event, payload, own);
            if touchpoint.event_type == "consent_changed" {
                document.consent.history.push(ConsentChange {
                    purpose: touchpoint
                        .action
                        .get("purpose")
                        .cloned()
                        .unwrap_or_default(),
                    granted: touchpoint
                        .action
                        .get("granted")
                        .cloned()
                        .unwrap_or_default(),
                    at: touchpoint.occurred_at,
                    channel: touchpoint.channel.clone(),
                    source: touchpoint.source.clone(),
                    event_id: touchpoint.event_id,
                });
            }
            document.touchpoints.push(touchpoint);
        }
        let (identifiers, core) = self.identifiers(live, carried, own).await?;
        document.identifiers = identifiers;
        document.quarantine = self.quarantined(core).await?;
        Ok(())
    }

    /// The identifiers carried by the person's touchpoints, whether each is held and why,
    /// then those held with no value known; and the values of the core identifiers held (a
    /// device or a card may be shared, a phone or an email is the person's alone).
    async fn identifiers(
        &self,
        live: CustomerId,
        carried: BTreeSet<Identifier>,
        own: &BTreeSet<CustomerId>,
    ) -> Result<(Vec<IdentifierRecord>, Vec<String>), ExportError> {
        let mut held: BTreeSet<Identifier> = self
            .ingestor
            .store()
            .held_by(live)
            .await?
            .into_iter()
            .collect();
        let mut records = Vec::with_capacity(carried.len());
        let mut core = Vec::new();
        for identifier in carried {
            let is_held = held.remove(&self.ingestor.pseudonym(&identifier));
            if is_held && self.ingestor.rules().is_core(&identifier.kind) {
                core.push(identifier.value.clone());
            }
            let explanation = if is_held {
                let why = self
                    .corrector
                    .explain(identifier.kind.as_str(), &identifier.value)
                    .await?;
                Some(ExplanationRecord {
                    blocked: why.blocked,
                    steps: why
                        .steps
                        .into_iter()
                        .map(|step| Step {
                            customer: step.customer.filter(|c| own.contains(c)),
                            ..step
                        })
                        .collect(),
                })
            } else {
                None
            };
            records.push(IdentifierRecord {
                kind: identifier.kind.as_str().to_owned(),
                value: Some(identifier.value),
                held: is_held,
                explanation,
            });
        }
        records.extend(held.into_iter().map(|pseudonym| IdentifierRecord {
            kind: pseudonym.kind.as_str().to_owned(),
            value: None,
            held: true,
            explanation: None,
        }));
        Ok((records, core))
    }

    /// The quarantined records whose text or reason holds one of `values`, unexpired.
    async fn quarantined(
        &self,
        values: Vec<String>,
    ) -> Result<Vec<QuarantinedRecord>, ExportError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let holds = record_matcher(values);
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .ingestor
                .store()
                .quarantined(after, QUARANTINE_PAGE)
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.id;
            found.extend(
                page.into_iter()
                    .filter(|r| r.expired_at.is_none() && (holds(&r.record) || holds(&r.reason))),
            );
        }
        Ok(found)
    }
}

/// The notes every document carries.
fn notes() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "destinations",
            "Deliveries of this person's data to other systems will be listed here once \
             Patron delivers to destinations; it delivers to none yet.",
        ),
        (
            "customers",
            "Customer ids are Patron's own; those of other people (the holder of a shared \
             device, a customer separated from this one) are left out.",
        ),
    ])
}

/// Every figure of a profile, and those computed from it; without the internal bookkeeping
/// of which streams and touchpoints it is made of.
fn profile_figures(profile: &Profile) -> Value {
    let mut figures = match serde_json::to_value(profile) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    figures.remove("holdings");
    figures.remove("merged_into");
    let average: BTreeMap<&String, i64> = profile
        .revenue
        .keys()
        .filter_map(|c| profile.average_order_value(c).map(|v| (c, v)))
        .collect();
    figures.insert("average_order_value".into(), serde_json::json!(average));
    figures.insert(
        "preferred_channel".into(),
        serde_json::json!(profile.preferred_channel()),
    );
    figures.insert(
        "preferred_hour".into(),
        serde_json::json!(profile.preferred_hour()),
    );
    figures.insert(
        "promotion_sensitivity".into(),
        serde_json::json!(profile.promotion_sensitivity()),
    );
    Value::Object(figures)
}

/// A consent purpose's name (`marketing_sms`).
fn purpose_name(purpose: &impl Serialize) -> String {
    match serde_json::to_value(purpose) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

fn stage_change(t: Transition) -> StageChange {
    StageChange {
        from: t.from,
        to: t.to,
        at: t.at,
    }
}

/// A touchpoint of the person's, opened, naming none of the customers that are not theirs.
fn touchpoint(
    event: &RecordedEvent,
    payload: Value,
    own: &BTreeSet<CustomerId>,
) -> TouchpointRecord {
    let Value::Object(mut payload) = payload else {
        return TouchpointRecord {
            event_id: event.event_id.as_uuid(),
            position: event.position,
            event_type: event.event_type.clone(),
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            channel: Value::Null,
            source: Value::Null,
            actor: event.metadata.actor.clone(),
            customer: None,
            identifiers: Value::Null,
            action: Value::Null,
            properties: Value::Null,
            resolution: Value::Null,
        };
    };
    let mut take = |name: &str| payload.remove(name).unwrap_or_default();
    let mut resolution = take("resolution");
    if let Some(merged) = resolution.get_mut("merged").and_then(Value::as_array_mut) {
        merged.retain(|c| is_own(c, own));
    }
    for skipped in resolution
        .get_mut("skipped")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Value::Object(skipped) = skipped {
            if skipped.get("customer").is_some_and(|c| !is_own(c, own)) {
                skipped.remove("customer");
            }
        }
    }
    TouchpointRecord {
        event_id: event.event_id.as_uuid(),
        position: event.position,
        event_type: event.event_type.clone(),
        occurred_at: event.occurred_at,
        recorded_at: event.recorded_at,
        channel: take("channel"),
        source: take("source"),
        actor: event.metadata.actor.clone(),
        customer: CustomerId::from_stream(&event.stream_id).filter(|c| own.contains(c)),
        identifiers: take("identifiers"),
        action: take("action"),
        properties: take("properties"),
        resolution,
    }
}

/// Whether a JSON value is one of the person's customer ids.
fn is_own(value: &Value, own: &BTreeSet<CustomerId>) -> bool {
    value
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
        .is_some_and(|id| own.contains(&CustomerId::from_uuid(id)))
}

/// The members of identity events that name customers.
const CUSTOMER_MEMBERS: [&str; 7] = [
    "absorbed",
    "survivor",
    "other",
    "from",
    "to",
    "streams",
    "customers",
];

/// An identity event on one of the person's customers, naming only their own customers.
fn correction(
    event: &RecordedEvent,
    payload: &Value,
    own: &BTreeSet<CustomerId>,
) -> CorrectionRecord {
    let mut customers = BTreeSet::new();
    let mut another_customer = false;
    for member in CUSTOMER_MEMBERS {
        let named: Vec<&Value> = match payload.get(member) {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(value @ Value::String(_)) => vec![value],
            _ => Vec::new(),
        };
        for value in named {
            if is_own(value, own) {
                if let Some(id) = value.as_str().and_then(|s| s.parse::<Uuid>().ok()) {
                    customers.insert(CustomerId::from_uuid(id));
                }
            } else {
                another_customer = true;
            }
        }
    }
    customers.extend(CustomerId::from_stream(&event.stream_id).filter(|c| own.contains(c)));
    CorrectionRecord {
        event_id: event.event_id.as_uuid(),
        position: event.position,
        event_type: event.event_type.clone(),
        recorded_at: event.recorded_at,
        actor: event.metadata.actor.clone(),
        reason: event.metadata.reason.clone(),
        customers: customers.into_iter().collect(),
        another_customer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resolution_names_only_the_persons_customers() {
        let mine = CustomerId::from_uuid(Uuid::now_v7());
        let theirs = Uuid::now_v7().to_string();
        let own = BTreeSet::from([mine]);
        let event = RecordedEvent {
            position: 7,
            event_id: patron_domain::EventId::new(),
            stream_id: mine.stream_id(),
            stream_version: 1,
            event_type: "page_viewed".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            recorded_at: Utc::now(),
            payload: String::new(),
            metadata: patron_domain::Metadata::default(),
        };
        let payload = json!({
            "channel": "app", "source": "app-system",
            "identifiers": [{"kind": "phone", "value": "+8613912340002"},
                            {"kind": "device_id", "value": "tablet-1"}],
            "action": {"type": "page_viewed"},
            "resolution": {"created": false, "linked": [0], "merged": [mine.to_string(), theirs],
                           "skipped": [{"identifier": 1, "reason": "held_by_other",
                                        "customer": theirs}], "rules_version": 1}
        });
        let record = touchpoint(&event, payload, &own);
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains(&theirs), "{text}");
        assert!(text.contains(&mine.to_string()), "{text}");
        assert_eq!(record.resolution["skipped"][0]["reason"], "held_by_other");
        assert_eq!(record.channel, "app");
    }
}
