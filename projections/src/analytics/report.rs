//! The answers of the analyses that gather several models' results, as the application and
//! the API hand them on: lifetime value with churn, and product associations by SKU.

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;

use super::clv::{BgNbd, GammaGamma};

/// One customer's lifetime value and churn figures.
#[derive(Clone, Debug, Serialize)]
pub struct CustomerValue {
    /// The live customer.
    pub customer: CustomerId,
    /// Repeat purchase days (the first day not counted).
    pub repeat_purchases: u32,
    /// Days from the first purchase to the last.
    pub recency_days: f64,
    /// Days from the first purchase to the end of observation.
    pub age_days: f64,
    /// Days since the last purchase.
    pub days_since_last_purchase: f64,
    /// Probability that the customer is still active (BG/NBD), 0 to 1.
    pub p_alive: f64,
    /// Expected purchases in the horizon (BG/NBD).
    pub expected_purchases: f64,
    /// Expected value of a purchase (Gamma-Gamma), minor currency units.
    pub expected_average_value_minor: f64,
    /// Expected spend in the horizon: the two multiplied, minor units, undiscounted.
    pub expected_value_minor: f64,
    /// No purchase in the churn rule's days.
    pub churned_by_rule: bool,
}

/// Lifetime value and churn: both models fitted over every live customer with an order.
#[derive(Clone, Debug, Serialize)]
pub struct ClvReport {
    /// The currency of every amount.
    pub currency: String,
    /// The end of observation.
    pub as_of: DateTime<Utc>,
    /// Days ahead the expectations look.
    pub horizon_days: u32,
    /// Days without a purchase after which the rule calls a customer churned.
    pub churn_days: u32,
    /// Customers with an order in the currency.
    pub customers: u64,
    /// Of them, customers with a repeat purchase (what the Gamma-Gamma fit sees).
    pub repeat_customers: u64,
    /// The fitted BG/NBD parameters (time in days).
    pub bg_nbd: BgNbd,
    /// Its log-likelihood at the fit.
    pub bg_nbd_log_likelihood: f64,
    /// The fitted Gamma-Gamma parameters (minor units).
    pub gamma_gamma: GammaGamma,
    /// Seconds the two fits took.
    pub fit_seconds: f64,
    /// Customers the churn rule calls churned.
    pub churned_by_rule: u64,
    /// Mean probability of being active, 0 to 1.
    pub mean_p_alive: f64,
    /// Expected purchases of all customers in the horizon.
    pub expected_purchases: f64,
    /// Expected spend of all customers in the horizon, minor units.
    pub expected_value_minor: f64,
    /// Customers, highest expected value first (as many as asked).
    pub top: Vec<CustomerValue>,
}

/// A rule between products, by SKU.
#[derive(Clone, Debug, Serialize)]
pub struct ProductRule {
    /// The products bought (SKUs).
    pub antecedent: Vec<String>,
    /// The products bought with them (SKUs).
    pub consequent: Vec<String>,
    /// Orders holding all of them.
    pub orders: u64,
    /// Share of all orders holding all of them (0 to 1).
    pub support: f64,
    /// Share of the orders holding the antecedent that also hold the consequent (0 to 1).
    pub confidence: f64,
    /// Confidence divided by the consequent's own share of orders (1: independent).
    pub lift: f64,
}

/// Product associations over every live customer's orders.
#[derive(Clone, Debug, Serialize)]
pub struct AssociationReport {
    /// Orders (baskets) looked at.
    pub orders: u64,
    /// Frequent itemsets found.
    pub itemsets: u64,
    /// Rules found at the asked confidence.
    pub rules_found: u64,
    /// The best rules (by lift, then confidence), or what is bought with the asked product.
    pub rules: Vec<ProductRule>,
}

/// What product associations are asked for.
#[derive(Clone, Debug)]
pub struct AssociationAsk {
    /// Least share of orders an itemset must be in (0 to 1].
    pub min_support: f64,
    /// Least confidence of a rule (0 to 1).
    pub min_confidence: f64,
    /// Most products in an itemset.
    pub max_length: usize,
    /// Only what is bought together with this product (SKU).
    pub product: Option<String>,
    /// How many rules to return.
    pub limit: usize,
}
