//! Campaign and tag effect: how customers targeted at one moment (sent a campaign, given a tag)
//! converted, spent and visited in the window after it, against a comparable control group of
//! customers who were not targeted.
//!
//! # Method
//!
//! **Who is compared.** A customer is *eligible* when live and first seen (their earliest
//! touchpoint, the only first-seen time the activity holds) at or before the targeting time
//! `at`: a customer first seen later could not have been targeted, and one without touchpoints
//! has no first-seen time. A targeted number that was since merged into another customer counts
//! as its live survivor, which holds its history. Treated = eligible ∩ targeted; control =
//! eligible − targeted.
//!
//! **Strata.** Every eligible customer falls in one of six strata by behaviour over the
//! pre-period `[at − lookback, at)`: whether they placed an order (in any currency) × how many
//! visits (touchpoints that are not orders) they made: 0, 1–2, 3+. With `lookback_days = 0` the
//! pre-period is empty, everyone is in one stratum and nothing is adjusted.
//!
//! **Post-stratification.** A segment is rarely a random draw (a campaign sent to recent buyers
//! converts better whatever it says), so the control is reweighted to the treated group's mix
//! over the strata. With `n_t,s` and `n_c,s` the treated and control customers in stratum `s`,
//! `n_t` and `n_c` their totals, every control customer in `s` weighs
//!
//! ```text
//! w_s = (n_t,s / n_t) / (n_c,s / n_c)     (treated share of s / control share of s)
//! ```
//!
//! so the weights average 1 over the control. A stratum with treated customers but no control
//! customer cannot be compared: its treated are left out of both sides (counted in
//! [`CampaignEffect::treated_excluded`]) and `n_t` counts the compared treated only. Control
//! customers in strata without treated weigh 0. If, within a stratum, being targeted is
//! unrelated to what a customer would have done anyway, the difference between the treated and
//! the reweighted control estimates the effect of targeting on the treated.
//!
//! **Metrics**, over the window `(at, at + window]` (a touchpoint exactly at `at` is in neither
//! period). For a group whose strata have shares `π_s` (treated and reweighted control: the
//! treated shares `n_t,s / n_t`; raw control: `n_c,s / n_c`), with `n_s` the group's customers in
//! `s`:
//!
//! - conversion `p = Σ π_s p_s`, `p_s` the share of customers with at least one order (in any
//!   currency), 0–1;
//! - visits per customer `v = Σ π_s v̄_s`, `v̄_s` the mean number of touchpoints that are not
//!   orders;
//! - average order value `A = Σ π_s S̄_s / Σ π_s N̄_s`, `S_i` the total of customer `i`'s orders
//!   in the query's currency (minor units) and `N_i` their number: the mean order total with
//!   every order weighing as its customer. `None` when the group has no such order.
//!
//! These are the weighted means with every customer weighing `π_s / n_s`.
//!
//! **Uncertainty.** The effect is treated − reweighted control, with the 95% interval
//! `effect ± 1.96 · SE`, `SE² = Var(treated) + Var(control)`, each the post-stratified variance
//! of the group's estimate given how many of its customers fall in each stratum:
//!
//! - conversion: `Var = Σ π_s² · p_s (1 − p_s) / n_s` (the two-proportion standard error, within
//!   strata);
//! - visits: `Var = Σ π_s² · s²_s / n_s`, `s²_s` the sample variance (Welch's standard error,
//!   within strata);
//! - average order value, a ratio whose orders cluster in customers (delta method):
//!   `Var = Σ π_s² · s²_z,s / n_s`, `s²_z,s` the sample variance in `s` of
//!   `z_i = (S_i − A·N_i) / Σ π_s N̄_s`.
//!
//! That is Welch's (and the two-proportion) standard error with weighted variances whose
//! deviations are taken from each stratum's mean; with one stratum they are exactly the usual
//! formulas. The reweighted control's effective size `(Σ w)² / Σ w² = 1 / Σ π_s² / n_s` is
//! reported. A stratum with a single customer contributes no variance (none can be estimated),
//! so very thin strata make the interval too narrow: look at [`CampaignEffect::strata`].
//!
//! The unadjusted comparison (the same treated against every control customer, unweighted,
//! with pooled variances) is reported beside the effect, to show how much the adjustment moved.
//!
//! **Cost.** One pass over the live customers; each customer's periods are found by binary
//! search in their time-ordered lists and only their touchpoints in the two periods are read.

use std::collections::HashSet;

use serde::Serialize;

use super::activity::{Activity, CustomerActivity, Standing, ORDER_PLACED};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The 97.5th percentile of the standard normal distribution.
const Z_95: f64 = 1.959_963_984_540_054;

/// Pre-period strata: (bought: no, yes) × (visits: 0, 1–2, 3+).
const STRATA: usize = 6;

/// Which customers were targeted, when, and what to measure.
#[derive(Clone, Debug, Default)]
pub struct CampaignQuery {
    /// The targeted customers' numbers (as in [`Activity::live`]).
    pub targeted: HashSet<u32>,
    /// When they were targeted, seconds since 1970-01-01 UTC.
    pub at: i64,
    /// Days after `at` to measure over: the window is `(at, at + window_days]`.
    pub window_days: u32,
    /// Days before `at` whose behaviour makes the control comparable: `[at − lookback, at)`.
    pub lookback_days: u32,
    /// The currency of the average order value, a number in [`Activity::currencies`].
    pub currency: u16,
}

