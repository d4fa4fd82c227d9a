//! The identity index and the quarantine, kept in the same database as the log and written in
//! the same transactions as the events that change them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::identifier::Identifier;
use patron_domain::identity::resolution::IdentityGraph;
use patron_domain::{EventId, StreamAppend};
use serde::Serialize;

use super::EventRef;

/// What an identity commit is decided on: read under the log's write lock.
#[derive(Debug)]
pub struct IdentitySnapshot {
    /// The requested event ids that are already stored, and where.
    pub stored: HashMap<EventId, EventRef>,
    /// The stored identity graph around the requested pseudonyms: their holders, and every
    /// pseudonym those customers hold.
    pub graph: IdentityGraph,
}

/// Changes to the identity index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityChanges {
    /// Customers closed by merges, each with its survivor, in the order they happened.
    pub merges: Vec<(CustomerId, CustomerId)>,
    /// Pseudonyms newly held, and by whom (after the merges).
    pub links: Vec<(Identifier, CustomerId)>,
}

impl IdentityChanges {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.merges.is_empty() && self.links.is_empty()
    }
}

/// What an identity commit writes, and a value to hand back to the caller.
#[derive(Debug)]
pub struct IdentityCommit<T> {
    /// Events to append.
    pub appends: Vec<StreamAppend>,
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
    /// What is wrong.
    pub reason: String,
    /// The record as received.
    pub record: String,
}

/// Builds the graph of loaded index rows.
pub(crate) fn graph_of(rows: Vec<(Identifier, CustomerId)>) -> IdentityGraph {
    let mut graph = IdentityGraph::new();
    for (identifier, customer) in rows {
        graph.insert(identifier, customer);
    }
    graph
}
