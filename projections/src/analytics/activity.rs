//! Customer activity in a compact form for analysis: every live customer's touchpoints and
//! orders in time order, folded from the event log.
//!
//! The analyses (cohorts, funnels, paths, attribution, campaign effect, data quality, lifetime
//! value, product associations) all read the same few facts of an event: whose it is, when it
//! happened, its type, channel and source, how late it was stored, and for an order its amount
//! and products. [`Activity`] holds those in about 24 bytes a touchpoint, so that a million
//! customers' histories fit in memory and each analysis is a pass over arrays. Names (event
//! types, channels, sources, currencies, SKUs) are interned as small numbers.
//!
//! Merged customers fold into their survivor (their touchpoints and orders move to it); an
//! erased customer's activity is dropped. Events may arrive out of time order (late offline
//! data): each customer's lists stay sorted by the time things happened.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{EventKind, Separation};
use patron_domain::RecordedEvent;
use serde::Deserialize;

use crate::holdings::Holdings;

/// The event type of an order.
pub const ORDER_PLACED: &str = "order_placed";

/// Why an event could not be folded into the activity.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    /// The payload of an event the activity reads is not what its type says.
    #[error("event at position {position} ({event_type}): {source}")]
    Payload {
        /// The event's position in the log.
        position: u64,
        /// The event's type.
        event_type: String,
        /// What was wrong.
        source: serde_json::Error,
    },
    /// More distinct names of one kind than the activity can number.
    #[error("more than {limit} distinct {what}")]
    TooMany {
        /// Which names (event types, sources, SKUs, ...).
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// A list of names numbered in the order first seen.
#[derive(Clone, Debug, Default)]
pub struct Names {
    names: Vec<String>,
    numbers: HashMap<String, u32>,
}

impl Names {
    /// The number of `name`, numbering it if it is new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.numbers.get(name) {
            return n;
        }
        let n = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.numbers.insert(name.to_owned(), n);
        n
    }

    /// The number of `name`, if it was ever seen.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    /// The name numbered `n`.
    pub fn name(&self, n: u32) -> &str {
        self.names.get(n as usize).map_or("", String::as_str)
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name was seen.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One touchpoint: when, what, where from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touch {
    /// When it happened, seconds since 1970-01-01 UTC.
    pub at: i64,
    /// Seconds from when it happened to when it was stored (0 if stored "before" it happened,
    /// within the accepted clock skew).
    pub lag: u32,
    /// Its event type, a number in [`Activity::event_types`].
    pub kind: u16,
    /// Its source system, a number in [`Activity::sources`].
    pub source: u16,
    /// Its channel, a number in [`Activity::channels`].
    pub channel: u8,
}

/// One order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderFact {
    /// When it was placed, seconds since 1970-01-01 UTC.
    pub at: i64,
    /// Its channel, a number in [`Activity::channels`].
    pub channel: u8,
    /// Its currency, a number in [`Activity::currencies`].
    pub currency: u16,
    /// The amount paid, in minor units of its currency.
    pub total_minor: i64,
    /// Its distinct products, numbers in [`Activity::skus`], ascending.
    pub items: Box<[u32]>,
}

/// What became of a customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A live customer.
    Live,
    /// Merged into the customer with this number.
    Absorbed(u32),
    /// Erased: their activity is gone.
    Erased,
}

/// One customer's activity.
#[derive(Clone, Debug)]
pub struct CustomerActivity {
    /// The customer.
    pub id: CustomerId,
    /// Live, absorbed or erased.
    pub standing: Standing,
    /// Touchpoints (orders included), by time.
    pub touches: Vec<Touch>,
    /// Orders, by time.
    pub orders: Vec<OrderFact>,
}

/// Every customer's activity, folded from the log up to [`Activity::position`].
#[derive(Clone, Debug, Default)]
pub struct Activity {
    customers: Vec<CustomerActivity>,
    numbers: HashMap<CustomerId, u32>,
    position: u64,
    /// Event type names.
    pub event_types: Names,
    /// Channel names.
    pub channels: Names,
    /// Source system names.
    pub sources: Names,
    /// Currency codes.
    pub currencies: Names,
    /// Product SKUs.
    pub skus: Names,
    /// The holdings of customers made of more than their own stream, by number.
    holdings: HashMap<u32, Holdings>,
    /// Customers a separation left to fold again ([`Activity::take_refolds`]).
    refolds: BTreeSet<u32>,
}

