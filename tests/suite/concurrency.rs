//! Concurrent writers: positions commit in order, and optimistic concurrency picks one winner.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use patron::store::StoreError;
use patron_domain::{EventId, ExpectedVersion, StreamAppend};
use rand::{Rng, SeedableRng};

use crate::helpers::{event, stream, TestStore};

const WRITERS: usize = 4;
const APPENDS_PER_WRITER: usize = 40;
const EVENTS_PER_APPEND: usize = 5;

async fn a_reader_sees_every_event_of_concurrent_writers_once_in_order(t: &TestStore) {
    let total = WRITERS * APPENDS_PER_WRITER * EVENTS_PER_APPEND;
    // The reader follows the log on its own connection while the writers run.
    let reader_store = t.reopen().await;
    let reader = tokio::spawn(async move {
        let mut sub = reader_store.subscribe_all(0, 7);
        let mut seen = Vec::with_capacity(total);
        while seen.len() < total {
            let batch = tokio::time::timeout(Duration::from_secs(60), sub.next_batch())
                .await
                .expect("reader kept up with the writers")
                .expect("read");
            seen.extend(
                batch
                    .into_iter()
                    .map(|e| (e.position, e.event_id, e.stream_id, e.stream_version)),
            );
        }
        reader_store.close().await;
        seen
    });

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = t.reopen().await;
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let mut written = Vec::new();
            for _ in 0..APPENDS_PER_WRITER {
                // Half the appends touch two streams at once, as identity merges do.
                let a = rng.gen_range(0..6);
                let b = (a + 1 + rng.gen_range(0..5)) % 6;
                let split = if rng.gen_bool(0.5) {
                    2
                } else {
                    EVENTS_PER_APPEND
                };
                let events: Vec<_> = (0..EVENTS_PER_APPEND).map(|i| event(i as u64)).collect();
                written.extend(events.iter().map(|e| e.event_id()));
                let mut appends = vec![StreamAppend::new(
                    stream(&format!("customer-{a}")),
                    ExpectedVersion::Any,
                    events[..split].to_vec(),
                )];
                if split < EVENTS_PER_APPEND {
                    appends.push(StreamAppend::new(
                        stream(&format!("customer-{b}")),
                        ExpectedVersion::Any,
                        events[split..].to_vec(),
                    ));
                }
                store.append(appends).await.expect("append");
                tokio::task::yield_now().await;
            }
            store.close().await;
            written
        }));
    }
    let mut written: HashSet<EventId> = HashSet::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    let seen = reader.await.expect("reader");

    assert_eq!(seen.len(), total, "no event seen twice or missed");
    let positions: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "positions in order, no gap"
    );
    let ids: HashSet<EventId> = seen.iter().map(|s| s.1).collect();
    assert_eq!(ids, written, "the reader saw exactly the events written");
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, _, stream_id, version) in &seen {
        versions
            .entry(stream_id.to_string())
            .or_default()
            .push(*version);
    }
    for (stream_id, v) in versions {
        assert_eq!(
            v,
            (1..=v.len() as u64).collect::<Vec<_>>(),
            "versions of {stream_id}"
        );
    }
}

async fn racing_writers_on_one_stream_have_one_winner(t: &TestStore) {
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let store = t.reopen().await;
        tasks.push(tokio::spawn(async move {
            let result = store
                .append_to_stream(
                    stream("customer-race"),
                    ExpectedVersion::NoStream,
                    vec![event(i)],
                )
                .await;
            store.close().await;
            result
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.version, 1);
            }
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 1),
            Err(other) => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(t.store.stats().await.unwrap().events, 1);
}

crate::on_both_stores!(
    a_reader_sees_every_event_of_concurrent_writers_once_in_order,
    racing_writers_on_one_stream_have_one_winner,
);
