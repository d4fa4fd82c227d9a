//! Personal data in the running system: opening sealed events for those allowed to read them,
//! erasing a customer, and expiring the quarantine's raw records.
//!
//! The model is in `docs/privacy.md`; the keys and the sealing are in
//! [`patron_domain::privacy`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Duration, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::is_touchpoint;
use patron_domain::events::{CustomerErased, CUSTOMER_ERASED};
use patron_domain::identifier::Identifier;
use patron_domain::privacy::{open_payload, CustomerKey, MasterKey, PrivacyError};
use patron_domain::{Metadata, NewEvent, Position, RecordedEvent};
use patron_projections::holdings::Holdings;
use serde_json::Value;
use thiserror::Error;

use crate::ingest::Ingestor;
use crate::store::{Erasure, EventStore, StoreError};

/// What went wrong opening events or erasing a customer.
#[derive(Debug, Error)]
pub enum PrivacyFailure {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A customer key or a sealed part did not open.
    #[error("customer {customer}: {source}")]
    Key {
        /// The customer whose key or data did not open.
        customer: CustomerId,
        /// Why.
        source: PrivacyError,
    },
    /// The customer to erase has no history.
    #[error("no customer {0}")]
    UnknownCustomer(CustomerId),
}

impl PrivacyFailure {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Key { .. } => "KEY_MISMATCH",
            Self::UnknownCustomer(_) => "UNKNOWN_CUSTOMER",
        }
    }
}

/// Opens the sealed personal part of stored events with their customers' keys.
#[derive(Clone, Debug)]
pub struct Opener {
    store: EventStore,
    master: MasterKey,
}

impl Opener {
    /// An opener reading customer keys from `store`, unwrapping them with `master`.
    pub fn new(store: EventStore, master: MasterKey) -> Self {
        Self { store, master }
    }

