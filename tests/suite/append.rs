//! Appending: versions, conflicts, atomic multi-stream commits, refused appends.

use chrono::{TimeZone, Utc};
use patron::store::{EventOutcome, StoreError};
use patron_domain::{ExpectedVersion, NewEvent, StreamAppend};
use serde_json::json;

use crate::helpers::{event, full_metadata, stream, TestStore};

async fn appended_events_read_back_exactly(t: &TestStore) {
    let store = &t.store;
    let metadata = full_metadata();
    let occurred = Utc.with_ymd_and_hms(2026, 3, 8, 9, 30, 15).unwrap()
        + chrono::TimeDelta::microseconds(123_456);
    let first = NewEvent::new(
        "order_placed",
        &json!({"order_id": "PO-1", "amount_minor": 12900, "note": "tab\there, \"quoted\", 中文"}),
    )
    .unwrap()
    .occurred_at(occurred)
    .with_metadata(metadata.clone())
    .with_schema_version(2)
    .unwrap();
    let ids = [first.event_id()];
    let outcome = store
        .append_to_stream(
            stream("customer-a"),
            ExpectedVersion::NoStream,
            vec![first.clone(), event(2), event(3)],
        )
        .await
        .unwrap();
    assert_eq!(outcome.version, 3);
    assert_eq!(outcome.events.len(), 3);

    let events = store
        .read_stream(&stream("customer-a"), 1, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.position, e.stream_version))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 3)]
    );
    let e = &events[0];
    assert_eq!(e.event_id, ids[0]);
    assert_eq!(e.stream_id, stream("customer-a"));
    assert_eq!(e.event_type, "order_placed");
    assert_eq!(e.schema_version, 2);
    assert_eq!(e.occurred_at, occurred);
    assert_eq!(e.metadata, metadata);
    let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(payload["note"], "tab\there, \"quoted\", 中文");
    assert_eq!(payload["amount_minor"], 12900);
    assert!(
        e.recorded_at <= Utc::now() && e.recorded_at > Utc::now() - chrono::TimeDelta::minutes(1)
    );

    // Reading from a later version skips the earlier ones.
    let tail = store
        .read_stream(&stream("customer-a"), 3, 100)
        .await
        .unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].stream_version, 3);
    assert_eq!(
        store.stream_version(&stream("customer-a")).await.unwrap(),
        3
    );
    assert_eq!(
        store
            .stream_version(&stream("customer-none"))
            .await
            .unwrap(),
        0
    );
    assert!(store
        .read_stream(&stream("customer-none"), 1, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_stale_expected_version_conflicts_and_writes_nothing(t: &TestStore) {
    let store = &t.store;
    let s = stream("customer-b");
    store
        .append_to_stream(s.clone(), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();

    let err = store
        .append_to_stream(s.clone(), ExpectedVersion::NoStream, vec![event(2)])
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            stream_id,
            expected,
            actual,
        } => {
            assert_eq!(stream_id, &s);
            assert_eq!(*expected, ExpectedVersion::NoStream);
            assert_eq!(*actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(err.code(), "VERSION_CONFLICT");
    assert!(err.to_string().contains("customer-b"), "{err}");

    let err = store
        .append_to_stream(s.clone(), ExpectedVersion::Exact(5), vec![event(3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 1, .. }),
        "{err:?}"
    );
    assert_eq!(store.head().await.unwrap(), 1, "a conflict writes nothing");

    let ok = store
        .append_to_stream(s.clone(), ExpectedVersion::Exact(1), vec![event(4)])
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
    let ok = store
        .append_to_stream(s.clone(), ExpectedVersion::Any, vec![event(5)])
        .await
        .unwrap();
    assert_eq!(ok.version, 3);
}

async fn a_multi_stream_append_is_all_or_nothing(t: &TestStore) {
    let store = &t.store;
    store
        .append_to_stream(
            stream("customer-old"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        )
        .await
        .unwrap();

    // The second stream's check fails: the first stream must not receive its events either.
    let err = store
        .append(vec![
            StreamAppend::new(
                stream("customer-new"),
                ExpectedVersion::NoStream,
                vec![event(2), event(3)],
            ),
            StreamAppend::new(
                stream("customer-old"),
                ExpectedVersion::Exact(0),
                vec![event(4)],
            ),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(
        store.stream_version(&stream("customer-new")).await.unwrap(),
        0
    );

    // With the right versions both streams are written in one commit, positions contiguous.
    let outcome = store
        .append(vec![
            StreamAppend::new(
                stream("customer-new"),
                ExpectedVersion::NoStream,
                vec![event(2), event(3)],
            ),
            StreamAppend::new(
                stream("customer-old"),
                ExpectedVersion::Exact(1),
                vec![event(4)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(outcome.head, 4);
    assert_eq!(outcome.appended(), 3);
    let positions: Vec<u64> = outcome.events().map(|e| e.event_ref().position).collect();
    assert_eq!(positions, vec![2, 3, 4]);
    assert_eq!(outcome.streams[0].version, 2);
    assert_eq!(outcome.streams[1].version, 2);
    let all = store.read_all(0, 100).await.unwrap();
    let recorded: Vec<_> = all.iter().skip(1).map(|e| e.recorded_at).collect();
    assert!(
        recorded.windows(2).all(|w| w[0] == w[1]),
        "one commit, one recorded time"
    );
}

async fn malformed_appends_are_refused_before_any_write(t: &TestStore) {
    let store = &t.store;
    let err = store
        .append(vec![StreamAppend::new(
            stream("customer-c"),
            ExpectedVersion::Any,
            vec![],
        )])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "EMPTY_APPEND");

    let err = store
        .append(vec![
            StreamAppend::new(stream("customer-c"), ExpectedVersion::Any, vec![event(1)]),
            StreamAppend::new(stream("customer-c"), ExpectedVersion::Any, vec![event(2)]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "STREAM_REPEATED");

    let e = event(3);
    let err = store
        .append(vec![
            StreamAppend::new(stream("customer-c"), ExpectedVersion::Any, vec![e.clone()]),
            StreamAppend::new(stream("customer-d"), ExpectedVersion::Any, vec![e.clone()]),
        ])
        .await
        .unwrap_err();
    match err {
        StoreError::DuplicateInAppend { event_id } => assert_eq!(event_id, e.event_id()),
        other => panic!("expected DuplicateInAppend, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 0);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.events, stats.streams), (0, 0));
}

async fn the_log_survives_reopening(t: &TestStore) {
    let outcome = t
        .store
        .append_to_stream(
            stream("customer-e"),
            ExpectedVersion::NoStream,
            vec![event(1), event(2)],
        )
        .await
        .unwrap();
    let EventOutcome::Appended(first) = &outcome.events[0] else {
        panic!("expected an append");
    };
    t.store.close().await;
    // Opening again runs the migrations again, which must be a no-op.
    let again = t.reopen().await;
    let stats = again.stats().await.unwrap();
    assert_eq!((stats.head, stats.events, stats.streams), (2, 2, 1));
    let found = again.find_events(&[first.event_id]).await.unwrap();
    assert_eq!(found, vec![first.clone()]);
    again
        .append_to_stream(
            stream("customer-e"),
            ExpectedVersion::Exact(2),
            vec![event(3)],
        )
        .await
        .unwrap();
    assert_eq!(again.head().await.unwrap(), 3);
    again.close().await;
}

crate::on_both_stores!(
    appended_events_read_back_exactly,
    a_stale_expected_version_conflicts_and_writes_nothing,
    a_multi_stream_append_is_all_or_nothing,
    malformed_appends_are_refused_before_any_write,
    the_log_survives_reopening,
);

/// Closing the embedded store folds its WAL back into the database file: nothing is left beside
/// it, even after enough writes for the background checkpoints to have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_embedded_store_leaves_only_its_file() {
    let t = TestStore::open(crate::helpers::Backend::Sqlite)
        .await
        .expect("SQLite is always there");
    let file = t.sqlite_file().unwrap();
    // About 25,000 pages of WAL: past the point where the writer asks for a checkpoint.
    let big = "x".repeat(8_000);
    for batch in 0..100u64 {
        let events = (0..100u64)
            .map(|n| NewEvent::new("blob", &json!({"n": batch * 100 + n, "pad": big})).unwrap())
            .collect();
        t.store
            .append(vec![StreamAppend::new(
                stream(&format!("blob-{batch}")),
                ExpectedVersion::Any,
                events,
            )])
            .await
            .unwrap();
    }
    t.store.close().await;
    let wal = format!("{}-wal", file.display());
    assert!(
        std::fs::metadata(&wal).is_err(),
        "{wal} is left after closing"
    );
    let reopened = t.reopen().await;
    assert_eq!(reopened.head().await.unwrap(), 10_000);
    reopened.close().await;
}
