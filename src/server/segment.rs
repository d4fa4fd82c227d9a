//! The Segment HTTP Tracking API shape (`/v1/batch`, `/v1/identify`, `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias`), so that the open-source Segment and RudderStack SDKs
//! send to Patron by changing only their host.
//!
//! The write key is the basic-auth user name. Each message becomes a Patron record:
//! `messageId` is the idempotency key; `userId` a `login_id`, `anonymousId` an `anonymous_id`,
//! `context.device.id` and `context.device.advertisingId` `device_id`s, and the `email` and
//! `phone` of `traits` and `context.traits` identifiers of those kinds. `identify` records traits,
//! `track` a custom event named by `event`, `page` a page view, `screen` a screen view, `group`
//! a custom `group` event, and `alias` links `previousId` (as an anonymous id) to `userId`.

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::web::{Data, Payload};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use chrono::Utc;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::AppState;
use crate::ingest::{check_record_bounds, Incoming};
use patron_domain::touchpoint::{OneOrMany, RawTouchpoint, Rejection, RejectionCode};
use serde_json::value::RawValue;

/// The namespace of event ids made from `messageId`s that are not UUIDs.
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x2f4b_9a61_0c3d_4e8f_a1b2_c3d4_e5f6_0718);

fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    super::edge::ApiError::new(status, code, message).segment()
}

/// The write key of a request: the user name of its basic authorization.
fn write_key(request: &HttpRequest) -> Option<String> {
    let header = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_owned())
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    v.as_str().filter(|s| !s.trim().is_empty())
}

fn channel(kind: &str, message: &Value) -> &'static str {
    let library = text(message, &["context", "library", "name"])
        .unwrap_or_default()
        .to_ascii_lowercase();
    match kind {
        "screen" => "app",
        "page" => "web",
        _ if [
            "ios",
            "android",
            "react-native",
            "flutter",
            "kotlin",
            "swift",
        ]
        .iter()
        .any(|l| library.contains(l)) =>
        {
            "app"
        }
        _ if ["analytics.js", "analytics-next", "javascript", "web"]
            .iter()
            .any(|l| library.contains(l)) =>
        {
            "web"
        }
        _ => "other",
    }
}

/// Turns one Segment message of type `kind` into a Patron record.
pub(crate) fn to_record(kind: &str, message: &Value) -> Result<RawTouchpoint, Rejection> {
    let reject = |field: &str, code, reason: &str| Rejection {
        field: field.to_owned(),
        reason: reason.to_owned(),
        code,
    };
    if !message.is_object() {
        return Err(reject(
            "message",
            RejectionCode::Malformed,
            "a message is a JSON object",
        ));
    }
    let message_id = text(message, &["messageId"])
        .ok_or_else(|| reject("messageId", RejectionCode::MissingField, "is required"))?;
    let event_id = Uuid::parse_str(message_id)
        .unwrap_or_else(|_| Uuid::new_v5(&MESSAGE_NAMESPACE, message_id.as_bytes()));
    let occurred_at = text(message, &["timestamp"])
        .or_else(|| text(message, &["originalTimestamp"]))
        .map_or_else(|| Utc::now().to_rfc3339(), str::to_owned);

    let mut identifiers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut add = |kind: &str, value: Option<&str>| {
        if let Some(v) = value {
            let values = identifiers.entry(kind.to_owned()).or_default();
            if !values.iter().any(|x| x == v) {
                values.push(v.to_owned());
            }
        }
    };
    add("login_id", text(message, &["userId"]));
    add("anonymous_id", text(message, &["anonymousId"]));
    add("device_id", text(message, &["context", "device", "id"]));
    add(
        "device_id",
        text(message, &["context", "device", "advertisingId"]),
    );
    for traits in [&["traits"][..], &["context", "traits"][..]] {
        let mut path = traits.to_vec();
        path.push("email");
        add("email", text(message, &path));
        path.pop();
        path.push("phone");
        add("phone", text(message, &path));
    }
    if kind == "alias" {
        add("anonymous_id", text(message, &["previousId"]));
    }

    let properties = message
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut fields = Map::new();
    let event_type = match kind {
        "identify" => {
            let traits = message.get("traits").cloned().unwrap_or_else(|| json!({}));
            let mut t = Map::new();
            for key in ["name", "gender", "birthday"] {
                if let Some(v) = traits.get(key) {
                    t.insert(key.to_owned(), v.clone());
                }
            }
            if let Some(city) = traits
                .get("address")
                .and_then(|a| a.get("city"))
                .or_else(|| traits.get("city"))
            {
                t.insert("city".into(), city.clone());
            }
            fields.insert("traits".into(), Value::Object(t));
            "traits_updated"
        }
        "track" => {
            let name = text(message, &["event"])
                .ok_or_else(|| reject("event", RejectionCode::MissingField, "is required"))?;
            fields.insert("name".into(), json!(name));
            "custom"
        }
        "page" => {
            let url = properties
                .get("url")
                .and_then(Value::as_str)
                .or_else(|| text(message, &["name"]))
                .unwrap_or("unknown");
            fields.insert("url".into(), json!(url));
            "page_viewed"
        }
        "screen" => {
            fields.insert(
                "screen".into(),
                json!(text(message, &["name"]).unwrap_or("unknown")),
            );
            "screen_viewed"
        }
        "group" => {
            fields.insert("name".into(), json!("group"));
            if let Some(g) = text(message, &["groupId"]) {
                fields.insert("group_id".into(), json!(g));
            }
            "custom"
        }
        "alias" => {
            fields.insert("name".into(), json!("alias"));
            "custom"
        }
        other => {
            return Err(reject(
                "type",
                RejectionCode::UnknownEventType,
                &format!("{other:?} is not a Segment message type"),
            ))
        }
    };
    for (k, v) in properties {
        fields.entry(k).or_insert(v);
    }
    Ok(RawTouchpoint {
        event_id: Some(event_id.to_string()),
        event_type: Some(event_type.to_owned()),
        channel: Some(channel(kind, message).to_owned()),
        source: Some("segment".to_owned()),
        occurred_at: Some(occurred_at),
        identifiers: identifiers
            .into_iter()
            .map(|(k, v)| (k, OneOrMany::Many(v)))
            .collect(),
        fields,
    })
}

