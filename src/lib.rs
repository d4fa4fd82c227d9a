//! Patron: an event-sourced customer data platform.
//!
//! Every customer touchpoint is kept as an immutable event; read models are folds over the log.
//!
//! # Layout
//!
//! - [`store`]: the append-only event log on SQLite (embedded default) or PostgreSQL.
//! - [`ingest`], [`import`], [`server`]: touchpoints in, resolved to customers.
//! - [`privacy`]: opening sealed personal data, erasure, quarantine expiry.
//! - [`access_export`]: the right of access: everything held on one person as one document.
//! - [`correction`]: identity corrections by hand (merge, undo a merge, split, link, unlink,
//!   block) and the audit of why an identifier belongs to a customer.
//! - [`projection`]: the runner that folds the log into read models, with checkpoints.
//! - [`scoring`]: value tiers, RFM and lifecycle stages of every customer as of a moment.
//! - [`segmentation`]: segment rules judged over the whole customer base.
//! - [`analytics`]: lifetime value, cohorts, funnels, paths, attribution, associations,
//!   campaign effect and data quality over every customer's activity.
//! - [`review`]: the review queue of likely duplicates the rules did not merge.
//! - [`time_travel`]: a customer's profile at a time, as the log knew it at a time.
//! - [`bench`]: the `patron bench` workloads whose figures go into `docs/benchmarks.md`.
//! - [`cli`]: the `patron` command line.
//! - [`telemetry`]: tracing set-up.
//!
//! The domain (events, identities, the customer aggregate) lives in the `patron-domain` crate,
//! read models in `patron-projections`, the API schema in `patron-graphql`.

pub mod access_export;
pub mod analytics;
pub mod bench;
pub mod cli;
pub mod config;
pub mod correction;
pub mod demo;
#[cfg(test)]
mod fuzz;
pub mod import;
pub mod ingest;
pub mod json_bound;
pub mod population;
pub mod privacy;
pub mod projection;
pub mod review;
pub mod scoring;
pub mod segmentation;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time_travel;
