//! Customer analytics for analysts: cohort retention, funnels, paths to a first purchase,
//! channel attribution, lifetime value and churn, product associations, campaign effect and
//! data quality. Every figure names its unit; shares are 0 to 1.

use async_graphql::{Context, Enum, InputObject, Object, Result, SimpleObject, ID};
use chrono::{DateTime, NaiveDate, Utc};
use patron_projections::analytics::cohort::{CohortTable, Period, MAX_COHORT_PERIODS};
use patron_projections::analytics::funnel::FunnelAsk;
use patron_projections::analytics::report::AssociationAsk;

use crate::access::{api_error, codes, require, Role};
use crate::backend_error;
use crate::query::backend;

/// The length of a cohort period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(name = "CohortPeriod", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum CohortPeriod {
    /// Calendar months (UTC).
    Month,
    /// Weeks starting on Monday (UTC).
    Week,
}

impl From<CohortPeriod> for Period {
    fn from(p: CohortPeriod) -> Self {
        match p {
            CohortPeriod::Month => Period::Month,
            CohortPeriod::Week => Period::Week,
        }
    }
}

/// One cohort: customers whose first order fell in one period (and channel).
#[derive(SimpleObject)]
pub struct Cohort {
    /// The first day of the cohort's period.
    pub cohort: NaiveDate,
    /// The channel of the first order, when split by channel.
    pub channel: Option<String>,
    /// Customers in the cohort.
    pub customers: u64,
    /// Customers with an order in period 0, 1, 2, ... after their first.
    pub buying: Vec<u64>,
    /// Share of the cohort buying in each period (0 to 1; period 0 is 1).
    pub retention: Vec<f64>,
}

fn cohorts_of(table: CohortTable) -> Vec<Cohort> {
    table
        .rows
        .into_iter()
        .map(|r| Cohort {
            cohort: r.cohort,
            channel: r.channel,
            customers: r.customers,
            buying: r.buying,
            retention: r.retention,
        })
        .collect()
}

/// A funnel to count customers through.
#[derive(InputObject)]
pub struct FunnelInput {
    /// The steps in order, 2 to 10: `event_type` (any channel) or `channel:event_type`, for
    /// example `app:screen_viewed`, `cart_item_added`, `order_placed`.
    pub steps: Vec<String>,
    /// Days from the first step to the last.
    #[graphql(default = 7)]
    pub window_days: u32,
    /// Only runs starting at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only runs starting before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only this segment's current members.
    pub segment: Option<String>,
}

/// One step of a funnel and how many got there.
#[derive(SimpleObject)]
pub struct FunnelStep {
    /// The step as asked.
    pub step: String,
    /// Customers who reached it.
    pub customers: u64,
    /// Share of the previous step's customers who reached it (0 to 1).
    pub from_previous: f64,
    /// Share of the first step's customers who reached it (0 to 1).
    pub from_start: f64,
    /// Customers of the previous step who did not reach it.
    pub drop_off: u64,
}

/// A common path to a first purchase.
#[derive(SimpleObject)]
pub struct PurchasePath {
    /// The steps before the first order, `channel:event_type`, oldest first.
    pub steps: Vec<String>,
    /// Customers whose journey was this path.
    pub customers: u64,
    /// Of them, customers who then placed a first order.
    pub converted: u64,
    /// `converted / customers` (0 to 1).
    pub conversion: f64,
    /// The channels of those first orders.
    pub purchase_channels: Vec<ChannelCount>,
}

/// A channel and a count.
#[derive(SimpleObject)]
pub struct ChannelCount {
    /// The channel.
    pub channel: String,
    /// How many.
    pub count: u64,
}

/// The share of live customers holding an identifier kind.
#[derive(SimpleObject)]
pub struct KindCompleteness {
    /// The identifier kind, or `any core identifier`.
    pub kind: String,
    /// Live customers holding it.
    pub customers: u64,
    /// Their share of live customers (0 to 1).
    pub share: f64,
}

