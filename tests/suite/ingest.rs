//! Ingestion and identity resolution end to end: records in, customers and events out.

use std::collections::BTreeSet;

use patron::ingest::{CommitQueue, Incoming, Ingestor, RecordOutcome};
use patron::privacy::Opener;
use patron_domain::customer::CustomerId;
use patron_domain::events::{CustomerMerged, CustomerMergedInto, TouchpointRecorded};
use patron_domain::identity::{IdentityRules, SkipReason};
use patron_domain::touchpoint::RejectionCode;
use patron_domain::RecordedEvent;
use patron_projections::analytics::cohort::Period;
use serde_json::{json, Value};

use crate::helpers::TestStore;

fn ingestor(t: &TestStore) -> Ingestor {
    Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    )
}

/// A touchpoint record with the given identifiers and a fresh event id.
fn record(event_type: &str, channel: &str, identifiers: Value) -> Value {
    let mut r = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "channel": channel,
        "source": format!("{channel}-system"),
        "occurred_at": "2026-03-08T09:30:15+08:00",
        "identifiers": identifiers,
    });
    let extra = match event_type {
        "order_placed" => json!({"order_id": "PO-1", "currency": "CNY",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 9900}]}),
        "screen_viewed" => json!({"screen": "home"}),
        "store_visited" => json!({"store_id": "SH-1"}),
        _ => json!({"name": event_type}),
    };
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

/// Events with their sealed personal part opened.
async fn opened(t: &TestStore, events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    Opener::new(t.store.clone(), crate::helpers::master_key())
        .open(events)
        .await
        .unwrap()
}

fn texts(records: &[Value]) -> Vec<String> {
    records.iter().map(Value::to_string).collect()
}

async fn ingest(ing: &Ingestor, records: &[Value]) -> Vec<RecordOutcome> {
    ing.ingest_json(&texts(records)).await.unwrap().records
}

fn customer_of(outcome: &RecordOutcome) -> CustomerId {
    match outcome {
        RecordOutcome::Accepted { customer, .. } => *customer,
        other => panic!("expected an accepted record, got {other:?}"),
    }
}

async fn the_same_phone_in_pos_and_app_is_one_customer(t: &TestStore) {
    let ing = ingestor(t);
    let pos = ingest(
        &ing,
        &[record(
            "order_placed",
            "store",
            json!({"phone": "139 1234 0001", "member_card": "MC-1"}),
        )],
    )
    .await;
    let app = ingest(
        &ing,
        &[record(
            "screen_viewed",
            "app",
            json!({"phone": "+86 139-1234-0001", "device_id": "IDFA-1"}),
        )],
    )
    .await;
    assert_eq!(customer_of(&pos[0]), customer_of(&app[0]));
    let c = customer_of(&pos[0]);
    let events = opened(t, t.store.read_stream(&c.stream_id(), 1, 10).await.unwrap()).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["order_placed", "screen_viewed"]
    );
    assert_eq!(events[0].metadata.channel.as_deref(), Some("store"));
    assert_eq!(events[1].metadata.source.as_deref(), Some("app-system"));
    for (kind, raw) in [
        ("phone", "13912340001"),
        ("member_card", "MC-1"),
        ("device_id", "idfa-1"),
    ] {
        assert_eq!(
            ing.customer_by_identifier(kind, raw).await.unwrap(),
            Some(c),
            "{kind}"
        );
    }
}

async fn a_family_tablet_shared_by_two_phones_is_two_customers(t: &TestStore) {
    let ing = ingestor(t);
    let out = ingest(
        &ing,
        &[
            record(
                "screen_viewed",
                "app",
                json!({"phone": "13912340001", "device_id": "family-tablet"}),
            ),
            record(
                "screen_viewed",
                "app",
                json!({"phone": "13912340002", "device_id": "family-tablet"}),
            ),
        ],
    )
    .await;
    let (mum, son) = (customer_of(&out[0]), customer_of(&out[1]));
    assert_ne!(mum, son);
    let son_events = opened(
        t,
        t.store.read_stream(&son.stream_id(), 1, 10).await.unwrap(),
    )
    .await;
    let recorded: TouchpointRecorded = son_events[0].decode().unwrap();
    let skipped = recorded.skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].identifier.value, "family-tablet");
    assert_eq!(skipped[0].reason, SkipReason::HeldByOther { customer: mum });
    assert_eq!(
        ing.customer_by_identifier("device_id", "family-tablet")
            .await
            .unwrap(),
        Some(mum)
    );
}

