//! Customer analytics: statistics over customers' histories, free of IO. The application reads
//! the inputs from the store (order histories, journeys, baskets) and hands them to these
//! functions; what they return is served over GraphQL and exported as CSV.
//!
//! - [`activity`]: every customer's touchpoints and orders in a compact form, the input of the
//!   analyses below.
//! - [`cohort`]: retention of customers grouped by the period of their first purchase.
//! - [`funnel`]: conversion through ordered steps within a time window.
//! - [`paths`]: the most common cross-channel paths to a first purchase.
//! - [`quality`]: completeness, refusals, resolution and freshness per source and period.
//! - [`campaign`]: the effect of targeting a segment, against a control group.
//! - [`clv`]: lifetime value and churn: the BG/NBD and Gamma-Gamma models, fitted by maximum
//!   likelihood.
//! - [`attribution`]: each channel's share of conversions: last touch, first touch, linear and
//!   the Shapley value over channel coalitions.
//! - [`association`]: frequent itemsets and association rules over order baskets (FP-growth).
//! - [`report`]: the answers that gather several models' results, by customer id and SKU.

pub mod activity;
pub mod association;
pub mod attribution;
pub mod campaign;
pub mod clv;
pub mod cohort;
pub mod funnel;
pub mod paths;
pub mod quality;
pub mod report;
