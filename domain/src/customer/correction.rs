//! An identity correction as an operator asks for it, whichever door it comes through (the
//! GraphQL API, `patron correct`, the review queue's accept): customers by id, identifiers as
//! kind and value as at ingestion. The application service resolves the customers to the live
//! ones, turns the values into pseudonyms and hands the customer aggregate its
//! [`super::CustomerCommand`].

use super::CustomerId;

/// An identity correction an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Correction {
    /// Merge `absorbed` into `survivor`.
    Merge {
        /// The customer that goes on.
        survivor: CustomerId,
        /// The customer closed.
        absorbed: CustomerId,
    },
    /// Undo the merge that closed `customer`.
    UndoMerge {
        /// The absorbed customer to restore.
        customer: CustomerId,
    },
    /// Split identifiers (kind, value) off `customer` into a new customer.
    Split {
        /// The customer to split.
        customer: CustomerId,
        /// The identifiers to move, as kind and value.
        identifiers: Vec<(String, String)>,
    },
    /// Link an identifier to `customer`, taking it from any customer holding it.
    Link {
        /// The customer.
        customer: CustomerId,
        /// The identifier's kind.
        kind: String,
        /// Its value, as at ingestion.
        value: String,
    },
    /// Unlink an identifier from `customer`.
    Unlink {
        /// The customer.
        customer: CustomerId,
        /// The identifier's kind.
        kind: String,
        /// Its value, as at ingestion.
        value: String,
    },
    /// Block an identifier value: unlinked from its holder, it never links anyone again.
    Block {
        /// The identifier's kind.
        kind: String,
        /// Its value, as at ingestion.
        value: String,
    },
}
