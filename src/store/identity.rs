//! The identity index and the quarantine, kept in the same database as the log and written in
//! the same transactions as the events that change them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::identifier::Identifier;
use patron_domain::identity::resolution::IdentityGraph;
use patron_domain::privacy::shred_payload;
use patron_domain::{EventId, StreamAppend, StreamId};
use serde::Serialize;

use super::{EventRef, StoreError};

/// What an identity commit is decided on: read under the log's write lock.
#[derive(Debug)]
pub struct IdentitySnapshot {
    /// The requested event ids that are already stored, and where.
    pub stored: HashMap<EventId, EventRef>,
    /// The stored identity graph around the requested pseudonyms: their holders, and every
    /// pseudonym those customers hold.
    pub graph: IdentityGraph,
    /// The wrapped keys of the graph's customers that have one.
    pub customer_keys: HashMap<CustomerId, Vec<u8>>,
}

/// The tables of the identity index, emptied when it is rebuilt from the log.
pub(crate) const IDENTITY_TABLES: [&str; 3] =
    ["identity_index", "customer_aliases", "blocked_identifiers"];

/// The error of a rebuild whose fold the log moved past.
pub(crate) fn moved_on(at: u64, now: u64) -> StoreError {
    StoreError::Stale {
        reason: format!(
            "the log moved from position {at} to {now} while the identity index was folded; \
             fold again"
        ),
    }
}

/// Changes to the identity index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityChanges {
    /// Customers closed by merges, each with its survivor, in the order they happened.
    pub merges: Vec<(CustomerId, CustomerId)>,
    /// Pseudonyms newly held, and by whom (after the merges).
    pub links: Vec<(Identifier, CustomerId)>,
    /// Keys made for customers, wrapped by the master key.
    pub new_keys: Vec<(CustomerId, Vec<u8>)>,
    /// Customers a correction made live again, each with the customers merged into it before,
    /// which resolve to it again (applied after merges and links).
    pub restored: Vec<(CustomerId, Vec<CustomerId>)>,
    /// Pseudonyms given to a holder, or taken from any (`None`) by a correction (applied
    /// after the restored customers).
    pub holders: Vec<(Identifier, Option<CustomerId>)>,
    /// Pseudonyms an operator blocked.
    pub blocks: Vec<Identifier>,
}

impl IdentityChanges {
    /// Each absorbed customer with the survivor it ends with once all the merges are applied
    /// (a survivor may itself be absorbed later in the same commit).
    pub fn final_merges(&self) -> Vec<(CustomerId, CustomerId)> {
        let next: HashMap<CustomerId, CustomerId> = self.merges.iter().copied().collect();
        self.merges
            .iter()
            .map(|(absorbed, survivor)| {
                let mut last = *survivor;
                // Bounded by the number of merges: a cycle cannot come from real merges.
                for _ in 0..self.merges.len() {
                    match next.get(&last) {
                        Some(further) => last = *further,
                        None => break,
                    }
                }
                (*absorbed, last)
            })
            .collect()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.merges.is_empty()
            && self.links.is_empty()
            && self.new_keys.is_empty()
            && self.restored.is_empty()
            && self.holders.is_empty()
            && self.blocks.is_empty()
    }
}

/// What an identity commit writes, and a value to hand back to the caller.
#[derive(Debug)]
pub struct IdentityCommit<T> {
    /// Events to append.
    pub appends: Vec<StreamAppend>,
    /// The order the events happened in, across streams: the index into `appends` of each
    /// event's stream, one entry per event. Positions follow it; without it they go stream
    /// after stream.
    pub order: Option<Vec<usize>>,
    /// Identity index changes.
    pub changes: IdentityChanges,
    /// Anything the caller wants back (for example per-record answers).
    pub value: T,
}

/// A record refused at ingestion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantinedRecord {
    /// Its number in the quarantine (0 before it is stored).
    pub id: u64,
    /// When it was refused.
    pub received_at: DateTime<Utc>,
    /// The system that sent it, if the record says.
    pub source: Option<String>,
    /// The stable rejection code.
    pub code: String,
    /// The field at fault.
    pub field: String,
    /// What is wrong (it may quote the value at fault); empty once expired.
    pub reason: String,
    /// The record as received; empty once expired.
    pub record: String,
    /// When the record's text expired (was blanked), if it has.
    pub expired_at: Option<DateTime<Utc>>,
}

/// What an erasure did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Erasure {
    /// The live customer erased.
    pub customer: CustomerId,
    /// Every customer whose key was destroyed: the live one and those merged into it.
    pub keys_destroyed: Vec<CustomerId>,
    /// Identity index entries removed.
    pub identifiers_removed: u64,
    /// Quarantined records removed because they held the customer's data.
    pub quarantined_removed: u64,
    /// Touchpoints of other customers' streams that corrections had moved to the erased
    /// customer, whose sealed part (and event key) was destroyed in place.
    pub touchpoints_shredded: u64,
    /// The position of the erasure's event.
    pub position: u64,
    /// Whether the deleted data was also scrubbed from the files (SQLite: the WAL emptied;
    /// PostgreSQL: the tables vacuumed). The erasure itself is committed either way.
    pub scrubbed: bool,
}

/// What an erasure writes in place of a stored event's payload: for a touchpoint on a
/// stream whose key survives the erasure (`erased` names the customers whose keys go), the
/// payload with its sealed part destroyed; `None` for an event of an erased customer (its key
/// goes, which is enough) or one with nothing sealed.
pub(crate) fn shredded_payload(
    position: u64,
    stream: &str,
    payload: &str,
    erased: &[CustomerId],
) -> Result<Option<String>, StoreError> {
    let owner = StreamId::new(stream)
        .ok()
        .and_then(|s| CustomerId::from_stream(&s));
    if owner.is_some_and(|o| erased.contains(&o)) {
        return Ok(None);
    }
    shred_payload(payload).map_err(|e| StoreError::Corrupt {
        position,
        reason: format!("cannot shred its sealed part: {e}"),
    })
}

impl QuarantinedRecord {
    /// The key under which the record is kept once: a hash of its source and its text.
    pub fn record_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.source.as_deref().unwrap_or_default().as_bytes());
        hash.update([0]);
        hash.update(self.record.as_bytes());
        hex::encode(hash.finalize())
    }
}

/// Builds the graph of loaded index rows.
pub(crate) fn graph_of(rows: Vec<(Identifier, CustomerId)>) -> IdentityGraph {
    let mut graph = IdentityGraph::new();
    for (identifier, customer) in rows {
        graph.insert(identifier, customer);
    }
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_of_merges_end_with_the_last_survivor() {
        let (a, b, c, d) = (
            CustomerId::new(),
            CustomerId::new(),
            CustomerId::new(),
            CustomerId::new(),
        );
        let changes = IdentityChanges {
            merges: vec![(b, a), (d, c), (a, c)],
            ..IdentityChanges::default()
        };
        assert_eq!(changes.final_merges(), vec![(b, c), (d, c), (a, c)]);
    }
}
