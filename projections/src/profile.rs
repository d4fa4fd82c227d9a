//! The customer profile: what a customer's history adds up to, without personal data.
//!
//! A profile is a fold over the events of one customer's stream. When a customer is merged into
//! another, the survivor's profile absorbs the absorbed one's ([`Profile::absorb`]): every figure
//! here is a sum, a count, a minimum or a maximum, so absorbing equals having folded both
//! histories into one. Personal data (identifiers, traits) stays sealed in the events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Timelike, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{CustomerMerged, CustomerMergedInto, EventKind, Separation};

use crate::holdings::Holdings;
use patron_domain::touchpoint::{Channel, ConsentPurpose, LineItem, Money};
use patron_domain::RecordedEvent;
use serde::{Deserialize, Serialize};

/// A customer's consent for one purpose, as last given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Given (`true`) or withdrawn.
    pub granted: bool,
    /// When it was given or withdrawn.
    pub at: DateTime<Utc>,
}

/// Money per currency, in minor units.
pub type Amounts = BTreeMap<String, i64>;

const ORDER_PLACED: &str = "order_placed";
const ORDER_REFUNDED: &str = "order_refunded";
const CONSENT_CHANGED: &str = "consent_changed";
const TRAITS_UPDATED: &str = "traits_updated";

/// One customer's profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The customer this profile now belongs to, once merged into another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<CustomerId>,
    /// Whether the customer was erased.
    #[serde(default)]
    pub erased: bool,
    /// The first touchpoint's time.
    pub first_seen: Option<DateTime<Utc>>,
    /// The last touchpoint's time.
    pub last_seen: Option<DateTime<Utc>>,
    /// Touchpoints, all channels.
    pub touchpoints: u64,
    /// Touchpoints per channel.
    pub by_channel: BTreeMap<String, u64>,
    /// Touchpoints per event type.
    pub by_type: BTreeMap<String, u64>,
    /// Touchpoints per hour of the day (UTC), 24 counts.
    pub by_hour: Vec<u64>,
    /// Orders placed.
    pub orders: u64,
    /// Orders with a discount on at least one line.
    pub discounted_orders: u64,
    /// Order totals per currency (saturating at `i64::MAX`, never wrapping).
    pub revenue: Amounts,
    /// Refunds per currency (saturating likewise).
    pub refunded: Amounts,
    /// The first order's time.
    pub first_order_at: Option<DateTime<Utc>>,
    /// The last order's time.
    pub last_order_at: Option<DateTime<Utc>>,
    /// Spend per product category (after discounts, minor units of any currency).
    pub category_spend: BTreeMap<String, i64>,
    /// Current consent per purpose.
    pub consent: BTreeMap<ConsentPurpose, Consent>,
    /// Every order, oldest first: what windowed figures (spend in the last 365 days, RFM,
    /// lifecycle) are computed from.
    #[serde(default)]
    pub order_log: Vec<OrderEntry>,
    /// Touchpoints per day, by event type and channel (`page_viewed@app`): `(day, count)`
    /// pairs in day order, days counted from 1970-01-01 (UTC). What segment windows count.
    #[serde(default)]
    pub daily: BTreeMap<String, Vec<(i64, u32)>>,
    /// The clear traits (`city`, `province`, `gender`: see
    /// [`patron_domain::touchpoint::CLEAR_TRAITS`]) as last given; dropped on erasure.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, TraitValue>,
    /// The streams and moved touchpoints this customer is made of besides its own stream.
    #[serde(default, skip_serializing_if = "Holdings::is_empty")]
    pub holdings: Holdings,
}

/// A clear trait's value and when it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitValue {
    /// The value.
    pub value: String,
    /// When the touchpoint that gave it happened.
    pub at: DateTime<Utc>,
}

/// Keeps the newer of a trait's values.
fn set_trait(traits: &mut BTreeMap<String, TraitValue>, name: &str, value: TraitValue) {
    let newer = traits.get(name).is_none_or(|t| t.at <= value.at);
    if newer {
        traits.insert(name.to_owned(), value);
    }
}

/// Adds `n` touchpoints on `day` to day-ordered counts.
fn bump(days: &mut Vec<(i64, u32)>, day: i64, n: u32) {
    // Touchpoints mostly arrive in time order: look at the end first.
    match days.last_mut() {
        Some((last, count)) if *last == day => *count = count.saturating_add(n),
        Some((last, _)) if *last < day => days.push((day, n)),
        None => days.push((day, n)),
        _ => match days.binary_search_by_key(&day, |(d, _)| *d) {
            Ok(i) => days[i].1 = days[i].1.saturating_add(n),
            Err(i) => days.insert(i, (day, n)),
        },
    }
}

