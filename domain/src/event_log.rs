//! The event envelope: the identity, place and provenance of every event in the log.
//!
//! An event is appended to one stream (for example one customer) at a version that grows by one
//! with each event, and receives a global [`Position`] that orders the whole log. Its payload is
//! JSON text, decoded by whoever reads it into the type named by `event_type` and
//! `schema_version`.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// A position in the global log: 1 for the first event ever stored, never reused.
pub type Position = u64;

/// A version within one stream: 1 for its first event; 0 means the stream has no events.
pub type StreamVersion = u64;

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 200;

/// The idempotency key of an event: the same id sent twice is stored once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new, time-ordered (UUIDv7) id, which keeps the store's id index append-friendly.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an id supplied by a client or a source system.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an envelope field was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Stream ids are non-empty, at most [`MAX_STREAM_ID_LEN`] bytes, without control characters.
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidStreamId {
        /// The refused id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Event types are non-empty, at most 100 bytes of `[A-Za-z0-9_.-]`.
    #[error(
        "invalid event type {event_type:?}: expected 1 to 100 characters of A-Z a-z 0-9 _ . -"
    )]
    InvalidEventType {
        /// The refused type.
        event_type: String,
    },
    /// Schema versions start at 1.
    #[error("invalid schema version 0 for event type {event_type:?}: versions start at 1")]
    InvalidSchemaVersion {
        /// The event type that carried it.
        event_type: String,
    },
    /// The payload is not a JSON document.
    #[error("payload of event type {event_type:?} is not valid JSON: {reason}")]
    InvalidPayload {
        /// The event type that carried it.
        event_type: String,
        /// The parser's message.
        reason: String,
    },
}

/// The name of a stream, for example `customer-0192f0c4-…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, EnvelopeError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > MAX_STREAM_ID_LEN {
            Some("it is longer than 200 bytes")
        } else if id.chars().any(char::is_control) {
            Some("it contains a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(EnvelopeError::InvalidStreamId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// An id built by this crate from parts that are valid by construction.
    pub(crate) fn trusted(id: String) -> Self {
        debug_assert!(Self::new(id.clone()).is_ok());
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = EnvelopeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the writer believes a stream's version to be; a mismatch is a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check: append after whatever is there.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must be at exactly this version (0 means no events).
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: StreamVersion) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where an event came from and why: kept beside the payload, never inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The system that produced the record, for example `pos-shanghai` or `shopify`.
    pub source: Option<String>,
    /// The channel of the touchpoint, for example `store`, `app`, `web`, `call_center`.
    pub channel: Option<String>,
    /// Groups every event caused by one request or import.
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// Who appended it: an API key's name, an operator, or `system`.
    pub actor: Option<String>,
    /// Why, for manual actions such as an identity correction.
    pub reason: Option<String>,
}

/// An event about to be appended.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    event_id: EventId,
    event_type: String,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    payload: String,
    metadata: Metadata,
}

fn check_event_type(event_type: &str) -> Result<(), EnvelopeError> {
    let ok = !event_type.is_empty()
        && event_type.len() <= 100
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(EnvelopeError::InvalidEventType {
            event_type: event_type.to_owned(),
        })
    }
}

