//! Read-model tables and projection checkpoints, beside the log in the same database.
//!
//! A projection writes its rows and its checkpoint in one transaction
//! ([`EventStore::commit_rows`]), guarded by the checkpoint it started from: if another writer
//! moved the checkpoint meanwhile (a rebuild that swapped the table in), nothing is written and
//! the caller starts again from the new checkpoint.

use std::collections::HashMap;

use patron_domain::customer::CustomerId;
use patron_domain::Position;
use patron_projections::profile::Profile;
use sqlx::Row;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::{to_i64, to_u64, Backend, EventStore};

/// A read-model table a projection may write: the live one, or the one a rebuild fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileTable {
    /// `profiles`, which readers read.
    Live,
    /// `profiles_next`, filled by a rebuild and then swapped in.
    Next,
    /// `profiles_verify`, filled by `patron verify` to compare with the live one, then dropped.
    Verify,
}

impl ProfileTable {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "profiles",
            Self::Next => "profiles_next",
            Self::Verify => "profiles_verify",
        }
    }
}

/// One row of a profile table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRow {
    /// The customer.
    pub customer: CustomerId,
    /// The customer it was merged into, if any.
    pub merged_into: Option<CustomerId>,
    /// The profile as JSON.
    pub state: String,
}

impl EventStore {
    /// A setting's value, if stored.
    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        let sql = "SELECT value FROM settings WHERE name = $1";
        let value = reading!(self, pool => sqlx::query_scalar(sql)
            .bind(name)
            .fetch_optional(pool)
            .await?);
        Ok(value)
    }

    /// Whether any customer key or identity index entry is stored: whether keys generated now
    /// would be the store's first.
    pub async fn holds_keyed_data(&self) -> Result<bool> {
        let sql =
            "SELECT EXISTS (SELECT 1 FROM customer_keys) OR EXISTS (SELECT 1 FROM identity_index)";
        let held: bool = reading!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await?);
        Ok(held)
    }

    /// Stores a setting, replacing its value.
    pub async fn put_setting(&self, name: &str, value: &str) -> Result<()> {
        let sql = "INSERT INTO settings (name, value) VALUES ($1, $2) \
                   ON CONFLICT (name) DO UPDATE SET value = excluded.value";
        writing!(self, pool => sqlx::query(sql)
            .bind(name)
            .bind(value)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Where the projection `name` has read the log up to (0: nothing yet).
    pub async fn checkpoint(&self, name: &str) -> Result<Position> {
        let position: Option<i64> = reading!(self, pool => sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?);
        let position = position.unwrap_or(0);
        to_u64(position, position, "checkpoint")
    }

    /// The stored rows of `customers` in `table`.
    pub async fn load_profiles(
        &self,
        table: ProfileTable,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, String>> {
        let mut found = HashMap::with_capacity(customers.len());
        match &self.backend {
            Backend::Sqlite(b) => return b.load_states(table.name(), customers).await,
            Backend::Postgres(b) => {
                let ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
                let sql = format!(
                    "SELECT customer_id, state FROM {} WHERE customer_id = ANY($1::uuid[])",
                    table.name()
                );
                for row in sqlx::query(&sql).bind(&ids).fetch_all(b.pool()).await? {
                    let id: Uuid = row.try_get(0)?;
                    found.insert(CustomerId::from_uuid(id), row.try_get(1)?);
                }
            }
        }
        Ok(found)
    }

    /// A page of live (not merged away) customers with a profile, in customer order, after
    /// `after` (from the first without it).
    pub async fn live_customer_page(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<CustomerId>> {
        let sql =
            "SELECT customer_id FROM profiles WHERE merged_into IS NULL AND customer_id > $1 \
                   ORDER BY customer_id LIMIT $2";
        let after = after.map_or(Uuid::nil(), |c| c.as_uuid());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<Uuid> = reading!(self, pool => sqlx::query_scalar(sql)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(ids.into_iter().map(CustomerId::from_uuid).collect())
    }

    /// How many live (not merged away) customers have a profile.
    pub async fn live_customer_count(&self) -> Result<u64> {
        let sql = "SELECT count(*) FROM profiles WHERE merged_into IS NULL";
        let n: i64 = reading!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await?);
        to_u64(n, 0, "count")
    }

    /// The profiles of `customers` in `table` that have a row, read.
    pub async fn profiles_of(
        &self,
        table: ProfileTable,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Profile>> {
        self.load_profiles(table, customers)
            .await?
            .into_iter()
            .map(|(customer, state)| Ok((customer, read_profile(customer, &state)?)))
            .collect()
    }

    /// The live profile of `customer`, if it has one.
    pub async fn live_profile(&self, customer: CustomerId) -> Result<Option<Profile>> {
        Ok(self
            .profiles_of(ProfileTable::Live, &[customer])
            .await?
            .remove(&customer))
    }

    /// Every row of `table`, in customer order, read: each customer with the customer it was
    /// merged into (if it was) and its profile.
    pub async fn read_all_profiles(
        &self,
        table: ProfileTable,
    ) -> Result<Vec<(CustomerId, Option<CustomerId>, Profile)>> {
        self.all_profiles(table)
            .await?
            .into_iter()
            .map(|row| {
                let profile = read_profile(row.customer, &row.state)?;
                Ok((row.customer, row.merged_into, profile))
            })
            .collect()
    }

    /// Every row of `table`, in customer order.
    pub async fn all_profiles(&self, table: ProfileTable) -> Result<Vec<ProfileRow>> {
        let sql = format!(
            "SELECT customer_id, merged_into, state FROM {} ORDER BY customer_id",
            table.name()
        );
        let rows: Vec<(Uuid, Option<Uuid>, String)> =
            reading!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(c, m, state)| ProfileRow {
                customer: CustomerId::from_uuid(c),
                merged_into: m.map(CustomerId::from_uuid),
                state,
            })
            .collect())
    }

    /// Writes `rows` to `table` and moves the checkpoint `name` from `from` to `to`, in one
    /// transaction. Returns `false`, writing nothing, if the checkpoint is no longer at `from`.
    pub async fn commit_rows(
        &self,
        name: &str,
        table: ProfileTable,
        from: Position,
        to: Position,
        rows: &[ProfileRow],
    ) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(b) => {
                let rows: Vec<(CustomerId, Option<CustomerId>, &str)> = rows
                    .iter()
                    .map(|r| (r.customer, r.merged_into, r.state.as_str()))
                    .collect();
                return b.commit_states(name, table.name(), from, to, &rows).await;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool().begin().await?;
                if !move_checkpoint_postgres(&mut tx, name, from, to).await? {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let ids: Vec<Uuid> = rows.iter().map(|r| r.customer.as_uuid()).collect();
                let merged: Vec<Option<Uuid>> = rows
                    .iter()
                    .map(|r| r.merged_into.map(|c| c.as_uuid()))
                    .collect();
                let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
                let sql = format!(
                    "INSERT INTO {} (customer_id, merged_into, state) \
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) \
                     ON CONFLICT (customer_id) DO UPDATE SET merged_into = excluded.merged_into, \
                     state = excluded.state",
                    table.name()
                );
                sqlx::query(&sql)
                    .bind(&ids)
                    .bind(&merged)
                    .bind(&states)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    /// Empties the rebuild table and sets its checkpoint `name` to 0, to rebuild from there.
    pub async fn reset_next_profiles(&self, name: &str) -> Result<()> {
        self.reset_profile_table(ProfileTable::Next, name).await
    }

    /// Drops the table `patron verify` filled, and its checkpoint `name`.
    pub async fn drop_verify_profiles(&self, name: &str) -> Result<()> {
        let drop = "DROP TABLE IF EXISTS profiles_verify";
        let forget = "DELETE FROM projection_checkpoints WHERE name = $1";
        transaction!(self, tx => {
            sqlx::query(drop).execute(&mut *tx).await?;
            sqlx::query(forget).bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Empties a scratch profile table (`Next` or `Verify`) and sets its checkpoint `name` to
    /// 0, to fold it from there. On SQLite the table is an ordinary (rowid) table: profile rows
    /// of a kilobyte or more spill into overflow pages in a `WITHOUT ROWID` table, which made
    /// rebuilds about 15% slower (`docs/benchmarks.md`).
    pub async fn reset_profile_table(&self, table: ProfileTable, name: &str) -> Result<()> {
        let table = table.name();
        let id = match self.backend {
            Backend::Sqlite(_) => "BLOB",
            Backend::Postgres(_) => "UUID",
        };
        let drop = format!("DROP TABLE IF EXISTS {table}");
        let create = format!(
            "CREATE TABLE {table} (customer_id {id} PRIMARY KEY, merged_into {id}, \
             state TEXT NOT NULL)"
        );
        let reset = "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0) \
                     ON CONFLICT (name) DO UPDATE SET position = 0";
        transaction!(self, tx => {
            sqlx::query(&drop).execute(&mut *tx).await?;
            sqlx::query(&create).execute(&mut *tx).await?;
            sqlx::query(reset).bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Puts the rebuilt table in place of the live one, in one transaction: the live
    /// checkpoint `live` takes the rebuild's position `at` (if the rebuild checkpoint `next` is
    /// still there), and the rebuild's checkpoint goes. Returns `false`, changing nothing, if
    /// the rebuild checkpoint is not at `at`.
    pub async fn swap_in_next_profiles(
        &self,
        live: &str,
        next: &str,
        at: Position,
    ) -> Result<bool> {
        let at = to_i64(at);
        let statements = [
            "DROP TABLE profiles",
            "ALTER TABLE profiles_next RENAME TO profiles",
        ];
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.writer().begin_with("BEGIN IMMEDIATE").await?;
                let done = sqlx::query(
                    "DELETE FROM projection_checkpoints WHERE name = ? AND position = ?",
                )
                .bind(next)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                // Profiles hold no personal data: the old table's pages need not be overwritten
                // as they are freed (`secure_delete`, on for everything else), which would write
                // the whole table once more. The setting is restored before anything else runs.
                sqlx::query("PRAGMA secure_delete = OFF")
                    .execute(&mut *tx)
                    .await?;
                let mut swapped = Ok(());
                for sql in statements {
                    if let Err(e) = sqlx::query(sql).execute(&mut *tx).await {
                        swapped = Err(e);
                        break;
                    }
                }
                sqlx::query("PRAGMA secure_delete = ON")
                    .execute(&mut *tx)
                    .await?;
                swapped?;
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )
                .bind(live)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool().begin().await?;
                // The live runner locks its checkpoint's row before writing the live table; lock
                // it first here too, so the two wait for each other instead of deadlocking.
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(live)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
                )
                .bind(live)
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query(
                    "DELETE FROM projection_checkpoints WHERE name = $1 AND position = $2",
                )
                .bind(next)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for sql in statements {
                    sqlx::query(sql).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO projection_checkpoints (name, position) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )
                .bind(live)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(true)
    }
}

/// Moves a checkpoint from `from` to `to` if it is at `from` (a missing checkpoint is at 0),
/// locking the checkpoint's row until commit.
async fn move_checkpoint_postgres(
    tx: &mut sqlx::PgConnection,
    name: &str,
    from: Position,
    to: Position,
) -> Result<bool> {
    // Creates the row if missing, so that concurrent writers lock the same row.
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 0) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    let current: i64 = sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if current != to_i64(from) {
        return Ok(false);
    }
    sqlx::query("UPDATE projection_checkpoints SET position = $2 WHERE name = $1")
        .bind(name)
        .bind(to_i64(to))
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// A stored profile row, read.
fn read_profile(customer: CustomerId, state: &str) -> Result<Profile> {
    serde_json::from_str(state).map_err(|e| StoreError::UnreadableProfile {
        customer,
        reason: e.to_string(),
    })
}
