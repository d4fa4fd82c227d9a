//! The review queue: likely duplicates the identity rules did not merge, each with a score and
//! its evidence, for an operator to accept (a merge by hand) or reject (remembered: the pair is
//! never suggested again).
//!
//! A scan reads the whole log, opening personal data, and looks for three signals between live
//! customers: the same name, birthday and city in their traits; an auxiliary identifier (a
//! device, a cookie) that one customer holds and the other's touchpoints carried, the rules
//! having refused to merge them over it; two emails one typing error apart. Each signal found
//! adds its weight, `log2(m / u)` bits, to a prior; the score is the probability the sum of
//! log-odds stands for (a Fellegi-Sunter match weight). `docs/corrections.md` explains the
//! numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use patron_domain::customer::CustomerId;
use patron_domain::events::{is_separation, is_touchpoint, ResolutionRecord, Separation};
use patron_domain::identifier::Identifier;
use patron_domain::identity::SkipReason;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::correction::{ordered, CorrectionError, Corrector, Outcome, Request};
use crate::ingest::Ingestor;
use crate::privacy::{Opener, PrivacyFailure};
use crate::store::review::{FoundPair, StoredSuggestion};
use crate::store::{EventStore, StoreError};
use patron_domain::customer::Correction;

/// The prior log-odds, in bits, that two customers a signal links are one person (1 in 10).
pub const PRIOR_BITS: f64 = -std::f64::consts::LOG2_10;
/// The lowest score kept in the queue.
pub const MIN_SCORE: f64 = 0.5;
/// Groups of customers sharing name, birthday and city larger than this are not suggested:
/// so common a combination says little.
const MAX_GROUP: usize = 20;
/// Events read at a time.
const BATCH: usize = 5_000;

/// A signal that two customers are one person, with its probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signal {
    /// Its name in the evidence.
    pub name: &'static str,
    /// P(signal | one person).
    pub m: f64,
    /// P(signal | two people).
    pub u: f64,
}

impl Signal {
    /// Its weight, in bits: `log2(m / u)`.
    pub fn weight(&self) -> f64 {
        (self.m / self.u).log2()
    }
}

/// The same name, birthday and city in both customers' traits.
pub const SAME_NAME_BIRTHDAY_CITY: Signal = Signal {
    name: "same_name_birthday_city",
    m: 0.9,
    u: 1e-6,
};
/// An auxiliary identifier held by one, carried by the other's touchpoints.
pub const SHARED_AUXILIARY: Signal = Signal {
    name: "shared_auxiliary_identifier",
    m: 0.2,
    u: 0.01,
};
/// Two emails one typing error (insertion, deletion, substitution, transposition) apart.
pub const EMAIL_TYPO: Signal = Signal {
    name: "email_one_typo_apart",
    m: 0.05,
    u: 1e-4,
};

/// One piece of evidence for a suggestion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The signal.
    pub signal: String,
    /// Its weight, in bits.
    pub weight_bits: f64,
    /// What was seen (no personal data: kinds and positions, not values).
    pub detail: String,
}

/// The probability that a pair with this evidence is one person.
pub fn score(evidence: &[Evidence]) -> f64 {
    let bits = PRIOR_BITS + evidence.iter().map(|e| e.weight_bits).sum::<f64>();
    1.0 / (1.0 + (-bits).exp2())
}

/// What went wrong with the review queue.
#[derive(Debug, Error)]
pub enum ReviewError {
    /// No suggestion has this number.
    #[error("no suggestion {0}")]
    NotFound(i64),
    /// The suggestion was decided already.
    #[error("suggestion {id} is {status} already")]
    Decided {
        /// Its number.
        id: i64,
        /// Its status.
        status: String,
    },
    /// A reason is needed.
    #[error("reason: a decision needs a reason, for the history")]
    MissingReason,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Events did not open.
    #[error(transparent)]
    Privacy(#[from] PrivacyFailure),
    /// The merge of an accepted suggestion failed.
    #[error(transparent)]
    Correction(#[from] CorrectionError),
}

impl ReviewError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NOT_FOUND",
            Self::Decided { .. } => "ALREADY_DECIDED",
            Self::MissingReason => "REASON_REQUIRED",
            Self::Store(e) => e.code(),
            Self::Privacy(e) => e.code(),
            Self::Correction(e) => e.code(),
        }
    }
}