impl NewEvent {
    /// An event with a fresh time-ordered id, schema version 1, occurring now, no metadata.
    pub fn new(
        event_type: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, EnvelopeError> {
        let event_type = event_type.into();
        check_event_type(&event_type)?;
        // Serialized by serde_json, so valid JSON by construction: no need to parse it again.
        let payload =
            serde_json::to_string(payload).map_err(|e| EnvelopeError::InvalidPayload {
                event_type: event_type.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self::checked(event_type, payload))
    }

    /// An event whose payload this crate encoded with serde_json, so valid JSON by construction.
    pub(crate) fn encoded(event_type: String, payload: String) -> Result<Self, EnvelopeError> {
        check_event_type(&event_type)?;
        Ok(Self::checked(event_type, payload))
    }

    fn checked(event_type: String, payload: String) -> Self {
        Self {
            event_id: EventId::new(),
            event_type,
            schema_version: 1,
            occurred_at: Utc::now().trunc_subsecs(6),
            payload,
            metadata: Metadata::default(),
        }
    }

    /// An event whose payload is given as JSON text, which must parse.
    pub fn from_json(
        event_type: impl Into<String>,
        payload: impl Into<String>,
    ) -> Result<Self, EnvelopeError> {
        let event_type = event_type.into();
        check_event_type(&event_type)?;
        let payload = payload.into();
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&payload) {
            return Err(EnvelopeError::InvalidPayload {
                event_type,
                reason: e.to_string(),
            });
        }
        Ok(Self::checked(event_type, payload))
    }

    /// Sets the idempotency key, for example a source system's message id.
    pub fn with_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the payload's schema version (1 or more).
    pub fn with_schema_version(mut self, schema_version: u32) -> Result<Self, EnvelopeError> {
        if schema_version == 0 {
            return Err(EnvelopeError::InvalidSchemaVersion {
                event_type: self.event_type,
            });
        }
        self.schema_version = schema_version;
        Ok(self)
    }

    /// Sets when it happened in its channel; kept to the microsecond.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = at.trunc_subsecs(6);
        self
    }

    /// Sets its provenance.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The idempotency key.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    /// The type name the payload decodes as.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The version of the payload's shape.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }
    /// When it happened in its channel, UTC, to the microsecond.
    pub fn occurred(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// The payload as JSON text.
    pub fn payload(&self) -> &str {
        &self.payload
    }
    /// Its provenance.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// Events to append to one stream, with the version the writer expects it to be at.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    /// The stream to append to.
    pub stream_id: StreamId,
    /// The version check made before writing.
    pub expected: ExpectedVersion,
    /// The events, in the order they get their versions.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Events for one stream.
    pub fn new(stream_id: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream_id,
            expected,
            events,
        }
    }
}

/// An event as stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Its place in the global order.
    pub position: Position,
    /// Its idempotency key.
    pub event_id: EventId,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within that stream.
    pub stream_version: StreamVersion,
    /// The type name the payload decodes as.
    pub event_type: String,
    /// The version of the payload's shape (after upcasting, the current one).
    pub schema_version: u32,
    /// When it happened in its channel (UTC).
    pub occurred_at: DateTime<Utc>,
    /// When the store committed it (UTC).
    pub recorded_at: DateTime<Utc>,
    /// The payload as JSON text.
    pub payload: String,
    /// Its provenance.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Decodes the payload into a typed event.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_validated() {
        assert!(StreamId::new("customer-1").is_ok());
        assert!(matches!(
            StreamId::new(""),
            Err(EnvelopeError::InvalidStreamId {
                reason: "it is empty",
                ..
            })
        ));
        assert!(StreamId::new("a\nb").is_err());
        assert!(StreamId::new("x".repeat(201)).is_err());
        assert!(StreamId::new("x".repeat(200)).is_ok());
    }

    #[test]
    fn payload_must_be_json_and_type_well_formed() {
        let err = NewEvent::from_json("order_placed", "{not json").unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidPayload { .. }), "{err}");
        let err = NewEvent::from_json("order placed", "{}").unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidEventType { .. }));
        assert!(NewEvent::from_json("order_placed", "{}")
            .unwrap()
            .with_schema_version(0)
            .is_err());
    }

    #[test]
    fn expected_version_admits() {
        assert!(ExpectedVersion::Any.admits(7));
        assert!(ExpectedVersion::NoStream.admits(0));
        assert!(!ExpectedVersion::NoStream.admits(1));
        assert!(ExpectedVersion::Exact(3).admits(3));
        assert!(!ExpectedVersion::Exact(3).admits(4));
    }

    #[test]
    fn fresh_ids_are_time_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b);
    }
}