/// Whether `key` is one of `keys`, comparing SHA-256 digests in constant time so that the
/// time taken tells nothing of how much of a key was right (nor of its length).
fn known_write_key(keys: &[String], key: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let wanted = Sha256::digest(key.as_bytes());
    keys.iter()
        .fold(subtle::Choice::from(0), |found, k| {
            found | Sha256::digest(k.as_bytes()).ct_eq(&wanted)
        })
        .into()
}

/// One Segment message's text as a record: refused past the bounds on a record (before it is
/// parsed), then mapped by [`to_record`]. `kind` is the endpoint's message type; a batch's
/// message names its own.
fn incoming(kind: Option<&str>, text: &str) -> Incoming {
    let parsed = check_record_bounds(text).and_then(|()| {
        let message: Value = serde_json::from_str(text).map_err(|e| Rejection {
            field: "message".into(),
            reason: format!("not JSON: {e}"),
            code: RejectionCode::Malformed,
        })?;
        let kind = kind
            .or_else(|| message.get("type").and_then(Value::as_str))
            .unwrap_or_default();
        to_record(kind, &message)
    });
    Incoming {
        received: text.to_owned(),
        parsed,
    }
}

/// A `/v1/batch` body: its messages as sent, at most [`super::MAX_RECORDS`] of them kept.
#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: super::events::RecordArray<'a>,
}

/// Handles one of the Segment endpoints; `kind` is `batch` or a message type. The write key is
/// checked before the body is read, so a request without a valid one costs no buffer.
pub(crate) async fn handle(
    kind: &'static str,
    state: Data<AppState>,
    request: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let Some(key) = write_key(&request) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "WRITE_KEY_REQUIRED",
            "send the write key as the basic-auth user name",
        );
    };
    if state.write_keys.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "NO_WRITE_KEYS",
            "this server has no write keys: start it with --write-key",
        );
    }
    if !known_write_key(&state.write_keys, &key) {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNKNOWN_WRITE_KEY",
            "the write key is not one of this server's",
        );
    }
    let body = match super::read_body(payload, &request, state.body_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    // The messages as sent (a batch's elements, or the whole body), each parsed only when its
    // turn comes to be prepared.
    let texts: Vec<&str> = if kind == "batch" {
        let batch = match serde_json::from_slice::<Batch>(&body) {
            Ok(batch) => batch.batch,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MALFORMED_BODY",
                    "a batch is a JSON object with a `batch` array",
                )
            }
        };
        if batch.count > super::MAX_RECORDS {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_MANY_RECORDS",
                &format!(
                    "{} messages in one batch; send at most {}",
                    batch.count,
                    super::MAX_RECORDS
                ),
            );
        }
        batch.elements.into_iter().map(RawValue::get).collect()
    } else {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        match std::str::from_utf8(&body) {
            Ok(text) if json => vec![text],
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MALFORMED_BODY",
                    "the body is not JSON",
                )
            }
        }
    };
    let single = (kind != "batch").then_some(kind);
    let batch = state.commits.ingestor().prepare_each(
        texts.len(),
        texts.into_iter().map(|text| incoming(single, text)),
    );
    drop(body);
    match state.commit(batch).await {
        Ok(report) => HttpResponse::Ok().json(json!({
            "success": true,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "rejected": report.rejected,
            "records": report.records,
        })),
        Err(e) => {
            tracing::error!(error = %e, "a Segment batch could not be stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                "the batch was not stored; send it again",
            )
        }
    }
}
