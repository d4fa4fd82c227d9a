//! `patron keys ...`: API keys for GraphQL and the master key.

use anyhow::{Context, Result};
use clap::Subcommand;
use patron_domain::privacy::MasterKey;

use super::{open, Cli};

/// Key management.
#[derive(Clone, Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes). Keep it out of the database: in
    /// PATRON_MASTER_KEY, from a secret store.
    Master,
    /// Create an API key and print its secret (shown this once; only its hash is stored).
    Create {
        /// What it may do: ingest (POST /v1/events only), viewer (reads, personal data
        /// masked), analyst (segments), operator (personal data, quarantine, ingestion) or
        /// admin (erasure, keys).
        #[arg(long)]
        role: patron_graphql::Role,
        /// A name for people, for example `marketing-ui`.
        #[arg(long)]
        name: String,
    },
    /// List the API keys (never their secrets).
    List,
    /// Revoke an API key: it is refused from the next request on.
    Revoke {
        /// The key's id (from `patron keys list`).
        id: uuid::Uuid,
    },
}

/// Runs a keys command.
pub(super) async fn run(cli: &Cli, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Master => {
            println!("{}", MasterKey::generate());
            Ok(())
        }
        KeysCommand::Create { role, ref name } => {
            let store = open(&cli.database_url).await?;
            let secret = crate::server::new_secret();
            let key = store
                .create_api_key(
                    name,
                    role.as_str(),
                    &crate::server::secret_hash(&secret),
                    chrono::Utc::now(),
                )
                .await
                .context("cannot store the key")?;
            store.close().await;
            eprintln!(
                "created {} key {:?} ({}); its secret, shown this once:",
                key.role, key.name, key.id
            );
            println!("{secret}");
            Ok(())
        }
        KeysCommand::List => {
            let store = open(&cli.database_url).await?;
            let keys = store.api_keys().await.context("cannot read the keys")?;
            store.close().await;
            for key in keys {
                let state = key.revoked_at.map_or("live".to_owned(), |at| {
                    format!("revoked {}", at.to_rfc3339())
                });
                println!(
                    "{}  {:<8}  {:<24}  created {}  {state}",
                    key.id,
                    key.role,
                    key.name,
                    key.created_at.to_rfc3339()
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            let store = open(&cli.database_url).await?;
            let revoked = store
                .revoke_api_key(id, chrono::Utc::now())
                .await
                .context("cannot revoke the key")?;
            store.close().await;
            anyhow::ensure!(revoked, "no live key {id}");
            eprintln!("revoked {id}");
            Ok(())
        }
    }
}
