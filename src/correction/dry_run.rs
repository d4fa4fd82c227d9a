//! A rules dry-run: the whole log resolved again under other identity rules, in memory, and
//! compared with the customers as they are, without touching live data; then, if wanted,
//! applied as corrections by hand, so that the change is in the history and can be undone.
//!
//! Every touchpoint is resolved again, in log order, into a scratch identity graph under the
//! new rules (with the operator's blocked values). Touchpoints that the new rules put together
//! but that belong to different customers now are merges; a customer whose touchpoints the new
//! rules put apart is a split. Proposals that would undo a correction by hand (merge customers
//! an operator separated, split a customer an operator merged) are held back. The segment
//! memberships that would move are judged on profiles folded from each new customer's
//! touchpoints, with the scores of the customer it comes from.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use patron_domain::customer::CustomerId;
use patron_domain::events::{EventKind, Separation};
use patron_domain::identifier::Identifier;
use patron_domain::identity::resolution::IdentityGraph;
use patron_domain::identity::{IdentityRules, Resolver};
use patron_domain::{Position, RecordedEvent};
use patron_projections::profile::Profile;
use patron_projections::segment::{Rule, Subject};
use serde::{Deserialize, Serialize};

use super::{ordered, CorrectionError, Corrector, Request};
use crate::ingest::Ingestor;
use crate::privacy::Opener;
use crate::projection::ProjectionError;
use crate::store::projection::ProfileTable;
use crate::store::segments::consented;
use crate::store::{EventStore, StoreError};

/// Events read at a time.
const BATCH: usize = 5_000;
/// How many proposals of each kind a report lists.
const LISTED: usize = 50;

/// A merge the new rules would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProposedMerge {
    /// The customers now, the one seen first first.
    pub customers: Vec<CustomerId>,
    /// The kinds of the identifiers that join them: carried by touchpoints of more than one.
    pub through: Vec<String>,
}

/// A split the new rules would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProposedSplit {
    /// The customer now.
    pub customer: CustomerId,
    /// How many customers it would be.
    pub parts: usize,
    /// Its touchpoints that would leave it.
    pub touchpoints_leaving: usize,
}

/// A segment's members among the customers a rules change concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentShift {
    /// The segment.
    pub segment: String,
    /// Memberships that would start (a customer entering, or a new customer in it).
    pub entries: u64,
    /// Memberships that would end (a customer leaving, or merged away).
    pub exits: u64,
}

/// What a rules change would do.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RulesChange {
    /// The new rules' version.
    pub rules_version: u32,
    /// Touchpoints resolved again.
    pub touchpoints: u64,
    /// Customers with touchpoints now.
    pub customers_now: u64,
    /// Customers with touchpoints under the new rules.
    pub customers_after: u64,
    /// Merges proposed (all of them).
    pub merges: u64,
    /// Splits proposed (all of them).
    pub splits: u64,
    /// Proposals held back because they would undo a correction by hand.
    pub held_back: u64,
    /// Segment memberships that would start or end, all segments.
    pub memberships_moving: u64,
    /// Per segment.
    pub segments: Vec<SegmentShift>,
    /// The first merges.
    pub merge_examples: Vec<ProposedMerge>,
    /// The first splits.
    pub split_examples: Vec<ProposedSplit>,
    /// How long the dry-run took, seconds.
    pub seconds: f64,
    /// What applying it does, step by step (filled by [`apply`]).
    #[serde(skip)]
    plan: Plan,
}

/// Identifiers as kind and raw value.
type RawIdentifiers = Vec<(String, String)>;

/// A part leaving a customer: its touchpoints' positions and its identifiers.
type Part = (Vec<Position>, RawIdentifiers);

/// The corrections a rules change needs, with the identifiers (kind, raw value) they act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Plan {
    /// For each split: the customer, and the touchpoints and identifiers of each part that
    /// leaves it.
    splits: Vec<(CustomerId, Vec<Part>)>,
    /// For each merge: identifiers of the new customer (one per current customer is enough).
    merges: Vec<RawIdentifiers>,
}