    /// The events with their payloads opened: personal members put back, or, for a customer
    /// whose key was destroyed, left out with `"erased": true`. Events of other streams and
    /// events with nothing sealed come back as they are.
    pub async fn open(
        &self,
        events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, PrivacyFailure> {
        let customers: Vec<CustomerId> = events
            .iter()
            .filter_map(|e| CustomerId::from_stream(&e.stream_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let wrapped = self.store.customer_keys(&customers).await?;
        let mut keys: HashMap<CustomerId, CustomerKey> = HashMap::with_capacity(wrapped.len());
        for (customer, wrapped) in wrapped {
            let key = self
                .master
                .unwrap(&wrapped)
                .map_err(|source| PrivacyFailure::Key { customer, source })?;
            keys.insert(customer, key);
        }
        events
            .into_iter()
            .map(|mut event| {
                let Some(customer) = CustomerId::from_stream(&event.stream_id) else {
                    return Ok(event);
                };
                let payload: Value =
                    serde_json::from_str(&event.payload).map_err(|e| PrivacyFailure::Key {
                        customer,
                        source: PrivacyError::Malformed(e.to_string()),
                    })?;
                let opened = open_payload(payload, keys.get(&customer))
                    .map_err(|source| PrivacyFailure::Key { customer, source })?;
                event.payload = opened.to_string();
                Ok(event)
            })
            .collect()
    }

    /// Every event of a customer (its live customer and every customer merged into it), opened,
    /// in log order.
    pub async fn history(
        &self,
        customer: CustomerId,
    ) -> Result<Vec<RecordedEvent>, PrivacyFailure> {
        let live = self.store.live_customer(customer).await?;
        let holdings = self.holdings(live).await?;
        self.history_of(live, &holdings).await
    }

    /// What a live customer holds besides its own stream, as its profile knows it: the
    /// streams merged into it and the touchpoints corrections moved in or out.
    async fn holdings(&self, live: CustomerId) -> Result<Holdings, PrivacyFailure> {
        match self.store.live_profile(live).await {
            Ok(profile) => Ok(profile.map(|p| p.holdings).unwrap_or_default()),
            // A profile that does not read holds nothing known; a store that does not answer
            // is an error.
            Err(StoreError::UnreadableProfile { .. }) => Ok(Holdings::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// The opened events of a live customer with `holdings`, in log order.
    async fn history_of(
        &self,
        live: CustomerId,
        holdings: &Holdings,
    ) -> Result<Vec<RecordedEvent>, PrivacyFailure> {
        // The profile's holdings name the touchpoints corrections moved; the aliases name
        // customers merged so recently that the profile has not absorbed them yet.
        let mut streams: BTreeSet<CustomerId> = holdings.all_streams(live).into_iter().collect();
        streams.extend(members(&self.store, live).await?);
        let mut events: BTreeMap<Position, RecordedEvent> = BTreeMap::new();
        for stream in streams {
            for event in self
                .store
                .read_stream(&stream.stream_id(), 1, usize::MAX)
                .await?
            {
                if !is_touchpoint(&event.event_type) || holdings.keeps(event.position) {
                    events.insert(event.position, event);
                }
            }
        }
        let moved_in: Vec<Position> = holdings.moved_in.iter().copied().collect();
        for event in self.store.events_at(&moved_in).await? {
            events.insert(event.position, event);
        }
        self.open(events.into_values().collect()).await
    }
}

/// The live customer and every customer merged into it.
async fn members(store: &EventStore, live: CustomerId) -> Result<Vec<CustomerId>, StoreError> {
    let mut members = vec![live];
    members.extend(store.absorbed_into(live).await?);
    Ok(members)
}

/// The identifiers a customer's opened events name: values (normalized, as ingested) and
/// pseudonyms (as the identity index keeps them).
#[derive(Debug, Default)]
struct Named {
    values: BTreeSet<Identifier>,
    pseudonyms: BTreeSet<Identifier>,
}

impl Named {
    /// Reads the identifiers an opened payload of `event_type` names. Touchpoints carry values
    /// (`identifiers`), and so does a merge's `evidence`; identity corrections name pseudonyms:
    /// `identifier` of `identifier_linked` and `identifier_unlinked` (unlinked, moved away or
    /// blocked), `identifiers` of splits and undone merges, on both sides.
    fn read(&mut self, event_type: &str, payload: &Value) {
        let list = |name: &str| -> Vec<Identifier> {
            let one = |item: &Value| {
                let identifier = item.get("identifier").unwrap_or(item);
                serde_json::from_value::<Identifier>(identifier.clone()).ok()
            };
            match payload.get(name) {
                Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
                Some(item @ Value::Object(_)) => one(item).into_iter().collect(),
                _ => Vec::new(),
            }
        };
        self.values.extend(list("evidence"));
        if is_touchpoint(event_type) {
            self.values.extend(list("identifiers"));
        } else {
            self.pseudonyms.extend(list("identifiers"));
            self.pseudonyms.extend(list("identifier"));
        }
    }
}

/// Whether a quarantined record (its text or its reason) holds a customer's identifier: by
/// value ([`holds_any`]), or, for identifiers known only by pseudonym (linked by hand, for
/// one), by a token of the record that normalizes to one of them.
struct Matcher<'a> {
    values: Vec<String>,
    phones: Vec<PhoneDigits>,
    /// The pseudonyms not accounted for by a known value, with their kinds.
    pseudonyms: BTreeSet<Identifier>,
    kinds: BTreeSet<String>,
    ingestor: &'a Ingestor,
}

impl<'a> Matcher<'a> {
    fn new(named: Named, ingestor: &'a Ingestor) -> Self {
        let known: BTreeSet<Identifier> =
            named.values.iter().map(|v| ingestor.pseudonym(v)).collect();
        let pseudonyms: BTreeSet<Identifier> = named
            .pseudonyms
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        let kinds = pseudonyms
            .iter()
            .map(|p| p.kind.as_str().to_owned())
            .collect();
        // Short values (a two-letter login) would match too much; phones are matched by digits.
        let values: Vec<String> = named
            .values
            .into_iter()
            .map(|v| v.value)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|v| v.chars().count() >= 6)
            .collect();
        let phones = values.iter().filter_map(|v| phone_digits(v)).collect();
        Self {
            values,
            phones,
            pseudonyms,
            kinds,
            ingestor,
        }
    }

    fn holds(&self, record: &str) -> bool {
        if holds_any(record, &self.values, &self.phones) {
            return true;
        }
        if self.pseudonyms.is_empty() {
            return false;
        }
        let rules = self.ingestor.rules();
        tokens(record).iter().any(|token| {
            self.kinds.iter().any(|kind| {
                rules.normalize(kind, token).is_ok_and(|identifier| {
                    self.pseudonyms
                        .contains(&self.ingestor.pseudonym(&identifier))
                })
            })
        })
    }
}

/// The pieces of a raw record that could be an identifier's value as sent: its fields (split at
/// the separators of CSV, JSON and `key=value` text), the words of each, and the runs of digits
/// and phone separators.
fn tokens(record: &str) -> BTreeSet<&str> {
    let mut found = BTreeSet::new();
    for field in record.split(|c: char| ",;\t|\"'{}[]=<>\n\r".contains(c)) {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        found.insert(field);
        found.extend(field.split_whitespace());
    }
    for run in record.split(|c: char| !(c.is_ascii_digit() || " -+().".contains(c))) {
        let run = run.trim();
        if run.chars().filter(char::is_ascii_digit).count() >= 7 {
            found.insert(run);
        }
    }
    found
}

/// Whether a raw record holds one of the values as a whole token (not inside a longer word or
/// number: a member card `2026` does not match a date in 2026), or one of the phone numbers in
/// any format: a run of digits and the separators phones are written with (spaces, `-`, `+`,
/// `(`, `)`, `.`) whose digits are the national number, with or without the country code or a
/// trunk `0`.
fn holds_any(record: &str, values: &[String], phones: &[PhoneDigits]) -> bool {
    let lower = record.to_lowercase();
    let whole = |value: &str| {
        let value = value.to_lowercase();
        lower.match_indices(&value).any(|(at, found)| {
            let before = lower[..at].chars().next_back();
            let after = lower[at + found.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    };
    if values.iter().any(|v| whole(v)) {
        return true;
    }
    if phones.is_empty() {
        return false;
    }
    record
        .split(|c: char| !(c.is_ascii_digit() || " -+().".contains(c)))
        .map(|run| run.chars().filter(char::is_ascii_digit).collect::<String>())
        .filter(|digits| !digits.is_empty())
        .any(|digits| phones.iter().any(|p| p.written_as(&digits)))
}

/// A phone number's digits as exports write them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PhoneDigits {
    country: String,
    national: String,
}

impl PhoneDigits {
    /// Whether `digits` (a run of digits from a record) is this number.
    fn written_as(&self, digits: &str) -> bool {
        let n = &self.national;
        let c = &self.country;
        digits == n
            || digits == format!("0{n}")
            || digits == format!("{c}{n}")
            || digits == format!("00{c}{n}")
    }
}

/// The digits of an E.164 phone number, if the value is one.
fn phone_digits(value: &str) -> Option<PhoneDigits> {
    if !value.starts_with('+') {
        return None;
    }
    let number = phonenumber::parse(None, value).ok()?;
    let national = number.national().value().to_string();
    (national.len() >= 7).then(|| PhoneDigits {
        country: number.code().value().to_string(),
        national,
    })
}

/// A test of whether a raw record (a quarantined record's text or reason) holds one of the
/// identifier `values` (as normalized at ingestion): values of 6 characters or more as whole
/// tokens, phones by their digits in any export format (see `docs/privacy.md`). Shorter values
/// (a two-letter login) would match too much and are left out.
pub fn record_matcher(values: impl IntoIterator<Item = String>) -> impl Fn(&str) -> bool + Sync {
    let values: Vec<String> = values
        .into_iter()
        .filter(|v| v.chars().count() >= 6)
        .collect();
    let phones: Vec<PhoneDigits> = values.iter().filter_map(|v| phone_digits(v)).collect();
    move |record: &str| holds_any(record, &values, &phones)
}

/// Erases a customer: see [`EventStore::erase`]. Before the keys are destroyed, the customer's
/// events are opened to learn the identifiers they name (values, and the pseudonyms of
/// identifiers linked by hand), so that quarantined records holding them are removed too; the
/// touchpoints corrections moved to the customer from other streams are shredded in place.
/// `actor` and `reason` are recorded on the erasure's event.
#[tracing::instrument(name = "privacy.erase", skip_all, fields(customer = %customer))]
pub async fn erase(
    ingestor: &Ingestor,
    customer: CustomerId,
    actor: &str,
    reason: &str,
) -> Result<Erasure, PrivacyFailure> {
    let store = ingestor.store();
    let opener = Opener::new(store.clone(), ingestor.master_key().clone());
    let live = store.live_customer(customer).await?;
    let holdings = opener.holdings(live).await?;
    let history = opener.history_of(live, &holdings).await?;
    if history.is_empty() {
        return Err(PrivacyFailure::UnknownCustomer(customer));
    }
    let mut named = Named::default();
    for event in &history {
        if let Ok(payload) = serde_json::from_str::<Value>(&event.payload) {
            named.read(&event.event_type, &payload);
        }
    }
    named.pseudonyms.extend(store.held_by(live).await?);
    let matcher = Matcher::new(named, ingestor);
    let holds = |record: &str| matcher.holds(record);
    let moved_in: Vec<Position> = holdings.moved_in.iter().copied().collect();
    let metadata = Metadata {
        actor: Some(actor.to_owned()),
        reason: Some(reason.to_owned()),
        ..Metadata::default()
    };
    let erasure = store
        .erase(customer, &moved_in, &holds, |_, all| {
            NewEvent::new(
                CUSTOMER_ERASED,
                &CustomerErased {
                    customers: all.to_vec(),
                },
            )
            .map(|e| e.with_metadata(metadata.clone()))
            .map_err(|e| StoreError::Abandoned {
                reason: format!("cannot encode {CUSTOMER_ERASED}: {e}"),
            })
        })
        .await?;
    Ok(erasure)
}

/// Blanks the raw text of quarantined records older than `days`; returns how many expired.
pub async fn expire_quarantine(store: &EventStore, days: u32) -> Result<u64, StoreError> {
    store
        .expire_quarantine(Utc::now() - Duration::days(i64::from(days)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_is_found_in_any_export_format() {
        let values = vec!["+8613912340001".to_owned(), "mc-20260".to_owned()];
        let phones = vec![phone_digits("+8613912340001").unwrap()];
        assert_eq!(phones[0].national, "13912340001");
        for record in [
            r#"{"identifiers":{"phone":"139 1234 0001"}}"#,
            "2026-03-08,139-1234-0001,SH-1",
            r#"{"phone":"+86 139 1234 0001"}"#,
            "R-7,008613912340001,x",
            "card MC-20260 at the desk",
        ] {
            assert!(holds_any(record, &values, &phones), "{record}");
        }
        for record in [
            "139 1234 0002",
            "order 913912340001",
            "2026-03-08 13:91:23",
            "card MC-202601",
            "xmc-20260",
        ] {
            assert!(!holds_any(record, &values, &phones), "{record}");
        }
    }

    #[test]
    fn identifiers_are_read_wherever_a_payload_names_them() {
        let mut named = Named::default();
        named.read(
            "order_placed",
            &serde_json::json!({
                "identifiers": [{"kind": "phone", "value": "+8613912340001"},
                                {"kind": "email", "value": "a@b.cn"}],
                "resolution": {"linked": [0], "skipped": [{"identifier": 1, "limit": 1}]},
            }),
        );
        named.read(
            "customer_merged",
            &serde_json::json!({"evidence": [{"kind": "member_id", "value": "M-77"}]}),
        );
        named.read(
            "identifier_linked",
            &serde_json::json!({"identifier": {"kind": "phone", "value": "p1"}}),
        );
        named.read(
            "identifier_unlinked",
            &serde_json::json!({"identifier": {"kind": "email", "value": "p2"}, "blocked": true}),
        );
        named.read(
            "customer_split",
            &serde_json::json!({"identifiers": [{"kind": "phone", "value": "p3"}]}),
        );
        let values: Vec<&str> = named.values.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(
            values,
            ["a@b.cn", "M-77", "+8613912340001"],
            "by kind, then value"
        );
        let pseudonyms: Vec<&str> = named.pseudonyms.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(pseudonyms, ["p2", "p1", "p3"]);
    }

    #[test]
    fn a_record_is_cut_into_the_tokens_a_value_could_be() {
        let found = tokens(r#"{"identifiers":{"phone":"139 1234 0239"},"note":"card=MC-1 x"}"#);
        for token in ["139 1234 0239", "MC-1", "card", "x", "phone"] {
            assert!(found.contains(token), "{token} in {found:?}");
        }
        let found = tokens("2026-03-08,+86 139-1234-0239,SH-1");
        assert!(found.contains("+86 139-1234-0239"), "{found:?}");
    }
}
