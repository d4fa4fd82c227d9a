//! Identity corrections by hand: merge two customers, undo a merge, split identifiers off into
//! a new customer, link or unlink an identifier, block an identifier value.
//!
//! Each correction is decided against the current state (the identity index and the profiles'
//! holdings, brought to the log's head first) and written as events carrying the operator and
//! the reason, together with the identity index changes, in one transaction that checks every
//! stream it writes is still at the version the decision saw. A correction that lost a race
//! is decided again on the new state, unless the operator named the version they saw: then it
//! fails with a conflict. Asking for a correction that is already in place changes nothing.
//! Afterwards the profiles of every customer involved are folded again from the touchpoints
//! they now own. The rules are in `docs/corrections.md`.

use std::collections::{BTreeSet, HashMap};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use patron_domain::blocklist::{Blocklist, BlocklistCommand, BlocklistEvent};
use patron_domain::customer::{
    Claim, Correction, Customer, CustomerCommand, CustomerFact, CustomerId, Holdings, IndexChange,
    OwnedTouchpoint, PartRecord, Refusal,
};
use patron_domain::events::{
    is_touchpoint, EventKind, IdentifierBlocked, ResolutionRecord, Separation, BLOCKLIST_STREAM,
    IDENTIFIER_BLOCKED,
};
use patron_domain::identifier::{Identifier, IdentifierKind};
use patron_domain::identity::IdentityView;
use patron_domain::privacy::CustomerKey;
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion,
};
use patron_projections::profile::Profile;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod command;
pub mod dry_run;
pub mod index;

use crate::ingest::{sealed, Ingestor};
use crate::privacy::{Opener, PrivacyFailure};
use crate::projection::{ProfileProjection, ProjectionError, PROFILES};
use crate::store::projection::ProfileTable;
use crate::store::{EventStore, IdentityChanges, IdentityCommit, StoreError};

/// How many times a correction that lost a race is decided again before giving up.
const ATTEMPTS: u32 = 20;
/// How long to wait before deciding again, times the attempt's number (a customer whose
/// touchpoints keep arriving lets a correction through between two of them).
const BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);

/// Why a correction was refused.
#[derive(Debug, Error)]
pub enum CorrectionError {
    /// The customer refused the correction (unknown, erased, an identifier held by another
    /// customer or by nobody, a blocked value).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The customer changed since the version the operator saw.
    #[error(
        "customer {customer} changed meanwhile: expected version {expected}, it is at {actual}; \
         look again and retry"
    )]
    Conflict {
        /// The customer.
        customer: CustomerId,
        /// The version the operator saw.
        expected: StreamVersion,
        /// Its version now.
        actual: StreamVersion,
    },
    /// An identifier given does not normalize.
    #[error("identifier {kind}: {reason}")]
    InvalidIdentifier {
        /// Its kind as given.
        kind: String,
        /// Why.
        reason: String,
    },
    /// The customers changed again and again while the correction was decided.
    #[error("{} kept changing while the correction was decided; try again", .customer.map_or_else(|| "the identity graph".to_owned(), |c| format!("customer {c}")))]
    Busy {
        /// The customer, when one stream kept changing.
        customer: Option<CustomerId>,
    },
    /// Corrections need a reason.
    #[error("reason: a correction needs a reason, for the history")]
    MissingReason,
    /// A split needs identifiers.
    #[error("identifiers: a split needs at least one identifier to move")]
    NothingToSplit,
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Events did not open.
    #[error(transparent)]
    Privacy(#[from] PrivacyFailure),
    /// The profiles could not be brought up to date.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl CorrectionError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(refusal) => refusal.code(),
            Self::Conflict { .. } => "VERSION_CONFLICT",
            Self::InvalidIdentifier { .. } => "INVALID_IDENTIFIER",
            Self::MissingReason => "REASON_REQUIRED",
            Self::Busy { .. } => "BUSY",
            Self::NothingToSplit => "EMPTY_SPLIT",
            Self::Store(e) => e.code(),
            Self::Privacy(e) => e.code(),
            Self::Projection(e) => e.code(),
        }
    }
}

type Result<T> = std::result::Result<T, CorrectionError>;

/// Who asks for a correction, and why.
#[derive(Clone, Debug)]
pub struct Request {
    /// The operator (an API key's name, or a name given on the command line).
    pub actor: String,
    /// Why, kept in the history.
    pub reason: String,
    /// The version of the correction's first customer the operator saw, if they name one:
    /// a correction against a customer that changed since fails with a conflict.
    pub expected_version: Option<StreamVersion>,
}

/// What a correction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Whether anything was written (`false`: the correction was already in place).
    pub applied: bool,
    /// What was done, or why nothing was.
    pub note: String,
    /// The live customers concerned, as they are now.
    pub customers: Vec<CustomerId>,
    /// Touchpoints that moved to another customer.
    pub touchpoints_moved: usize,
    /// Identifiers that moved to another customer (or were unlinked).
    pub identifiers_moved: usize,
    /// Positions of touchpoints that carried identifiers of both sides and stayed.
    pub kept: Vec<Position>,
    /// The log position of the last event written.
    pub position: Option<Position>,
}

impl Outcome {
    fn unchanged(note: impl Into<String>, customers: Vec<CustomerId>) -> Self {
        Self {
            note: note.into(),
            customers,
            ..Self::default()
        }
    }
}

/// A decision ready to write: the events per stream with the version each must be at, and the
/// identity index changes.
#[derive(Default)]
struct Plan {
    appends: Vec<StreamAppend>,
    changes: IdentityChanges,
    outcome: Outcome,
    /// The customer whose version the operator may have named.
    named: Option<CustomerId>,
    /// An identifier and the holder the decision found: checked again under the write lock
    /// (an identifier nobody holds has no stream to check the version of).
    guard: Option<(Identifier, Option<CustomerId>)>,
}

