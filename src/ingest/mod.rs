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
//! [`commit::CommitPipeline`] overlaps preparing a batch with committing the one before (imports);
//! [`commit::CommitQueue`] commits the batches of concurrent callers together (the HTTP server).
//!
//! Nothing accepted is lost: a batch is stored whole or not at all, and every record gets an
//! answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::json_bound::JsonBoundError;
use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{
    CustomerMerged, CustomerMergedInto, EncodedTouchpoint, ResolutionRecord, CUSTOMER_MERGED,
    CUSTOMER_MERGED_INTO,
};
use patron_domain::identifier::Identifier;
use patron_domain::identity::{IdentityRules, IdentityView, Resolver};
use patron_domain::privacy::{seal_members, CustomerKey, MasterKey};
use patron_domain::pseudonym::Pseudonymizer;
use patron_domain::touchpoint::{
    default_earliest_time, RawTouchpoint, Rejection, RejectionCode, TimeBounds, Touchpoint,
};
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, StreamAppend, StreamId,
};
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

mod commit;

pub use commit::{CommitPipeline, CommitQueue};

use crate::store::{
    EventOutcome, EventStore, IdentityChanges, IdentityCommit, QuarantinedRecord, StoreError,
};

/// The name of the setting holding a generated identity key.
const IDENTITY_KEY_SETTING: &str = "identity_key";
/// The personal members of merge events.
const EVIDENCE: &[&str] = &["evidence"];
/// The name of the setting holding a generated master key.
const MASTER_KEY_SETTING: &str = "master_key";

