//! Money at its extremes: validation never panics, accepts only orders whose total is the exact
//! sum of their lines within the bound, and the profile folded from them never wraps.

use chrono::{DateTime, TimeDelta, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::event_log::{EventId, Metadata};
use patron_domain::identity::IdentityRules;
use patron_domain::touchpoint::{
    Action, RawTouchpoint, TimeBounds, MAX_AMOUNT_MINOR, MAX_QUANTITY,
};
use patron_domain::RecordedEvent;
use patron_projections::profile::Profile;
use patron_projections::value::activity;
use proptest::prelude::*;
use serde_json::{json, Value};

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(-1),
        Just(MAX_AMOUNT_MINOR - 1),
        Just(MAX_AMOUNT_MINOR),
        Just(MAX_AMOUNT_MINOR + 1),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(4_611_686_018_427_387_909),
        0..=MAX_AMOUNT_MINOR,
        any::<i64>(),
    ]
}

fn quantity() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(4),
        Just(MAX_QUANTITY),
        Just(MAX_QUANTITY + 1),
        Just(u32::MAX),
        1..=MAX_QUANTITY,
        any::<u32>(),
    ]
}

/// A line: quantity, unit price, discount.
type Line = (u32, i64, i64);

fn line() -> impl Strategy<Value = Line> {
    (quantity(), amount(), prop_oneof![Just(0), amount()])
}

/// How the record states its total: not at all, as the exact sum, or as some amount.
#[derive(Clone, Debug)]
enum Total {
    Omitted,
    ExactSum,
    Given(i64),
}

fn total() -> impl Strategy<Value = Total> {
    prop_oneof![
        Just(Total::Omitted),
        Just(Total::ExactSum),
        amount().prop_map(Total::Given),
    ]
}

fn exact(lines: &[Line]) -> i128 {
    lines
        .iter()
        .map(|&(q, p, d)| i128::from(q) * i128::from(p) - i128::from(d))
        .sum()
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn record(n: usize, lines: &[Line], total: &Total) -> Value {
    let items: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, &(q, p, d))| {
            json!({"sku": format!("SKU-{i}"), "category": "c", "quantity": q,
                   "unit_price_minor": p, "discount_minor": d})
        })
        .collect();
    let mut value = json!({
        "event_id": uuid_of(n),
        "type": "order_placed",
        "channel": "store",
        "source": "pos",
        "occurred_at": "2026-03-08T09:30:15+08:00",
        "identifiers": {"phone": "139 1234 0001"},
        "order_id": format!("PO-{n}"),
        "currency": "CNY",
        "items": items,
    });
    match total {
        Total::Omitted => {}
        Total::ExactSum => {
            // As JSON allows: an exact sum beyond i64 is written as a wider number.
            value["total_minor"] = match i64::try_from(exact(lines)) {
                Ok(t) => json!(t),
                Err(_) => json!(exact(lines) as f64),
            }
        }
        Total::Given(t) => value["total_minor"] = json!(t),
    }
    value
}

fn uuid_of(n: usize) -> String {
    format!("0192f0c4-7c1e-7a33-9d5e-{n:012x}")
}

/// The stored event of an accepted order, as the profile reads it.
fn event(n: usize, customer: CustomerId, action: &Action, at: DateTime<Utc>) -> RecordedEvent {
    let payload = json!({"channel": "store", "action": action});
    RecordedEvent {
        position: n as u64 + 1,
        event_id: EventId::new(),
        stream_id: customer.stream_id(),
        stream_version: n as u64 + 1,
        event_type: action.event_type().to_owned(),
        schema_version: 1,
        occurred_at: at,
        recorded_at: at + TimeDelta::seconds(1),
        payload: payload.to_string(),
        metadata: Metadata::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn accepted_orders_add_up_exactly_and_profiles_never_go_negative(
        orders in prop::collection::vec((prop::collection::vec(line(), 1..4), total()), 1..12)
    ) {
        let rules = IdentityRules::default();
        let customer = CustomerId::new();
        let mut profile = Profile::default();
        let mut accepted: i128 = 0;
        for (n, (lines, total)) in orders.iter().enumerate() {
            let raw: RawTouchpoint = serde_json::from_value(record(n, lines, total))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let Ok(touchpoint) = raw.validate(&rules, TimeBounds::at(now())) else {
                continue;
            };
            let Action::OrderPlaced(order) = &touchpoint.action else {
                return Err(TestCaseError::fail("not an order"));
            };
            prop_assert_eq!(i128::from(order.total_minor), exact(lines));
            prop_assert!((0..=MAX_AMOUNT_MINOR).contains(&order.total_minor));
            for item in &order.items {
                prop_assert!((0..=MAX_AMOUNT_MINOR).contains(&item.amount_minor()));
            }
            accepted += exact(lines);
            profile
                .apply_touchpoint(&event(n, customer, &touchpoint.action, touchpoint.occurred_at))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let revenue = profile.revenue.get("CNY").copied().unwrap_or(0);
        prop_assert!(revenue >= 0);
        prop_assert_eq!(i128::from(revenue), accepted);
        prop_assert!(profile.category_spend.values().all(|s| *s >= 0));
        if let Some(average) = profile.average_order_value("CNY") {
            prop_assert!(average >= 0);
        }
        let spend = activity(&profile, "CNY", now(), 3650).map_or(0, |a| a.monetary_minor);
        prop_assert_eq!(i128::from(spend), accepted);
    }
}

#[test]
fn the_reviewed_record_is_refused_and_the_largest_orders_saturate_instead_of_wrapping() {
    let rules = IdentityRules::default();
    let mut value = record(0, &[(4, 4_611_686_018_427_387_909, 0)], &Total::Given(20));
    value["items"][0]["discount_minor"] = json!(0);
    let raw: RawTouchpoint = serde_json::from_value(value).unwrap_or_default();
    let refused = raw.validate(&rules, TimeBounds::at(now())).err();
    assert_eq!(
        refused.map(|r| r.field),
        Some("items[0].unit_price_minor".to_owned())
    );

    // About a million orders at the bound: more than an i64 holds; the sums stay at their
    // maximum.
    let largest = record(1, &[(1, MAX_AMOUNT_MINOR, 0)], &Total::Omitted);
    let raw: RawTouchpoint = serde_json::from_value(largest).unwrap_or_default();
    let Ok(touchpoint) = raw.validate(&rules, TimeBounds::at(now())) else {
        panic!("an order at the bound is accepted");
    };
    let customer = CustomerId::new();
    let one = event(1, customer, &touchpoint.action, touchpoint.occurred_at);
    let mut profile = Profile::default();
    profile.apply_touchpoint(&one).expect("the order folds");
    for _ in 0..20 {
        let copy = profile.clone();
        profile.absorb(&copy);
    }
    assert_eq!(profile.orders, 1 << 20);
    assert_eq!(profile.revenue.get("CNY"), Some(&i64::MAX));
    assert_eq!(profile.category_spend.get("c"), Some(&i64::MAX));
    assert!(profile.average_order_value("CNY").is_some_and(|a| a > 0));
}
