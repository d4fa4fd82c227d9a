//! Funnels: how many customers go through ordered steps (for example an app screen view, an
//! item added to the cart, a purchase) within a time window, across channels.
//!
//! A step is an event type, optionally on one channel. A customer reaches step k when their
//! history holds touchpoints matching steps 1..=k in that order (each strictly after the one
//! before it in time order) with the k-th no later than the window after the first. A customer
//! may start many times; the deepest run counts. For a fixed start, taking the earliest match
//! of every next step is optimal (it leaves the most time and touchpoints for the steps after),
//! so each start is matched greedily. Only starts inside the asked time range count.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::activity::{Activity, Touch};

/// One step of a funnel, in the activity's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The event type, a number in [`Activity::event_types`].
    pub kind: u16,
    /// The channel, a number in [`Activity::channels`]; any channel when `None`.
    pub channel: Option<u8>,
}

impl Step {
    fn matches(&self, touch: &Touch) -> bool {
        touch.kind == self.kind && self.channel.is_none_or(|c| c == touch.channel)
    }
}

/// What a funnel is asked over.
#[derive(Clone, Debug)]
pub struct FunnelQuery<'a> {
    /// The steps, in order (at least one).
    pub steps: Vec<Step>,
    /// The longest time from the first step to the last, seconds.
    pub window: i64,
    /// Starts at or after this time count (seconds since 1970-01-01 UTC).
    pub from: i64,
    /// Starts before this time count.
    pub to: i64,
    /// Only these customers (a segment's members), by number; everyone when `None`.
    pub customers: Option<&'a HashSet<u32>>,
}

/// What a funnel is asked for, by name.
#[derive(Clone, Debug, Default)]
pub struct FunnelAsk {
    /// The steps: `event_type` or `channel:event_type` (2 to 10).
    pub steps: Vec<String>,
    /// Days from the first step to the last.
    pub window_days: u32,
    /// Starts from this time on.
    pub from: Option<DateTime<Utc>>,
    /// Starts before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only this segment's current members.
    pub segment: Option<String>,
}

/// One step's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepFigures {
    /// Customers who reached this step.
    pub customers: u64,
    /// Share of the previous step's customers who reached this one (1 for the first step; 0
    /// when the previous step had none).
    pub from_previous: f64,
    /// Share of the first step's customers who reached this one.
    pub from_start: f64,
    /// Customers of the previous step who did not reach this one (0 for the first step).
    pub drop_off: u64,
}

