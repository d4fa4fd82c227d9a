//! The identity index checked against, or rebuilt from, the log.
//!
//! Every change to the index follows from an event: a touchpoint's links, a merge, a
//! correction's facts ([`CustomerFact::index_changes`], the same derivation the corrections
//! commit), an erasure, a blocked value. [`fold`] reads the whole log in order, opens each
//! event and folds it into an [`IndexFold`]; [`verify`] compares the fold with the index the
//! store holds (`patron verify`), [`rebuild`] writes it in the index's place (`patron rebuild
//! identity`). Events of erased customers no longer open: what they gave their own customer,
//! the erasure took back; what they gave another customer, the giving side's fact says too
//! ([`CustomerFact::replayed_index_changes`]).

use std::collections::BTreeMap;

use patron_domain::customer::{CustomerFact, CustomerId, IndexFold};
use patron_domain::events::{CustomerEvent, EventKind, IdentifierBlocked, ResolutionRecord};
use patron_domain::identifier::Identifier;
use patron_domain::{Position, RecordedEvent};
use serde::Serialize;

use super::{linked_by, CorrectionError};
use crate::ingest::Ingestor;
use crate::privacy::Opener;
use crate::store::StoreError;

/// How many differences a report lists.
const LISTED: usize = 20;

/// The index folded from the log, and the position it was folded to.
#[derive(Debug)]
pub struct Folded {
    /// The index.
    pub index: IndexFold,
    /// The last position folded (the log's head when the fold started).
    pub position: Position,
    /// Identity events that did not read once opened (an erased customer's sealed members),
    /// left out of the fold.
    pub unreadable: u64,
}

/// Folds the log up to its head into the identity index, `batch` events at a time, calling
/// `progress(position, head)` after each batch.
pub async fn fold(
    ingestor: &Ingestor,
    batch: usize,
    progress: impl Fn(Position, Position),
) -> Result<Folded, CorrectionError> {
    let store = ingestor.store();
    let opener = Opener::new(store.clone(), ingestor.master_key().clone());
    let head = store.head().await?;
    let mut folded = Folded {
        index: IndexFold::default(),
        position: head,
        unreadable: 0,
    };
    let mut at = 0;
    while at < head {
        let events = store.read_all(at, batch.max(1)).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        let events: Vec<RecordedEvent> =
            events.into_iter().filter(|e| e.position <= head).collect();
        // Only what gives identifiers is opened: a touchpoint that linked some, and the
        // corrections that name them. The rest folds as stored.
        let (sealed, plain): (Vec<RecordedEvent>, Vec<RecordedEvent>) =
            events.into_iter().partition(gives_identifiers);
        let mut events = opener.open(sealed).await?;
        events.extend(plain);
        events.sort_by_key(|e| e.position);
        for event in &events {
            fold_event(&mut folded, ingestor, event)?;
        }
        at = last.min(head);
        progress(at, head);
    }
    Ok(folded)
}

/// Whether folding `event` needs its sealed members: a touchpoint that linked identifiers (its
/// resolution, stored in the clear, says so), or a correction naming identifiers.
fn gives_identifiers(event: &RecordedEvent) -> bool {
    #[derive(serde::Deserialize)]
    struct Linked {
        #[serde(default)]
        resolution: Option<ResolutionRecord>,
    }
    match EventKind::of(&event.event_type) {
        EventKind::Touchpoint => serde_json::from_str::<Linked>(&event.payload)
            .map_or(true, |t| t.resolution.is_some_and(|r| !r.linked.is_empty())),
        EventKind::IdentifierLinked
        | EventKind::IdentifierUnlinked
        | EventKind::MergeUndone
        | EventKind::Restored
        | EventKind::Split
        | EventKind::SplitOff => true,
        EventKind::Merged
        | EventKind::MergedInto
        | EventKind::Erased
        | EventKind::IdentifierBlocked => false,
    }
}

/// Folds one event (opened, if it gives identifiers).
fn fold_event(
    folded: &mut Folded,
    ingestor: &Ingestor,
    event: &RecordedEvent,
) -> Result<(), CorrectionError> {
    let index = &mut folded.index;
    let kind = EventKind::of(&event.event_type);
    if kind == EventKind::IdentifierBlocked {
        let blocked: IdentifierBlocked = event.decode().map_err(|e| StoreError::Corrupt {
            position: event.position,
            reason: format!("a blocked identifier does not read: {e}"),
        })?;
        index.block(blocked.identifier);
        return Ok(());
    }
    let Some(stream) = CustomerId::from_stream(&event.stream_id) else {
        return Ok(());
    };
    match kind {
        EventKind::Touchpoint => index.link(stream, linked_by(ingestor, event)),
        EventKind::Erased => {
            let live = index.resolve(stream);
            index.erase(live);
        }
        _ => {
            let payload: serde_json::Value =
                serde_json::from_str(&event.payload).map_err(|e| StoreError::Corrupt {
                    position: event.position,
                    reason: format!("an {} event is not JSON: {e}", event.event_type),
                })?;
            let erased = payload.get("erased").and_then(|v| v.as_bool()) == Some(true);
            match CustomerEvent::decode(&event.event_type, payload) {
                Ok(decoded) => {
                    for change in CustomerFact::of_event(decoded)
                        .map(|fact| fact.replayed_index_changes(stream))
                        .unwrap_or_default()
                    {
                        index.apply(change);
                    }
                }
                // An identifier sealed with an erased customer's key: what it gave this
                // customer, the erasure took back; what another customer received, that
                // customer's own event says.
                Err(_) if erased => folded.unreadable += 1,
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        position: event.position,
                        reason: e.to_string(),
                    }
                    .into())
                }
            }
        }
    }
    Ok(())
}