/// What a scan did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScanReport {
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Live customers seen.
    pub customers: u64,
    /// Pairs with a score of at least [`MIN_SCORE`].
    pub pairs: u64,
    /// Of those, pairs not suggested before.
    pub new: u64,
    /// Open suggestions this scan no longer found (their customers changed), withdrawn.
    pub withdrawn: u64,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// A suggestion with its evidence read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    /// The stored row.
    #[serde(flatten)]
    pub stored: StoredSuggestion,
    /// Its evidence.
    pub evidence: Vec<Evidence>,
}

/// The review queue of one store.
#[derive(Clone, Debug)]
pub struct Reviewer {
    ingestor: Ingestor,
    opener: Opener,
    corrector: Corrector,
}

/// The traits a scan compares.
#[derive(Default)]
struct Traits {
    name: Option<(DateTime<Utc>, String)>,
    birthday: Option<(DateTime<Utc>, String)>,
    city: Option<(DateTime<Utc>, String)>,
}

/// Keeps the later of two dated values.
fn later(slot: &mut Option<(DateTime<Utc>, String)>, at: DateTime<Utc>, value: Option<&str>) {
    if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
        if slot.as_ref().is_none_or(|(t, _)| *t <= at) {
            *slot = Some((at, value.to_lowercase()));
        }
    }
}

