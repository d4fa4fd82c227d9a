//! Upcasting: reading events written in an old payload shape as the current shape.
//!
//! The log is never rewritten. When a payload's shape changes, register an [`Upcaster`] that turns
//! version `n` of an event type into version `n + 1`; readers apply the chain until no step is
//! left, so every consumer sees only current shapes.

use std::collections::HashMap;

use serde_json::Value;
use thiserror::Error;

use crate::event_log::RecordedEvent;

/// Why an old payload could not be brought up to date.
#[derive(Debug, Error)]
pub enum UpcastError {
    /// The stored payload is not JSON.
    #[error("event at position {position} ({event_type} v{schema_version}) has a payload that is not JSON: {source}")]
    Payload {
        /// Where the event is.
        position: u64,
        /// Its type.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// An upcaster refused the payload.
    #[error("upcasting {event_type} from v{from_version} failed at position {position}: {reason}")]
    Step {
        /// Where the event is.
        position: u64,
        /// Its type.
        event_type: String,
        /// The version the failing step starts from.
        from_version: u32,
        /// The upcaster's message.
        reason: String,
    },
}

/// One step that turns version `from_version` of `event_type` into version `from_version + 1`.
pub trait Upcaster: Send + Sync {
    /// The event type this step applies to.
    fn event_type(&self) -> &str;
    /// The schema version this step reads.
    fn reads_version(&self) -> u32;
    /// Rewrites the payload into the next version's shape.
    fn upcast(&self, payload: Value) -> Result<Value, String>;
}

/// The registered upcasters, keyed by event type and the version they read.
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<String, HashMap<u32, Box<dyn Upcaster>>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self
            .steps
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |v| format!("{t} v{v}")))
            .collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No upcasters: events are read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step; a later step for the same type and version replaces the earlier one.
    pub fn register(mut self, step: impl Upcaster + 'static) -> Self {
        self.steps
            .entry(step.event_type().to_owned())
            .or_default()
            .insert(step.reads_version(), Box::new(step));
        self
    }

    /// Whether any step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Brings an event up to the newest shape its type has steps for.
    pub fn apply(&self, mut event: RecordedEvent) -> Result<RecordedEvent, UpcastError> {
        let Some(chain) = self.steps.get(&event.event_type) else {
            return Ok(event);
        };
        if !chain.contains_key(&event.schema_version) {
            return Ok(event);
        }
        let mut payload: Value =
            serde_json::from_str(&event.payload).map_err(|source| UpcastError::Payload {
                position: event.position,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                source,
            })?;
        while let Some(step) = chain.get(&event.schema_version) {
            payload = step.upcast(payload).map_err(|reason| UpcastError::Step {
                position: event.position,
                event_type: event.event_type.clone(),
                from_version: event.schema_version,
                reason,
            })?;
            event.schema_version += 1;
        }
        event.payload = payload.to_string();
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_log::{EventId, Metadata, StreamId};
    use chrono::Utc;
    use serde_json::json;

    /// v1 had `amount` in yuan as a float; v2 has `amount_minor` in fen.
    struct AmountToMinor;
    impl Upcaster for AmountToMinor {
        fn event_type(&self) -> &str {
            "order_placed"
        }
        fn reads_version(&self) -> u32 {
            1
        }
        fn upcast(&self, mut payload: Value) -> Result<Value, String> {
            let amount = payload
                .get("amount")
                .and_then(Value::as_f64)
                .ok_or("field `amount` is missing or not a number")?;
            let obj = payload.as_object_mut().ok_or("payload is not an object")?;
            obj.remove("amount");
            obj.insert(
                "amount_minor".into(),
                json!((amount * 100.0).round() as i64),
            );
            Ok(payload)
        }
    }

    /// v2 to v3 adds a currency, CNY for everything written before.
    struct AddCurrency;
    impl Upcaster for AddCurrency {
        fn event_type(&self) -> &str {
            "order_placed"
        }
        fn reads_version(&self) -> u32 {
            2
        }
        fn upcast(&self, mut payload: Value) -> Result<Value, String> {
            payload["currency"] = json!("CNY");
            Ok(payload)
        }
    }

    fn recorded(event_type: &str, version: u32, payload: &str) -> RecordedEvent {
        RecordedEvent {
            position: 9,
            event_id: EventId::new(),
            stream_id: StreamId::new("customer-1").unwrap(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version: version,
            occurred_at: Utc::now(),
            recorded_at: Utc::now(),
            payload: payload.into(),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn chains_steps_to_the_newest_version() {
        let up = Upcasters::new()
            .register(AmountToMinor)
            .register(AddCurrency);
        let e = up
            .apply(recorded("order_placed", 1, r#"{"amount":12.34}"#))
            .unwrap();
        assert_eq!(e.schema_version, 3);
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v, json!({"amount_minor": 1234, "currency": "CNY"}));
        // A v2 event takes only the second step.
        let e = up
            .apply(recorded("order_placed", 2, r#"{"amount_minor":5}"#))
            .unwrap();
        assert_eq!(e.schema_version, 3);
        // Other types and current versions pass through untouched.
        let e = up.apply(recorded("page_viewed", 1, r#"{"x":1}"#)).unwrap();
        assert_eq!((e.schema_version, e.payload.as_str()), (1, r#"{"x":1}"#));
    }

    #[test]
    fn a_failing_step_names_the_event() {
        let up = Upcasters::new().register(AmountToMinor);
        let err = up
            .apply(recorded("order_placed", 1, r#"{"total":1}"#))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("position 9") && msg.contains("amount"),
            "{msg}"
        );
    }
}
