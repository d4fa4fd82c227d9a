//! Patron's GraphQL schema, served to the marketing UI. No schema exists yet; this crate is where
//! it will live, over the read models of `patron-projections`.
