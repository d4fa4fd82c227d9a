//! The events on a customer's stream, as stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::customer::CustomerId;
use crate::event_log::{EnvelopeError, EventId, NewEvent, Position};
use crate::identifier::Identifier;
use crate::identity::{Resolution, SkipReason, Skipped};
use crate::privacy::{CustomerKey, PrivacyError, SealedPart, SEALED_FIELD};
use crate::touchpoint::{Action, Channel, Touchpoint};

/// Event type of [`CustomerMerged`].
pub const CUSTOMER_MERGED: &str = "customer_merged";
/// Event type of [`CustomerMergedInto`].
pub const CUSTOMER_MERGED_INTO: &str = "customer_merged_into";
/// Event type of [`CustomerErased`].
pub const CUSTOMER_ERASED: &str = "customer_erased";
/// Event type of a [`Separation`] on the live customer a merge is undone from.
pub const MERGE_UNDONE: &str = "merge_undone";
/// Event type of a [`Separation`] on the customer an undone merge restores.
pub const CUSTOMER_RESTORED: &str = "customer_restored";
/// Event type of a [`Separation`] on the customer identifiers are split off from.
pub const CUSTOMER_SPLIT: &str = "customer_split";
/// Event type of a [`Separation`] on the new customer a split makes.
pub const CUSTOMER_SPLIT_OFF: &str = "customer_split_off";
/// Event type of [`IdentifierLinked`].
pub const IDENTIFIER_LINKED: &str = "identifier_linked";
/// Event type of [`IdentifierUnlinked`].
pub const IDENTIFIER_UNLINKED: &str = "identifier_unlinked";
/// Event type of [`IdentifierBlocked`].
pub const IDENTIFIER_BLOCKED: &str = "identifier_blocked";
/// The stream that holds the identity blocklist's events.
pub const BLOCKLIST_STREAM: &str = "identity-blocklist";

/// What an event on a customer's stream (or the blocklist's) is, read from its type alone:
/// what code dispatches on instead of comparing type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A touchpoint, stored under its action's type (`order_placed`, `page_viewed`, ...).
    Touchpoint,
    /// [`CUSTOMER_MERGED`].
    Merged,
    /// [`CUSTOMER_MERGED_INTO`].
    MergedInto,
    /// [`CUSTOMER_ERASED`].
    Erased,
    /// [`MERGE_UNDONE`].
    MergeUndone,
    /// [`CUSTOMER_RESTORED`].
    Restored,
    /// [`CUSTOMER_SPLIT`].
    Split,
    /// [`CUSTOMER_SPLIT_OFF`].
    SplitOff,
    /// [`IDENTIFIER_LINKED`].
    IdentifierLinked,
    /// [`IDENTIFIER_UNLINKED`].
    IdentifierUnlinked,
    /// [`IDENTIFIER_BLOCKED`].
    IdentifierBlocked,
}

impl EventKind {
    /// Every kind that is not a touchpoint, with its stored type.
    const NAMED: [(EventKind, &'static str); 10] = [
        (Self::Merged, CUSTOMER_MERGED),
        (Self::MergedInto, CUSTOMER_MERGED_INTO),
        (Self::Erased, CUSTOMER_ERASED),
        (Self::MergeUndone, MERGE_UNDONE),
        (Self::Restored, CUSTOMER_RESTORED),
        (Self::Split, CUSTOMER_SPLIT),
        (Self::SplitOff, CUSTOMER_SPLIT_OFF),
        (Self::IdentifierLinked, IDENTIFIER_LINKED),
        (Self::IdentifierUnlinked, IDENTIFIER_UNLINKED),
        (Self::IdentifierBlocked, IDENTIFIER_BLOCKED),
    ];

    /// The kind of an event stored under `event_type`: any type not named by Patron's identity
    /// and privacy events is a touchpoint's.
    pub fn of(event_type: &str) -> Self {
        Self::NAMED
            .iter()
            .find(|(_, name)| *name == event_type)
            .map_or(Self::Touchpoint, |(kind, _)| *kind)
    }

    /// The stored type of a kind other than [`EventKind::Touchpoint`] (whose type is its
    /// action's).
    pub fn name(self) -> Option<&'static str> {
        Self::NAMED
            .iter()
            .find(|(kind, _)| *kind == self)
            .map(|(_, name)| *name)
    }