/// The opened members of a touchpoint a scan reads.
#[derive(Deserialize)]
struct Opened {
    #[serde(default)]
    identifiers: Vec<Identifier>,
    #[serde(default)]
    resolution: Option<ResolutionRecord>,
    #[serde(default)]
    action: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Reviewer {
    /// The review queue over `ingestor`'s store, merging accepted pairs with `corrector`.
    pub fn new(ingestor: Ingestor, corrector: Corrector) -> Self {
        let opener = Opener::new(ingestor.store().clone(), ingestor.master_key().clone());
        Self {
            ingestor,
            opener,
            corrector,
        }
    }

    fn store(&self) -> &EventStore {
        self.ingestor.store()
    }

    /// Reads the whole log and records the likely duplicates it finds; `progress` is told the
    /// position reached and the head.
    #[tracing::instrument(name = "review.scan", skip_all)]
    pub async fn scan(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ScanReport, ReviewError> {
        let started = std::time::Instant::now();
        let aliases = self.store().aliases().await?;
        let live = |c: CustomerId| aliases.get(&c).copied().unwrap_or(c);
        let moved = crate::correction::dry_run::moved_touchpoints(self.store())
            .await
            .map_err(CorrectionError::from)?;
        let head = self.store().head().await?;
        let mut report = ScanReport::default();
        let mut traits: HashMap<CustomerId, Traits> = HashMap::new();
        let mut emails: BTreeMap<String, Identifier> = BTreeMap::new();
        let mut found: BTreeMap<(CustomerId, CustomerId), Vec<Evidence>> = BTreeMap::new();
        let mut separated: BTreeSet<(CustomerId, CustomerId)> = BTreeSet::new();
        let mut customers: BTreeSet<CustomerId> = BTreeSet::new();
        let mut batches = self.store().stream_all(0, BATCH);
        while let Some(events) = batches.try_next().await? {
            let last = events.last().map_or(0, |e| e.position);
            for event in self.opener.open(events).await? {
                let Some(stream) = CustomerId::from_stream(&event.stream_id) else {
                    continue;
                };
                let owner = live(stream);
                if is_separation(&event.event_type) {
                    if let Ok(s) = serde_json::from_str::<Separation>(&event.payload) {
                        separated.insert(ordered(owner, live(s.other)));
                        separated.insert(ordered(stream, s.other));
                    }
                    continue;
                }
                if !is_touchpoint(&event.event_type) {
                    continue;
                }
                // A touchpoint a correction moved belongs to its new owner.
                let owner = moved.get(&event.position).copied().unwrap_or(owner);
                report.touchpoints += 1;
                customers.insert(owner);
                let Ok(opened) = serde_json::from_str::<Opened>(&event.payload) else {
                    continue;
                };
                if let Some(action) = opened.action.as_ref() {
                    let text = |k: &str| action.get(k).and_then(|v| v.as_str());
                    let t = traits.entry(owner).or_default();
                    later(&mut t.name, event.occurred_at, text("name"));
                    later(&mut t.birthday, event.occurred_at, text("birthday"));
                    later(&mut t.city, event.occurred_at, text("city"));
                }
                for id in opened
                    .identifiers
                    .iter()
                    .filter(|i| i.kind.as_str() == "email")
                {
                    emails
                        .entry(id.value.clone())
                        .or_insert_with(|| self.ingestor.pseudonym(id));
                }
                for skipped in opened.resolution.iter().flat_map(|r| &r.skipped) {
                    if let SkipReason::HeldByOther { customer } = skipped.reason {
                        let kind = opened
                            .identifiers
                            .get(skipped.identifier)
                            .map_or("identifier", |i| i.kind.as_str());
                        let other = live(customer);
                        if other != owner {
                            add(
                                &mut found,
                                ordered(owner, other),
                                &SHARED_AUXILIARY,
                                format!(
                                    "a {kind} held by {other} came with a touchpoint of {owner} \
                                     (position {})",
                                    event.position
                                ),
                            );
                        }
                    }
                }
            }
            progress(last, head.max(last));
        }
        report.customers = customers.len() as u64;

        // The same name, birthday and city.
        let mut groups: BTreeMap<(String, String, String), Vec<CustomerId>> = BTreeMap::new();
        for (customer, t) in &traits {
            if let (Some((_, n)), Some((_, b)), Some((_, c))) = (&t.name, &t.birthday, &t.city) {
                groups
                    .entry((n.clone(), b.clone(), c.clone()))
                    .or_default()
                    .push(*customer);
            }
        }
        for members in groups
            .values()
            .filter(|m| m.len() > 1 && m.len() <= MAX_GROUP)
        {
            for (i, a) in members.iter().enumerate() {
                for b in &members[i + 1..] {
                    add(
                        &mut found,
                        ordered(*a, *b),
                        &SAME_NAME_BIRTHDAY_CITY,
                        "the same name, birthday and city in their traits".into(),
                    );
                }
            }
        }

        // Emails one typing error apart, held by different customers: candidates share a
        // one-deletion variant (a symmetric-delete index), then the distance is checked.
        let mut holders: BTreeMap<&str, CustomerId> = BTreeMap::new();
        for (email, pseudonym) in &emails {
            if let Some(holder) = self.store().holder(pseudonym).await? {
                holders.insert(email, holder);
            }
        }
        let mut variants: HashMap<String, Vec<&str>> = HashMap::new();
        for email in holders.keys() {
            for variant in deletions(email) {
                variants.entry(variant).or_default().push(email);
            }
        }
        let mut typo_pairs: BTreeSet<(CustomerId, CustomerId)> = BTreeSet::new();
        for candidates in variants.values().filter(|c| c.len() > 1) {
            for (i, a) in candidates.iter().enumerate() {
                for b in &candidates[i + 1..] {
                    let (ha, hb) = (holders[a], holders[b]);
                    if ha != hb && a != b && is_typo(a, b) && typo_pairs.insert(ordered(ha, hb)) {
                        add(
                            &mut found,
                            ordered(ha, hb),
                            &EMAIL_TYPO,
                            "their emails differ by one typing error".into(),
                        );
                    }
                }
            }
        }

        // Pairs rejected before stay rejected, even when either side was merged into another
        // customer since (their ids then stand for the survivors).
        let rejected: BTreeSet<(CustomerId, CustomerId)> = self
            .store()
            .suggestions("rejected", usize::MAX)
            .await?
            .into_iter()
            .map(|s| ordered(live(s.first), live(s.second)))
            .collect();
        let pairs: Vec<FoundPair> = found
            .into_iter()
            .filter(|(pair, _)| {
                pair.0 != pair.1 && !separated.contains(pair) && !rejected.contains(pair)
            })
            .map(|(pair, evidence)| (pair, score(&evidence), evidence))
            .filter(|(_, score, _)| *score >= MIN_SCORE)
            .map(|(pair, score, evidence)| FoundPair {
                pair,
                score,
                evidence: serde_json::to_string(&evidence).unwrap_or_else(|_| "[]".into()),
            })
            .collect();
        report.pairs = pairs.len() as u64;
        (report.new, report.withdrawn) =
            self.store().record_suggestions(&pairs, Utc::now()).await?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The open suggestions, highest score first, at most `max`; pairs that are one customer
    /// by now are left out.
    pub async fn queue(&self, max: usize) -> Result<Vec<Suggestion>, ReviewError> {
        let mut open = Vec::new();
        for stored in self.store().suggestions("open", max).await? {
            let (a, b) = (
                self.store().live_customer(stored.first).await?,
                self.store().live_customer(stored.second).await?,
            );
            if a == b {
                continue;
            }
            let evidence = serde_json::from_str(&stored.evidence).unwrap_or_default();
            open.push(Suggestion { stored, evidence });
        }
        Ok(open)
    }

    /// Accepts a suggestion: the two customers are merged by hand (the one seen first
    /// survives) and the decision is kept.
    pub async fn accept(&self, id: i64, actor: &str, reason: &str) -> Result<Outcome, ReviewError> {
        let stored = self.open(id, reason).await?;
        let (a, b) = (stored.first, stored.second);
        let first_seen = |c: CustomerId| async move {
            Ok::<_, StoreError>(
                self.store()
                    .read_stream(&c.stream_id(), 1, 1)
                    .await?
                    .first()
                    .map_or(u64::MAX, |e| e.position),
            )
        };
        let (survivor, absorbed) = if first_seen(a).await? <= first_seen(b).await? {
            (a, b)
        } else {
            (b, a)
        };
        // Claimed first, so that a concurrent decision on it loses; given back if the merge
        // fails.
        if !self
            .store()
            .decide_suggestion(id, "accepted", actor, reason, Utc::now())
            .await?
        {
            return Err(self.decided(id).await);
        }
        let merged = self
            .corrector
            .correct(
                Correction::Merge { survivor, absorbed },
                &Request {
                    actor: actor.to_owned(),
                    reason: format!("duplicate suggestion {id} accepted: {reason}"),
                    expected_version: None,
                },
            )
            .await;
        match merged {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.store().reopen_suggestion(id).await?;
                Err(e.into())
            }
        }
    }

    /// Rejects a suggestion: the pair is never suggested again.
    pub async fn reject(&self, id: i64, actor: &str, reason: &str) -> Result<(), ReviewError> {
        self.open(id, reason).await?;
        if !self
            .store()
            .decide_suggestion(id, "rejected", actor, reason, Utc::now())
            .await?
        {
            return Err(self.decided(id).await);
        }
        Ok(())
    }

    /// The error for a suggestion someone else decided meanwhile.
    async fn decided(&self, id: i64) -> ReviewError {
        match self.store().suggestion(id).await {
            Ok(Some(s)) => ReviewError::Decided {
                id,
                status: s.status,
            },
            Ok(None) => ReviewError::NotFound(id),
            Err(e) => e.into(),
        }
    }

    /// The open suggestion `id`.
    async fn open(&self, id: i64, reason: &str) -> Result<StoredSuggestion, ReviewError> {
        if reason.trim().is_empty() {
            return Err(ReviewError::MissingReason);
        }
        let stored = self
            .store()
            .suggestion(id)
            .await?
            .ok_or(ReviewError::NotFound(id))?;
        if stored.status != "open" {
            return Err(ReviewError::Decided {
                id,
                status: stored.status,
            });
        }
        Ok(stored)
    }
}

/// Adds a signal to a pair's evidence, once per signal.
fn add(
    found: &mut BTreeMap<(CustomerId, CustomerId), Vec<Evidence>>,
    pair: (CustomerId, CustomerId),
    signal: &Signal,
    detail: String,
) {
    let evidence = found.entry(pair).or_default();
    if !evidence.iter().any(|e| e.signal == signal.name) {
        evidence.push(Evidence {
            signal: signal.name.to_owned(),
            weight_bits: signal.weight(),
            detail,
        });
    }
}

/// Whether two emails are one typing error apart (an insertion, a deletion, a substitution
/// or a transposition) in letters or punctuation: a differing digit (`lily88`, `lily89`) more
/// often names another account than a slip of the finger.
fn is_typo(a: &str, b: &str) -> bool {
    if strsim::damerau_levenshtein(a, b) != 1 {
        return false;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let differing = a[prefix..a.len() - suffix]
        .iter()
        .chain(&b[prefix..b.len() - suffix]);
    !differing.clone().any(char::is_ascii_digit)
}

/// A text and every text one character shorter (by characters, not bytes).
fn deletions(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = vec![text.to_owned()];
    for skip in 0..chars.len() {
        out.push(
            chars
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, c)| c)
                .collect(),
        );
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_scores_are_the_log_likelihood_ratios_hand_computed() {
        // log2(0.9 / 1e-6) = log2(900,000) = 19.7796...
        assert!((SAME_NAME_BIRTHDAY_CITY.weight() - 19.779_565_476).abs() < 1e-6);
        // log2(0.2 / 0.01) = log2(20) = 4.3219...
        assert!((SHARED_AUXILIARY.weight() - 4.321_928_095).abs() < 1e-6);
        // log2(0.05 / 1e-4) = log2(500) = 8.9657...
        assert!((EMAIL_TYPO.weight() - 8.965_784_285).abs() < 1e-6);
        let e = |s: &Signal| Evidence {
            signal: s.name.into(),
            weight_bits: s.weight(),
            detail: String::new(),
        };
        // A shared device alone: odds 1/10 * 20 = 2, probability 2/3.
        assert!((score(&[e(&SHARED_AUXILIARY)]) - 2.0 / 3.0).abs() < 1e-12);
        // An email typo alone: odds 1/10 * 500 = 50, probability 50/51.
        assert!((score(&[e(&EMAIL_TYPO)]) - 50.0 / 51.0).abs() < 1e-12);
        // Both: odds 1/10 * 20 * 500 = 1000, probability 1000/1001.
        assert!((score(&[e(&SHARED_AUXILIARY), e(&EMAIL_TYPO)]) - 1000.0 / 1001.0).abs() < 1e-12);
        // No evidence: the prior, 1/11.
        assert!((score(&[]) - 1.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn one_deletion_variants_meet_for_every_single_typo() {
        let share = |a: &str, b: &str| {
            let da: BTreeSet<String> = deletions(a).into_iter().collect();
            deletions(b).iter().any(|v| da.contains(v))
        };
        assert!(share("li.wei@example.cn", "li.wei@exmple.cn"), "deletion");
        assert!(
            share("li.wei@example.cn", "li.wei@example.cnn"),
            "insertion"
        );
        assert!(
            share("li.wei@example.cn", "li.wek@example.cn"),
            "substitution"
        );
        assert!(
            share("li.wei@example.cn", "li.wie@example.cn"),
            "transposition"
        );
        assert!(!share("li.wei@example.cn", "wang.fang@example.cn"));
    }

    #[test]
    fn a_typo_is_one_slip_in_letters_not_a_different_number() {
        assert!(is_typo("li.wei@example.cn", "li.wie@example.cn"));
        assert!(is_typo("li.wei@example.cn", "li.wei@exmple.cn"));
        assert!(is_typo("li.wei@example.cn", "liwei@example.cn"));
        assert!(!is_typo("user1234@example.cn", "user1235@example.cn"));
        assert!(!is_typo("lily88@example.cn", "lily8@example.cn"));
        assert!(!is_typo("li.wei@example.cn", "li.wei@example.cn"));
        assert!(
            !is_typo("li.wei@example.cn", "li.wie@exmple.cn"),
            "two slips"
        );
    }
}