/// The day of a moment: days since 1970-01-01, UTC.
pub fn day_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

/// One order in a profile's order log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderEntry {
    /// When it was placed (stored as microseconds since 1970-01-01 UTC).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub at: DateTime<Utc>,
    /// Its currency.
    pub currency: String,
    /// Its total, in minor units.
    pub total_minor: i64,
}

/// The readable part of a touchpoint's payload, as far as the profile needs it. The action is
/// read as a plain struct of the fields the profile uses (its type is the event's type): an
/// internally tagged enum would buffer every action before reading it.
#[derive(Deserialize)]
struct ClearTouchpoint {
    channel: Channel,
    /// Absent when sealed (a traits update).
    #[serde(default)]
    action: Option<ActionFields>,
}

/// The fields of an order, a refund or a consent change the profile reads.
#[derive(Deserialize)]
struct ActionFields {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    items: Vec<LineItem>,
    #[serde(default)]
    total_minor: Option<i64>,
    #[serde(default)]
    amount: Option<Money>,
    #[serde(default)]
    purpose: Option<ConsentPurpose>,
    #[serde(default)]
    granted: Option<bool>,
    #[serde(default)]
    gender: Option<String>,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    province: Option<String>,
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Adds `amount` to the money kept under `key`, saturating: validated amounts are at most
/// [`MAX_AMOUNT_MINOR`](patron_domain::touchpoint::MAX_AMOUNT_MINOR) each, so a sum reaches
/// `i64::MAX` only after some 922,000 of the largest orders; it then stays there instead of
/// wrapping to a negative figure.
fn add_money<K: Ord>(into: &mut BTreeMap<K, i64>, key: K, amount: i64) {
    let sum = into.entry(key).or_default();
    *sum = sum.saturating_add(amount);
}

fn add_all<K: Ord + Clone>(into: &mut BTreeMap<K, i64>, from: &BTreeMap<K, i64>) {
    for (k, v) in from {
        add_money(into, k.clone(), *v);
    }
}

impl Profile {
    /// Folds a touchpoint of this customer in. Events that are not touchpoints (merges,
    /// erasures) are handled by the caller, who sees both customers.
    pub fn apply_touchpoint(&mut self, event: &RecordedEvent) -> Result<(), serde_json::Error> {
        let touchpoint: ClearTouchpoint = serde_json::from_str(&event.payload)?;
        let at = event.occurred_at;
        self.first_seen = earliest(self.first_seen, Some(at));
        self.last_seen = latest(self.last_seen, Some(at));
        self.touchpoints += 1;
        *self
            .by_channel
            .entry(touchpoint.channel.as_str().to_owned())
            .or_default() += 1;
        *self.by_type.entry(event.event_type.clone()).or_default() += 1;
        if self.by_hour.len() != 24 {
            self.by_hour.resize(24, 0);
        }
        self.by_hour[at.hour() as usize] += 1;
        let key = format!("{}@{}", event.event_type, touchpoint.channel.as_str());
        bump(self.daily.entry(key).or_default(), day_of(at), 1);
        let Some(action) = touchpoint.action else {
            return Ok(());
        };
        match event.event_type.as_str() {
            ORDER_PLACED => {
                let (Some(currency), Some(total_minor)) = (action.currency, action.total_minor)
                else {
                    return Ok(());
                };
                self.orders += 1;
                add_money(&mut self.revenue, currency.clone(), total_minor);
                if action.items.iter().any(|i| i.discount_minor > 0) {
                    self.discounted_orders += 1;
                }
                for item in &action.items {
                    if let Some(category) = &item.category {
                        add_money(
                            &mut self.category_spend,
                            category.clone(),
                            item.amount_minor(),
                        );
                    }
                }
                self.first_order_at = earliest(self.first_order_at, Some(at));
                self.last_order_at = latest(self.last_order_at, Some(at));
                let entry = OrderEntry {
                    at,
                    currency,
                    total_minor,
                };
                let place = self.order_log.partition_point(|o| *o <= entry);
                self.order_log.insert(place, entry);
            }
            ORDER_REFUNDED => {
                if let Some(amount) = action.amount {
                    add_money(&mut self.refunded, amount.currency, amount.minor);
                }
            }
            CONSENT_CHANGED => {
                if let (Some(purpose), Some(granted)) = (action.purpose, action.granted) {
                    let newer = self.consent.get(&purpose).is_none_or(|c| c.at <= at);
                    if newer {
                        self.consent.insert(purpose, Consent { granted, at });
                    }
                }
            }
            TRAITS_UPDATED => {
                for (name, value) in [
                    ("gender", action.gender),
                    ("city", action.city),
                    ("province", action.province),
                ] {
                    if let Some(value) = value {
                        set_trait(&mut self.traits, name, TraitValue { value, at });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Takes in the profile of a customer merged into this one: the result is what folding
    /// both histories into this profile would have given.
    pub fn absorb(&mut self, other: &Profile) {
        self.first_seen = earliest(self.first_seen, other.first_seen);
        self.last_seen = latest(self.last_seen, other.last_seen);
        self.touchpoints += other.touchpoints;
        for (k, v) in &other.by_channel {
            *self.by_channel.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_type {
            *self.by_type.entry(k.clone()).or_default() += v;
        }
        // An empty profile keeps no hours: absorbing one adds none.
        if self.by_hour.len() != 24 && !other.by_hour.is_empty() {
            self.by_hour.resize(24, 0);
        }
        for (hour, n) in other.by_hour.iter().enumerate().take(24) {
            self.by_hour[hour] += n;
        }
        self.orders += other.orders;
        self.discounted_orders += other.discounted_orders;
        add_all(&mut self.revenue, &other.revenue);
        add_all(&mut self.refunded, &other.refunded);
        add_all(&mut self.category_spend, &other.category_spend);
        self.first_order_at = earliest(self.first_order_at, other.first_order_at);
        self.last_order_at = latest(self.last_order_at, other.last_order_at);
        self.order_log.extend(other.order_log.iter().cloned());
        self.order_log.sort();
        for (key, days) in &other.daily {
            let mine = self.daily.entry(key.clone()).or_default();
            for (day, n) in days {
                bump(mine, *day, *n);
            }
        }
        for (name, value) in &other.traits {
            set_trait(&mut self.traits, name, value.clone());
        }
        for (purpose, consent) in &other.consent {
            let newer = self.consent.get(purpose).is_none_or(|c| c.at < consent.at);
            if newer {
                self.consent.insert(*purpose, *consent);
            }
        }
    }

    /// Folds the profile again from `touchpoints` (in log order): every figure is recomputed;
    /// the holdings, the standing (merged, erased) stay. What a separation does to the
    /// customers it concerns.
    pub fn refold(&mut self, touchpoints: &[RecordedEvent]) -> Result<(), FoldError> {
        *self = Profile {
            holdings: std::mem::take(&mut self.holdings),
            merged_into: self.merged_into,
            erased: self.erased,
            ..Profile::default()
        };
        for event in touchpoints {
            self.apply_touchpoint(event).map_err(|source| FoldError {
                position: event.position,
                source,
            })?;
        }
        if self.erased {
            self.traits.clear();
        }
        Ok(())
    }

    /// The channel with the most touchpoints (ties: the first by name).
    pub fn preferred_channel(&self) -> Option<&str> {
        let mut best: Option<(&str, u64)> = None;
        for (channel, n) in &self.by_channel {
            if best.is_none_or(|(_, m)| *n > m) {
                best = Some((channel, *n));
            }
        }
        best.map(|(c, _)| c)
    }

    /// The category with the most spend (ties: the first by name).
    pub fn favourite_category(&self) -> Option<&str> {
        let mut best: Option<(&str, i64)> = None;
        for (category, spend) in &self.category_spend {
            if best.is_none_or(|(_, m)| *spend > m) {
                best = Some((category, *spend));
            }
        }
        best.map(|(c, _)| c)
    }

    /// The hour of the day (UTC) with the most touchpoints.
    pub fn preferred_hour(&self) -> Option<u32> {
        let mut best: Option<(u32, u64)> = None;
        for (hour, n) in self.by_hour.iter().enumerate() {
            if *n > 0 && best.is_none_or(|(_, m)| *n > m) {
                best = Some((hour as u32, *n));
            }
        }
        best.map(|(h, _)| h)
    }

    /// Average order value in one currency, in minor units (rounded down), if any order.
    pub fn average_order_value(&self, currency: &str) -> Option<i64> {
        let revenue = *self.revenue.get(currency)?;
        let orders = i64::try_from(self.orders).ok().filter(|n| *n > 0)?;
        Some(revenue.div_euclid(orders))
    }

    /// Touchpoints of `key` (an event type in every channel, or `type@channel`) on the `days`
    /// days ending with the day of `as_of`.
    pub fn count_in_last(&self, key: &str, days: i64, as_of: DateTime<Utc>) -> u64 {
        let (last, first) = (day_of(as_of), day_of(as_of) - days + 1);
        let in_window = |per_day: &Vec<(i64, u32)>| -> u64 {
            let start = per_day.partition_point(|(d, _)| *d < first);
            per_day[start..]
                .iter()
                .take_while(|(d, _)| *d <= last)
                .map(|(_, n)| u64::from(*n))
                .sum()
        };
        if key.contains('@') {
            return self.daily.get(key).map_or(0, in_window);
        }
        let prefix = format!("{key}@");
        self.daily
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, per_day)| in_window(per_day))
            .sum()
    }

    /// Share of orders with a discount, 0 to 1.
    pub fn promotion_sensitivity(&self) -> Option<f64> {
        (self.orders > 0).then(|| self.discounted_orders as f64 / self.orders as f64)
    }
}

/// What an event does to the profiles, given the customer whose stream holds it.
#[derive(Debug, PartialEq, Eq)]
pub enum ProfileChange {
    /// A touchpoint of the stream's customer.
    Touchpoint,
    /// `absorbed` was merged into the stream's customer.
    Absorbs(CustomerId),
    /// The stream's customer was merged into `survivor` (whose profile absorbed it already).
    MergedAway(CustomerId),
    /// The stream's customer was erased.
    Erased,
    /// The stream's customer gave up a part of itself to another customer.
    Gives(Separation),
    /// The stream's customer is a part separated from another one: a customer again.
    Takes(Separation),
    /// Nothing a profile shows (an identifier linked or unlinked by hand).
    Nothing,
}

/// What `event` does to profiles.
pub fn change_of(event: &RecordedEvent) -> Result<ProfileChange, serde_json::Error> {
    Ok(match EventKind::of(&event.event_type) {
        EventKind::Merged => {
            let merged: MergedHead = serde_json::from_str(&event.payload)?;
            ProfileChange::Absorbs(merged.absorbed)
        }
        EventKind::MergedInto => {
            let merged: MergedIntoHead = serde_json::from_str(&event.payload)?;
            ProfileChange::MergedAway(merged.survivor)
        }
        EventKind::Erased => ProfileChange::Erased,
        EventKind::Restored | EventKind::SplitOff => {
            ProfileChange::Takes(serde_json::from_str(&event.payload)?)
        }
        EventKind::MergeUndone | EventKind::Split => {
            ProfileChange::Gives(serde_json::from_str(&event.payload)?)
        }
        EventKind::IdentifierLinked
        | EventKind::IdentifierUnlinked
        | EventKind::IdentifierBlocked => ProfileChange::Nothing,
        EventKind::Touchpoint => ProfileChange::Touchpoint,
    })
}

/// The live customers whose profiles a batch's separations left to fold again
/// ([`Profile::refold`]) from the touchpoints their holdings name, up to the batch's last
/// position.
pub type Refolds = BTreeSet<CustomerId>;

/// The readable head of a [`CustomerMerged`] payload (its evidence is sealed).
#[derive(Deserialize)]
struct MergedHead {
    absorbed: CustomerId,
}

/// The readable head of a [`CustomerMergedInto`] payload.
#[derive(Deserialize)]
struct MergedIntoHead {
    survivor: CustomerId,
}

// The heads read the same fields as the full events.
const _: fn(CustomerMerged) -> CustomerId = |m| m.absorbed;
const _: fn(CustomerMergedInto) -> CustomerId = |m| m.survivor;

/// Applies `events`, in order, to `profiles`, which must hold (or default) every customer
/// [`touched`] names. Replaying a log in batches of any size gives the same profiles.
pub fn fold(
    profiles: &mut HashMap<CustomerId, Profile>,
    events: &[RecordedEvent],
) -> Result<Refolds, FoldError> {
    let mut refolds = Refolds::new();
    for event in events {
        let Some(customer) = CustomerId::from_stream(&event.stream_id) else {
            continue;
        };
        let bad = |source| FoldError {
            position: event.position,
            source,
        };
        match change_of(event).map_err(bad)? {
            ProfileChange::Touchpoint => profiles
                .entry(customer)
                .or_default()
                .apply_touchpoint(event)
                .map_err(bad)?,
            ProfileChange::Absorbs(absorbed) => {
                let mut gone = profiles.remove(&absorbed).unwrap_or_default();
                let survivor = profiles.entry(customer).or_default();
                survivor.absorb(&gone);
                survivor.holdings.absorb(absorbed, &gone.holdings);
                if refolds.remove(&absorbed) {
                    refolds.insert(customer);
                }
                // A merged customer's row keeps only what a correction needs to restore it:
                // its figures live on in the survivor's.
                gone = Profile {
                    merged_into: Some(customer),
                    erased: gone.erased,
                    holdings: std::mem::take(&mut gone.holdings),
                    ..Profile::default()
                };
                profiles.insert(absorbed, gone);
            }
            ProfileChange::MergedAway(survivor) => {
                profiles.entry(customer).or_default().merged_into = Some(survivor);
            }
            ProfileChange::Erased => {
                let profile = profiles.entry(customer).or_default();
                profile.erased = true;
                profile.traits.clear();
            }
            ProfileChange::Gives(separation) => {
                profiles
                    .entry(customer)
                    .or_default()
                    .holdings
                    .give(&separation);
                refolds.insert(customer);
            }
            ProfileChange::Takes(separation) => {
                let part = profiles.entry(customer).or_default();
                part.merged_into = None;
                part.holdings = Holdings::of_part(customer, &separation);
                refolds.insert(customer);
            }
            ProfileChange::Nothing => {}
        }
    }
    Ok(refolds)
}

/// Every customer whose profile `events` read or change: each stream's customer and each
/// absorbed one.
pub fn touched(events: &[RecordedEvent]) -> Result<BTreeSet<CustomerId>, FoldError> {
    let mut customers = BTreeSet::new();
    for event in events {
        let Some(customer) = CustomerId::from_stream(&event.stream_id) else {
            continue;
        };
        customers.insert(customer);
        if let ProfileChange::Absorbs(absorbed) = change_of(event).map_err(|source| FoldError {
            position: event.position,
            source,
        })? {
            customers.insert(absorbed);
        }
    }
    Ok(customers)
}

/// An event whose payload the profile cannot read.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position} does not read as a profile event: {source}")]
pub struct FoldError {
    /// The event's position.
    pub position: u64,
    /// Why.
    pub source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_counts_stay_in_day_order_and_windows_end_on_the_day() {
        let mut days = Vec::new();
        for day in [10, 12, 12, 11, 9, 15] {
            bump(&mut days, day, 1);
        }
        assert_eq!(days, vec![(9, 1), (10, 1), (11, 1), (12, 2), (15, 1)]);

        let mut profile = Profile::default();
        profile.daily.insert("page_viewed@web".into(), days.clone());
        profile
            .daily
            .insert("page_viewed@app".into(), vec![(12, 3), (16, 1)]);
        profile
            .daily
            .insert("page_viewedx@web".into(), vec![(12, 100)]);
        let at = |day: i64| DateTime::from_timestamp(day * 86_400 + 3_600, 0).unwrap();
        // The 3 days ending on day 12: days 10, 11 and 12.
        assert_eq!(profile.count_in_last("page_viewed@web", 3, at(12)), 4);
        // Every channel of the type, and no other type sharing its prefix.
        assert_eq!(profile.count_in_last("page_viewed", 3, at(12)), 7);
        assert_eq!(profile.count_in_last("page_viewed", 1, at(16)), 1);
        assert_eq!(profile.count_in_last("order_placed", 365, at(16)), 0);
    }

    #[test]
    fn absorbing_equals_folding_both_histories() {
        let mut a = Profile::default();
        bump(a.daily.entry("x@web".into()).or_default(), 5, 2);
        a.touchpoints = 2;
        let mut b = Profile::default();
        bump(b.daily.entry("x@web".into()).or_default(), 3, 1);
        bump(b.daily.entry("x@web".into()).or_default(), 5, 1);
        b.touchpoints = 2;
        a.absorb(&b);
        assert_eq!(a.daily["x@web"], vec![(3, 1), (5, 3)]);
        assert_eq!(a.touchpoints, 4);
    }
}
