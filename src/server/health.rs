//! Liveness and readiness.

use actix_web::web::Data;
use actix_web::HttpResponse;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: the store answers and the profiles are caught up with the log within the
/// configured bound (`lag_seconds`: age of the oldest event not yet in the profiles).
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
