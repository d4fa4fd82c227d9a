//! `patron analytics ...`: each analysis from the command line, as JSON or (`--csv`) CSV on
//! standard output, with a progress bar on standard error while the log is read.

use std::io::Write;

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, Utc};
use clap::{Args, Subcommand, ValueEnum};
use patron_domain::identity::IdentityRules;
use patron_projections::analytics::activity::Activity;
use patron_projections::analytics::cohort::Period;
use patron_projections::analytics::funnel::FunnelAsk;
use serde::Serialize;

use super::{csv, load_activity, Analyst, AssociationAsk};
use crate::store::EventStore;

/// The length of a cohort period.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PeriodArg {
    /// Calendar months.
    Month,
    /// Weeks starting on Monday.
    Week,
}

/// How answers are printed.
#[derive(Debug, Args)]
pub struct Output {
    /// Print CSV (a header row with units, then one row per item) instead of JSON.
    #[arg(long, global = true)]
    pub csv: bool,
}

/// Analytics commands.
#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Retention by cohort of first purchase: the share of each cohort buying in each later
    /// period.
    Cohorts {
        /// The period length.
        #[arg(long, value_enum, default_value = "month")]
        period: PeriodArg,
        /// Split each cohort by the channel of the first order.
        #[arg(long)]
        by_channel: bool,
        /// The cohorts of this many periods up to the end (1 to 120).
        #[arg(long, default_value_t = patron_projections::analytics::cohort::DEFAULT_COHORT_PERIODS)]
        periods: u32,
        /// Observe up to this time (RFC 3339); default now.
        #[arg(long)]
        end: Option<DateTime<FixedOffset>>,
    },
    /// Customers through ordered steps within a window: conversion and drop-off per step.
    Funnel {
        /// The steps, 2 to 10: `event_type` or `channel:event_type`, for example
        /// `app:screen_viewed cart_item_added order_placed`.
        #[arg(required = true, num_args = 2..=10)]
        steps: Vec<String>,
        /// Days from the first step to the last.
        #[arg(long, default_value_t = 7)]
        window_days: u32,
        /// Only this segment's current members.
        #[arg(long)]
        segment: Option<String>,
        /// Only runs starting at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<FixedOffset>>,
        /// Only runs starting before this time (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<FixedOffset>>,
    },
    /// The most common cross-channel paths to a first purchase.
    Paths {
        /// Steps kept before the purchase (repeats in a row count once).
        #[arg(long, default_value_t = 4)]
        max_steps: usize,
        /// How many paths.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Lifetime value and churn: BG/NBD and Gamma-Gamma fitted over every customer's orders;
    /// per customer the probability of being active, expected purchases and spend in the
    /// horizon, and churn by rule. `--csv` prints every customer.
    Clv {
        /// Days ahead to expect purchases and spend over.
        #[arg(long, default_value_t = 90)]
        horizon_days: u32,
        /// Days without a purchase after which the rule calls a customer churned.
        #[arg(long, default_value_t = 90)]
        churn_days: u32,
        /// Customers listed in the JSON report, highest expected value first.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// The currency; default the one most orders are in.
        #[arg(long)]
        currency: Option<String>,
    },
    /// Each channel's share of conversions (orders): last touch, first touch, linear, and two
    /// Shapley values over channel coalitions.
    Attribution {
        /// Days of touchpoints before an order that count toward it.
        #[arg(long, default_value_t = 30)]
        lookback_days: u32,
    },
    /// Products bought together: frequent itemsets and rules (support, confidence, lift) over
    /// every order, by FP-growth.
    Associations {
        /// Least share of orders an itemset must be in (0 to 1).
        #[arg(long, default_value_t = 0.001)]
        min_support: f64,
        /// Least confidence of a rule (0 to 1).
        #[arg(long, default_value_t = 0.1)]
        min_confidence: f64,
        /// Most products in an itemset.
        #[arg(long, default_value_t = 3)]
        max_length: usize,
        /// Only what is bought together with this product (SKU).
        #[arg(long)]
        product: Option<String>,
        /// How many rules.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The effect of targeting a segment at a time: conversion, average order value and visits
    /// afterwards, against comparable customers not targeted.
    Campaign {
        /// The segment targeted (its members at `--at`, by its log).
        #[arg(long)]
        segment: String,
        /// When it was targeted (RFC 3339).
        #[arg(long)]
        at: DateTime<FixedOffset>,
        /// Days after `--at` to measure.
        #[arg(long, default_value_t = 30)]
        window_days: u32,
        /// Days before `--at` whose behaviour makes the control comparable.
        #[arg(long, default_value_t = 90)]
        lookback_days: u32,
        /// The currency of the average order value; default the one most orders are in.
        #[arg(long)]
        currency: Option<String>,
    },
    /// Data quality per source and period: completeness of core identifiers, refusals by
    /// code, touchpoints resolved to a customer with a core identifier, delivery delay.
    Quality {
        /// The period length.
        #[arg(long, value_enum, default_value = "week")]
        period: PeriodArg,
        /// The last this many periods up to now (1 to 120).
        #[arg(long, default_value_t = DEFAULT_QUALITY_PERIODS)]
        periods: u32,
    },
}

/// The periods a data-quality report covers unless asked otherwise.
pub const DEFAULT_QUALITY_PERIODS: u32 = 52;

fn period_of(arg: PeriodArg) -> Period {
    match arg {
        PeriodArg::Month => Period::Month,
        PeriodArg::Week => Period::Week,
    }
}

/// The asked currency, or the one most orders are in.
fn currency_or_main(activity: &Activity, asked: Option<&str>) -> Result<String> {
    match asked {
        Some(c) => Ok(c.to_owned()),
        None => Ok(activity
            .main_currency()
            .context("no order is stored: there is nothing to measure")?
            .to_owned()),
    }
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

async fn activity(store: &EventStore) -> Result<Activity> {
    let head = store.head().await.context("cannot read the log's head")?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} reading activity [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let activity = load_activity(store, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .context("cannot read the activity from the log")?;
    bar.finish_and_clear();
    Ok(activity)
}

/// Runs one analytics command over `store`.
pub async fn run(
    store: &EventStore,
    rules: &IdentityRules,
    command: &AnalyticsCommand,
    output: &Output,
) -> Result<()> {
    let analyst = Analyst::new(store.clone(), rules);
    let activity = activity(store).await?;
    let stdout = std::io::stdout();
    match command {
        AnalyticsCommand::Cohorts {
            period,
            by_channel,
            periods,
            end,
        } => {
            let period = period_of(*period);
            let end = end.map_or_else(Utc::now, |t| t.to_utc());
            let table = analyst.cohorts(&activity, period, *by_channel, *periods, end)?;
            if output.csv {
                csv::cohorts(&table, stdout.lock())?;
            } else {
                print_json(&table)?;
            }
        }
        AnalyticsCommand::Funnel {
            steps,
            window_days,
            segment,
            from,
            to,
        } => {
            let ask = FunnelAsk {
                steps: steps.clone(),
                window_days: *window_days,
                from: from.map(|t| t.to_utc()),
                to: to.map(|t| t.to_utc()),
                segment: segment.clone(),
            };
            let report = analyst.funnel(&activity, &ask).await?;
            if output.csv {
                csv::funnel(&report, stdout.lock())?;
            } else {
                print_json(&report)?;
            }
        }
        AnalyticsCommand::Paths { max_steps, limit } => {
            let rows = analyst.paths(&activity, *max_steps, *limit, Utc::now())?;
            if output.csv {
                csv::paths(&rows, stdout.lock())?;
            } else {
                print_json(&rows)?;
            }
        }
        AnalyticsCommand::Clv {
            horizon_days,
            churn_days,
            top,
            currency,
        } => {
            let currency = currency_or_main(&activity, currency.as_deref())?;
            let (report, values) = analyst.clv(
                &activity,
                &currency,
                Utc::now(),
                *horizon_days,
                *churn_days,
                *top,
            )?;
            eprintln!(
                "fitted BG/NBD and Gamma-Gamma over {} customers in {:.2} s",
                report.customers, report.fit_seconds
            );
            if output.csv {
                csv::customer_values(&values, stdout.lock())?;
            } else {
                print_json(&report)?;
            }
        }
        AnalyticsCommand::Attribution { lookback_days } => {
            let report = analyst.attribution(&activity, *lookback_days, Utc::now())?;
            if output.csv {
                csv::attribution(&report, stdout.lock())?;
            } else {
                print_json(&report)?;
            }
        }
        AnalyticsCommand::Associations {
            min_support,
            min_confidence,
            max_length,
            product,
            limit,
        } => {
            let report = analyst.associations(
                &activity,
                &AssociationAsk {
                    min_support: *min_support,
                    min_confidence: *min_confidence,
                    max_length: *max_length,
                    product: product.clone(),
                    limit: *limit,
                },
            )?;
            if output.csv {
                csv::associations(&report, stdout.lock())?;
            } else {
                print_json(&report)?;
            }
        }
        AnalyticsCommand::Campaign {
            segment,
            at,
            window_days,
            lookback_days,
            currency,
        } => {
            let currency = currency_or_main(&activity, currency.as_deref())?;
            let effect = analyst
                .campaign(
                    &activity,
                    segment,
                    at.to_utc(),
                    *window_days,
                    *lookback_days,
                    &currency,
                )
                .await?;
            if output.csv {
                csv::campaign(&effect, stdout.lock())?;
            } else {
                print_json(&effect)?;
            }
        }
        AnalyticsCommand::Quality { period, periods } => {
            let report = analyst
                .quality(&activity, period_of(*period), *periods)
                .await?;
            if output.csv {
                csv::quality(&report, stdout.lock())?;
            } else {
                print_json(&report)?;
            }
        }
    }
    Ok(())
}
