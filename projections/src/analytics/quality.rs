//! Data quality: how complete customers' core identifiers are, how many records each source
//! gets refused and why, how many touchpoints reach a customer known by a core identifier, and
//! how late each source delivers, per period.
//!
//! - Completeness: for each identifier kind, the share of live customers holding one; and the
//!   share holding at least one core identifier (a kind the identity rules let merge).
//! - Refusals: records in the quarantine per period (of receipt), source and code, and each
//!   source's refusal rate: refused / (refused + stored) in the period.
//! - Resolution: the share of a source's touchpoints whose customer holds a core identifier
//!   (the rest are known only by a device or a cookie).
//! - Freshness: the delay from when a touchpoint happened to when it was stored, seconds: the
//!   median, the 95th percentile (nearest rank) and the maximum.
//!
//! Periods are those of storing (a touchpoint's `occurred_at` plus its delay; a refusal's
//! receipt), so late data shows in the period it arrived. Refusals count only while the
//! quarantine keeps them (its retention).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use serde::Serialize;

use super::activity::Activity;
use super::cohort::Period;

/// A refused record, as counted.
#[derive(Clone, Copy, Debug)]
pub struct RefusalFact<'a> {
    /// When it was received, seconds since 1970-01-01 UTC.
    pub at: i64,
    /// The sending system ("" when the record named none).
    pub source: &'a str,
    /// The rejection code.
    pub code: &'a str,
}

/// The share of live customers holding an identifier kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completeness {
    /// The identifier kind, or `any core identifier`.
    pub kind: String,
    /// Live customers holding it.
    pub customers: u64,
    /// Their share of live customers (0 to 1).
    pub share: f64,
}

/// One source's figures in one period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourcePeriod {
    /// The first day of the period.
    pub period: NaiveDate,
    /// The source system ("" when unnamed).
    pub source: String,
    /// Touchpoints stored.
    pub touchpoints: u64,
    /// Records refused.
    pub refused: u64,
    /// refused / (refused + touchpoints), 0 to 1.
    pub refusal_rate: f64,
    /// Share of the touchpoints whose customer holds a core identifier, 0 to 1.
    pub core_resolved_share: f64,
    /// Median delay from happening to stored, seconds.
    pub lag_p50_seconds: u32,
    /// 95th percentile of that delay, seconds.
    pub lag_p95_seconds: u32,
    /// The longest delay, seconds.
    pub lag_max_seconds: u32,
}

/// Refusals of one code from one source in one period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefusalCount {
    /// The first day of the period.
    pub period: NaiveDate,
    /// The source system ("" when unnamed).
    pub source: String,
    /// The rejection code.
    pub code: String,
    /// Records refused.
    pub records: u64,
}

/// The data-quality report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityReport {
    /// Live customers.
    pub customers: u64,
    /// Completeness per identifier kind, then of any core identifier.
    pub completeness: Vec<Completeness>,
    /// Per period and source, in that order.
    pub sources: Vec<SourcePeriod>,
    /// Refusals per period, source and code, in that order.
    pub refusals: Vec<RefusalCount>,
}

#[derive(Default)]
struct Cell {
    touchpoints: u64,
    refused: u64,
    core: u64,
    lags: Vec<u32>,
}

