//! Patron's read models, each a fold over the event log, free of IO: the application's
//! projection runner (`src/projection/`) loads what a batch of events touches, folds the batch
//! in with the functions here, and writes the result with its checkpoint in one transaction.
//!
//! - [`profile`]: the customer profile (activity, orders, revenue, channels, categories,
//!   consent), merged customers folded into their survivor.

pub mod profile;
