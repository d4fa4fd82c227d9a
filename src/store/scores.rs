//! The scores and tags tables (value, lifecycle and tags of each live customer as of a scoring
//! run) and the lifecycle transitions it records.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::{to_u64, Backend, EventStore};

/// Rows per INSERT statement.
const CHUNK: usize = 500;

/// One customer's scores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScoreRow {
    /// The live customer.
    pub customer: CustomerId,
    /// Days since the last order in the window, if any.
    pub recency_days: Option<i64>,
    /// Orders in the window.
    pub frequency: i64,
    /// Their totals, minor units.
    pub monetary_minor: i64,
    /// RFM scores (r, f, m), if the customer ordered in the window.
    pub rfm: Option<(u8, u8, u8)>,
    /// The named RFM segment.
    pub rfm_segment: Option<String>,
    /// The value tier.
    pub tier: String,
    /// The lifecycle stage.
    pub stage: String,
    /// The tags.
    pub tags: Vec<String>,
}

/// A change of lifecycle stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// Whose.
    pub customer: CustomerId,
    /// The stage before (`None`: the first one).
    pub from: Option<String>,
    /// The stage after.
    pub to: String,
    /// The scoring run that saw it.
    pub at: DateTime<Utc>,
}

/// The columns a [`ScoreRow`] is read from, in [`ScoreTuple`] order.
const SCORE_COLUMNS: &str = "customer_id, recency_days, frequency, monetary_minor, r, f, m, \
                             rfm_segment, tier, stage";

/// A `customer_scores` row as read.
type ScoreTuple = (
    Uuid,
    Option<i64>,
    i64,
    i64,
    Option<i16>,
    Option<i16>,
    Option<i16>,
    Option<String>,
    String,
    String,
);

fn score_row(row: ScoreTuple) -> ScoreRow {
    let (c, recency, frequency, monetary, r, f, m, segment, tier, stage) = row;
    let score = |v: Option<i16>| v.and_then(|v| u8::try_from(v).ok());
    let rfm = match (score(r), score(f), score(m)) {
        (Some(r), Some(f), Some(m)) => Some((r, f, m)),
        _ => None,
    };
    ScoreRow {
        customer: CustomerId::from_uuid(c),
        recency_days: recency,
        frequency,
        monetary_minor: monetary,
        rfm,
        rfm_segment: segment,
        tier,
        stage,
        tags: Vec::new(),
    }
}

/// `n` SQLite placeholders: `?, ?, ?`.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The customers' UUIDs, for a PostgreSQL `= ANY($1::uuid[])`.
pub(super) fn uuids(customers: &[CustomerId]) -> Vec<Uuid> {
    customers.iter().map(|c| c.as_uuid()).collect()
}