/// One way the stored index differs from the fold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexDifference {
    /// `holder` (an identifier held by another customer, or by nobody, in one of them),
    /// `alias` (a merged customer resolving elsewhere) or `blocked`.
    pub table: &'static str,
    /// The identifier's kind (its value is a pseudonym and stays out of reports), or the
    /// merged customer.
    pub key: String,
    /// What the store holds.
    pub stored: Option<String>,
    /// What the log gives.
    pub folded: Option<String>,
}

/// How the stored identity index compares with the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexReport {
    /// The position folded to.
    pub position: Position,
    /// Identifiers held, per the log.
    pub identifiers: usize,
    /// Merged customers, per the log.
    pub aliases: usize,
    /// Blocked values, per the log.
    pub blocked: usize,
    /// Rows that differ.
    pub different: usize,
    /// The first differences.
    pub examples: Vec<IndexDifference>,
    /// Identity events left out of the fold because they no longer open.
    pub unreadable: u64,
}

impl IndexReport {
    /// Whether the stored index is the fold of the log.
    pub fn is_clean(&self) -> bool {
        self.different == 0
    }
}

/// Folds the log and compares the fold with the store's index. The log must not move
/// meanwhile (run it on a store nothing writes to, or compare the position).
pub async fn verify(
    ingestor: &Ingestor,
    batch: usize,
    progress: impl Fn(Position, Position),
) -> Result<IndexReport, CorrectionError> {
    let folded = fold(ingestor, batch, progress).await?;
    let store = ingestor.store();
    let holders: BTreeMap<Identifier, CustomerId> =
        store.identity_index().await?.into_iter().collect();
    let aliases: BTreeMap<CustomerId, CustomerId> = store.aliases().await?.into_iter().collect();
    let blocked: BTreeMap<Identifier, &str> = store
        .blocked_identifiers()
        .await?
        .into_iter()
        .map(|i| (i, "blocked"))
        .collect();
    // The tables must be those of the position folded: a write in between would show as a
    // difference that is not one.
    let head = store.head().await?;
    if head != folded.position {
        return Err(StoreError::Stale {
            reason: format!(
                "the log moved from position {} to {head} during the check; run it again, or \
                 on a store nothing writes to",
                folded.position
            ),
        }
        .into());
    }
    let index = &folded.index;
    let mut report = IndexReport {
        position: folded.position,
        identifiers: index.holders().len(),
        aliases: index.aliases().len(),
        blocked: index.blocked().len(),
        unreadable: folded.unreadable,
        ..IndexReport::default()
    };
    compare(&mut report, "holder", &holders, index.holders(), |i| {
        i.kind.to_string()
    });
    compare(&mut report, "alias", &aliases, index.aliases(), |c| {
        c.to_string()
    });
    let folded_blocked: BTreeMap<Identifier, &str> = index
        .blocked()
        .iter()
        .map(|i| (i.clone(), "blocked"))
        .collect();
    compare(&mut report, "blocked", &blocked, &folded_blocked, |i| {
        i.kind.to_string()
    });
    Ok(report)
}

/// Adds the rows where `stored` and `folded` differ to `report`.
fn compare<K: Ord, V: PartialEq + std::fmt::Display>(
    report: &mut IndexReport,
    table: &'static str,
    stored: &BTreeMap<K, V>,
    folded: &BTreeMap<K, V>,
    name: impl Fn(&K) -> String,
) {
    let keys = stored
        .keys()
        .chain(folded.keys().filter(|k| !stored.contains_key(*k)));
    for key in keys {
        let (s, f) = (stored.get(key), folded.get(key));
        if s == f {
            continue;
        }
        report.different += 1;
        if report.examples.len() < LISTED {
            report.examples.push(IndexDifference {
                table,
                key: name(key),
                stored: s.map(ToString::to_string),
                folded: f.map(ToString::to_string),
            });
        }
    }
}

/// Folds the log and writes the fold in place of the store's identity index, in one
/// transaction that fails, writing nothing, if the log moved on meanwhile.
pub async fn rebuild(
    ingestor: &Ingestor,
    batch: usize,
    progress: impl Fn(Position, Position),
) -> Result<Folded, CorrectionError> {
    let folded = fold(ingestor, batch, progress).await?;
    ingestor
        .store()
        .replace_identity_index(folded.position, &folded.index)
        .await?;
    Ok(folded)
}
