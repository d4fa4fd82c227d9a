//! Looking after the store: `status`, `log`, `quarantine`, `erase`, `rebuild` and `verify`.

use anyhow::{Context, Result};
use patron_domain::customer::CustomerId;

use super::open;
use crate::correction;
use crate::ingest::Ingestor;
use crate::privacy::{self, Opener};
use crate::projection::{ProfileProjection, PROFILES};
use crate::store::{redact_url, EventStore};

/// Prints quarantined records after `after` (at most `limit`), expiring those past
/// `retention_days` first when `expire` is set.
pub(super) async fn quarantine(
    url: &str,
    after: u64,
    limit: usize,
    expire: bool,
    retention_days: u32,
) -> Result<()> {
    let store = open(url).await?;
    if expire {
        let expired = privacy::expire_quarantine(&store, retention_days)
            .await
            .context("cannot expire the quarantine")?;
        eprintln!("expired {expired} records older than {retention_days} days");
    }
    for record in store
        .quarantined(after, limit)
        .await
        .context("cannot read the quarantine")?
    {
        println!("{}", serde_json::to_string(&record)?);
    }
    store.close().await;
    Ok(())
}

pub(super) async fn status(url: &str, json: bool, catch_up: bool) -> Result<()> {
    let store = open(url).await?;
    let profiles = ProfileProjection::new(store.clone(), 20_000);
    if catch_up {
        profiles
            .catch_up()
            .await
            .context("cannot bring the profiles up to date")?;
    }
    let lag = profiles
        .lag()
        .await
        .context("cannot read the profiles' checkpoint")?;
    let stats = store
        .stats()
        .await
        .context("cannot read the log's counts")?;
    let (customers, merged, quarantined) = store
        .identity_counts()
        .await
        .context("cannot read the identity counts")?;
    if json {
        let mut value = serde_json::to_value(&stats)?;
        value["customers"] = customers.into();
        value["merged_customers"] = merged.into();
        value["quarantined"] = quarantined.into();
        value["projections"] = serde_json::json!({ PROFILES: lag });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("store:        {} ({})", redact_url(url), stats.backend);
        println!("events:       {}", stats.events);
        println!("streams:      {}", stats.streams);
        println!("head:         position {}", stats.head);
        println!("customers:    {customers} ({merged} merged into others)");
        println!("quarantined:  {quarantined} records");
        println!(
            "profiles:     at position {} ({} events behind, {} s)",
            lag.position, lag.events, lag.seconds
        );
    }
    store.close().await;
    Ok(())
}

pub(super) async fn log(ingestor: &Ingestor, after: u64, limit: usize) -> Result<()> {
    let store = ingestor.store();
    let events = store
        .read_all(after, limit)
        .await
        .with_context(|| format!("cannot read the log after position {after}"))?;
    let events = Opener::new(store.clone(), ingestor.master_key().clone())
        .open(events)
        .await
        .context("cannot open the events' personal data: is PATRON_MASTER_KEY the right key?")?;
    for event in events {
        println!("{}", serde_json::to_string(&event)?);
    }
    store.close().await;
    Ok(())
}

pub(super) async fn erase(
    ingestor: &Ingestor,
    customer: Option<CustomerId>,
    identifier: Option<&str>,
    reason: &str,
    actor: &str,
    json: bool,
) -> Result<()> {
    let customer = match (customer, identifier) {
        (Some(customer), _) => customer,
        (None, Some(identifier)) => {
            let (kind, value) = identifier
                .split_once('=')
                .context("--identifier takes KIND=VALUE, for example phone=13912340001")?;
            ingestor
                .customer_by_identifier(kind, value)
                .await
                .context("cannot look the identifier up")?
                .with_context(|| format!("no customer holds {kind} {value}"))?
        }
        (None, None) => {
            anyhow::bail!("name the customer: --customer ID or --identifier KIND=VALUE")
        }
    };
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
    let erasure = privacy::erase(ingestor, customer, actor, reason)
        .await
        .with_context(|| format!("cannot erase customer {customer}"))?;
    ingestor.store().close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&erasure)?);
    } else {
        println!("erased customer {}", erasure.customer);
        println!("keys destroyed:      {}", erasure.keys_destroyed.len());
        println!("identifiers removed: {}", erasure.identifiers_removed);
        println!(
            "quarantine removed:  {} records",
            erasure.quarantined_removed
        );
        println!("recorded at:         position {}", erasure.position);
    }
    Ok(())
}

