//! API keys (stored as hashes of their secrets) and the access log of reads of unmasked
//! personal data and of exports of everything held on a person.

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use serde::Serialize;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::{Backend, EventStore};

/// An API key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredKey {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// The role it grants, by name.
    pub role: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One read of unmasked personal data, or one export of a person's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// The key that read; nil for the command line.
    pub key_id: Uuid,
    /// Its name; for the command line, the actor named there.
    pub key_name: String,
    /// Whose data.
    pub customer: CustomerId,
    /// Which fields: `identifiers`, `traits`, `timeline`; `export` for everything.
    pub what: String,
    /// Why, as given with an export.
    pub reason: Option<String>,
}

type KeyRow = (Uuid, String, String, i64, Option<i64>);

fn time(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt {
        position: 0,
        reason: format!("a time out of range: {micros} µs"),
    })
}

fn stored_key((id, name, role, created, revoked): KeyRow) -> Result<StoredKey> {
    Ok(StoredKey {
        id,
        name,
        role,
        created_at: time(created)?,
        revoked_at: revoked.map(time).transpose()?,
    })
}

const KEY_COLUMNS: &str = "id, name, role, created_at, revoked_at";

impl EventStore {
    /// Stores a new API key under the hash of its secret.
    pub async fn create_api_key(
        &self,
        name: &str,
        role: &str,
        secret_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<StoredKey> {
        let id = Uuid::now_v7();
        let sql = "INSERT INTO api_keys (id, name, role, secret_hash, created_at) \
                   VALUES ($1, $2, $3, $4, $5)";
        writing!(self, pool => sqlx::query(sql)
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(secret_hash)
            .bind(at.timestamp_micros())
            .execute(pool)
            .await?
            .rows_affected());
        Ok(StoredKey {
            id,
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: time(at.timestamp_micros())?,
            revoked_at: None,
        })
    }

    /// The key stored under a secret's hash, revoked or not.
    pub async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<StoredKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1");
        let row: Option<KeyRow> = reading!(self, pool => sqlx::query_as(&sql)
            .bind(secret_hash)
            .fetch_optional(pool)
            .await?);
        row.map(stored_key).transpose()
    }

    /// The key `id`, revoked or not.
    pub async fn api_key(&self, id: Uuid) -> Result<Option<StoredKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row: Option<KeyRow> =
            reading!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        row.map(stored_key).transpose()
    }

    /// Every API key, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<StoredKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
        let rows: Vec<KeyRow> = reading!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        rows.into_iter().map(stored_key).collect()
    }

    /// Revokes a live key; `false` if there is no such live key.
    pub async fn revoke_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let sql = "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
        let done = writing!(self, pool => sqlx::query(sql)
            .bind(at.timestamp_micros())
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done > 0)
    }

    /// Writes a read of unmasked personal data to the access log.
    pub async fn log_access(&self, entry: &AccessEntry) -> Result<()> {
        let sql = "INSERT INTO access_log (at, key_id, key_name, customer_id, what, reason) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        writing!(self, pool => sqlx::query(sql)
            .bind(entry.at.timestamp_micros())
            .bind(entry.key_id)
            .bind(&entry.key_name)
            .bind(entry.customer.as_uuid())
            .bind(&entry.what)
            .bind(&entry.reason)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// The reads of a customer's unmasked personal data, oldest first.
    pub async fn access_log(&self, customer: CustomerId) -> Result<Vec<AccessEntry>> {
        let sql = "SELECT at, key_id, key_name, customer_id, what, reason FROM access_log \
                   WHERE customer_id = $1 ORDER BY at, id";
        let rows: Vec<(i64, Uuid, String, Uuid, String, Option<String>)> = reading!(self, pool => sqlx::query_as(sql)
            .bind(customer.as_uuid())
            .fetch_all(pool)
            .await?);
        rows.into_iter()
            .map(|(at, key_id, key_name, c, what, reason)| {
                Ok(AccessEntry {
                    at: time(at)?,
                    key_id,
                    key_name,
                    customer: CustomerId::from_uuid(c),
                    what,
                    reason,
                })
            })
            .collect()
    }
}
