//! Who is calling and what they may do: API keys, roles and the API's stable error codes.
//!
//! Roles are ordered; each may do what the ones below it may, except that only `ingest`,
//! `operator` and `admin` keys may send touchpoints to `POST /v1/events`:
//!
//! | role | may |
//! |---|---|
//! | `ingest` | send touchpoints to `POST /v1/events`, nothing else (for POS, shop and app back ends) |
//! | `viewer` | read profiles, segments and distributions, personal data masked |
//! | `analyst` | also create, change and delete segments |
//! | `operator` | also read personal data unmasked (logged), the quarantine, ingest |
//! | `admin` | also erase customers and manage API keys |

use std::fmt;
use std::str::FromStr;

use async_graphql::{Context, Error, ErrorExtensions};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A role, from least to most allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, async_graphql::Enum)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Sends touchpoints to `POST /v1/events`; reads nothing.
    Ingest,
    /// Reads, personal data masked.
    Viewer,
    /// Reads; manages segments.
    Analyst,
    /// Reads personal data unmasked; the quarantine; ingestion; identity corrections.
    Operator,
    /// Everything: erasure and API keys too.
    Admin,
}

impl Role {
    /// The role's name, as the CLI and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Viewer => "viewer",
            Self::Analyst => "analyst",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may send touchpoints to `POST /v1/events`.
    pub fn may_ingest(self) -> bool {
        self == Self::Ingest || self >= Self::Operator
    }

    /// Whether this role reads personal data unmasked.
    pub fn sees_personal_data(self) -> bool {
        self >= Self::Operator
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected ingest, viewer, analyst, operator or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingest" => Ok(Self::Ingest),
            "viewer" => Ok(Self::Viewer),
            "analyst" => Ok(Self::Analyst),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// An API key's record (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, async_graphql::SimpleObject)]
pub struct ApiKey {
    /// Its id.
    pub id: Uuid,
    /// A name for people, for example `crm-sync`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The stable codes of API errors, in `errors[].extensions.code`.
pub mod codes {
    /// The caller's role may not do this.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// No such customer, segment or key.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// An argument is out of range or malformed.
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    /// No API key, or an unknown or revoked one (HTTP 401 before any GraphQL is run).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The request's complexity is over [`crate::MAX_COMPLEXITY`]; nothing was run.
    pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";
    /// The request is nested deeper than [`crate::MAX_DEPTH`]; nothing was run.
    pub const QUERY_TOO_DEEP: &str = "QUERY_TOO_DEEP";
    /// Every turn to analyse stayed taken longer than an analysis may wait: try again later.
    pub const BUSY: &str = "BUSY";
    /// More `customerByIdentifier` lookups in one request than it may make.
    pub const TOO_MANY_LOOKUPS: &str = "TOO_MANY_LOOKUPS";
    /// The key's budget of identifier lookups over time is spent; the message names the
    /// budget and when the next lookup is allowed.
    pub const LOOKUP_BUDGET_EXHAUSTED: &str = "LOOKUP_BUDGET_EXHAUSTED";
}

/// An API error with a stable code.
pub fn api_error(code: &str, message: impl Into<String>) -> Error {
    let code = code.to_owned();
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// Marks the data of a websocket connection: its key was checked once, when it opened, so it
/// may only subscribe; queries and mutations go to `POST /graphql`, where each request is
/// authenticated (a revoked key is refused from the next request on).
#[derive(Clone, Copy, Debug)]
pub struct Socket;

/// The subscribing key; refuses callers below `role` with `FORBIDDEN`.
pub fn require_subscriber<'a>(ctx: &Context<'a>, role: Role) -> async_graphql::Result<&'a ApiKey> {
    checked(ctx, role)
}

/// The calling key of a query or mutation; refuses callers below `role` with `FORBIDDEN`, and
/// queries and mutations sent over a websocket with `FORBIDDEN` too.
pub fn require<'a>(ctx: &Context<'a>, role: Role) -> async_graphql::Result<&'a ApiKey> {
    if ctx.data_opt::<Socket>().is_some() {
        return Err(api_error(
            codes::FORBIDDEN,
            "a websocket carries subscriptions only: send queries and mutations to POST /graphql",
        ));
    }
    checked(ctx, role)
}

fn checked<'a>(ctx: &Context<'a>, role: Role) -> async_graphql::Result<&'a ApiKey> {
    let key = ctx
        .data_opt::<ApiKey>()
        .ok_or_else(|| api_error(codes::UNAUTHENTICATED, "an API key is required"))?;
    if key.role < role {
        return Err(api_error(
            codes::FORBIDDEN,
            format!("the {} role may not do this; it needs {role}", key.role),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip_their_names() {
        let all = [
            Role::Ingest,
            Role::Viewer,
            Role::Analyst,
            Role::Operator,
            Role::Admin,
        ];
        for pair in all.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for role in all {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
        assert!(!Role::Analyst.sees_personal_data());
        assert!(Role::Ingest.may_ingest() && Role::Operator.may_ingest());
        assert!(!Role::Viewer.may_ingest() && !Role::Analyst.may_ingest());
        assert!(Role::Operator.sees_personal_data());
    }
}