/// Why a campaign effect could not be measured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The window after `at` is empty.
    #[error("window_days is 0: the window after `at` must last at least one day")]
    EmptyWindow,
    /// No customer of `targeted` is live and first seen at or before `at`.
    #[error(
        "none of the {targeted} customers in `targeted` is eligible at `at` = {at} \
         (live and first seen at or before it)"
    )]
    NoEligibleTreated {
        /// How many numbers `targeted` holds.
        targeted: usize,
        /// The targeting time.
        at: i64,
    },
    /// Every eligible treated customer is in a stratum without control customers.
    #[error(
        "no control customer (eligible and not in `targeted`) shares a pre-period stratum with \
         any of the {treated} eligible treated customers"
    )]
    NoComparableControl {
        /// How many treated customers were eligible.
        treated: usize,
    },
}

/// Visits in the pre-period, in bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitBand {
    /// No visit.
    Zero,
    /// One or two visits.
    OneOrTwo,
    /// Three visits or more.
    ThreeOrMore,
}

impl VisitBand {
    const ALL: [VisitBand; 3] = [VisitBand::Zero, VisitBand::OneOrTwo, VisitBand::ThreeOrMore];

    fn of(visits: usize) -> Self {
        match visits {
            0 => Self::Zero,
            1 | 2 => Self::OneOrTwo,
            _ => Self::ThreeOrMore,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Zero => 0,
            Self::OneOrTwo => 1,
            Self::ThreeOrMore => 2,
        }
    }
}

/// One pre-period stratum: its customers and the weight of its control customers.
#[derive(Clone, Debug, Serialize)]
pub struct Stratum {
    /// Whether its customers ordered in the pre-period.
    pub bought_before: bool,
    /// Its customers' visits in the pre-period.
    pub visits_before: VisitBand,
    /// Eligible treated customers in it.
    pub treated: usize,
    /// Eligible control customers in it.
    pub control: usize,
    /// Whether it has both treated and control customers, and so is compared.
    pub compared: bool,
    /// The weight of each of its control customers in the reweighted control (treated share /
    /// control share; 0 when it is not compared or has no treated).
    pub control_weight: f64,
}

/// One group's outcomes over the window.
#[derive(Clone, Debug, Serialize)]
pub struct GroupMetrics {
    /// Customers in the group (for the reweighted control: those with a weight above 0).
    pub customers: usize,
    /// The group's effective size, `(Σ w)² / Σ w²` (equal to `customers` when unweighted).
    pub effective_customers: f64,
    /// Share of customers with at least one order in the window, 0–1.
    pub conversion: f64,
    /// Mean total of the window's orders in the query's currency, minor units; `None` without
    /// such orders.
    pub average_order_value: Option<f64>,
    /// Touchpoints that are not orders in the window, per customer.
    pub visits_per_customer: f64,
}

/// A difference between two groups with its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Treated minus control, in the metric's unit.
    pub difference: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// The lower end of the 95% confidence interval.
    pub ci_low: f64,
    /// The upper end of the 95% confidence interval.
    pub ci_high: f64,
}

/// Differences in each metric, treated minus control.
#[derive(Clone, Debug, Serialize)]
pub struct Effects {
    /// In conversion, a difference of shares (0.05 is five points).
    pub conversion: Estimate,
    /// In average order value, minor units; `None` when either group has no order in the
    /// currency.
    pub average_order_value: Option<Estimate>,
    /// In visits per customer.
    pub visits_per_customer: Estimate,
}

/// The measured effect of targeting a segment.
#[derive(Clone, Debug, Serialize)]
pub struct CampaignEffect {
    /// The start of the pre-period (inclusive), seconds since 1970-01-01 UTC.
    pub lookback_start: i64,
    /// The targeting time: the end of the pre-period and the start of the window, both
    /// exclusive.
    pub at: i64,
    /// The end of the window (inclusive), seconds since 1970-01-01 UTC.
    pub window_end: i64,
    /// Numbers in the query's `targeted`.
    pub targeted: usize,
    /// Targeted customers that were eligible (after following merges).
    pub treated_eligible: usize,
    /// Eligible treated customers left out because their stratum has no control customer.
    pub treated_excluded: usize,
    /// The six pre-period strata.
    pub strata: Vec<Stratum>,
    /// The compared treated customers.
    pub treated: GroupMetrics,
    /// Every eligible control customer, unweighted.
    pub control_raw: GroupMetrics,
    /// The control reweighted to the treated group's mix over the strata.
    pub control_reweighted: GroupMetrics,
    /// Treated minus reweighted control: the estimated effect of targeting.
    pub effect: Effects,
    /// Treated minus raw control, unadjusted, for comparison.
    pub unadjusted: Effects,
}

/// One customer's outcomes over the window.
struct Outcome {
    converted: bool,
    visits: f64,
    amount: f64,
    orders: f64,
}

/// Count, conversions and running means and co-moments (Welford) of one stratum's outcomes.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    n: u64,
    converted: u64,
    visits_mean: f64,
    visits_m2: f64,
    amount_mean: f64,
    amount_m2: f64,
    orders_mean: f64,
    orders_m2: f64,
    amount_orders_c: f64,
}

impl Moments {
    fn push(&mut self, o: &Outcome) {
        self.n += 1;
        self.converted += u64::from(o.converted);
        let n = self.n as f64;
        let dv = o.visits - self.visits_mean;
        self.visits_mean += dv / n;
        self.visits_m2 += dv * (o.visits - self.visits_mean);
        let da = o.amount - self.amount_mean;
        let dn = o.orders - self.orders_mean;
        self.amount_mean += da / n;
        self.orders_mean += dn / n;
        self.amount_m2 += da * (o.amount - self.amount_mean);
        self.orders_m2 += dn * (o.orders - self.orders_mean);
        self.amount_orders_c += da * (o.orders - self.orders_mean);
    }