    /// Whether it separates a part of a customer into another one.
    pub fn is_separation(self) -> bool {
        matches!(
            self,
            Self::MergeUndone | Self::Restored | Self::Split | Self::SplitOff
        )
    }
}

/// Whether events of this type are touchpoints (rather than identity or privacy events).
pub fn is_touchpoint(event_type: &str) -> bool {
    EventKind::of(event_type) == EventKind::Touchpoint
}

/// Whether events of this type separate a part of a customer into another one.
pub fn is_separation(event_type: &str) -> bool {
    EventKind::of(event_type).is_separation()
}

/// An event on a customer's stream or the blocklist's, typed, as it reads once opened (its
/// sealed members restored: [`crate::privacy::open_payload`]). Stored events are unchanged:
/// the type is the stored event type and the payload its members.
#[derive(Clone, Debug, PartialEq)]
pub enum CustomerEvent {
    /// A touchpoint, with the type it is stored under (its action's).
    Touchpoint {
        /// The stored type (`order_placed` ...).
        event_type: String,
        /// The touchpoint and its resolution.
        recorded: Box<TouchpointRecorded>,
    },
    /// Another customer was merged into this one.
    Merged(CustomerMerged),
    /// This customer was merged into another.
    MergedInto(CustomerMergedInto),
    /// The customer was erased.
    Erased(CustomerErased),
    /// A merge into this customer was undone.
    MergeUndone(Separation),
    /// This customer was restored by an undone merge.
    Restored(Separation),
    /// Identifiers were split off this customer.
    Split(Separation),
    /// This customer was made by a split.
    SplitOff(Separation),
    /// An identifier was linked to this customer by hand.
    IdentifierLinked(IdentifierLinked),
    /// An identifier this customer held was unlinked, moved or blocked.
    IdentifierUnlinked(IdentifierUnlinked),
    /// An identifier was blocked (on the blocklist's stream).
    IdentifierBlocked(IdentifierBlocked),
}

/// Why an opened payload does not read as its event.
#[derive(Debug, thiserror::Error)]
#[error("a {event_type} event does not read: {reason}")]
pub struct EventDecodeError {
    /// The stored type.
    pub event_type: String,
    /// What did not read.
    pub reason: String,
}

impl CustomerEvent {
    /// Reads an opened payload stored under `event_type`.
    pub fn decode(event_type: &str, payload: Value) -> Result<Self, EventDecodeError> {
        fn read<T: serde::de::DeserializeOwned>(
            event_type: &str,
            payload: Value,
        ) -> Result<T, EventDecodeError> {
            serde_json::from_value(payload).map_err(|e| EventDecodeError {
                event_type: event_type.to_owned(),
                reason: e.to_string(),
            })
        }
        Ok(match EventKind::of(event_type) {
            EventKind::Touchpoint => Self::Touchpoint {
                event_type: event_type.to_owned(),
                recorded: Box::new(read(event_type, payload)?),
            },
            EventKind::Merged => Self::Merged(read(event_type, payload)?),
            EventKind::MergedInto => Self::MergedInto(read(event_type, payload)?),
            EventKind::Erased => Self::Erased(read(event_type, payload)?),
            EventKind::MergeUndone => Self::MergeUndone(read(event_type, payload)?),
            EventKind::Restored => Self::Restored(read(event_type, payload)?),
            EventKind::Split => Self::Split(read(event_type, payload)?),
            EventKind::SplitOff => Self::SplitOff(read(event_type, payload)?),
            EventKind::IdentifierLinked => Self::IdentifierLinked(read(event_type, payload)?),
            EventKind::IdentifierUnlinked => Self::IdentifierUnlinked(read(event_type, payload)?),
            EventKind::IdentifierBlocked => Self::IdentifierBlocked(read(event_type, payload)?),
        })
    }

    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Touchpoint { .. } => EventKind::Touchpoint,
            Self::Merged(_) => EventKind::Merged,
            Self::MergedInto(_) => EventKind::MergedInto,
            Self::Erased(_) => EventKind::Erased,
            Self::MergeUndone(_) => EventKind::MergeUndone,
            Self::Restored(_) => EventKind::Restored,
            Self::Split(_) => EventKind::Split,
            Self::SplitOff(_) => EventKind::SplitOff,
            Self::IdentifierLinked(_) => EventKind::IdentifierLinked,
            Self::IdentifierUnlinked(_) => EventKind::IdentifierUnlinked,
            Self::IdentifierBlocked(_) => EventKind::IdentifierBlocked,
        }
    }

    /// The type it is stored under.
    pub fn event_type(&self) -> &str {
        match self {
            Self::Touchpoint { event_type, .. } => event_type,
            other => other.kind().name().unwrap_or_default(),
        }
    }

    /// Its members as stored once opened (before sealing).
    pub fn payload(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::Touchpoint { recorded, .. } => serde_json::to_value(recorded),
            Self::Merged(e) => serde_json::to_value(e),
            Self::MergedInto(e) => serde_json::to_value(e),
            Self::Erased(e) => serde_json::to_value(e),
            Self::MergeUndone(e) | Self::Restored(e) | Self::Split(e) | Self::SplitOff(e) => {
                serde_json::to_value(e)
            }
            Self::IdentifierLinked(e) => serde_json::to_value(e),
            Self::IdentifierUnlinked(e) => serde_json::to_value(e),
            Self::IdentifierBlocked(e) => serde_json::to_value(e),
        }
    }
}