macro_rules! insert_scores {
    ($db:ty, $tx:expr, $rows:expr, $as_of_value:expr) => {{
        for chunk in $rows.chunks(CHUNK) {
            let mut q: QueryBuilder<$db> = QueryBuilder::new(
                "INSERT INTO customer_scores (customer_id, as_of, recency_days, frequency, \
                 monetary_minor, r, f, m, rfm_segment, tier, stage) ",
            );
            q.push_values(chunk, |mut b, row| {
                b.push_bind(row.customer.as_uuid())
                    .push_bind($as_of_value)
                    .push_bind(row.recency_days)
                    .push_bind(row.frequency)
                    .push_bind(row.monetary_minor)
                    .push_bind(row.rfm.map(|s| i16::from(s.0)))
                    .push_bind(row.rfm.map(|s| i16::from(s.1)))
                    .push_bind(row.rfm.map(|s| i16::from(s.2)))
                    .push_bind(row.rfm_segment.clone())
                    .push_bind(row.tier.clone())
                    .push_bind(row.stage.clone());
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}

macro_rules! insert_tags {
    ($db:ty, $tx:expr, $rows:expr) => {{
        let pairs: Vec<(Uuid, &str)> = $rows
            .iter()
            .flat_map(|r| r.tags.iter().map(|t| (r.customer.as_uuid(), t.as_str())))
            .collect();
        for chunk in pairs.chunks(CHUNK) {
            let mut q: QueryBuilder<$db> =
                QueryBuilder::new("INSERT INTO customer_tags (customer_id, tag) ");
            q.push_values(chunk, |mut b, (customer, tag)| {
                b.push_bind(*customer).push_bind(*tag);
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}

macro_rules! insert_transitions {
    ($db:ty, $tx:expr, $transitions:expr, $at:expr) => {{
        for chunk in $transitions.chunks(CHUNK) {
            let mut q: QueryBuilder<$db> = QueryBuilder::new(
                "INSERT INTO lifecycle_transitions (customer_id, from_stage, to_stage, at) ",
            );
            q.push_values(chunk, |mut b, t| {
                b.push_bind(t.customer.as_uuid())
                    .push_bind(t.from.clone())
                    .push_bind(t.to.clone())
                    .push_bind($at);
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}

impl EventStore {
    /// Each scored customer's stage as of the last scoring run.
    pub async fn stages(&self) -> Result<HashMap<CustomerId, String>> {
        let sql = "SELECT customer_id, stage FROM customer_scores";
        let rows: Vec<(Uuid, String)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(c, s)| (CustomerId::from_uuid(c), s))
            .collect())
    }

    /// Replaces the scores with `rows`, and records a transition for each customer whose stage
    /// differs from the one it replaces, in one transaction (concurrent runs take turns, so a
    /// change is recorded once). Returns the transitions recorded.
    pub async fn write_scores(
        &self,
        as_of: DateTime<Utc>,
        rows: &[ScoreRow],
    ) -> Result<Vec<Transition>> {
        let prev_sql = "SELECT customer_id, stage FROM customer_scores";
        let transitions = |previous: Vec<(Uuid, String)>| -> Vec<Transition> {
            let previous: HashMap<Uuid, String> = previous.into_iter().collect();
            rows.iter()
                .filter(|r| previous.get(&r.customer.as_uuid()) != Some(&r.stage))
                .map(|r| Transition {
                    customer: r.customer,
                    from: previous.get(&r.customer.as_uuid()).cloned(),
                    to: r.stage.clone(),
                    at: as_of,
                })
                .collect()
        };
        let recorded = match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.writer().begin_with("BEGIN IMMEDIATE").await?;
                let previous: Vec<(Uuid, String)> =
                    sqlx::query_as(prev_sql).fetch_all(&mut *tx).await?;
                let recorded = transitions(previous);
                sqlx::query("DELETE FROM customer_scores")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM customer_tags")
                    .execute(&mut *tx)
                    .await?;
                let micros = as_of.timestamp_micros();
                insert_scores!(sqlx::Sqlite, tx, rows, micros);
                insert_tags!(sqlx::Sqlite, tx, rows);
                insert_transitions!(sqlx::Sqlite, tx, recorded, micros);
                tx.commit().await?;
                recorded
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool().begin().await?;
                sqlx::query("LOCK TABLE customer_scores IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                let previous: Vec<(Uuid, String)> =
                    sqlx::query_as(prev_sql).fetch_all(&mut *tx).await?;
                let recorded = transitions(previous);
                sqlx::query("DELETE FROM customer_scores")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM customer_tags")
                    .execute(&mut *tx)
                    .await?;
                insert_scores!(sqlx::Postgres, tx, rows, as_of);
                insert_tags!(sqlx::Postgres, tx, rows);
                insert_transitions!(sqlx::Postgres, tx, recorded, as_of);
                tx.commit().await?;
                recorded
            }
        };
        Ok(recorded)
    }

    /// Live customers per value (a column of the scores: `tier`, `stage` or `rfm_segment`).
    pub async fn score_counts(&self, column: ScoreColumn) -> Result<Vec<(String, u64)>> {
        let sql = format!(
            "SELECT {c}, count(*) FROM customer_scores WHERE {c} IS NOT NULL \
             GROUP BY {c} ORDER BY {c}",
            c = column.name()
        );
        let rows: Vec<(String, i64)> =
            reading!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(v, n)| Ok((v, to_u64(n, 0, "count")?)))
            .collect()
    }

    /// Live customers per tag.
    pub async fn tag_counts(&self) -> Result<Vec<(String, u64)>> {
        let sql = "SELECT tag, count(*) FROM customer_tags GROUP BY tag ORDER BY tag";
        let rows: Vec<(String, i64)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(v, n)| Ok((v, to_u64(n, 0, "count")?)))
            .collect()
    }

    /// The tags of a customer as of the last scoring run.
    pub async fn tags_of(&self, customer: CustomerId) -> Result<Vec<String>> {
        Ok(reading!(self, pool => sqlx::query_scalar(
                    "SELECT tag FROM customer_tags WHERE customer_id = $1 ORDER BY tag",
                )
                .bind(customer.as_uuid())
                .fetch_all(pool)
                .await?))
    }

    /// Every scored customer's scores, without tags.
    pub async fn all_scores(&self) -> Result<HashMap<CustomerId, ScoreRow>> {
        let sql = format!("SELECT {SCORE_COLUMNS} FROM customer_scores");
        let rows: Vec<ScoreTuple> =
            reading!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(score_row)
            .map(|r| (r.customer, r))
            .collect())
    }

    /// The scores of `customers` (those scored), without tags.
    pub async fn scores_of(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, ScoreRow>> {
        let rows: Vec<ScoreTuple> = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT {SCORE_COLUMNS} FROM customer_scores WHERE customer_id IN ({})",
                    placeholders(customers.len())
                );
                let mut q = sqlx::query_as(&sql);
                for c in customers {
                    q = q.bind(c.as_uuid());
                }
                q.fetch_all(b.reader()).await?
            }
            Backend::Postgres(b) => {
                let sql = format!(
                    "SELECT {SCORE_COLUMNS} FROM customer_scores WHERE customer_id = ANY($1::uuid[])"
                );
                sqlx::query_as(&sql)
                    .bind(uuids(customers))
                    .fetch_all(b.pool())
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(score_row)
            .map(|r| (r.customer, r))
            .collect())
    }

    /// The tags of `customers`, each in name order (customers without tags left out).
    pub async fn tags_of_many(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<String>>> {
        let rows: Vec<(Uuid, String)> = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT customer_id, tag FROM customer_tags WHERE customer_id IN ({}) \
                     ORDER BY customer_id, tag",
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
                    "SELECT customer_id, tag FROM customer_tags \
                     WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id, tag",
                )
                .bind(uuids(customers))
                .fetch_all(b.pool())
                .await?
            }
        };
        let mut tags: HashMap<CustomerId, Vec<String>> = HashMap::new();
        for (c, tag) in rows {
            tags.entry(CustomerId::from_uuid(c)).or_default().push(tag);
        }
        Ok(tags)
    }

    /// Every tagged customer's tags.
    pub async fn all_tags(
        &self,
    ) -> Result<HashMap<CustomerId, std::collections::BTreeSet<String>>> {
        let sql = "SELECT customer_id, tag FROM customer_tags";
        let rows: Vec<(Uuid, String)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        let mut tags: HashMap<CustomerId, std::collections::BTreeSet<String>> = HashMap::new();
        for (c, tag) in rows {
            tags.entry(CustomerId::from_uuid(c))
                .or_default()
                .insert(tag);
        }
        Ok(tags)
    }

    /// Every recorded lifecycle transition, oldest first.
    pub async fn transitions(&self) -> Result<Vec<Transition>> {
        let sql =
            "SELECT customer_id, from_stage, to_stage, at FROM lifecycle_transitions ORDER BY id";
        Ok(match &self.backend {
            Backend::Sqlite(b) => {
                let rows: Vec<(Uuid, Option<String>, String, i64)> =
                    sqlx::query_as(sql).fetch_all(b.reader()).await?;
                rows.into_iter()
                    .map(|(c, from, to, at)| {
                        Ok(Transition {
                            customer: CustomerId::from_uuid(c),
                            from,
                            to,
                            at: DateTime::from_timestamp_micros(at).ok_or_else(|| {
                                StoreError::Corrupt {
                                    position: 0,
                                    reason: format!("a transition's time is out of range: {at}"),
                                }
                            })?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Backend::Postgres(b) => {
                let rows: Vec<(Uuid, Option<String>, String, DateTime<Utc>)> =
                    sqlx::query_as(sql).fetch_all(b.pool()).await?;
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

/// A column of the scores that customers can be counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreColumn {
    /// The value tier.
    Tier,
    /// The lifecycle stage.
    Stage,
    /// The named RFM segment.
    RfmSegment,
}

impl ScoreColumn {
    fn name(self) -> &'static str {
        match self {
            Self::Tier => "tier",
            Self::Stage => "stage",
            Self::RfmSegment => "rfm_segment",
        }
    }
}
