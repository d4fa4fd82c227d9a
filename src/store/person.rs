//! A person's rows in the read models' logs, read by customer for the export of everything
//! Patron holds on them (`crate::access_export`).

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::scores::{placeholders, uuids, Transition};
use super::{Backend, EventStore};

/// An entry into or exit from a segment, with the segment's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MembershipEntry {
    /// The segment.
    pub segment: String,
    /// The customer (one of the person's ids).
    pub customer: CustomerId,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// The refresh that saw it.
    pub at: DateTime<Utc>,
}

fn time(at: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(at).ok_or_else(|| StoreError::Corrupt {
        position: 0,
        reason: format!("a time out of range: {at} µs"),
    })
}

impl EventStore {
    /// Every segment entry and exit of `customers`, oldest first.
    pub async fn segment_log_of(&self, customers: &[CustomerId]) -> Result<Vec<MembershipEntry>> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Uuid, i16, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT segment, customer_id, entered, at FROM segment_log \
                     WHERE customer_id IN ({}) ORDER BY id",
                    placeholders(customers.len())
                );
                let mut q = sqlx::query_as(&sql);
                for c in customers {
                    q = q.bind(c.as_uuid());
                }
                q.fetch_all(b.reader()).await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT segment, customer_id, entered, at FROM segment_log \
                     WHERE customer_id = ANY($1::uuid[]) ORDER BY id",
                )
                .bind(uuids(customers))
                .fetch_all(b.pool())
                .await?
            }
        };
        rows.into_iter()
            .map(|(segment, c, entered, at)| {
                Ok(MembershipEntry {
                    segment,
                    customer: CustomerId::from_uuid(c),
                    entered: entered != 0,
                    at: time(at)?,
                })
            })
            .collect()
    }

    /// Every lifecycle transition of `customers`, oldest first.
    pub async fn transitions_of(&self, customers: &[CustomerId]) -> Result<Vec<Transition>> {
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT customer_id, from_stage, to_stage, at FROM lifecycle_transitions \
                     WHERE customer_id IN ({}) ORDER BY id",
                    placeholders(customers.len())
                );
                let mut q = sqlx::query_as(&sql);
                for c in customers {
                    q = q.bind(c.as_uuid());
                }
                let rows: Vec<(Uuid, Option<String>, String, i64)> =
                    q.fetch_all(b.reader()).await?;
                rows.into_iter()
                    .map(|(c, from, to, at)| {
                        Ok(Transition {
                            customer: CustomerId::from_uuid(c),
                            from,
                            to,
                            at: time(at)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Backend::Postgres(b) => {
                let rows: Vec<(Uuid, Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT customer_id, from_stage, to_stage, at FROM lifecycle_transitions \
                     WHERE customer_id = ANY($1::uuid[]) ORDER BY id",
                )
                .bind(uuids(customers))
                .fetch_all(b.pool())
                .await?;
                rows.into_iter()
                    .map(|(c, from, to, at)| Transition {
                        customer: CustomerId::from_uuid(c),
                        from,
                        to,
                        at,
                    })
                    .collect()
            }
        })
    }
}
