//! Liveness and readiness.

use actix_web::web::Data;
use actix_web::HttpResponse;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// What the server says when privacy keys are kept in the store, naming the settings that
/// would give them (`kept`: [`crate::ingest::Ingestor::keys_kept_in_store`]); `None` when
/// configuration gave every key.
pub(crate) fn key_warning(kept: &[&str]) -> Option<String> {
    (!kept.is_empty()).then(|| {
        format!(
            "the privacy keys are kept in the store next to the data they protect ({} not \
             configured): fine for a trial; in production give them from a secret store",
            kept.join(", ")
        )
    })
}

/// `GET /readyz`: the store answers and the profiles are caught up with the log within the
/// configured bound (`lag_seconds`: age of the oldest event not yet in the profiles). Warnings
/// that do not make the server unready (`KEYS_KEPT_IN_STORE`) are listed in `warnings`.
pub(crate) async fn readyz(state: Data<AppState>) -> HttpResponse {
    let lag = match state.projection.lag().await {
        Ok(lag) => lag,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            return HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "error": {"code": e.code(), "message": "the store does not answer"},
            }));
        }
    };
    let body = json!({
        "head": lag.head,
        "projection": {
            "position": lag.position,
            "lag_events": lag.events,
            "lag_seconds": lag.seconds,
            "bound_seconds": state.ready_lag_seconds,
        },
        "warnings": state.key_warning.iter().map(|message| json!({
            "code": "KEYS_KEPT_IN_STORE",
            "message": message,
        })).collect::<Vec<_>>(),
    });
    if lag.seconds > state.ready_lag_seconds {
        let mut body = body;
        body["status"] = json!("lagging");
        body["error"] = json!({
            "code": "PROJECTION_LAGGING",
            "message": format!(
                "the profiles are {} s behind the log (bound {} s)",
                lag.seconds, state.ready_lag_seconds
            ),
        });
        return HttpResponse::ServiceUnavailable().json(body);
    }
    let mut body = body;
    body["status"] = json!("ready");
    HttpResponse::Ok().json(body)
}
