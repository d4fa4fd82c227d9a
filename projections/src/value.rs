//! Customer value: RFM scores and segments, and value tiers, as of a moment.
//!
//! Both are computed from profiles' order logs over a window (365 days by default) in one
//! currency. RFM scores rank customers against each other, so they are computed for a whole
//! population at once ([`score_rfm`]); tiers compare each customer with fixed thresholds
//! ([`TierRules::tier`]).

use std::collections::HashMap;
use std::hash::Hash;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// What a customer's orders in a window add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Days from the last order in the window to the moment of scoring.
    pub recency_days: i64,
    /// Orders in the window.
    pub frequency: u64,
    /// Their totals, in minor units of the currency.
    pub monetary_minor: i64,
}

/// The orders of `profile` in `currency` placed in the `window_days` before `as_of` (and not
/// after it), or `None` if there are none.
pub fn activity(
    profile: &Profile,
    currency: &str,
    as_of: DateTime<Utc>,
    window_days: i64,
) -> Option<Activity> {
    let since = as_of - Duration::days(window_days);
    let mut frequency = 0;
    let mut monetary_minor: i64 = 0;
    let mut last = None;
    for order in &profile.order_log {
        if order.currency == currency && order.at > since && order.at <= as_of {
            frequency += 1;
            // Saturating: see `Profile::revenue`; a wrapped sum would read as a negative spend.
            monetary_minor = monetary_minor.saturating_add(order.total_minor);
            last = Some(order.at);
        }
    }
    last.map(|last| Activity {
        recency_days: (as_of - last).num_days(),
        frequency,
        monetary_minor,
    })
}

/// A customer's RFM scores, each 1 (worst fifth) to 5 (best fifth).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RfmScores {
    /// Recency: the more recent the last order, the higher.
    pub r: u8,
    /// Frequency: the more orders, the higher.
    pub f: u8,
    /// Monetary: the more spent, the higher.
    pub m: u8,
}

/// The standard named RFM segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RfmSegment {
    /// Bought recently, buy often and spend the most.
    Champions,
    /// Buy often and spend well, fairly recently.
    Loyal,
    /// Recent customers with average frequency and spend.
    PotentialLoyalist,
    /// Bought most recently, but once and little.
    New,
    /// Recent shoppers who have not bought much.
    Promising,
    /// Average recency, frequency and spend.
    NeedAttention,
    /// Below average recency, frequency and spend.
    AboutToSleep,
    /// Bought often and spent well, but long ago.
    AtRisk,
    /// Used to buy the most and most often, but long ago.
    CannotLoseThem,
    /// Last bought long ago, little and rarely.
    Hibernating,
    /// The lowest on all three.
    Lost,
}

impl RfmSegment {
    /// The segment of a recency score and a combined frequency-monetary score
    /// (`(f + m) / 2`, rounded half up), by the grid in `docs/projections.md`.
    pub fn of(scores: RfmScores) -> Self {
        let r = scores.r.clamp(1, 5);
        let fm = (scores.f + scores.m).div_ceil(2).clamp(1, 5);
        match (r, fm) {
            (5, 4..=5) => Self::Champions,
            (3..=4, 4..=5) => Self::Loyal,
            (4..=5, 2..=3) => Self::PotentialLoyalist,
            (5, 1) => Self::New,
            (4, 1) => Self::Promising,
            (3, 3) => Self::NeedAttention,
            (3, 1..=2) => Self::AboutToSleep,
            (1..=2, 5) => Self::CannotLoseThem,
            (1..=2, 3..=4) => Self::AtRisk,
            (1, 1) => Self::Lost,
            _ => Self::Hibernating,
        }
    }
}

/// Scores of 1 to 5 by fifths: a value's score is 1 plus five times the share of values
/// strictly worse than it, rounded down. Equal values get equal scores; when all values are
/// distinct each fifth of the population gets one score.
fn fifths<K: Copy + Eq + Hash, V: PartialOrd + Copy>(values: &[(K, V)]) -> HashMap<K, u8> {
    let mut sorted: Vec<V> = values.iter().map(|(_, v)| *v).collect();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = sorted.len().max(1);
    values
        .iter()
        .map(|(k, v)| {
            let worse = sorted.partition_point(|x| x < v);
            let score = 1 + (5 * worse) / n;
            (*k, u8::try_from(score.min(5)).unwrap_or(5))
        })
        .collect()
}