/// The identity index, as `patron rebuild` names it.
pub(super) const IDENTITY: &str = "identity";

/// A progress bar over the log for `what`.
fn log_bar(what: &str, head: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Rebuilds the identity index from the log.
pub(super) async fn rebuild_identity(ingestor: &Ingestor, batch: usize) -> Result<()> {
    let bar = log_bar("rebuilding the identity index", 0);
    let started = std::time::Instant::now();
    let folded = correction::index::rebuild(ingestor, batch, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
    .context("cannot rebuild the identity index")?;
    bar.finish_and_clear();
    println!(
        "rebuilt the identity index up to position {} in {:.1} s: {} identifiers held, {} \
         merged customers, {} blocked values",
        folded.position,
        started.elapsed().as_secs_f64(),
        folded.index.holders().len(),
        folded.index.aliases().len(),
        folded.index.blocked().len()
    );
    ingestor.store().close().await;
    Ok(())
}

pub(super) async fn rebuild(url: &str, projection: &str, batch: usize) -> Result<()> {
    anyhow::ensure!(
        projection == PROFILES,
        "no read model named {projection:?}; the read models are: {PROFILES}, {IDENTITY}"
    );
    let store = open(url).await?;
    let head = store.head().await.context("cannot read the log's head")?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rebuilding {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(projection.to_owned());
    let started = std::time::Instant::now();
    let reached = ProfileProjection::new(store.clone(), batch)
        .rebuild(|at, head| {
            bar.set_length(head);
            bar.set_position(at);
        })
        .await
        .with_context(|| format!("cannot rebuild {projection}"))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rebuilt {projection} up to position {reached} in {seconds:.1} s ({:.0} events/s)",
        reached as f64 / seconds.max(1e-9)
    );
    store.close().await;
    Ok(())
}

/// Folds the log again and compares it with the live profiles and the identity index.
pub(super) async fn verify(ingestor: &Ingestor, batch: usize, json: bool) -> Result<()> {
    let store = ingestor.store();
    let bar = log_bar(
        "verifying profiles",
        store.head().await.context("cannot read the log's head")?,
    );
    let started = std::time::Instant::now();
    let found = ProfileProjection::new(store.clone(), batch)
        .verify(|at, head| {
            bar.set_length(head);
            bar.set_position(at);
        })
        .await
        .context("cannot verify the profiles")?;
    bar.finish_and_clear();
    let profiles_seconds = started.elapsed().as_secs_f64();
    let bar = log_bar("verifying the identity index", 0);
    let started = std::time::Instant::now();
    let identity = correction::index::verify(ingestor, batch, |at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
    .context("cannot verify the identity index")?;
    bar.finish_and_clear();
    store.close().await;
    if json {
        let mut value = serde_json::to_value(&found)?;
        if let Some(report) = value.as_object_mut() {
            report.insert("identity".into(), serde_json::to_value(&identity)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "verified {} profiles at position {} in {profiles_seconds:.1} s",
            found.profiles, found.position,
        );
        println!("different: {}", found.different);
        println!("missing:   {}", found.missing);
        println!("extra:     {}", found.extra);
        for d in &found.examples {
            println!("  {} {} {}", d.kind, d.customer, d.fields.join(", "));
        }
        println!(
            "verified the identity index at position {} in {:.1} s: {} identifiers held, {} \
             merged customers, {} blocked values",
            identity.position,
            started.elapsed().as_secs_f64(),
            identity.identifiers,
            identity.aliases,
            identity.blocked
        );
        println!("different: {}", identity.different);
        for d in &identity.examples {
            println!(
                "  {} {}: stored {}, log {}",
                d.table,
                d.key,
                d.stored.as_deref().unwrap_or("nothing"),
                d.folded.as_deref().unwrap_or("nothing")
            );
        }
    }
    anyhow::ensure!(
        found.is_clean(),
        "the live profiles differ from a fold of the log: `patron rebuild profiles` replaces them"
    );
    anyhow::ensure!(
        identity.is_clean(),
        "the identity index differs from a fold of the log: `patron rebuild identity` replaces it"
    );
    Ok(())
}

/// Brings the profiles up to the log's head.
pub(super) async fn catch_up_profiles(store: &EventStore) -> Result<()> {
    ProfileProjection::new(store.clone(), 20_000)
        .catch_up()
        .await
        .context("cannot bring the profiles up to date")?;
    Ok(())
}
