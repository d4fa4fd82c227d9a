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

use cqrs_es::Aggregate;
use patron_domain::blocklist::{Blocklist, BlocklistCommand, BlocklistEvent};
use patron_domain::customer::CustomerId;
use patron_domain::events::{
    is_touchpoint, CustomerMerged, CustomerMergedInto, EventKind, IdentifierBlocked,
    IdentifierLinked, IdentifierUnlinked, ResolutionRecord, Separation, BLOCKLIST_STREAM,
    CUSTOMER_MERGED, CUSTOMER_MERGED_INTO, CUSTOMER_RESTORED, CUSTOMER_SPLIT, CUSTOMER_SPLIT_OFF,
    IDENTIFIER_BLOCKED, IDENTIFIER_LINKED, IDENTIFIER_UNLINKED, MERGE_UNDONE,
};
use patron_domain::identifier::Identifier;
use patron_domain::identity::IdentityView;
use patron_domain::privacy::CustomerKey;
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion,
};
use patron_projections::holdings::Holdings;
use patron_projections::profile::Profile;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod command;
pub mod dry_run;

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
    /// No customer has this id.
    #[error("no customer {0}")]
    UnknownCustomer(CustomerId),
    /// The customer was erased; there is nothing left to correct.
    #[error("customer {0} was erased")]
    Erased(CustomerId),
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
    /// An identifier given is held by another customer than the one named.
    #[error("the {kind} identifier given is held by customer {holder}, not by {customer}")]
    HeldByOther {
        /// Its kind.
        kind: String,
        /// Who holds it.
        holder: CustomerId,
        /// The customer named.
        customer: CustomerId,
    },
    /// An identifier given is held by nobody.
    #[error("the {kind} identifier given is held by nobody, not by {customer}")]
    NotHeld {
        /// Its kind.
        kind: String,
        /// The customer named.
        customer: CustomerId,
    },
    /// The identifier is blocked and cannot be linked.
    #[error("the {kind} identifier given is blocked: it links no customer")]
    Blocked {
        /// Its kind.
        kind: String,
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
            Self::UnknownCustomer(_) => "UNKNOWN_CUSTOMER",
            Self::Erased(_) => "CUSTOMER_ERASED",
            Self::Conflict { .. } => "VERSION_CONFLICT",
            Self::InvalidIdentifier { .. } => "INVALID_IDENTIFIER",
            Self::HeldByOther { .. } => "IDENTIFIER_HELD_BY_OTHER",
            Self::NotHeld { .. } => "IDENTIFIER_NOT_HELD",
            Self::Blocked { .. } => "IDENTIFIER_BLOCKED",
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

/// A touchpoint a customer owns, with the pseudonyms it carried and linked.
struct Owned {
    position: Position,
    stream: CustomerId,
    carried: BTreeSet<Identifier>,
    linked: BTreeSet<Identifier>,
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
            if survivor == absorbed {
                return Ok(Err(Outcome::unchanged(
                    format!("{survivor} and {absorbed} are one customer already"),
                    vec![survivor],
                )));
            }
            let versions = self
                .versions(&[survivor, absorbed], request.expected_version)
                .await?;
            let keys = self.keys(&[survivor, absorbed]).await?;
            let cause = EventId::new();
            let rules_version = self.ingestor.rules().version();
            let on_survivor = sealed(
                CUSTOMER_MERGED,
                &CustomerMerged {
                    absorbed,
                    evidence: vec![],
                    cause,
                    rules_version,
                },
                &["evidence"],
                &keys[&survivor],
            )?
            .with_id(cause);
            let on_absorbed = sealed(
                CUSTOMER_MERGED_INTO,
                &CustomerMergedInto {
                    survivor,
                    evidence: vec![],
                    cause,
                    rules_version,
                },
                &["evidence"],
                &keys[&absorbed],
            )?;
            let metadata = metadata(request, cause);
            Ok(Ok(Plan {
                named: Some(survivor),
                guard: None,
                appends: vec![
                    append(survivor, versions[0], on_survivor, &metadata),
                    append(absorbed, versions[1], on_absorbed, &metadata),
                ],
                changes: IdentityChanges {
                    merges: vec![(absorbed, survivor)],
                    ..IdentityChanges::default()
                },
                outcome: Outcome {
                    applied: true,
                    note: format!("{absorbed} merged into {survivor}"),
                    customers: vec![survivor],
                    ..Outcome::default()
                },
            }))
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
            if live == absorbed {
                return Ok(Err(Outcome::unchanged(
                    format!("{absorbed} is not merged into another customer: nothing to undo"),
                    vec![absorbed],
                )));
            }
            let versions = self
                .versions(&[live, absorbed], request.expected_version)
                .await?;
            let profiles = self.profiles(&[live, absorbed]).await?;
            let giver = profiles.get(&live).cloned().unwrap_or_default();
            let theirs = profiles.get(&absorbed).cloned().unwrap_or_default();
            // The part takes its own stream and those merged into it before that still live on
            // in the giver.
            let mut streams = vec![absorbed];
            for member in &theirs.holdings.streams {
                if giver.holdings.streams.contains(member) && self.live(*member).await? == live {
                    streams.push(*member);
                }
            }
            let owned = self.owned(live, &giver.holdings).await?;
            let held: BTreeSet<Identifier> =
                self.store().held_by(live).await?.into_iter().collect();
            let owned_positions: BTreeSet<Position> = owned.iter().map(|o| o.position).collect();
            let mut on_streams = BTreeSet::new();
            // What gave the part identifiers and took them away, in log order.
            let mut changes: Vec<(Position, bool, Vec<Identifier>)> = Vec::new();
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
                for event in self.opener.open(events).await? {
                    let given = if is_touchpoint(&event.event_type) {
                        self.linked_by(&event)
                    } else {
                        hand_given(&event)
                    };
                    changes.push((event.position, true, given));
                    changes.push((event.position, false, taken_away(&event)));
                }
            }
            // What the part owned when it was merged, and the giver still owns.
            let part: BTreeSet<Position> = owned
                .iter()
                .filter(|o| {
                    (streams.contains(&o.stream) && theirs.holdings.keeps(o.position))
                        || theirs.holdings.moved_in.contains(&o.position)
                })
                .map(|o| o.position)
                .collect();
            for o in owned
                .iter()
                .filter(|o| part.contains(&o.position) && !streams.contains(&o.stream))
            {
                changes.push((o.position, true, o.linked.iter().cloned().collect()));
            }
            changes.sort_by_key(|(position, _, _)| *position);
            let mut theirs_claimed: BTreeSet<Identifier> = BTreeSet::new();
            for (_, given, identifiers) in changes {
                for identifier in identifiers {
                    if given {
                        theirs_claimed.insert(identifier);
                    } else {
                        theirs_claimed.remove(&identifier);
                    }
                }
            }
            let identifiers: BTreeSet<Identifier> =
                theirs_claimed.intersection(&held).cloned().collect();
            let decision = self.divide(&owned, &held, identifiers, part, |o| {
                !streams.contains(&o.stream)
            });
            // Touchpoints on the part's streams that do not go with it: the giver keeps those
            // it owns; others belong to third customers already.
            let excluded: Vec<Position> = on_streams.difference(&decision.going).copied().collect();
            let giver_keeps: Vec<Position> = excluded
                .iter()
                .copied()
                .filter(|p| owned_positions.contains(p))
                .collect();
            let released: Vec<Position> = on_streams
                .intersection(&decision.going)
                .copied()
                .filter(|p| giver.holdings.moved_in.contains(p))
                .collect();
            let keys = self.keys(&[live, absorbed]).await?;
            let separation = Separation {
                other: absorbed,
                streams: streams.clone(),
                touchpoints: decision.moved_elsewhere.clone(),
                excluded: giver_keeps,
                released,
                kept: decision.kept.clone(),
                identifiers: decision.identifiers.iter().cloned().collect(),
            };
            let on_giver = sealed(MERGE_UNDONE, &separation, &["identifiers"], &keys[&live])?;
            let on_part = sealed(
                CUSTOMER_RESTORED,
                &Separation {
                    other: live,
                    excluded,
                    released: vec![],
                    ..separation.clone()
                },
                &["identifiers"],
                &keys[&absorbed],
            )?;
            let metadata = metadata(request, on_giver.event_id());
            let members: Vec<CustomerId> = streams[1..].to_vec();
            Ok(Ok(Plan {
                named: Some(live),
                guard: None,
                appends: vec![
                    append(live, versions[0], on_giver, &metadata),
                    append(absorbed, versions[1], on_part, &metadata),
                ],
                changes: IdentityChanges {
                    restored: vec![(absorbed, members)],
                    holders: decision.holders(absorbed),
                    ..IdentityChanges::default()
                },
                outcome: decision.outcome(
                    format!("the merge of {absorbed} into {live} is undone"),
                    vec![live, absorbed],
                ),
            }))
        })
        .await
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
                let part = CustomerId::new();
                let held: BTreeSet<Identifier> =
                    self.store().held_by(live).await?.into_iter().collect();
                let taken: BTreeSet<Identifier> = chosen
                    .iter()
                    .filter(|i| held.contains(*i))
                    .cloned()
                    .collect();
                if taken.is_empty() && exact.is_none() {
                    // Split already, or never held: either way there is nothing to move.
                    return Ok(Err(Outcome::unchanged(
                        format!("{live} holds none of the identifiers given: nothing to split"),
                        vec![live],
                    )));
                }
                if let Some(id) = chosen.iter().find(|i| !held.contains(*i)) {
                    return Err(match self.store().holder(id).await? {
                        Some(holder) => CorrectionError::HeldByOther {
                            kind: id.kind.to_string(),
                            holder,
                            customer: live,
                        },
                        None => CorrectionError::NotHeld {
                            kind: id.kind.to_string(),
                            customer: live,
                        },
                    });
                }
                let versions = self.versions(&[live], request.expected_version).await?;
                let profiles = self.profiles(&[live]).await?;
                let giver = profiles.get(&live).cloned().unwrap_or_default();
                let owned = self.owned(live, &giver.holdings).await?;
                let decision = match exact {
                    None => self.divide(&owned, &held, taken, BTreeSet::new(), |_| true),
                    Some(positions) => {
                        let going: BTreeSet<Position> = owned
                            .iter()
                            .map(|o| o.position)
                            .filter(|p| positions.contains(p))
                            .collect();
                        if going.is_empty() {
                            return Ok(Err(Outcome::unchanged(
                                format!(
                                    "{live} owns none of the touchpoints given: nothing to split"
                                ),
                                vec![live],
                            )));
                        }
                        Division {
                            moved: going.len(),
                            moved_elsewhere: going.iter().copied().collect(),
                            going,
                            kept: vec![],
                            identifiers: taken,
                        }
                    }
                };
                let keys = self.keys(&[live]).await?;
                let (part_key, wrapped) = self.ingestor.master_key().new_customer_key();
                let separation = Separation {
                    other: part,
                    streams: vec![],
                    touchpoints: decision.moved_elsewhere.clone(),
                    excluded: vec![],
                    released: vec![],
                    kept: decision.kept.clone(),
                    identifiers: decision.identifiers.iter().cloned().collect(),
                };
                let on_giver = sealed(CUSTOMER_SPLIT, &separation, &["identifiers"], &keys[&live])?;
                let on_part = sealed(
                    CUSTOMER_SPLIT_OFF,
                    &Separation {
                        other: live,
                        ..separation.clone()
                    },
                    &["identifiers"],
                    &part_key,
                )?;
                let metadata = metadata(request, on_giver.event_id());
                Ok(Ok(Plan {
                    named: Some(live),
                    guard: None,
                    appends: vec![
                        append(live, versions[0], on_giver, &metadata),
                        append(part, 0, on_part, &metadata),
                    ],
                    changes: IdentityChanges {
                        holders: decision.holders(part),
                        new_keys: vec![(part, wrapped)],
                        ..IdentityChanges::default()
                    },
                    outcome: decision.outcome(
                        format!("split off {live} into the new customer {part}"),
                        vec![live, part],
                    ),
                }))
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
        if self.store().is_blocked(&identifier).await? {
            return Err(CorrectionError::Blocked {
                kind: kind.to_owned(),
            });
        }
        self.run(request, || {
            let identifier = identifier.clone();
            async move {
                let live = self.live(customer).await?;
                let holder = self.store().holder(&identifier).await?;
                if holder == Some(live) {
                    return Ok(Err(Outcome::unchanged(
                        format!("{live} holds the identifier already"),
                        vec![live],
                    )));
                }
                let mut customers = vec![live];
                customers.extend(holder);
                let versions = self.versions(&customers, request.expected_version).await?;
                let keys = self.keys(&customers).await?;
                let linked = sealed(
                    IDENTIFIER_LINKED,
                    &IdentifierLinked {
                        identifier: identifier.clone(),
                        from: holder,
                    },
                    &["identifier"],
                    &keys[&live],
                )?;
                let metadata = metadata(request, linked.event_id());
                let mut appends = vec![append(live, versions[0], linked, &metadata)];
                if let Some(holder) = holder {
                    let unlinked = sealed(
                        IDENTIFIER_UNLINKED,
                        &IdentifierUnlinked {
                            identifier: identifier.clone(),
                            to: Some(live),
                            blocked: false,
                        },
                        &["identifier"],
                        &keys[&holder],
                    )?;
                    appends.push(append(holder, versions[1], unlinked, &metadata));
                }
                Ok(Ok(Plan {
                    named: Some(live),
                    guard: Some((identifier.clone(), holder)),
                    appends,
                    changes: IdentityChanges {
                        holders: vec![(identifier, Some(live))],
                        ..IdentityChanges::default()
                    },
                    outcome: Outcome {
                        applied: true,
                        note: match holder {
                            Some(holder) => format!("identifier moved from {holder} to {live}"),
                            None => format!("identifier linked to {live}"),
                        },
                        customers,
                        identifiers_moved: 1,
                        ..Outcome::default()
                    },
                }))
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
                match self.store().holder(&identifier).await? {
                    None => {
                        return Ok(Err(Outcome::unchanged(
                            "nobody holds the identifier: nothing to unlink",
                            vec![live],
                        )))
                    }
                    Some(holder) if holder != live => {
                        return Err(CorrectionError::HeldByOther {
                            kind: kind.to_owned(),
                            holder,
                            customer: live,
                        })
                    }
                    Some(_) => {}
                }
                let versions = self.versions(&[live], request.expected_version).await?;
                let keys = self.keys(&[live]).await?;
                let unlinked = sealed(
                    IDENTIFIER_UNLINKED,
                    &IdentifierUnlinked {
                        identifier: identifier.clone(),
                        to: None,
                        blocked: false,
                    },
                    &["identifier"],
                    &keys[&live],
                )?;
                let metadata = metadata(request, unlinked.event_id());
                Ok(Ok(Plan {
                    named: Some(live),
                    guard: Some((identifier.clone(), Some(live))),
                    appends: vec![append(live, versions[0], unlinked, &metadata)],
                    changes: IdentityChanges {
                        holders: vec![(identifier, None)],
                        ..IdentityChanges::default()
                    },
                    outcome: Outcome {
                        applied: true,
                        note: format!("identifier unlinked from {live}"),
                        customers: vec![live],
                        identifiers_moved: 1,
                        ..Outcome::default()
                    },
                }))
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
            Err(CorrectionError::Blocked { .. }) => {
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
                let (list, version) = self.blocklist(&blocklist).await?;
                let decided = list.decide(BlocklistCommand::Block {
                    identifier: identifier.clone(),
                });
                let Some(BlocklistEvent::Blocked(blocked)) = decided.into_iter().next() else {
                    return Ok(Err(Outcome::unchanged(
                        "the identifier is blocked already",
                        vec![],
                    )));
                };
                let holder = self.store().holder(&identifier).await?;
                let blocked = NewEvent::new(IDENTIFIER_BLOCKED, &blocked).map_err(|e| {
                    StoreError::Abandoned {
                        reason: format!("cannot encode {IDENTIFIER_BLOCKED}: {e}"),
                    }
                })?;
                let metadata = metadata(request, blocked.event_id());
                let mut appends = vec![StreamAppend::new(
                    blocklist,
                    ExpectedVersion::Exact(version),
                    vec![blocked.with_metadata(metadata.clone())],
                )];
                let mut changes = IdentityChanges {
                    blocks: vec![identifier.clone()],
                    ..IdentityChanges::default()
                };
                if let Some(holder) = holder {
                    let versions = self.versions(&[holder], request.expected_version).await?;
                    let keys = self.keys(&[holder]).await?;
                    let unlinked = sealed(
                        IDENTIFIER_UNLINKED,
                        &IdentifierUnlinked {
                            identifier: identifier.clone(),
                            to: None,
                            blocked: true,
                        },
                        &["identifier"],
                        &keys[&holder],
                    )?;
                    appends.push(append(holder, versions[0], unlinked, &metadata));
                    changes.holders.push((identifier.clone(), None));
                }
                Ok(Ok(Plan {
                    named: holder,
                    guard: Some((identifier.clone(), holder)),
                    appends,
                    changes,
                    outcome: Outcome {
                        applied: true,
                        note: match holder {
                            Some(holder) => {
                                format!("identifier blocked and unlinked from {holder}")
                            }
                            None => "identifier blocked".into(),
                        },
                        customers: holder.into_iter().collect(),
                        identifiers_moved: usize::from(holder.is_some()),
                        ..Outcome::default()
                    },
                }))
            }
        })
        .await
    }

    /// Why an identifier (kind, raw value) belongs to the customer holding it: the event that
    /// linked it to a customer, then each merge that brought that customer into the holder,
    /// each with its source, actor, reason and the rules version that decided. `None` when
    /// nobody holds it.
    #[tracing::instrument(name = "correction.explain", skip(self, raw))]
    pub async fn explain(&self, kind: &str, raw: &str) -> Result<Explanation> {
        let identifier = match self.pseudonym(kind, raw) {
            Ok(identifier) => identifier,
            Err(CorrectionError::Blocked { .. }) => {
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
                    if let Err(e) = self.projection.catch_up().await {
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
            return Err(CorrectionError::UnknownCustomer(customer));
        }
        let profiles = self.profiles(&[live]).await?;
        if profiles.get(&live).is_some_and(|p| p.erased) {
            return Err(CorrectionError::Erased(customer));
        }
        Ok(live)
    }

    /// The stream versions of `customers`; the first must be at `expected`, when given.
    async fn versions(
        &self,
        customers: &[CustomerId],
        expected: Option<StreamVersion>,
    ) -> Result<Vec<StreamVersion>> {
        let mut versions = Vec::with_capacity(customers.len());
        for customer in customers {
            versions.push(self.store().stream_version(&customer.stream_id()).await?);
        }
        if let (Some(expected), Some(&actual)) = (expected, versions.first()) {
            if expected != actual {
                return Err(CorrectionError::Conflict {
                    customer: customers[0],
                    expected,
                    actual,
                });
            }
        }
        // The decision reads the profiles' holdings: they must have seen every event of these
        // streams, or another correction committed in between and the decision is made again.
        let checkpoint = self.store().checkpoint(PROFILES).await?;
        for (customer, version) in customers.iter().zip(&versions) {
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
        let rows = self
            .store()
            .load_profiles(ProfileTable::Live, customers)
            .await?;
        rows.into_iter()
            .map(|(customer, state)| {
                let profile = serde_json::from_str(&state).map_err(|e| ProjectionError::Row {
                    customer,
                    reason: e.to_string(),
                })?;
                Ok((customer, profile))
            })
            .collect()
    }

    /// The customer keys of `customers`, opened.
    async fn keys(&self, customers: &[CustomerId]) -> Result<HashMap<CustomerId, CustomerKey>> {
        let wrapped = self.store().customer_keys(customers).await?;
        let mut keys = HashMap::with_capacity(customers.len());
        for customer in customers {
            let wrapped = wrapped
                .get(customer)
                .ok_or(CorrectionError::Erased(*customer))?;
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
            return Err(CorrectionError::Blocked {
                kind: kind.to_owned(),
            });
        }
        Ok(self.ingestor.pseudonym(&identifier))
    }

    /// The touchpoints `customer` owns, with the pseudonyms each carried and linked.
    async fn owned(&self, customer: CustomerId, holdings: &Holdings) -> Result<Vec<Owned>> {
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
                Owned {
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
        let Ok(carried) = serde_json::from_str::<Carried>(&event.payload) else {
            return vec![];
        };
        carried
            .resolution
            .map(|r| r.linked)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| carried.identifiers.get(i))
            .map(|i| self.ingestor.pseudonym(i))
            .collect()
    }

    /// Divides a customer's touchpoints and identifiers between it and a part taking
    /// `identifiers` and the touchpoints in `part`: a touchpoint that carried a taken
    /// identifier goes too, unless it also carried a core identifier that stays (then it
    /// stays, and is reported as kept); an identifier such a touchpoint linked goes with it
    /// unless a touchpoint that stays carried it too. The touchpoints in `part` go whatever
    /// they carried, and take no identifiers along. `outside` says which moved
    /// touchpoints the part does not get through its streams.
    fn divide(
        &self,
        owned: &[Owned],
        held: &BTreeSet<Identifier>,
        mut identifiers: BTreeSet<Identifier>,
        part: BTreeSet<Position>,
        outside: impl Fn(&Owned) -> bool,
    ) -> Division {
        let rules = self.ingestor.rules();
        let core_staying: BTreeSet<&Identifier> = held
            .iter()
            .filter(|i| !identifiers.contains(*i) && rules.is_core(&i.kind))
            .collect();
        let mut kept = Vec::new();
        let mut going: BTreeSet<Position> = part.clone();
        for o in owned {
            if going.contains(&o.position) || !o.carried.iter().any(|i| identifiers.contains(i)) {
                continue;
            }
            if o.carried.iter().any(|i| core_staying.contains(i)) {
                kept.push(o.position);
            } else {
                going.insert(o.position);
            }
        }
        let staying_carried: BTreeSet<&Identifier> = owned
            .iter()
            .filter(|o| !going.contains(&o.position))
            .flat_map(|o| o.carried.iter())
            .collect();
        let followers: Vec<Identifier> = owned
            .iter()
            .filter(|o| going.contains(&o.position) && !part.contains(&o.position))
            .flat_map(|o| o.linked.iter())
            .filter(|i| held.contains(*i) && !staying_carried.contains(*i))
            .cloned()
            .collect();
        identifiers.extend(followers);
        let moved_elsewhere: Vec<Position> = owned
            .iter()
            .filter(|o| going.contains(&o.position) && outside(o))
            .map(|o| o.position)
            .collect();
        Division {
            moved: going.len(),
            going,
            moved_elsewhere,
            kept,
            identifiers,
        }
    }
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

/// How [`Corrector::divide`] divided a customer.
struct Division {
    /// Touchpoints going to the part.
    moved: usize,
    /// Their positions.
    going: BTreeSet<Position>,
    /// Those of them not on the part's streams.
    moved_elsewhere: Vec<Position>,
    /// Touchpoints that carried identifiers of both sides and stay.
    kept: Vec<Position>,
    /// The pseudonyms going to the part.
    identifiers: BTreeSet<Identifier>,
}

impl Division {
    /// The identity index changes that give the part its identifiers.
    fn holders(&self, part: CustomerId) -> Vec<(Identifier, Option<CustomerId>)> {
        self.identifiers
            .iter()
            .map(|i| (i.clone(), Some(part)))
            .collect()
    }

    /// The outcome of writing this division.
    fn outcome(&self, note: String, customers: Vec<CustomerId>) -> Outcome {
        Outcome {
            applied: true,
            note,
            customers,
            touchpoints_moved: self.moved,
            identifiers_moved: self.identifiers.len(),
            kept: self.kept.clone(),
            position: None,
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

/// One event for a customer's stream, which must be at `version`.
fn append(
    customer: CustomerId,
    version: StreamVersion,
    event: NewEvent,
    metadata: &Metadata,
) -> StreamAppend {
    StreamAppend::new(
        customer.stream_id(),
        ExpectedVersion::Exact(version),
        vec![event.with_metadata(metadata.clone())],
    )
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