async fn a_blocked_placeholder_phone_merges_nothing(t: &TestStore) {
    let ing = ingestor(t);
    let out = ingest(
        &ing,
        &[
            record(
                "order_placed",
                "store",
                json!({"phone": "13800138000", "member_card": "MC-7"}),
            ),
            record(
                "order_placed",
                "store",
                json!({"phone": "138 0013 8000", "member_card": "MC-8"}),
            ),
        ],
    )
    .await;
    assert_ne!(customer_of(&out[0]), customer_of(&out[1]));
    assert_eq!(
        ing.customer_by_identifier("phone", "13800138000")
            .await
            .unwrap(),
        None
    );
}

async fn chain_merges_leave_one_customer_that_every_id_resolves_to(t: &TestStore) {
    let ing = ingestor(t);
    let a = customer_of(
        &ingest(
            &ing,
            &[record(
                "store_visited",
                "store",
                json!({"phone": "13912340001"}),
            )],
        )
        .await[0],
    );
    let b = customer_of(
        &ingest(
            &ing,
            &[record(
                "store_visited",
                "web",
                json!({"email": "b@example.cn"}),
            )],
        )
        .await[0],
    );
    let c = customer_of(
        &ingest(
            &ing,
            &[record("store_visited", "app", json!({"login_id": "cee"}))],
        )
        .await[0],
    );
    // One batch ties B to A and then C to A through B's email.
    let report = ing
        .ingest_json(&texts(&[
            record(
                "order_placed",
                "web",
                json!({"email": "b@example.cn", "phone": "13912340001"}),
            ),
            record(
                "screen_viewed",
                "app",
                json!({"login_id": "cee", "email": "B@Example.cn"}),
            ),
        ]))
        .await
        .unwrap();
    assert_eq!(
        (report.accepted, report.merges, report.new_customers),
        (2, 2, 0)
    );
    for id in [a, b, c] {
        assert_eq!(t.store.live_customer(id).await.unwrap(), a);
    }
    for (kind, raw) in [
        ("phone", "13912340001"),
        ("email", "b@example.cn"),
        ("login_id", "cee"),
    ] {
        assert_eq!(
            ing.customer_by_identifier(kind, raw).await.unwrap(),
            Some(a),
            "{kind}"
        );
    }
    let survivor = opened(t, t.store.read_stream(&a.stream_id(), 1, 20).await.unwrap()).await;
    let merged: Vec<CustomerMerged> = survivor
        .iter()
        .filter(|e| e.event_type == "customer_merged")
        .map(|e| e.decode().unwrap())
        .collect();
    assert_eq!(
        merged.iter().map(|m| m.absorbed).collect::<Vec<_>>(),
        vec![b, c]
    );
    assert_eq!(merged[0].evidence[0].to_string(), "email:b@example.cn");
    let closed = opened(t, t.store.read_stream(&c.stream_id(), 1, 20).await.unwrap()).await;
    let into: CustomerMergedInto = closed.last().unwrap().decode().unwrap();
    assert_eq!(into.survivor, a);
    assert_eq!(into.evidence[0].to_string(), "login_id:cee");
    let (customers, aliases, _) = t.store.identity_counts().await.unwrap();
    assert_eq!((customers, aliases), (1, 2));
}

