//! Analytics answers as CSV: one header row naming each column with its unit, then one row per
//! item, so a table opens as it is in a spreadsheet.

use std::io::Write;

use patron_projections::analytics::cohort::CohortTable;
use patron_projections::analytics::paths::PathRow;
use patron_projections::analytics::quality::QualityReport;

use patron_projections::analytics::attribution::Attribution;
use patron_projections::analytics::campaign::CampaignEffect;

use super::{AssociationReport, CustomerValue, FunnelReport};

/// A CSV writer failed.
pub type CsvResult = Result<(), ::csv::Error>;

/// The retention table: one row per cohort (and channel), `period_k` columns as shares.
pub fn cohorts(table: &CohortTable, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    let width = table
        .rows
        .iter()
        .map(|r| r.retention.len())
        .max()
        .unwrap_or(0);
    let mut header = vec![
        "cohort".to_owned(),
        "channel".to_owned(),
        "customers".to_owned(),
    ];
    header.extend((0..width).map(|k| format!("period_{k}_share")));
    w.write_record(&header)?;
    for row in &table.rows {
        let mut record = vec![
            row.cohort.to_string(),
            row.channel.clone().unwrap_or_default(),
            row.customers.to_string(),
        ];
        record.extend(row.retention.iter().map(|r| format!("{r:.6}")));
        record.resize(header.len(), String::new());
        w.write_record(&record)?;
    }
    w.flush()?;
    Ok(())
}

