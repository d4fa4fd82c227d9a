//! Patron's domain: what happens to a customer, free of IO and of any runtime.
//!
//! # Layout
//!
//! - [`event_log`]: the envelope every domain event travels in (ids, streams, versions,
//!   metadata), shared by the event store, the projections and the API.
//! - [`upcast`]: the hook that brings events written in an old shape up to the current one.
//! - [`privacy`]: per-customer keys and the sealing of events' personal data.
//! - [`events`]: the events on a customer's stream, typed ([`events::CustomerEvent`]).
//! - [`blocklist`]: the identity blocklist as an aggregate (cqrs-es's `Aggregate`).

pub mod blocklist;
pub mod customer;
pub mod event_log;
pub mod events;
pub mod identifier;
pub mod identity;
pub mod privacy;
pub mod pseudonym;
pub mod touchpoint;
pub mod upcast;

pub use event_log::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion,
};
pub use upcast::{UpcastError, Upcaster, Upcasters};
