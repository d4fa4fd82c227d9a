//! `patron correct` and `patron explain`: identity corrections and their audit from the
//! command line.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use patron_domain::customer::CustomerId;

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
fn kind_value(identifier: &str) -> Result<(String, String)> {
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
    let (outcome, args) = match command {
        CorrectCommand::Merge {
            survivor,
            absorbed,
            request,
        } => (
            corrector
                .merge(*survivor, *absorbed, &request.to_request())
                .await,
            request,
        ),
        CorrectCommand::UndoMerge { customer, request } => (
            corrector.undo_merge(*customer, &request.to_request()).await,
            request,
        ),
        CorrectCommand::Split {
            customer,
            identifiers,
            request,
        } => {
            let identifiers = identifiers
                .iter()
                .map(|i| kind_value(i))
                .collect::<Result<Vec<_>>>()?;
            (
                corrector
                    .split(*customer, &identifiers, &request.to_request())
                    .await,
                request,
            )
        }
        CorrectCommand::Link {
            customer,
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            (
                corrector
                    .link(*customer, &kind, &value, &request.to_request())
                    .await,
                request,
            )
        }
        CorrectCommand::Unlink {
            customer,
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            (
                corrector
                    .unlink(*customer, &kind, &value, &request.to_request())
                    .await,
                request,
            )
        }
        CorrectCommand::Block {
            identifier,
            request,
        } => {
            let (kind, value) = kind_value(identifier)?;
            (
                corrector.block(&kind, &value, &request.to_request()).await,
                request,
            )
        }
    };
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