/// What applying a rules change did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Splits written.
    pub splits: u64,
    /// Merges written.
    pub merges: u64,
    /// Corrections that found nothing to do (already in place).
    pub unchanged: u64,
    /// Corrections refused, each with its error (the others are applied all the same).
    pub failed: Vec<String>,
}

/// The opened identifiers of a touchpoint.
#[derive(Deserialize)]
struct Carried {
    #[serde(default)]
    identifiers: Vec<Identifier>,
}

/// One touchpoint as the dry-run keeps it.
struct Seen {
    position: Position,
    owner: CustomerId,
    cluster: CustomerId,
    identifiers: Vec<(String, String)>,
}

/// Resolves the whole log again under `rules` and reports what would change. `currency` is
/// the one segment spend is judged in; `progress` is told the position reached and the head.
pub async fn dry_run(
    ingestor: &Ingestor,
    rules: &IdentityRules,
    currency: &str,
    mut progress: impl FnMut(Position, Position),
) -> Result<RulesChange, CorrectionError> {
    let started = std::time::Instant::now();
    let store = ingestor.store();
    let opener = Opener::new(store.clone(), ingestor.master_key().clone());
    let pseudonymous = ingestor.pseudonymous_rules(rules);
    let resolver = Resolver::new(&pseudonymous);
    let aliases = store.aliases().await?;
    let live = |c: CustomerId| aliases.get(&c).copied().unwrap_or(c);
    let moved = moved_touchpoints(store).await?;
    let head = store.head().await?;
    let mut graph = IdentityGraph::new();
    let mut blocked: HashMap<Identifier, bool> = HashMap::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut separated: BTreeSet<(CustomerId, CustomerId)> = BTreeSet::new();
    let mut merged_by_hand: BTreeSet<CustomerId> = BTreeSet::new();
    let mut batches = store.stream_all(0, BATCH);
    while let Some(events) = batches.try_next().await? {
        let last = events.last().map_or(0, |e| e.position);
        for event in opener.open(events).await? {
            let Some(stream) = CustomerId::from_stream(&event.stream_id) else {
                continue;
            };
            let kind = EventKind::of(&event.event_type);
            if kind.is_separation() {
                if let Ok(s) = serde_json::from_str::<Separation>(&event.payload) {
                    separated.insert(ordered(live(stream), live(s.other)));
                }
                continue;
            }
            if kind == EventKind::Merged && event.metadata.reason.is_some() {
                merged_by_hand.insert(live(stream));
            }
            if kind != EventKind::Touchpoint {
                continue;
            }
            let carried: Vec<Identifier> = serde_json::from_str::<Carried>(&event.payload)
                .map(|c| c.identifiers)
                .unwrap_or_default();
            let mut raw = Vec::new();
            let mut keys = Vec::new();
            for id in carried {
                // Normalized again: the new rules may read a kind differently.
                let Ok(normalized) = rules.normalize(id.kind.as_str(), &id.value) else {
                    continue;
                };
                let key = ingestor.pseudonym(&normalized);
                if !blocked.contains_key(&key) {
                    let is = store.is_blocked(&key).await?;
                    blocked.insert(key.clone(), is);
                    if is {
                        graph.block(key.clone());
                    }
                }
                // Kept as stored: corrections look them up under the rules in force.
                raw.push((id.kind.to_string(), id.value.clone()));
                keys.push(key);
            }
            let resolution = resolver.resolve(&graph, &keys, CustomerId::new);
            graph.apply(&resolution);
            seen.push(Seen {
                position: event.position,
                owner: moved
                    .get(&event.position)
                    .copied()
                    .unwrap_or_else(|| live(stream)),
                cluster: resolution.customer,
                identifiers: raw,
            });
        }
        progress(last, head.max(last));
    }
    for s in &mut seen {
        s.cluster = graph.resolve_customer(s.cluster);
    }

    // Current customers against new ones.
    let mut clusters_of: BTreeMap<CustomerId, BTreeSet<CustomerId>> = BTreeMap::new();
    let mut owners_of: BTreeMap<CustomerId, Vec<CustomerId>> = BTreeMap::new();
    for s in &seen {
        clusters_of.entry(s.owner).or_default().insert(s.cluster);
        let owners = owners_of.entry(s.cluster).or_default();
        if !owners.contains(&s.owner) {
            owners.push(s.owner);
        }
    }
    let mut change = RulesChange {
        rules_version: rules.version(),
        touchpoints: seen.len() as u64,
        customers_now: clusters_of.len() as u64,
        customers_after: owners_of.len() as u64,
        ..RulesChange::default()
    };
    let identifiers_of = |cluster: CustomerId, owner: Option<CustomerId>| {
        let mut ids: BTreeSet<(String, String)> = BTreeSet::new();
        for s in seen
            .iter()
            .filter(|s| s.cluster == cluster && owner.is_none_or(|o| s.owner == o))
        {
            ids.extend(s.identifiers.iter().cloned());
        }
        ids
    };
    let mut affected: BTreeSet<CustomerId> = BTreeSet::new();
    let mut new_ones: BTreeSet<CustomerId> = BTreeSet::new();
    for (cluster, owners) in &owners_of {
        if owners.len() < 2 {
            continue;
        }
        let crosses_a_separation = owners.iter().enumerate().any(|(i, a)| {
            owners[i + 1..]
                .iter()
                .any(|b| separated.contains(&ordered(*a, *b)))
        });
        if crosses_a_separation {
            change.held_back += 1;
            continue;
        }
        change.merges += 1;
        affected.extend(owners.iter().copied());
        new_ones.insert(*cluster);
        // One identifier each current customer of the cluster holds finds it when applying.
        let mut handles: Vec<(String, String)> = Vec::new();
        for owner in owners {
            for (kind, value) in identifiers_of(*cluster, Some(*owner)) {
                let held = ingestor
                    .customer_by_identifier(&kind, &value)
                    .await
                    .map_err(|e| CorrectionError::InvalidIdentifier {
                        kind: kind.clone(),
                        reason: e.to_string(),
                    })?;
                if held == Some(*owner) {
                    handles.push((kind, value));
                    break;
                }
            }
        }
        // The kinds of identifiers that touchpoints of more than one of them carried.
        let mut carriers: BTreeMap<&(String, String), BTreeSet<CustomerId>> = BTreeMap::new();
        for s in seen.iter().filter(|s| s.cluster == *cluster) {
            for id in &s.identifiers {
                carriers.entry(id).or_default().insert(s.owner);
            }
        }
        let through: BTreeSet<String> = carriers
            .into_iter()
            .filter(|(_, owners)| owners.len() > 1)
            .map(|((kind, _), _)| kind.clone())
            .collect();
        if change.merge_examples.len() < LISTED {
            change.merge_examples.push(ProposedMerge {
                customers: owners.clone(),
                through: through.into_iter().collect(),
            });
        }
        change.plan.merges.push(handles);
    }
    for (owner, clusters) in &clusters_of {
        if clusters.len() < 2 {
            continue;
        }
        if merged_by_hand.contains(owner) {
            change.held_back += 1;
            continue;
        }
        change.splits += 1;
        affected.insert(*owner);
        // The part with the customer's first touchpoint stays; the others leave.
        let first = seen.iter().find(|s| s.owner == *owner).map(|s| s.cluster);
        let leaving: Vec<CustomerId> = clusters
            .iter()
            .copied()
            .filter(|c| Some(*c) != first)
            .collect();
        new_ones.extend(clusters.iter().copied());
        let touchpoints_leaving = seen
            .iter()
            .filter(|s| s.owner == *owner && leaving.contains(&s.cluster))
            .count();
        if change.split_examples.len() < LISTED {
            change.split_examples.push(ProposedSplit {
                customer: *owner,
                parts: clusters.len(),
                touchpoints_leaving,
            });
        }
        // Each part leaves with the identifiers the customer holds now that only its
        // touchpoints carried (not the staying part's, nor an earlier part's).
        let mut taken: BTreeSet<(String, String)> = first
            .map(|c| identifiers_of(c, Some(*owner)))
            .unwrap_or_default();
        let mut parts: Vec<Part> = Vec::new();
        for cluster in &leaving {
            let positions: Vec<Position> = seen
                .iter()
                .filter(|s| s.owner == *owner && s.cluster == *cluster)
                .map(|s| s.position)
                .collect();
            let mut part = Vec::new();
            for (kind, value) in identifiers_of(*cluster, Some(*owner)) {
                if taken.contains(&(kind.clone(), value.clone())) {
                    continue;
                }
                let held = ingestor
                    .customer_by_identifier(&kind, &value)
                    .await
                    .map_err(|e| CorrectionError::InvalidIdentifier {
                        kind: kind.clone(),
                        reason: e.to_string(),
                    })?;
                if held == Some(*owner) {
                    taken.insert((kind.clone(), value.clone()));
                    part.push((kind, value));
                }
            }
            parts.push((positions, part));
        }
        change.plan.splits.push((*owner, parts));
    }

    segment_shifts(ingestor, &mut change, &seen, &affected, &new_ones, currency).await?;
    change.seconds = started.elapsed().as_secs_f64();
    Ok(change)
}

