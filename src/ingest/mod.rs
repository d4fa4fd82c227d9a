//! Ingestion: records from any channel validated, resolved to customers and stored.
//!
//! A batch goes through three steps:
//! 1. each record is parsed and validated ([`RawTouchpoint::validate`]); refused records go to
//!    the quarantine with the field at fault and the record as received;
//! 2. under the log's write lock, records already stored are answered as duplicates, and the
//!    others are resolved one after the other against the identity graph (merges included);
//! 3. the touchpoints, merge events, identity index changes and refused records are written in
//!    one transaction, with positions in the order of the records.
//!
//! Nothing accepted is lost: a batch is stored whole or not at all, and every record gets an
//! answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{
    CustomerMerged, CustomerMergedInto, TouchpointRecorded, CUSTOMER_MERGED, CUSTOMER_MERGED_INTO,
};
use patron_domain::identifier::Identifier;
use patron_domain::identity::{IdentityRules, IdentityView, Resolver};
use patron_domain::pseudonym::Pseudonymizer;
use patron_domain::touchpoint::{RawTouchpoint, Rejection, RejectionCode, Touchpoint};
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, StreamAppend, StreamId,
};
use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::{
    EventOutcome, EventStore, IdentityChanges, IdentityCommit, QuarantinedRecord, StoreError,
};

/// The name of the setting holding a generated identity key.
const IDENTITY_KEY_SETTING: &str = "identity_key";

/// What went wrong with a whole batch (single records are answered, not failed).
#[derive(Debug, Error)]
pub enum IngestError {
    /// The store failed; nothing of the batch was written.
    #[error("the batch was not stored: {0}")]
    Store(#[from] StoreError),
    /// The task committing a batch stopped unexpectedly; that batch was not stored.
    #[error("the commit task stopped: {0}")]
    Aborted(String),
}

/// Commits prepared batches one after the other in a task of their own, so that the caller can
/// read and prepare the next batch meanwhile. Each batch carries a tag (line numbers, ground
/// truth) handed back with its report.
pub struct CommitPipeline<T> {
    ingestor: Ingestor,
    in_flight: Option<(T, JoinHandle<Result<IngestReport, IngestError>>)>,
}

impl<T> CommitPipeline<T> {
    /// A pipeline committing through `ingestor`.
    pub fn new(ingestor: Ingestor) -> Self {
        Self {
            ingestor,
            in_flight: None,
        }
    }

    /// Starts committing `batch` once the batch before it is stored, and returns that one's
    /// report. If the batch before failed, its tag comes back with the error and `batch` is
    /// not submitted.
    pub async fn submit(
        &mut self,
        tag: T,
        batch: PreparedBatch,
    ) -> Result<Option<(T, IngestReport)>, (T, IngestError)> {
        let previous = self.finish().await?;
        let ingestor = self.ingestor.clone();
        self.in_flight = Some((
            tag,
            tokio::spawn(async move { ingestor.commit(batch).await }),
        ));
        Ok(previous)
    }

    /// Waits for the batch in flight, if any, and returns its report, or its tag and error.
    pub async fn finish(&mut self) -> Result<Option<(T, IngestReport)>, (T, IngestError)> {
        let Some((tag, commit)) = self.in_flight.take() else {
            return Ok(None);
        };
        match commit.await {
            Ok(Ok(report)) => Ok(Some((tag, report))),
            Ok(Err(e)) => Err((tag, e)),
            Err(e) => Err((tag, IngestError::Aborted(e.to_string()))),
        }
    }
}

impl IngestError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Aborted(_) => "COMMIT_ABORTED",
        }
    }
}

/// The answer for one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordOutcome {
    /// Stored now.
    Accepted {
        /// The record's event id.
        event_id: EventId,
        /// The customer it was resolved to.
        customer: CustomerId,
        /// Its position in the log.
        position: Position,
    },
    /// Stored before: nothing was written.
    Duplicate {
        /// The record's event id.
        event_id: EventId,
        /// The position of the stored original.
        position: Position,
    },
    /// Refused: kept in the quarantine.
    Rejected {
        /// The field at fault and why.
        #[serde(flatten)]
        rejection: Rejection,
        /// The record's number in the quarantine.
        quarantine_id: u64,
    },
}

/// The answers for a batch, in the order of its records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// One answer per record.
    pub records: Vec<RecordOutcome>,
    /// Records stored now.
    pub accepted: usize,
    /// Records stored before.
    pub duplicates: usize,
    /// Records refused.
    pub rejected: usize,
    /// Customers merged into others by this batch.
    pub merges: usize,
    /// Customers started by this batch.
    pub new_customers: usize,
}

