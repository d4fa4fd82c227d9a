//! Lifecycle stages: where a customer stands in their relationship, as of a moment.
//!
//! The rules are tried in order (the first that holds gives the stage):
//! 1. **acquisition**: known, no purchase yet;
//! 2. **churned**: no purchase for `churn_days` (90 by default);
//! 3. **declining**: at least two purchases at different times, and the time since the last
//!    one is more than `declining_factor` (2.0) times the customer's own mean interval between
//!    purchases;
//! 4. **mature**: at least `mature_orders` (4) purchases in the last `mature_window_days` (365),
//!    the last within `mature_recent_days` (30): frequent and recent;
//! 5. **growth**: everyone else who has bought (first and repeat purchases on the way).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// A lifecycle stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Known, no purchase yet.
    Acquisition,
    /// Buying, not yet frequently.
    Growth,
    /// Frequent and recent.
    Mature,
    /// Buying less often than they used to.
    Declining,
    /// No purchase for a long time.
    Churned,
}

/// The thresholds of the stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleRules {
    /// Days without a purchase after which a customer has churned.
    pub churn_days: i64,
    /// How many of their own mean intervals a customer may go without buying before declining.
    pub declining_factor: f64,
    /// Purchases in the mature window that make a customer mature.
    pub mature_orders: usize,
    /// The window purchases are counted in for maturity, in days.
    pub mature_window_days: i64,
    /// A mature customer's last purchase is at most this many days old.
    pub mature_recent_days: i64,
}

impl Default for LifecycleRules {
    fn default() -> Self {
        Self {
            churn_days: 90,
            declining_factor: 2.0,
            mature_orders: 4,
            mature_window_days: 365,
            mature_recent_days: 30,
        }
    }
}

impl LifecycleRules {
    /// The stage of a profile as of a moment (orders after it are not counted).
    pub fn stage(&self, profile: &Profile, as_of: DateTime<Utc>) -> Stage {
        let orders: Vec<DateTime<Utc>> = profile
            .order_log
            .iter()
            .map(|o| o.at)
            .filter(|at| *at <= as_of)
            .collect();
        let (Some(first), Some(last)) = (orders.first(), orders.last()) else {
            return Stage::Acquisition;
        };
        let since_last = as_of - *last;
        if since_last >= Duration::days(self.churn_days) {
            return Stage::Churned;
        }
        if orders.len() >= 2 && last > first {
            let mean_interval = (*last - *first).num_seconds() as f64 / (orders.len() - 1) as f64;
            if since_last.num_seconds() as f64 > self.declining_factor * mean_interval {
                return Stage::Declining;
            }
        }
        let window_start = as_of - Duration::days(self.mature_window_days);
        let in_window = orders.iter().filter(|at| **at > window_start).count();
        if in_window >= self.mature_orders && since_last <= Duration::days(self.mature_recent_days)
        {
            return Stage::Mature;
        }
        Stage::Growth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::OrderEntry;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
            + Duration::days(day)
    }

    fn bought_on(days: &[i64]) -> Profile {
        Profile {
            order_log: days
                .iter()
                .map(|&d| OrderEntry {
                    at: at(d),
                    currency: "CNY".into(),
                    total_minor: 100,
                })
                .collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn each_rule_gives_its_stage() {
        let rules = LifecycleRules::default();
        assert_eq!(rules.stage(&Profile::default(), at(0)), Stage::Acquisition);
        // One purchase 10 days ago: on the way.
        assert_eq!(rules.stage(&bought_on(&[0]), at(10)), Stage::Growth);
        // 90 days without a purchase: churned, whatever came before.
        assert_eq!(
            rules.stage(&bought_on(&[0, 7, 14, 21, 28]), at(118)),
            Stage::Churned
        );
        // Weekly for a month, then 20 days of silence: more than twice the 7-day rhythm.
        assert_eq!(
            rules.stage(&bought_on(&[0, 7, 14, 21, 28]), at(48)),
            Stage::Declining
        );
        // Weekly, last one 5 days ago, 5 in the year: mature.
        assert_eq!(
            rules.stage(&bought_on(&[0, 7, 14, 21, 28]), at(33)),
            Stage::Mature
        );
        // Three purchases a month apart, the last 20 days ago: repeat buyer, not yet mature.
        assert_eq!(rules.stage(&bought_on(&[0, 30, 60]), at(80)), Stage::Growth);
        // Two orders at the same moment give no rhythm to decline from.
        assert_eq!(rules.stage(&bought_on(&[5, 5]), at(10)), Stage::Growth);
        // Orders after the moment do not count.
        assert_eq!(rules.stage(&bought_on(&[50]), at(10)), Stage::Acquisition);
    }

    #[test]
    fn the_declining_rule_uses_the_customers_own_rhythm() {
        let rules = LifecycleRules::default();
        // A monthly buyer 45 days after the last purchase is fine; a weekly one is not.
        assert_eq!(
            rules.stage(&bought_on(&[0, 30, 60]), at(105)),
            Stage::Growth
        );
        assert_eq!(
            rules.stage(&bought_on(&[0, 7, 14]), at(59)),
            Stage::Declining
        );
    }
}