/// One source's data quality in one period.
#[derive(SimpleObject)]
pub struct SourceQuality {
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
    /// Share of the touchpoints whose customer holds a core identifier (0 to 1).
    pub core_resolved_share: f64,
    /// Median delay from happening to stored, seconds.
    pub lag_p50_seconds: u32,
    /// 95th percentile of that delay, seconds.
    pub lag_p95_seconds: u32,
    /// Longest delay, seconds.
    pub lag_max_seconds: u32,
}

/// Refusals of one code from one source in one period.
#[derive(SimpleObject)]
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
#[derive(SimpleObject)]
pub struct DataQuality {
    /// Live customers.
    pub customers: u64,
    /// Completeness per identifier kind, then of any core identifier.
    pub completeness: Vec<KindCompleteness>,
    /// Per period and source.
    pub sources: Vec<SourceQuality>,
    /// Refusals per period, source and code.
    pub refusals: Vec<RefusalCount>,
}

/// Credited conversions (or shares of them) by each attribution model.
#[derive(SimpleObject)]
pub struct ByModel {
    /// The last touch before each conversion gets it all.
    pub last_touch: f64,
    /// The first touch gets it all.
    pub first_touch: f64,
    /// Each touch gets an equal part.
    pub linear: f64,
    /// Shapley value of the game "conversions whose channels are all in the coalition".
    pub shapley: f64,
    /// Shapley value of the conversion rate of coalitions, scaled to conversions; negative for
    /// a channel whose presence lowers the rate.
    pub shapley_rate: f64,
}

impl From<patron_projections::analytics::attribution::ByModel> for ByModel {
    fn from(m: patron_projections::analytics::attribution::ByModel) -> Self {
        Self {
            last_touch: m.last_touch,
            first_touch: m.first_touch,
            linear: m.linear,
            shapley: m.shapley,
            shapley_rate: m.shapley_rate,
        }
    }
}

/// One channel's credit.
#[derive(SimpleObject)]
pub struct ChannelCredit {
    /// The channel.
    pub channel: String,
    /// Conversions credited to it by each model.
    pub conversions: ByModel,
    /// Its share of all conversions by each model (0 to 1; a rate-Shapley share may fall
    /// outside).
    pub share: ByModel,
}

/// Attribution of conversions (orders) to channels.
#[derive(SimpleObject)]
pub struct ChannelAttribution {
    /// Journeys looked at (one per order, one per customer's touchpoints since).
    pub journeys: u64,
    /// Conversions with at least one touch: what each model hands out.
    pub conversions: u64,
    /// Per channel, by name.
    pub channels: Vec<ChannelCredit>,
}

/// BG/NBD parameters (time in days).
#[derive(SimpleObject)]
pub struct BgNbdFit {
    /// Shape of the purchase-rate distribution.
    pub r: f64,
    /// Its scale, days.
    pub alpha: f64,
    /// First shape of the dropout distribution.
    pub a: f64,
    /// Second shape of the dropout distribution.
    pub b: f64,
    /// Log-likelihood at the fit.
    pub log_likelihood: f64,
}

/// Gamma-Gamma parameters (minor currency units).
#[derive(SimpleObject)]
pub struct GammaGammaFit {
    /// Shape of each customer's spend distribution.
    pub p: f64,
    /// Shape of the distribution of its rate.
    pub q: f64,
    /// Scale of that distribution, minor units.
    pub v: f64,
}

/// One customer's lifetime value and churn figures.
#[derive(SimpleObject)]
pub struct CustomerLifetimeValue {
    /// The customer.
    pub customer_id: ID,
    /// Repeat purchase days.
    pub repeat_purchases: u32,
    /// Days since the last purchase.
    pub days_since_last_purchase: f64,
    /// Probability of being active (0 to 1).
    pub p_alive: f64,
    /// Expected purchases in the horizon.
    pub expected_purchases: f64,
    /// Expected spend in the horizon, minor units, undiscounted.
    pub expected_value_minor: f64,
    /// No purchase in the churn rule's days.
    pub churned_by_rule: bool,
}