/// Fills in the segment memberships a change would move. A new customer continues the
/// customer its first touchpoint belongs to now if that customer's first touchpoint starts it
/// too; it is judged on a profile folded from its touchpoints, with the scores of the customer
/// it comes from, against that customer's memberships now (a part split off, a new customer,
/// enters what it is judged in). Customers merged away leave their segments.
async fn segment_shifts(
    ingestor: &Ingestor,
    change: &mut RulesChange,
    seen: &[Seen],
    affected: &BTreeSet<CustomerId>,
    new_ones: &BTreeSet<CustomerId>,
    currency: &str,
) -> Result<(), CorrectionError> {
    let store = ingestor.store();
    let segments = store.segments().await?;
    if segments.is_empty() || affected.is_empty() {
        return Ok(());
    }
    let affected: Vec<CustomerId> = affected.iter().copied().collect();
    let now = store.memberships_of(&affected).await?;
    let scores = store.scores_of(&affected).await?;
    let as_of: DateTime<Utc> = Utc::now();
    let rules: Vec<(String, Rule)> = segments
        .iter()
        .filter_map(|s| {
            let text = match &s.purpose {
                Some(p) => consented(&s.rule, p),
                None => s.rule.clone(),
            };
            Rule::parse_judged(&text).ok().map(|r| (s.name.clone(), r))
        })
        .collect();
    // The new customers' touchpoints, folded.
    let mut positions: BTreeMap<CustomerId, Vec<Position>> = BTreeMap::new();
    let mut origin: BTreeMap<CustomerId, CustomerId> = BTreeMap::new();
    for s in seen.iter().filter(|s| new_ones.contains(&s.cluster)) {
        positions.entry(s.cluster).or_default().push(s.position);
        origin.entry(s.cluster).or_insert(s.owner);
    }
    // Where each affected customer goes on: the new customer of its first touchpoint, if that
    // one starts with it too (otherwise it is merged away).
    let mut first_cluster: BTreeMap<CustomerId, CustomerId> = BTreeMap::new();
    for s in seen {
        first_cluster.entry(s.owner).or_insert(s.cluster);
    }
    let mut entries: BTreeMap<&str, u64> = BTreeMap::new();
    let mut exits: BTreeMap<&str, u64> = BTreeMap::new();
    let member_now = |c: &CustomerId, name: &str| {
        now.get(c)
            .is_some_and(|names| names.iter().any(|n| n == name))
    };
    let mut continued: BTreeSet<CustomerId> = BTreeSet::new();
    for (cluster, positions) in &positions {
        let events: Vec<RecordedEvent> = store.events_at(positions).await?;
        let mut profile = Profile::default();
        profile.refold(&events).map_err(ProjectionError::from)?;
        let from = origin.get(cluster).copied();
        let score = from.and_then(|o| scores.get(&o));
        let tags: BTreeSet<String> = score
            .map(|s| s.tags.iter().cloned().collect())
            .unwrap_or_default();
        let subject = Subject {
            profile: &profile,
            stage: score.map(|s| s.stage.as_str()),
            tier: score.map(|s| s.tier.as_str()),
            rfm_segment: score.and_then(|s| s.rfm_segment.as_deref()),
            rfm: score.and_then(|s| s.rfm),
            tags: &tags,
            currency,
            as_of,
        };
        // The customer this one continues, if any; a part split off is a new customer.
        let continues = from.filter(|o| first_cluster.get(o) == Some(cluster));
        continued.extend(continues);
        for (name, rule) in &rules {
            let after = rule.matches(&subject);
            let before = continues.is_some_and(|o| member_now(&o, name));
            if after && !before {
                *entries.entry(name).or_default() += 1;
            } else if before && !after {
                *exits.entry(name).or_default() += 1;
            }
        }
    }
    // Customers merged away leave every segment.
    for customer in affected.iter().filter(|c| !continued.contains(c)) {
        for (name, _) in &rules {
            if member_now(customer, name) {
                *exits.entry(name).or_default() += 1;
            }
        }
    }
    for (name, _) in &rules {
        let (e, x) = (
            entries.get(name.as_str()).copied().unwrap_or(0),
            exits.get(name.as_str()).copied().unwrap_or(0),
        );
        if e + x > 0 {
            change.segments.push(SegmentShift {
                segment: name.clone(),
                entries: e,
                exits: x,
            });
            change.memberships_moving += e + x;
        }
    }
    Ok(())
}