#[derive(Deserialize)]
struct OrderPayload {
    action: OrderFields,
}

#[derive(Deserialize)]
struct OrderFields {
    currency: String,
    total_minor: i64,
    #[serde(default)]
    items: Vec<ItemSku>,
}

#[derive(Deserialize)]
struct ItemSku {
    sku: String,
}

#[derive(Deserialize)]
struct MergedIntoHead {
    survivor: CustomerId,
}

fn intern_u16(names: &mut Names, name: &str, what: &'static str) -> Result<u16, ActivityError> {
    let n = names.intern(name);
    u16::try_from(n).map_err(|_| ActivityError::TooMany {
        what,
        limit: usize::from(u16::MAX) + 1,
    })
}

fn intern_u8(names: &mut Names, name: &str, what: &'static str) -> Result<u8, ActivityError> {
    let n = names.intern(name);
    u8::try_from(n).map_err(|_| ActivityError::TooMany {
        what,
        limit: usize::from(u8::MAX) + 1,
    })
}

fn payload_error(event: &RecordedEvent, source: serde_json::Error) -> ActivityError {
    ActivityError::Payload {
        position: event.position,
        event_type: event.event_type.clone(),
        source,
    }
}

/// Inserts `item` keeping `list` sorted by `key`, after any equal keys.
fn insert_sorted<T>(list: &mut Vec<T>, item: T, key: impl Fn(&T) -> i64) {
    let k = key(&item);
    if list.last().is_none_or(|last| key(last) <= k) {
        list.push(item);
    } else {
        let at = list.partition_point(|x| key(x) <= k);
        list.insert(at, item);
    }
}

/// Merges two lists sorted by `key` into one.
fn merge_sorted<T>(a: Vec<T>, b: Vec<T>, key: impl Fn(&T) -> i64) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => key(x) <= key(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
    out
}

impl Activity {
    /// An empty activity, before the first event.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position of the last event folded in.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Every customer ever seen, by number (absorbed and erased ones included).
    pub fn customers(&self) -> &[CustomerActivity] {
        &self.customers
    }

