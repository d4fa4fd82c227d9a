//! Cohort retention: customers grouped by the month (or week) of their first purchase, and the
//! share of each group still buying in every later period.
//!
//! A customer's cohort is the calendar period (UTC) of their first order; period 0 is that
//! period, period k the k-th after it. Retention in period k is the number of the cohort's
//! customers with at least one order in period k, divided by the cohort's size, so period 0 is
//! always 1. Periods after the end of observation are left out; the last one shown may be only
//! partly observed. With `by_channel`, each cohort is split by the channel of the first order.
//!
//! The table covers the last `periods` periods up to the end of observation: cohorts that began
//! earlier are left out, so the table holds at most `periods` cohorts (per channel) of at most
//! `periods` figures each, however old the data.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::activity::{time_of, Activity};

/// The most periods a table may cover: 120 months (10 years) or 120 weeks (about 2.3 years).
/// A table then holds at most 120 cohorts (per channel) of at most 120 figures each.
pub const MAX_COHORT_PERIODS: u32 = 120;

/// The periods a table covers unless asked otherwise: the most it may.
pub const DEFAULT_COHORT_PERIODS: u32 = MAX_COHORT_PERIODS;

/// The length of a cohort period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Period {
    /// Calendar months.
    Month,
    /// Weeks starting on Monday.
    Week,
}

impl Period {
    /// The number of the period holding `at` (seconds since 1970-01-01 UTC): months since
    /// January 1970, or weeks since the Monday 1969-12-29.
    pub fn index(self, at: i64) -> i64 {
        match self {
            Period::Month => {
                let t = time_of(at);
                i64::from(t.year() - 1970) * 12 + i64::from(t.month0())
            }
            // 1970-01-01 was a Thursday: day 0 is 3 days after a Monday.
            Period::Week => (at.div_euclid(86_400) + 3).div_euclid(7),
        }
    }

    /// The first day of period `index`.
    pub fn start(self, index: i64) -> NaiveDate {
        match self {
            Period::Month => {
                let year = 1970 + index.div_euclid(12);
                let month = index.rem_euclid(12) + 1;
                i32::try_from(year)
                    .ok()
                    .and_then(|y| NaiveDate::from_ymd_opt(y, month as u32, 1))
                    .unwrap_or_default()
            }
            Period::Week => {
                NaiveDate::from_ymd_opt(1969, 12, 29).unwrap_or_default()
                    + chrono::Days::new((index * 7).max(0) as u64)
            }
        }
    }
}

/// One cohort's row of the retention table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CohortRow {
    /// The first day of the cohort's period.
    pub cohort: NaiveDate,
    /// The channel of the first order, when split by channel.
    pub channel: Option<String>,
    /// Customers in the cohort.
    pub customers: u64,
    /// Customers with an order in period 0, 1, 2, ... after their first.
    pub buying: Vec<u64>,
    /// `buying[k] / customers`, a share (0 to 1).
    pub retention: Vec<f64>,
}

/// The retention table, cohorts in time order (then by channel name).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CohortTable {
    /// The period length.
    pub period: Period,
    /// The rows.
    pub rows: Vec<CohortRow>,
}