/// What went wrong with a whole batch (single records are answered, not failed).
#[derive(Debug, Error)]
pub enum IngestError {
    /// The store failed; nothing of the batch was written.
    #[error("the batch was not stored: {0}")]
    Store(#[from] StoreError),
    /// The task committing a batch stopped unexpectedly; that batch was not stored.
    #[error("the commit task stopped: {0}")]
    Aborted(String),
    /// The batch was committed together with other callers' batches, and that commit failed;
    /// nothing of the batch was written.
    #[error("the batch was not stored: {reason}")]
    Grouped {
        /// The stable code of the failure.
        code: &'static str,
        /// What failed.
        reason: String,
    },
}

impl IngestError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Aborted(_) => "COMMIT_ABORTED",
            Self::Grouped { code, .. } => code,
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
    master: MasterKey,
    actor: String,
    /// The earliest `occurred_at` accepted.
    earliest: DateTime<Utc>,
    /// The keys that were not given and so are read from (or generated into) the store.
    kept_in_store: Vec<&'static str>,
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

/// The largest record accepted, in bytes of JSON text (256 KiB).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// The most JSON values one record may hold (objects, arrays, strings, numbers ...).
pub const MAX_RECORD_VALUES: usize = 10_000;

/// Refuses a record's JSON text past [`MAX_RECORD_BYTES`] or [`MAX_RECORD_VALUES`], or that is
/// not JSON, before it is parsed into a tree (which costs tens of bytes per value).
pub fn check_record_bounds(text: &str) -> Result<(), Rejection> {
    let refuse = |reason: String| Rejection {
        field: "record".into(),
        reason,
        code: RejectionCode::Malformed,
    };
    if text.len() > MAX_RECORD_BYTES {
        return Err(refuse(format!(
            "the record is {} bytes; a record may have at most {MAX_RECORD_BYTES}",
            text.len()
        )));
    }
    match crate::json_bound::count_json_values(text.as_bytes(), MAX_RECORD_VALUES) {
        Ok(_) => Ok(()),
        Err(JsonBoundError::TooManyValues(max)) => Err(refuse(format!(
            "the record holds more than {max} JSON values"
        ))),
        Err(JsonBoundError::Malformed(e)) => {
            Err(refuse(format!("not a JSON object of a touchpoint: {e}")))
        }
    }
}

impl Incoming {
    /// A record received as JSON text in Patron's shape, refused past the bounds of
    /// [`check_record_bounds`].
    pub fn json(text: String) -> Self {
        let parsed = check_record_bounds(&text).and_then(|()| {
            serde_json::from_str::<RawTouchpoint>(&text).map_err(|e| Rejection {
                field: "record".into(),
                reason: format!("not a JSON object of a touchpoint: {e}"),
                code: RejectionCode::Malformed,
            })
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
    Valid(Box<Ready>),
    Rejected(Rejection, Option<String>),
}

/// A valid touchpoint with what storing it needs that can be worked out before the write lock.
/// Its action and properties are only in `body`: a batch holds one copy of them.
struct Ready {
    touchpoint: Resolvable,
    /// Pseudonyms of the touchpoint's identifiers, in the same order.
    keys: Vec<Identifier>,
    /// The stored form up to its resolution; taken when the event is built.
    body: Option<EncodedTouchpoint>,
    metadata: Metadata,
}

/// What resolving and storing a valid touchpoint reads of it once it is encoded.
struct Resolvable {
    event_id: EventId,
    occurred_at: DateTime<Utc>,
    /// The normalized identifiers, in the touchpoint's order.
    identifiers: Vec<Identifier>,
    event_type: &'static str,
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
    Stored(EventId, CustomerId, Effects),
    Duplicate(EventId, Position),
    DuplicateInBatch(EventId),
    Rejected(usize),
}

/// Builds one append per stream, and the order the events happened in across streams.
#[derive(Default)]
struct Appends {
    streams: Vec<StreamId>,
    index: rustc_hash::FxHashMap<CustomerId, usize>,
    events: Vec<Vec<NewEvent>>,
    order: Vec<usize>,
}

impl Appends {
    fn push(&mut self, customer: CustomerId, event: NewEvent) {
        let index = match self.index.get(&customer) {
            Some(i) => *i,
            None => {
                let i = self.streams.len();
                self.index.insert(customer, i);
                self.streams.push(customer.stream_id());
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

/// The key kept in the store under `setting`; on a store holding no keyed data yet, `generated`
/// is kept and returned (the first one kept wins a race). A store with keyed data but no kept
/// key was keyed from configuration: refused, naming `variable`.
async fn kept_or_first(
    store: &EventStore,
    setting: &str,
    generated: &str,
    variable: &str,
) -> Result<String, StoreError> {
    if let Some(kept) = store.setting(setting).await? {
        return Ok(kept);
    }
    if store.holds_keyed_data().await? {
        return Err(StoreError::Abandoned {
            reason: format!(
                "this store was written with a key given in configuration: set {variable}"
            ),
        });
    }
    store.setting_or_insert(setting, generated).await
}

/// An event whose `personal` members are sealed for `key`'s customer.
pub(crate) fn sealed(
    event_type: &str,
    payload: &impl Serialize,
    personal: &[&str],
    key: &CustomerKey,
) -> Result<NewEvent, StoreError> {
    let cannot = |e: String| StoreError::Abandoned {
        reason: format!("cannot encode {event_type}: {e}"),
    };
    let value = serde_json::to_value(payload).map_err(|e| cannot(e.to_string()))?;
    let value = seal_members(value, personal, key).map_err(|e| cannot(e.to_string()))?;
    NewEvent::new(event_type, &value).map_err(|e| cannot(e.to_string()))
}

/// The customer keys a commit needs: read under the write lock, unwrapped once each, and made
/// for customers that have none (new ones).
struct KeyRing<'a> {
    master: &'a MasterKey,
    wrapped: HashMap<CustomerId, Vec<u8>>,
    open: rustc_hash::FxHashMap<CustomerId, CustomerKey>,
    made: Vec<(CustomerId, Vec<u8>)>,
}

impl<'a> KeyRing<'a> {
    fn new(master: &'a MasterKey, wrapped: HashMap<CustomerId, Vec<u8>>) -> Self {
        Self {
            master,
            wrapped,
            open: rustc_hash::FxHashMap::default(),
            made: Vec::new(),
        }
    }

    fn get(&mut self, customer: CustomerId) -> Result<&CustomerKey, StoreError> {
        if !self.open.contains_key(&customer) {
            let key = match self.wrapped.remove(&customer) {
                Some(wrapped) => {
                    self.master
                        .unwrap(&wrapped)
                        .map_err(|e| StoreError::Abandoned {
                            reason: format!(
                                "the key of customer {customer} does not open with the master key \
                                 given ({e}): is it the key this store was written with?"
                            ),
                        })?
                }
                None => {
                    let (key, wrapped) = self.master.new_customer_key();
                    self.made.push((customer, wrapped));
                    key
                }
            };
            self.open.insert(customer, key);
        }
        self.open
            .get(&customer)
            .ok_or_else(|| StoreError::Abandoned {
                reason: format!("the key of customer {customer} vanished"),
            })
    }
}

impl Ingestor {
    /// An ingestor writing to `store` under `rules`, pseudonymizing identifiers with `key` and
    /// wrapping customer keys with `master`.
    pub fn new(store: EventStore, rules: IdentityRules, key: &[u8], master: MasterKey) -> Self {
        let pseudonymizer = Pseudonymizer::new(key);
        let pseudonymous_rules = Arc::new(pseudonymizer.rules(&rules));
        Self {
            store,
            rules: Arc::new(rules),
            pseudonymous_rules,
            pseudonymizer,
            master,
            actor: "ingestion".into(),
            earliest: default_earliest_time(),
            kept_in_store: Vec::new(),
        }
    }

    /// An ingestor with the keys given, and for those not given (`None`), the ones kept in the
    /// store. A store holding no keyed data yet (no customer key, no identity index entry) gets
    /// generated keys kept in it, fine for a trial, not for production, which gives both in
    /// configuration (see `docs/privacy.md`). A store that holds keyed data but no kept key was
    /// written with keys from configuration: then a missing key is refused, never generated,
    /// so that a command run without the configuration cannot plant a second key.
    pub async fn with_keys(
        store: EventStore,
        rules: IdentityRules,
        identity_key: Option<&[u8]>,
        master: Option<MasterKey>,
    ) -> Result<Self, StoreError> {
        let mut kept_in_store = Vec::new();
        if identity_key.is_none() {
            kept_in_store.push("PATRON_IDENTITY_KEY");
        }
        if master.is_none() {
            kept_in_store.push("PATRON_MASTER_KEY");
        }
        let identity_key = match identity_key {
            Some(key) => key.to_vec(),
            None => {
                let generated = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
                kept_or_first(
                    &store,
                    IDENTITY_KEY_SETTING,
                    &generated,
                    "PATRON_IDENTITY_KEY",
                )
                .await?
                .into_bytes()
            }
        };
        let master = match master {
            Some(master) => master,
            None => {
                let text = kept_or_first(
                    &store,
                    MASTER_KEY_SETTING,
                    &MasterKey::generate(),
                    "PATRON_MASTER_KEY",
                )
                .await?;
                MasterKey::parse(&text).map_err(|e| StoreError::Abandoned {
                    reason: format!("the master key kept in the store: {e}"),
                })?
            }
        };
        let mut ingestor = Self::new(store, rules, &identity_key, master);
        ingestor.kept_in_store = kept_in_store;
        Ok(ingestor)
    }

    /// The keys kept in the store because configuration did not give them (`PATRON_IDENTITY_KEY`,
    /// `PATRON_MASTER_KEY`): fine for a trial, not for production.
    pub fn keys_kept_in_store(&self) -> &[&'static str] {
        &self.kept_in_store
    }

    /// The master key customer keys are wrapped with.
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Names who appends (an API key's name, `import:<file>`), recorded in every event's metadata.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Refuses touchpoints that happened before `earliest` (by default
    /// [`DEFAULT_EARLIEST_TIME`](patron_domain::touchpoint::DEFAULT_EARLIEST_TIME),
    /// 1990-01-01T00:00:00Z).
    pub fn with_earliest_time(mut self, earliest: DateTime<Utc>) -> Self {
        self.earliest = earliest;
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

    /// `rules` with their blocked values replaced by pseudonyms, as the resolver applies
    /// them to pseudonymous identifiers.
    pub fn pseudonymous_rules(&self, rules: &IdentityRules) -> IdentityRules {
        self.pseudonymizer.rules(rules)
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
        self.prepare_each(records.len(), records.into_iter())
    }

    /// Like [`Ingestor::prepare`] for records received as JSON text in Patron's shape, each
    /// parsed only when its turn comes: a batch never holds every record parsed at once.
    pub fn prepare_json<'a>(
        &self,
        records: impl ExactSizeIterator<Item = &'a str>,
    ) -> PreparedBatch {
        self.prepare_each(
            records.len(),
            records.map(|text| Incoming::json(text.to_owned())),
        )
    }

    /// Prepares `count` records made one after the other by `records` (each is made, checked
    /// and encoded before the next is made). Only a refused record keeps its text
    /// (for the quarantine); a valid one keeps what resolving it needs and its encoded form.
    pub fn prepare_each(
        &self,
        count: usize,
        records: impl Iterator<Item = Incoming>,
    ) -> PreparedBatch {
        let now = Utc::now();
        let times = TimeBounds {
            earliest: self.earliest,
            now,
        };
        let correlation = Uuid::now_v7();
        let mut received = Vec::with_capacity(count);
        let mut parsed = Vec::with_capacity(count);
        for record in records {
            let checked = match record.parsed {
                Err(rejection) => Parsed::Rejected(rejection, None),
                Ok(raw) => {
                    let source = raw.source.clone();
                    match raw.validate(&self.rules, times) {
                        Ok(t) => self.ready(t, correlation),
                        Err(rejection) => Parsed::Rejected(rejection, source),
                    }
                }
            };
            received.push(match checked {
                Parsed::Rejected(..) => record.received,
                Parsed::Valid(_) => String::new(),
            });
            parsed.push(checked);
        }
        PreparedBatch {
            parsed,
            received,
            now,
        }
    }

    /// Pseudonymizes and encodes a valid touchpoint.
    fn ready(&self, touchpoint: Touchpoint, correlation: Uuid) -> Parsed {
        let body = match EncodedTouchpoint::new(&touchpoint) {
            Ok(body) => body,
            Err(e) => {
                let source = Some(touchpoint.source);
                let rejection = Rejection {
                    field: "record".into(),
                    reason: format!("cannot be encoded: {e}"),
                    code: RejectionCode::Malformed,
                };
                return Parsed::Rejected(rejection, source);
            }
        };
        let keys = touchpoint
            .identifiers
            .iter()
            .map(|i| self.pseudonym(i))
            .collect();
        let metadata = Metadata {
            source: Some(touchpoint.source.clone()),
            channel: Some(touchpoint.channel.as_str().to_owned()),
            correlation_id: Some(correlation),
            causation_id: None,
            actor: Some(self.actor.clone()),
            reason: None,
        };
        Parsed::Valid(Box::new(Ready {
            touchpoint: Resolvable {
                event_id: touchpoint.event_id,
                occurred_at: touchpoint.occurred_at,
                event_type: touchpoint.action.event_type(),
                identifiers: touchpoint.identifiers,
            },
            keys,
            body: Some(body),
            metadata,
        }))
    }

    /// Stores a prepared batch: refused records to the quarantine, the others resolved and
    /// appended in one transaction.
    pub async fn commit(&self, batch: PreparedBatch) -> Result<IngestReport, IngestError> {
        let mut reports = self.commit_group(vec![batch]).await?;
        Ok(reports.pop().unwrap_or_default())
    }

    /// Stores several prepared batches in one transaction, as if they were one batch in the
    /// order given, and answers each batch with its own report.
    #[tracing::instrument(
        name = "ingest.batch",
        skip_all,
        fields(batches = batches.len(), records = batches.iter().map(PreparedBatch::len).sum::<usize>())
    )]
    pub async fn commit_group(
        &self,
        batches: Vec<PreparedBatch>,
    ) -> Result<Vec<IngestReport>, IngestError> {
        let sizes: Vec<usize> = batches.iter().map(PreparedBatch::len).collect();
        let now = batches.first().map_or_else(Utc::now, |b| b.now);
        let total = sizes.iter().sum();
        let mut parsed = Vec::with_capacity(total);
        let mut records = Vec::with_capacity(total);
        for batch in batches {
            parsed.extend(batch.parsed);
            records.extend(batch.received);
        }
        let quarantined: Vec<QuarantinedRecord> = parsed
            .iter()
            .zip(records)
            .filter_map(|(p, text)| match p {
                Parsed::Rejected(r, source) => Some(QuarantinedRecord {
                    id: 0,
                    received_at: now,
                    source: source.clone(),
                    code: r.code.as_str().to_owned(),
                    field: r.field.clone(),
                    reason: r.reason.clone(),
                    record: text,
                    expired_at: None,
                }),
                Parsed::Valid(..) => None,
            })
            .collect();

        let mut event_ids: Vec<EventId> = Vec::with_capacity(parsed.len());
        let mut keys: Vec<Identifier> = Vec::new();
        for p in &parsed {
            if let Parsed::Valid(ready) = p {
                event_ids.push(ready.touchpoint.event_id);
                keys.extend(ready.keys.iter().cloned());
            }
        }
        keys.sort_unstable();
        keys.dedup();

        let (outcome, quarantine_ids, planned) = self
            .store
            .commit_identity(&event_ids, &keys, &quarantined, |snapshot| {
                self.decide(&mut parsed, snapshot)
            })
            .await?;

        let mut positions: HashMap<EventId, Position> = HashMap::new();
        for e in outcome.events() {
            if let EventOutcome::Appended(r) = e {
                positions.insert(r.event_id, r.position);
            }
        }
        let mut reports: Vec<IngestReport> = sizes
            .iter()
            .map(|&n| IngestReport {
                records: Vec::with_capacity(n),
                ..IngestReport::default()
            })
            .collect();
        let mut part = 0;
        let mut rejected = quarantine_ids.into_iter();
        for plan in planned.records {
            while part + 1 < reports.len() && reports[part].records.len() == sizes[part] {
                part += 1;
            }
            let report = &mut reports[part];
            let answer = match plan {
                Planned::Stored(event_id, customer, effects) => {
                    report.merges += effects.merges;
                    report.new_customers += usize::from(effects.created);
                    RecordOutcome::Accepted {
                        event_id,
                        customer,
                        position: positions.get(&event_id).copied().unwrap_or_default(),
                    }
                }
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
        // Freeing a batch takes a while; the next commit need not wait for it.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(parsed))),
            Err(_) => drop(parsed),
        }
        Ok(reports)
    }

    /// Resolves the batch's touchpoints in order against the graph, under the write lock.
    fn decide(
        &self,
        parsed: &mut [Parsed],
        snapshot: crate::store::IdentitySnapshot,
    ) -> Result<IdentityCommit<Decisions>, StoreError> {
        let mut graph = snapshot.graph;
        let mut ring = KeyRing::new(&self.master, snapshot.customer_keys);
        let resolver = Resolver::new(&self.pseudonymous_rules);
        let mut appends = Appends::default();
        let mut changes = IdentityChanges::default();
        let mut decisions = Decisions::default();
        let mut seen: HashSet<EventId> = HashSet::new();
        for (index, record) in parsed.iter_mut().enumerate() {
            let ready = match record {
                Parsed::Rejected(..) => {
                    decisions.records.push(Planned::Rejected(index));
                    continue;
                }
                Parsed::Valid(ready) => ready,
            };
            let Ready {
                touchpoint,
                keys,
                body,
                metadata,
            } = &mut **ready;
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
            let event_type = touchpoint.event_type;
            let body = body.take().ok_or_else(|| StoreError::Abandoned {
                reason: format!("touchpoint {} was decided twice", touchpoint.event_id),
            })?;
            let event = body
                .into_event(
                    event_type,
                    &ResolutionRecord::of(&resolution, |p| keys.iter().position(|k| k == p)),
                    ring.get(customer)?,
                )
                .map_err(|e| StoreError::Abandoned {
                    reason: format!("cannot encode {event_type}: {e}"),
                })?;
            let caused = (!resolution.merges.is_empty()).then(|| Metadata {
                causation_id: Some(touchpoint.event_id.as_uuid()),
                ..metadata.clone()
            });
            appends.push(
                customer,
                event
                    .with_id(touchpoint.event_id)
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(std::mem::take(metadata)),
            );
            let caused = caused.unwrap_or_default();
            for merge in &resolution.merges {
                let evidence: Vec<Identifier> = merge.evidence.iter().map(reveal).collect();
                appends.push(
                    customer,
                    sealed(
                        CUSTOMER_MERGED,
                        &CustomerMerged {
                            absorbed: merge.absorbed,
                            evidence: evidence.clone(),
                            cause: touchpoint.event_id,
                            rules_version: resolution.rules_version,
                        },
                        EVIDENCE,
                        ring.get(customer)?,
                    )?
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(caused.clone()),
                );
                appends.push(
                    merge.absorbed,
                    sealed(
                        CUSTOMER_MERGED_INTO,
                        &CustomerMergedInto {
                            survivor: customer,
                            evidence,
                            cause: touchpoint.event_id,
                            rules_version: resolution.rules_version,
                        },
                        EVIDENCE,
                        ring.get(merge.absorbed)?,
                    )?
                    .occurred_at(touchpoint.occurred_at)
                    .with_metadata(caused.clone()),
                );
                changes.merges.push((merge.absorbed, customer));
            }
            changes
                .links
                .extend(resolution.links.iter().map(|l| (l.clone(), customer)));
            let effects = Effects {
                merges: resolution.merges.len(),
                created: resolution.created,
            };
            decisions
                .records
                .push(Planned::Stored(touchpoint.event_id, customer, effects));
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
            if let Planned::Stored(_, customer, _) = record {
                *customer = graph.resolve_customer(*customer);
            }
        }
        changes.new_keys = ring.made;
        let (appends, order) = appends.into_commit();
        Ok(IdentityCommit {
            appends,
            order: Some(order),
            changes,
            value: decisions,
        })
    }
}

/// What storing a record did to the customers.
#[derive(Clone, Copy, Debug, Default)]
struct Effects {
    merges: usize,
    created: bool,
}

/// What [`Ingestor::decide`] hands back.
#[derive(Default)]
struct Decisions {
    records: Vec<Planned>,
}
