//! What the data-quality report reads besides the log: which identifier kinds each live
//! customer holds, and the quarantine's refusals by time, source and code.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use uuid::Uuid;

use super::error::Result;
use super::{Backend, EventStore};

/// A refused record, as the quality report counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The sending system, when the record named it.
    pub source: Option<String>,
    /// The stable rejection code.
    pub code: String,
}

impl EventStore {
    /// The identifier kinds each live customer holds (customers holding none are absent).
    pub async fn identifier_kinds(&self) -> Result<HashMap<CustomerId, Vec<String>>> {
        let rows: Vec<(Uuid, String)> = reading!(self, pool => sqlx::query_as(
            "SELECT customer_id, kind FROM identity_index GROUP BY customer_id, kind"
        )
        .fetch_all(pool)
        .await?);
        let mut kinds: HashMap<CustomerId, Vec<String>> = HashMap::new();
        for (customer, kind) in rows {
            kinds
                .entry(CustomerId::from_uuid(customer))
                .or_default()
                .push(kind);
        }
        Ok(kinds)
    }

    /// Every record in the quarantine, by when it was received, where from and why.
    pub async fn refusals(&self) -> Result<Vec<Refusal>> {
        let sql = match &self.backend {
            Backend::Sqlite(_) => "SELECT received_at, source, code FROM quarantine",
            Backend::Postgres(_) => {
                "SELECT (extract(epoch FROM received_at) * 1000000)::bigint, source, code \
                 FROM quarantine"
            }
        };
        let rows: Vec<(i64, Option<String>, String)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(at, source, code)| Refusal {
                received_at: DateTime::from_timestamp_micros(at).unwrap_or_default(),
                source,
                code,
            })
            .collect())
    }
}