/// Validates, resolves and stores touchpoints.
#[derive(Clone)]
pub struct Ingestor {
    store: EventStore,
    rules: Arc<IdentityRules>,
    pseudonymous_rules: Arc<IdentityRules>,
    pseudonymizer: Pseudonymizer,
    actor: String,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("rules_version", &self.rules.version())
            .finish_non_exhaustive()
    }
}

/// A record as received: its text, kept in the quarantine if it is refused, and what parsing it
/// gave.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The record as received (a JSON document, a CSV line ...).
    pub received: String,
    /// The record in Patron's shape, or why it could not be read.
    pub parsed: Result<RawTouchpoint, Rejection>,
}

impl Incoming {
    /// A record received as JSON text in Patron's shape.
    pub fn json(text: String) -> Self {
        let parsed = serde_json::from_str::<RawTouchpoint>(&text).map_err(|e| Rejection {
            field: "record".into(),
            reason: format!("not a JSON object of a touchpoint: {e}"),
            code: RejectionCode::Malformed,
        });
        Self {
            received: text,
            parsed,
        }
    }
}

/// A record of a batch, checked: a touchpoint with the pseudonyms of its identifiers (in the
/// same order), or why it was refused.
enum Parsed {
    Valid(Box<Touchpoint>, Vec<Identifier>),
    Rejected(Rejection, Option<String>),
}

/// A batch validated and pseudonymized, ready to [`Ingestor::commit`]. Preparing is CPU work
/// without IO, so the next batch can be prepared while the previous one commits.
pub struct PreparedBatch {
    parsed: Vec<Parsed>,
    received: Vec<String>,
    now: DateTime<Utc>,
}

impl PreparedBatch {
    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.parsed.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }
}

/// What the decision made for a record, before positions are known.
enum Planned {
    Stored(EventId, CustomerId),
    Duplicate(EventId, Position),
    DuplicateInBatch(EventId),
    Rejected(usize),
}

/// Builds one append per stream, and the order the events happened in across streams.
#[derive(Default)]
struct Appends {
    streams: Vec<StreamId>,
    index: HashMap<StreamId, usize>,
    events: Vec<Vec<NewEvent>>,
    order: Vec<usize>,
}

impl Appends {
    fn push(&mut self, customer: CustomerId, event: NewEvent) {
        let stream = customer.stream_id();
        let index = match self.index.get(&stream) {
            Some(i) => *i,
            None => {
                let i = self.streams.len();
                self.index.insert(stream.clone(), i);
                self.streams.push(stream);
                self.events.push(Vec::new());
                i
            }
        };
        self.events[index].push(event);
        self.order.push(index);
    }

    fn into_commit(self) -> (Vec<StreamAppend>, Vec<usize>) {
        let appends = self
            .streams
            .into_iter()
            .zip(self.events)
            .map(|(s, events)| StreamAppend::new(s, ExpectedVersion::Any, events))
            .collect();
        (appends, self.order)
    }
}

fn encode(event_type: &str, payload: &impl Serialize) -> Result<NewEvent, StoreError> {
    NewEvent::new(event_type, payload).map_err(|e| StoreError::Abandoned {
        reason: format!("cannot encode {event_type}: {e}"),
    })
}

impl Ingestor {
    /// An ingestor writing to `store` under `rules`, pseudonymizing identifiers with `key`.
    pub fn new(store: EventStore, rules: IdentityRules, key: &[u8]) -> Self {
        let pseudonymizer = Pseudonymizer::new(key);
        let pseudonymous_rules = Arc::new(pseudonymizer.rules(&rules));
        Self {
            store,
            rules: Arc::new(rules),
            pseudonymous_rules,
            pseudonymizer,
            actor: "ingestion".into(),
        }
    }

    /// An ingestor whose identity key is the one kept in the store, generated on first use.
    /// Production deployments give the key in configuration instead (see `docs/ingestion.md`).
    pub async fn with_stored_key(
        store: EventStore,
        rules: IdentityRules,
    ) -> Result<Self, StoreError> {
        let generated = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let key = store
            .setting_or_insert(IDENTITY_KEY_SETTING, &generated)
            .await?;
        Ok(Self::new(store, rules, key.as_bytes()))
    }

    /// Names who appends (an API key's name, `import:<file>`), recorded in every event's metadata.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The rules in force.
    pub fn rules(&self) -> &IdentityRules {
        &self.rules
    }

    /// The store written to.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The pseudonym under which the identity index knows an identifier.
    pub fn pseudonym(&self, identifier: &Identifier) -> Identifier {
        self.pseudonymizer.pseudonym(identifier)
    }