/// A part of a live customer made a customer of its own: a merge undone or identifiers split
/// off. The same decision is written on both streams (the giving customer's event, then the
/// part's), so that each stream can be folded alone; replays apply the decision as recorded
/// and never decide again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Separation {
    /// On the giving customer: the part. On the part: the customer it leaves.
    pub other: CustomerId,
    /// The customers whose streams the part takes whole: for an undone merge, the restored
    /// customer and every customer merged into it before; empty for a split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<CustomerId>,
    /// Positions of the touchpoints the part takes from outside `streams`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touchpoints: Vec<Position>,
    /// On the part: positions of touchpoints on `streams` it does not take (they belonged to
    /// other customers when it was merged). On the giver: those of them it keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Position>,
    /// On the giver: positions of touchpoints on `streams` the part takes that the giver held
    /// as moved in (it owned them by a correction, not by a merge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Position>,
    /// Positions of touchpoints that carried identifiers of both sides: they stay with the
    /// giving customer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<Position>,
    /// The pseudonyms of the identifiers the part takes (sealed in the stored event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
}

/// On a customer's stream: an identifier (a pseudonym, sealed in the stored event) was linked
/// to this customer by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierLinked {
    /// The identifier's pseudonym.
    pub identifier: Identifier,
    /// The customer that held it before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<CustomerId>,
}

/// On a customer's stream: an identifier this customer held was unlinked by hand, moved to
/// another customer, or blocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierUnlinked {
    /// The identifier's pseudonym.
    pub identifier: Identifier,
    /// The customer it was linked to instead, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<CustomerId>,
    /// Whether it was unlinked because it was blocked.
    #[serde(default)]
    pub blocked: bool,
}

/// On the blocklist stream: an identifier value may never link a customer again. It names no
/// customer (the holder's stream records the unlink), so erasure leaves nothing here that ties
/// the pseudonym to a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierBlocked {
    /// The identifier's pseudonym, as `blocked_identifiers` holds it.
    pub identifier: Identifier,
}

/// How a touchpoint was resolved, kept with it so that its customer can be explained. It names
/// identifiers by their position in the touchpoint's `identifiers`, so it holds no personal data
/// and stays readable when the customer is erased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionRecord {
    /// Whether the touchpoint started the customer.
    pub created: bool,
    /// Identifiers linked to the customer by this touchpoint (positions).
    pub linked: Vec<usize>,
    /// Identifiers not linked (positions), with the reason.
    pub skipped: Vec<SkippedAt>,
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

/// An identifier of a touchpoint, by position, that was not linked, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedAt {
    /// Its position in the touchpoint's `identifiers`.
    pub identifier: usize,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

impl TouchpointRecorded {
    /// The identifiers this touchpoint linked to its customer.
    pub fn linked(&self) -> Vec<&Identifier> {
        self.resolution
            .linked
            .iter()
            .filter_map(|&i| self.identifiers.get(i))
            .collect()
    }

    /// The identifiers this touchpoint carried but did not link, with the reason.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.resolution
            .skipped
            .iter()
            .filter_map(|s| {
                self.identifiers
                    .get(s.identifier)
                    .map(|identifier| Skipped {
                        identifier: identifier.clone(),
                        reason: s.reason.clone(),
                    })
            })
            .collect()
    }
}

