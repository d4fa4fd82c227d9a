//! The events on a customer's stream, as stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::customer::CustomerId;
use crate::event_log::{EnvelopeError, EventId, NewEvent};
use crate::identifier::Identifier;
use crate::identity::{Resolution, Skipped};
use crate::touchpoint::{Action, Channel, Touchpoint};

/// Event type of [`CustomerMerged`].
pub const CUSTOMER_MERGED: &str = "customer_merged";
/// Event type of [`CustomerMergedInto`].
pub const CUSTOMER_MERGED_INTO: &str = "customer_merged_into";

/// How a touchpoint was resolved, kept with it so that its customer can be explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionRecord {
    /// Whether the touchpoint started the customer.
    pub created: bool,
    /// Identifiers linked to the customer by this touchpoint.
    pub linked: Vec<Identifier>,
    /// Identifiers not linked, with the reason.
    pub skipped: Vec<Skipped>,
    /// Customers merged into this one because of this touchpoint.
    pub merged: Vec<CustomerId>,
    /// The version of the identity rules that decided.
    pub rules_version: u32,
}

/// A touchpoint on the stream of the customer it was resolved to. Stored under the action's
/// event type (`order_placed`, `page_viewed`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TouchpointRecorded {
    /// The channel it came through.
    pub channel: Channel,
    /// The system that sent it.
    pub source: String,
    /// The identifiers it carried, normalized.
    pub identifiers: Vec<Identifier>,
    /// What happened.
    pub action: Action,
    /// Other properties of the record.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    /// How it was resolved.
    pub resolution: ResolutionRecord,
}

/// The fields of [`TouchpointRecorded`] before its resolution, borrowed for encoding.
#[derive(Serialize)]
struct Body<'a> {
    channel: Channel,
    source: &'a str,
    identifiers: &'a [Identifier],
    action: &'a Action,
    #[serde(skip_serializing_if = "Map::is_empty")]
    properties: &'a Map<String, Value>,
}

/// A touchpoint's stored form, encoded up to its resolution. Encoding is most of the work of
/// storing a touchpoint and needs no database, so it happens before the write lock is taken;
/// under the lock only the small [`ResolutionRecord`] is added.
#[derive(Clone, Debug)]
pub struct EncodedTouchpoint {
    /// A JSON object's text without its closing brace; it always holds at least one member.
    open: String,
}

impl EncodedTouchpoint {
    /// Encodes everything of `touchpoint` that is stored, except how it was resolved.
    pub fn new(touchpoint: &Touchpoint) -> Result<Self, serde_json::Error> {
        let mut open = serde_json::to_string(&Body {
            channel: touchpoint.channel,
            source: &touchpoint.source,
            identifiers: &touchpoint.identifiers,
            action: &touchpoint.action,
            properties: &touchpoint.properties,
        })?;
        // A struct serializes as `{...}`; dropping the brace leaves room for one more member.
        open.pop();
        Ok(Self { open })
    }

    /// The stored event: the touchpoint with its resolution, under the action's event type.
    pub fn into_event(
        self,
        event_type: &str,
        resolution: &ResolutionRecord,
    ) -> Result<NewEvent, EnvelopeError> {
        let mut payload = self.open;
        payload.push_str(",\"resolution\":");
        let tail =
            serde_json::to_string(resolution).map_err(|e| EnvelopeError::InvalidPayload {
                event_type: event_type.to_owned(),
                reason: e.to_string(),
            })?;
        payload.push_str(&tail);
        payload.push('}');
        NewEvent::encoded(event_type.to_owned(), payload)
    }
}

impl ResolutionRecord {
    /// The record of `resolution`, decided on pseudonyms; `reveal` maps them back to the
    /// touchpoint's identifiers.
    pub fn of(resolution: &Resolution, reveal: impl Fn(&Identifier) -> Identifier) -> Self {
        Self {
            created: resolution.created,
            linked: resolution.links.iter().map(&reveal).collect(),
            skipped: resolution
                .skipped
                .iter()
                .map(|s| Skipped {
                    identifier: reveal(&s.identifier),
                    reason: s.reason.clone(),
                })
                .collect(),
            merged: resolution.merges.iter().map(|m| m.absorbed).collect(),
            rules_version: resolution.rules_version,
        }
    }
}

/// On the survivor's stream: another customer was merged into this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerMerged {
    /// The customer closed by the merge.
    pub absorbed: CustomerId,
    /// The identifiers that showed they are one person.
    pub evidence: Vec<Identifier>,
    /// The touchpoint (or correction) that caused the merge.
    pub cause: EventId,
    /// The version of the identity rules that decided.
    pub rules_version: u32,
}

/// On the absorbed customer's stream: this customer now lives on as `survivor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerMergedInto {
    /// The customer that goes on.
    pub survivor: CustomerId,
    /// The identifiers that showed they are one person.
    pub evidence: Vec<Identifier>,
    /// The touchpoint (or correction) that caused the merge.
    pub cause: EventId,
    /// The version of the identity rules that decided.
    pub rules_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityRules, SkipReason};
    use crate::touchpoint::RawTouchpoint;
    use serde_json::json;

    #[test]
    fn an_encoded_touchpoint_reads_back_as_the_stored_event() {
        let rules = IdentityRules::default();
        let raw: RawTouchpoint = serde_json::from_value(json!({
            "event_id": "0192f0c4-7c1e-7a33-9d5e-1b2c3d4e5f60", "type": "store_visited",
            "channel": "store", "source": "wifi", "occurred_at": "2026-03-08T09:30:15+08:00",
            "identifiers": {"phone": "13912340001", "device_id": "tablet"},
            "store_id": "SH-1", "floor": 2
        }))
        .unwrap();
        let touchpoint = raw.validate(&rules, chrono::Utc::now()).unwrap();
        let other = CustomerId::new();
        let resolution = Resolution {
            customer: CustomerId::new(),
            created: true,
            merges: vec![],
            links: vec![touchpoint.identifiers[1].clone()],
            skipped: vec![Skipped {
                identifier: touchpoint.identifiers[0].clone(),
                reason: SkipReason::HeldByOther { customer: other },
            }],
            rules_version: 3,
        };
        let event = EncodedTouchpoint::new(&touchpoint)
            .unwrap()
            .into_event(
                touchpoint.action.event_type(),
                &ResolutionRecord::of(&resolution, Clone::clone),
            )
            .unwrap();
        assert_eq!(event.event_type(), "store_visited");
        let stored: TouchpointRecorded = serde_json::from_str(event.payload()).unwrap();
        assert_eq!(stored.channel, touchpoint.channel);
        assert_eq!(stored.source, "wifi");
        assert_eq!(stored.identifiers, touchpoint.identifiers);
        assert_eq!(stored.action, touchpoint.action);
        assert_eq!(stored.properties.get("floor"), Some(&json!(2)));
        assert_eq!(stored.resolution.linked, resolution.links);
        assert_eq!(stored.resolution.skipped, resolution.skipped);
        assert!(stored.resolution.created);
        assert_eq!(stored.resolution.rules_version, 3);
    }
}
