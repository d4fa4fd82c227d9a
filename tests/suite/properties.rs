//! Property: ingestion is idempotent. Any sequence of sends, with any events resent, leaves the
//! log holding each event once, where it was first stored, as a simple model predicts.

use std::collections::{BTreeSet, HashMap};

use patron::store::EventOutcome;
use patron_domain::{EventId, ExpectedVersion};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::helpers::{event_with_id, stream, Backend, TestStore};

/// One append: a stream (0 to 2) and the small ids of the events sent (distinct within it).
type Send = (u8, BTreeSet<u8>);

fn sends() -> impl Strategy<Value = Vec<Send>> {
    prop::collection::vec((0..3u8, prop::collection::btree_set(0..12u8, 1..4)), 1..20)
}

fn id(n: u8) -> EventId {
    EventId::from_uuid(uuid::Uuid::from_u128(
        0x0192_0000_0000_7000_8000_0000_0000_0000 + u128::from(n),
    ))
}

async fn check(backend: Backend, sends: Vec<Send>) -> Result<(), TestCaseError> {
    let Some(t) = TestStore::open(backend).await else {
        return Ok(());
    };
    // The model: where each id was first stored, and each stream's version.
    let mut stored: HashMap<u8, (u64, u8, u64)> = HashMap::new();
    let mut versions = [0u64; 3];
    let mut order: Vec<u8> = Vec::new();
    for (s, ids) in &sends {
        let events = ids
            .iter()
            .map(|&n| event_with_id(u64::from(n), id(n)))
            .collect();
        let outcome = t
            .store
            .append_to_stream(
                stream(&format!("customer-{s}")),
                ExpectedVersion::Any,
                events,
            )
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (&n, got) in ids.iter().zip(&outcome.events) {
            match stored.get(&n) {
                Some(&(position, stream_n, version)) => {
                    prop_assert!(
                        matches!(got, EventOutcome::Duplicate(_)),
                        "resent {} not a duplicate",
                        n
                    );
                    let r = got.event_ref();
                    prop_assert_eq!((r.position, r.stream_version), (position, version));
                    prop_assert_eq!(r.stream_id.to_string(), format!("customer-{stream_n}"));
                }
                None => {
                    prop_assert!(
                        matches!(got, EventOutcome::Appended(_)),
                        "new {} not appended",
                        n
                    );
                    versions[usize::from(*s)] += 1;
                    let entry = (order.len() as u64 + 1, *s, versions[usize::from(*s)]);
                    stored.insert(n, entry);
                    order.push(n);
                    let r = got.event_ref();
                    prop_assert_eq!((r.position, r.stream_version), (entry.0, entry.2));
                }
            }
        }
    }
    let log = t
        .store
        .read_all(0, 1000)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let expected: Vec<(u64, EventId, String, u64)> = order
        .iter()
        .map(|n| {
            let (p, s, v) = stored[n];
            (p, id(*n), format!("customer-{s}"), v)
        })
        .collect();
    let actual: Vec<(u64, EventId, String, u64)> = log
        .iter()
        .map(|e| {
            (
                e.position,
                e.event_id,
                e.stream_id.to_string(),
                e.stream_version,
            )
        })
        .collect();
    prop_assert_eq!(actual, expected);
    t.finish().await;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sqlite_ingestion_is_idempotent(sends in sends()) {
        runtime().block_on(check(Backend::Sqlite, sends))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn postgres_ingestion_is_idempotent(sends in sends()) {
        runtime().block_on(check(Backend::Postgres, sends))?;
    }
}