/// Lifetime value and churn over every customer with an order.
#[derive(SimpleObject)]
pub struct LifetimeValue {
    /// The currency of every amount.
    pub currency: String,
    /// Days ahead the expectations look.
    pub horizon_days: u32,
    /// Days without a purchase after which the rule calls a customer churned.
    pub churn_days: u32,
    /// Customers with an order.
    pub customers: u64,
    /// Of them, customers with a repeat purchase.
    pub repeat_customers: u64,
    /// The BG/NBD fit.
    pub bg_nbd: BgNbdFit,
    /// The Gamma-Gamma fit.
    pub gamma_gamma: GammaGammaFit,
    /// Seconds the fits took.
    pub fit_seconds: f64,
    /// Customers churned by the rule.
    pub churned_by_rule: u64,
    /// Mean probability of being active (0 to 1).
    pub mean_p_alive: f64,
    /// Expected purchases of all customers in the horizon.
    pub expected_purchases: f64,
    /// Expected spend of all customers in the horizon, minor units.
    pub expected_value_minor: f64,
    /// Highest expected value first.
    pub top: Vec<CustomerLifetimeValue>,
}

/// Products bought together.
#[derive(SimpleObject)]
pub struct ProductRule {
    /// The products bought (SKUs).
    pub antecedent: Vec<String>,
    /// The products bought with them (SKUs).
    pub consequent: Vec<String>,
    /// Orders holding all of them.
    pub orders: u64,
    /// Share of all orders holding all of them (0 to 1).
    pub support: f64,
    /// Share of the antecedent's orders also holding the consequent (0 to 1).
    pub confidence: f64,
    /// Confidence over the consequent's own share (1: independent).
    pub lift: f64,
}

/// Product associations over every order.
#[derive(SimpleObject)]
pub struct ProductAssociations {
    /// Orders looked at.
    pub orders: u64,
    /// Frequent itemsets found.
    pub itemsets: u64,
    /// Rules found.
    pub rules_found: u64,
    /// The best rules, or what is bought with the asked product.
    pub rules: Vec<ProductRule>,
}

/// A group's figures after the targeting.
#[derive(SimpleObject)]
pub struct GroupFigures {
    /// Customers in the group.
    pub customers: u64,
    /// Effective customers after reweighting (the group size for unweighted groups).
    pub effective_customers: f64,
    /// Share with an order in the window (0 to 1).
    pub conversion: f64,
    /// Mean order value in the window, minor units; null without orders.
    pub average_order_value: Option<f64>,
    /// Touchpoints other than orders per customer in the window.
    pub visits_per_customer: f64,
}

impl From<patron_projections::analytics::campaign::GroupMetrics> for GroupFigures {
    fn from(g: patron_projections::analytics::campaign::GroupMetrics) -> Self {
        Self {
            customers: g.customers as u64,
            effective_customers: g.effective_customers,
            conversion: g.conversion,
            average_order_value: g.average_order_value,
            visits_per_customer: g.visits_per_customer,
        }
    }
}

/// A difference with its 95% confidence interval.
#[derive(SimpleObject)]
pub struct Difference {
    /// Treated minus control.
    pub difference: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
}

impl From<patron_projections::analytics::campaign::Estimate> for Difference {
    fn from(e: patron_projections::analytics::campaign::Estimate) -> Self {
        Self {
            difference: e.difference,
            standard_error: e.standard_error,
            ci_low: e.ci_low,
            ci_high: e.ci_high,
        }
    }
}

/// The differences of each metric.
#[derive(SimpleObject)]
pub struct EffectFigures {
    /// In conversion (share).
    pub conversion: Difference,
    /// In average order value (minor units); null without orders on either side.
    pub average_order_value: Option<Difference>,
    /// In visits per customer.
    pub visits_per_customer: Difference,
}

impl From<patron_projections::analytics::campaign::Effects> for EffectFigures {
    fn from(e: patron_projections::analytics::campaign::Effects) -> Self {
        Self {
            conversion: e.conversion.into(),
            average_order_value: e.average_order_value.map(Into::into),
            visits_per_customer: e.visits_per_customer.into(),
        }
    }
}

