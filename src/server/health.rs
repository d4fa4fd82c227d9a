//! Liveness and readiness.

use actix_web::web::Data;
use actix_web::HttpResponse;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: the store answers.
pub(crate) async fn readyz(state: Data<AppState>) -> HttpResponse {
    match state.commits.ingestor().store().head().await {
        Ok(head) => HttpResponse::Ok().json(json!({"status": "ready", "head": head})),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "error": {"code": e.code(), "message": "the store does not answer"},
            }))
        }
    }
}