/// RFM scores of every customer with at least one order in the window, ranked against each
/// other.
pub fn score_rfm<K: Copy + Eq + Hash>(activities: &[(K, Activity)]) -> HashMap<K, RfmScores> {
    // Recency is better when smaller: rank its negation.
    let r = fifths(
        &activities
            .iter()
            .map(|(k, a)| (*k, -a.recency_days))
            .collect::<Vec<_>>(),
    );
    let f = fifths(
        &activities
            .iter()
            .map(|(k, a)| (*k, a.frequency))
            .collect::<Vec<_>>(),
    );
    let m = fifths(
        &activities
            .iter()
            .map(|(k, a)| (*k, a.monetary_minor))
            .collect::<Vec<_>>(),
    );
    activities
        .iter()
        .map(|(k, _)| {
            (
                *k,
                RfmScores {
                    r: r.get(k).copied().unwrap_or(1),
                    f: f.get(k).copied().unwrap_or(1),
                    m: m.get(k).copied().unwrap_or(1),
                },
            )
        })
        .collect()
}

/// One value tier's conditions on spend (minor units) and orders in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The tier's name.
    pub name: String,
    /// Spend of at least this much.
    pub min_spend_minor: i64,
    /// Spend below this much, if bounded.
    #[serde(default)]
    pub max_spend_minor: Option<i64>,
    /// At least this many orders.
    pub min_orders: u64,
    /// At most this many orders, if bounded.
    #[serde(default)]
    pub max_orders: Option<u64>,
}

/// Value tiers: the first tier whose conditions a customer meets, else the fallback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierRules {
    /// The currency spend is counted in.
    pub currency: String,
    /// The window, in days before the moment of scoring.
    pub window_days: i64,
    /// Tiers, tried in order.
    pub tiers: Vec<Tier>,
    /// The tier of everyone else.
    pub fallback: String,
}

impl Default for TierRules {
    /// High value: at least 10,000 spent in the last 365 days and at least 5 purchases;
    /// potential: 3,000 to 10,000 and 2 to 4 purchases; basic: everyone else (CNY).
    fn default() -> Self {
        Self {
            currency: "CNY".into(),
            window_days: 365,
            tiers: vec![
                Tier {
                    name: "high_value".into(),
                    min_spend_minor: 1_000_000,
                    max_spend_minor: None,
                    min_orders: 5,
                    max_orders: None,
                },
                Tier {
                    name: "potential".into(),
                    min_spend_minor: 300_000,
                    max_spend_minor: Some(1_000_000),
                    min_orders: 2,
                    max_orders: Some(4),
                },
            ],
            fallback: "basic".into(),
        }
    }
}