    fn merge(&self, other: &Self) -> Self {
        if self.n == 0 {
            return *other;
        }
        if other.n == 0 {
            return *self;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let f = na * nb / n;
        let dv = other.visits_mean - self.visits_mean;
        let da = other.amount_mean - self.amount_mean;
        let dn = other.orders_mean - self.orders_mean;
        Self {
            n: self.n + other.n,
            converted: self.converted + other.converted,
            visits_mean: self.visits_mean + dv * nb / n,
            visits_m2: self.visits_m2 + other.visits_m2 + dv * dv * f,
            amount_mean: self.amount_mean + da * nb / n,
            amount_m2: self.amount_m2 + other.amount_m2 + da * da * f,
            orders_mean: self.orders_mean + dn * nb / n,
            orders_m2: self.orders_m2 + other.orders_m2 + dn * dn * f,
            amount_orders_c: self.amount_orders_c + other.amount_orders_c + da * dn * f,
        }
    }

    /// A sum of squares or co-moment divided by `n − 1`; 0 below two customers.
    fn sample(&self, m2: f64) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            m2 / (self.n - 1) as f64
        }
    }
}

/// A group's estimate of one metric and its variance.
#[derive(Clone, Copy, Debug)]
struct Value {
    value: f64,
    variance: f64,
}

/// A group's estimates, from its strata's moments and shares.
struct GroupEstimate {
    customers: usize,
    effective: f64,
    conversion: Value,
    visits: Value,
    aov: Option<Value>,
}

impl GroupEstimate {
    /// The estimates of a group made of `parts`: each a stratum's share of the group and its
    /// moments (the shares summing to 1; parts without customers are skipped).
    fn of(parts: &[(f64, Moments)]) -> Self {
        let mut customers = 0usize;
        let mut inverse_effective = 0.0;
        let (mut conversion, mut conversion_var) = (0.0, 0.0);
        let (mut visits, mut visits_var) = (0.0, 0.0);
        let (mut amount, mut orders) = (0.0, 0.0);
        for (share, m) in parts.iter().filter(|(_, m)| m.n > 0) {
            let n = m.n as f64;
            customers += m.n as usize;
            inverse_effective += share * share / n;
            let p = m.converted as f64 / n;
            conversion += share * p;
            conversion_var += share * share * p * (1.0 - p) / n;
            visits += share * m.visits_mean;
            visits_var += share * share * m.sample(m.visits_m2) / n;
            amount += share * m.amount_mean;
            orders += share * m.orders_mean;
        }
        let aov = (orders > 0.0).then(|| {
            let ratio = amount / orders;
            let variance = parts
                .iter()
                .filter(|(_, m)| m.n > 0)
                .map(|(share, m)| {
                    // The sample variance of S − A·N within the stratum.
                    let s2 = m.sample(m.amount_m2) - 2.0 * ratio * m.sample(m.amount_orders_c)
                        + ratio * ratio * m.sample(m.orders_m2);
                    share * share * s2.max(0.0) / m.n as f64
                })
                .sum::<f64>()
                / (orders * orders);
            Value {
                value: ratio,
                variance,
            }
        });
        Self {
            customers,
            effective: if inverse_effective > 0.0 {
                1.0 / inverse_effective
            } else {
                0.0
            },
            conversion: Value {
                value: conversion,
                variance: conversion_var,
            },
            visits: Value {
                value: visits,
                variance: visits_var,
            },
            aov,
        }
    }

    fn metrics(&self) -> GroupMetrics {
        GroupMetrics {
            customers: self.customers,
            effective_customers: self.effective,
            conversion: self.conversion.value,
            average_order_value: self.aov.map(|v| v.value),
            visits_per_customer: self.visits.value,
        }
    }

    /// `self` minus `control`, metric by metric.
    fn minus(&self, control: &Self) -> Effects {
        Effects {
            conversion: difference(self.conversion, control.conversion),
            average_order_value: self.aov.zip(control.aov).map(|(t, c)| difference(t, c)),
            visits_per_customer: difference(self.visits, control.visits),
        }
    }
}

fn difference(treated: Value, control: Value) -> Estimate {
    let difference = treated.value - control.value;
    let standard_error = (treated.variance + control.variance).max(0.0).sqrt();
    Estimate {
        difference,
        standard_error,
        ci_low: difference - Z_95 * standard_error,
        ci_high: difference + Z_95 * standard_error,
    }
}

/// Whether each customer, by number, is targeted: the live customers the targeted numbers are
/// or were merged into.
fn resolve_targeted(activity: &Activity, targeted: &HashSet<u32>) -> Vec<bool> {
    let customers = activity.customers();
    let mut live = vec![false; customers.len()];
    for &start in targeted {
        let mut n = start as usize;
        // Merge chains are short; the bound guards against a malformed cycle.
        for _ in 0..customers.len() {
            match customers.get(n).map(|c| c.standing) {
                Some(Standing::Absorbed(to)) => n = to as usize,
                Some(Standing::Live) => {
                    if let Some(slot) = live.get_mut(n) {
                        *slot = true;
                    }
                    break;
                }
                Some(Standing::Erased) | None => break,
            }
        }
    }
    live
}

/// Touchpoints that are not orders among `touches`.
fn visits(touches: &[super::activity::Touch], order_kind: Option<u16>) -> usize {
    touches
        .iter()
        .filter(|t| Some(t.kind) != order_kind)
        .count()
}

/// The stratum of a customer by their behaviour over `[from, to)`.
fn stratum_of(c: &CustomerActivity, from: i64, to: i64, order_kind: Option<u16>) -> usize {
    let first_order = c.orders.partition_point(|o| o.at < from);
    let bought = c.orders.get(first_order).is_some_and(|o| o.at < to);
    let start = c.touches.partition_point(|t| t.at < from);
    let end = c.touches.partition_point(|t| t.at < to);
    let band = VisitBand::of(visits(&c.touches[start..end.max(start)], order_kind));
    usize::from(bought) * 3 + band.index()
}

