//! Patron's read models, each a fold over the event log or a function of folded profiles, free
//! of IO: the application's projection runner (`src/projection.rs`) loads what a batch of events
//! touches, folds the batch in with the functions here, and writes the result with its
//! checkpoint in one transaction.
//!
//! - [`profile`]: the customer profile (activity, orders, revenue, channels, categories,
//!   consent), merged customers folded into their survivor.
//! - [`holdings`]: the streams and moved touchpoints a customer is made of, which identity
//!   corrections change.
//! - [`value`]: RFM scores and the named RFM segments, value tiers.
//! - [`lifecycle`]: lifecycle stages.
//! - [`tags`]: tags from rules and derived from the profile.
//! - [`segment`]: the segment rule language and its evaluation against one customer.
//! - [`analytics`]: lifetime value, attribution and product associations.

pub mod analytics;
pub mod holdings;
pub mod lifecycle;
pub mod profile;
pub mod segment;
pub mod tags;
pub mod value;
