//! `patron person export`: the right of access from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use patron_domain::customer::CustomerId;

use super::{Exporter, Person, Requester};
use crate::correction::command::kind_value;
use crate::ingest::Ingestor;
use crate::projection::ProfileProjection;

/// Commands about one person's data.
#[derive(Debug, Subcommand)]
pub enum PersonCommand {
    /// Write everything Patron holds on a person as one JSON document (the right of access,
    /// `docs/privacy.md`): profile, scores, segments, consent, every touchpoint opened,
    /// identifiers, corrections, quarantined records. The export is written to the access log
    /// with --actor and --reason.
    Export {
        /// The person, by customer id (an erased person can only be named so).
        #[arg(
            long,
            conflicts_with = "identifier",
            required_unless_present = "identifier"
        )]
        customer: Option<CustomerId>,
        /// The person, by an identifier they hold: `KIND=VALUE`, for example
        /// `phone=13912340001`.
        #[arg(long)]
        identifier: Option<String>,
        /// Why (kept in the access log and the document), for example a ticket number.
        #[arg(long)]
        reason: String,
        /// Who asks (kept in the access log and the document).
        #[arg(long, default_value = "cli")]
        actor: String,
        /// Write the document to this file (created readable by its owner only) instead of
        /// printing it.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// Runs a person command over `ingestor`'s store; profiles judge segment spend in `currency`.
pub async fn person(ingestor: &Ingestor, currency: &str, command: &PersonCommand) -> Result<()> {
    match command {
        PersonCommand::Export {
            customer,
            identifier,
            reason,
            actor,
            output,
        } => {
            let person = match (customer, identifier) {
                (Some(customer), _) => Person::Customer(*customer),
                (None, Some(identifier)) => {
                    let (kind, value) = kind_value(identifier)?;
                    Person::Identifier { kind, value }
                }
                (None, None) => {
                    anyhow::bail!("name the person: --customer ID or --identifier KIND=VALUE")
                }
            };
            let projection =
                ProfileProjection::new(ingestor.store().clone(), 20_000).with_segments(currency);
            let requester = Requester {
                key: None,
                actor: actor.clone(),
                reason: reason.clone(),
            };
            let document = Exporter::new(ingestor.clone(), projection)
                .export(&person, &requester)
                .await
                .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
            let text = serde_json::to_string_pretty(&document)?;
            match output {
                Some(path) => {
                    write_private(path, &text)?;
                    eprintln!(
                        "wrote everything held on customer {} to {} ({} touchpoints)",
                        document.customer,
                        path.display(),
                        document.touchpoints.len()
                    );
                }
                None => println!("{text}"),
            }
            Ok(())
        }
    }
}

/// Writes `text` to a file only its owner may read (on Unix): it holds personal data.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}