/// A customer's outcomes over `(from, to]`.
fn outcome_of(
    c: &CustomerActivity,
    from: i64,
    to: i64,
    order_kind: Option<u16>,
    currency: u16,
) -> Outcome {
    let start = c.touches.partition_point(|t| t.at <= from);
    let end = c.touches.partition_point(|t| t.at <= to);
    let visits = visits(&c.touches[start..end.max(start)], order_kind);
    let start = c.orders.partition_point(|o| o.at <= from);
    let end = c.orders.partition_point(|o| o.at <= to);
    let orders = &c.orders[start..end.max(start)];
    let (mut amount, mut count) = (0.0, 0u32);
    for o in orders.iter().filter(|o| o.currency == currency) {
        amount += o.total_minor as f64;
        count += 1;
    }
    Outcome {
        converted: !orders.is_empty(),
        visits: visits as f64,
        amount,
        orders: f64::from(count),
    }
}

/// Measures the effect of targeting `query.targeted` at `query.at`: conversion, average order
/// value and visits over the window after, against the control reweighted to the treated
/// group's pre-period mix (see the module documentation for the method).
pub fn campaign_effect(
    activity: &Activity,
    query: &CampaignQuery,
) -> Result<CampaignEffect, CampaignError> {
    if query.window_days == 0 {
        return Err(CampaignError::EmptyWindow);
    }
    let at = query.at;
    let window_end = at.saturating_add(i64::from(query.window_days) * DAY);
    let lookback_start = at.saturating_sub(i64::from(query.lookback_days) * DAY);
    let order_kind = activity
        .event_types
        .get(ORDER_PLACED)
        .and_then(|k| u16::try_from(k).ok());
    let targeted = resolve_targeted(activity, &query.targeted);

    let mut treated = [Moments::default(); STRATA];
    let mut control = [Moments::default(); STRATA];
    for (number, customer) in activity.live() {
        if customer.touches.first().is_none_or(|t| t.at > at) {
            continue;
        }
        let stratum = stratum_of(customer, lookback_start, at, order_kind);
        let outcome = outcome_of(customer, at, window_end, order_kind, query.currency);
        let group = if targeted.get(number as usize).copied().unwrap_or(false) {
            &mut treated
        } else {
            &mut control
        };
        group[stratum].push(&outcome);
    }

    let treated_eligible: u64 = treated.iter().map(|m| m.n).sum();
    if treated_eligible == 0 {
        return Err(CampaignError::NoEligibleTreated {
            targeted: query.targeted.len(),
            at,
        });
    }
    let compared: Vec<bool> = (0..STRATA)
        .map(|s| treated[s].n > 0 && control[s].n > 0)
        .collect();
    let treated_compared: u64 = (0..STRATA)
        .filter(|&s| compared[s])
        .map(|s| treated[s].n)
        .sum();
    if treated_compared == 0 {
        return Err(CampaignError::NoComparableControl {
            treated: treated_eligible as usize,
        });
    }
    let control_total: u64 = control.iter().map(|m| m.n).sum();

    let mut strata = Vec::with_capacity(STRATA);
    let mut treated_parts = Vec::with_capacity(STRATA);
    let mut reweighted_parts = Vec::with_capacity(STRATA);
    let mut treated_pooled = Moments::default();
    let mut control_pooled = Moments::default();
    for (s, is_compared) in compared.iter().copied().enumerate() {
        let share = if is_compared {
            treated[s].n as f64 / treated_compared as f64
        } else {
            0.0
        };
        let control_share = control[s].n as f64 / control_total as f64;
        let control_weight = if is_compared {
            share / control_share
        } else {
            0.0
        };
        strata.push(Stratum {
            bought_before: s >= 3,
            visits_before: VisitBand::ALL[s % 3],
            treated: treated[s].n as usize,
            control: control[s].n as usize,
            compared: is_compared,
            control_weight,
        });
        if is_compared {
            treated_parts.push((share, treated[s]));
            reweighted_parts.push((share, control[s]));
            treated_pooled = treated_pooled.merge(&treated[s]);
        }
        control_pooled = control_pooled.merge(&control[s]);
    }

    let treated_est = GroupEstimate::of(&treated_parts);
    let reweighted_est = GroupEstimate::of(&reweighted_parts);
    let treated_pooled_est = GroupEstimate::of(&[(1.0, treated_pooled)]);
    let control_pooled_est = GroupEstimate::of(&[(1.0, control_pooled)]);

    Ok(CampaignEffect {
        lookback_start,
        at,
        window_end,
        targeted: query.targeted.len(),
        treated_eligible: treated_eligible as usize,
        treated_excluded: (treated_eligible - treated_compared) as usize,
        strata,
        treated: treated_est.metrics(),
        control_raw: control_pooled_est.metrics(),
        control_reweighted: reweighted_est.metrics(),
        effect: treated_est.minus(&reweighted_est),
        unadjusted: treated_pooled_est.minus(&control_pooled_est),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::activity::time_of;
    use patron_domain::customer::CustomerId;
    use patron_domain::events::CUSTOMER_MERGED_INTO;
    use patron_domain::{EventId, Metadata, RecordedEvent};

    /// The targeting time of the tests.
    const T: i64 = 1_700_000_000;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0)
    }

    macro_rules! assert_close {
        ($actual:expr, $expected:expr) => {{
            let (a, e): (f64, f64) = ($actual, $expected);
            assert!(close(a, e), "{} = {a}, expected {e}", stringify!($actual));
        }};
    }

    /// An event log under construction.
    #[derive(Default)]
    struct Log {
        events: Vec<RecordedEvent>,
    }

    impl Log {
        fn push(&mut self, who: CustomerId, event_type: &str, at: i64, payload: String) {
            let position = self.events.len() as u64 + 1;
            self.events.push(RecordedEvent {
                position,
                event_id: EventId::new(),
                stream_id: who.stream_id(),
                stream_version: position,
                event_type: event_type.to_owned(),
                schema_version: 1,
                occurred_at: time_of(at),
                recorded_at: time_of(at),
                payload,
                metadata: Metadata {
                    channel: Some("web".to_owned()),
                    source: Some("test".to_owned()),
                    ..Metadata::default()
                },
            });
        }

        fn visit(&mut self, who: CustomerId, at: i64) {
            self.push(who, "page_viewed", at, "{}".to_owned());
        }

        fn order(&mut self, who: CustomerId, at: i64, currency: &str, total_minor: i64) {
            let payload = serde_json::json!({"action": {
                "type": "order_placed",
                "order_id": format!("o{}", self.events.len()),
                "currency": currency,
                "items": [{"sku": "A", "quantity": 1, "unit_price_minor": total_minor}],
                "total_minor": total_minor,
            }});
            self.push(who, ORDER_PLACED, at, payload.to_string());
        }

        fn merge(&mut self, absorbed: CustomerId, survivor: CustomerId, at: i64) {
            let payload = serde_json::json!({ "survivor": survivor });
            self.push(absorbed, CUSTOMER_MERGED_INTO, at, payload.to_string());
        }

        fn activity(&self) -> Activity {
            let mut activity = Activity::new();
            activity.apply(&self.events).unwrap();
            activity
        }
    }

    fn day(n: i64) -> i64 {
        n * DAY
    }

    fn numbers(activity: &Activity, ids: &[CustomerId]) -> HashSet<u32> {
        ids.iter()
            .map(|&id| activity.number_of(id).unwrap())
            .collect()
    }

    fn query(
        activity: &Activity,
        targeted: &[CustomerId],
        window: u32,
        lookback: u32,
    ) -> CampaignQuery {
        CampaignQuery {
            targeted: numbers(activity, targeted),
            at: T,
            window_days: window,
            lookback_days: lookback,
            currency: activity.currencies.get("CNY").unwrap() as u16,
        }
    }

    /// The hand-worked case. Targeted at T, pre-period [T − 30d, T), window (T, T + 30d].
    ///
    /// | customer | group    | pre-period           | stratum    | window                      |
    /// |----------|----------|----------------------|------------|-----------------------------|
    /// | A        | targeted | order, 1 visit       | bought,1–2 | 2 visits, CNY 300           |
    /// | B        | targeted | (seen at T − 60d)    | no,0       | 1 visit                     |
    /// | C        | targeted | 3 visits             | no,3+      | CNY 500                     |
    /// | D        | control  | order, 2 visits      | bought,1–2 | 1 visit, USD 999, CNY 100   |
    /// | E        | control  | order (visit T − 31d)| bought,0   | 2 visits (CNY at T + 31d)   |
    /// | F        | control  | (seen at T − 40d)    | no,0       | nothing                     |
    /// | G        | control  | (visit exactly at T) | no,0       | 1 visit, CNY 200, CNY 400   |
    /// | H        | targeted | first seen T + 1s    | ineligible |                             |
    /// | I        | control  | first seen T + 1d    | ineligible |                             |
    ///
    /// No control is in C's stratum, so C is excluded: the compared treated are A and B, half in
    /// (bought, 1–2) and half in (no, 0). The control's shares are 1/4 (D), 2/4 (F, G) and 1/4
    /// (E), so the weights are D: (1/2)/(1/4) = 2, F and G: (1/2)/(2/4) = 1, E: 0; the effective
    /// size is 4² / (2² + 1 + 1) = 8/3.
    ///
    /// - Treated: conversion 1/2, AOV 300/1 = 300, visits (2 + 1)/2 = 1.5.
    /// - Raw control: conversion 2/4 (D, G), AOV (100 + 200 + 400)/3 = 233.33, visits
    ///   (1 + 2 + 0 + 1)/4 = 1.
    /// - Reweighted control: conversion (2·1 + 1·0 + 1·1)/4 = 0.75, AOV
    ///   (2·100 + 1·600)/(2·1 + 1·2) = 200, visits (2·1 + 1·0 + 1·1)/4 = 0.75.
    /// - Effects: conversion −0.25, AOV +100, visits +0.75.
    ///
    /// Standard errors: every treated stratum and D's stratum hold one customer and contribute
    /// nothing; (no, 0) of the control holds F (0 visits, no order) and G (1 visit, 600 in two
    /// orders), share 1/2:
    /// - conversion: (1/2)² · (1/2)(1/2)/2 = 1/32;
    /// - visits: sample variance of (0, 1) is 1/2, (1/2)² · (1/2)/2 = 1/16, SE 1/4;
    /// - AOV: N̄ = (1/2)·1 + (1/2)·1 = 1, z = (S − 200·N)/1 is 0 for F and 200 for G, sample
    ///   variance 20000, (1/2)² · 20000/2 = 2500, SE 50.
    ///
    /// Unadjusted (pooled): conversion 1/2 − 1/2 with variance (1/4)/2 + (1/4)/4 = 3/16; visits
    /// 1.5 − 1 with variance (1/2)/2 + (2/3)/4 = 5/12; AOV 300 − 700/3, the control's
    /// S − (700/3)·N being −400/3, 0, 0, 400/3 with sample variance 320000/27, over n = 4 and
    /// N̄² = (3/4)²: 1280000/243.
    fn hand_case() -> (Activity, Vec<CustomerId>) {
        let [a, b, c, d, e, f, g, h, i] = [(); 9].map(|()| CustomerId::new());
        let mut log = Log::default();
        log.order(a, T - day(10), "CNY", 50);
        log.visit(a, T - day(5));
        log.visit(a, T);
        log.visit(a, T + day(1));
        log.visit(a, T + day(2));
        log.order(a, T + day(3), "CNY", 300);

        log.visit(b, T - day(60));
        log.visit(b, T + day(1));

        log.visit(c, T - day(20));
        log.visit(c, T - day(15));
        log.visit(c, T - 1);
        log.order(c, T + day(1), "CNY", 500);

        log.visit(d, T - day(30));
        log.order(d, T - day(20), "CNY", 80);
        log.visit(d, T - day(2));
        log.visit(d, T + day(1));
        log.order(d, T + day(2), "USD", 999);
        log.order(d, T + day(3), "CNY", 100);

        log.visit(e, T - day(31));
        log.order(e, T - day(3), "CNY", 70);
        log.visit(e, T + day(1));
        log.visit(e, T + day(2));
        log.order(e, T + day(31), "CNY", 5000);

        log.visit(f, T - day(40));

        log.visit(g, T);
        log.visit(g, T + day(1));
        log.order(g, T + day(5), "CNY", 200);
        log.order(g, T + day(30), "CNY", 400);

        log.visit(h, T + 1);
        log.order(h, T + day(2), "CNY", 700);

        log.order(i, T + day(1), "CNY", 800);

        (log.activity(), vec![a, b, c, h])
    }

    #[test]
    fn hand_worked_case() {
        let (activity, targeted) = hand_case();
        let q = query(&activity, &targeted, 30, 30);
        let r = campaign_effect(&activity, &q).unwrap();

        assert_eq!(r.lookback_start, T - day(30));
        assert_eq!(r.window_end, T + day(30));
        assert_eq!(r.targeted, 4);
        assert_eq!(r.treated_eligible, 3);
        assert_eq!(r.treated_excluded, 1);

        let strata: Vec<_> = r
            .strata
            .iter()
            .map(|s| {
                (
                    s.bought_before,
                    s.visits_before,
                    s.treated,
                    s.control,
                    s.compared,
                    s.control_weight,
                )
            })
            .collect();
        use VisitBand::*;
        assert_eq!(
            strata,
            vec![
                (false, Zero, 1, 2, true, 1.0),
                (false, OneOrTwo, 0, 0, false, 0.0),
                (false, ThreeOrMore, 1, 0, false, 0.0),
                (true, Zero, 0, 1, false, 0.0),
                (true, OneOrTwo, 1, 1, true, 2.0),
                (true, ThreeOrMore, 0, 0, false, 0.0),
            ]
        );

        assert_eq!(r.treated.customers, 2);
        assert_close!(r.treated.effective_customers, 2.0);
        assert_close!(r.treated.conversion, 0.5);
        assert_close!(r.treated.average_order_value.unwrap(), 300.0);
        assert_close!(r.treated.visits_per_customer, 1.5);

        assert_eq!(r.control_raw.customers, 4);
        assert_close!(r.control_raw.effective_customers, 4.0);
        assert_close!(r.control_raw.conversion, 0.5);
        assert_close!(r.control_raw.average_order_value.unwrap(), 700.0 / 3.0);
        assert_close!(r.control_raw.visits_per_customer, 1.0);

        assert_eq!(r.control_reweighted.customers, 3);
        assert_close!(r.control_reweighted.effective_customers, 8.0 / 3.0);
        assert_close!(r.control_reweighted.conversion, 0.75);
        assert_close!(r.control_reweighted.average_order_value.unwrap(), 200.0);
        assert_close!(r.control_reweighted.visits_per_customer, 0.75);

        let e = &r.effect;
        assert_close!(e.conversion.difference, -0.25);
        assert_close!(e.conversion.standard_error, (1.0f64 / 32.0).sqrt());
        assert_close!(e.conversion.ci_low, -0.25 - Z_95 * (1.0f64 / 32.0).sqrt());
        assert_close!(e.conversion.ci_high, -0.25 + Z_95 * (1.0f64 / 32.0).sqrt());
        let aov = e.average_order_value.unwrap();
        assert_close!(aov.difference, 100.0);
        assert_close!(aov.standard_error, 50.0);
        assert_close!(aov.ci_low, 100.0 - Z_95 * 50.0);
        assert_close!(e.visits_per_customer.difference, 0.75);
        assert_close!(e.visits_per_customer.standard_error, 0.25);

        let u = &r.unadjusted;
        assert_close!(u.conversion.difference, 0.0);
        assert_close!(u.conversion.standard_error, (3.0f64 / 16.0).sqrt());
        assert_close!(u.visits_per_customer.difference, 0.5);
        assert_close!(u.visits_per_customer.standard_error, (5.0f64 / 12.0).sqrt());
        let aov = u.average_order_value.unwrap();
        assert_close!(aov.difference, 300.0 - 700.0 / 3.0);
        assert_close!(aov.standard_error, (1_280_000.0f64 / 243.0).sqrt());
    }

    /// A tiny linear congruential generator, for reproducible pseudo-random data.
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        fn below(&mut self, n: u64) -> u64 {
            ((self.uniform() * n as f64) as u64).min(n - 1)
        }

        fn chance(&mut self, p: f64) -> bool {
            self.uniform() < p
        }
    }

    /// Half of `customers` targeted, 60% of them pre-period buyers against 20% of the others.
    /// In the window, buyers convert at 40% and others at 10%, plus `lift` when targeted; buyers'
    /// orders are worth 200–600, others' 100–300 (CNY), whether targeted or not; visits are
    /// 0–2, one more for buyers, and one more with probability 1/2 when targeted.
    fn simulate(customers: usize, lift: f64, rng: &mut Lcg) -> (Activity, Vec<CustomerId>) {
        let mut log = Log::default();
        let mut targeted = Vec::new();
        for i in 0..customers {
            let who = CustomerId::new();
            let is_targeted = i % 2 == 0;
            if is_targeted {
                targeted.push(who);
            }
            let buyer = rng.chance(if is_targeted { 0.6 } else { 0.2 });
            log.visit(who, T - day(100));
            for v in 0..rng.below(5) as i64 {
                log.visit(who, T - day(1 + v));
            }
            if buyer {
                log.order(who, T - day(7), "CNY", 300);
            }
            let base = if buyer { 0.4 } else { 0.1 };
            if rng.chance(base + if is_targeted { lift } else { 0.0 }) {
                let amount = if buyer {
                    200 + rng.below(401)
                } else {
                    100 + rng.below(201)
                };
                log.order(who, T + day(3), "CNY", amount as i64);
            }
            let visits =
                rng.below(3) + u64::from(buyer) + u64::from(is_targeted && rng.chance(0.5));
            for v in 0..visits as i64 {
                log.visit(who, T + day(1 + v));
            }
        }
        (log.activity(), targeted)
    }

    /// The AOV difference the simulation implies given the treated share of buyers: the same
    /// order values in both groups, but the lift changes the mix of orders.
    fn simulated_aov_difference(buyer_share: f64, lift: f64) -> f64 {
        let aov = |buyer_rate: f64, other_rate: f64| {
            let buyer_orders = buyer_share * buyer_rate;
            let other_orders = (1.0 - buyer_share) * other_rate;
            (buyer_orders * 400.0 + other_orders * 200.0) / (buyer_orders + other_orders)
        };
        aov(0.4 + lift, 0.1 + lift) - aov(0.4, 0.1)
    }

    fn buyer_share(r: &CampaignEffect) -> f64 {
        let treated = |bought: bool| -> usize {
            r.strata
                .iter()
                .filter(|s| s.compared && s.bought_before == bought)
                .map(|s| s.treated)
                .sum()
        };
        treated(true) as f64 / (treated(true) + treated(false)) as f64
    }

    #[test]
    fn simulation_recovers_a_known_lift_despite_a_skewed_segment() {
        let mut rng = Lcg(20_240_601);
        let (activity, targeted) = simulate(20_000, 0.05, &mut rng);
        let r = campaign_effect(&activity, &query(&activity, &targeted, 14, 30)).unwrap();
        assert_eq!(r.treated_eligible, 10_000);
        assert_eq!(r.treated_excluded, 0);

        // The raw comparison mostly measures who was picked: about 0.33 − 0.16 = 0.17.
        let raw = r.treated.conversion - r.control_raw.conversion;
        assert!(raw > 0.13, "raw difference {raw}");
        assert_close!(r.unadjusted.conversion.difference, raw);
        assert!(r.unadjusted.conversion.ci_low > 0.1);

        let c = r.effect.conversion;
        assert!(
            c.ci_low <= 0.05 && 0.05 <= c.ci_high,
            "conversion effect {c:?} misses 0.05"
        );
        assert!(
            (c.difference - 0.05).abs() < 3.0 * c.standard_error,
            "{c:?}"
        );
        assert!(c.standard_error > 0.004 && c.standard_error < 0.02, "{c:?}");

        let v = r.effect.visits_per_customer;
        assert!((v.difference - 0.5).abs() < 3.0 * v.standard_error, "{v:?}");
        assert!(r.unadjusted.visits_per_customer.difference > 0.8);

        let truth = simulated_aov_difference(buyer_share(&r), 0.05);
        let a = r.effect.average_order_value.unwrap();
        assert!(
            (a.difference - truth).abs() < 3.0 * a.standard_error,
            "{a:?} vs {truth}"
        );
        assert!(r.unadjusted.average_order_value.unwrap().difference > 30.0);
    }

    /// Across repeated simulations, the reported standard errors match the spread of the
    /// estimates, and the 95% intervals cover the true lift about 95% of the time.
    #[test]
    fn standard_errors_are_calibrated() {
        const RUNS: usize = 100;
        let mut rng = Lcg(7);
        let mut estimates = [Vec::new(), Vec::new(), Vec::new()];
        let mut errors = [0.0; 3];
        let mut covered = [0; 3];
        for _ in 0..RUNS {
            let (activity, targeted) = simulate(1_000, 0.05, &mut rng);
            let r = campaign_effect(&activity, &query(&activity, &targeted, 14, 30)).unwrap();
            let aov_truth = simulated_aov_difference(buyer_share(&r), 0.05);
            let aov = r.effect.average_order_value.unwrap();
            let metrics = [
                (r.effect.conversion, 0.05),
                (r.effect.visits_per_customer, 0.5),
                (aov, aov_truth),
            ];
            for (k, (e, truth)) in metrics.into_iter().enumerate() {
                estimates[k].push(e.difference);
                errors[k] += e.standard_error / RUNS as f64;
                covered[k] += usize::from(e.ci_low <= truth && truth <= e.ci_high);
            }
        }
        for k in 0..3 {
            let mean = estimates[k].iter().sum::<f64>() / RUNS as f64;
            let sd = (estimates[k].iter().map(|x| (x - mean).powi(2)).sum::<f64>()
                / (RUNS - 1) as f64)
                .sqrt();
            let ratio = sd / errors[k];
            assert!(
                (0.8..1.25).contains(&ratio),
                "metric {k}: spread {sd}, mean standard error {}",
                errors[k]
            );
            assert!(
                covered[k] >= 88,
                "metric {k}: covered {} of {RUNS}",
                covered[k]
            );
        }
    }

    #[test]
    fn stratum_without_control_is_excluded_and_all_excluded_is_an_error() {
        let (activity, _) = hand_case();
        // Every eligible customer targeted: no control at all.
        let everyone: Vec<CustomerId> = activity.live().map(|(_, c)| c.id).collect();
        let q = query(&activity, &everyone, 30, 30);
        assert_eq!(
            campaign_effect(&activity, &q).unwrap_err(),
            CampaignError::NoComparableControl { treated: 7 }
        );

        // A lone treated customer in a stratum without control (C, 3+ visits, no order).
        let mut log = Log::default();
        let [c, x] = [(); 2].map(|()| CustomerId::new());
        for k in 1..=3 {
            log.visit(c, T - day(k));
        }
        log.visit(x, T - day(1));
        log.order(x, T + day(1), "CNY", 100);
        let activity = log.activity();
        let q = query(&activity, &[c], 30, 30);
        assert_eq!(
            campaign_effect(&activity, &q).unwrap_err(),
            CampaignError::NoComparableControl { treated: 1 }
        );
    }

    #[test]
    fn no_orders_in_the_window_gives_no_average_order_value() {
        let mut log = Log::default();
        let [a, b, c] = [(); 3].map(|()| CustomerId::new());
        for who in [a, b, c] {
            log.order(who, T - day(50), "CNY", 100);
            log.visit(who, T + day(2));
        }
        log.visit(a, T + day(3));
        let activity = log.activity();
        let r = campaign_effect(&activity, &query(&activity, &[a], 7, 30)).unwrap();
        assert_eq!(r.treated.conversion, 0.0);
        assert_eq!(r.treated.average_order_value, None);
        assert_eq!(r.control_raw.average_order_value, None);
        assert_eq!(r.control_reweighted.average_order_value, None);
        assert_eq!(r.effect.average_order_value, None);
        assert_eq!(r.unadjusted.average_order_value, None);
        assert_close!(r.effect.visits_per_customer.difference, 1.0);
        assert_close!(r.effect.conversion.difference, 0.0);
        assert_eq!(r.effect.conversion.standard_error, 0.0);

        let json = serde_json::to_value(&r).unwrap();
        assert!(json["effect"]["average_order_value"].is_null());
        assert!(json["treated"]["average_order_value"].is_null());
        assert!(!json.to_string().contains("NaN"));
    }

    #[test]
    fn customers_first_seen_after_targeting_are_not_eligible() {
        let mut log = Log::default();
        let [early, late, control, late_control] = [(); 4].map(|()| CustomerId::new());
        log.visit(early, T - day(40));
        log.visit(control, T - day(40));
        log.visit(late, T + 1);
        log.order(late, T + day(1), "CNY", 100);
        log.order(late_control, T + day(1), "CNY", 100);
        let activity = log.activity();

        let r = campaign_effect(&activity, &query(&activity, &[early, late], 30, 30)).unwrap();
        assert_eq!(r.targeted, 2);
        assert_eq!(r.treated_eligible, 1);
        assert_eq!(r.treated.customers, 1);
        assert_eq!(r.control_raw.customers, 1);
        assert_eq!(r.treated.conversion, 0.0);
        assert_eq!(r.control_raw.conversion, 0.0);

        let only_late = query(&activity, &[late], 30, 30);
        assert_eq!(
            campaign_effect(&activity, &only_late).unwrap_err(),
            CampaignError::NoEligibleTreated { targeted: 1, at: T }
        );
    }

    #[test]
    fn an_empty_window_is_refused() {
        let (activity, targeted) = hand_case();
        let q = query(&activity, &targeted, 0, 30);
        assert_eq!(
            campaign_effect(&activity, &q).unwrap_err(),
            CampaignError::EmptyWindow
        );
        assert!(CampaignError::EmptyWindow
            .to_string()
            .contains("window_days"));
    }

    #[test]
    fn without_lookback_nothing_is_adjusted() {
        let (activity, targeted) = hand_case();
        let r = campaign_effect(&activity, &query(&activity, &targeted, 30, 0)).unwrap();
        assert_eq!(r.treated_excluded, 0);
        assert_eq!(r.strata.iter().filter(|s| s.compared).count(), 1);
        // Treated A, B, C against D, E, F, G, unweighted.
        assert_close!(r.treated.conversion, 2.0 / 3.0);
        assert_close!(r.control_reweighted.conversion, r.control_raw.conversion);
        assert_eq!(r.effect.conversion, r.unadjusted.conversion);
        assert_eq!(
            r.effect.visits_per_customer,
            r.unadjusted.visits_per_customer
        );
    }

    #[test]
    fn a_targeted_customer_merged_away_counts_as_the_survivor() {
        let mut log = Log::default();
        let [survivor, absorbed, control] = [(); 3].map(|()| CustomerId::new());
        log.visit(survivor, T - day(40));
        log.visit(absorbed, T - day(40));
        log.visit(control, T - day(40));
        let before = log.activity();
        let targeted = numbers(&before, &[absorbed]);
        log.merge(absorbed, survivor, T + day(1));
        log.order(survivor, T + day(2), "CNY", 100);
        let activity = log.activity();

        let q = CampaignQuery {
            targeted,
            at: T,
            window_days: 30,
            lookback_days: 30,
            currency: activity.currencies.get("CNY").unwrap() as u16,
        };
        let r = campaign_effect(&activity, &q).unwrap();
        assert_eq!(r.treated_eligible, 1);
        assert_eq!(r.treated.conversion, 1.0);
        assert_eq!(r.control_raw.customers, 1);
        assert_eq!(r.control_raw.conversion, 0.0);
    }
}