/// The members of a stored touchpoint that stay readable: no personal data.
#[derive(Serialize)]
struct ClearBody<'a> {
    channel: Channel,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a Action>,
}

/// The members of a stored touchpoint that are sealed before resolution.
#[derive(Serialize)]
struct PersonalBody<'a> {
    identifiers: &'a [Identifier],
    #[serde(skip_serializing_if = "Map::is_empty")]
    properties: &'a Map<String, Value>,
    /// A traits update's personal traits (all but the clear ones), as an action whose members
    /// are added to the clear action's when opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a Action>,
}

/// A touchpoint's stored form, encoded up to its resolution. Encoding and sealing are most of
/// the work of storing a touchpoint and need no database, so they happen before the write lock
/// is taken; under the lock only the small [`ResolutionRecord`] is sealed and the event key is
/// wrapped with the customer's key (see [`crate::privacy`]).
///
/// Opened ([`crate::privacy::open_payload`]), the payload reads as [`TouchpointRecorded`].
#[derive(Debug)]
pub struct EncodedTouchpoint {
    /// The clear members as a JSON object's text without its closing brace; it always holds
    /// at least one member.
    open: String,
    /// Identifiers, properties and traits.
    personal: SealedPart,
}

impl EncodedTouchpoint {
    /// Encodes everything of `touchpoint` that is stored, except how it was resolved; the
    /// personal part is sealed under a fresh event key.
    pub fn new(touchpoint: &Touchpoint) -> Result<Self, PrivacyError> {
        // A traits update keeps its clear traits readable and seals the rest.
        let (clear, personal) = match &touchpoint.action {
            Action::TraitsUpdated(traits) => {
                let (clear, personal) = traits.split_clear();
                (
                    (!clear.is_empty()).then_some(Action::TraitsUpdated(clear)),
                    (!personal.is_empty()).then_some(Action::TraitsUpdated(personal)),
                )
            }
            _ => (None, None),
        };
        let traits = matches!(touchpoint.action, Action::TraitsUpdated(_));
        let mut open = serde_json::to_string(&ClearBody {
            channel: touchpoint.channel,
            source: &touchpoint.source,
            action: if traits {
                clear.as_ref()
            } else {
                Some(&touchpoint.action)
            },
        })
        .map_err(|e| PrivacyError::Malformed(e.to_string()))?;
        // A struct serializes as `{...}`; dropping the brace leaves room for one more member.
        open.pop();
        // A struct serializes as a JSON object.
        let personal = serde_json::to_vec(&PersonalBody {
            identifiers: &touchpoint.identifiers,
            properties: &touchpoint.properties,
            action: personal.as_ref(),
        })
        .map_err(|e| PrivacyError::Malformed(e.to_string()))?;
        Ok(Self {
            open,
            personal: SealedPart::seal_json(&personal)?,
        })
    }

    /// The stored event: the touchpoint with its resolution, under the action's event type,
    /// its personal part sealed for `customer`, the customer whose stream it goes to.
    pub fn into_event(
        self,
        event_type: &str,
        resolution: &ResolutionRecord,
        customer: &CustomerKey,
    ) -> Result<NewEvent, EnvelopeError> {
        let invalid = |reason: String| EnvelopeError::InvalidPayload {
            event_type: event_type.to_owned(),
            reason,
        };
        let sealed = self
            .personal
            .finish(None, customer)
            .map_err(|e| invalid(e.to_string()))?;
        let mut payload = self.open;
        payload.push_str(",\"resolution\":");
        payload.push_str(&serde_json::to_string(resolution).map_err(|e| invalid(e.to_string()))?);
        payload.push_str(",\"");
        payload.push_str(SEALED_FIELD);
        payload.push_str("\":");
        payload.push_str(&sealed.to_json());
        payload.push('}');
        NewEvent::encoded(event_type.to_owned(), payload)
    }
}

