//! The review queue's table: likely duplicates with their score, evidence and the operator's
//! decision.

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;
use uuid::Uuid;

use super::error::Result;
use super::{Backend, EventStore};

/// A pair of customers as a scan found it.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundPair {
    /// The two customers, `first < second`.
    pub pair: (CustomerId, CustomerId),
    /// The probability that they are one person, 0 to 1.
    pub score: f64,
    /// The evidence, as JSON.
    pub evidence: String,
}

/// A stored suggestion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredSuggestion {
    /// Its number.
    pub id: i64,
    /// The first customer (in id order).
    pub first: CustomerId,
    /// The second customer.
    pub second: CustomerId,
    /// The probability that they are one person, 0 to 1.
    pub score: f64,
    /// The evidence, as JSON.
    pub evidence: String,
    /// `open`, `accepted` or `rejected`.
    pub status: String,
    /// When a scan first found it.
    pub found_at: DateTime<Utc>,
    /// Who decided, and why.
    pub decided_by: Option<String>,
    /// The reason given.
    pub reason: Option<String>,
}

type Row = (
    i64,
    Uuid,
    Uuid,
    f64,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

fn suggestion(row: Row) -> StoredSuggestion {
    StoredSuggestion {
        id: row.0,
        first: CustomerId::from_uuid(row.1),
        second: CustomerId::from_uuid(row.2),
        score: row.3,
        evidence: row.4,
        status: row.5,
        found_at: DateTime::from_timestamp_micros(row.6).unwrap_or_default(),
        decided_by: row.7,
        reason: row.8,
    }
}

const COLUMNS: &str =
    "id, first_id, second_id, score, evidence, status, found_at, decided_by, reason";

impl EventStore {
    /// Records what a scan found: new pairs are added as open, open ones get the new score
    /// and evidence, decided ones are left as they are, and open ones the scan no longer found
    /// are withdrawn. Returns how many were new and how many were withdrawn.
    pub async fn record_suggestions(
        &self,
        found: &[FoundPair],
        at: DateTime<Utc>,
    ) -> Result<(u64, u64)> {
        let mut new = 0;
        let at = at.timestamp_micros();
        let insert = "INSERT INTO duplicate_suggestions \
                      (first_id, second_id, score, evidence, status, found_at, seen_at) \
                      VALUES ($1, $2, $3, $4, 'open', $5, $6) \
                      ON CONFLICT (first_id, second_id) DO NOTHING";
        let update = "UPDATE duplicate_suggestions SET score = $1, evidence = $2, seen_at = $3 \
                      WHERE first_id = $4 AND second_id = $5 AND status = 'open'";
        let withdraw = "DELETE FROM duplicate_suggestions WHERE status = 'open' AND seen_at < $1";
        let withdrawn = transaction!(self, tx => {
            for f in found {
                let done = sqlx::query(insert)
                    .bind(f.pair.0.as_uuid())
                    .bind(f.pair.1.as_uuid())
                    .bind(f.score)
                    .bind(&f.evidence)
                    .bind(at)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 1 {
                    new += 1;
                } else {
                    sqlx::query(update)
                        .bind(f.score)
                        .bind(&f.evidence)
                        .bind(at)
                        .bind(f.pair.0.as_uuid())
                        .bind(f.pair.1.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let withdrawn = sqlx::query(withdraw)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            withdrawn
        });
        Ok((new, withdrawn))
    }

    /// Suggestions with `status`, highest score first, at most `max`.
    pub async fn suggestions(&self, status: &str, max: usize) -> Result<Vec<StoredSuggestion>> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM duplicate_suggestions WHERE status = $1 \
             ORDER BY score DESC, id LIMIT $2"
        );
        let rows: Vec<Row> = reading!(self, pool => {
            sqlx::query_as(&sql).bind(status).bind(max).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(suggestion).collect())
    }

    /// One suggestion by number.
    pub async fn suggestion(&self, id: i64) -> Result<Option<StoredSuggestion>> {
        let sql = format!("SELECT {COLUMNS} FROM duplicate_suggestions WHERE id = $1");
        let row: Option<Row> = reading!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        Ok(row.map(suggestion))
    }

    /// Opens an accepted suggestion again (its merge failed).
    pub async fn reopen_suggestion(&self, id: i64) -> Result<()> {
        let sql = "UPDATE duplicate_suggestions SET status = 'open', decided_at = NULL, \
                   decided_by = NULL, reason = NULL WHERE id = $1 AND status = 'accepted'";
        writing!(self, pool => {
            sqlx::query(sql).bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// Records an operator's decision on an open suggestion; `false` if it was not open.
    pub async fn decide_suggestion(
        &self,
        id: i64,
        status: &str,
        actor: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let at = at.timestamp_micros();
        let sql = "UPDATE duplicate_suggestions SET status = $1, decided_at = $2, \
                   decided_by = $3, reason = $4 WHERE id = $5 AND status = 'open'";
        let done = writing!(self, pool => {
            sqlx::query(sql)
                .bind(status)
                .bind(at)
                .bind(actor)
                .bind(reason)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }
}
