//! Saved segments, their members and the log of entries and exits.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::sqlite::{StandingRow, STANDING_SQL};
use super::{Backend, EventStore};

/// Rows per INSERT statement.
const CHUNK: usize = 500;

/// A saved segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SavedSegment {
    /// Its name.
    pub name: String,
    /// Its rule, as written.
    pub rule: String,
    /// The consent purpose it is for, if any: only customers who consent to it are members.
    pub purpose: Option<String>,
    /// Members as of the last refresh.
    pub members: u64,
}

/// An entry into or exit from a segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentChange {
    /// The customer.
    pub customer: CustomerId,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// The refresh that saw it.
    pub at: DateTime<Utc>,
}

/// A saved segment's name and the rule its members are judged by: its own, restricted to
/// customers who consent to its purpose if it has one.
fn judged_rule((name, rule, purpose): (String, String, Option<String>)) -> (String, String) {
    let rule = match purpose {
        Some(purpose) => consented(&rule, &purpose),
        None => rule,
    };
    (name, rule)
}

/// `rule` restricted to customers who consent to `purpose`.
pub fn consented(rule: &str, purpose: &str) -> String {
    format!("({rule}) and consent.{purpose} = true")
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(at: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(at).ok_or_else(|| StoreError::Corrupt {
        position: 0,
        reason: format!("a segment time is out of range: {at}"),
    })
}

/// An entry into or exit from a segment, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// The segment.
    pub segment: String,
    /// The customer.
    pub customer: CustomerId,
    /// Entered (`true`) or left.
    pub entered: bool,
}

/// What judging a customer against saved segments needs from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// The last scoring run's scores and tags, if the customer was scored.
    pub scores: Option<super::scores::ScoreRow>,
    /// The segments the customer is a member of.
    pub memberships: HashSet<String>,
}

/// Separates the values `group_concat` / `string_agg` join.
const UNIT: char = '\u{1f}';

