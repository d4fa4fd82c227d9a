//! Tags: labels on a customer, from rules (for example `high_frequency`: at least 3 purchases
//! in 30 days) and derived from the profile (favourite category, preferred channel, promotion
//! sensitivity), as of a moment.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// A tag given to customers with at least `min_orders` purchases in the last `within_days`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyTag {
    /// The tag.
    pub name: String,
    /// Purchases needed.
    pub min_orders: usize,
    /// In this many days before the moment of scoring.
    pub within_days: i64,
}

/// The tag rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagRules {
    /// Purchase-frequency tags.
    pub frequency: Vec<FrequencyTag>,
    /// `promotion_sensitive` goes to customers whose share of orders with a discount is at
    /// least this (0 to 1) ...
    pub promotion_share: f64,
    /// ... over at least this many orders.
    pub promotion_min_orders: u64,
}

impl Default for TagRules {
    /// `high_frequency`: at least 3 purchases in 30 days; `promotion_sensitive`: at least half
    /// of at least 2 orders discounted.
    fn default() -> Self {
        Self {
            frequency: vec![FrequencyTag {
                name: "high_frequency".into(),
                min_orders: 3,
                within_days: 30,
            }],
            promotion_share: 0.5,
            promotion_min_orders: 2,
        }
    }
}

impl TagRules {
    /// The tags of a profile as of a moment: the frequency tags that hold,
    /// `favourite_category:<category>`, `preferred_channel:<channel>` and
    /// `promotion_sensitive`.
    pub fn tags(&self, profile: &Profile, as_of: DateTime<Utc>) -> BTreeSet<String> {
        let mut tags = BTreeSet::new();
        for rule in &self.frequency {
            let since = as_of - Duration::days(rule.within_days);
            let recent = profile
                .order_log
                .iter()
                .filter(|o| o.at > since && o.at <= as_of)
                .count();
            if recent >= rule.min_orders {
                tags.insert(rule.name.clone());
            }
        }
        if let Some(category) = profile.favourite_category() {
            tags.insert(format!("favourite_category:{category}"));
        }
        if let Some(channel) = profile.preferred_channel() {
            tags.insert(format!("preferred_channel:{channel}"));
        }
        if profile.orders >= self.promotion_min_orders
            && profile
                .promotion_sensitivity()
                .is_some_and(|share| share >= self.promotion_share)
        {
            tags.insert("promotion_sensitive".into());
        }
        tags
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

    #[test]
    fn rules_and_derived_tags() {
        let mut profile = Profile {
            order_log: [0, 10, 20]
                .iter()
                .map(|&d| OrderEntry {
                    at: at(d),
                    currency: "CNY".into(),
                    total_minor: 100,
                })
                .collect(),
            orders: 3,
            discounted_orders: 2,
            ..Profile::default()
        };
        profile.category_spend.insert("shoes".into(), 300);
        profile.category_spend.insert("makeup".into(), 100);
        profile.by_channel.insert("store".into(), 3);
        let rules = TagRules::default();
        let tags: Vec<String> = rules.tags(&profile, at(25)).into_iter().collect();
        assert_eq!(
            tags,
            [
                "favourite_category:shoes",
                "high_frequency",
                "preferred_channel:store",
                "promotion_sensitive"
            ]
        );
        // Ten days later the first purchase left the 30-day window.
        assert!(!rules.tags(&profile, at(35)).contains("high_frequency"));
        // One discounted order of three is not sensitive.
        profile.discounted_orders = 1;
        assert!(!rules.tags(&profile, at(25)).contains("promotion_sensitive"));
        assert!(rules.tags(&Profile::default(), at(0)).is_empty());
    }
}