    /// The live customer holding an identifier given as kind and raw value, if any.
    pub async fn customer_by_identifier(
        &self,
        kind: &str,
        raw: &str,
    ) -> Result<Option<CustomerId>, IngestError> {
        let Ok(identifier) = self.rules.normalize(kind, raw) else {
            return Ok(None);
        };
        Ok(self.store.holder(&self.pseudonym(&identifier)).await?)
    }

    /// Ingests records given as JSON text, one per element, answering each.
    pub async fn ingest_json(&self, records: &[String]) -> Result<IngestReport, IngestError> {
        let incoming: Vec<Incoming> = records.iter().map(|t| Incoming::json(t.clone())).collect();
        self.ingest(incoming).await
    }

    /// Ingests records, answering each in order.
    pub async fn ingest(&self, records: Vec<Incoming>) -> Result<IngestReport, IngestError> {
        let batch = self.prepare(records);
        self.commit(batch).await
    }

    /// Validates and pseudonymizes a batch: the part of ingestion that needs no database.
    pub fn prepare(&self, records: Vec<Incoming>) -> PreparedBatch {
        let now = Utc::now();
        let mut received = Vec::with_capacity(records.len());
        let parsed = records
            .into_iter()
            .map(|r| {
                received.push(r.received);
                match r.parsed {
                    Err(rejection) => Parsed::Rejected(rejection, None),
                    Ok(raw) => {
                        let source = raw.source.clone();
                        match raw.validate(&self.rules, now) {
                            Ok(t) => {
                                let keys =
                                    t.identifiers.iter().map(|i| self.pseudonym(i)).collect();
                                Parsed::Valid(Box::new(t), keys)
                            }
                            Err(rejection) => Parsed::Rejected(rejection, source),
                        }
                    }
                }
            })
            .collect();
        PreparedBatch {
            parsed,
            received,
            now,
        }
    }

