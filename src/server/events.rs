//! `POST /v1/events`: a batch of touchpoint records, as a JSON array or as NDJSON, answered
//! record by record. It takes an API key of the `ingest`, `operator` or `admin` role
//! (`Authorization: Bearer ...`).

use actix_web::http::header::CONTENT_TYPE;
use actix_web::web::Data;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::value::RawValue;

use super::edge::{ApiError, Caller, Rest};
use super::AppState;
use crate::ingest::RecordOutcome;

/// The largest body accepted, in bytes (10 MiB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// The most records accepted in one request.
pub const MAX_RECORDS: usize = 10_000;

/// The answer to a batch.
#[derive(Debug, Serialize)]
pub struct EventsResponse {
    /// Records stored now.
    pub accepted: usize,
    /// Records stored before.
    pub duplicates: usize,
    /// Records refused (kept in the quarantine).
    pub rejected: usize,
    /// One answer per record, in order.
    pub records: Vec<RecordOutcome>,
}

fn error(status: actix_web::http::StatusCode, code: &str, message: String) -> HttpResponse {
    ApiError::new(status, code, message).rest()
}

/// Why a body could not be split into records.
#[derive(Debug)]
pub(crate) enum Split {
    /// Not UTF-8, not a JSON array, ...: `MALFORMED_BODY`.
    Malformed(String),
    /// This many records, more than [`MAX_RECORDS`]: `TOO_MANY_RECORDS`.
    TooMany(usize),
}

/// Splits a body into at most [`MAX_RECORDS`] records: a JSON array (each element as sent) or
/// NDJSON lines, borrowed from the body. Records are counted before any is kept, so that a body
/// of millions of tiny records costs no more than its own bytes.
pub(crate) fn records<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<&'a str>, Split> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Split::Malformed(format!("the body is not UTF-8: {e}")))?;
    if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        let lines = || text.lines().filter(|l| !l.trim().is_empty());
        let count = lines().count();
        if count > MAX_RECORDS {
            return Err(Split::TooMany(count));
        }
        return Ok(lines().collect());
    }
    let array: RecordArray = serde_json::from_str(text)
        .map_err(|e| Split::Malformed(format!("the body is not a JSON array of records: {e}")))?;
    if array.count > MAX_RECORDS {
        return Err(Split::TooMany(array.count));
    }
    Ok(array.elements.into_iter().map(RawValue::get).collect())
}

/// A JSON array of records: its first [`MAX_RECORDS`] elements borrowed from the body as
/// sent, and how many it holds (the elements past the limit are only counted, never kept).
pub(crate) struct RecordArray<'a> {
    /// The first [`MAX_RECORDS`] elements.
    pub elements: Vec<&'a RawValue>,
    /// How many elements the array holds.
    pub count: usize,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RecordArray<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(RecordArrayVisitor(std::marker::PhantomData))
    }
}

struct RecordArrayVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for RecordArrayVisitor<'a> {
    type Value = RecordArray<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while elements.len() < MAX_RECORDS {
            match seq.next_element::<&'de RawValue>()? {
                Some(element) => elements.push(element),
                None => {
                    let count = elements.len();
                    return Ok(RecordArray { elements, count });
                }
            }
        }
        let mut count = elements.len();
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            count = count.saturating_add(1);
        }
        Ok(RecordArray { elements, count })
    }
}

/// `POST /v1/events`.
#[tracing::instrument(name = "http.post_events", skip_all, fields(bytes, key))]
pub(crate) async fn post_events(
    Caller(key, _): Caller<Rest>,
    state: Data<AppState>,
    request: HttpRequest,
    payload: actix_web::web::Payload,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    match key {
        key if key.role.may_ingest() => {
            tracing::Span::current().record("key", key.name.as_str());
        }
        key => {
            return error(
                StatusCode::FORBIDDEN,
                patron_graphql::codes::FORBIDDEN,
                format!(
                    "the {} role may not send touchpoints; use an ingest, operator or admin key",
                    key.role
                ),
            )
        }
    }
    let body = match super::read_body(payload, &request, state.body_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    tracing::Span::current().record("bytes", body.len());
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let incoming = match records(&content_type, &body) {
        Ok(r) => r,
        Err(Split::Malformed(message)) => {
            return error(StatusCode::BAD_REQUEST, "MALFORMED_BODY", message)
        }
        Err(Split::TooMany(count)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_MANY_RECORDS",
                format!("{count} records in one request; send at most {MAX_RECORDS}"),
            )
        }
    };
    if incoming.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "EMPTY_BATCH",
            "the body holds no record".into(),
        );
    }
    // Each record is parsed, checked and encoded in turn; the body is let go before the commit.
    let batch = state.commits.ingestor().prepare_json(incoming.into_iter());
    drop(body);
    match state.commit(batch).await {
        Ok(report) => HttpResponse::Ok().json(EventsResponse {
            accepted: report.accepted,
            duplicates: report.duplicates,
            rejected: report.rejected,
            records: report.records,
        }),
        Err(e) => {
            tracing::error!(error = %e, "a batch could not be stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                "the batch was not stored; nothing of it was kept, send it again".into(),
            )
        }
    }
}
