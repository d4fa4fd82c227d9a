//! `patron segment ...`: save, export, delete, list, read members, refresh and preview
//! segments.

use anyhow::{Context, Result};
use clap::Subcommand;
use patron_projections::segment::Rule;

use super::{catch_up_profiles, open, Cli};
use crate::segmentation;
use crate::store::EventStore;

/// Segment commands.
#[derive(Clone, Debug, Subcommand)]
pub enum SegmentCommand {
    /// Save a segment (or replace the rule of the one with that name); members follow at the
    /// next refresh (`patron segment refresh`, `patron score`, hourly in the server).
    Save {
        /// The segment's name.
        name: String,
        /// Its rule.
        rule: String,
        /// The consent purpose the segment is for (marketing_sms, marketing_email, push,
        /// profiling): only customers who consent to it are members.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Write a segment's members as CSV (customer_id, tier, stage; no personal data), leaving
    /// out customers without consent for `--purpose` when given.
    Export {
        /// The segment's name.
        name: String,
        /// Only customers who consent to this purpose.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Delete a segment and its members (its log of entries and exits stays).
    Delete {
        /// The segment's name.
        name: String,
    },
    /// List the saved segments with their rules and member counts.
    List,
    /// Print a segment's members, one customer id per line.
    Members {
        /// The segment's name.
        name: String,
    },
    /// Recompute every saved segment's members now (profiles brought up to date first; scores
    /// and tags from the last `patron score`), logging who entered and who left.
    Refresh,
    /// Count the live customers a rule selects as of now (profiles brought up to date first;
    /// scores and tags from the last `patron score`).
    Preview {
        /// The rule, for example `tier = "high_value" and stage = "declining"`.
        rule: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a segment command.
pub(super) async fn run(cli: &Cli, command: SegmentCommand) -> Result<()> {
    match command {
        SegmentCommand::Save {
            ref name,
            ref rule,
            ref purpose,
        } => {
            anyhow::ensure!(!name.trim().is_empty(), "a segment needs a name");
            Rule::parse(rule).map_err(|e| anyhow::anyhow!("the rule is invalid: {e}"))?;
            let purpose = purpose.as_deref().map(consent_purpose).transpose()?;
            let store = open(&cli.database_url).await?;
            let created = store
                .save_segment_for(name, rule, purpose, chrono::Utc::now())
                .await
                .context("cannot save the segment")?;
            store.close().await;
            println!(
                "{} segment {name}; its members follow at the next refresh",
                if created { "created" } else { "updated" }
            );
            Ok(())
        }
        SegmentCommand::Export {
            ref name,
            ref purpose,
        } => {
            let purpose = purpose.as_deref().map(consent_purpose).transpose()?;
            let store = open(&cli.database_url).await?;
            let exported = export_segment(&store, name, purpose).await;
            store.close().await;
            exported
        }
        SegmentCommand::Delete { ref name } => {
            let store = open(&cli.database_url).await?;
            let deleted = store
                .delete_segment(name)
                .await
                .context("cannot delete the segment")?;
            store.close().await;
            anyhow::ensure!(deleted, "no segment named {name}");
            println!("deleted segment {name}");
            Ok(())
        }
        SegmentCommand::List => {
            let store = open(&cli.database_url).await?;
            for segment in store.segments().await.context("cannot list the segments")? {
                println!("{}", serde_json::to_string(&segment)?);
            }
            store.close().await;
            Ok(())
        }
        SegmentCommand::Members { ref name } => {
            let store = open(&cli.database_url).await?;
            for customer in store
                .segment_members(name)
                .await
                .context("cannot read the members")?
            {
                println!("{customer}");
            }
            store.close().await;
            Ok(())
        }
        SegmentCommand::Refresh => {
            let rules = cli.scoring_rules()?;
            let store = open(&cli.database_url).await?;
            catch_up_profiles(&store).await?;
            let refreshed =
                segmentation::refresh(&store, &rules.tiers.currency, chrono::Utc::now())
                    .await
                    .context("cannot refresh the segments")?;
            store.close().await;
            for r in refreshed {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        SegmentCommand::Preview { ref rule, json } => {
            let rule =
                Rule::parse(rule).map_err(|e| anyhow::anyhow!("the rule is invalid: {e}"))?;
            let rules = cli.scoring_rules()?;
            let store = open(&cli.database_url).await?;
            catch_up_profiles(&store).await?;
            let preview =
                segmentation::preview(&store, &rule, &rules.tiers.currency, chrono::Utc::now())
                    .await
                    .context("cannot judge the customers")?;
            store.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&preview)?);
            } else {
                println!(
                    "{} of {} customers match ({:.1} ms)",
                    preview.matched, preview.customers, preview.evaluation_ms
                );
            }
            Ok(())
        }
    }
}

/// The consent purpose named `name`, checked.
fn consent_purpose(name: &str) -> Result<&str> {
    patron_graphql::backend::Purpose::parse(name)
        .map(|p| p.as_str())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown purpose {name:?}: expected marketing_sms, marketing_email, push or profiling"
            )
        })
}

/// Writes a segment's members as CSV to standard output: those who consent to `purpose`, when
/// given, with their tier and stage.
async fn export_segment(store: &EventStore, name: &str, purpose: Option<&str>) -> Result<()> {
    use patron_domain::touchpoint::ConsentPurpose;
    anyhow::ensure!(
        store
            .segment_rules()
            .await
            .context("cannot read the segments")?
            .iter()
            .any(|(n, _)| n == name),
        "no segment named {name}"
    );
    let purpose: Option<ConsentPurpose> = purpose
        .map(|p| serde_json::from_value(serde_json::Value::String(p.to_owned())))
        .transpose()
        .context("the purpose")?;
    let mut writer = csv::Writer::from_writer(std::io::stdout().lock());
    writer.write_record(["customer_id", "tier", "stage"])?;
    let mut after = None;
    let (mut written, mut left_out) = (0u64, 0u64);
    loop {
        let page = store
            .segment_member_page(name, after, 1_000)
            .await
            .context("cannot read the members")?;
        let Some(last) = page.last().copied() else {
            break;
        };
        after = Some(last);
        let scores = store
            .scores_of(&page)
            .await
            .context("cannot read the scores")?;
        let profiles = store
            .load_profiles(crate::store::projection::ProfileTable::Live, &page)
            .await
            .context("cannot read the profiles")?;
        for customer in page {
            if let Some(purpose) = purpose {
                let consents = profiles
                    .get(&customer)
                    .and_then(|state| {
                        // A profile that does not read gives no consent.
                        serde_json::from_str::<patron_projections::profile::Profile>(state).ok()
                    })
                    .and_then(|p| p.consent.get(&purpose).map(|c| c.granted))
                    .unwrap_or(false);
                if !consents {
                    left_out += 1;
                    continue;
                }
            }
            let score = scores.get(&customer);
            writer.write_record([
                customer.to_string(),
                score.map(|s| s.tier.clone()).unwrap_or_default(),
                score.map(|s| s.stage.clone()).unwrap_or_default(),
            ])?;
            written += 1;
        }
    }
    writer.flush()?;
    eprintln!("{written} customers exported; {left_out} left out without consent");
    Ok(())
}
