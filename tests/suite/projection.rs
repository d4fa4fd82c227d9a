//! The profile projection: figures checked by hand, merges followed, incremental runs equal to a
//! full rebuild (property), and checkpoints that guard every batch.

use patron::ingest::{Ingestor, RecordOutcome};
use patron::projection::{ProfileProjection, PROFILES};
use patron::scoring::{score, ScoringRules};
use patron::segmentation::{preview, refresh};
use patron::store::projection::{ProfileRow, ProfileTable};
use patron::store::scores::ScoreColumn;
use patron_domain::customer::CustomerId;
use patron_domain::identity::IdentityRules;
use patron_domain::touchpoint::ConsentPurpose;
use patron_projections::segment::Rule;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use crate::helpers::{master_key, Backend, TestStore};

fn ingestor(t: &TestStore) -> Ingestor {
    Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        master_key(),
    )
}

fn record(event_type: &str, channel: &str, at: &str, identifiers: Value, extra: Value) -> String {
    let mut r = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "channel": channel,
        "source": format!("{channel}-system"),
        "occurred_at": at,
        "identifiers": identifiers,
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

fn customer_of(outcome: &RecordOutcome) -> CustomerId {
    match outcome {
        RecordOutcome::Accepted { customer, .. } => *customer,
        other => panic!("expected an accepted record, got {other:?}"),
    }
}

async fn a_profile_adds_up_its_customers_history_across_a_merge(t: &TestStore) {
    let ing = ingestor(t);
    let report = ing
        .ingest_json(&[
            record(
                "order_placed",
                "store",
                "2026-03-01T10:00:00+08:00",
                json!({"phone": "13912340001"}),
                json!({"order_id": "PO-1", "currency": "CNY", "items": [
                    {"sku": "SKU-1", "category": "makeup", "quantity": 2,
                     "unit_price_minor": 5000, "discount_minor": 1000}]}),
            ),
            record(
                "screen_viewed",
                "app",
                "2026-03-02T20:00:00+08:00",
                json!({"phone": "13912340001"}),
                json!({"screen": "home"}),
            ),
            record(
                "consent_changed",
                "mini_program",
                "2026-03-03T08:00:00+08:00",
                json!({"phone": "13912340001"}),
                json!({"purpose": "push", "granted": true}),
            ),
            record(
                "order_placed",
                "web",
                "2026-03-05T09:00:00+08:00",
                json!({"email": "b@example.cn"}),
                json!({"order_id": "W-9", "currency": "CNY", "items": [
                    {"sku": "SKU-2", "category": "shoes", "quantity": 1,
                     "unit_price_minor": 30000}]}),
            ),
            // Ties the email's customer to the phone's.
            record(
                "custom",
                "web",
                "2026-03-06T21:30:00+08:00",
                json!({"phone": "13912340001", "email": "b@example.cn"}),
                json!({"name": "newsletter_signup"}),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(report.merges, 1);
    let (a, b) = (
        customer_of(&report.records[0]),
        customer_of(&report.records[4]),
    );
    let projection = ProfileProjection::new(t.store.clone(), 2);
    assert_eq!(
        projection.lag().await.unwrap().events,
        7,
        "5 touchpoints, 2 merge events"
    );
    projection.catch_up().await.unwrap();
    assert_eq!(projection.lag().await.unwrap().events, 0);

    let p = projection.profile(a).await.unwrap().unwrap();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    assert_eq!(p.touchpoints, 5);
    assert_eq!(p.orders, 2);
    assert_eq!(p.revenue["CNY"], 9_000 + 30_000);
    assert_eq!(p.average_order_value("CNY"), Some(19_500));
    assert_eq!(p.promotion_sensitivity(), Some(0.5));
    assert_eq!(p.category_spend["makeup"], 9_000);
    assert_eq!(p.favourite_category(), Some("shoes"));
    assert_eq!(
        p.preferred_channel(),
        Some("web"),
        "web 2; store, app, mini-program 1"
    );
    assert_eq!(p.first_seen, Some(at("2026-03-01T10:00:00+08:00")));
    assert_eq!(p.last_seen, Some(at("2026-03-06T21:30:00+08:00")));
    assert_eq!(p.first_order_at, Some(at("2026-03-01T10:00:00+08:00")));
    assert_eq!(p.last_order_at, Some(at("2026-03-05T09:00:00+08:00")));
    assert!(p.consent[&ConsentPurpose::Push].granted);
    assert_eq!(p.by_hour[2], 1, "10:00 in Shanghai is 02:00 UTC");
    assert_eq!(p.merged_into, None);

    // The absorbed customer reads as its survivor; its own row points there.
    let absorbed = if a == b {
        t.store.aliases().await.unwrap().into_keys().next().unwrap()
    } else {
        b
    };
    assert_eq!(projection.profile(absorbed).await.unwrap(), Some(p));
    let rows = t.store.all_profiles(ProfileTable::Live).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .any(|r| r.customer == absorbed && r.merged_into == Some(a)));
}

async fn a_batch_over_a_moved_checkpoint_writes_nothing(t: &TestStore) {
    let row = ProfileRow {
        customer: CustomerId::new(),
        merged_into: None,
        state: "{}".into(),
    };
    let store = &t.store;
    assert!(store
        .commit_rows(
            PROFILES,
            ProfileTable::Live,
            0,
            5,
            std::slice::from_ref(&row)
        )
        .await
        .unwrap());
    assert_eq!(store.checkpoint(PROFILES).await.unwrap(), 5);
    let stale = ProfileRow {
        customer: CustomerId::new(),
        ..row
    };
    assert!(!store
        .commit_rows(PROFILES, ProfileTable::Live, 0, 9, &[stale])
        .await
        .unwrap());
    assert_eq!(store.checkpoint(PROFILES).await.unwrap(), 5);
    assert_eq!(
        store.all_profiles(ProfileTable::Live).await.unwrap().len(),
        1
    );
}

fn order_on(day: i64, phone: &str, total_minor: i64) -> String {
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00+00:00").unwrap()
        + chrono::Duration::days(day);
    record(
        "order_placed",
        "store",
        &at.to_rfc3339(),
        json!({"phone": phone}),
        json!({"order_id": format!("O-{phone}-{day}"), "currency": "CNY", "items": [
            {"sku": "SKU-1", "quantity": 1, "unit_price_minor": total_minor}]}),
    )
}

async fn scoring_applies_the_rules_and_records_stage_transitions(t: &TestStore) {
    let ing = ingestor(t);
    let mut records: Vec<String> = [0, 7, 14, 21, 28]
        .iter()
        .map(|d| order_on(*d, "13900000001", 200_000))
        .collect();
    records.push(order_on(0, "13900000002", 150_000));
    records.push(order_on(20, "13900000002", 150_000));
    records.push(record(
        "page_viewed",
        "web",
        "2026-01-02T08:00:00+00:00",
        json!({"phone": "13900000003"}),
        json!({"url": "/"}),
    ));
    let report = ing.ingest_json(&records).await.unwrap();
    let (a, b, c) = (
        customer_of(&report.records[0]),
        customer_of(&report.records[5]),
        customer_of(&report.records[7]),
    );
    ProfileProjection::new(t.store.clone(), 3)
        .catch_up()
        .await
        .unwrap();
    let day = |d: i64| {
        chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00+00:00")
            .unwrap()
            .to_utc()
            + chrono::Duration::days(d)
    };
    let rules = ScoringRules::default();
    // Two runs at once (the server's hourly one and a command): each change recorded once.
    let other = t.reopen().await;
    let (first, second) = tokio::join!(
        score(&t.store, &rules, day(33)),
        score(&other, &rules, day(33))
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.transitions + second.transitions, 3);
    assert_eq!((first.customers, first.with_rfm), (3, 2));
    // A: 5 orders of 2,000 yuan, weekly, the last 5 days ago: high value, mature.
    // B: 2 orders of 1,500 yuan 20 days apart, the last 13 days ago: potential, growth.
    // C: no order: basic, acquisition.
    assert_eq!(
        first.by_tier,
        [("basic", 1), ("high_value", 1), ("potential", 1)]
            .map(|(k, n)| (k.to_owned(), n))
            .into()
    );
    assert_eq!(
        first.by_stage,
        [("acquisition", 1), ("growth", 1), ("mature", 1)]
            .map(|(k, n)| (k.to_owned(), n))
            .into()
    );
    // Two customers ranked: A is better on all three (1 of 2 below it: 1 + 5/2 = 3), B worst.
    assert_eq!(
        first.by_rfm_segment,
        [("lost", 1), ("need_attention", 1)]
            .map(|(k, n)| (k.to_owned(), n))
            .into()
    );

    // Tags: A bought 4 times in the last 30 days; everyone's preferred channel.
    assert_eq!(
        t.store.tags_of(a).await.unwrap(),
        ["high_frequency", "preferred_channel:store"]
    );
    assert_eq!(t.store.tags_of(c).await.unwrap(), ["preferred_channel:web"]);
    assert_eq!(
        t.store.tag_counts().await.unwrap(),
        vec![
            ("high_frequency".to_owned(), 1),
            ("preferred_channel:store".to_owned(), 2),
            ("preferred_channel:web".to_owned(), 1)
        ]
    );

    // Segments over the scores, tags and behaviour, as of the same moment.
    for (rule, expected) in [
        ("tier = \"high_value\" and stage = \"mature\"", 1),
        (
            "count(order_placed, channel = \"store\") in last 30 days >= 1",
            2,
        ),
        (
            "count(order_placed) in last 30 days >= 4 or tag \"high_frequency\"",
            1,
        ),
        (
            "spend in last 365 days >= 300000 and not tier = \"high_value\"",
            1,
        ),
        ("orders = 0 and channel.web >= 1", 1),
    ] {
        let rule = Rule::parse(rule).unwrap();
        let preview = preview(&t.store, &rule, "CNY", day(33)).await.unwrap();
        assert_eq!(
            (preview.customers, preview.matched),
            (3, expected),
            "{}",
            rule.text()
        );
    }

    // 100 days later nobody bought: A and B have churned; C is still to be acquired.
    let later = score(&t.store, &rules, day(130)).await.unwrap();
    assert_eq!(later.transitions, 2);
    let transitions = t.store.transitions().await.unwrap();
    let moves: Vec<(CustomerId, Option<&str>, &str)> = transitions
        .iter()
        .skip(3)
        .map(|t| (t.customer, t.from.as_deref(), t.to.as_str()))
        .collect();
    assert!(moves.contains(&(a, Some("mature"), "churned")), "{moves:?}");
    assert!(moves.contains(&(b, Some("growth"), "churned")), "{moves:?}");
    assert!(transitions
        .iter()
        .all(|t| t.customer != c || t.from.is_none()));
    assert_eq!(transitions[3].at, day(130));
    assert_eq!(
        t.store.score_counts(ScoreColumn::Stage).await.unwrap(),
        vec![("acquisition".to_owned(), 1), ("churned".to_owned(), 2)]
    );
    assert!(!t
        .store
        .tags_of(a)
        .await
        .unwrap()
        .contains(&"high_frequency".to_owned()));
    // Scoring again at the same moment changes nothing.
    assert_eq!(
        score(&t.store, &rules, day(130)).await.unwrap().transitions,
        0
    );
}

async fn profiles_of_an_earlier_fold_are_rebuilt_once(t: &TestStore) {
    let ing = ingestor(t);
    ing.ingest_json(&[order_on(0, "13900000009", 100)])
        .await
        .unwrap();
    let projection = ProfileProjection::new(t.store.clone(), 10);
    projection.catch_up().await.unwrap();
    // A row the current fold would never write, under an older fold's version.
    let stray = ProfileRow {
        customer: CustomerId::new(),
        merged_into: None,
        state: "{}".into(),
    };
    let at = t.store.checkpoint(PROFILES).await.unwrap();
    assert!(t
        .store
        .commit_rows(PROFILES, ProfileTable::Live, at, at, &[stray])
        .await
        .unwrap());
    t.store
        .put_setting("projection.profiles.version", "1")
        .await
        .unwrap();
    projection.catch_up().await.unwrap();
    let rows = t.store.all_profiles(ProfileTable::Live).await.unwrap();
    assert_eq!(rows.len(), 1, "rebuilt from the log: {rows:?}");
    assert_eq!(
        t.store
            .setting_or_insert("projection.profiles.version", "?")
            .await
            .unwrap(),
        patron::projection::PROFILE_VERSION.to_string()
    );
}

async fn a_rebuild_of_an_empty_log_finishes(t: &TestStore) {
    let projection = ProfileProjection::new(t.store.clone(), 10);
    let rebuilt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        projection.rebuild(|_, _| {}),
    )
    .await
    .expect("the rebuild finishes")
    .unwrap();
    assert_eq!(rebuilt, 0);
    assert_eq!(projection.lag().await.unwrap().events, 0);
}

async fn a_rebuild_while_the_live_projection_runs_loses_nothing(t: &TestStore) {
    let ing = ingestor(t);
    let first: Vec<String> = (0..60)
        .map(|n| order_on(n % 30, &format!("139000{:05}", n % 17), 1_000))
        .collect();
    ing.ingest_json(&first).await.unwrap();
    let live = ProfileProjection::new(t.store.clone(), 7);
    live.catch_up().await.unwrap();
    let rebuild = ProfileProjection::new(t.reopen().await, 5);
    let (rebuilt, ()) = tokio::join!(rebuild.rebuild(|_, _| {}), async {
        for n in 0..10 {
            ing.ingest_json(&[order_on(40 + n, "13900000001", 500)])
                .await
                .unwrap();
            live.catch_up().await.unwrap();
        }
    });
    rebuilt.unwrap();
    live.catch_up().await.unwrap();
    let rows = t.store.all_profiles(ProfileTable::Live).await.unwrap();
    let mut orders = 0;
    for row in rows.iter().filter(|r| r.merged_into.is_none()) {
        let state: Value = serde_json::from_str(&row.state).unwrap();
        orders += state["orders"].as_u64().unwrap();
    }
    assert_eq!(orders, 70, "every order counted once");
}

async fn saved_segments_follow_their_rules_and_log_entries_and_exits(t: &TestStore) {
    let ing = ingestor(t);
    let mut records: Vec<String> = [0, 7, 14, 21, 28]
        .iter()
        .map(|d| order_on(*d, "13900000001", 200_000))
        .collect();
    records.push(order_on(0, "13900000002", 150_000));
    let report = ing.ingest_json(&records).await.unwrap();
    let (a, b) = (
        customer_of(&report.records[0]),
        customer_of(&report.records[5]),
    );
    ProfileProjection::new(t.store.clone(), 100)
        .catch_up()
        .await
        .unwrap();
    let day = |d: i64| {
        chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00+00:00")
            .unwrap()
            .to_utc()
            + chrono::Duration::days(d)
    };
    let store = &t.store;
    assert!(store
        .save_segment("active", "days_since_last_order <= 30", day(0))
        .await
        .unwrap());
    assert!(store
        .save_segment("lapsed", "stage = \"churned\"", day(0))
        .await
        .unwrap());
    let rules = ScoringRules::default();
    score(store, &rules, day(33)).await.unwrap();
    // Two refreshes at once: each entry logged once.
    let other = t.reopen().await;
    let (one, two) = tokio::join!(
        refresh(store, "CNY", day(33)),
        refresh(&other, "CNY", day(33))
    );
    let entered: u64 = one
        .unwrap()
        .iter()
        .chain(two.unwrap().iter())
        .map(|r| r.entered)
        .sum();
    assert_eq!(entered, 1, "A bought 5 days ago; B 33 days ago");
    assert_eq!(store.segment_members("active").await.unwrap(), vec![a]);
    assert!(store.segment_members("lapsed").await.unwrap().is_empty());

    // 100 days later A has lapsed too: A leaves `active`; both enter `lapsed`.
    score(store, &rules, day(130)).await.unwrap();
    let refreshed = refresh(store, "CNY", day(130)).await.unwrap();
    let by_name: std::collections::HashMap<&str, (u64, u64, u64)> = refreshed
        .iter()
        .map(|r| (r.name.as_str(), (r.members, r.entered, r.left)))
        .collect();
    assert_eq!(by_name["active"], (0, 0, 1));
    assert_eq!(by_name["lapsed"], (2, 2, 0));
    let mut lapsed = store.segment_members("lapsed").await.unwrap();
    lapsed.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(lapsed, both);
    let log = store.segment_log("active").await.unwrap();
    assert_eq!(
        log.iter()
            .map(|c| (c.customer, c.entered, c.at))
            .collect::<Vec<_>>(),
        vec![(a, true, day(33)), (a, false, day(130))]
    );

    // Rules can change; deleting a segment keeps its log and logs its members' exits.
    assert!(!store
        .save_segment("active", "orders >= 1", day(131))
        .await
        .unwrap());
    assert_eq!(refresh(store, "CNY", day(131)).await.unwrap().len(), 2);
    assert_eq!(store.segment_members("active").await.unwrap().len(), 2);
    assert!(store.delete_segment("lapsed").await.unwrap());
    assert!(!store.delete_segment("lapsed").await.unwrap());
    assert!(store.segment_members("lapsed").await.unwrap().is_empty());
    // The log keeps the two entries and records both members leaving with the segment.
    let log = store.segment_log("lapsed").await.unwrap();
    assert_eq!(
        log.iter().map(|c| c.entered).collect::<Vec<_>>(),
        vec![true, true, false, false]
    );
    let listed: Vec<(String, u64)> = store
        .segments()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.members))
        .collect();
    assert_eq!(listed, vec![("active".to_owned(), 2)]);
}

