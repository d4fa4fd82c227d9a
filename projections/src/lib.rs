//! Patron's read models: customer profiles, value tiers, lifecycle stages, tags, segments and
//! analytics, each a fold over the event log. No read model exists yet; this crate is where they
//! will live, depending only on `patron-domain`.
