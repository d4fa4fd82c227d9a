//! The customer: one person, known by the identifiers resolved to them. Its id, what it is
//! made of ([`holdings`]), and the customer aggregate ([`Customer`]) that decides identity
//! corrections by pure code over what it holds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event_log::StreamId;

mod aggregate;
mod correction;
mod division;
pub mod holdings;
mod index;
#[cfg(test)]
mod tests;

pub use aggregate::{
    Claim, Customer, CustomerCommand, CustomerFact, IndexChange, OwnedTouchpoint, PartRecord,
    Refusal,
};
pub use correction::Correction;
pub use holdings::Holdings;
pub use index::IndexFold;

/// A customer's id. Time-ordered (UUIDv7): of two customers, the one with the smaller id was
/// created first, which decides who survives a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(Uuid);

impl CustomerId {
    /// A new id, later than every id made before it in this process.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a stored id.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The customer whose history a stream holds, if it is a customer stream.
    pub fn from_stream(stream: &StreamId) -> Option<Self> {
        stream
            .as_str()
            .strip_prefix("customer-")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(Self)
    }

    /// The event stream holding this customer's history: `customer-<id>`.
    pub fn stream_id(&self) -> StreamId {
        StreamId::trusted(format!("customer-{}", self.0))
    }
}

impl Default for CustomerId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CustomerId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}