/// Applies a rules change as corrections by hand with `request`'s actor and reason: the
/// splits first, each part moved off with exactly its touchpoints and the identifiers only they
/// carried, then the merges, each joining the customers that hold the new customer's
/// identifiers by then.
pub async fn apply(
    corrector: &Corrector,
    ingestor: &Ingestor,
    change: &RulesChange,
    request: &Request,
) -> Result<Applied, CorrectionError> {
    let mut applied = Applied::default();
    for (customer, parts) in &change.plan.splits {
        for (positions, identifiers) in parts {
            match corrector
                .split_exactly(*customer, positions, identifiers, request)
                .await
            {
                Ok(outcome) if outcome.applied => applied.splits += 1,
                Ok(_) => applied.unchanged += 1,
                Err(e) => applied
                    .failed
                    .push(format!("split of {customer}: {e} ({})", e.code())),
            }
        }
    }
    for handles in &change.plan.merges {
        let mut holders: Vec<(Position, CustomerId)> = Vec::new();
        for (kind, value) in handles {
            if let Some(holder) =
                ingestor
                    .customer_by_identifier(kind, value)
                    .await
                    .map_err(|e| CorrectionError::InvalidIdentifier {
                        kind: kind.clone(),
                        reason: e.to_string(),
                    })?
            {
                let first = ingestor
                    .store()
                    .read_stream(&holder.stream_id(), 1, 1)
                    .await?
                    .first()
                    .map_or(Position::MAX, |e| e.position);
                if !holders.iter().any(|(_, h)| *h == holder) {
                    holders.push((first, holder));
                }
            }
        }
        holders.sort();
        let Some(((_, survivor), others)) = holders.split_first() else {
            continue;
        };
        for (_, absorbed) in others {
            match corrector.merge(*survivor, *absorbed, request).await {
                Ok(outcome) if outcome.applied => applied.merges += 1,
                Ok(_) => applied.unchanged += 1,
                Err(e) => applied.failed.push(format!(
                    "merge of {absorbed} into {survivor}: {e} ({})",
                    e.code()
                )),
            }
        }
    }
    Ok(applied)
}

/// The touchpoints corrections moved to another customer than their stream's, with their
/// owners now (from the live profiles' holdings).
pub(crate) async fn moved_touchpoints(
    store: &EventStore,
) -> Result<HashMap<Position, CustomerId>, ProjectionError> {
    let mut moved = HashMap::new();
    for row in store.all_profiles(ProfileTable::Live).await? {
        // Only profiles holding moved touchpoints are read.
        if row.merged_into.is_some() || !row.state.contains("\"moved_in\"") {
            continue;
        }
        let profile: Profile =
            serde_json::from_str(&row.state).map_err(|e| StoreError::UnreadableProfile {
                customer: row.customer,
                reason: e.to_string(),
            })?;
        for position in profile.holdings.moved_in {
            moved.insert(position, row.customer);
        }
    }
    Ok(moved)
}