async fn memberships_follow_events_as_they_arrive(t: &TestStore) {
    let ing = ingestor(t);
    let store = &t.store;
    let now = chrono::Utc::now();
    store
        .save_segment("repeat", "orders >= 2", now)
        .await
        .unwrap();
    store
        .save_segment("web_only", "channel.web >= 1 and channel.store = 0", now)
        .await
        .unwrap();
    let live = ProfileProjection::new(store.clone(), 50).with_segments("CNY");
    let today = now.to_rfc3339();
    let visit = |phone: &str| {
        record(
            "page_viewed",
            "web",
            &today,
            json!({"phone": phone}),
            json!({"url": "/"}),
        )
    };
    let report = ing.ingest_json(&[visit("13900000001")]).await.unwrap();
    let a = customer_of(&report.records[0]);
    live.catch_up().await.unwrap();
    assert_eq!(store.segment_members("web_only").await.unwrap(), vec![a]);
    assert!(store.segment_members("repeat").await.unwrap().is_empty());

    // Two store orders: A becomes a repeat buyer and is no longer web-only.
    ing.ingest_json(&[
        order_on(0, "13900000001", 100),
        order_on(1, "13900000001", 100),
    ])
    .await
    .unwrap();
    live.catch_up().await.unwrap();
    assert_eq!(store.segment_members("repeat").await.unwrap(), vec![a]);
    assert!(store.segment_members("web_only").await.unwrap().is_empty());
    let log: Vec<bool> = store
        .segment_log("web_only")
        .await
        .unwrap()
        .iter()
        .map(|c| c.entered)
        .collect();
    assert_eq!(log, vec![true, false]);

    // B, web-only, is then merged into A through a shared email: B leaves the segment.
    let b = customer_of(
        &ing.ingest_json(&[visit("13900000002")])
            .await
            .unwrap()
            .records[0],
    );
    live.catch_up().await.unwrap();
    assert_eq!(store.segment_members("web_only").await.unwrap(), vec![b]);
    for phone in ["13900000001", "13900000002"] {
        ing.ingest_json(&[record(
            "custom",
            "app",
            &today,
            json!({"phone": phone, "email": "x@example.cn"}),
            json!({"name": "link"}),
        )])
        .await
        .unwrap();
    }
    live.catch_up().await.unwrap();
    assert!(store.segment_members("web_only").await.unwrap().is_empty());
    assert_eq!(store.segment_members("repeat").await.unwrap(), vec![a]);
}

