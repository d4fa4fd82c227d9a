//! The part of an append that is the same on every backend: checking a commit against what is
//! stored and laying out the rows to write.

use std::collections::{HashMap, HashSet};

use chrono::{SubsecRound, Utc};
use patron_domain::{EventId, NewEvent, Position, StreamAppend, StreamId, StreamVersion};

use super::error::{Result, StoreError};
use super::{AppendOutcome, EventOutcome, EventRef, StreamOutcome};

/// A stream as the store knows it: its integer key (if it exists) and its last version.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamState {
    pub key: Option<i64>,
    pub version: StreamVersion,
}

/// One event row to insert.
pub(crate) struct Row<'a> {
    pub position: Position,
    pub stream_index: usize,
    pub stream_version: StreamVersion,
    pub event: &'a NewEvent,
}

/// What to write, and what to answer once written.
pub(crate) struct Plan<'a> {
    pub rows: Vec<Row<'a>>,
    /// Streams (by index into the commit) that must be created.
    pub new_streams: Vec<usize>,
    /// Each stream's integer key, by index into the commit; `None` until a new one is created.
    pub stream_keys: Vec<Option<i64>>,
    pub outcome: AppendOutcome,
}

/// Every event id of a commit, in order.
pub(crate) fn event_ids(appends: &[StreamAppend]) -> Vec<EventId> {
    appends
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.event_id()))
        .collect()
}

/// Checks a commit's shape before any IO: no repeated event ids or streams, no empty appends.
pub(crate) fn validate(appends: &[StreamAppend]) -> Result<()> {
    let mut ids = HashSet::new();
    let mut streams = HashSet::new();
    for append in appends {
        if append.events.is_empty() {
            return Err(StoreError::EmptyAppend {
                stream_id: append.stream_id.clone(),
            });
        }
        if !streams.insert(&append.stream_id) {
            return Err(StoreError::StreamRepeated {
                stream_id: append.stream_id.clone(),
            });
        }
        for event in &append.events {
            if !ids.insert(event.event_id()) {
                return Err(StoreError::DuplicateInAppend {
                    event_id: event.event_id(),
                });
            }
        }
    }
    Ok(())
}

/// Lays out the rows of a commit, stamped as recorded now. `stored` maps ids already in the log
/// to where they are; `states` gives every named stream's current state. Positions follow
/// `order` when given (the stream index of each event, in the order the events happened, across
/// streams), or else stream after stream. Fails with a conflict, writing nothing, if a stream
/// that receives new events is not at its expected version.
pub(crate) fn plan<'a>(
    appends: &'a [StreamAppend],
    stored: &HashMap<EventId, EventRef>,
    states: &HashMap<StreamId, StreamState>,
    head: Position,
    order: Option<&[usize]>,
) -> Result<Plan<'a>> {
    let recorded_at = Utc::now().trunc_subsecs(6);
    let mut new_streams = Vec::new();
    let mut versions = Vec::with_capacity(appends.len());
    for (index, append) in appends.iter().enumerate() {
        let state = states.get(&append.stream_id).copied().unwrap_or_default();
        let fresh = append
            .events
            .iter()
            .filter(|e| !stored.contains_key(&e.event_id()))
            .count();
        if fresh > 0 && !append.expected.admits(state.version) {
            return Err(StoreError::Conflict {
                stream_id: append.stream_id.clone(),
                expected: append.expected,
                actual: state.version,
            });
        }
        if fresh > 0 && state.key.is_none() {
            new_streams.push(index);
        }
        versions.push(state.version);
    }

    let total: usize = appends.iter().map(|a| a.events.len()).sum();
    let sequence: Vec<usize> = match order {
        Some(order) => {
            let mut counts = vec![0usize; appends.len()];
            for &s in order {
                if let Some(c) = counts.get_mut(s) {
                    *c += 1;
                }
            }
            let matches = order.len() == total
                && counts
                    .iter()
                    .zip(appends)
                    .all(|(c, a)| *c == a.events.len());
            if !matches {
                return Err(StoreError::Abandoned {
                    reason: "the commit's event order does not match its streams".into(),
                });
            }
            order.to_vec()
        }
        None => appends
            .iter()
            .enumerate()
            .flat_map(|(i, a)| std::iter::repeat_n(i, a.events.len()))
            .collect(),
    };

    let mut position = head;
    let mut rows = Vec::with_capacity(total);
    let mut cursors = vec![0usize; appends.len()];
    let mut outcomes: Vec<Vec<EventOutcome>> = appends
        .iter()
        .map(|a| Vec::with_capacity(a.events.len()))
        .collect();
    for index in sequence {
        let append = &appends[index];
        let event = &append.events[cursors[index]];
        cursors[index] += 1;
        if let Some(original) = stored.get(&event.event_id()) {
            outcomes[index].push(EventOutcome::Duplicate(original.clone()));
            continue;
        }
        position += 1;
        versions[index] += 1;
        rows.push(Row {
            position,
            stream_index: index,
            stream_version: versions[index],
            event,
        });
        outcomes[index].push(EventOutcome::Appended(EventRef {
            event_id: event.event_id(),
            position,
            stream_id: append.stream_id.clone(),
            stream_version: versions[index],
        }));
    }
    let streams = appends
        .iter()
        .zip(outcomes)
        .zip(versions)
        .map(|((append, events), version)| StreamOutcome {
            stream_id: append.stream_id.clone(),
            version,
            events,
        })
        .collect();
    Ok(Plan {
        rows,
        new_streams,
        stream_keys: appends
            .iter()
            .map(|a| states.get(&a.stream_id).and_then(|s| s.key))
            .collect(),
        outcome: AppendOutcome {
            streams,
            head: position,
            recorded_at,
        },
    })
}