/// The effect of targeting a segment, against customers not targeted.
#[derive(SimpleObject)]
pub struct CampaignEffect {
    /// Segment members at the time.
    pub targeted: u64,
    /// Of them, customers known by then.
    pub treated_eligible: u64,
    /// Treated customers left out for want of comparable controls.
    pub treated_excluded: u64,
    /// The targeted group.
    pub treated: GroupFigures,
    /// Everyone else known by then.
    pub control_raw: GroupFigures,
    /// Everyone else, reweighted to the targeted group's prior behaviour.
    pub control_reweighted: GroupFigures,
    /// Treated minus reweighted control.
    pub effect: EffectFigures,
    /// Treated minus raw control (for comparison).
    pub unadjusted: EffectFigures,
}

/// The complexity of an analysis over the whole customer base (cohorts, funnel, paths,
/// attribution, associations, campaign effect, data quality): a fifth of
/// [`crate::MAX_COMPLEXITY`], so a request holds four at most.
pub const ANALYSIS_COMPLEXITY: usize = 10_000;

/// The complexity of a rule judged over every customer (`previewSegment`, `customers` with a
/// filter or a sort, `distribution`): a fiftieth of [`crate::MAX_COMPLEXITY`].
pub const POPULATION_COMPLEXITY: usize = 1_000;

/// The complexity of the lifetime value: two maximum-likelihood fits, then every customer
/// scored (about three times a cohort table's time); a request holds two at most.
pub const LIFETIME_VALUE_COMPLEXITY: usize = 20_000;

/// A `periods` argument: 1 to [`MAX_COHORT_PERIODS`].
fn periods_arg(periods: i32) -> Result<u32> {
    u32::try_from(periods)
        .ok()
        .filter(|n| (1..=MAX_COHORT_PERIODS).contains(n))
        .ok_or_else(|| {
            api_error(
                codes::INVALID_ARGUMENT,
                format!("`periods` must be 1 to {MAX_COHORT_PERIODS}, not {periods}"),
            )
        })
}

/// A list length between 1 and `max`.
fn limit(first: i32, max: usize) -> Result<usize> {
    usize::try_from(first)
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            api_error(
                codes::INVALID_ARGUMENT,
                format!("`first` must be 1 to {max}"),
            )
        })
}

/// Customer analytics (analyst role).
pub struct Analytics;

