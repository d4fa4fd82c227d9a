//! `patron bench analytics`: how long each analysis takes on a loaded store (load it first, for
//! example with `patron demo --people 1000000`): reading the activity once, then each analysis
//! run `runs` times over it, the median and the slowest reported.

use std::fmt;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use patron_domain::identity::IdentityRules;
use patron_projections::analytics::cohort::{Period, MAX_COHORT_PERIODS};
use patron_projections::analytics::funnel::FunnelAsk;
use serde::Serialize;

use crate::analytics::{funnel_among, load_activity, Analyst, AssociationAsk};
use crate::store::EventStore;

use super::bar;

/// One analysis's timings.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The analysis.
    pub name: String,
    /// Median over the runs, seconds.
    pub median_s: f64,
    /// Slowest run, seconds.
    pub max_s: f64,
    /// What it found, for a person to check it ran over the whole data set.
    pub found: String,
}

/// The analytics benchmark's report.
#[derive(Clone, Debug, Serialize)]
pub struct AnalyticsBench {
    /// Events read into the activity.
    pub events: u64,
    /// Live customers.
    pub customers: u64,
    /// Orders.
    pub orders: u64,
    /// Seconds to read the activity from the log.
    pub load_s: f64,
    /// Events per second while reading it.
    pub load_events_per_s: f64,
    /// Each analysis.
    pub timings: Vec<Timing>,
}

impl fmt::Display for AnalyticsBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "activity: {} events, {} live customers, {} orders, read in {:.1} s ({:.0} events/s)",
            self.events, self.customers, self.orders, self.load_s, self.load_events_per_s
        )?;
        for t in &self.timings {
            writeln!(
                f,
                "{:<34} median {:>7.3} s  max {:>7.3} s  {}",
                t.name, t.median_s, t.max_s, t.found
            )?;
        }
        Ok(())
    }
}

fn time<T>(
    runs: usize,
    name: &str,
    mut run: impl FnMut() -> anyhow::Result<T>,
    describe: impl Fn(&T) -> String,
) -> anyhow::Result<Timing> {
    let mut seconds = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let out = run().with_context(|| format!("{name} failed"))?;
        seconds.push(started.elapsed().as_secs_f64());
        last = Some(out);
    }
    seconds.sort_by(f64::total_cmp);
    Ok(Timing {
        name: name.to_owned(),
        median_s: seconds[seconds.len() / 2],
        max_s: seconds[seconds.len() - 1],
        found: last.as_ref().map(describe).unwrap_or_default(),
    })
}

/// Reads the activity of `store` and times each analysis `runs` times.
pub async fn run_analytics_bench(
    store: &EventStore,
    rules: &IdentityRules,
    runs: usize,
) -> anyhow::Result<AnalyticsBench> {
    let head = store.head().await?;
    let progress = bar(head, "events read");
    let started = Instant::now();
    let activity = load_activity(store, |at, head| {
        progress.set_length(head);
        progress.set_position(at);
    })
    .await?;
    progress.finish_and_clear();
    let load_s = started.elapsed().as_secs_f64();
    let analyst = Analyst::new(store.clone(), rules);
    let now = Utc::now();
    let currency = activity
        .main_currency()
        .context("the store holds no order")?
        .to_owned();
    let mut timings = Vec::new();
    timings.push(time(
        runs,
        "cohort table (month)",
        || Ok(analyst.cohorts(&activity, Period::Month, false, MAX_COHORT_PERIODS, now)?),
        |t| format!("{} cohorts", t.rows.len()),
    )?);
    let funnel = FunnelAsk {
        steps: [
            "app:screen_viewed",
            "app:cart_item_added",
            "web:order_placed",
            "order_placed",
        ]
        .map(str::to_owned)
        .to_vec(),
        window_days: 30,
        ..FunnelAsk::default()
    };
    timings.push(time(
        runs,
        "4-step funnel (30 days)",
        || Ok(funnel_among(&activity, &funnel, None)?),
        |r| {
            r.figures
                .iter()
                .map(|f| f.customers.to_string())
                .collect::<Vec<_>>()
                .join(" > ")
        },
    )?);
    timings.push(time(
        runs,
        "CLV fit and scoring (BG/NBD, GG)",
        || Ok(analyst.clv(&activity, &currency, now, 90, 90, 10)?),
        |(r, _)| {
            format!(
                "{} customers, fit {:.2} s, r {:.3} alpha {:.1} a {:.3} b {:.3}",
                r.customers, r.fit_seconds, r.bg_nbd.r, r.bg_nbd.alpha, r.bg_nbd.a, r.bg_nbd.b
            )
        },
    )?);
    timings.push(time(
        runs,
        "association rules (FP-growth)",
        || {
            Ok(analyst.associations(
                &activity,
                &AssociationAsk {
                    min_support: 0.001,
                    min_confidence: 0.1,
                    max_length: 3,
                    product: None,
                    limit: 10,
                },
            )?)
        },
        |r| {
            format!(
                "{} orders, {} itemsets, {} rules",
                r.orders, r.itemsets, r.rules_found
            )
        },
    )?);
    timings.push(time(
        runs,
        "attribution (5 models, 30 days)",
        || Ok(analyst.attribution(&activity, 30, now)?),
        |a| format!("{} journeys, {} conversions", a.journeys, a.conversions),
    )?);
    timings.push(time(
        runs,
        "paths to first purchase",
        || Ok(analyst.paths(&activity, 4, 20, now)?),
        |p| format!("{} paths", p.len()),
    )?);
    let orders = activity.live().map(|(_, c)| c.orders.len() as u64).sum();
    Ok(AnalyticsBench {
        events: activity.position(),
        customers: activity.live().count() as u64,
        orders,
        load_s,
        load_events_per_s: activity.position() as f64 / load_s.max(1e-9),
        timings,
    })
}
