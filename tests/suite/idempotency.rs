//! Idempotency by event id: a resent event is stored once and reported with its original place.

use patron::store::EventOutcome;
use patron_domain::{EventId, ExpectedVersion, StreamAppend};

use crate::helpers::{event, event_with_id, stream, TestStore};

async fn a_resent_event_is_stored_once_and_reports_the_original(t: &TestStore) {
    let store = &t.store;
    let id = EventId::from_uuid(uuid::Uuid::new_v4());
    let first = store
        .append_to_stream(
            stream("customer-a"),
            ExpectedVersion::NoStream,
            vec![event_with_id(1, id)],
        )
        .await
        .unwrap();
    let original = first.events[0].event_ref().clone();
    assert!(matches!(first.events[0], EventOutcome::Appended(_)));

    // A retry of the same append, with its now stale expected version, succeeds as a no-op.
    let again = store
        .append_to_stream(
            stream("customer-a"),
            ExpectedVersion::NoStream,
            vec![event_with_id(1, id)],
        )
        .await
        .unwrap();
    assert_eq!(
        again.events,
        vec![EventOutcome::Duplicate(original.clone())]
    );
    assert_eq!(again.version, 1);

    // The same id sent to another stream is still the original event, in its original stream.
    let elsewhere = store
        .append_to_stream(
            stream("customer-b"),
            ExpectedVersion::Any,
            vec![event_with_id(9, id)],
        )
        .await
        .unwrap();
    assert_eq!(
        elsewhere.events,
        vec![EventOutcome::Duplicate(original.clone())]
    );
    assert_eq!(
        store.stream_version(&stream("customer-b")).await.unwrap(),
        0
    );

    let stats = store.stats().await.unwrap();
    assert_eq!((stats.events, stats.head), (1, 1));
}

async fn a_partly_resent_batch_stores_only_the_new_events(t: &TestStore) {
    let store = &t.store;
    let (a, b, c) = (event(1), event(2), event(3));
    store
        .append_to_stream(
            stream("customer-c"),
            ExpectedVersion::NoStream,
            vec![a.clone(), b.clone()],
        )
        .await
        .unwrap();
    let outcome = store
        .append(vec![StreamAppend::new(
            stream("customer-c"),
            ExpectedVersion::Exact(2),
            vec![a.clone(), c.clone(), b.clone()],
        )])
        .await
        .unwrap();
    assert_eq!((outcome.appended(), outcome.duplicates()), (1, 2));
    let statuses: Vec<(bool, u64)> = outcome
        .events()
        .map(|e| {
            (
                matches!(e, EventOutcome::Appended(_)),
                e.event_ref().stream_version,
            )
        })
        .collect();
    assert_eq!(statuses, vec![(false, 1), (true, 3), (false, 2)]);

    let ids: Vec<EventId> = store
        .read_all(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, vec![a.event_id(), b.event_id(), c.event_id()]);
}

async fn find_events_reports_only_stored_ids(t: &TestStore) {
    let store = &t.store;
    let stored = event(1);
    store
        .append_to_stream(
            stream("customer-d"),
            ExpectedVersion::Any,
            vec![stored.clone()],
        )
        .await
        .unwrap();
    let missing = EventId::new();
    let found = store
        .find_events(&[missing, stored.event_id()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].event_id, stored.event_id());
    assert_eq!(found[0].stream_id, stream("customer-d"));
    assert_eq!((found[0].position, found[0].stream_version), (1, 1));
    assert!(store.find_events(&[]).await.unwrap().is_empty());
}

crate::on_both_stores!(
    a_resent_event_is_stored_once_and_reports_the_original,
    a_partly_resent_batch_stores_only_the_new_events,
    find_events_reports_only_stored_ids,
);
