//! The events on a customer's stream, as stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::customer::CustomerId;
use crate::event_log::EventId;
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

impl TouchpointRecorded {
    /// The stored form of a touchpoint and its resolution. `identifiers` are the touchpoint's
    /// identifiers as they are to be kept in the log; `resolution` was decided on pseudonyms and
    /// is mapped back to them.
    pub fn new(
        touchpoint: &Touchpoint,
        resolution: &Resolution,
        reveal: impl Fn(&Identifier) -> Identifier,
    ) -> Self {
        Self {
            channel: touchpoint.channel,
            source: touchpoint.source.clone(),
            identifiers: touchpoint.identifiers.clone(),
            action: touchpoint.action.clone(),
            properties: touchpoint.properties.clone(),
            resolution: ResolutionRecord {
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
            },
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