impl Plan {
    /// The plan with the outcome it gives, deciding for `customer` (whose version the operator
    /// may have named).
    fn named(mut self, customer: CustomerId, outcome: Outcome) -> Self {
        self.named = Some(customer);
        self.outcome = outcome;
        self
    }

    /// The plan, checking again under the write lock that `holder` holds `identifier`.
    fn guarded(mut self, identifier: Identifier, holder: Option<CustomerId>) -> Self {
        self.guard = Some((identifier, holder));
        self
    }
}

/// How much of a customer a decision reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    /// Its holdings and whether it was erased: enough to merge, link and unlink.
    Head,
    /// Also the identifiers it holds and the touchpoints it owns: to split and undo merges.
    Full,
}

/// The facts `command` gives `customer`, handled as a cqrs-es aggregate.
async fn decided(customer: &mut Customer, command: CustomerCommand) -> Result<Vec<CustomerFact>> {
    let sink = EventSink::default();
    customer.handle(command, &(), &sink).await?;
    Ok(sink.collect().await)
}

/// The separation a fact appends on another customer's stream.
fn elsewhere(fact: &CustomerFact) -> Option<&Separation> {
    match fact {
        CustomerFact::Elsewhere { fact, .. } => match fact.as_ref() {
            CustomerFact::Restored(separation) | CustomerFact::SplitOff(separation) => {
                Some(separation)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The outcome of a separation moving `moved` touchpoints.
fn moved_outcome(
    note: String,
    customers: Vec<CustomerId>,
    separation: &Separation,
    moved: usize,
) -> Outcome {
    Outcome {
        applied: true,
        note,
        customers,
        touchpoints_moved: moved,
        identifiers_moved: separation.identifiers.len(),
        kept: separation.kept.clone(),
        position: None,
    }
}

/// A decided fact as the event stored for it, its personal members sealed with `key`.
fn seal(fact: &CustomerFact, key: &CustomerKey) -> Result<NewEvent> {
    let event_type = fact.event_type();
    Ok(match fact {
        CustomerFact::Merged(merged) => {
            sealed(&event_type, merged, &["evidence"], key)?.with_id(merged.cause)
        }
        CustomerFact::MergedInto(merged) => sealed(&event_type, merged, &["evidence"], key)?,
        CustomerFact::MergeUndone(separation)
        | CustomerFact::Restored(separation)
        | CustomerFact::Split(separation)
        | CustomerFact::SplitOff(separation) => {
            sealed(&event_type, separation, &["identifiers"], key)?
        }
        CustomerFact::Linked(linked) => sealed(&event_type, linked, &["identifier"], key)?,
        CustomerFact::Unlinked(unlinked) => sealed(&event_type, unlinked, &["identifier"], key)?,
        CustomerFact::Touchpoint(_) | CustomerFact::Erased(_) | CustomerFact::Elsewhere { .. } => {
            return Err(StoreError::Abandoned {
                reason: format!("a correction does not write {event_type} events"),
            }
            .into())
        }
    })
}

/// The identifiers of an opened touchpoint.
#[derive(Deserialize)]
struct Carried {
    #[serde(default)]
    identifiers: Vec<Identifier>,
    #[serde(default)]
    resolution: Option<ResolutionRecord>,
}

/// Applies corrections to one store.
#[derive(Clone)]
pub struct Corrector {
    ingestor: Ingestor,
    opener: Opener,
    projection: ProfileProjection,
}

impl std::fmt::Debug for Corrector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corrector").finish_non_exhaustive()
    }
}

impl Corrector {
    /// Corrections through `ingestor` (its store, rules and keys), bringing `projection` (the
    /// live profiles) up to date before deciding and after writing.
    pub fn new(ingestor: Ingestor, projection: ProfileProjection) -> Self {
        let opener = Opener::new(ingestor.store().clone(), ingestor.master_key().clone());
        Self {
            ingestor,
            opener,
            projection,
        }
    }

    fn store(&self) -> &EventStore {
        self.ingestor.store()
    }

    /// Applies `correction` for `request`'s operator: the one entry every door (the GraphQL
    /// API, `patron correct`, the review queue's accept) goes through.
    pub async fn correct(&self, correction: Correction, request: &Request) -> Result<Outcome> {
        match correction {
            Correction::Merge { survivor, absorbed } => {
                self.merge(survivor, absorbed, request).await
            }
            Correction::UndoMerge { customer } => self.undo_merge(customer, request).await,
            Correction::Split {
                customer,
                identifiers,
            } => self.split(customer, &identifiers, request).await,
            Correction::Link {
                customer,
                kind,
                value,
            } => self.link(customer, &kind, &value, request).await,
            Correction::Unlink {
                customer,
                kind,
                value,
            } => self.unlink(customer, &kind, &value, request).await,
            Correction::Block { kind, value } => self.block(&kind, &value, request).await,
        }
    }

    /// Merges `absorbed` into `survivor` by hand.
    #[tracing::instrument(name = "correction.merge", skip(self, request), fields(actor = %request.actor))]
    pub async fn merge(
        &self,
        survivor: CustomerId,
        absorbed: CustomerId,
        request: &Request,
    ) -> Result<Outcome> {
        self.run(request, || async move {
            let survivor = self.live(survivor).await?;
            let absorbed = self.live(absorbed).await?;
            let unchanged = || {
                Ok(Err(Outcome::unchanged(
                    format!("{survivor} and {absorbed} are one customer already"),
                    vec![survivor],
                )))
            };
            if survivor == absorbed {
                return unchanged();
            }
            let versions = self.versions(&[survivor, absorbed]).await?;
            let mut customer = self.load(survivor, Depth::Head).await?;
            let command = CustomerCommand::Merge {
                survivor,
                absorbed,
                cause: EventId::new(),
                rules_version: self.ingestor.rules().version(),
            };
            let facts = decided(&mut customer, command).await?;
            if facts.is_empty() {
                return unchanged();
            }
            let outcome = Outcome {
                applied: true,
                note: format!("{absorbed} merged into {survivor}"),
                customers: vec![survivor],
                ..Outcome::default()
            };
            let plan = self.plan(survivor, facts, versions, None, request).await?;
            Ok(Ok(plan.named(survivor, outcome)))
        })
        .await
    }

    /// Undoes the merge that closed `absorbed`: it is a customer again, with its identifiers,
    /// the customers merged into it before, and every touchpoint that came through its
    /// identifiers, including those that arrived after the merge.
    #[tracing::instrument(name = "correction.undo_merge", skip(self, request), fields(actor = %request.actor))]
    pub async fn undo_merge(&self, absorbed: CustomerId, request: &Request) -> Result<Outcome> {
        self.run(request, || async move {
            let live = self.live(absorbed).await?;
            let unchanged = || {
                Ok(Err(Outcome::unchanged(
                    format!("{absorbed} is not merged into another customer: nothing to undo"),
                    vec![absorbed],
                )))
            };
            if live == absorbed {
                return unchanged();
            }
            let versions = self.versions(&[live, absorbed]).await?;
            let mut giver = self.load(live, Depth::Full).await?;
            let part = self.part_record(live, absorbed, &giver).await?;
            let on_streams = part.on_streams.len();
            let command = CustomerCommand::UndoMerge {
                giver: live,
                part,
                core: self.core_kinds(),
            };
            let facts = decided(&mut giver, command).await?;
            let (Some(CustomerFact::MergeUndone(separation)), Some(restored)) =
                (facts.first(), facts.get(1).and_then(elsewhere))
            else {
                return unchanged();
            };
            // The touchpoints that go: those it takes from outside its streams, and those on
            // its streams it does not leave out.
            let moved = separation.touchpoints.len() + on_streams - restored.excluded.len();
            let outcome = moved_outcome(
                format!("the merge of {absorbed} into {live} is undone"),
                vec![live, absorbed],
                separation,
                moved,
            );
            let plan = self.plan(live, facts, versions, None, request).await?;
            Ok(Ok(plan.named(live, outcome)))
        })
        .await
    }

    /// The customer `absorbed`, merged into `live`, as its streams record it: what an undone
    /// merge gives back.
    async fn part_record(
        &self,
        live: CustomerId,
        absorbed: CustomerId,
        giver: &Customer,
    ) -> Result<PartRecord> {
        let profiles = self.profiles(&[absorbed]).await?;
        let theirs = profiles
            .get(&absorbed)
            .map(|p| p.holdings.clone())
            .unwrap_or_default();
        // The part takes its own stream and those merged into it before that still live on in
        // the giver.
        let mut streams = vec![absorbed];
        for member in &theirs.streams {
            if giver.holdings().streams.contains(member) && self.live(*member).await? == live {
                streams.push(*member);
            }
        }
        let mut on_streams = BTreeSet::new();
        let mut claims = Vec::new();
        let mut merged_at = 0;
        for stream in &streams {
            let events = self
                .store()
                .read_stream(&stream.stream_id(), 1, usize::MAX)
                .await?;
            on_streams.extend(
                events
                    .iter()
                    .filter(|e| is_touchpoint(&e.event_type))
                    .map(|e| e.position),
            );
            if *stream == absorbed {
                // The merge being undone: the last that closed the part.
                merged_at = events
                    .iter()
                    .filter(|e| EventKind::of(&e.event_type) == EventKind::MergedInto)
                    .map(|e| e.position)
                    .max()
                    .unwrap_or(0);
            }
            for event in self.opener.open(events).await? {
                let given = if is_touchpoint(&event.event_type) {
                    self.linked_by(&event)
                } else {
                    hand_given(&event)
                };
                claims.push(Claim {
                    position: event.position,
                    given: true,
                    identifiers: given,
                });
                claims.push(Claim {
                    position: event.position,
                    given: false,
                    identifiers: taken_away(&event),
                });
            }
        }
        Ok(PartRecord {
            absorbed,
            streams,
            holdings: theirs,
            on_streams,
            claims,
            merged_at,
        })
    }

    /// Splits `identifiers` (kind, raw value) off `customer` into a new customer, with the
    /// touchpoints that came through them.
    #[tracing::instrument(name = "correction.split", skip(self, identifiers, request), fields(actor = %request.actor))]
    pub async fn split(
        &self,
        customer: CustomerId,
        identifiers: &[(String, String)],
        request: &Request,
    ) -> Result<Outcome> {
        if identifiers.is_empty() {
            return Err(CorrectionError::NothingToSplit);
        }
        self.split_with(customer, identifiers, None, request).await
    }

    /// Splits exactly the touchpoints at `positions` (those of them `customer` owns) and the
    /// `identifiers` it holds off `customer` into a new customer: what applying a rules change
    /// does, where the new rules, not the current ones, say which touchpoints go.
    pub async fn split_exactly(
        &self,
        customer: CustomerId,
        positions: &[Position],
        identifiers: &[(String, String)],
        request: &Request,
    ) -> Result<Outcome> {
        if positions.is_empty() {
            return Err(CorrectionError::NothingToSplit);
        }
        let positions: BTreeSet<Position> = positions.iter().copied().collect();
        self.split_with(customer, identifiers, Some(positions), request)
            .await
    }

    /// A split by identifiers, or of exactly the touchpoints at `exact`.
    async fn split_with(
        &self,
        customer: CustomerId,
        identifiers: &[(String, String)],
        exact: Option<BTreeSet<Position>>,
        request: &Request,
    ) -> Result<Outcome> {
        let chosen = identifiers
            .iter()
            .map(|(kind, raw)| self.pseudonym(kind, raw))
            .collect::<Result<Vec<_>>>()?;
        self.run(request, || {
            let chosen = chosen.clone();
            let exact = exact.clone();
            async move {
                let live = self.live(customer).await?;
                let versions = self.versions(&[live]).await?;
                let mut giver = self.load(live, Depth::Full).await?;
                let mut holders = Vec::with_capacity(chosen.len());
                for identifier in chosen {
                    let holder = if giver.held().contains(&identifier) {
                        Some(live)
                    } else {
                        self.store().holder(&identifier).await?
                    };
                    holders.push((identifier, holder));
                }
                let part = CustomerId::new();
                let note = if exact.is_some() {
                    format!("{live} owns none of the touchpoints given: nothing to split")
                } else {
                    format!("{live} holds none of the identifiers given: nothing to split")
                };
                let command = match exact {
                    None => CustomerCommand::Split {
                        customer: live,
                        part,
                        identifiers: holders,
                        core: self.core_kinds(),
                    },
                    Some(positions) => CustomerCommand::SplitExactly {
                        customer: live,
                        part,
                        positions,
                        identifiers: holders,
                    },
                };
                let facts = decided(&mut giver, command).await?;
                let Some(CustomerFact::Split(separation)) = facts.first() else {
                    return Ok(Err(Outcome::unchanged(note, vec![live])));
                };
                let outcome = moved_outcome(
                    format!("split off {live} into the new customer {part}"),
                    vec![live, part],
                    separation,
                    separation.touchpoints.len(),
                );
                let made = self.ingestor.master_key().new_customer_key();
                let plan = self
                    .plan(live, facts, versions, Some((part, made)), request)
                    .await?;
                Ok(Ok(plan.named(live, outcome)))
            }
        })
        .await
    }

    /// Links an identifier (kind, raw value) to `customer`, taking it from any customer that
    /// holds it.
    #[tracing::instrument(name = "correction.link", skip(self, raw, request), fields(actor = %request.actor))]
    pub async fn link(
        &self,
        customer: CustomerId,
        kind: &str,
        raw: &str,
        request: &Request,
    ) -> Result<Outcome> {
        let identifier = self.pseudonym(kind, raw)?;
        // A blocked value is refused before anything else is looked at.
        if self.store().is_blocked(&identifier).await? {
            return Err(Refusal::Blocked {
                kind: kind.to_owned(),
            }
            .into());
        }
        self.run(request, || {
            let identifier = identifier.clone();
            async move {
                let live = self.live(customer).await?;
                let holder = self.store().holder(&identifier).await?;
                // Read again on every attempt: a block may have committed since.
                let blocked = self.store().is_blocked(&identifier).await?;
                let mut customers = vec![live];
                customers.extend(holder.filter(|h| *h != live));
                let versions = self.versions(&customers).await?;
                let mut linking = self.load(live, Depth::Head).await?;
                let command = CustomerCommand::Link {
                    customer: live,
                    identifier: identifier.clone(),
                    holder,
                    blocked,
                };
                let facts = decided(&mut linking, command).await?;
                if facts.is_empty() {
                    return Ok(Err(Outcome::unchanged(
                        format!("{live} holds the identifier already"),
                        vec![live],
                    )));
                }
                let outcome = Outcome {
                    applied: true,
                    note: match holder {
                        Some(holder) => format!("identifier moved from {holder} to {live}"),
                        None => format!("identifier linked to {live}"),
                    },
                    customers,
                    identifiers_moved: 1,
                    ..Outcome::default()
                };
                let plan = self.plan(live, facts, versions, None, request).await?;
                Ok(Ok(plan.named(live, outcome).guarded(identifier, holder)))
            }
        })
        .await
    }

    /// Unlinks an identifier (kind, raw value) from `customer`: it links nobody until a
    /// touchpoint or an operator links it again.
    #[tracing::instrument(name = "correction.unlink", skip(self, raw, request), fields(actor = %request.actor))]
    pub async fn unlink(
        &self,
        customer: CustomerId,
        kind: &str,
        raw: &str,
        request: &Request,
    ) -> Result<Outcome> {
        let identifier = self.pseudonym(kind, raw)?;
        self.run(request, || {
            let identifier = identifier.clone();
            async move {
                let live = self.live(customer).await?;
                let holder = self.store().holder(&identifier).await?;
                let versions = self.versions(&[live]).await?;
                let mut unlinking = self.load(live, Depth::Head).await?;
                let command = CustomerCommand::Unlink {
                    customer: live,
                    identifier: identifier.clone(),
                    holder,
                    blocked: false,
                };
                let facts = decided(&mut unlinking, command).await?;
                if facts.is_empty() {
                    return Ok(Err(Outcome::unchanged(
                        "nobody holds the identifier: nothing to unlink",
                        vec![live],
                    )));
                }
                let outcome = Outcome {
                    applied: true,
                    note: format!("identifier unlinked from {live}"),
                    customers: vec![live],
                    identifiers_moved: 1,
                    ..Outcome::default()
                };
                let plan = self.plan(live, facts, versions, None, request).await?;
                Ok(Ok(plan.named(live, outcome).guarded(identifier, holder)))
            }
        })
        .await
    }

    /// The blocklist folded from its stream, and the stream's version.
    async fn blocklist(
        &self,
        stream: &StreamId,
    ) -> std::result::Result<(Blocklist, StreamVersion), StoreError> {
        let mut list = Blocklist::default();
        let mut version = 0;
        for event in self.store().read_stream(stream, 1, usize::MAX).await? {
            version = event.stream_version;
            if EventKind::of(&event.event_type) == EventKind::IdentifierBlocked {
                let blocked: IdentifierBlocked =
                    event.decode().map_err(|e| StoreError::Corrupt {
                        position: event.position,
                        reason: format!("an {IDENTIFIER_BLOCKED} event does not read: {e}"),
                    })?;
                list.apply(BlocklistEvent::Blocked(blocked));
            }
        }
        Ok((list, version))
    }

    /// Blocks an identifier value (kind, raw value): it is unlinked from whoever holds it and
    /// never links a customer again.
    #[tracing::instrument(name = "correction.block", skip(self, raw, request), fields(actor = %request.actor))]
    pub async fn block(&self, kind: &str, raw: &str, request: &Request) -> Result<Outcome> {
        if request.reason.trim().is_empty() {
            return Err(CorrectionError::MissingReason);
        }
        let identifier = match self.pseudonym(kind, raw) {
            Err(CorrectionError::Refused(Refusal::Blocked { .. })) => {
                return Ok(Outcome::unchanged(
                    "the identity rules block the value already",
                    vec![],
                ))
            }
            other => other?,
        };
        self.run(request, || {
            let identifier = identifier.clone();
            async move {
                let blocklist = blocklist_stream()?;
                let (mut list, version) = self.blocklist(&blocklist).await?;
                let sink = EventSink::default();
                let command = BlocklistCommand::Block {
                    identifier: identifier.clone(),
                };
                list.handle(command, &(), &sink)
                    .await
                    .unwrap_or_else(|never| match never {});
                let Some(BlocklistEvent::Blocked(blocked)) = sink.collect().await.pop() else {
                    return Ok(Err(Outcome::unchanged(
                        "the identifier is blocked already",
                        vec![],
                    )));
                };
                let blocked = NewEvent::new(IDENTIFIER_BLOCKED, &blocked).map_err(|e| {
                    StoreError::Abandoned {
                        reason: format!("cannot encode {IDENTIFIER_BLOCKED}: {e}"),
                    }
                })?;
                let correlation = blocked.event_id();
                let on_blocklist = StreamAppend::new(
                    blocklist,
                    ExpectedVersion::Exact(version),
                    vec![blocked.with_metadata(metadata(request, correlation))],
                );
                let holder = self.store().holder(&identifier).await?;
                let mut plan = match holder {
                    Some(holder) => {
                        let versions = self.versions(&[holder]).await?;
                        let mut holding = self.load(holder, Depth::Head).await?;
                        let command = CustomerCommand::Unlink {
                            customer: holder,
                            identifier: identifier.clone(),
                            holder: Some(holder),
                            blocked: true,
                        };
                        let facts = decided(&mut holding, command).await?;
                        self.written(holder, facts, versions, None, request, Some(correlation))
                            .await?
                    }
                    None => Plan::default(),
                };
                plan.appends.insert(0, on_blocklist);
                plan.changes.blocks.push(identifier.clone());
                plan.outcome = Outcome {
                    applied: true,
                    note: match holder {
                        Some(holder) => format!("identifier blocked and unlinked from {holder}"),
                        None => "identifier blocked".into(),
                    },
                    customers: holder.into_iter().collect(),
                    identifiers_moved: usize::from(holder.is_some()),
                    ..Outcome::default()
                };
                plan.named = holder;
                Ok(Ok(plan.guarded(identifier, holder)))
            }
        })
        .await
    }

    /// What a decision of `customer` is made over: its holdings and whether it was erased,
    /// and for [`Depth::Full`] the identifiers it holds and the touchpoints it owns.
    async fn load(&self, customer: CustomerId, depth: Depth) -> Result<Customer> {
        let profile = self
            .profiles(&[customer])
            .await?
            .remove(&customer)
            .unwrap_or_default();
        let (held, owned) = match depth {
            Depth::Head => (BTreeSet::new(), Vec::new()),
            Depth::Full => (
                self.store().held_by(customer).await?.into_iter().collect(),
                self.owned(customer, &profile.holdings).await?,
            ),
        };
        Ok(Customer::loaded(
            held,
            owned,
            profile.holdings,
            profile.erased,
        ))
    }

    /// The identity rules' core kinds.
    fn core_kinds(&self) -> BTreeSet<IdentifierKind> {
        let rules = self.ingestor.rules();
        rules
            .kinds()
            .map(|(kind, _)| kind)
            .filter(|kind| rules.is_core(kind))
            .cloned()
            .collect()
    }

    /// The plan writing `facts`, decided by `decider`, with the identity index changes they
    /// imply; `made` is a customer the decision makes, with its new key.
    async fn plan(
        &self,
        decider: CustomerId,
        facts: Vec<CustomerFact>,
        versions: HashMap<CustomerId, StreamVersion>,
        made: Option<(CustomerId, (CustomerKey, Vec<u8>))>,
        request: &Request,
    ) -> Result<Plan> {
        self.written(decider, facts, versions, made, request, None)
            .await
    }

    /// Each fact sealed with its customer's key, on its customer's stream at the version in
    /// `versions` (0 for the customer `made`), under one correlation id (the first event's,
    /// unless given); and the index changes the facts imply.
    async fn written(
        &self,
        decider: CustomerId,
        facts: Vec<CustomerFact>,
        mut versions: HashMap<CustomerId, StreamVersion>,
        made: Option<(CustomerId, (CustomerKey, Vec<u8>))>,
        request: &Request,
        correlation: Option<EventId>,
    ) -> Result<Plan> {
        let placed: Vec<(CustomerId, CustomerFact)> = facts
            .into_iter()
            .map(|fact| match fact {
                CustomerFact::Elsewhere { customer, fact } => (customer, *fact),
                fact => (decider, fact),
            })
            .collect();
        let mut changes = IdentityChanges::default();
        for (customer, fact) in &placed {
            for change in fact.index_changes(*customer) {
                match change {
                    IndexChange::Merge { absorbed, survivor } => {
                        changes.merges.push((absorbed, survivor));
                    }
                    IndexChange::Restore { customer, members } => {
                        changes.restored.push((customer, members));
                    }
                    IndexChange::Hold { identifier, holder } => {
                        changes.holders.push((identifier, holder));
                    }
                }
            }
        }
        if let (Some(expected), Some(&actual)) = (request.expected_version, versions.get(&decider))
        {
            if expected != actual {
                return Err(CorrectionError::Conflict {
                    customer: decider,
                    expected,
                    actual,
                });
            }
        }
        let existing: Vec<CustomerId> = versions.keys().copied().collect();
        let mut keys = self.keys(&existing).await?;
        if let Some((part, (key, wrapped))) = made {
            keys.insert(part, key);
            versions.insert(part, 0);
            changes.new_keys.push((part, wrapped));
        }
        let mut events = Vec::with_capacity(placed.len());
        for (customer, fact) in &placed {
            let (Some(key), Some(version)) = (keys.get(customer), versions.get(customer)) else {
                return Err(StoreError::Abandoned {
                    reason: format!("a correction decided an event for {customer}, not loaded"),
                }
                .into());
            };
            events.push((*customer, *version, seal(fact, key)?));
        }
        let correlation = correlation
            .or_else(|| events.first().map(|(_, _, e)| e.event_id()))
            .unwrap_or_default();
        let metadata = metadata(request, correlation);
        let appends = events
            .into_iter()
            .map(|(customer, version, event)| {
                StreamAppend::new(
                    customer.stream_id(),
                    ExpectedVersion::Exact(version),
                    vec![event.with_metadata(metadata.clone())],
                )
            })
            .collect();
        Ok(Plan {
            appends,
            changes,
            ..Plan::default()
        })
    }

    /// Why an identifier (kind, raw value) belongs to the customer holding it: the event that
    /// linked it to a customer, then each merge that brought that customer into the holder,
    /// each with its source, actor, reason and the rules version that decided. `None` when
    /// nobody holds it.
    #[tracing::instrument(name = "correction.explain", skip(self, raw))]
    pub async fn explain(&self, kind: &str, raw: &str) -> Result<Explanation> {
        let identifier = match self.pseudonym(kind, raw) {
            Ok(identifier) => identifier,
            Err(CorrectionError::Refused(Refusal::Blocked { .. })) => {
                return Ok(Explanation {
                    blocked: true,
                    ..Explanation::default()
                })
            }
            Err(e) => return Err(e),
        };
        if self.store().is_blocked(&identifier).await? {
            return Ok(Explanation {
                blocked: true,
                ..Explanation::default()
            });
        }
        let Some(holder) = self.store().holder(&identifier).await? else {
            return Ok(Explanation::default());
        };
        self.projection.catch_up().await?;
        let history = self.opener.history(holder).await?;
        // The latest event that gave the identifier to a customer of this history.
        let link = history.iter().rev().find(|event| {
            if is_touchpoint(&event.event_type) {
                serde_json::from_str::<Carried>(&event.payload)
                    .ok()
                    .is_some_and(|c| {
                        c.resolution.is_some_and(|r| {
                            r.linked.iter().any(|i| {
                                c.identifiers
                                    .get(*i)
                                    .is_some_and(|id| self.ingestor.pseudonym(id) == identifier)
                            })
                        })
                    })
            } else {
                hand_given(event).contains(&identifier)
            }
        });
        let mut steps = Vec::new();
        let Some(link) = link else {
            return Ok(Explanation {
                customer: Some(holder),
                blocked: false,
                steps,
            });
        };
        steps.push(Step::of(link, "linked"));
        // Then the merges that brought the linking customer into the holder, oldest first.
        let mut at = CustomerId::from_stream(&link.stream_id).unwrap_or(holder);
        if !self.stream_is_part_of(at, holder).await? {
            // A touchpoint a correction moved to the holder.
            at = holder;
        }
        #[derive(Deserialize)]
        struct Head {
            survivor: CustomerId,
        }
        for _ in 0..history.len() {
            if at == holder {
                break;
            }
            let merged = history.iter().rev().find(|e| {
                EventKind::of(&e.event_type) == EventKind::MergedInto
                    && CustomerId::from_stream(&e.stream_id) == Some(at)
            });
            let Some(head) = merged.and_then(|m| serde_json::from_str::<Head>(&m.payload).ok())
            else {
                break;
            };
            steps.extend(merged.map(|m| Step::of(m, "merged")));
            at = head.survivor;
        }
        Ok(Explanation {
            customer: Some(holder),
            blocked: false,
            steps,
        })
    }

    /// Whether `stream`'s customer is `live` or merged into it.
    async fn stream_is_part_of(&self, stream: CustomerId, live: CustomerId) -> Result<bool> {
        Ok(self.store().live_customer(stream).await? == live)
    }

    /// Decides (bringing the profiles to the head first) and writes, deciding again when the
    /// write lost a race and the operator named no version; then brings the profiles up to
    /// date. `decide` answers `Err(outcome)` when there is nothing to do.
    async fn run<F, Fut>(&self, request: &Request, decide: F) -> Result<Outcome>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<std::result::Result<Plan, Outcome>>>,
    {
        if request.reason.trim().is_empty() {
            return Err(CorrectionError::MissingReason);
        }
        let mut attempt: u32 = 0;
        loop {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF * attempt).await;
            }
            attempt += 1;
            self.projection.catch_up().await?;
            let plan = match decide().await {
                Ok(Ok(plan)) => plan,
                Ok(Err(unchanged)) => return Ok(unchanged),
                Err(CorrectionError::Busy { .. }) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(e),
            };
            let Plan {
                appends,
                changes,
                mut outcome,
                named,
                guard,
            } = plan;
            let keys: Vec<Identifier> = guard.iter().map(|(id, _)| id.clone()).collect();
            let written = self
                .store()
                .commit_identity(&[], &keys, &[], move |snapshot| {
                    if let Some((id, holder)) = &guard {
                        if snapshot.graph.is_blocked(id) {
                            // Blocked since the decision: decided again, and refused.
                            return Err(StoreError::Stale {
                                reason: format!("{} was blocked", id.kind),
                            });
                        }
                        if snapshot.graph.owner(id) != *holder {
                            // The identifier changed hands since the decision: not a version
                            // the operator named, so never VERSION_CONFLICT; decided again.
                            return Err(StoreError::Stale {
                                reason: format!("{} changed hands", id.kind),
                            });
                        }
                    }
                    Ok(IdentityCommit {
                        appends,
                        order: None,
                        changes,
                        value: (),
                    })
                })
                .await;
            match written {
                Ok((appended, _, ())) => {
                    outcome.position = appended.events().map(|e| e.event_ref().position).max();
                    // Written: if the profiles cannot follow now, the projection catches up
                    // later; the correction stands either way.
                    // Segment memberships are judged after a batch commits, by whichever
                    // instance of the projection committed it: settled here, so the answer
                    // has them.
                    let caught_up = match self.projection.catch_up().await {
                        Ok(_) => self.projection.settle(&outcome.customers).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = caught_up {
                        tracing::warn!(error = %e, "profiles not brought up to date after a correction");
                    }
                    return Ok(outcome);
                }
                Err(StoreError::Conflict {
                    stream_id, actual, ..
                }) => {
                    let customer = CustomerId::from_stream(&stream_id);
                    if let (Some(expected), Some(customer)) = (request.expected_version, customer) {
                        if Some(customer) == named {
                            return Err(CorrectionError::Conflict {
                                customer,
                                expected,
                                actual,
                            });
                        }
                    }
                    if attempt >= ATTEMPTS {
                        return Err(CorrectionError::Busy {
                            customer: customer.or(named),
                        });
                    }
                    tracing::debug!(attempt, "a correction lost a race: deciding again");
                }
                Err(StoreError::Stale { reason }) => {
                    if attempt >= ATTEMPTS {
                        return Err(CorrectionError::Busy { customer: named });
                    }
                    tracing::debug!(attempt, %reason, "a correction's decision went stale: deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The live customer `customer` stands for; refuses unknown and erased ones.
    async fn live(&self, customer: CustomerId) -> Result<CustomerId> {
        let live = self.store().live_customer(customer).await?;
        if self.store().stream_version(&live.stream_id()).await? == 0 {
            return Err(CorrectionError::Refused(Refusal::Unknown(customer)));
        }
        let profiles = self.profiles(&[live]).await?;
        if profiles.get(&live).is_some_and(|p| p.erased) {
            return Err(CorrectionError::Refused(Refusal::Erased(customer)));
        }
        Ok(live)
    }

    /// The stream versions of `customers`, once the profiles have seen every event of them.
    async fn versions(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, StreamVersion>> {
        let mut versions = HashMap::with_capacity(customers.len());
        for customer in customers {
            let version = self.store().stream_version(&customer.stream_id()).await?;
            versions.insert(*customer, version);
        }
        // The decision reads the profiles' holdings: they must have seen every event of these
        // streams, or another correction committed in between and the decision is made again.
        let checkpoint = self.store().checkpoint(PROFILES).await?;
        for (customer, version) in &versions {
            if *version == 0 {
                continue;
            }
            let last = self
                .store()
                .read_stream(&customer.stream_id(), *version, 1)
                .await?;
            if last.first().is_some_and(|e| e.position > checkpoint) {
                return Err(CorrectionError::Busy {
                    customer: Some(*customer),
                });
            }
        }
        Ok(versions)
    }

    /// The live profiles of `customers` that have one.
    async fn profiles(&self, customers: &[CustomerId]) -> Result<HashMap<CustomerId, Profile>> {
        Ok(self
            .store()
            .profiles_of(ProfileTable::Live, customers)
            .await?)
    }

    /// The customer keys of `customers`, opened.
    async fn keys(&self, customers: &[CustomerId]) -> Result<HashMap<CustomerId, CustomerKey>> {
        let wrapped = self.store().customer_keys(customers).await?;
        let mut keys = HashMap::with_capacity(customers.len());
        for customer in customers {
            let wrapped = wrapped
                .get(customer)
                .ok_or(CorrectionError::Refused(Refusal::Erased(*customer)))?;
            let key = self
                .ingestor
                .master_key()
                .unwrap(wrapped)
                .map_err(|source| PrivacyFailure::Key {
                    customer: *customer,
                    source,
                })?;
            keys.insert(*customer, key);
        }
        Ok(keys)
    }

    /// The pseudonym of an identifier given as kind and raw value.
    fn pseudonym(&self, kind: &str, raw: &str) -> Result<Identifier> {
        let rules = self.ingestor.rules();
        let known = rules.kinds().any(|(k, _)| k.as_str() == kind);
        // The normalizer's message may quote the value: personal data stays out of errors.
        let identifier = rules.normalize(kind, raw).map_err(|_| {
            let reason = if known {
                format!("the value given does not read as a {kind} under the identity rules")
            } else {
                let kinds: Vec<&str> = rules.kinds().map(|(k, _)| k.as_str()).collect();
                format!(
                    "the identity rules know no kind {kind:?}; they know {}",
                    kinds.join(", ")
                )
            };
            CorrectionError::InvalidIdentifier {
                kind: kind.to_owned(),
                reason,
            }
        })?;
        if self.ingestor.rules().is_blocked(&identifier) {
            return Err(Refusal::Blocked {
                kind: kind.to_owned(),
            }
            .into());
        }
        Ok(self.ingestor.pseudonym(&identifier))
    }

    /// The touchpoints `customer` owns, with the pseudonyms each carried and linked.
    async fn owned(
        &self,
        customer: CustomerId,
        holdings: &Holdings,
    ) -> Result<Vec<OwnedTouchpoint>> {
        let events = self
            .store()
            .owned_touchpoints(customer, holdings, Position::MAX)
            .await?;
        let opened = self.opener.open(events).await?;
        Ok(opened
            .into_iter()
            .map(|event| {
                let carried: Option<Carried> = serde_json::from_str(&event.payload).ok();
                let (carried, linked) = match carried {
                    Some(Carried {
                        identifiers,
                        resolution,
                    }) => {
                        let linked = resolution
                            .map(|r| r.linked)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|i| identifiers.get(i))
                            .map(|i| self.ingestor.pseudonym(i))
                            .collect();
                        let carried = identifiers
                            .iter()
                            .map(|i| self.ingestor.pseudonym(i))
                            .collect();
                        (carried, linked)
                    }
                    None => (BTreeSet::new(), BTreeSet::new()),
                };
                OwnedTouchpoint {
                    position: event.position,
                    stream: CustomerId::from_stream(&event.stream_id).unwrap_or(customer),
                    carried,
                    linked,
                }
            })
            .collect())
    }

    /// The pseudonyms an opened touchpoint linked to its customer.
    fn linked_by(&self, event: &RecordedEvent) -> Vec<Identifier> {
        linked_by(&self.ingestor, event)
    }
}

/// The pseudonyms an opened touchpoint linked to its customer.
fn linked_by(ingestor: &Ingestor, event: &RecordedEvent) -> Vec<Identifier> {
    let Ok(carried) = serde_json::from_str::<Carried>(&event.payload) else {
        return vec![];
    };
    carried
        .resolution
        .map(|r| r.linked)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| carried.identifiers.get(i))
        .map(|i| ingestor.pseudonym(i))
        .collect()
}

/// Why an identifier belongs to a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The live customer holding it, if anyone does.
    pub customer: Option<CustomerId>,
    /// Whether the value is blocked (by the rules or by an operator): it links nobody.
    pub blocked: bool,
    /// The path of evidence, oldest first: the event that linked it, then each merge.
    pub steps: Vec<Step>,
}

/// One step of an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `linked` (a touchpoint, a link by hand, a restoration or a split gave the identifier to
    /// a customer) or `merged` (that customer was merged into another).
    pub step: String,
    /// The event's position in the log.
    pub position: Position,
    /// The event's id.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// The customer whose stream holds the event.
    pub customer: Option<CustomerId>,
    /// When it happened.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// The system that sent it, for a touchpoint.
    pub source: Option<String>,
    /// Who appended it (`ingestion`, an import, an API key, an operator).
    pub actor: Option<String>,
    /// Why, for corrections by hand.
    pub reason: Option<String>,
    /// The version of the identity rules that decided, for decisions of the rules.
    pub rules_version: Option<u32>,
}

impl Step {
    fn of(event: &RecordedEvent, step: &str) -> Self {
        #[derive(Deserialize)]
        struct Decided {
            #[serde(default)]
            rules_version: Option<u32>,
            #[serde(default)]
            resolution: Option<ResolutionRecord>,
        }
        let decided: Option<Decided> = serde_json::from_str(&event.payload).ok();
        let rules_version =
            decided.and_then(|d| d.resolution.map(|r| r.rules_version).or(d.rules_version));
        let by_hand = event.metadata.reason.is_some();
        Self {
            step: step.to_owned(),
            position: event.position,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            customer: CustomerId::from_stream(&event.stream_id),
            occurred_at: event.occurred_at,
            source: event.metadata.source.clone(),
            actor: event.metadata.actor.clone(),
            reason: event.metadata.reason.clone(),
            rules_version: if by_hand { None } else { rules_version },
        }
    }
}

/// The pseudonyms an opened identity event gave its stream's customer by hand (links and
/// the identifiers of a restoration or a split).
fn hand_given(event: &RecordedEvent) -> Vec<Identifier> {
    match EventKind::of(&event.event_type) {
        EventKind::IdentifierLinked | EventKind::Restored | EventKind::SplitOff => {
            hand_given_members(event)
        }
        _ => vec![],
    }
}

/// The `identifier` and `identifiers` members of an opened identity event.
fn hand_given_members(event: &RecordedEvent) -> Vec<Identifier> {
    #[derive(Deserialize)]
    struct Given {
        #[serde(default)]
        identifier: Option<Identifier>,
        #[serde(default)]
        identifiers: Vec<Identifier>,
    }
    serde_json::from_str::<Given>(&event.payload)
        .map(|g| g.identifier.into_iter().chain(g.identifiers).collect())
        .unwrap_or_default()
}

/// The pseudonyms an opened identity event took from its stream's customer by hand (unlinks,
/// and the identifiers given up by an undone merge or a split).
fn taken_away(event: &RecordedEvent) -> Vec<Identifier> {
    match EventKind::of(&event.event_type) {
        EventKind::IdentifierUnlinked | EventKind::MergeUndone | EventKind::Split => {
            hand_given_members(event)
        }
        _ => vec![],
    }
}

/// The metadata of a correction's events: who, why, and one correlation id.
fn metadata(request: &Request, correlation: EventId) -> Metadata {
    Metadata {
        actor: Some(request.actor.clone()),
        reason: Some(request.reason.trim().to_owned()),
        correlation_id: Some(correlation.as_uuid()),
        ..Metadata::default()
    }
}

/// Two customers in id order: the key of a pair.
pub(crate) fn ordered(a: CustomerId, b: CustomerId) -> (CustomerId, CustomerId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The stream of the identity blocklist.
fn blocklist_stream() -> std::result::Result<StreamId, StoreError> {
    StreamId::new(BLOCKLIST_STREAM).map_err(|e| StoreError::Abandoned {
        reason: format!("the blocklist stream: {e}"),
    })
}
