//! Bitemporal time travel: a customer's profile as it was at a time T, as the log knew it at
//! a time K.
//!
//! Two times matter for every event: when it happened (`occurred_at`, valid time) and when the
//! log stored it (`recorded_at`, transaction time). The profile at T as known at K folds the
//! touchpoints that happened by T among those stored by K, owned by the customer as the
//! identity events stored by K decided. With K = T it is what anyone could have seen at T;
//! with K = now it is what the log now says the customer was at T, late offline data and
//! corrections included. Both are replays of the log: nothing is read from the live tables
//! but the current profile's holdings, to find the streams to read.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use patron_domain::customer::CustomerId;
use patron_domain::events::{is_touchpoint, EventKind, Separation};
use patron_domain::{Position, RecordedEvent};
use patron_projections::holdings::Holdings;
use patron_projections::profile::{self, Profile};
use serde::Deserialize;

use crate::projection::ProjectionError;
use crate::store::{EventStore, StoreError};

/// The most streams one time-travel query reads (a customer, those merged with it and those
/// separated from it, transitively).
const MAX_STREAMS: usize = 10_000;

/// The profile of `customer` (any of its ids) as it was at `valid_at`, as the log knew it at
/// `known_at` (now, when `None`). `None` when the customer did not exist yet.
pub async fn profile_as_of(
    store: &EventStore,
    customer: CustomerId,
    valid_at: DateTime<Utc>,
    known_at: Option<DateTime<Utc>>,
) -> Result<Option<Profile>, ProjectionError> {
    let upto = match known_at {
        Some(k) => position_recorded_by(store, k).await?,
        None => store.head().await?,
    };
    let streams = related_streams(store, customer).await?;
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut by_stream: HashMap<CustomerId, Vec<usize>> = HashMap::new();
    for stream in &streams {
        for event in store
            .read_stream(&stream.stream_id(), 1, usize::MAX)
            .await?
        {
            if event.position <= upto {
                events.push(event);
            }
        }
    }
    events.sort_by_key(|e| e.position);
    for (i, event) in events.iter().enumerate() {
        if let Some(c) = CustomerId::from_stream(&event.stream_id) {
            by_stream.entry(c).or_default().push(i);
        }
    }
    // The identity as known at `upto`: the fold of every related stream up to there.
    let mut profiles: HashMap<CustomerId, Profile> = HashMap::new();
    profile::fold(&mut profiles, &events)?;
    let Some(mut live) = profiles.contains_key(&customer).then_some(customer) else {
        return Ok(None);
    };
    for _ in 0..profiles.len() {
        match profiles.get(&live).and_then(|p| p.merged_into) {
            Some(next) => live = next,
            None => break,
        }
    }
    let Some(known) = profiles.get(&live) else {
        return Ok(None);
    };
    let holdings = known.holdings.clone();
    let owned = owned_among(&events, &by_stream, live, &holdings, valid_at);
    let mut folded = Profile {
        holdings,
        erased: known.erased,
        ..Profile::default()
    };
    folded.refold(&owned)?;
    Ok(Some(folded))
}

/// The touchpoints among `events` that `customer` with `holdings` owns and that happened by
/// `valid_at`, in log order.
fn owned_among(
    events: &[RecordedEvent],
    by_stream: &HashMap<CustomerId, Vec<usize>>,
    customer: CustomerId,
    holdings: &Holdings,
    valid_at: DateTime<Utc>,
) -> Vec<RecordedEvent> {
    let mut owned: BTreeMap<Position, &RecordedEvent> = BTreeMap::new();
    for stream in holdings.all_streams(customer) {
        for &i in by_stream.get(&stream).into_iter().flatten() {
            let e = &events[i];
            if is_touchpoint(&e.event_type) && holdings.keeps(e.position) {
                owned.insert(e.position, e);
            }
        }
    }
    for e in events {
        if holdings.moved_in.contains(&e.position) && is_touchpoint(&e.event_type) {
            owned.insert(e.position, e);
        }
    }
    owned
        .into_values()
        .filter(|e| e.occurred_at <= valid_at)
        .cloned()
        .collect()
}

/// Every customer whose stream may matter to `customer`'s history: those merged with it, or
/// separated from it, at any time, transitively.
async fn related_streams(
    store: &EventStore,
    customer: CustomerId,
) -> Result<BTreeSet<CustomerId>, ProjectionError> {
    #[derive(Deserialize)]
    struct Relations {
        #[serde(default)]
        absorbed: Option<CustomerId>,
        #[serde(default)]
        survivor: Option<CustomerId>,
    }
    let mut seen: BTreeSet<CustomerId> = BTreeSet::new();
    let mut queue: VecDeque<CustomerId> = VecDeque::new();
    let live = store.live_customer(customer).await?;
    queue.push_back(customer);
    queue.push_back(live);
    match store.live_profile(live).await {
        Ok(Some(profile)) => queue.extend(profile.holdings.streams),
        Ok(None) | Err(StoreError::UnreadableProfile { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    while let Some(next) = queue.pop_front() {
        if seen.len() >= MAX_STREAMS || !seen.insert(next) {
            continue;
        }
        for event in store.read_stream(&next.stream_id(), 1, usize::MAX).await? {
            match EventKind::of(&event.event_type) {
                EventKind::Merged | EventKind::MergedInto => {
                    if let Ok(r) = serde_json::from_str::<Relations>(&event.payload) {
                        queue.extend(r.absorbed.into_iter().chain(r.survivor));
                    }
                }
                kind if kind.is_separation() => {
                    if let Ok(separation) = serde_json::from_str::<Separation>(&event.payload) {
                        queue.push_back(separation.other);
                        queue.extend(separation.streams);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(seen)
}

/// The last position stored at or before `at` (0 if none): positions are given in commit
/// order, so the time each was stored only grows with it.
pub async fn position_recorded_by(
    store: &EventStore,
    at: DateTime<Utc>,
) -> Result<Position, ProjectionError> {
    let (mut low, mut high) = (0, store.head().await?);
    // The answer is in [low, high]: the event at `low` (if any) was stored by `at`.
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        let recorded = store
            .read_all(mid - 1, 1)
            .await?
            .first()
            .map(|e| e.recorded_at);
        match recorded {
            Some(t) if t <= at => low = mid,
            _ => high = mid - 1,
        }
    }
    Ok(low)
}
