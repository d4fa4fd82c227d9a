//! The HTTP edge: who is calling and how a refusal is answered, in one place for every
//! endpoint.
//!
//! [`authenticate`] checks a bearer secret against the store's API keys (the same check for
//! `POST /graphql`, `/graphql/ws` and `POST /v1/events`); [`ApiError`] is every error answer,
//! with a status, a stable code and a message, written in the shape the endpoint speaks
//! (REST: `{"error": {"code", "message"}}`; GraphQL: `{"errors": [{"message", "extensions":
//! {"code"}}]}`; the Segment-shaped endpoints: `{"success": false, "error": {...}}`).

use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::web::Data;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures::future::LocalBoxFuture;
use patron_graphql::{codes, ApiKey, Role};
use serde_json::json;

use super::{secret_hash, AppState};
use crate::store::EventStore;

/// An error answered over HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable, machine-readable code.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// No key, or an unknown or revoked one: 401, with a bearer challenge.
    pub(crate) fn unauthenticated(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED, message)
    }

    /// The status, with a bearer challenge on a 401 of an endpoint that takes bearer keys.
    fn head(&self, bearer: bool) -> actix_web::HttpResponseBuilder {
        let mut response = HttpResponse::build(self.status);
        if bearer && self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response
    }

    /// The answer of a REST endpoint: `{"error": {"code", "message"}}`.
    pub(crate) fn rest(&self) -> HttpResponse {
        self.head(true)
            .json(json!({"error": {"code": self.code, "message": self.message}}))
    }

    /// The answer of `/graphql`: `{"errors": [{"message", "extensions": {"code"}}]}`.
    pub(crate) fn graphql(&self) -> HttpResponse {
        self.head(true).json(json!({
            "errors": [{"message": self.message, "extensions": {"code": self.code}}]
        }))
    }

    /// The answer of a Segment-shaped endpoint: `{"success": false, "error": {...}}` (they
    /// take write keys by basic authorization: no bearer challenge).
    pub(crate) fn segment(&self) -> HttpResponse {
        self.head(false).json(json!({
            "success": false,
            "error": {"code": self.code, "message": self.message}
        }))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.rest()
    }
}

/// How an endpoint speaks its errors.
pub(crate) trait Speaks {
    /// `error` in the endpoint's shape.
    fn answer(error: &ApiError) -> HttpResponse;
}

/// The REST endpoints (`/v1/...`).
pub(crate) struct Rest;

impl Speaks for Rest {
    fn answer(error: &ApiError) -> HttpResponse {
        error.rest()
    }
}

/// `/graphql`.
pub(crate) struct Graphql;

impl Speaks for Graphql {
    fn answer(error: &ApiError) -> HttpResponse {
        error.graphql()
    }
}

/// A refusal answered in the shape of the endpoint that speaks `S`.
pub(crate) struct Refused<S>(ApiError, PhantomData<S>);

impl<S> std::fmt::Debug for Refused<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S> std::fmt::Display for Refused<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: Speaks> ResponseError for Refused<S> {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        S::answer(&self.0)
    }
}

/// The API key of the request, checked against the store before the handler runs (and before
/// its body is read): the extractor of every endpoint that needs a key. A request without a
/// live key is refused in the endpoint's shape `S`.
pub(crate) struct Caller<S>(pub ApiKey, pub PhantomData<S>);

impl<S: Speaks + 'static> FromRequest for Caller<S> {
    type Error = Refused<S>;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let store = request
            .app_data::<Data<AppState>>()
            .map(|state| state.store.clone());
        let secret = bearer_of(request).map(str::to_owned);
        Box::pin(async move {
            let refused = |e| Refused(e, PhantomData);
            let store = store.ok_or_else(|| {
                refused(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "the server has no key store",
                ))
            })?;
            let key = authenticate(&store, secret.as_deref())
                .await
                .map_err(refused)?;
            Ok(Caller(key, PhantomData))
        })
    }
}

/// The secret of an `Authorization: Bearer <secret>` value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, secret) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// The bearer secret of a request's `Authorization` header, if it has one.
pub(crate) fn bearer_of(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// The live API key `secret` stands for, or why the caller is not let in: 401 for no key or
/// an unknown or revoked one, 503 with the store's code when the keys cannot be read (the
/// details stay in the log).
pub(crate) async fn authenticate(
    store: &EventStore,
    secret: Option<&str>,
) -> Result<ApiKey, ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::unauthenticated(
            "an API key is required: send `Authorization: Bearer <key>`",
        ));
    };
    let unavailable = |code: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "the API key could not be checked; try again",
        )
    };
    let stored = match store.api_key_by_hash(&secret_hash(secret)).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, code = e.code(), "API keys could not be read");
            return Err(unavailable(e.code()));
        }
    };
    let Some(stored) = stored.filter(|k| k.revoked_at.is_none()) else {
        return Err(ApiError::unauthenticated(
            "the API key is unknown or revoked",
        ));
    };
    let role = stored.role.parse::<Role>().map_err(|e| {
        tracing::error!(key = %stored.id, error = %e, "a stored API key has no known role");
        unavailable("CORRUPT_KEY")
    })?;
    Ok(ApiKey {
        id: stored.id,
        name: stored.name,
        role,
        created_at: stored.created_at,
        revoked_at: stored.revoked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_secret_is_read_whatever_the_scheme_s_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("  bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn one_error_speaks_each_endpoint_s_shape() {
        let e = ApiError::unauthenticated("no key");
        let www = |r: &HttpResponse| r.headers().get("WWW-Authenticate").cloned();
        for response in [e.rest(), e.graphql()] {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                www(&response).as_ref().and_then(|v| v.to_str().ok()),
                Some("Bearer")
            );
        }
        assert!(
            www(&e.segment()).is_none(),
            "Segment endpoints take basic authorization"
        );
        let other = ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "no");
        assert!(www(&other.rest()).is_none());
        assert_eq!(other.to_string(), "no (FORBIDDEN)");
    }
}