async fn identifiers_beyond_the_email_limit_are_not_linked(t: &TestStore) {
    let ing = ingestor(t);
    let records: Vec<Value> = (1..=6)
        .map(|n| {
            record(
                "custom",
                "web",
                json!({"phone": "13912340001", "email": format!("me{n}@example.cn")}),
            )
        })
        .collect();
    let out = ingest(&ing, &records).await;
    let customers: BTreeSet<CustomerId> = out.iter().map(customer_of).collect();
    assert_eq!(customers.len(), 1);
    assert!(ing
        .customer_by_identifier("email", "me5@example.cn")
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        ing.customer_by_identifier("email", "me6@example.cn")
            .await
            .unwrap(),
        None
    );
}

async fn a_batch_sent_twice_is_stored_once(t: &TestStore) {
    let ing = ingestor(t);
    let records = vec![
        record("order_placed", "store", json!({"phone": "13912340001"})),
        record(
            "screen_viewed",
            "app",
            json!({"phone": "13912340001", "device_id": "d1"}),
        ),
        record(
            "screen_viewed",
            "app",
            json!({"phone": "13912340002", "device_id": "d1"}),
        ),
    ];
    let first = ing.ingest_json(&texts(&records)).await.unwrap();
    let head = t.store.head().await.unwrap();
    let counts = t.store.identity_counts().await.unwrap();
    let second = ing.ingest_json(&texts(&records)).await.unwrap();
    assert_eq!((second.accepted, second.duplicates), (0, 3));
    for (a, b) in first.records.iter().zip(&second.records) {
        let RecordOutcome::Accepted {
            event_id, position, ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            b,
            &RecordOutcome::Duplicate {
                event_id: *event_id,
                position: *position
            }
        );
    }
    assert_eq!(t.store.head().await.unwrap(), head);
    assert_eq!(t.store.identity_counts().await.unwrap(), counts);
    // A refused record sent again keeps its place in the quarantine.
    let bad = record("store_visited", "store", json!({"phone": "12345"})).to_string();
    let one = ing.ingest_json(std::slice::from_ref(&bad)).await.unwrap();
    let two = ing.ingest_json(&[bad.clone(), bad]).await.unwrap();
    let ids: Vec<u64> = one
        .records
        .iter()
        .chain(&two.records)
        .map(|r| match r {
            RecordOutcome::Rejected { quarantine_id, .. } => *quarantine_id,
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(t.store.quarantined(0, 10).await.unwrap().len(), 1);
    // The same record twice in one batch is stored once too.
    let again = record("store_visited", "store", json!({"phone": "13912340009"}));
    let report = ing
        .ingest_json(&texts(&[again.clone(), again]))
        .await
        .unwrap();
    assert_eq!((report.accepted, report.duplicates), (1, 1));
}

async fn refused_records_are_quarantined_and_the_rest_stored(t: &TestStore) {
    let ing = ingestor(t);
    let mut bad_phone = record("store_visited", "store", json!({"phone": "12345"}));
    bad_phone["source"] = json!("pos-beijing");
    let records = vec![
        "this is not json".to_owned(),
        bad_phone.to_string(),
        record("store_visited", "store", json!({"phone": "13912340001"})).to_string(),
    ];
    let report = ing.ingest_json(&records).await.unwrap();
    assert_eq!((report.accepted, report.rejected), (1, 2));
    let RecordOutcome::Rejected {
        rejection,
        quarantine_id,
    } = &report.records[1]
    else {
        panic!("{:?}", report.records[1]);
    };
    assert_eq!(
        (rejection.field.as_str(), rejection.code),
        ("identifiers.phone", RejectionCode::InvalidIdentifier)
    );
    let kept = t.store.quarantined(0, 10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].code, "malformed");
    assert_eq!(kept[0].record, "this is not json");
    assert_eq!(kept[1].id, *quarantine_id);
    assert_eq!(kept[1].field, "identifiers.phone");
    assert_eq!(kept[1].source.as_deref(), Some("pos-beijing"));
    assert_eq!(kept[1].record, records[1]);
    assert!(matches!(report.records[2], RecordOutcome::Accepted { .. }));
}

/// The rejection of a record that was refused, or a panic naming what it got.
fn refusal(outcome: &RecordOutcome) -> (&str, RejectionCode, &str) {
    match outcome {
        RecordOutcome::Rejected { rejection, .. } => (
            rejection.field.as_str(),
            rejection.code,
            rejection.reason.as_str(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn amounts_beyond_their_bound_old_times_and_bad_traits_are_refused_naming_the_field(
    t: &TestStore,
) {
    let ing = ingestor(t);
    let phone = json!({"phone": "139 1234 0001"});
    // The review's record: 4 x 4611686018427387909, once accepted with a total of 20.
    let mut wrapping = record("order_placed", "store", phone.clone());
    wrapping["items"] =
        json!([{"sku": "SKU-1", "quantity": 4, "unit_price_minor": 4_611_686_018_427_387_909_i64}]);
    let mut ancient = record("store_visited", "store", phone.clone());
    ancient["occurred_at"] = json!("1989-12-31T23:59:59Z");
    let mut earliest = record("store_visited", "store", phone.clone());
    earliest["occurred_at"] = json!("1990-01-01T00:00:00Z");
    let mut birthday = record("traits_updated", "membership_desk", phone.clone());
    birthday["traits"] = json!({"birthday": "1993-18-19", "city": "Shanghai"});
    let mut order = record("order_placed", "store", phone.clone());
    order["items"] =
        json!([{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 10_000_000_000_000_i64}]);
    let records = [wrapping, ancient, earliest, birthday, order];
    let answers = ingest(&ing, &records).await;

    let (field, code, reason) = refusal(&answers[0]);
    assert_eq!(
        (field, code),
        ("items[0].unit_price_minor", RejectionCode::InvalidAmount)
    );
    assert!(reason.contains("10^13"), "{reason}");
    let (field, code, reason) = refusal(&answers[1]);
    assert_eq!((field, code), ("occurred_at", RejectionCode::InvalidTime));
    assert!(reason.contains("1990-01-01T00:00:00Z"), "{reason}");
    assert!(
        matches!(answers[2], RecordOutcome::Accepted { .. }),
        "{:?}",
        answers[2]
    );
    let (field, code, reason) = refusal(&answers[3]);
    assert_eq!(
        (field, code),
        ("traits.birthday", RejectionCode::InvalidTime)
    );
    assert!(reason.contains("month 18"), "{reason}");
    assert!(
        matches!(answers[4], RecordOutcome::Accepted { .. }),
        "{:?}",
        answers[4]
    );

    // The refusals are kept in the quarantine, naming the field.
    let kept = t.store.quarantined(0, 10).await.unwrap();
    let fields: Vec<&str> = kept.iter().map(|q| q.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "items[0].unit_price_minor",
            "occurred_at",
            "traits.birthday"
        ]
    );

    // The earliest time is a setting.
    let later = ingestor(t).with_earliest_time("2000-01-01T00:00:00Z".parse().unwrap());
    let mut nineties = record("store_visited", "store", phone.clone());
    nineties["occurred_at"] = json!("1999-12-31T23:59:59Z");
    let mut millennium = record("store_visited", "store", phone);
    millennium["occurred_at"] = json!("2000-01-01T00:00:00Z");
    let answers = ingest(&later, &[nineties, millennium]).await;
    let (field, _, reason) = refusal(&answers[0]);
    assert_eq!(field, "occurred_at");
    assert!(reason.contains("2000-01-01T00:00:00Z"), "{reason}");
    assert!(
        matches!(answers[1], RecordOutcome::Accepted { .. }),
        "{:?}",
        answers[1]
    );
}

async fn old_data_in_the_store_does_not_widen_a_cohort_table(t: &TestStore) {
    // Orders in the years 10 to 29 stored under an earliest time configured far back, and one
    // of each of those customers now.
    let ing = ingestor(t).with_earliest_time("0001-01-01T00:00:00Z".parse().unwrap());
    let now = chrono::Utc::now();
    let mut records = Vec::new();
    for year in 10..30 {
        let phone = json!({"phone": format!("1391234{year:04}")});
        let mut old = record("order_placed", "web", phone.clone());
        old["occurred_at"] = json!(format!("{year:04}-06-01T12:00:00Z"));
        records.push(old);
        let mut recent = record("order_placed", "web", phone);
        recent["occurred_at"] = json!((now - chrono::TimeDelta::days(3)).to_rfc3339());
        records.push(recent);
    }
    let mut newcomer = record("order_placed", "web", json!({"phone": "139 1234 9999"}));
    newcomer["occurred_at"] = json!((now - chrono::TimeDelta::days(2)).to_rfc3339());
    records.push(newcomer);
    let answers = ingest(&ing, &records).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, RecordOutcome::Accepted { .. })),
        "{answers:?}"
    );
    let activity = patron::analytics::load_activity(&t.store, |_, _| {})
        .await
        .unwrap();
    let analyst = patron::analytics::Analyst::new(t.store.clone(), &IdentityRules::default());
    for periods in [1, 12, 120] {
        let table = analyst
            .cohorts(&activity, Period::Week, true, periods, now)
            .unwrap();
        assert!(table.rows.len() <= periods as usize, "{periods}: {table:?}");
        assert!(
            table
                .rows
                .iter()
                .all(|r| r.buying.len() <= periods as usize),
            "{periods}: {table:?}"
        );
        // The customers whose first order is centuries old are in no cohort shown.
        assert_eq!(table.rows.iter().map(|r| r.customers).sum::<u64>(), 1);
    }
    let refused = analyst
        .cohorts(&activity, Period::Week, false, 121, now)
        .unwrap_err();
    assert_eq!(refused.code(), "INVALID_ARGUMENT");
    assert!(refused.to_string().contains("periods"), "{refused}");
}

async fn parallel_batches_merging_the_same_customers_lose_nothing(t: &TestStore) {
    let ing = ingestor(t);
    // Ten customers known by phone; then four writers each tie all ten together by email,
    // in different orders, at the same time.
    let seed: Vec<Value> = (0..10)
        .map(|n| {
            record(
                "store_visited",
                "store",
                json!({"phone": format!("1391234{n:04}")}),
            )
        })
        .collect();
    ingest(&ing, &seed).await;
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let ing = Ingestor::new(
            t.reopen().await,
            IdentityRules::default(),
            b"test identity key",
            crate::helpers::master_key(),
        );
        tasks.push(tokio::spawn(async move {
            let mut order: Vec<usize> = (0..10).collect();
            order.rotate_left(w * 3);
            let records: Vec<String> = order
                .iter()
                .map(|n| {
                    record(
                        "custom",
                        "web",
                        json!({"phone": format!("1391234{n:04}"), "email": "family@example.cn"}),
                    )
                    .to_string()
                })
                .collect();
            let mut accepted = 0;
            for chunk in records.chunks(3) {
                accepted += ing.ingest_json(chunk).await.unwrap().accepted;
            }
            ing.store().close().await;
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    assert_eq!(accepted, 40);
    let (customers, aliases, _) = t.store.identity_counts().await.unwrap();
    assert_eq!((customers, aliases), (1, 9), "one survivor, nine merged");
    let stats = t.store.stats().await.unwrap();
    // 10 + 40 touchpoints, and two events per merge.
    assert_eq!(stats.events, 50 + 2 * 9);
    let survivor = ing
        .customer_by_identifier("email", "family@example.cn")
        .await
        .unwrap()
        .unwrap();
    for n in 0..10 {
        let phone = format!("1391234{n:04}");
        assert_eq!(
            ing.customer_by_identifier("phone", &phone).await.unwrap(),
            Some(survivor)
        );
    }
}

async fn the_demo_data_set_is_unified_exactly_as_its_people(t: &TestStore) {
    use patron::demo::{run_demo, DemoConfig};
    let ing = ingestor(t);
    let config = DemoConfig {
        people: 400,
        seed: 7,
        ..DemoConfig::default()
    };
    let summary = run_demo(&ing, &config, 1_000).await.unwrap();
    // Phones in seven formats, emails in four, placeholder phones, families sharing a tablet,
    // second phones and anonymous devices: all undone by normalization and the rules.
    assert_eq!(summary.scores.people, 400);
    assert_eq!(summary.scores.precision, 1.0, "{summary:?}");
    assert_eq!(summary.scores.recall, 1.0, "{summary:?}");
    assert_eq!(summary.scores.customers, 400);
    assert!(
        summary.rejected > 0,
        "the broken records are refused: {summary:?}"
    );
    assert_eq!((summary.broken_accepted, summary.sound_rejected), (0, 0));
    // Loading it again stores nothing new.
    let again = run_demo(&ing, &config, 1_000).await.unwrap();
    assert_eq!(again.accepted, 0);
    assert_eq!(t.store.identity_counts().await.unwrap().0, 400);
}

async fn the_log_keeps_the_order_of_a_batchs_records_across_customers(t: &TestStore) {
    let ing = ingestor(t);
    let a = customer_of(
        &ingest(
            &ing,
            &[record(
                "store_visited",
                "store",
                json!({"phone": "13912340001"}),
            )],
        )
        .await[0],
    );
    let report = ing
        .ingest_json(&texts(&[
            record("screen_viewed", "app", json!({"phone": "13912340001"})),
            record("screen_viewed", "app", json!({"email": "c@example.cn"})),
            record(
                "custom",
                "web",
                json!({"email": "c@example.cn", "phone": "13912340001"}),
            ),
        ]))
        .await
        .unwrap();
    // Every answer names the live customer: the new customer was merged into A by the third record.
    assert!(report.records.iter().all(|r| customer_of(r) == a));
    let log = t.store.read_all(1, 10).await.unwrap();
    let seen: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        seen,
        [
            "screen_viewed",
            "screen_viewed",
            "custom",
            "customer_merged",
            "customer_merged_into"
        ],
        "positions follow the records, across streams"
    );
    assert_ne!(
        log[1].stream_id,
        a.stream_id(),
        "the second record started its own customer"
    );
    assert_eq!(
        log[4].stream_id, log[1].stream_id,
        "and that customer closes after it"
    );
}

async fn batches_committed_together_are_each_answered_as_their_own(t: &TestStore) {
    let ing = ingestor(t);
    let first = record("store_visited", "store", json!({"phone": "13912340001"}));
    let bad = json!({"type": "store_visited"});
    let second = vec![
        first.clone(),
        record("screen_viewed", "app", json!({"email": "b@example.cn"})),
        bad,
        // Ties the email's customer to the phone's: one merge, answered in the second batch.
        record(
            "custom",
            "web",
            json!({"phone": "13912340001", "email": "b@example.cn"}),
        ),
    ];
    let prepare =
        |records: &[Value]| ing.prepare(texts(records).into_iter().map(Incoming::json).collect());
    let reports = ing
        .commit_group(vec![prepare(&[first]), prepare(&second)])
        .await
        .unwrap();
    assert_eq!(reports.len(), 2);
    let (a, b) = (&reports[0], &reports[1]);
    assert_eq!(
        (a.records.len(), a.accepted, a.new_customers, a.merges),
        (1, 1, 1, 0)
    );
    assert_eq!(
        (b.records.len(), b.accepted, b.duplicates, b.rejected),
        (4, 2, 1, 1)
    );
    assert_eq!((b.new_customers, b.merges), (1, 1));
    // The repeat of the first batch's record points at where that one was stored.
    let RecordOutcome::Accepted { position, .. } = a.records[0] else {
        panic!("{a:?}")
    };
    assert!(matches!(b.records[0], RecordOutcome::Duplicate { position: p, .. } if p == position));
    assert!(matches!(b.records[2], RecordOutcome::Rejected { .. }));
    assert_eq!(customer_of(&b.records[3]), customer_of(&a.records[0]));
    assert_eq!(t.store.quarantined(0, 10).await.unwrap().len(), 1);
}

async fn concurrent_callers_of_a_commit_queue_get_their_own_answers(t: &TestStore) {
    let queue = CommitQueue::start(ingestor(t));
    let mut callers = Vec::new();
    for c in 0..8 {
        let queue = queue.clone();
        callers.push(tokio::spawn(async move {
            let records: Vec<Value> = (0..25)
                .map(|n| {
                    record(
                        "store_visited",
                        "store",
                        json!({"member_id": format!("M-{c}-{n}")}),
                    )
                })
                .collect();
            let ids: Vec<String> = records
                .iter()
                .map(|r| r["event_id"].as_str().unwrap().to_owned())
                .collect();
            let incoming = texts(&records).into_iter().map(Incoming::json).collect();
            (ids, queue.ingest(incoming).await.unwrap())
        }));
    }
    let mut positions = BTreeSet::new();
    for caller in callers {
        let (ids, report) = caller.await.unwrap();
        assert_eq!((report.accepted, report.new_customers), (25, 25));
        for (id, answer) in ids.iter().zip(&report.records) {
            let RecordOutcome::Accepted {
                event_id, position, ..
            } = answer
            else {
                panic!("{answer:?}")
            };
            assert_eq!(&event_id.to_string(), id, "answers in the caller's order");
            positions.insert(*position);
        }
    }
    assert_eq!(positions, (1..=200).collect(), "every record stored once");
    assert_eq!(t.store.identity_counts().await.unwrap().0, 200);
    // Events of one transaction share their recorded time.
    let commits: BTreeSet<_> = t
        .store
        .read_all(0, 200)
        .await
        .unwrap()
        .iter()
        .map(|e| e.recorded_at)
        .collect();
    assert!(
        commits.len() < 8,
        "callers waiting together share a commit: {} commits",
        commits.len()
    );
}

async fn a_failed_grouped_commit_fails_its_callers_and_stores_nothing(t: &TestStore) {
    let queue = CommitQueue::start(ingestor(t));
    let before = t.store.head().await.unwrap();
    // A closed store fails every commit.
    let closed = t.reopen().await;
    closed.close().await;
    let failing = CommitQueue::start(Ingestor::new(
        closed,
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    ));
    let incoming = texts(&[record(
        "store_visited",
        "store",
        json!({"phone": "13912340001"}),
    )])
    .into_iter()
    .map(Incoming::json)
    .collect();
    let err = failing.ingest(incoming).await.unwrap_err();
    assert!(!err.code().is_empty(), "a stable code: {err}");
    assert!(err.to_string().contains("not stored"), "{err}");
    assert_eq!(t.store.head().await.unwrap(), before);
    // The queue goes on after a failure of another queue's store.
    let ok = queue
        .ingest(
            texts(&[record("custom", "web", json!({"email": "x@example.cn"}))])
                .into_iter()
                .map(Incoming::json)
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(ok.accepted, 1);
}

crate::on_both_stores!(
    the_same_phone_in_pos_and_app_is_one_customer,
    a_family_tablet_shared_by_two_phones_is_two_customers,
    a_blocked_placeholder_phone_merges_nothing,
    chain_merges_leave_one_customer_that_every_id_resolves_to,
    identifiers_beyond_the_email_limit_are_not_linked,
    a_batch_sent_twice_is_stored_once,
    refused_records_are_quarantined_and_the_rest_stored,
    parallel_batches_merging_the_same_customers_lose_nothing,
    the_demo_data_set_is_unified_exactly_as_its_people,
    the_log_keeps_the_order_of_a_batchs_records_across_customers,
    batches_committed_together_are_each_answered_as_their_own,
    concurrent_callers_of_a_commit_queue_get_their_own_answers,
    a_failed_grouped_commit_fails_its_callers_and_stores_nothing,
    amounts_beyond_their_bound_old_times_and_bad_traits_are_refused_naming_the_field,
    old_data_in_the_store_does_not_widen_a_cohort_table,
);