/// The nearest-rank `q` quantile of sorted `values` (0 for none).
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The periods a report covers: the last `count` periods up to the one holding `end` (Unix
/// seconds). What was stored or refused outside them is left out, so the report's size is
/// bounded by `count`, not by the span of the data.
#[derive(Clone, Copy, Debug)]
pub struct LastPeriods {
    /// Periods covered, at least 1.
    pub count: u32,
    /// A time in the last period covered.
    pub end: i64,
}

impl LastPeriods {
    /// Whether the period numbered `index` is covered.
    fn covers(self, period: Period, index: i64) -> bool {
        let last = period.index(self.end);
        let first = last.saturating_sub(i64::from(self.count.max(1)) - 1);
        (first..=last).contains(&index)
    }
}

/// The report over `activity`, with the identifier kinds each live customer (by number) holds,
/// the kinds that are core, and the quarantine's refusals, per `period` over `last`.
pub fn quality(
    activity: &Activity,
    kinds: &HashMap<u32, Vec<String>>,
    core: &HashSet<String>,
    refusals: &[RefusalFact<'_>],
    period: Period,
    last: LastPeriods,
) -> QualityReport {
    let mut holders: BTreeMap<&str, u64> = BTreeMap::new();
    let mut any_core = 0u64;
    let mut customers = 0u64;
    let mut cells: BTreeMap<(i64, &str), Cell> = BTreeMap::new();
    for (n, customer) in activity.live() {
        customers += 1;
        let held = kinds.get(&n).map_or(&[][..], Vec::as_slice);
        for kind in held {
            *holders.entry(kind.as_str()).or_default() += 1;
        }
        let has_core = held.iter().any(|k| core.contains(k));
        any_core += u64::from(has_core);
        for touch in &customer.touches {
            let stored = touch.at + i64::from(touch.lag);
            let index = period.index(stored);
            if !last.covers(period, index) {
                continue;
            }
            let source = activity.sources.name(u32::from(touch.source));
            let cell = cells.entry((index, source)).or_default();
            cell.touchpoints += 1;
            cell.core += u64::from(has_core);
            cell.lags.push(touch.lag);
        }
    }
    let mut codes: BTreeMap<(i64, &str, &str), u64> = BTreeMap::new();
    for refusal in refusals {
        let p = period.index(refusal.at);
        if !last.covers(period, p) {
            continue;
        }
        cells.entry((p, refusal.source)).or_default().refused += 1;
        *codes.entry((p, refusal.source, refusal.code)).or_default() += 1;
    }
    let mut completeness: Vec<Completeness> = holders
        .into_iter()
        .map(|(kind, n)| Completeness {
            kind: kind.to_owned(),
            customers: n,
            share: share(n, customers),
        })
        .collect();
    completeness.push(Completeness {
        kind: "any core identifier".to_owned(),
        customers: any_core,
        share: share(any_core, customers),
    });
    let sources = cells
        .into_iter()
        .map(|((p, source), mut cell)| {
            cell.lags.sort_unstable();
            SourcePeriod {
                period: period.start(p),
                source: source.to_owned(),
                touchpoints: cell.touchpoints,
                refused: cell.refused,
                refusal_rate: share(cell.refused, cell.refused + cell.touchpoints),
                core_resolved_share: share(cell.core, cell.touchpoints),
                lag_p50_seconds: quantile(&cell.lags, 0.5),
                lag_p95_seconds: quantile(&cell.lags, 0.95),
                lag_max_seconds: cell.lags.last().copied().unwrap_or(0),
            }
        })
        .collect();
    let refusals = codes
        .into_iter()
        .map(|((p, source, code), records)| RefusalCount {
            period: period.start(p),
            source: source.to_owned(),
            code: code.to_owned(),
            records,
        })
        .collect();
    QualityReport {
        customers,
        completeness,
        sources,
        refusals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::activity::tests::Log;

    const DAY: i64 = 86_400;

    #[test]
    fn counts_completeness_refusals_resolution_and_lags() {
        // Day 12 (1970-01-13) and day 13 fall in one Monday week.
        let mut log = Log::new();
        let [a, b, c] = [0, 1, 2].map(|_| log.customer());
        // The log helper stores every event 5 s after it happened, from source `<channel>-source`.
        log.touch(a, "web", "page_viewed", 12 * DAY);
        log.touch(a, "web", "page_viewed", 12 * DAY + 60);
        log.touch(b, "web", "page_viewed", 12 * DAY + 120);
        log.touch(c, "app", "screen_viewed", 12 * DAY);
        // Dated in the year 69: outside the periods asked, left out of the report.
        log.touch(c, "app", "screen_viewed", -60_000_000_000);
        let activity = log.activity();
        let number = |w| activity.number_of(log.id(w)).unwrap();
        let kinds = HashMap::from([
            (number(a), vec!["phone".to_owned(), "device_id".to_owned()]),
            (number(b), vec!["device_id".to_owned()]),
        ]);
        let core = HashSet::from(["phone".to_owned(), "email".to_owned()]);
        let refusals = [
            RefusalFact {
                at: 12 * DAY,
                source: "web-source",
                code: "invalid_field",
            },
            RefusalFact {
                at: 13 * DAY,
                source: "pos",
                code: "no_identifier",
            },
        ];
        let all = LastPeriods {
            count: 120,
            end: 30 * DAY,
        };
        let report = quality(&activity, &kinds, &core, &refusals, Period::Week, all);
        assert_eq!(report.customers, 3);
        let completeness: Vec<_> = report
            .completeness
            .iter()
            .map(|c| (c.kind.as_str(), c.customers))
            .collect();
        assert_eq!(
            completeness,
            vec![("device_id", 2), ("phone", 1), ("any core identifier", 1)]
        );
        assert!((report.completeness[0].share - 2.0 / 3.0).abs() < 1e-12);

        let week = Period::Week.start(Period::Week.index(12 * DAY));
        let rows: Vec<_> = report
            .sources
            .iter()
            .map(|s| (s.period, s.source.as_str(), s.touchpoints, s.refused))
            .collect();
        assert_eq!(
            rows,
            vec![
                (week, "app-source", 1, 0),
                (week, "pos", 0, 1),
                (week, "web-source", 3, 1)
            ]
        );
        let web = &report.sources[2];
        assert!((web.refusal_rate - 0.25).abs() < 1e-12);
        assert!((web.core_resolved_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            (
                web.lag_p50_seconds,
                web.lag_p95_seconds,
                web.lag_max_seconds
            ),
            (5, 5, 5)
        );
        assert_eq!(report.sources[0].core_resolved_share, 0.0);
        assert_eq!(report.refusals.len(), 2);
        assert_eq!(report.refusals[0].code, "no_identifier");

        // One period ending before any of it: nothing per period, the customers still counted.
        let before = LastPeriods {
            count: 1,
            end: 5 * DAY,
        };
        let report = quality(&activity, &kinds, &core, &refusals, Period::Week, before);
        assert!(report.sources.is_empty() && report.refusals.is_empty());
        assert_eq!(report.customers, 3);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let lags: Vec<u32> = (1..=20).collect();
        assert_eq!(quantile(&lags, 0.5), 10);
        assert_eq!(quantile(&lags, 0.95), 19);
        assert_eq!(quantile(&[7], 0.95), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
