//! `/graphql`: the API (POST, with an API key), GraphiQL (GET) and subscriptions over
//! websockets (`/graphql/ws`, the key in the connection's `Authorization` header or in the
//! `connection_init` payload).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::AUTHORIZATION;
use actix_web::web::{Data, Payload};
use actix_web::{HttpRequest, HttpResponse};
use async_graphql::http::GraphiQLSource;
use async_graphql_actix_web::{GraphQLResponse, GraphQLSubscription};
use futures::future::BoxFuture;
use patron_graphql::{codes, prepare, ApiKey, Backend, Loaders};
use serde_json::json;

use super::AppState;

/// The longest a GraphQL request may run before it is answered with `TIMEOUT`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn spawn(future: BoxFuture<'static, ()>) {
    tokio::spawn(future);
}

pub(crate) fn unauthenticated(message: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer"))
        .json(json!({
            "errors": [{"message": message, "extensions": {"code": codes::UNAUTHENTICATED}}]
        }))
}

/// The secret of an `Authorization: Bearer <secret>` value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, secret) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// Why a request was not let in.
pub(crate) enum Refusal {
    /// No key, or an unknown or revoked one: 401.
    Unauthenticated(&'static str),
    /// The keys could not be read: 503, with the store's code (details stay in the log).
    Unavailable(String),
}

impl Refusal {
    /// The HTTP answer.
    pub(crate) fn response(&self) -> HttpResponse {
        match self {
            Self::Unauthenticated(message) => unauthenticated(message),
            Self::Unavailable(code) => HttpResponse::ServiceUnavailable().json(json!({
                "errors": [{"message": "the API key could not be checked; try again",
                            "extensions": {"code": code}}]
            })),
        }
    }

    /// The answer in the shape of the REST endpoints' errors (`{"error": {"code", "message"}}`).
    pub(crate) fn rest_response(&self) -> HttpResponse {
        let (mut response, code) = match self {
            Self::Unauthenticated(_) => {
                let mut r = HttpResponse::Unauthorized();
                r.insert_header(("WWW-Authenticate", "Bearer"));
                (r, codes::UNAUTHENTICATED.to_owned())
            }
            Self::Unavailable(code) => (HttpResponse::ServiceUnavailable(), code.clone()),
        };
        response.json(json!({"error": {"code": code, "message": self.message()}}))
    }

    fn message(&self) -> String {
        match self {
            Self::Unauthenticated(message) => (*message).to_owned(),
            Self::Unavailable(_) => "the API key could not be checked; try again".to_owned(),
        }
    }
}

/// The key a secret stands for, or why not.
pub(crate) async fn authenticate(
    backend: &Arc<dyn Backend>,
    secret: Option<&str>,
) -> Result<ApiKey, Refusal> {
    let Some(secret) = secret else {
        return Err(Refusal::Unauthenticated(
            "an API key is required: send `Authorization: Bearer <key>`",
        ));
    };
    match backend.authenticate(secret).await {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(Refusal::Unauthenticated(
            "the API key is unknown or revoked",
        )),
        Err(e) => {
            tracing::error!(error = %e, code = %e.code, "API keys could not be read");
            Err(Refusal::Unavailable(e.code))
        }
    }
}

/// `POST /graphql`: a JSON body of at most [`super::MAX_BODY_BYTES`] (413 beyond).
#[tracing::instrument(name = "http.graphql", skip_all, fields(key, operation, bytes))]
pub(crate) async fn post(
    state: Data<AppState>,
    http: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let secret = http
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let key = match authenticate(&state.backend, secret).await {
        Ok(key) => key,
        Err(refusal) => return refusal.response(),
    };
    let span = tracing::Span::current();
    span.record("key", key.name.as_str());
    let body = match super::read_body(payload).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    span.record("bytes", body.len());
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return HttpResponse::BadRequest().json(json!({
                "errors": [{
                    "message": format!("the body is not a GraphQL request in JSON: {e}"),
                    "extensions": {"code": "MALFORMED_REQUEST"}
                }]
            }))
        }
    };
    if let Some(operation) = &request.operation_name {
        span.record("operation", operation.as_str());
    }
    let request = prepare(request, state.backend.clone(), key, spawn);
    match tokio::time::timeout(REQUEST_TIMEOUT, state.schema.execute(request)).await {
        Ok(response) => {
            let response: GraphQLResponse = response.into();
            actix_web::Responder::respond_to(response, &http).map_into_boxed_body()
        }
        Err(_) => HttpResponse::GatewayTimeout().json(json!({
            "errors": [{
                "message": format!("the request ran longer than {} s", REQUEST_TIMEOUT.as_secs()),
                "extensions": {"code": "TIMEOUT"}
            }]
        })),
    }
}

/// `GET /graphql`: GraphiQL.
pub(crate) async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql/ws")
                .title("Patron GraphQL")
                .finish(),
        )
}

/// `GET /graphql/ws`: subscriptions (graphql-ws and graphql-transport-ws protocols).
pub(crate) async fn websocket(
    state: Data<AppState>,
    http: HttpRequest,
    payload: Payload,
) -> actix_web::Result<HttpResponse> {
    let header_secret = http
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned);
    let backend = state.backend.clone();
    GraphQLSubscription::new(state.schema.clone())
        .on_connection_init(move |init| async move {
            let from_init = init
                .get("Authorization")
                .or_else(|| init.get("authorization"))
                .and_then(|v| v.as_str())
                .and_then(bearer)
                .map(str::to_owned);
            let secret = header_secret.or(from_init);
            let key = authenticate(&backend, secret.as_deref())
                .await
                .map_err(|refusal| {
                    patron_graphql::access::api_error(codes::UNAUTHENTICATED, refusal.message())
                })?;
            let mut data = async_graphql::Data::default();
            data.insert(key);
            // Queries and mutations go to POST /graphql, where each is authenticated anew.
            data.insert(patron_graphql::access::Socket);
            data.insert(Loaders::new(backend, spawn));
            Ok(data)
        })
        .start(&http, payload)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_secrets_are_read_from_the_header_value() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