    /// Stores a prepared batch: refused records to the quarantine, the others resolved and
    /// appended in one transaction.
    #[tracing::instrument(name = "ingest.batch", skip_all, fields(records = batch.len()))]
    pub async fn commit(&self, batch: PreparedBatch) -> Result<IngestReport, IngestError> {
        let PreparedBatch {
            parsed,
            received: records,
            now,
        } = batch;
        let quarantined: Vec<QuarantinedRecord> = parsed
            .iter()
            .zip(records)
            .filter_map(|(p, text)| match p {
                Parsed::Rejected(r, source) => Some(QuarantinedRecord {
                    id: 0,
                    received_at: now,
                    source: source.clone(),
                    code: serde_json::to_value(r.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    field: r.field.clone(),
                    reason: r.reason.clone(),
                    record: text.clone(),
                }),
                Parsed::Valid(..) => None,
            })
            .collect();

        let mut event_ids: Vec<EventId> = Vec::with_capacity(parsed.len());
        let mut keys: Vec<Identifier> = Vec::new();
        for p in &parsed {
            if let Parsed::Valid(t, pseudonyms) = p {
                event_ids.push(t.event_id);
                keys.extend(pseudonyms.iter().cloned());
            }
        }
        keys.sort();
        keys.dedup();

        let correlation = Uuid::now_v7();
        let (outcome, quarantine_ids, planned) = self
            .store
            .commit_identity(&event_ids, &keys, &quarantined, |snapshot| {
                self.decide(&parsed, snapshot, correlation)
            })
            .await?;

        let mut positions: HashMap<EventId, Position> = HashMap::new();
        for e in outcome.events() {
            if let EventOutcome::Appended(r) = e {
                positions.insert(r.event_id, r.position);
            }
        }
        let mut report = IngestReport::default();
        let mut rejected = quarantine_ids.into_iter();
        for plan in planned.records {
            let answer = match plan {
                Planned::Stored(event_id, customer) => RecordOutcome::Accepted {
                    event_id,
                    customer,
                    position: positions.get(&event_id).copied().unwrap_or_default(),
                },
                Planned::Duplicate(event_id, position) => {
                    RecordOutcome::Duplicate { event_id, position }
                }
                Planned::DuplicateInBatch(event_id) => RecordOutcome::Duplicate {
                    event_id,
                    position: positions.get(&event_id).copied().unwrap_or_default(),
                },
                Planned::Rejected(i) => {
                    let Parsed::Rejected(rejection, _) = &parsed[i] else {
                        continue;
                    };
                    RecordOutcome::Rejected {
                        rejection: rejection.clone(),
                        quarantine_id: rejected.next().unwrap_or_default(),
                    }
                }
            };
            match &answer {
                RecordOutcome::Accepted { .. } => report.accepted += 1,
                RecordOutcome::Duplicate { .. } => report.duplicates += 1,
                RecordOutcome::Rejected { .. } => report.rejected += 1,
            }
            report.records.push(answer);
        }
        report.merges = planned.merges;
        report.new_customers = planned.new_customers;
        Ok(report)
    }

    /// Resolves the batch's touchpoints in order against the graph, under the write lock.
    fn decide(
        &self,
        parsed: &[Parsed],
        snapshot: crate::store::IdentitySnapshot,
        correlation: Uuid,
    ) -> Result<IdentityCommit<Decisions>, StoreError> {
        let mut graph = snapshot.graph;
        let resolver = Resolver::new(&self.pseudonymous_rules);
        let mut appends = Appends::default();
        let mut changes = IdentityChanges::default();
        let mut decisions = Decisions::default();
        let mut seen: HashSet<EventId> = HashSet::new();
        for (index, record) in parsed.iter().enumerate() {
            let (touchpoint, keys) = match record {
                Parsed::Rejected(..) => {
                    decisions.records.push(Planned::Rejected(index));
                    continue;
                }
                Parsed::Valid(t, keys) => (t, keys),
            };
            if let Some(original) = snapshot.stored.get(&touchpoint.event_id) {
                decisions
                    .records
                    .push(Planned::Duplicate(touchpoint.event_id, original.position));
                continue;
            }
            if !seen.insert(touchpoint.event_id) {
                decisions
                    .records
                    .push(Planned::DuplicateInBatch(touchpoint.event_id));
                continue;
            }
            let real: rustc_hash::FxHashMap<&Identifier, &Identifier> =
                keys.iter().zip(&touchpoint.identifiers).collect();
            let resolution = resolver.resolve(&graph, keys, CustomerId::new);
            graph.apply(&resolution);
            let reveal = |p: &Identifier| real.get(p).map_or_else(|| p.clone(), |i| (*i).clone());
            let customer = resolution.customer;
            let metadata = Metadata {
                source: Some(touchpoint.source.clone()),
                channel: Some(touchpoint.channel.as_str().to_owned()),
                correlation_id: Some(correlation),
                causation_id: None,
                actor: Some(self.actor.clone()),
                reason: None,
            };
            let recorded = TouchpointRecorded::view(touchpoint, &resolution, reveal);
            appends.push(
                customer,
                encode(touchpoint.action.event_type(), &recorded)?
                    .with_id(touchpoint.event_id)
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(metadata.clone()),
            );
            let caused = Metadata {
                causation_id: Some(touchpoint.event_id.as_uuid()),
                ..metadata
            };
            for merge in &resolution.merges {
                let evidence: Vec<Identifier> = merge.evidence.iter().map(reveal).collect();
                appends.push(
                    customer,
                    encode(
                        CUSTOMER_MERGED,
                        &CustomerMerged {
                            absorbed: merge.absorbed,
                            evidence: evidence.clone(),
                            cause: touchpoint.event_id,
                            rules_version: resolution.rules_version,
                        },
                    )?
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(caused.clone()),
                );
                appends.push(
                    merge.absorbed,
                    encode(
                        CUSTOMER_MERGED_INTO,
                        &CustomerMergedInto {
                            survivor: customer,
                            evidence,
                            cause: touchpoint.event_id,
                            rules_version: resolution.rules_version,
                        },
                    )?
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(caused.clone()),
                );
                changes.merges.push((merge.absorbed, customer));
                decisions.merges += 1;
            }
            changes
                .links
                .extend(resolution.links.iter().map(|l| (l.clone(), customer)));
            if resolution.created {
                decisions.new_customers += 1;
            }
            decisions
                .records
                .push(Planned::Stored(touchpoint.event_id, customer));
        }
        // Merges are written before links: a link made for a customer merged later in the batch
        // goes to its survivor.
        for (_, customer) in &mut changes.links {
            *customer = graph.resolve_customer(*customer);
        }
        debug_assert!(changes
            .links
            .iter()
            .all(|(k, c)| graph.owner(k) == Some(*c)));
        // Answers name the customer each record ended with: a customer merged later in the
        // batch is named by its survivor.
        for record in &mut decisions.records {
            if let Planned::Stored(_, customer) = record {
                *customer = graph.resolve_customer(*customer);
            }
        }
        let (appends, order) = appends.into_commit();
        Ok(IdentityCommit {
            appends,
            order: Some(order),
            changes,
            value: decisions,
        })
    }
}

/// What [`Ingestor::decide`] hands back.
#[derive(Default)]
struct Decisions {
    records: Vec<Planned>,
    merges: usize,
    new_customers: usize,
}
