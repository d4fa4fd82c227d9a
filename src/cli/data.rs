//! Loading data and scoring it: `import`, `demo`, `score`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{catch_up_profiles, open, Cli};
use crate::demo::{generate_people, run_demo, DemoConfig};
use crate::import::import_file;
use crate::import::mapping::Mapping;
use crate::ingest::Ingestor;
use crate::scoring::{self, ScoringRules};
use crate::segmentation;

/// Loads the demo data set of `people` people (about `touchpoints` each), or writes it to
/// `write` instead.
pub(super) async fn demo_command(
    cli: &Cli,
    people: usize,
    touchpoints: f64,
    seed: u64,
    batch: usize,
    write: Option<&PathBuf>,
    json: bool,
) -> Result<()> {
    anyhow::ensure!(people > 0, "--people must be at least 1");
    anyhow::ensure!(touchpoints >= 1.0, "--touchpoints must be at least 1");
    let config = DemoConfig {
        people,
        touchpoints_per_person: touchpoints,
        seed,
        ..DemoConfig::default()
    };
    match write {
        Some(path) => write_demo(&config, path),
        None => {
            let ingestor = cli.ingestor().await?.with_actor("demo");
            demo(&ingestor, &config, batch, json, &cli.scoring_rules()?).await
        }
    }
}

pub(super) async fn import(
    ingestor: &Ingestor,
    file: &Path,
    mapping: Option<&Path>,
    batch: usize,
    json: bool,
) -> Result<()> {
    let mapping = mapping.map(Mapping::load).transpose()?;
    let ingestor = ingestor
        .clone()
        .with_actor(format!("import:{}", file.display()));
    let summary = import_file(&ingestor, file, mapping.as_ref(), batch).await?;
    ingestor.store().close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("records:        {}", summary.records);
    println!("accepted:       {}", summary.accepted);
    println!("duplicates:     {} (stored before)", summary.duplicates);
    println!(
        "rejected:       {} (kept in the quarantine: patron quarantine)",
        summary.rejected
    );
    println!("new customers:  {}", summary.new_customers);
    println!("merges:         {}", summary.merges);
    println!(
        "time:           {:.1} s ({:.0} records/s)",
        summary.seconds, summary.records_per_s
    );
    for r in &summary.first_rejections {
        println!("  line {}: {}: {}", r.line, r.field, r.reason);
    }
    if summary.rejected > summary.first_rejections.len() as u64 {
        println!(
            "  ... and {} more",
            summary.rejected - summary.first_rejections.len() as u64
        );
    }
    Ok(())
}

fn write_demo(config: &DemoConfig, path: &Path) -> Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut written = 0u64;
    let mut first = 0;
    while first < config.people {
        let count = 2_000.min(config.people - first);
        for r in generate_people(config, first, count) {
            writeln!(out, "{}", r.record)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written += 1;
        }
        first += count;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {written} records for {} people to {}",
        config.people,
        path.display()
    );
    Ok(())
}

async fn demo(
    ingestor: &Ingestor,
    config: &DemoConfig,
    batch: usize,
    json: bool,
    rules: &ScoringRules,
) -> Result<()> {
    let summary = run_demo(ingestor, config, batch)
        .await
        .context("loading the demo data set failed")?;
    // Bring the read models up to date, so that profiles, scores and segments answer at once.
    let store = ingestor.store();
    catch_up_profiles(store).await?;
    let scored = scoring::score(store, rules, chrono::Utc::now())
        .await
        .context("cannot score the customers")?;
    segmentation::refresh(store, &rules.tiers.currency, scored.as_of)
        .await
        .context("cannot refresh the segments")?;
    // A first key, so that the GraphQL API can be tried at once.
    let admin_key = if store
        .api_keys()
        .await
        .context("cannot read the keys")?
        .is_empty()
    {
        let secret = crate::server::new_secret();
        store
            .create_api_key(
                "demo-admin",
                patron_graphql::Role::Admin.as_str(),
                &crate::server::secret_hash(&secret),
                chrono::Utc::now(),
            )
            .await
            .context("cannot store an API key")?;
        Some(secret)
    } else {
        None
    };
    store.close().await;
    if let Some(secret) = &admin_key {
        eprintln!(
            "created the admin API key \"demo-admin\" (shown this once; `patron keys` manages keys):\n  {secret}\n\
             start the server with `patron serve`, open http://127.0.0.1:8080/graphql and send the header\n  \
             {{\"Authorization\": \"Bearer {secret}\"}}"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    if summary.accepted == 0 && summary.records > 0 {
        println!(
            "this data set was loaded before: all {} records are already stored (use --seed for another)",
            summary.records - summary.rejected
        );
        return Ok(());
    }
    println!("people:         {}", summary.scores.people);
    println!(
        "records:        {} ({} stored, {} refused on purpose)",
        summary.records, summary.accepted, summary.rejected
    );
    println!(
        "customers:      {} ({} merges while loading)",
        summary.scores.customers, summary.merges
    );
    println!(
        "precision:      {:.4} (pairs put in one customer that are one person)",
        summary.scores.precision
    );
    println!(
        "recall:         {:.4} (pairs of one person put in one customer)",
        summary.scores.recall
    );
    println!(
        "time:           {:.1} s ({:.0} records/s)",
        summary.seconds, summary.records_per_s
    );
    let line = |counts: &std::collections::BTreeMap<String, u64>| {
        counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("value tiers:    {}", line(&scored.by_tier));
    println!("stages:         {}", line(&scored.by_stage));
    if summary.broken_accepted + summary.sound_rejected > 0 {
        println!(
            "warning: {} broken records stored, {} sound records refused",
            summary.broken_accepted, summary.sound_rejected
        );
    }
    Ok(())
}

pub(super) async fn score(
    url: &str,
    rules: &ScoringRules,
    as_of: chrono::DateTime<chrono::Utc>,
    json: bool,
) -> Result<()> {
    let store = open(url).await?;
    catch_up_profiles(&store).await?;
    let report = scoring::score(&store, rules, as_of)
        .await
        .context("cannot score the customers")?;
    let refreshed = segmentation::refresh(&store, &rules.tiers.currency, as_of)
        .await
        .context("cannot refresh the segments")?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scored {} customers as of {}",
            report.customers, report.as_of
        );
        println!("with orders in the window: {}", report.with_rfm);
        println!("stage transitions:         {}", report.transitions);
        for (title, counts) in [
            ("tier", &report.by_tier),
            ("stage", &report.by_stage),
            ("RFM segment", &report.by_rfm_segment),
            ("tag", &report.by_tag),
        ] {
            let line: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("by {title}: {}", line.join(", "));
        }
        for r in &refreshed {
            println!(
                "segment {}: {} members ({} entered, {} left)",
                r.name, r.members, r.entered, r.left
            );
        }
    }
    Ok(())
}