#[Object]
impl Analytics {
    /// Retention by cohort of first purchase: the share of each cohort buying in each later
    /// period, up to now, for the cohorts of the last `periods` periods (1 to 120; the
    /// cohorts that began earlier are left out).
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn cohorts(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "CohortPeriod::Month")] period: CohortPeriod,
        #[graphql(default = false)] by_channel: bool,
        #[graphql(default = 120)] periods: i32,
    ) -> Result<Vec<Cohort>> {
        require(ctx, Role::Analyst)?;
        let periods = periods_arg(periods)?;
        let table = backend(ctx)?
            .cohorts(period.into(), by_channel, periods)
            .await
            .map_err(backend_error)?;
        Ok(cohorts_of(table))
    }

    /// Customers through ordered steps within a window, with conversion and drop-off per
    /// step, optionally for one segment.
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn funnel(&self, ctx: &Context<'_>, funnel: FunnelInput) -> Result<Vec<FunnelStep>> {
        require(ctx, Role::Analyst)?;
        let ask = FunnelAsk {
            steps: funnel.steps,
            window_days: funnel.window_days,
            from: funnel.from,
            to: funnel.to,
            segment: funnel.segment,
        };
        let figures = backend(ctx)?
            .funnel(ask.clone())
            .await
            .map_err(backend_error)?;
        Ok(ask
            .steps
            .into_iter()
            .zip(figures)
            .map(|(step, f)| FunnelStep {
                step,
                customers: f.customers,
                from_previous: f.from_previous,
                from_start: f.from_start,
                drop_off: f.drop_off,
            })
            .collect())
    }

    /// Lifetime value and churn: BG/NBD and Gamma-Gamma fitted by maximum likelihood over every
    /// customer's orders; the `first` customers by expected value.
    #[graphql(complexity = "LIFETIME_VALUE_COMPLEXITY.saturating_add(child_complexity)")]
    async fn lifetime_value(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 90)] horizon_days: u32,
        #[graphql(default = 90)] churn_days: u32,
        #[graphql(default = 20)] first: i32,
    ) -> Result<LifetimeValue> {
        require(ctx, Role::Analyst)?;
        let first = limit(first, 1_000)?;
        let r = backend(ctx)?
            .clv(horizon_days, churn_days, first)
            .await
            .map_err(backend_error)?;
        Ok(LifetimeValue {
            currency: r.currency,
            horizon_days: r.horizon_days,
            churn_days: r.churn_days,
            customers: r.customers,
            repeat_customers: r.repeat_customers,
            bg_nbd: BgNbdFit {
                r: r.bg_nbd.r,
                alpha: r.bg_nbd.alpha,
                a: r.bg_nbd.a,
                b: r.bg_nbd.b,
                log_likelihood: r.bg_nbd_log_likelihood,
            },
            gamma_gamma: GammaGammaFit {
                p: r.gamma_gamma.p,
                q: r.gamma_gamma.q,
                v: r.gamma_gamma.v,
            },
            fit_seconds: r.fit_seconds,
            churned_by_rule: r.churned_by_rule,
            mean_p_alive: r.mean_p_alive,
            expected_purchases: r.expected_purchases,
            expected_value_minor: r.expected_value_minor,
            top: r
                .top
                .into_iter()
                .map(|v| CustomerLifetimeValue {
                    customer_id: ID(v.customer.to_string()),
                    repeat_purchases: v.repeat_purchases,
                    days_since_last_purchase: v.days_since_last_purchase,
                    p_alive: v.p_alive,
                    expected_purchases: v.expected_purchases,
                    expected_value_minor: v.expected_value_minor,
                    churned_by_rule: v.churned_by_rule,
                })
                .collect(),
        })
    }

    /// Each channel's share of conversions (orders) by last touch, first touch, linear and two
    /// Shapley values; a journey is the touchpoints in the `lookbackDays` before an order.
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn attribution(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 30)] lookback_days: u32,
    ) -> Result<ChannelAttribution> {
        require(ctx, Role::Analyst)?;
        let a = backend(ctx)?
            .attribution(lookback_days)
            .await
            .map_err(backend_error)?;
        Ok(ChannelAttribution {
            journeys: a.journeys,
            conversions: a.conversions,
            channels: a
                .channels
                .into_iter()
                .map(|c| ChannelCredit {
                    channel: c.channel,
                    conversions: c.credit.into(),
                    share: c.share.into(),
                })
                .collect(),
        })
    }

    /// Products bought together: rules by lift over every order (FP-growth), or, with
    /// `product`, what is bought with it.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn associations(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 0.001)] min_support: f64,
        #[graphql(default = 0.1)] min_confidence: f64,
        #[graphql(default = 3)] max_length: i32,
        product: Option<String>,
        #[graphql(default = 20)] first: i32,
    ) -> Result<ProductAssociations> {
        require(ctx, Role::Analyst)?;
        let max_length = usize::try_from(max_length)
            .ok()
            .filter(|n| (1..=5).contains(n))
            .ok_or_else(|| api_error(codes::INVALID_ARGUMENT, "`maxLength` must be 1 to 5"))?;
        let ask = AssociationAsk {
            min_support,
            min_confidence,
            max_length,
            product,
            limit: limit(first, 1_000)?,
        };
        let r = backend(ctx)?
            .associations(ask)
            .await
            .map_err(backend_error)?;
        Ok(ProductAssociations {
            orders: r.orders,
            itemsets: r.itemsets,
            rules_found: r.rules_found,
            rules: r
                .rules
                .into_iter()
                .map(|r| ProductRule {
                    antecedent: r.antecedent,
                    consequent: r.consequent,
                    orders: r.orders,
                    support: r.support,
                    confidence: r.confidence,
                    lift: r.lift,
                })
                .collect(),
        })
    }

    /// The effect of targeting a segment's members at `at` on conversion, average order value
    /// and visits in the `windowDays` after, against comparable customers not targeted.
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn campaign_effect(
        &self,
        ctx: &Context<'_>,
        segment: String,
        at: DateTime<Utc>,
        #[graphql(default = 30)] window_days: u32,
        #[graphql(default = 90)] lookback_days: u32,
    ) -> Result<CampaignEffect> {
        require(ctx, Role::Analyst)?;
        let e = backend(ctx)?
            .campaign(&segment, at, window_days, lookback_days)
            .await
            .map_err(backend_error)?;
        Ok(CampaignEffect {
            targeted: e.targeted as u64,
            treated_eligible: e.treated_eligible as u64,
            treated_excluded: e.treated_excluded as u64,
            treated: e.treated.into(),
            control_raw: e.control_raw.into(),
            control_reweighted: e.control_reweighted.into(),
            effect: e.effect.into(),
            unadjusted: e.unadjusted.into(),
        })
    }

    /// Data quality per source and period: completeness of identifiers, refusals, resolution
    /// to a customer with a core identifier, delivery delay; over the last `periods` periods up
    /// to now (1 to 120).
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn data_quality(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "CohortPeriod::Week")] period: CohortPeriod,
        #[graphql(default = 52)] periods: i32,
    ) -> Result<DataQuality> {
        require(ctx, Role::Analyst)?;
        let periods = periods_arg(periods)?;
        let r = backend(ctx)?
            .quality(period.into(), periods)
            .await
            .map_err(backend_error)?;
        Ok(DataQuality {
            customers: r.customers,
            completeness: r
                .completeness
                .into_iter()
                .map(|c| KindCompleteness {
                    kind: c.kind,
                    customers: c.customers,
                    share: c.share,
                })
                .collect(),
            sources: r
                .sources
                .into_iter()
                .map(|s| SourceQuality {
                    period: s.period,
                    source: s.source,
                    touchpoints: s.touchpoints,
                    refused: s.refused,
                    refusal_rate: s.refusal_rate,
                    core_resolved_share: s.core_resolved_share,
                    lag_p50_seconds: s.lag_p50_seconds,
                    lag_p95_seconds: s.lag_p95_seconds,
                    lag_max_seconds: s.lag_max_seconds,
                })
                .collect(),
            refusals: r
                .refusals
                .into_iter()
                .map(|r| RefusalCount {
                    period: r.period,
                    source: r.source,
                    code: r.code,
                    records: r.records,
                })
                .collect(),
        })
    }

    /// The most common paths to a first purchase: the last `maxSteps` distinct steps before
    /// it, most converted customers first.
    #[graphql(complexity = "ANALYSIS_COMPLEXITY.saturating_add(child_complexity)")]
    async fn paths(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 4)] max_steps: i32,
        #[graphql(default = 20)] first: i32,
    ) -> Result<Vec<PurchasePath>> {
        require(ctx, Role::Analyst)?;
        let max_steps = usize::try_from(max_steps)
            .map_err(|_| api_error(codes::INVALID_ARGUMENT, "`maxSteps` must be 1 to 20"))?;
        let first = limit(first, 200)?;
        let rows = backend(ctx)?
            .paths(max_steps, first)
            .await
            .map_err(backend_error)?;
        Ok(rows
            .into_iter()
            .map(|r| PurchasePath {
                steps: r.steps,
                customers: r.customers,
                converted: r.converted,
                conversion: r.conversion,
                purchase_channels: r
                    .purchase_channels
                    .into_iter()
                    .map(|(channel, count)| ChannelCount { channel, count })
                    .collect(),
            })
            .collect())
    }
}
