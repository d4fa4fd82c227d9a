//! Throw-away PostgreSQL databases for tests and benchmarks, created beside the one a URL names.

use sqlx::{Connection, Executor, PgConnection};
use url::Url;

use super::error::{Result, StoreError};
use super::redact_url;

/// A database created for one test or benchmark run; [`ScratchPostgres::drop_database`] removes it.
#[derive(Debug)]
pub struct ScratchPostgres {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchPostgres {
    /// Creates an empty database named `{prefix}_{random}` on the server `server_url` points at.
    pub async fn create(server_url: &str, prefix: &str) -> Result<Self> {
        let bad_url = || StoreError::UnsupportedUrl {
            url: redact_url(server_url),
        };
        let mut url = Url::parse(server_url).map_err(|_| bad_url())?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad_url());
        }
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(server_url).await?;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        admin.close().await?;
        url.set_path(&name);
        Ok(Self {
            admin_url: server_url.to_owned(),
            name,
            url: url.to_string(),
        })
    }

    /// The URL of the scratch database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The scratch database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, closing any connection still open on it.
    pub async fn drop_database(self) -> Result<()> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str())
            .await?;
        admin.close().await?;
        Ok(())
    }
}
