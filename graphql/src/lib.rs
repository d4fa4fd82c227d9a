//! Patron's GraphQL API for the marketing UI: the schema (queries, mutations, subscriptions)
//! over the read models, with access control by role, masking of personal data and batch
//! loading.
//!
//! The schema reads and writes through the [`Backend`] port, which the server implements over
//! the event store; the server authenticates each request's API key and hands it in with
//! [`prepare`]. The SDL is checked in as `graphql/schema.graphql` (see [`sdl`]).

pub mod access;
pub mod analytics;
pub mod backend;
pub mod correction;
pub mod cursor;
pub mod customer;
pub mod loader;
pub mod mask;
pub mod mutation;
pub mod query;
pub mod subscription;

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{Error, ErrorExtensionValues, Schema, ServerError, ValidationResult};
use futures::future::BoxFuture;

pub use access::{codes, ApiKey, Role};
pub use backend::{Backend, BackendError, BackendResult};
pub use loader::Loaders;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The schema type.
pub type PatronSchema = Schema<Query, Mutation, Subscription>;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted: each field counts 1, a list field its page size times its
/// children, an analysis of the whole customer base [`analytics::ANALYSIS_COMPLEXITY`] (the
/// lifetime value fit [`analytics::LIFETIME_VALUE_COMPLEXITY`]).
pub const MAX_COMPLEXITY: usize = 50_000;

/// The schema over `backend`, with the depth and complexity limits.
pub fn schema(backend: Arc<dyn Backend>) -> PatronSchema {
    Schema::build(Query, Mutation, Subscription)
        .data(backend)
        .extension(Limits)
        .finish()
}

/// Refuses a request over [`MAX_COMPLEXITY`] (`QUERY_TOO_COMPLEX`) or [`MAX_DEPTH`]
/// (`QUERY_TOO_DEEP`) at validation, before anything runs, with a message naming the measure
/// and the limit.
struct Limits;

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Limits)
    }
}

/// A validation error with a stable code.
fn refusal(code: &str, message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

#[async_trait::async_trait]
impl Extension for Limits {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        if result.complexity > MAX_COMPLEXITY {
            return Err(vec![refusal(
                codes::QUERY_TOO_COMPLEX,
                format!(
                    "the query is too complex: {} over the limit of {MAX_COMPLEXITY} (an \
                     analysis of the whole customer base counts {}, lifetimeValue {}; a list \
                     its page size times its fields; any other field 1)",
                    result.complexity,
                    analytics::ANALYSIS_COMPLEXITY,
                    analytics::LIFETIME_VALUE_COMPLEXITY,
                ),
            )]);
        }
        if result.depth > MAX_DEPTH {
            return Err(vec![refusal(
                codes::QUERY_TOO_DEEP,
                format!(
                    "the query is nested too deep: {} levels over the limit of {MAX_DEPTH}",
                    result.depth
                ),
            )]);
        }
        Ok(result)
    }
}

/// The schema's SDL, as checked in at `graphql/schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

/// A request ready to run for `key`: with the key and this request's loaders, whose batches
/// are spawned with `spawn`.
pub fn prepare<S>(
    request: async_graphql::Request,
    backend: Arc<dyn Backend>,
    key: ApiKey,
    spawn: S,
) -> async_graphql::Request
where
    S: Fn(BoxFuture<'static, ()>) + Send + Sync + Clone + 'static,
{
    request.data(key).data(Loaders::new(backend, spawn))
}

/// A backend failure as an API error with its code.
pub(crate) fn backend_error(e: BackendError) -> Error {
    access::api_error(&e.code, e.message)
}

#[cfg(test)]
mod tests {
    /// The checked-in SDL is the schema's: regenerate it with
    /// `PATRON_WRITE_SDL=1 cargo test -p patron-graphql sdl`.
    #[test]
    fn checked_in_sdl_matches_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
        let sdl = super::sdl();
        if std::env::var_os("PATRON_WRITE_SDL").is_some() {
            std::fs::write(path, &sdl).expect("write schema.graphql");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == sdl,
            "graphql/schema.graphql is not the schema's SDL; regenerate it with \
             PATRON_WRITE_SDL=1 cargo test -p patron-graphql sdl"
        );
    }
}