crate::on_both_stores!(
    memberships_follow_events_as_they_arrive,
    saved_segments_follow_their_rules_and_log_entries_and_exits,
    a_rebuild_of_an_empty_log_finishes,
    a_rebuild_while_the_live_projection_runs_loses_nothing,
    profiles_of_an_earlier_fold_are_rebuilt_once,
    scoring_applies_the_rules_and_records_stage_transitions,
    a_profile_adds_up_its_customers_history_across_a_merge,
    a_batch_over_a_moved_checkpoint_writes_nothing,
);

/// One ingested record: who (by phone 0-5 and email 0-3, either may be missing), what, when.
type Step = (Option<u8>, Option<u8>, u8, u8);

fn histories() -> impl Strategy<Value = (Vec<Vec<Step>>, usize)> {
    let step = (
        prop::option::of(0..6u8),
        prop::option::of(0..4u8),
        0..4u8,
        0..24u8,
    );
    (
        prop::collection::vec(prop::collection::vec(step, 1..8), 1..6),
        1..9usize,
    )
}

fn step_record((phone, email, what, hour): Step) -> String {
    let mut identifiers = serde_json::Map::new();
    if let Some(p) = phone {
        identifiers.insert("phone".into(), json!(format!("1391234{p:04}")));
    }
    if let Some(e) = email {
        identifiers.insert("email".into(), json!(format!("p{e}@example.cn")));
    }
    if identifiers.is_empty() {
        identifiers.insert("device_id".into(), json!(format!("dev-{hour}")));
    }
    let at = format!("2026-03-{:02}T{hour:02}:15:00+00:00", 1 + hour % 20);
    let (event_type, channel, extra) = match what {
        0 => (
            "order_placed",
            "store",
            json!({"order_id": format!("O-{hour}"), "currency": "CNY", "items": [
                {"sku": "SKU-1", "category": if hour % 2 == 0 { "makeup" } else { "shoes" },
                 "quantity": 1 + u32::from(hour % 3), "unit_price_minor": 1000 + i64::from(hour),
                 "discount_minor": i64::from(hour % 2) * 100}]}),
        ),
        1 => ("screen_viewed", "app", json!({"screen": "home"})),
        2 => (
            "consent_changed",
            "web",
            json!({"purpose": "marketing_sms", "granted": hour % 2 == 0}),
        ),
        _ => ("page_viewed", "web", json!({"url": "/p/1"})),
    };
    record(event_type, channel, &at, Value::Object(identifiers), extra)
}

