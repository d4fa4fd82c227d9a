//! `patron correct`, `patron explain`, `patron review` and `patron rules`: identity
//! corrections, their audit, the review queue and rules dry-runs from the command line.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use patron_domain::customer::{Correction, CustomerId};

use super::{Corrector, Explanation, Outcome, Request};
use crate::ingest::Ingestor;
use crate::projection::ProfileProjection;

/// A correction to apply.
#[derive(Debug, Subcommand)]
pub enum CorrectCommand {
    /// Merge two customers by hand: the absorbed one's id resolves to the survivor from now on.
    Merge {
        /// The customer that goes on.
        #[arg(long)]
        survivor: CustomerId,
        /// The customer closed by the merge.
        #[arg(long)]
        absorbed: CustomerId,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Undo the merge that closed a customer: it is a customer again with its identifiers and
    /// every touchpoint that came through them, including those after the merge.
    UndoMerge {
        /// The absorbed customer to restore.
        #[arg(long)]
        customer: CustomerId,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Move identifiers, and the touchpoints that came through them, off a customer into a
    /// new customer.
    Split {
        /// The customer to split.
        #[arg(long)]
        customer: CustomerId,
        /// An identifier to move, `KIND=VALUE` (repeat for several).
        #[arg(long = "identifier", required = true)]
        identifiers: Vec<String>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Link an identifier to a customer, taking it from any customer holding it.
    Link {
        /// The customer.
        #[arg(long)]
        customer: CustomerId,
        /// The identifier, `KIND=VALUE`.
        #[arg(long)]
        identifier: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Unlink an identifier from a customer.
    Unlink {
        /// The customer.
        #[arg(long)]
        customer: CustomerId,
        /// The identifier, `KIND=VALUE`.
        #[arg(long)]
        identifier: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Block an identifier value: it is unlinked and links no customer again.
    Block {
        /// The identifier, `KIND=VALUE`.
        #[arg(long)]
        identifier: String,
        #[command(flatten)]
        request: RequestArgs,
    },
}

/// Who asks for a correction, why, and against which version.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Why (kept in the history), for example a ticket number.
    #[arg(long)]
    reason: String,
    /// Who asks (kept in the history).
    #[arg(long, default_value = "cli")]
    actor: String,
    /// The version of the (first) customer you looked at (`patron explain` and the API's
    /// `version` show it): the correction fails if the customer changed since.
    #[arg(long)]
    expected_version: Option<u64>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// Splits `KIND=VALUE`.
pub(crate) fn kind_value(identifier: &str) -> Result<(String, String)> {
    let (kind, value) = identifier.split_once('=').with_context(|| {
        format!("{identifier:?}: an identifier is KIND=VALUE, for example phone=13912340001")
    })?;
    Ok((kind.trim().to_owned(), value.trim().to_owned()))
}

/// Applies a correction with a corrector over `ingestor`'s store whose profiles judge segment
/// spend in `currency`; prints the outcome.
pub async fn correct(ingestor: &Ingestor, currency: &str, command: &CorrectCommand) -> Result<()> {
    let projection =
        ProfileProjection::new(ingestor.store().clone(), 20_000).with_segments(currency);
    let corrector = Corrector::new(ingestor.clone(), projection);
    let (correction, args) = match command {
        CorrectCommand::Merge {
            survivor,
            absorbed,
            request,
        } => (
            Correction::Merge {
                survivor: *survivor,
                absorbed: *absorbed,
            },
            request,
        ),
        CorrectCommand::UndoMerge { customer, request } => (
            Correction::UndoMerge {
                customer: *customer,
            },
            request,
        ),
        CorrectCommand::Split {
            customer,
            identifiers,
            request,
        } => (
            Correction::Split {
                customer: *customer,
                identifiers: identifiers
                    .iter()
                    .map(|i| kind_value(i))
                    .collect::<Result<Vec<_>>>()?,
            },
            request,
        ),
        CorrectCommand::Link {
            customer,
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            let customer = *customer;
            (
                Correction::Link {
                    customer,
                    kind,
                    value,
                },
                request,
            )
        }
        CorrectCommand::Unlink {
            customer,
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            let customer = *customer;
            (
                Correction::Unlink {
                    customer,
                    kind,
                    value,
                },
                request,
            )
        }
        CorrectCommand::Block {
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            (Correction::Block { kind, value }, request)
        }
    };
    let outcome = corrector.correct(correction, &args.to_request()).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
    print_outcome(&outcome, args.json)
}

impl RequestArgs {
    fn to_request(&self) -> Request {
        Request {
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            expected_version: self.expected_version,
        }
    }
}

fn print_outcome(outcome: &Outcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    println!(
        "{}: {}",
        if outcome.applied {
            "applied"
        } else {
            "unchanged"
        },
        outcome.note
    );
    for customer in &outcome.customers {
        println!("customer:            {customer}");
    }
    if outcome.applied {
        println!("touchpoints moved:   {}", outcome.touchpoints_moved);
        println!("identifiers moved:   {}", outcome.identifiers_moved);
        if !outcome.kept.is_empty() {
            println!(
                "kept (carried identifiers of both, at positions): {:?}",
                outcome.kept
            );
        }
        if let Some(position) = outcome.position {
            println!("recorded at:         position {position}");
        }
    }
    Ok(())
}

/// Prints why an identifier (`KIND=VALUE`) belongs to its customer.
pub async fn explain(ingestor: &Ingestor, identifier: &str, json: bool) -> Result<()> {
    let (kind, value) = kind_value(identifier)?;
    let corrector = Corrector::new(
        ingestor.clone(),
        ProfileProjection::new(ingestor.store().clone(), 20_000),
    );
    let explanation = corrector
        .explain(&kind, &value)
        .await
        .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
    print_explanation(&explanation, json)
}

fn print_explanation(explanation: &Explanation, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(explanation)?);
        return Ok(());
    }
    if explanation.blocked {
        println!("blocked: the value links no customer");
        return Ok(());
    }
    let Some(customer) = explanation.customer else {
        println!("no customer holds it");
        return Ok(());
    };
    println!("held by customer {customer}");
    for step in &explanation.steps {
        let by = match (&step.actor, &step.reason) {
            (Some(actor), Some(reason)) => format!("by {actor}: {reason}"),
            (Some(actor), None) => format!("by {actor}"),
            _ => String::new(),
        };
        let rules = step
            .rules_version
            .map(|v| format!("rules version {v}"))
            .unwrap_or_default();
        println!(
            "{:>7} at position {} ({}, {}) on customer {} {} {} {}",
            step.step,
            step.position,
            step.event_type,
            step.occurred_at.to_rfc3339(),
            step.customer.map(|c| c.to_string()).unwrap_or_default(),
            step.source.as_deref().unwrap_or(""),
            rules,
            by
        );
    }
    Ok(())
}

/// What to do with a changed identity-rules file.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Resolve the whole log again under the rules in FILE, in memory, and report which
    /// customers would merge or split and how many segment memberships would move. Nothing
    /// is written.
    DryRun {
        /// The changed identity-rules file (TOML).
        file: std::path::PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dry-run the rules in FILE, then write what would change as corrections by hand (splits,
    /// then merges), each with --actor and --reason, so that every change is in the history
    /// and can be undone. Put FILE in the configuration for new touchpoints afterwards.
    Apply {
        /// The changed identity-rules file (TOML).
        file: std::path::PathBuf,
        /// Why (kept on every correction).
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long, default_value = "cli")]
        actor: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a rules dry-run (and applies it, for `apply`), with a progress bar; prints the report.
pub async fn rules(ingestor: &Ingestor, currency: &str, command: &RulesCommand) -> Result<()> {
    let (file, json) = match command {
        RulesCommand::DryRun { file, json } | RulesCommand::Apply { file, json, .. } => {
            (file, *json)
        }
    };
    let rules = crate::cli::read_identity_rules(file)?;
    let head = ingestor.store().head().await?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} resolving again [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let change = super::dry_run::dry_run(ingestor, &rules, currency, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
    bar.finish_and_clear();
    let applied = match command {
        RulesCommand::DryRun { .. } => None,
        RulesCommand::Apply { reason, actor, .. } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let projection =
                ProfileProjection::new(ingestor.store().clone(), 20_000).with_segments(currency);
            let corrector = Corrector::new(ingestor.clone(), projection);
            let request = Request {
                actor: actor.clone(),
                reason: format!("identity rules version {}: {reason}", rules.version()),
                expected_version: None,
            };
            Some(
                super::dry_run::apply(&corrector, ingestor, &change, &request)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?,
            )
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"change": change, "applied": applied})
            )?
        );
        return Ok(());
    }
    println!(
        "rules version {}: {} touchpoints resolved again in {:.1} s",
        change.rules_version, change.touchpoints, change.seconds
    );
    println!(
        "customers:          {} now, {} under the new rules",
        change.customers_now, change.customers_after
    );
    println!("merges:             {}", change.merges);
    println!("splits:             {}", change.splits);
    println!(
        "held back:          {} (would undo corrections by hand)",
        change.held_back
    );
    println!("memberships moving: {}", change.memberships_moving);
    for s in &change.segments {
        println!("  {}: +{} -{}", s.segment, s.entries, s.exits);
    }
    for m in &change.merge_examples {
        let ids: Vec<String> = m.customers.iter().map(ToString::to_string).collect();
        println!(
            "  merge {} (through {})",
            ids.join(" + "),
            m.through.join(", ")
        );
    }
    for s in &change.split_examples {
        println!(
            "  split {} into {} ({} touchpoints leave)",
            s.customer, s.parts, s.touchpoints_leaving
        );
    }
    if let Some(applied) = applied {
        println!(
            "applied: {} splits, {} merges, {} already in place, {} refused",
            applied.splits,
            applied.merges,
            applied.unchanged,
            applied.failed.len()
        );
        for failure in &applied.failed {
            println!("  refused: {failure}");
        }
    }
    Ok(())
}

/// The review queue of likely duplicates.
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Read the whole log (with a progress bar) and add the likely duplicates it finds to the
    /// queue; pairs rejected before are not suggested again.
    Scan {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the open suggestions, highest score first.
    List {
        /// How many at most.
        #[arg(long, default_value_t = 20)]
        first: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accept a suggestion: the two customers are merged by hand.
    Accept {
        /// The suggestion's number.
        id: i64,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Reject a suggestion: the pair is never suggested again.
    Reject {
        /// The suggestion's number.
        id: i64,
        #[command(flatten)]
        request: RequestArgs,
    },
}

/// Runs a review queue command.
pub async fn review(ingestor: &Ingestor, currency: &str, command: &ReviewCommand) -> Result<()> {
    let projection =
        ProfileProjection::new(ingestor.store().clone(), 20_000).with_segments(currency);
    let reviewer = crate::review::Reviewer::new(
        ingestor.clone(),
        Corrector::new(ingestor.clone(), projection),
    );
    let failed = |e: crate::review::ReviewError| anyhow::anyhow!("{} ({})", e, e.code());
    match command {
        ReviewCommand::Scan { json } => {
            let head = ingestor.store().head().await?;
            let bar = indicatif::ProgressBar::new(head);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} scanning [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = reviewer
                .scan(|at, head| {
                    bar.set_length(head);
                    bar.set_position(at);
                })
                .await
                .map_err(failed)?;
            bar.finish_and_clear();
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "scanned {} touchpoints of {} customers in {:.1} s",
                    report.touchpoints, report.customers, report.seconds
                );
                println!(
                    "suggested pairs: {} ({} new, {} withdrawn)",
                    report.pairs, report.new, report.withdrawn
                );
            }
        }
        ReviewCommand::List { first, json } => {
            let queue = reviewer.queue(*first).await.map_err(failed)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&queue)?);
            } else {
                for s in &queue {
                    println!(
                        "#{} score {:.4}: {} and {}",
                        s.stored.id, s.stored.score, s.stored.first, s.stored.second
                    );
                    for e in &s.evidence {
                        println!(
                            "    {} (+{:.2} bits): {}",
                            e.signal, e.weight_bits, e.detail
                        );
                    }
                }
            }
        }
        ReviewCommand::Accept { id, request } => {
            let outcome = reviewer
                .accept(*id, &request.actor, &request.reason)
                .await
                .map_err(failed)?;
            print_outcome(&outcome, request.json)?;
        }
        ReviewCommand::Reject { id, request } => {
            reviewer
                .reject(*id, &request.actor, &request.reason)
                .await
                .map_err(failed)?;
            println!("rejected suggestion {id}: the pair is not suggested again");
        }
    }
    Ok(())
}