/// A customer's standing from its row.
fn standing(customer: CustomerId, row: StandingRow) -> Standing {
    let (recency, frequency, monetary, r, f, m, segment, tier, stage, tags, members) = row;
    let split = |joined: Option<String>| -> Vec<String> {
        joined
            .map(|j| j.split(UNIT).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let score = |v: Option<i64>| v.and_then(|v| u8::try_from(v).ok());
    let scores = match (tier, stage) {
        (Some(tier), Some(stage)) => Some(super::scores::ScoreRow {
            customer,
            recency_days: recency,
            frequency: frequency.unwrap_or(0),
            monetary_minor: monetary.unwrap_or(0),
            rfm: match (score(r), score(f), score(m)) {
                (Some(r), Some(f), Some(m)) => Some((r, f, m)),
                _ => None,
            },
            rfm_segment: segment,
            tier,
            stage,
            tags: split(tags),
        }),
        _ => None,
    };
    Standing {
        scores,
        memberships: split(members).into_iter().collect(),
    }
}

impl EventStore {
    /// Judges `customers` and records their entries and exits, in one transaction: `judge` is
    /// given the saved segments' rules (as [`EventStore::segment_rules`]) and each customer's
    /// standing, and answers the changes; those that changed something are returned. Nothing is
    /// judged when there is no saved segment.
    pub async fn judge_memberships(
        &self,
        customers: &[CustomerId],
        at: DateTime<Utc>,
        judge: impl FnOnce(&[(String, String)], &HashMap<CustomerId, Standing>) -> Vec<MembershipChange>,
    ) -> Result<Vec<MembershipChange>> {
        match &self.backend {
            Backend::Sqlite(b) => {
                let applied = b
                    .judge_memberships(customers, micros(at), |rules, rows| {
                        let rules: Vec<(String, String)> =
                            rules.into_iter().map(judged_rule).collect();
                        let standings: HashMap<CustomerId, Standing> = rows
                            .into_iter()
                            .map(|(customer, row)| (customer, standing(customer, row)))
                            .collect();
                        judge(&rules, &standings)
                            .into_iter()
                            .map(|c| (c.segment, c.customer, c.entered))
                            .collect()
                    })
                    .await?;
                Ok(applied
                    .into_iter()
                    .map(|(segment, customer, entered)| MembershipChange {
                        segment,
                        customer,
                        entered,
                    })
                    .collect())
            }
            Backend::Postgres(_) => {
                let rules = self.segment_rules().await?;
                if rules.is_empty() {
                    return Ok(Vec::new());
                }
                let standings = self.standings(customers).await?;
                let changes = judge(&rules, &standings);
                self.apply_membership_changes(&changes, at).await
            }
        }
    }

    /// The scores, tags and memberships of each of `customers`, one query per customer.
    pub async fn standings(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Standing>> {
        type Row = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i16>,
            Option<i16>,
            Option<i16>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let sql = match &self.backend {
            Backend::Sqlite(_) => STANDING_SQL,
            Backend::Postgres(_) => {
                "SELECT s.recency_days, s.frequency, s.monetary_minor, s.r, s.f, s.m, s.rfm_segment, \
                 s.tier, s.stage, \
                 (SELECT string_agg(tag, chr(31)) FROM customer_tags WHERE customer_id = $1), \
                 (SELECT string_agg(segment, chr(31)) FROM segment_members WHERE customer_id = $1) \
                 FROM (SELECT 1) AS one LEFT JOIN customer_scores s ON s.customer_id = $1"
            }
        };
        let mut found = HashMap::with_capacity(customers.len());
        writing!(self, pool => {
            let mut conn = pool.acquire().await?;
            for customer in customers {
                let row: Row = sqlx::query_as(sql)
                    .bind(customer.as_uuid())
                    .fetch_one(&mut *conn)
                    .await?;
                let (recency, frequency, monetary, r, f, m, segment, tier, stage, tags, members) =
                    row;
                let widen = |v: Option<i16>| v.map(i64::from);
                let row: StandingRow = (
                    recency,
                    frequency,
                    monetary,
                    widen(r),
                    widen(f),
                    widen(m),
                    segment,
                    tier,
                    stage,
                    tags,
                    members,
                );
                found.insert(*customer, standing(*customer, row));
            }
        });
        Ok(found)
    }

    /// Records entries and exits for single customers (as events change their profiles), in
    /// one transaction; an entry already recorded or an exit of a non-member changes nothing,
    /// and only what changed is logged. Returns what changed.
    pub async fn apply_membership_changes(
        &self,
        changes: &[MembershipChange],
        at: DateTime<Utc>,
    ) -> Result<Vec<MembershipChange>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let applied = writing!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut applied = Vec::new();
            for change in changes {
                let done = if change.entered {
                    sqlx::query(
                        "INSERT INTO segment_members (segment, customer_id, since) \
                         SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM segments WHERE name = $1) \
                         ON CONFLICT (segment, customer_id) DO NOTHING",
                    )
                    .bind(&change.segment)
                    .bind(change.customer.as_uuid())
                    .bind(micros(at))
                    .execute(&mut *tx)
                    .await?
                } else {
                    sqlx::query("DELETE FROM segment_members WHERE segment = $1 AND customer_id = $2")
                        .bind(&change.segment)
                        .bind(change.customer.as_uuid())
                        .execute(&mut *tx)
                        .await?
                };
                if done.rows_affected() > 0 {
                    sqlx::query(
                        "INSERT INTO segment_log (segment, customer_id, entered, at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&change.segment)
                    .bind(change.customer.as_uuid())
                    .bind(i16::from(change.entered))
                    .bind(micros(at))
                    .execute(&mut *tx)
                    .await?;
                    applied.push(change.clone());
                }
            }
            tx.commit().await?;
            applied
        });
        Ok(applied)
    }

    /// Saves a segment with no purpose, or replaces the rule of the one with that name; returns
    /// whether it was new. A replaced rule keeps the members until the next refresh.
    pub async fn save_segment(&self, name: &str, rule: &str, at: DateTime<Utc>) -> Result<bool> {
        self.save_segment_for(name, rule, None, at).await
    }

    /// Saves a segment for a consent `purpose` (`marketing_sms`, ...; only customers who
    /// consent to it are members), or replaces the rule and purpose of the one with that name;
    /// returns whether it was new.
    pub async fn save_segment_for(
        &self,
        name: &str,
        rule: &str,
        purpose: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let sql = "INSERT INTO segments (name, rule, purpose, created_at, updated_at) \
                   VALUES ($1, $2, $3, $4, $4) \
                   ON CONFLICT (name) DO UPDATE SET rule = excluded.rule, purpose = excluded.purpose, \
                   updated_at = excluded.updated_at \
                   RETURNING created_at = updated_at";
        let created: bool = writing!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(name)
                .bind(rule)
                .bind(purpose)
                .bind(micros(at))
                .fetch_one(pool)
                .await?
        });
        Ok(created)
    }

    /// Deletes a segment with its members, logging their exits (the log stays); returns whether
    /// it existed.
    pub async fn delete_segment(&self, name: &str) -> Result<bool> {
        let now = micros(Utc::now());
        let deleted = writing!(self, pool => {
            let mut tx = pool.begin().await?;
            // Its members leave it: the log of entries and exits stays balanced, so a segment
            // saved again under the name starts empty.
            sqlx::query(
                "INSERT INTO segment_log (segment, customer_id, entered, at) \
                 SELECT segment, customer_id, 0, $2 FROM segment_members WHERE segment = $1",
            )
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM segment_members WHERE segment = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM segments WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done.rows_affected() > 0
        });
        Ok(deleted)
    }

    /// Every saved segment, by name, with its member count.
    pub async fn segments(&self) -> Result<Vec<SavedSegment>> {
        let sql = "SELECT s.name, s.rule, s.purpose, (SELECT count(*) FROM segment_members m \
                   WHERE m.segment = s.name) FROM segments s ORDER BY s.name";
        let rows: Vec<(String, String, Option<String>, i64)> =
            writing!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(name, rule, purpose, members)| SavedSegment {
                name,
                rule,
                purpose,
                members: u64::try_from(members).unwrap_or(0),
            })
            .collect())
    }

    /// Every saved segment's name and the rule its members are judged by, by name (without
    /// counting members): a segment for a purpose also requires consent to it.
    pub async fn segment_rules(&self) -> Result<Vec<(String, String)>> {
        let sql = "SELECT name, rule, purpose FROM segments ORDER BY name";
        let rows: Vec<(String, String, Option<String>)> =
            writing!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(judged_rule).collect())
    }

    /// A segment's members as of the last refresh.
    pub async fn segment_members(&self, name: &str) -> Result<Vec<CustomerId>> {
        let sql = "SELECT customer_id FROM segment_members WHERE segment = $1 ORDER BY customer_id";
        let ids: Vec<Uuid> =
            writing!(self, pool => sqlx::query_scalar(sql).bind(name).fetch_all(pool).await?);
        Ok(ids.into_iter().map(CustomerId::from_uuid).collect())
    }

    /// A page of a segment's members in customer order, after `after`.
    pub async fn segment_member_page(
        &self,
        name: &str,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>> {
        let sql =
            "SELECT customer_id FROM segment_members WHERE segment = $1 AND customer_id > $2 \
                   ORDER BY customer_id LIMIT $3";
        let after = after.map_or(Uuid::nil(), |c| c.as_uuid());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<Uuid> = reading!(self, pool => sqlx::query_scalar(sql)
                    .bind(name)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?);
        Ok(ids.into_iter().map(CustomerId::from_uuid).collect())
    }

    /// The saved segments each of `customers` belongs to, in name order (customers in none
    /// left out).
    pub async fn memberships_of(
        &self,
        customers: &[CustomerId],
    ) -> Result<std::collections::HashMap<CustomerId, Vec<String>>> {
        let rows: Vec<(Uuid, String)> = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT customer_id, segment FROM segment_members WHERE customer_id IN ({}) \
                     ORDER BY customer_id, segment",
                    super::scores::placeholders(customers.len())
                );
                let mut q = sqlx::query_as(&sql);
                for c in customers {
                    q = q.bind(c.as_uuid());
                }
                q.fetch_all(b.reader()).await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT customer_id, segment FROM segment_members \
                     WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id, segment",
                )
                .bind(super::scores::uuids(customers))
                .fetch_all(b.pool())
                .await?
            }
        };
        let mut found: std::collections::HashMap<CustomerId, Vec<String>> =
            std::collections::HashMap::new();
        for (c, segment) in rows {
            found
                .entry(CustomerId::from_uuid(c))
                .or_default()
                .push(segment);
        }
        Ok(found)
    }

    /// A segment's entries and exits, oldest first.
    pub async fn segment_log(&self, name: &str) -> Result<Vec<SegmentChange>> {
        let sql = "SELECT customer_id, entered, at FROM segment_log WHERE segment = $1 ORDER BY id";
        let rows: Vec<(Uuid, i16, i64)> =
            writing!(self, pool => sqlx::query_as(sql).bind(name).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(c, entered, at)| {
                Ok(SegmentChange {
                    customer: CustomerId::from_uuid(c),
                    entered: entered != 0,
                    at: from_micros(at)?,
                })
            })
            .collect()
    }

    /// Sets a segment's members to `members`, logging who entered and who left, in one
    /// transaction; returns the changes. Nothing is written for a segment deleted meanwhile.
    pub async fn set_segment_members(
        &self,
        name: &str,
        members: &HashSet<CustomerId>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SegmentChange>> {
        let changes = writing!(self, pool => {
            let mut tx = pool.begin().await?;
            // Takes the write lock (SQLite) or the segment's row lock (PostgreSQL) first, so
            // that concurrent refreshes of one segment take turns.
            let exists: Option<String> =
                sqlx::query_scalar("UPDATE segments SET name = name WHERE name = $1 RETURNING name")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let current: Vec<Uuid> =
                sqlx::query_scalar("SELECT customer_id FROM segment_members WHERE segment = $1")
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await?;
            let current: HashSet<CustomerId> =
                current.into_iter().map(CustomerId::from_uuid).collect();
            let mut changes: Vec<SegmentChange> = members
                .difference(&current)
                .map(|c| SegmentChange { customer: *c, entered: true, at })
                .chain(current.difference(members).map(|c| SegmentChange {
                    customer: *c,
                    entered: false,
                    at,
                }))
                .collect();
            changes.sort_by_key(|c| (!c.entered, c.customer));
            for chunk in changes.chunks(CHUNK) {
                let left: Vec<Uuid> = chunk
                    .iter()
                    .filter(|c| !c.entered)
                    .map(|c| c.customer.as_uuid())
                    .collect();
                for customer in left {
                    sqlx::query("DELETE FROM segment_members WHERE segment = $1 AND customer_id = $2")
                        .bind(name)
                        .bind(customer)
                        .execute(&mut *tx)
                        .await?;
                }
                let entered: Vec<&SegmentChange> = chunk.iter().filter(|c| c.entered).collect();
                if !entered.is_empty() {
                    let mut q = QueryBuilder::new(
                        "INSERT INTO segment_members (segment, customer_id, since) ",
                    );
                    q.push_values(entered, |mut b, c| {
                        b.push_bind(name)
                            .push_bind(c.customer.as_uuid())
                            .push_bind(micros(at));
                    });
                    q.build().execute(&mut *tx).await?;
                }
                let mut log = QueryBuilder::new(
                    "INSERT INTO segment_log (segment, customer_id, entered, at) ",
                );
                log.push_values(chunk, |mut b, c| {
                    b.push_bind(name)
                        .push_bind(c.customer.as_uuid())
                        .push_bind(i16::from(c.entered))
                        .push_bind(micros(at));
                });
                log.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            changes
        });
        Ok(changes)
    }
}
