//! Paths to a first purchase: the most common cross-channel sequences of touchpoints (an app
//! view, a store visit, ...) that customers went through before their first order, with how
//! many customers took each and how many of them bought.
//!
//! A customer's journey is their touchpoints before their first order (every touchpoint, for a
//! customer who never bought), each named `channel:event_type`. Repeats in a row collapse into
//! one step, and only the last `max_steps` steps are kept, so that journeys differing only in
//! how long someone browsed share a path. A path's conversion is the share of the customers
//! whose journey is that path who then placed an order; the channels of those first orders are
//! counted too.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::activity::Activity;

/// A path's customers, converted customers and first orders per channel, while counting.
type Tally = (u64, u64, BTreeMap<u8, u64>);

/// One path and who took it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathRow {
    /// The steps, `channel:event_type`, oldest first.
    pub steps: Vec<String>,
    /// Customers whose journey was this path.
    pub customers: u64,
    /// Of them, customers who then placed a first order.
    pub converted: u64,
    /// `converted / customers`, a share (0 to 1).
    pub conversion: f64,
    /// The channels of those first orders, with counts.
    pub purchase_channels: BTreeMap<String, u64>,
}

/// The `limit` paths most often followed by a first order (most converters first, then most
/// customers, then by steps), over live customers first seen before `end` (seconds since
/// 1970-01-01 UTC), counting touchpoints before `end` only. Journeys with no step before the
/// first order are counted under the empty path.
pub fn paths(activity: &Activity, max_steps: usize, limit: usize, end: i64) -> Vec<PathRow> {
    let max_steps = max_steps.max(1);
    let mut counts: HashMap<Vec<(u8, u16)>, Tally> = HashMap::new();
    let mut steps: Vec<(u8, u16)> = Vec::new();
    for (_, customer) in activity.live() {
        let first_order = customer.orders.first().filter(|o| o.at < end);
        let until = first_order.map_or(end, |o| o.at);
        steps.clear();
        let mut any = false;
        for touch in customer.touches.iter().take_while(|t| t.at < until) {
            any = true;
            let step = (touch.channel, touch.kind);
            if steps.last() != Some(&step) {
                steps.push(step);
            }
        }
        if !any && first_order.is_none() {
            continue;
        }
        let tail = steps[steps.len().saturating_sub(max_steps)..].to_vec();
        let entry = counts.entry(tail).or_default();
        entry.0 += 1;
        if let Some(order) = first_order {
            entry.1 += 1;
            *entry.2.entry(order.channel).or_default() += 1;
        }
    }
    let name = |channel: u8, kind: u16| {
        format!(
            "{}:{}",
            activity.channels.name(u32::from(channel)),
            activity.event_types.name(u32::from(kind))
        )
    };
    let mut rows: Vec<PathRow> = counts
        .into_iter()
        .filter(|(_, (_, converted, _))| *converted > 0)
        .map(|(path, (customers, converted, channels))| PathRow {
            steps: path.iter().map(|&(c, k)| name(c, k)).collect(),
            customers,
            converted,
            conversion: converted as f64 / customers as f64,
            purchase_channels: channels
                .into_iter()
                .map(|(c, n)| (activity.channels.name(u32::from(c)).to_owned(), n))
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.converted
            .cmp(&a.converted)
            .then(b.customers.cmp(&a.customers))
            .then_with(|| a.steps.cmp(&b.steps))
    });
    rows.truncate(limit);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::activity::tests::{order, Log};

    #[test]
    fn counts_collapsed_journeys_before_the_first_order() {
        let mut log = Log::new();
        let c: Vec<usize> = (0..6).map(|_| log.customer()).collect();
        // 0 and 1: app view, store visit, then buy (1 views twice in a row).
        log.touch(c[0], "app", "screen_viewed", 10);
        log.touch(c[0], "store", "store_visited", 20);
        log.order(c[0], "store", 30, order(1, &["A"]));
        log.touch(c[1], "app", "screen_viewed", 10);
        log.touch(c[1], "app", "screen_viewed", 11);
        log.touch(c[1], "store", "store_visited", 20);
        log.order(c[1], "web", 30, order(1, &["A"]));
        // Later touchpoints and orders do not change the path.
        log.touch(c[1], "web", "page_viewed", 40);
        // 2: the same path, never buys.
        log.touch(c[2], "app", "screen_viewed", 10);
        log.touch(c[2], "store", "store_visited", 20);
        // 3: a longer journey whose last two steps are the same path.
        log.touch(c[3], "web", "page_viewed", 5);
        log.touch(c[3], "app", "screen_viewed", 10);
        log.touch(c[3], "store", "store_visited", 20);
        log.order(c[3], "store", 30, order(1, &["A"]));
        // 4: buys straight away. 5: only browses the web.
        log.order(c[4], "web", 30, order(1, &["A"]));
        log.touch(c[5], "web", "page_viewed", 5);
        let rows = paths(&log.activity(), 2, 10, 1_000);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].steps,
            vec!["app:screen_viewed", "store:store_visited"]
        );
        assert_eq!((rows[0].customers, rows[0].converted), (4, 3));
        assert!((rows[0].conversion - 0.75).abs() < 1e-12);
        assert_eq!(
            rows[0].purchase_channels,
            BTreeMap::from([("store".into(), 2), ("web".into(), 1)])
        );
        assert!(rows[1].steps.is_empty());
        assert_eq!((rows[1].customers, rows[1].converted), (1, 1));

        // With three steps, customer 3's journey is a path of its own.
        let rows = paths(&log.activity(), 3, 10, 1_000);
        assert_eq!((rows[0].customers, rows[0].converted), (3, 2));
        assert!(rows.iter().any(|r| r.steps.len() == 3 && r.converted == 1));
        // Observed only until time 25: nobody had bought yet.
        assert!(paths(&log.activity(), 3, 10, 25).is_empty());
    }
}