impl ResolutionRecord {
    /// The record of `resolution`, decided on pseudonyms; `position` finds a pseudonym's place
    /// in the touchpoint's identifiers.
    pub fn of(resolution: &Resolution, position: impl Fn(&Identifier) -> Option<usize>) -> Self {
        Self {
            created: resolution.created,
            linked: resolution.links.iter().filter_map(&position).collect(),
            skipped: resolution
                .skipped
                .iter()
                .filter_map(|s| {
                    position(&s.identifier).map(|identifier| SkippedAt {
                        identifier,
                        reason: s.reason.clone(),
                    })
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
    #[serde(default)]
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
    #[serde(default)]
    pub evidence: Vec<Identifier>,
    /// The touchpoint (or correction) that caused the merge.
    pub cause: EventId,
    /// The version of the identity rules that decided.
    pub rules_version: u32,
}

/// On the live customer's stream: the customer was erased. Their keys are destroyed, so the
/// personal part of every event of theirs reads as erased; the events themselves stay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerErased {
    /// Every customer whose key was destroyed: this one and those merged into it.
    pub customers: Vec<CustomerId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityRules;
    use crate::privacy::{open_payload, MasterKey};
    use crate::touchpoint::{RawTouchpoint, TimeBounds};
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
        let touchpoint = raw
            .validate(&rules, TimeBounds::at(chrono::Utc::now()))
            .unwrap();
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
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, _) = master.new_customer_key();
        let event = EncodedTouchpoint::new(&touchpoint)
            .unwrap()
            .into_event(
                touchpoint.action.event_type(),
                &ResolutionRecord::of(&resolution, |p| {
                    touchpoint.identifiers.iter().position(|i| i == p)
                }),
                &key,
            )
            .unwrap();
        assert_eq!(event.event_type(), "store_visited");
        assert!(
            !event.payload().contains("13912340001") && !event.payload().contains("tablet"),
            "identifiers are sealed: {}",
            event.payload()
        );
        let payload: Value = serde_json::from_str(event.payload()).unwrap();
        assert_eq!(
            payload["action"]["store_id"], "SH-1",
            "what happened stays readable"
        );
        let opened = open_payload(payload.clone(), Some(&key)).unwrap();
        let stored = read_back("store_visited", opened);
        let erased = open_payload(payload, None).unwrap();
        assert_eq!(erased["erased"], true);
        assert!(erased.get("identifiers").is_none());
        assert_eq!(stored.channel, touchpoint.channel);
        assert_eq!(stored.source, "wifi");
        assert_eq!(stored.identifiers, touchpoint.identifiers);
        assert_eq!(stored.action, touchpoint.action);
        assert_eq!(stored.properties.get("floor"), Some(&json!(2)));
        assert_eq!(stored.linked(), vec![&resolution.links[0]]);
        assert_eq!(stored.skipped(), resolution.skipped);
        assert_eq!(
            erased["resolution"]["linked"],
            json!([1]),
            "readable when erased"
        );
        assert!(stored.resolution.created);
        assert_eq!(stored.resolution.rules_version, 3);
    }

    /// An opened touchpoint payload read as its typed event, which must be a touchpoint of
    /// `event_type`.
    fn read_back(event_type: &str, opened: Value) -> TouchpointRecorded {
        match CustomerEvent::decode(event_type, opened).unwrap() {
            CustomerEvent::Touchpoint {
                event_type: read,
                recorded,
            } => {
                assert_eq!(read, event_type);
                *recorded
            }
            other => panic!("a touchpoint, not {other:?}"),
        }
    }

    #[test]
    fn the_kind_of_an_event_is_read_from_its_type() {
        for (kind, name) in EventKind::NAMED {
            assert_eq!(EventKind::of(name), kind);
            assert_eq!(kind.name(), Some(name));
            assert!(!is_touchpoint(name));
        }
        for touchpoint in [
            "order_placed",
            "page_viewed",
            "traits_updated",
            "coupon_redeemed",
        ] {
            assert_eq!(EventKind::of(touchpoint), EventKind::Touchpoint);
            assert!(is_touchpoint(touchpoint));
        }
        assert_eq!(EventKind::Touchpoint.name(), None);
        let separations: Vec<&str> = EventKind::NAMED
            .iter()
            .filter(|(kind, _)| kind.is_separation())
            .map(|(_, name)| *name)
            .collect();
        assert_eq!(
            separations,
            [
                MERGE_UNDONE,
                CUSTOMER_RESTORED,
                CUSTOMER_SPLIT,
                CUSTOMER_SPLIT_OFF
            ]
        );
    }

    #[test]
    fn every_customer_event_reads_back_from_its_type_and_members() {
        let phone = Identifier {
            kind: crate::identifier::IdentifierKind::new("phone").unwrap(),
            value: "+8613912340001".into(),
        };
        let (a, b) = (CustomerId::new(), CustomerId::new());
        let separation = Separation {
            other: b,
            streams: vec![b],
            touchpoints: vec![7],
            excluded: vec![9],
            released: vec![],
            kept: vec![11],
            identifiers: vec![phone.clone()],
        };
        let events = [
            CustomerEvent::Merged(CustomerMerged {
                absorbed: b,
                evidence: vec![phone.clone()],
                cause: EventId::new(),
                rules_version: 2,
            }),
            CustomerEvent::MergedInto(CustomerMergedInto {
                survivor: a,
                evidence: vec![phone.clone()],
                cause: EventId::new(),
                rules_version: 2,
            }),
            CustomerEvent::Erased(CustomerErased {
                customers: vec![a, b],
            }),
            CustomerEvent::MergeUndone(separation.clone()),
            CustomerEvent::Restored(separation.clone()),
            CustomerEvent::Split(separation.clone()),
            CustomerEvent::SplitOff(separation),
            CustomerEvent::IdentifierLinked(IdentifierLinked {
                identifier: phone.clone(),
                from: Some(b),
            }),
            CustomerEvent::IdentifierUnlinked(IdentifierUnlinked {
                identifier: phone.clone(),
                to: None,
                blocked: true,
            }),
            CustomerEvent::IdentifierBlocked(IdentifierBlocked { identifier: phone }),
        ];
        let mut kinds = std::collections::HashSet::new();
        for event in events {
            let event_type = event.event_type().to_owned();
            assert_eq!(EventKind::of(&event_type), event.kind());
            let decoded = CustomerEvent::decode(&event_type, event.payload().unwrap()).unwrap();
            assert_eq!(decoded, event);
            kinds.insert(event.kind());
        }
        assert_eq!(kinds.len(), EventKind::NAMED.len(), "every named kind");
        // A payload that is not the event's shape is refused, naming the type.
        let e = CustomerEvent::decode(CUSTOMER_MERGED, json!({"absorbed": 3})).unwrap_err();
        assert_eq!(e.event_type, CUSTOMER_MERGED);
    }

    #[test]
    fn a_traits_update_keeps_only_its_clear_traits_readable() {
        let rules = IdentityRules::default();
        let raw: RawTouchpoint = serde_json::from_value(json!({
            "event_id": "0192f0c4-7c1e-7a33-9d5e-1b2c3d4e5f61", "type": "traits_updated",
            "channel": "membership_desk", "source": "desk", "occurred_at": "2026-03-08T09:30:15+08:00",
            "identifiers": {"phone": "13912340001"},
            "traits": {"name": "Li Wei", "birthday": "1990-04-01", "city": "Shanghai",
                       "gender": "female", "vip_note": "prefers calls"}
        }))
        .unwrap();
        let touchpoint = raw
            .validate(&rules, TimeBounds::at(chrono::Utc::now()))
            .unwrap();
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, _) = master.new_customer_key();
        let resolution = Resolution {
            customer: CustomerId::new(),
            created: true,
            merges: vec![],
            links: vec![],
            skipped: vec![],
            rules_version: 1,
        };
        let event = EncodedTouchpoint::new(&touchpoint)
            .unwrap()
            .into_event(
                "traits_updated",
                &ResolutionRecord::of(&resolution, |_| None),
                &key,
            )
            .unwrap();
        for personal in ["Li Wei", "1990", "prefers calls", "13912340001"] {
            assert!(!event.payload().contains(personal), "{personal} is sealed");
        }
        let payload: Value = serde_json::from_str(event.payload()).unwrap();
        assert_eq!(payload["action"]["city"], "Shanghai");
        assert_eq!(payload["action"]["gender"], "female");
        let opened = open_payload(payload.clone(), Some(&key)).unwrap();
        let stored = read_back("traits_updated", opened);
        assert_eq!(
            stored.action, touchpoint.action,
            "opened, the traits read whole"
        );
        let erased = open_payload(payload, None).unwrap();
        assert_eq!(erased["action"]["city"], "Shanghai");
        assert!(erased["action"].get("name").is_none());
    }
}
