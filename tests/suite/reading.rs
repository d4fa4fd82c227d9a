//! Reading: the whole log in batches, upcasting of old shapes, catch-up subscriptions.

use std::sync::Arc;
use std::time::Duration;

use patron::store::StoreOptions;
use patron_domain::{ExpectedVersion, NewEvent, Upcaster, Upcasters};
use serde_json::{json, Value};

use crate::helpers::{event, stream, Backend, TestStore};

async fn read_all_pages_through_the_log_in_position_order(t: &TestStore) {
    let store = &t.store;
    for i in 0..25u64 {
        store
            .append_to_stream(
                stream(&format!("customer-{}", i % 4)),
                ExpectedVersion::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let mut after = 0;
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let batch = store.read_all(after, 10).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.position;
        sizes.push(batch.len());
        seen.extend(batch.iter().map(|e| {
            (
                e.position,
                e.decode::<Value>().unwrap()["n"].as_u64().unwrap(),
            )
        }));
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    let expected: Vec<(u64, u64)> = (0..25).map(|i| (i + 1, i)).collect();
    assert_eq!(seen, expected);
    assert!(store.read_all(25, 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .read_all(20, 2)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![21, 22]
    );
}

/// v1 of `profile_updated` had one `name`; v2 splits it into `given_name` and `family_name`.
struct SplitName;
impl Upcaster for SplitName {
    fn event_type(&self) -> &str {
        "profile_updated"
    }
    fn reads_version(&self) -> u32 {
        1
    }
    fn upcast(&self, mut payload: Value) -> Result<Value, String> {
        let name = payload["name"]
            .as_str()
            .ok_or("`name` is missing")?
            .to_owned();
        let (family, given) =
            name.split_at(name.char_indices().nth(1).map_or(name.len(), |(i, _)| i));
        payload = json!({"family_name": family, "given_name": given});
        Ok(payload)
    }
}

async fn old_shapes_are_upcast_on_every_read(backend: Backend) {
    let options = StoreOptions {
        upcasters: Arc::new(Upcasters::new().register(SplitName)),
        ..StoreOptions::default()
    };
    let Some(t) = TestStore::open_with(backend, options).await else {
        return;
    };
    let store = &t.store;
    let old = NewEvent::new("profile_updated", &json!({"name": "王小明"})).unwrap();
    let current = NewEvent::new(
        "profile_updated",
        &json!({"family_name": "李", "given_name": "娜"}),
    )
    .unwrap()
    .with_schema_version(2)
    .unwrap();
    store
        .append_to_stream(
            stream("customer-u"),
            ExpectedVersion::NoStream,
            vec![old, current],
        )
        .await
        .unwrap();
    for events in [
        store.read_all(0, 10).await.unwrap(),
        store
            .read_stream(&stream("customer-u"), 1, 10)
            .await
            .unwrap(),
    ] {
        assert_eq!(
            events.iter().map(|e| e.schema_version).collect::<Vec<_>>(),
            vec![2, 2]
        );
        assert_eq!(
            events[0].decode::<Value>().unwrap(),
            json!({"family_name": "王", "given_name": "小明"})
        );
        assert_eq!(
            events[1].decode::<Value>().unwrap(),
            json!({"family_name": "李", "given_name": "娜"})
        );
    }
    // The stored row keeps its original shape: a store without the upcaster reads v1.
    let plain = TestStore::reopen_plain(&t).await;
    let raw = plain.read_all(0, 1).await.unwrap();
    assert_eq!(raw[0].schema_version, 1);
    assert_eq!(raw[0].decode::<Value>().unwrap(), json!({"name": "王小明"}));
    plain.close().await;
    t.finish().await;
}

#[tokio::test]
async fn sqlite_old_shapes_are_upcast_on_every_read() {
    old_shapes_are_upcast_on_every_read(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_old_shapes_are_upcast_on_every_read() {
    old_shapes_are_upcast_on_every_read(Backend::Postgres).await;
}

async fn a_subscription_catches_up_then_follows_new_events(t: &TestStore) {
    let store = &t.store;
    for i in 0..7 {
        store
            .append_to_stream(stream("customer-s"), ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
    }
    let mut sub = store.subscribe_all(0, 5);
    let first = sub.next_batch().await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let second = sub.next_batch().await.unwrap();
    assert_eq!(
        second.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert!(sub.try_next_batch().await.unwrap().is_none());

    // Caught up: the next batch arrives when something is appended.
    let writer = store.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .append_to_stream(
                stream("customer-t"),
                ExpectedVersion::Any,
                vec![event(100), event(101)],
            )
            .await
            .unwrap();
    });
    let live = tokio::time::timeout(Duration::from_secs(10), sub.next_batch())
        .await
        .expect("the subscription wakes up for new events")
        .unwrap();
    append.await.unwrap();
    assert_eq!(
        live.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![8, 9]
    );
    assert_eq!(sub.position(), 9);

    // Events written by another handle (another process) are picked up by polling.
    let other = t.reopen().await;
    other
        .append_to_stream(
            stream("customer-t"),
            ExpectedVersion::Exact(2),
            vec![event(102)],
        )
        .await
        .unwrap();
    let polled = tokio::time::timeout(Duration::from_secs(10), sub.next_batch())
        .await
        .expect("the subscription polls for events of other writers")
        .unwrap();
    assert_eq!(
        polled.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![10]
    );
    other.close().await;

    // A subscription can start in the middle of the log.
    let mut late = store.subscribe_all(8, 100);
    let rest = late.next_batch().await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![9, 10]
    );
}

async fn stream_all_reads_every_event_in_order(t: &TestStore) {
    use futures::TryStreamExt;
    use patron_domain::StreamAppend;

    let store = &t.store;
    let total = 12_345u64;
    let mut n = 0;
    while n < total {
        let appends = (0..50u64)
            .map(|s| {
                let events: Vec<_> = (0..20).map(|i| event(n + s * 20 + i)).collect();
                StreamAppend::new(
                    stream(&format!("customer-{s}")),
                    ExpectedVersion::Any,
                    events,
                )
            })
            .collect::<Vec<_>>();
        let mut appends = appends;
        let size: u64 = appends.iter().map(|a| a.events.len() as u64).sum();
        if n + size > total {
            // Trim the last commit so the log ends at exactly `total` events.
            let mut left = total - n;
            appends.retain_mut(|a| {
                let keep = left.min(a.events.len() as u64);
                a.events.truncate(keep as usize);
                left -= keep;
                keep > 0
            });
        }
        n += store.append(appends).await.unwrap().appended() as u64;
    }
    let batches: Vec<Vec<_>> = store.stream_all(0, 5_000).try_collect().await.unwrap();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5_000, 5_000, 2_345]
    );
    let all: Vec<_> = batches.into_iter().flatten().collect();
    assert_eq!(all.len() as u64, total);
    assert!(
        all.iter().zip(1..).all(|(e, p)| e.position == p),
        "every position once, in order"
    );
    let tail: Vec<Vec<_>> = store.stream_all(12_000, 100).try_collect().await.unwrap();
    assert_eq!(tail.len(), 4, "batches of 100, 100, 100 and 45");
    let tail: Vec<_> = tail.into_iter().flatten().collect();
    assert_eq!(tail.len(), 345);
    assert_eq!(tail[0].position, 12_001);
    assert_eq!(
        tail,
        all[12_000..].to_vec(),
        "a streamed tail equals the same events read whole"
    );
    let none: Vec<Vec<_>> = store.stream_all(total, 10).try_collect().await.unwrap();
    assert!(none.is_empty());
}

crate::on_both_stores!(
    read_all_pages_through_the_log_in_position_order,
    a_subscription_catches_up_then_follows_new_events,
    stream_all_reads_every_event_in_order,
);