/// Groups live customers with orders before `end` (seconds since 1970-01-01 UTC) into cohorts
/// by the period of their first order, and counts who bought in each later period up to the one
/// holding `end`. Only the cohorts of the last `periods` periods (the one holding `end` and
/// those before it; 1 to [`MAX_COHORT_PERIODS`], clamped) are kept.
pub fn cohorts(
    activity: &Activity,
    period: Period,
    by_channel: bool,
    periods: u32,
    end: i64,
) -> CohortTable {
    let last = period.index(end);
    let first_shown = last - i64::from(periods.clamp(1, MAX_COHORT_PERIODS)) + 1;
    // (cohort period, channel) -> buyers per period offset
    let mut table: BTreeMap<(i64, Option<u8>), (u64, Vec<u64>)> = BTreeMap::new();
    let mut seen: Vec<i64> = Vec::new();
    for (_, customer) in activity.live() {
        let mut orders = customer.orders.iter().filter(|o| o.at <= end);
        let Some(first) = orders.next() else {
            continue;
        };
        let start = period.index(first.at);
        if start < first_shown {
            continue;
        }
        let key = (start, by_channel.then_some(first.channel));
        let width = usize::try_from(last - start + 1).unwrap_or(1);
        let row = table.entry(key).or_insert_with(|| (0, vec![0; width]));
        row.0 += 1;
        seen.clear();
        seen.push(0);
        for order in orders {
            let k = period.index(order.at) - start;
            if seen.last() != Some(&k) {
                seen.push(k);
            }
        }
        for &k in &seen {
            if let Some(count) = usize::try_from(k).ok().and_then(|k| row.1.get_mut(k)) {
                *count += 1;
            }
        }
    }
    let mut rows: Vec<CohortRow> = table
        .into_iter()
        .map(|((start, channel), (customers, buying))| CohortRow {
            cohort: period.start(start),
            channel: channel.map(|c| activity.channels.name(u32::from(c)).to_owned()),
            customers,
            retention: buying
                .iter()
                .map(|&b| b as f64 / customers.max(1) as f64)
                .collect(),
            buying,
        })
        .collect();
    // Channels are numbered as first seen; rows within a cohort go by channel name.
    rows.sort_by(|a, b| {
        a.cohort
            .cmp(&b.cohort)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    CohortTable { period, rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::activity::tests::{order, Log};

    fn day(y: i32, m: u32, d: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(12, 0, 0))
            .map(|t| t.and_utc().timestamp())
            .unwrap_or_default()
    }

    #[test]
    fn periods_number_months_and_monday_weeks() {
        assert_eq!(Period::Month.index(day(1970, 1, 31)), 0);
        assert_eq!(Period::Month.index(day(2026, 3, 1)), 56 * 12 + 2);
        assert_eq!(
            Period::Month.start(Period::Month.index(day(2026, 3, 17))),
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );
        // 2026-11-23 is a Monday, 2026-11-29 a Sunday.
        let monday = Period::Week.index(day(2026, 11, 23));
        assert_eq!(Period::Week.index(day(2026, 11, 29)), monday);
        assert_eq!(Period::Week.index(day(2026, 11, 30)), monday + 1);
        assert_eq!(
            Period::Week.start(monday),
            NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
        );
    }

    #[test]
    fn retention_counts_buyers_per_later_month() {
        // January cohort: a (Jan, Feb, Apr), b (Jan, Jan, Mar), c (Jan). February cohort: d
        // (Feb, Mar) on the app. e never buys. Observation ends in mid-April.
        let mut log = Log::new();
        let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|_| log.customer());
        log.touch(e, "web", "page_viewed", day(2026, 1, 3));
        for (who, at) in [
            (a, day(2026, 1, 5)),
            (a, day(2026, 2, 5)),
            (a, day(2026, 4, 5)),
            (b, day(2026, 1, 9)),
            (b, day(2026, 1, 20)),
            (b, day(2026, 3, 2)),
            (c, day(2026, 1, 30)),
        ] {
            log.order(who, "web", at, order(100, &["A"]));
        }
        log.order(d, "app", day(2026, 2, 1), order(100, &["A"]));
        log.order(d, "web", day(2026, 3, 1), order(100, &["A"]));
        // After the end: not counted.
        log.order(c, "web", day(2026, 5, 1), order(100, &["A"]));
        let activity = log.activity();
        let table = cohorts(&activity, Period::Month, false, 24, day(2026, 4, 15));
        assert_eq!(table.rows.len(), 2);
        let jan = &table.rows[0];
        assert_eq!(jan.cohort, NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(jan.customers, 3);
        assert_eq!(jan.buying, vec![3, 1, 1, 1]);
        assert!((jan.retention[1] - 1.0 / 3.0).abs() < 1e-12);
        let feb = &table.rows[1];
        assert_eq!((feb.customers, feb.buying.clone()), (1, vec![1, 1, 0]));

        let by_channel = cohorts(&activity, Period::Month, true, 24, day(2026, 4, 15));
        let labels: Vec<_> = by_channel
            .rows
            .iter()
            .map(|r| (r.cohort.month(), r.channel.clone(), r.customers))
            .collect();
        assert_eq!(
            labels,
            vec![(1, Some("web".into()), 3), (2, Some("app".into()), 1)]
        );
    }

    #[test]
    fn merged_customers_count_once_in_the_survivors_cohort() {
        let mut log = Log::new();
        let [a, b] = [0, 1].map(|_| log.customer());
        log.order(a, "web", day(2026, 2, 1), order(100, &["A"]));
        log.order(b, "store", day(2026, 1, 1), order(100, &["A"]));
        log.merge(b, a);
        let table = cohorts(&log.activity(), Period::Month, false, 24, day(2026, 3, 1));
        assert_eq!(table.rows.len(), 1);
        assert_eq!(table.rows[0].customers, 1);
        assert_eq!(table.rows[0].buying, vec![1, 1, 0]);
    }

    #[test]
    fn old_data_does_not_widen_the_table_beyond_its_periods() {
        // Orders dated in the years 10 to 29 and one last week: only the last 12 weeks count.
        let mut log = Log::new();
        for year in 10..30 {
            let who = log.customer();
            let at = NaiveDate::from_ymd_opt(year, 6, 1)
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .map(|t| t.and_utc().timestamp())
                .unwrap_or_default();
            log.order(who, "web", at, order(100, &["A"]));
            log.order(who, "web", day(2026, 11, 20), order(100, &["A"]));
        }
        let recent = log.customer();
        log.order(recent, "app", day(2026, 11, 10), order(100, &["A"]));
        let activity = log.activity();
        let end = day(2026, 11, 25);
        let table = cohorts(&activity, Period::Week, false, 12, end);
        assert_eq!(table.rows.len(), 1);
        assert_eq!(table.rows[0].customers, 1);
        assert!(table.rows.iter().all(|r| r.buying.len() <= 12));
        // Asked for more than the maximum: clamped.
        let table = cohorts(&activity, Period::Week, true, u32::MAX, end);
        let widest = table.rows.iter().map(|r| r.buying.len()).max();
        assert!(widest <= Some(MAX_COHORT_PERIODS as usize), "{widest:?}");
        assert!(table.rows.len() <= MAX_COHORT_PERIODS as usize);
    }
}