    /// The live customers, with their numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, &CustomerActivity)> {
        self.customers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.standing == Standing::Live)
            .map(|(n, c)| (n as u32, c))
    }

    /// The number of a customer, following merges to the live survivor.
    pub fn number_of(&self, id: CustomerId) -> Option<u32> {
        let mut n = *self.numbers.get(&id)?;
        // Merge chains are short; the bound guards against a malformed cycle.
        for _ in 0..self.customers.len() {
            match self.customers.get(n as usize)?.standing {
                Standing::Absorbed(to) => n = to,
                _ => return Some(n),
            }
        }
        None
    }

    fn number(&mut self, id: CustomerId) -> u32 {
        if let Some(&n) = self.numbers.get(&id) {
            return n;
        }
        let n = self.customers.len() as u32;
        self.customers.push(CustomerActivity {
            id,
            standing: Standing::Live,
            touches: Vec::new(),
            orders: Vec::new(),
        });
        self.numbers.insert(id, n);
        n
    }

    /// The live customer `n` is or was merged into (`n` itself when live).
    fn live_number(&self, mut n: u32) -> u32 {
        for _ in 0..self.customers.len() {
            match self.customers.get(n as usize).map(|c| c.standing) {
                Some(Standing::Absorbed(to)) => n = to,
                _ => break,
            }
        }
        n
    }

    /// Folds events in, in log order. Events at or before [`Activity::position`] are skipped, so
    /// folding the same batch twice changes nothing.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), ActivityError> {
        for event in events {
            if event.position <= self.position {
                continue;
            }
            self.apply_one(event)?;
            self.position = event.position;
        }
        Ok(())
    }

    fn apply_one(&mut self, event: &RecordedEvent) -> Result<(), ActivityError> {
        let Some(id) = CustomerId::from_stream(&event.stream_id) else {
            return Ok(());
        };
        let n = self.number(id);
        match EventKind::of(&event.event_type) {
            EventKind::MergedInto => {
                let head: MergedIntoHead =
                    serde_json::from_str(&event.payload).map_err(|e| payload_error(event, e))?;
                let survivor = self.number(head.survivor);
                let survivor = self.live_number(survivor);
                let n = self.live_number(n);
                if survivor == n {
                    return Ok(());
                }
                let theirs = self.holdings.remove(&n).unwrap_or_default();
                self.holdings
                    .entry(survivor)
                    .or_default()
                    .absorb(id, &theirs);
                if self.refolds.remove(&n) {
                    self.refolds.insert(survivor);
                }
                let absorbed = &mut self.customers[n as usize];
                let touches = std::mem::take(&mut absorbed.touches);
                let orders = std::mem::take(&mut absorbed.orders);
                absorbed.standing = Standing::Absorbed(survivor);
                let into = &mut self.customers[survivor as usize];
                if into.standing == Standing::Erased {
                    return Ok(());
                }
                into.touches = merge_sorted(std::mem::take(&mut into.touches), touches, |t| t.at);
                into.orders = merge_sorted(std::mem::take(&mut into.orders), orders, |o| o.at);
            }
            EventKind::Erased => {
                let n = self.live_number(n);
                let c = &mut self.customers[n as usize];
                c.standing = Standing::Erased;
                c.touches = Vec::new();
                c.orders = Vec::new();
            }
            EventKind::Restored | EventKind::SplitOff => {
                let separation: Separation =
                    serde_json::from_str(&event.payload).map_err(|e| payload_error(event, e))?;
                self.customers[n as usize].standing = Standing::Live;
                let holdings = Holdings::of_part(id, &separation);
                if holdings.is_empty() {
                    self.holdings.remove(&n);
                } else {
                    self.holdings.insert(n, holdings);
                }
                self.refolds.insert(n);
            }
            EventKind::MergeUndone | EventKind::Split => {
                let separation: Separation =
                    serde_json::from_str(&event.payload).map_err(|e| payload_error(event, e))?;
                let n = self.live_number(n);
                self.holdings.entry(n).or_default().give(&separation);
                self.refolds.insert(n);
            }
            // The survivor's side of a merge is applied from the absorbed one's stream.
            EventKind::Merged
            | EventKind::IdentifierLinked
            | EventKind::IdentifierUnlinked
            | EventKind::IdentifierBlocked => {}
            EventKind::Touchpoint => {
                let n = self.live_number(n);
                self.add_touch(n, event)?;
            }
        }
        Ok(())
    }

    /// The live customers a separation left to fold again, with their holdings: the caller
    /// reads each one's touchpoints up to [`Activity::position`]
    /// ([`patron_domain`]'s log through the store) and hands them to [`Activity::refold`].
    pub fn take_refolds(&mut self) -> Vec<(CustomerId, Holdings)> {
        std::mem::take(&mut self.refolds)
            .into_iter()
            .filter(|n| self.customers[*n as usize].standing == Standing::Live)
            .map(|n| {
                (
                    self.customers[n as usize].id,
                    self.holdings.get(&n).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Replaces a customer's activity with what `touchpoints` (the ones it owns, in log
    /// order) add up to.
    pub fn refold(
        &mut self,
        customer: CustomerId,
        touchpoints: &[RecordedEvent],
    ) -> Result<(), ActivityError> {
        let n = self.number(customer);
        let c = &mut self.customers[n as usize];
        c.touches.clear();
        c.orders.clear();
        for event in touchpoints {
            self.add_touch(n, event)?;
        }
        Ok(())
    }

    /// Adds a touchpoint to customer `n`'s activity.
    fn add_touch(&mut self, n: u32, event: &RecordedEvent) -> Result<(), ActivityError> {
        let Some(channel) = event.metadata.channel.as_deref() else {
            return Ok(());
        };
        if self.customers[n as usize].standing == Standing::Erased {
            return Ok(());
        }
        let at = event.occurred_at.timestamp();
        let lag = (event.recorded_at - event.occurred_at)
            .num_seconds()
            .clamp(0, i64::from(u32::MAX)) as u32;
        let channel = intern_u8(&mut self.channels, channel, "channels")?;
        let touch = Touch {
            at,
            lag,
            kind: intern_u16(&mut self.event_types, &event.event_type, "event types")?,
            source: intern_u16(
                &mut self.sources,
                event.metadata.source.as_deref().unwrap_or(""),
                "sources",
            )?,
            channel,
        };
        let order = if event.event_type == ORDER_PLACED {
            let order: OrderPayload =
                serde_json::from_str(&event.payload).map_err(|e| payload_error(event, e))?;
            let mut items = order
                .action
                .items
                .iter()
                .map(|i| self.skus.intern(&i.sku))
                .collect::<Vec<_>>();
            items.sort_unstable();
            items.dedup();
            Some(OrderFact {
                at,
                channel,
                currency: intern_u16(&mut self.currencies, &order.action.currency, "currencies")?,
                total_minor: order.action.total_minor,
                items: items.into_boxed_slice(),
            })
        } else {
            None
        };
        let c = &mut self.customers[n as usize];
        insert_sorted(&mut c.touches, touch, |t| t.at);
        if let Some(order) = order {
            insert_sorted(&mut c.orders, order, |o| o.at);
        }
        Ok(())
    }

    /// The currency most orders are in (the one analyses of money use by default).
    pub fn main_currency(&self) -> Option<&str> {
        let mut counts = vec![0u64; self.currencies.len()];
        for (_, c) in self.live() {
            for o in &c.orders {
                counts[usize::from(o.currency)] += 1;
            }
        }
        counts
            .iter()
            .enumerate()
            .max_by_key(|&(n, count)| (*count, std::cmp::Reverse(n)))
            .filter(|(_, count)| **count > 0)
            .map(|(n, _)| self.currencies.name(n as u32))
    }
}

/// Seconds since 1970-01-01 UTC as a time.
pub fn time_of(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use patron_domain::event_log::{EventId, Metadata};
    use patron_domain::events::{CUSTOMER_ERASED, CUSTOMER_MERGED_INTO};
    use serde_json::{json, Value};

    /// A log built by hand for the analyses' tests: customers are numbered 0, 1, ... in the
    /// order they were created; events get positions in the order they are written.
    pub(crate) struct Log {
        events: Vec<RecordedEvent>,
        customers: Vec<CustomerId>,
    }

    /// An order's action payload: a total and its SKUs.
    pub(crate) fn order(total_minor: i64, skus: &[&str]) -> Value {
        json!({
            "type": "order_placed",
            "order_id": "o",
            "currency": "CNY",
            "items": skus.iter().map(|s| json!({"sku": s, "quantity": 1, "unit_price_minor": 1})).collect::<Vec<_>>(),
            "total_minor": total_minor,
        })
    }

    impl Log {
        pub(crate) fn new() -> Self {
            Self {
                events: Vec::new(),
                customers: Vec::new(),
            }
        }

        pub(crate) fn customer(&mut self) -> usize {
            self.customers.push(CustomerId::new());
            self.customers.len() - 1
        }

        pub(crate) fn id(&self, who: usize) -> CustomerId {
            self.customers[who]
        }

        fn push(
            &mut self,
            who: usize,
            event_type: &str,
            at: i64,
            channel: Option<&str>,
            payload: Value,
        ) {
            let position = self.events.len() as u64 + 1;
            let occurred_at = time_of(at);
            self.events.push(RecordedEvent {
                position,
                event_id: EventId::new(),
                stream_id: self.customers[who].stream_id(),
                stream_version: position,
                event_type: event_type.to_owned(),
                schema_version: 1,
                occurred_at,
                recorded_at: occurred_at + chrono::TimeDelta::seconds(5),
                payload: payload.to_string(),
                metadata: Metadata {
                    source: channel.map(|c| format!("{c}-source")),
                    channel: channel.map(str::to_owned),
                    ..Metadata::default()
                },
            });
        }

        pub(crate) fn touch(&mut self, who: usize, channel: &str, event_type: &str, at: i64) {
            let payload = json!({"channel": channel, "action": {"type": event_type}});
            self.push(who, event_type, at, Some(channel), payload);
        }

        pub(crate) fn order(&mut self, who: usize, channel: &str, at: i64, action: Value) {
            let payload = json!({"channel": channel, "action": action});
            self.push(who, ORDER_PLACED, at, Some(channel), payload);
        }

        pub(crate) fn merge(&mut self, absorbed: usize, survivor: usize) {
            let at = self.events.last().map_or(0, |e| e.occurred_at.timestamp());
            let payload = json!({"survivor": self.customers[survivor]});
            self.push(absorbed, CUSTOMER_MERGED_INTO, at, None, payload);
        }

        pub(crate) fn erase(&mut self, who: usize) {
            let at = self.events.last().map_or(0, |e| e.occurred_at.timestamp());
            self.push(who, CUSTOMER_ERASED, at, None, json!({}));
        }

        pub(crate) fn events(&self) -> &[RecordedEvent] {
            &self.events
        }

        pub(crate) fn activity(&self) -> Activity {
            let mut activity = Activity::new();
            activity.apply(&self.events).expect("the log folds");
            activity
        }
    }

    #[test]
    fn touches_and_orders_stay_in_time_order_and_follow_merges() {
        let mut log = Log::new();
        let [a, b, c] = [0, 1, 2].map(|_| log.customer());
        log.touch(a, "web", "page_viewed", 300);
        log.touch(a, "app", "screen_viewed", 100); // late: happened first
        log.order(b, "store", 200, order(500, &["B", "A", "A"]));
        log.touch(c, "web", "page_viewed", 50);
        log.merge(b, a);
        log.touch(b, "web", "page_viewed", 400); // on the absorbed stream: goes to a
        log.erase(c);
        let activity = log.activity();

        let a_n = activity.number_of(log.id(a)).unwrap();
        assert_eq!(activity.number_of(log.id(b)), Some(a_n));
        let live: Vec<_> = activity.live().map(|(n, _)| n).collect();
        assert_eq!(live, vec![a_n]);
        let a_facts = &activity.customers()[a_n as usize];
        let times: Vec<_> = a_facts.touches.iter().map(|t| t.at).collect();
        assert_eq!(times, vec![100, 200, 300, 400]);
        assert_eq!(a_facts.orders.len(), 1);
        let skus: Vec<_> = a_facts.orders[0]
            .items
            .iter()
            .map(|&s| activity.skus.name(s))
            .collect();
        // Distinct, by SKU number (numbered as first seen: B, then A).
        assert_eq!(skus, vec!["B", "A"]);
        assert_eq!(a_facts.orders[0].total_minor, 500);
        assert_eq!(a_facts.touches[0].lag, 5);
        assert_eq!(
            activity
                .channels
                .name(u32::from(a_facts.touches[0].channel)),
            "app"
        );
        assert_eq!(activity.main_currency(), Some("CNY"));
        let c_n = log.id(c);
        assert!(activity
            .customers()
            .iter()
            .any(|x| x.id == c_n && x.standing == Standing::Erased && x.touches.is_empty()));
    }

    #[test]
    fn folding_in_batches_or_twice_equals_folding_once() {
        let mut log = Log::new();
        let [a, b] = [0, 1].map(|_| log.customer());
        for i in 0..20 {
            log.touch(a, "web", "page_viewed", 1_000 - i * 7);
            log.order(b, "app", i * 13, order(i, &["X"]));
        }
        log.merge(a, b);
        let once = log.activity();
        let mut batched = Activity::new();
        for chunk in log.events().chunks(7) {
            batched.apply(chunk).unwrap();
            batched.apply(chunk).unwrap();
        }
        assert_eq!(batched.position(), once.position());
        let (x, y) = (&once.customers(), &batched.customers());
        assert_eq!(x.len(), y.len());
        for (x, y) in x.iter().zip(y.iter()) {
            assert_eq!(
                (x.standing, &x.touches, &x.orders),
                (y.standing, &y.touches, &y.orders)
            );
        }
    }
}