impl TierRules {
    /// The tier of a profile as of a moment.
    pub fn tier(&self, profile: &Profile, as_of: DateTime<Utc>) -> &str {
        let (spend, orders) = activity(profile, &self.currency, as_of, self.window_days)
            .map_or((0, 0), |a| (a.monetary_minor, a.frequency));
        self.tiers
            .iter()
            .find(|t| {
                spend >= t.min_spend_minor
                    && t.max_spend_minor.is_none_or(|max| spend < max)
                    && orders >= t.min_orders
                    && t.max_orders.is_none_or(|max| orders <= max)
            })
            .map_or(self.fallback.as_str(), |t| t.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::OrderEntry;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc()
            + Duration::days(day)
    }

    fn profile(orders: &[(i64, i64)]) -> Profile {
        Profile {
            order_log: orders
                .iter()
                .map(|&(day, total)| OrderEntry {
                    at: at(day),
                    currency: "CNY".into(),
                    total_minor: total,
                })
                .collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn activity_counts_the_window_only() {
        let p = profile(&[(0, 100), (200, 300), (390, 500), (400, 700)]);
        // As of day 400, the window (day 35, day 400] holds the last three.
        let a = activity(&p, "CNY", at(400), 365).unwrap();
        assert_eq!(
            a,
            Activity {
                recency_days: 0,
                frequency: 3,
                monetary_minor: 1_500
            }
        );
        assert_eq!(activity(&p, "USD", at(400), 365), None);
        assert_eq!(activity(&p, "CNY", at(1_000), 365), None);
        assert_eq!(activity(&p, "CNY", at(395), 365).unwrap().recency_days, 5);
    }

    #[test]
    fn ten_distinct_values_fall_two_per_fifth() {
        let values: Vec<(u32, i64)> = (0..10).map(|k| (k, i64::from(k) * 7)).collect();
        let scores = fifths(&values);
        for k in 0..10u32 {
            assert_eq!(scores[&k], 1 + (k / 2) as u8, "value {k}");
        }
    }

    #[test]
    fn equal_values_share_a_score() {
        // Six customers with one order, two with two, two with five.
        let values: Vec<(u32, u64)> = [1, 1, 1, 1, 1, 1, 2, 2, 5, 5]
            .iter()
            .enumerate()
            .map(|(k, f)| (k as u32, *f))
            .collect();
        let scores = fifths(&values);
        // Nobody is below 1 order: score 1; 6 of 10 below 2 orders: 1 + 3 = 4; 8 of 10: 5.
        assert_eq!(scores[&0], 1);
        assert_eq!(scores[&6], 4);
        assert_eq!(scores[&9], 5);
    }

    #[test]
    fn a_population_simulated_by_fifths_scores_back_by_fifths() {
        // 1,000 customers: recency i % 5 fifths apart, frequency and spend in fifths too, so
        // each score must come back as the fifth the customer was drawn in.
        let activities: Vec<(u32, Activity)> = (0..1_000u32)
            .map(|i| {
                let fifth = i64::from(i % 5);
                (
                    i,
                    Activity {
                        recency_days: 400 - fifth * 80 - i64::from(i % 7),
                        frequency: 1 + fifth as u64 * 3,
                        monetary_minor: 10_000 * (fifth + 1) + i64::from(i),
                    },
                )
            })
            .collect();
        let scores = score_rfm(&activities);
        for (i, _) in &activities {
            let expected = 1 + (i % 5) as u8;
            assert_eq!(scores[i].f, expected);
            assert_eq!(scores[i].r, expected);
            assert_eq!(scores[i].m, expected);
        }
    }

    #[test]
    fn the_segment_grid_names_every_cell() {
        use RfmSegment::*;
        let cases = [
            ((5, 5, 5), Champions),
            ((5, 4, 3), Champions),
            ((4, 5, 5), Loyal),
            ((3, 4, 4), Loyal),
            ((5, 2, 3), PotentialLoyalist),
            ((4, 3, 3), PotentialLoyalist),
            ((5, 1, 1), New),
            ((4, 1, 1), Promising),
            ((3, 3, 3), NeedAttention),
            ((3, 1, 2), AboutToSleep),
            ((2, 5, 5), CannotLoseThem),
            ((1, 4, 5), CannotLoseThem),
            ((2, 3, 4), AtRisk),
            ((1, 3, 3), AtRisk),
            ((2, 1, 2), Hibernating),
            ((1, 2, 2), Hibernating),
            ((1, 1, 1), Lost),
        ];
        for ((r, f, m), segment) in cases {
            assert_eq!(RfmSegment::of(RfmScores { r, f, m }), segment, "{r}{f}{m}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                for m in 1..=5 {
                    seen.insert(RfmSegment::of(RfmScores { r, f, m }));
                }
            }
        }
        assert_eq!(seen.len(), 11, "all eleven segments occur");
    }

    #[test]
    fn tiers_follow_the_default_thresholds() {
        let rules = TierRules::default();
        let now = at(400);
        // 5 orders of 2,000 yuan in the year: 10,000 yuan and 5 purchases.
        let high = profile(&[
            (100, 200_000),
            (150, 200_000),
            (200, 200_000),
            (250, 200_000),
            (300, 200_000),
        ]);
        assert_eq!(rules.tier(&high, now), "high_value");
        // The same spend in 4 purchases is not high value, nor potential (over 10,000).
        let four = profile(&[
            (100, 250_000),
            (150, 250_000),
            (200, 250_000),
            (250, 250_000),
        ]);
        assert_eq!(rules.tier(&four, now), "basic");
        let potential = profile(&[(100, 150_000), (390, 150_000)]);
        assert_eq!(rules.tier(&potential, now), "potential");
        // Old orders do not count.
        let lapsed = profile(&[(0, 2_000_000), (1, 2_000_000), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(rules.tier(&lapsed, now), "basic");
        assert_eq!(rules.tier(&Profile::default(), now), "basic");
    }
}
