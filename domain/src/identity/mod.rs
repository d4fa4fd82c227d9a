//! Identity resolution: from the identifiers a touchpoint carries to the one customer it belongs
//! to, by explicit rules.

pub mod resolution;
pub mod rules;

pub use resolution::{IdentityView, Merge, Resolution, Resolver, SkipReason, Skipped};
pub use rules::{IdentityRules, KindRule, RulesError, RulesFile, Strength};