async fn check_incremental_equals_rebuild(
    backend: Backend,
    batches: Vec<Vec<Step>>,
    projection_batch: usize,
) -> Result<(), TestCaseError> {
    let Some(t) = TestStore::open(backend).await else {
        return Ok(());
    };
    let ing = ingestor(&t);
    let projection = ProfileProjection::new(t.store.clone(), projection_batch);
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let mut touchpoints = 0u64;
    for batch in &batches {
        let records: Vec<String> = batch.iter().copied().map(step_record).collect();
        let report = ing.ingest_json(&records).await.map_err(|e| fail(&e))?;
        touchpoints += report.accepted as u64;
        projection.catch_up().await.map_err(|e| fail(&e))?;
    }
    let incremental = t
        .store
        .all_profiles(ProfileTable::Live)
        .await
        .map_err(|e| fail(&e))?;
    // Every touchpoint counted once, in the live customers' profiles.
    let mut counted = 0;
    for row in incremental.iter().filter(|r| r.merged_into.is_none()) {
        let state: Value = serde_json::from_str(&row.state).map_err(|e| fail(&e))?;
        counted += state["touchpoints"].as_u64().unwrap_or(0);
    }
    prop_assert_eq!(counted, touchpoints);
    let (live, _, _) = t.store.identity_counts().await.map_err(|e| fail(&e))?;
    prop_assert_eq!(
        incremental
            .iter()
            .filter(|r| r.merged_into.is_none())
            .count() as u64,
        live
    );

    projection.rebuild(|_, _| {}).await.map_err(|e| fail(&e))?;
    let rebuilt = t
        .store
        .all_profiles(ProfileTable::Live)
        .await
        .map_err(|e| fail(&e))?;
    prop_assert_eq!(incremental, rebuilt);
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
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_incremental_profiles_equal_a_rebuild((batches, k) in histories()) {
        runtime().block_on(check_incremental_equals_rebuild(Backend::Sqlite, batches, k))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn postgres_incremental_profiles_equal_a_rebuild((batches, k) in histories()) {
        runtime().block_on(check_incremental_equals_rebuild(Backend::Postgres, batches, k))?;
    }
}