/// Counts the customers reaching each step.
pub fn funnel(activity: &Activity, query: &FunnelQuery<'_>) -> Vec<StepFigures> {
    let steps = &query.steps;
    let mut reached = vec![0u64; steps.len()];
    let Some(first) = steps.first() else {
        return Vec::new();
    };
    // Positions of the touches matching each step, reused across customers.
    let mut matches: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (n, customer) in activity.live() {
        if query.customers.is_some_and(|only| !only.contains(&n)) {
            continue;
        }
        let touches = &customer.touches;
        for m in &mut matches {
            m.clear();
        }
        for (i, touch) in touches.iter().enumerate() {
            for (k, step) in steps.iter().enumerate() {
                if step.matches(touch) {
                    matches[k].push(i);
                }
            }
        }
        let mut depth = 0;
        for &start in &matches[0] {
            let t0 = touches[start].at;
            if t0 < query.from || t0 >= query.to {
                continue;
            }
            debug_assert!(first.matches(&touches[start]));
            let mut at = start;
            let mut d = 1;
            for m in &matches[1..] {
                let next = m.partition_point(|&i| i <= at);
                match m.get(next) {
                    Some(&i) if touches[i].at - t0 <= query.window => {
                        at = i;
                        d += 1;
                    }
                    _ => break,
                }
            }
            depth = depth.max(d);
            if depth == steps.len() {
                break;
            }
        }
        for r in &mut reached[..depth] {
            *r += 1;
        }
    }
    let start = reached[0];
    reached
        .iter()
        .enumerate()
        .map(|(k, &customers)| {
            let previous = if k == 0 { customers } else { reached[k - 1] };
            StepFigures {
                customers,
                from_previous: share(customers, previous),
                from_start: share(customers, start),
                drop_off: previous - customers,
            }
        })
        .collect()
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::activity::tests::{order, Log};

    const DAY: i64 = 86_400;

    fn step(activity: &Activity, kind: &str, channel: Option<&str>) -> Step {
        Step {
            kind: activity.event_types.get(kind).unwrap() as u16,
            channel: channel.map(|c| activity.channels.get(c).unwrap() as u8),
        }
    }

    #[test]
    fn counts_ordered_steps_within_the_window() {
        let mut log = Log::new();
        let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|_| log.customer());
        // a: view, cart, buy within a day: all three steps.
        log.touch(a, "app", "screen_viewed", 10 * DAY);
        log.touch(a, "web", "cart_item_added", 10 * DAY + 100);
        log.order(a, "store", 10 * DAY + 200, order(1, &["A"]));
        // b: cart before view: only the first step.
        log.touch(b, "web", "cart_item_added", 10 * DAY);
        log.touch(b, "app", "screen_viewed", 10 * DAY + 100);
        // c: view, cart, then buys 8 days after the view: two steps in a 7-day window...
        log.touch(c, "app", "screen_viewed", 10 * DAY);
        log.touch(c, "app", "cart_item_added", 11 * DAY);
        log.order(c, "web", 18 * DAY, order(1, &["A"]));
        // ...d: the same but views again later, and that run completes.
        log.touch(d, "app", "screen_viewed", 10 * DAY);
        log.touch(d, "app", "cart_item_added", 11 * DAY);
        log.touch(d, "app", "screen_viewed", 12 * DAY);
        log.touch(d, "app", "cart_item_added", 13 * DAY);
        log.order(d, "web", 18 * DAY, order(1, &["A"]));
        // e: views on the web, not the app.
        log.touch(e, "web", "screen_viewed", 10 * DAY);
        log.touch(e, "web", "cart_item_added", 10 * DAY + 1);
        let activity = log.activity();
        let steps = vec![
            step(&activity, "screen_viewed", Some("app")),
            step(&activity, "cart_item_added", None),
            step(&activity, "order_placed", None),
        ];
        let query = FunnelQuery {
            steps: steps.clone(),
            window: 7 * DAY,
            from: 0,
            to: i64::MAX,
            customers: None,
        };
        let figures = funnel(&activity, &query);
        let counts: Vec<_> = figures.iter().map(|f| f.customers).collect();
        assert_eq!(counts, vec![4, 3, 2]); // a b c d / a c d / a d
        assert_eq!(figures[1].drop_off, 1);
        assert!((figures[2].from_previous - 2.0 / 3.0).abs() < 1e-12);
        assert!((figures[2].from_start - 0.5).abs() < 1e-12);
        assert_eq!(figures[0].from_previous, 1.0);

        // A segment: only c and e.
        let only: HashSet<u32> = [c, e]
            .iter()
            .filter_map(|&w| activity.number_of(log.id(w)))
            .collect();
        let figures = funnel(
            &activity,
            &FunnelQuery {
                customers: Some(&only),
                ..query.clone()
            },
        );
        let counts: Vec<_> = figures.iter().map(|f| f.customers).collect();
        assert_eq!(counts, vec![1, 1, 0]);

        // Starts only from day 11 on: d's second run.
        let figures = funnel(
            &activity,
            &FunnelQuery {
                from: 11 * DAY,
                ..query
            },
        );
        let counts: Vec<_> = figures.iter().map(|f| f.customers).collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }

    #[test]
    fn a_step_repeated_needs_two_touches() {
        let mut log = Log::new();
        let a = log.customer();
        log.touch(a, "web", "page_viewed", 100);
        let activity = log.activity();
        let view = step(&activity, "page_viewed", None);
        let figures = funnel(
            &activity,
            &FunnelQuery {
                steps: vec![view, view],
                window: DAY,
                from: 0,
                to: i64::MAX,
                customers: None,
            },
        );
        assert_eq!(figures[0].customers, 1);
        assert_eq!(figures[1].customers, 0);
        assert_eq!(figures[1].drop_off, 1);
    }
}