/// A funnel: one row per step.
pub fn funnel(report: &FunnelReport, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "step",
        "name",
        "customers",
        "from_previous_share",
        "from_start_share",
        "drop_off_customers",
    ])?;
    for (k, (name, f)) in report.steps.iter().zip(&report.figures).enumerate() {
        w.write_record([
            (k + 1).to_string(),
            name.clone(),
            f.customers.to_string(),
            format!("{:.6}", f.from_previous),
            format!("{:.6}", f.from_start),
            f.drop_off.to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Paths to a first purchase: one row per path, steps joined by ` > `.
pub fn paths(rows: &[PathRow], out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "path",
        "customers",
        "converted_customers",
        "conversion_share",
        "purchase_channels",
    ])?;
    for row in rows {
        let channels = row
            .purchase_channels
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(";");
        w.write_record([
            row.steps.join(" > "),
            row.customers.to_string(),
            row.converted.to_string(),
            format!("{:.6}", row.conversion),
            channels,
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// The data-quality report: one row per period and source; completeness and refusals by code
/// as rows of their own `section`.
pub fn quality(report: &QualityReport, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "section",
        "period",
        "source",
        "name",
        "customers",
        "share",
        "touchpoints",
        "refused_records",
        "refusal_rate_share",
        "core_resolved_share",
        "lag_p50_seconds",
        "lag_p95_seconds",
        "lag_max_seconds",
    ])?;
    let none = String::new;
    for c in &report.completeness {
        let mut row = vec![none(); 13];
        row[0] = "completeness".into();
        row[3] = c.kind.clone();
        row[4] = c.customers.to_string();
        row[5] = format!("{:.6}", c.share);
        w.write_record(&row)?;
    }
    for s in &report.sources {
        w.write_record([
            "source".to_owned(),
            s.period.to_string(),
            s.source.clone(),
            none(),
            none(),
            none(),
            s.touchpoints.to_string(),
            s.refused.to_string(),
            format!("{:.6}", s.refusal_rate),
            format!("{:.6}", s.core_resolved_share),
            s.lag_p50_seconds.to_string(),
            s.lag_p95_seconds.to_string(),
            s.lag_max_seconds.to_string(),
        ])?;
    }
    for r in &report.refusals {
        let mut row = vec![none(); 13];
        row[0] = "refusals".into();
        row[1] = r.period.to_string();
        row[2] = r.source.clone();
        row[3] = r.code.clone();
        row[7] = r.records.to_string();
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

/// Attribution: one row per channel, credited conversions and shares by each model.
pub fn attribution(report: &Attribution, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "channel",
        "last_touch_conversions",
        "first_touch_conversions",
        "linear_conversions",
        "shapley_conversions",
        "shapley_rate_conversions",
        "last_touch_share",
        "first_touch_share",
        "linear_share",
        "shapley_share",
        "shapley_rate_share",
    ])?;
    for c in &report.channels {
        let (k, s) = (&c.credit, &c.share);
        let mut row = vec![c.channel.clone()];
        for v in [
            k.last_touch,
            k.first_touch,
            k.linear,
            k.shapley,
            k.shapley_rate,
            s.last_touch,
            s.first_touch,
            s.linear,
            s.shapley,
            s.shapley_rate,
        ] {
            row.push(format!("{v:.6}"));
        }
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

/// Product rules: one row per rule, products joined by `+`.
pub fn associations(report: &AssociationReport, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "antecedent",
        "consequent",
        "orders",
        "support_share",
        "confidence_share",
        "lift_ratio",
    ])?;
    for r in &report.rules {
        w.write_record([
            r.antecedent.join("+"),
            r.consequent.join("+"),
            r.orders.to_string(),
            format!("{:.6}", r.support),
            format!("{:.6}", r.confidence),
            format!("{:.6}", r.lift),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// A campaign's effect: one row per metric, the groups' values and the effect with its 95%
/// interval.
pub fn campaign(effect: &CampaignEffect, out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "metric",
        "unit",
        "treated",
        "control_raw",
        "control_reweighted",
        "effect",
        "effect_ci95_low",
        "effect_ci95_high",
        "unadjusted_effect",
    ])?;
    let num = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let rows = [
        (
            "conversion",
            "share",
            Some(effect.treated.conversion),
            Some(effect.control_raw.conversion),
            Some(effect.control_reweighted.conversion),
            Some(&effect.effect.conversion),
            Some(&effect.unadjusted.conversion),
        ),
        (
            "average_order_value",
            "minor units",
            effect.treated.average_order_value,
            effect.control_raw.average_order_value,
            effect.control_reweighted.average_order_value,
            effect.effect.average_order_value.as_ref(),
            effect.unadjusted.average_order_value.as_ref(),
        ),
        (
            "visits_per_customer",
            "touchpoints",
            Some(effect.treated.visits_per_customer),
            Some(effect.control_raw.visits_per_customer),
            Some(effect.control_reweighted.visits_per_customer),
            Some(&effect.effect.visits_per_customer),
            Some(&effect.unadjusted.visits_per_customer),
        ),
    ];
    for (metric, unit, treated, raw, reweighted, estimate, unadjusted) in rows {
        w.write_record([
            metric.to_owned(),
            unit.to_owned(),
            num(treated),
            num(raw),
            num(reweighted),
            num(estimate.map(|e| e.difference)),
            num(estimate.map(|e| e.ci_low)),
            num(estimate.map(|e| e.ci_high)),
            num(unadjusted.map(|e| e.difference)),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Every customer's lifetime value and churn figures, one row each.
pub fn customer_values(values: &[CustomerValue], out: impl Write) -> CsvResult {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record([
        "customer_id",
        "repeat_purchases",
        "recency_days",
        "age_days",
        "days_since_last_purchase",
        "p_alive_share",
        "expected_purchases",
        "expected_average_value_minor",
        "expected_value_minor",
        "churned_by_rule",
    ])?;
    for v in values {
        w.write_record([
            v.customer.to_string(),
            v.repeat_purchases.to_string(),
            format!("{:.0}", v.recency_days),
            format!("{:.0}", v.age_days),
            format!("{:.2}", v.days_since_last_purchase),
            format!("{:.6}", v.p_alive),
            format!("{:.6}", v.expected_purchases),
            format!("{:.2}", v.expected_average_value_minor),
            format!("{:.2}", v.expected_value_minor),
            v.churned_by_rule.to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}
