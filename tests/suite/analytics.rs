//! Customer analytics through GraphQL, against figures worked out by hand: a small history of
//! seven customers across the app, the web and the stores gives the cohort table, funnels (with a
//! segment), the paths to a first purchase, attribution by model, product rules and the
//! data-quality report; a hand-built campaign gives its treated and control conversion; a demo of
//! a few thousand people gives back the BG/NBD parameters it was drawn with.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use patron::analytics::AnalyticsLimits;
use patron::ingest::{Ingestor, RecordOutcome};
use patron::projection::ProfileProjection;
use patron::server::{Application, ServerOptions, REQUEST_TIMEOUT};
use patron_domain::customer::CustomerId;
use patron_domain::identity::IdentityRules;
use serde_json::{json, Value};

use crate::helpers::TestStore;
use crate::http::{api_key, spawn_app, TestApp};

// ---------------------------------------------------------------------------------------------
// Records and requests.

/// The phone of customer `n` (1, 2, ...), as written by the channels.
fn phone(n: u32) -> String {
    format!("+86139000{n:05}")
}

/// A touchpoint of `event_type` on `channel` from the source `<channel>-system`.
fn touch(event_type: &str, channel: &str, at: &str, who: u32, extra: Value) -> Value {
    let mut r = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "channel": channel,
        "source": format!("{channel}-system"),
        "occurred_at": at,
        "identifiers": {"phone": phone(who)},
    });
    for (k, v) in extra.as_object().expect("an object") {
        r[k] = v.clone();
    }
    r
}

fn screen(at: &str, who: u32) -> Value {
    touch("screen_viewed", "app", at, who, json!({"screen": "home"}))
}

fn page(at: &str, who: u32) -> Value {
    touch(
        "page_viewed",
        "web",
        at,
        who,
        json!({"url": "https://shop.example/"}),
    )
}

fn visit(at: &str, who: u32) -> Value {
    touch(
        "store_visited",
        "store",
        at,
        who,
        json!({"store_id": "SH-1"}),
    )
}

fn cart(channel: &str, at: &str, who: u32) -> Value {
    touch(
        "cart_item_added",
        channel,
        at,
        who,
        json!({"item": {"sku": "SKU-LIP", "quantity": 1, "unit_price_minor": 9_900}}),
    )
}

/// An order of one of each SKU, each line `each_minor`, in CNY.
fn order(channel: &str, at: &str, who: u32, skus: &[&str], each_minor: i64) -> Value {
    let items: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "category": "makeup", "quantity": 1, "unit_price_minor": each_minor}))
        .collect();
    touch(
        "order_placed",
        channel,
        at,
        who,
        json!({"order_id": uuid::Uuid::new_v4().to_string(), "currency": "CNY", "items": items}),
    )
}

/// Posts a GraphQL request with `secret`; returns the body.
async fn post(app: &TestApp, secret: &str, query: &str, variables: Value) -> Value {
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(secret)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("a JSON body")
}

/// A query under `analytics` that must succeed; returns `data.analytics`.
async fn analytics(app: &TestApp, secret: &str, query: &str, variables: Value) -> Value {
    let body = post(app, secret, query, variables).await;
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
    body["data"]["analytics"].clone()
}

/// A request that must fail; returns its first error's code and message.
async fn refused(app: &TestApp, secret: &str, query: &str, variables: Value) -> (String, String) {
    let body = post(app, secret, query, variables).await;
    let error = &body["errors"][0];
    assert!(!error.is_null(), "expected an error: {body}");
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

const INGEST: &str =
    "mutation($records: [JSON!]!) { ingest(records: $records) { status customer code field } }";

/// Asserts that `actual` is a number within 1e-9 of `expected`.
#[track_caller]
fn close(actual: &Value, expected: f64, what: &str) {
    let a = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    assert!((a - expected).abs() < 1e-9, "{what}: {a} is not {expected}");
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The hand-built history.

/// Seven customers, A to G (phones 1 to 7), all times UTC unless said:
///
/// | who | touchpoints                                                                  |
/// |-----|------------------------------------------------------------------------------|
/// | A   | app view 03-02 10:00, app cart 03-02 10:05, web order 03-03 {LIP, BRUSH},      |
/// |     | store order 04-10 {LIP}, store order 06-05 {CREAM}                             |
/// | B   | app view 03-05 10:00, web cart 03-05 11:00, web order 03-20 {LIP, BRUSH},      |
/// |     | web order 04-02 {CREAM}                                                        |
/// | C   | web page 03-10 10:00, store visit 03-10 12:00, store order                     |
/// |     | 2026-04-01T02:00+08:00 (03-31 18:00 UTC) {LIP, BRUSH, CREAM}                   |
/// | D   | app view 04-03 10:00, app cart 04-03 10:10, app order 04-04 {BRUSH},           |
/// |     | web order 05-15 {LIP, BRUSH}                                                   |
/// | E   | app view 04-08, app cart 04-09; never buys                                     |
/// | F   | web page 03-01 10:00, store order 04-20 {CREAM}                                |
/// | G   | app view five days before now; never buys                                     |
///
/// plus one web record refused for its phone. Every line of an order costs 50.00 CNY.
fn history(now: DateTime<Utc>) -> Vec<Value> {
    let (a, b, c, d, e, f, g) = (1, 2, 3, 4, 5, 6, 7);
    let recent = (now - TimeDelta::days(5)).to_rfc3339();
    let mut refused = page("2026-03-15T10:00:00+00:00", a);
    refused["identifiers"] = json!({"phone": "12345"});
    vec![
        screen("2026-03-02T10:00:00+00:00", a),
        cart("app", "2026-03-02T10:05:00+00:00", a),
        order(
            "web",
            "2026-03-03T09:00:00+00:00",
            a,
            &["SKU-LIP", "SKU-BRUSH"],
            5_000,
        ),
        order("store", "2026-04-10T12:00:00+00:00", a, &["SKU-LIP"], 5_000),
        order(
            "store",
            "2026-06-05T12:00:00+00:00",
            a,
            &["SKU-CREAM"],
            5_000,
        ),
        screen("2026-03-05T10:00:00+00:00", b),
        cart("web", "2026-03-05T11:00:00+00:00", b),
        order(
            "web",
            "2026-03-20T10:00:00+00:00",
            b,
            &["SKU-LIP", "SKU-BRUSH"],
            5_000,
        ),
        order("web", "2026-04-02T10:00:00+00:00", b, &["SKU-CREAM"], 5_000),
        page("2026-03-10T10:00:00+00:00", c),
        visit("2026-03-10T12:00:00+00:00", c),
        order(
            "store",
            "2026-04-01T02:00:00+08:00",
            c,
            &["SKU-LIP", "SKU-BRUSH", "SKU-CREAM"],
            5_000,
        ),
        screen("2026-04-03T10:00:00+00:00", d),
        cart("app", "2026-04-03T10:10:00+00:00", d),
        order("app", "2026-04-04T10:00:00+00:00", d, &["SKU-BRUSH"], 5_000),
        order(
            "web",
            "2026-05-15T10:00:00+00:00",
            d,
            &["SKU-LIP", "SKU-BRUSH"],
            5_000,
        ),
        screen("2026-04-08T10:00:00+00:00", e),
        cart("app", "2026-04-09T10:00:00+00:00", e),
        page("2026-03-01T10:00:00+00:00", f),
        order(
            "store",
            "2026-04-20T10:00:00+00:00",
            f,
            &["SKU-CREAM"],
            5_000,
        ),
        screen(&recent, g),
        refused,
    ]
}

/// The history ingested over GraphQL, with profiles brought up to date.
struct Shop {
    /// The server.
    app: TestApp,
    /// An analyst's key.
    analyst: String,
    /// Each customer's id by the number of their phone (1 to 7).
    customers: HashMap<u32, String>,
    /// Just before and just after the records were stored.
    stored: (DateTime<Utc>, DateTime<Utc>),
    /// The records sent.
    records: Vec<Value>,
}

async fn shop(t: &TestStore) -> Shop {
    let app = spawn_app(t).await;
    let operator = api_key(t, "operator").await;
    let analyst = api_key(t, "analyst").await;
    let records = history(Utc::now());
    let before = Utc::now();
    let body = post(&app, &operator, INGEST, json!({"records": records})).await;
    let after = Utc::now();
    assert!(body.get("errors").is_none(), "{body}");
    let answers = body["data"]["ingest"].as_array().expect("answers").clone();
    assert_eq!(answers.len(), records.len());
    let mut customers = HashMap::new();
    for (record, answer) in records.iter().zip(&answers) {
        let who = record["identifiers"]["phone"].as_str().expect("a phone");
        if who == "12345" {
            assert_eq!(answer["status"], "rejected", "{answer}");
            assert_eq!(answer["code"], "invalid_identifier", "{answer}");
            continue;
        }
        assert_eq!(answer["status"], "accepted", "{answer}");
        let n: u32 = who[who.len() - 5..].parse().expect("a number");
        let id = answer["customer"].as_str().expect("a customer").to_owned();
        let known = customers.entry(n).or_insert_with(|| id.clone());
        assert_eq!(*known, id, "one customer per phone");
    }
    assert_eq!(customers.len(), 7);
    ProfileProjection::new(t.store.clone(), 1_000)
        .catch_up()
        .await
        .expect("catch up");
    Shop {
        app,
        analyst,
        customers,
        stored: (before, after),
        records,
    }
}

/// Months from `cohort` (a first of the month) to now's month, both counted.
fn months_to_now(cohort: NaiveDate) -> usize {
    let now = Utc::now();
    let index = |y: i32, m0: u32| i64::from(y) * 12 + i64::from(m0);
    usize::try_from(index(now.year(), now.month0()) - index(cohort.year(), cohort.month0()) + 1)
        .expect("the cohort is not in the future")
}

fn padded(mut counts: Vec<u64>, width: usize) -> Vec<u64> {
    counts.resize(width, 0);
    counts
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a date")
}

// ---------------------------------------------------------------------------------------------
// The analyses of the hand-built history.

const COHORTS: &str = "query($period: CohortPeriod!, $byChannel: Boolean!) { analytics {
    cohorts(period: $period, byChannel: $byChannel) { cohort channel customers buying retention } } }";

async fn cohorts_count_buyers_per_month_of_first_purchase(t: &TestStore) {
    let shop = shop(t).await;
    let data = analytics(
        &shop.app,
        &shop.analyst,
        COHORTS,
        json!({"period": "MONTH", "byChannel": false}),
    )
    .await;
    let rows = data["cohorts"].as_array().expect("rows");
    // First orders: A 03-03, B 03-20, C 03-31 18:00 UTC (April 1st in Shanghai: cohorts are
    // UTC months) in March; D 04-04 and F 04-20 in April. E and G never buy.
    // March: A buys in March, April, June (periods 0, 1, 3), B in March, April (0, 1), C in
    // March only: [3, 2, 0, 1, 0, ...] up to this month. April: D in April, May; F in April:
    // [2, 1, 0, ...].
    let march = date(2026, 3, 1);
    let april = date(2026, 4, 1);
    assert_eq!(rows.len(), 2, "{data}");
    assert_eq!(rows[0]["cohort"], "2026-03-01");
    assert_eq!(rows[0]["channel"], Value::Null);
    assert_eq!(rows[0]["customers"], 3);
    let buying: Vec<u64> = serde_json::from_value(rows[0]["buying"].clone()).expect("counts");
    assert_eq!(buying, padded(vec![3, 2, 0, 1], months_to_now(march)));
    let retention = numbers(&rows[0]["retention"]);
    assert_eq!(retention.len(), buying.len());
    for (k, expected) in [1.0, 2.0 / 3.0, 0.0, 1.0 / 3.0].into_iter().enumerate() {
        assert!((retention[k] - expected).abs() < 1e-12, "{retention:?}");
    }
    assert!(retention[4..].iter().all(|r| *r == 0.0), "{retention:?}");
    assert_eq!(rows[1]["cohort"], "2026-04-01");
    assert_eq!(rows[1]["customers"], 2);
    let buying: Vec<u64> = serde_json::from_value(rows[1]["buying"].clone()).expect("counts");
    assert_eq!(buying, padded(vec![2, 1], months_to_now(april)));
    close(&rows[1]["retention"][1], 0.5, "April's retention in May");

    // By the channel of the first order: March web (A, B), March store (C), April app (D),
    // April store (F).
    let data = analytics(
        &shop.app,
        &shop.analyst,
        COHORTS,
        json!({"period": "MONTH", "byChannel": true}),
    )
    .await;
    let split: BTreeMap<(String, String), (u64, Vec<u64>)> = data["cohorts"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                (
                    r["cohort"].as_str().expect("a date").to_owned(),
                    r["channel"].as_str().expect("a channel").to_owned(),
                ),
                (
                    r["customers"].as_u64().expect("a count"),
                    serde_json::from_value(r["buying"].clone()).expect("counts"),
                ),
            )
        })
        .collect();
    let row = |cohort: &str, channel: &str| split[&(cohort.to_owned(), channel.to_owned())].clone();
    assert_eq!(split.len(), 4, "{data}");
    assert_eq!(
        row("2026-03-01", "web"),
        (2, padded(vec![2, 2, 0, 1], months_to_now(march)))
    );
    assert_eq!(
        row("2026-03-01", "store"),
        (1, padded(vec![1], months_to_now(march)))
    );
    assert_eq!(
        row("2026-04-01", "app"),
        (1, padded(vec![1, 1], months_to_now(april)))
    );
    assert_eq!(
        row("2026-04-01", "store"),
        (1, padded(vec![1], months_to_now(april)))
    );
    // In time order first.
    let order: Vec<&str> = data["cohorts"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["cohort"].as_str())
        .collect();
    assert_eq!(
        order,
        vec!["2026-03-01", "2026-03-01", "2026-04-01", "2026-04-01"]
    );

    // Weeks start on Monday: A 03-03 (a Tuesday) in the week of 03-02; B 03-20 in that of
    // 03-16; C 03-31 and D 04-04 (a Saturday) in that of 03-30; F 04-20 (a Monday) in its own.
    // D buys again on 05-15, six weeks after the week of 03-30.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        COHORTS,
        json!({"period": "WEEK", "byChannel": false}),
    )
    .await;
    let weeks: Vec<(&str, u64)> = data["cohorts"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["cohort"].as_str().expect("a date"),
                r["customers"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(
        weeks,
        vec![
            ("2026-03-02", 1),
            ("2026-03-16", 1),
            ("2026-03-30", 2),
            ("2026-04-20", 1)
        ]
    );
    let spring = &data["cohorts"][2]["buying"];
    assert_eq!(spring[0], 2);
    assert_eq!(
        (1..6).map(|k| spring[k].as_u64()).collect::<Vec<_>>(),
        vec![Some(0); 5]
    );
    assert_eq!(spring[6], 1, "{spring}");
    // A: weeks 0 (03-03), 5 (04-10, in the week of 04-06) and 13 (06-05, week of 06-01).
    let a = &data["cohorts"][0]["buying"];
    assert_eq!(
        (a[0].as_u64(), a[5].as_u64(), a[13].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(
        a.as_array()
            .expect("counts")
            .iter()
            .filter(|n| **n == 1)
            .count(),
        3,
        "{a}"
    );
}

const FUNNEL: &str = "query($f: FunnelInput!) { analytics { funnel(funnel: $f) {
    step customers fromPrevious fromStart dropOff } } }";

/// The counts, drop-offs and shares of a funnel answer.
fn funnel_figures(data: &Value) -> (Vec<u64>, Vec<u64>, Vec<f64>, Vec<f64>) {
    let steps = data["funnel"].as_array().expect("steps");
    (
        steps
            .iter()
            .map(|s| s["customers"].as_u64().expect("a count"))
            .collect(),
        steps
            .iter()
            .map(|s| s["dropOff"].as_u64().expect("a count"))
            .collect(),
        steps
            .iter()
            .map(|s| s["fromPrevious"].as_f64().expect("a share"))
            .collect(),
        steps
            .iter()
            .map(|s| s["fromStart"].as_f64().expect("a share"))
            .collect(),
    )
}

#[track_caller]
fn shares_are(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-12, "{actual:?} is not {expected:?}");
    }
}

async fn funnels_count_ordered_steps_within_the_window_and_for_a_segment(t: &TestStore) {
    let shop = shop(t).await;
    let steps = json!(["app:screen_viewed", "cart_item_added", "order_placed"]);
    // An app view, then a cart add on any channel, then an order, within 7 days of the view:
    //   A: 03-02 view, 03-02 cart, 03-03 order: all three.
    //   B: 03-05 view, 03-05 cart (web), orders only 15 and 28 days later: two steps.
    //   C, F: no app view. D: 04-03, 04-03, 04-04: three. E: view, cart, no order: two.
    //   G: a view only: one.
    // Step 1: A B D E G = 5; step 2: A B D E = 4; step 3: A D = 2.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": steps, "windowDays": 7}}),
    )
    .await;
    let names: Vec<&str> = data["funnel"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["app:screen_viewed", "cart_item_added", "order_placed"]
    );
    let (counts, drops, previous, start) = funnel_figures(&data);
    assert_eq!(counts, vec![5, 4, 2]);
    assert_eq!(drops, vec![0, 1, 2]);
    shares_are(&previous, &[1.0, 0.8, 0.5]);
    shares_are(&start, &[1.0, 0.8, 0.4]);

    // Within 30 days B's order of 03-20 counts too.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": steps, "windowDays": 30}}),
    )
    .await;
    let (counts, drops, previous, _) = funnel_figures(&data);
    assert_eq!(counts, vec![5, 4, 3]);
    assert_eq!(drops, vec![0, 1, 1]);
    shares_are(&previous, &[1.0, 0.8, 0.75]);

    // Only runs starting in April or later: D (3 steps), E (2), G (1).
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": steps, "windowDays": 7, "from": "2026-04-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(funnel_figures(&data).0, vec![3, 2, 1]);
    // And before April: A (3), B (2).
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": steps, "windowDays": 7, "to": "2026-04-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(funnel_figures(&data).0, vec![2, 2, 1]);

    // The repeat buyers, saved as a segment: A (3 orders), B (2) and D (2).
    let created = post(
        &shop.app,
        &shop.analyst,
        "mutation { createSegment(name: \"repeat\", rule: \"orders >= 2\") { size members { edges { node { id } } } } }",
        json!({}),
    )
    .await;
    assert!(created.get("errors").is_none(), "{created}");
    assert_eq!(created["data"]["createSegment"]["size"], 3, "{created}");
    let members: HashSet<&str> = created["data"]["createSegment"]["members"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["id"].as_str())
        .collect();
    let expected: HashSet<&str> = [1, 2, 4]
        .iter()
        .map(|n| shop.customers[n].as_str())
        .collect();
    assert_eq!(members, expected);
    // Of them A and D go through all three steps, B stops at the cart.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": steps, "windowDays": 7, "segment": "repeat"}}),
    )
    .await;
    let (counts, drops, previous, start) = funnel_figures(&data);
    assert_eq!(counts, vec![3, 3, 2]);
    assert_eq!(drops, vec![0, 0, 1]);
    shares_are(&previous, &[1.0, 1.0, 2.0 / 3.0]);
    shares_are(&start, &[1.0, 1.0, 2.0 / 3.0]);

    // A step of a type never seen is reached by nobody.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        FUNNEL,
        json!({"f": {"steps": ["app:screen_viewed", "web:searched"]}}),
    )
    .await;
    let (counts, drops, previous, _) = funnel_figures(&data);
    assert_eq!(counts, vec![5, 0]);
    assert_eq!(drops, vec![0, 5]);
    shares_are(&previous, &[1.0, 0.0]);
}

const PATHS: &str =
    "query($maxSteps: Int!, $first: Int!) { analytics { paths(maxSteps: $maxSteps, first: $first) {
    steps customers converted conversion purchaseChannels { channel count } } } }";

async fn paths_to_a_first_purchase_are_counted_by_converted_customers(t: &TestStore) {
    let shop = shop(t).await;
    // Journeys before the first order:
    //   A: app:screen_viewed > app:cart_item_added, then a web order.
    //   B: app:screen_viewed > web:cart_item_added, then a web order.
    //   C: web:page_viewed > store:store_visited, then a store order.
    //   D: app:screen_viewed > app:cart_item_added, then an app order.
    //   E: app:screen_viewed > app:cart_item_added, no order.
    //   F: web:page_viewed, then a store order. G: app:screen_viewed, no order (no converter).
    // Top: A, D, E's path, 3 customers, 2 converted (an app and a web order); then the paths
    // of one converted customer each by their steps.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        PATHS,
        json!({"maxSteps": 4, "first": 20}),
    )
    .await;
    let rows = data["paths"].as_array().expect("rows");
    let top = &rows[0];
    assert_eq!(
        top["steps"],
        json!(["app:screen_viewed", "app:cart_item_added"])
    );
    assert_eq!(
        (top["customers"].as_u64(), top["converted"].as_u64()),
        (Some(3), Some(2))
    );
    close(&top["conversion"], 2.0 / 3.0, "conversion of the top path");
    assert_eq!(
        top["purchaseChannels"],
        json!([{"channel": "app", "count": 1}, {"channel": "web", "count": 1}])
    );
    let rest: Vec<(Value, u64, u64)> = rows[1..]
        .iter()
        .map(|r| {
            (
                r["steps"].clone(),
                r["customers"].as_u64().expect("a count"),
                r["converted"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(
        rest,
        vec![
            (json!(["app:screen_viewed", "web:cart_item_added"]), 1, 1),
            (json!(["web:page_viewed"]), 1, 1),
            (json!(["web:page_viewed", "store:store_visited"]), 1, 1),
        ]
    );
    assert_eq!(
        rows[3]["purchaseChannels"],
        json!([{"channel": "store", "count": 1}])
    );

    // One step: the last before the order. A, D, E: app:cart_item_added.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        PATHS,
        json!({"maxSteps": 1, "first": 1}),
    )
    .await;
    let rows = data["paths"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "first: 1");
    assert_eq!(rows[0]["steps"], json!(["app:cart_item_added"]));
    assert_eq!(
        (rows[0]["customers"].as_u64(), rows[0]["converted"].as_u64()),
        (Some(3), Some(2))
    );
}

const ATTRIBUTION: &str = "query($days: Int!) { analytics { attribution(lookbackDays: $days) {
    journeys conversions channels { channel
      conversions { lastTouch firstTouch linear shapley shapleyRate }
      share { lastTouch firstTouch linear shapley shapleyRate } } } } }";

const MODELS: [&str; 5] = [
    "lastTouch",
    "firstTouch",
    "linear",
    "shapley",
    "shapleyRate",
];

/// Each channel's credit under each model.
fn credits(data: &Value) -> BTreeMap<String, BTreeMap<&'static str, f64>> {
    data["attribution"]["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| {
            let by_model = MODELS
                .iter()
                .map(|m| (*m, c["conversions"][*m].as_f64().expect("a credit")))
                .collect();
            (c["channel"].as_str().expect("a name").to_owned(), by_model)
        })
        .collect()
}

async fn attribution_credits_every_order_to_the_touches_before_it(t: &TestStore) {
    let shop = shop(t).await;
    // One journey per order: the channels of the touchpoints since the previous order, within
    // 30 days before it, or the order's own channel when there are none.
    //   A: [app, app] (03-03), [store] (04-10), [store] (06-05)
    //   B: [app, web] (03-20, the view and cart 15 days before), [web] (04-02)
    //   C: [web, store] (the page and visit 21 days before)
    //   D: [app, app] (04-04), [web] (05-15)
    //   F: [store]: its page view was 50 days before the order, outside the 30 days
    // and one journey that did not convert: G's app view five days ago. E's view and cart
    // were months ago: no journey.
    // Last touch: app 2 (A1, D1), store 4 (A2, A3, C, F), web 3 (B1, B2, D2).
    // First touch: app 3 (A1, B1, D1), store 3 (A2, A3, F), web 3 (B2, C, D2).
    // Linear: app 1 + 1/2 + 1 = 2.5, store 1 + 1 + 1/2 + 1 = 3.5, web 1/2 + 1 + 1/2 + 1 = 3.
    // Shapley (1 / distinct channels to each channel of a journey): the same as linear here.
    // Shapley over rates: journeys by set of channels (converted / all): {app} 2/3 (G did not
    // convert), {store} 3/3, {web} 2/2, {app, web} 1/1, {store, web} 1/1. Coalition rates:
    // v(a) = 2/3, v(s) = v(w) = 1, v(a,s) = 5/6, v(a,w) = 5/6, v(s,w) = 1, v(a,s,w) = 9/10.
    // phi_app = 1/3 (2/3) + 1/6 (5/6 - 1) + 1/6 (5/6 - 1) + 1/3 (9/10 - 1) = 2/15;
    // phi_store = phi_web = 1/3 + 1/6 (1/6) + 0 + 1/3 (1/15) = 23/60; scaled by 9 / (9/10):
    // app 4/3, store 23/6, web 23/6.
    let data = analytics(&shop.app, &shop.analyst, ATTRIBUTION, json!({"days": 30})).await;
    assert_eq!(data["attribution"]["journeys"], 10, "{data}");
    assert_eq!(data["attribution"]["conversions"], 9, "{data}");
    let credit = credits(&data);
    let channels: Vec<&str> = credit.keys().map(String::as_str).collect();
    assert_eq!(channels, vec!["app", "store", "web"]);
    let expected: [(&str, [f64; 5]); 3] = [
        ("app", [2.0, 3.0, 2.5, 2.5, 4.0 / 3.0]),
        ("store", [4.0, 3.0, 3.5, 3.5, 23.0 / 6.0]),
        ("web", [3.0, 3.0, 3.0, 3.0, 23.0 / 6.0]),
    ];
    for (channel, values) in expected {
        for (model, value) in MODELS.iter().zip(values) {
            let got = credit[channel][model];
            assert!(
                (got - value).abs() < 1e-9,
                "{channel} under {model}: {got}, not {value}"
            );
        }
    }
    // Under every model the credits add up to the conversions, and shares to 1.
    for model in MODELS {
        let total: f64 = credit.values().map(|c| c[model]).sum();
        assert!((total - 9.0).abs() < 1e-9, "{model}: {total}");
        let shares: f64 = data["attribution"]["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["share"][model].as_f64().expect("a share"))
            .sum();
        assert!((shares - 1.0).abs() < 1e-9, "{model}: {shares}");
    }
    let store = data["attribution"]["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["channel"] == "store")
        .expect("store")
        .clone();
    close(
        &store["share"]["lastTouch"],
        4.0 / 9.0,
        "store's last-touch share",
    );

    // Over 60 days F's web page view counts: F's order goes to web, not store, under last
    // and first touch.
    let data = analytics(&shop.app, &shop.analyst, ATTRIBUTION, json!({"days": 60})).await;
    assert_eq!(data["attribution"]["conversions"], 9);
    let credit = credits(&data);
    assert_eq!(
        (
            credit["app"]["lastTouch"],
            credit["store"]["lastTouch"],
            credit["web"]["lastTouch"]
        ),
        (2.0, 3.0, 4.0)
    );
    assert_eq!(
        (credit["store"]["firstTouch"], credit["web"]["firstTouch"]),
        (2.0, 4.0)
    );
}

const ASSOCIATIONS: &str = "query($support: Float!, $confidence: Float!, $product: String) { analytics {
    associations(minSupport: $support, minConfidence: $confidence, product: $product) {
      orders itemsets rulesFound rules { antecedent consequent orders support confidence lift } } } }";

async fn product_rules_have_exact_support_confidence_and_lift(t: &TestStore) {
    let shop = shop(t).await;
    // Nine orders: {LIP, BRUSH} (A), {LIP} (A), {CREAM} (A), {LIP, BRUSH} (B), {CREAM} (B),
    // {LIP, BRUSH, CREAM} (C), {BRUSH} (D), {LIP, BRUSH} (D), {CREAM} (F).
    // LIP in 5, BRUSH in 5, CREAM in 4, LIP and BRUSH together in 4, CREAM with either in 1.
    // At a support of 0.2 (2 orders of 9), the frequent itemsets are the three products and
    // {LIP, BRUSH}; its rules LIP -> BRUSH and BRUSH -> LIP have support 4/9, confidence 4/5
    // and lift (4/5) / (5/9) = 1.44.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        ASSOCIATIONS,
        json!({"support": 0.2, "confidence": 0.5}),
    )
    .await;
    let a = &data["associations"];
    assert_eq!(
        (
            a["orders"].as_u64(),
            a["itemsets"].as_u64(),
            a["rulesFound"].as_u64()
        ),
        (Some(9), Some(4), Some(2)),
        "{a}"
    );
    let rules = a["rules"].as_array().expect("rules");
    let sides: HashSet<(String, String)> = rules
        .iter()
        .map(|r| (r["antecedent"].to_string(), r["consequent"].to_string()))
        .collect();
    assert_eq!(
        sides,
        HashSet::from([
            (
                json!(["SKU-LIP"]).to_string(),
                json!(["SKU-BRUSH"]).to_string()
            ),
            (
                json!(["SKU-BRUSH"]).to_string(),
                json!(["SKU-LIP"]).to_string()
            ),
        ])
    );
    for rule in rules {
        assert_eq!(rule["orders"], 4);
        close(&rule["support"], 4.0 / 9.0, "support");
        close(&rule["confidence"], 0.8, "confidence");
        close(&rule["lift"], 1.44, "lift");
    }

    // What is bought with lipstick, at any support: BRUSH (lift 1.44), then CREAM, in 1 of
    // LIP's 5 orders: confidence 1/5, lift (1/5) / (4/9) = 0.45, support 1/9.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        ASSOCIATIONS,
        json!({"support": 0.1, "confidence": 0.1, "product": "SKU-LIP"}),
    )
    .await;
    let rules = data["associations"]["rules"].as_array().expect("rules");
    let consequents: Vec<&Value> = rules.iter().map(|r| &r["consequent"]).collect();
    assert_eq!(
        consequents,
        vec![&json!(["SKU-BRUSH"]), &json!(["SKU-CREAM"])]
    );
    assert!(rules.iter().all(|r| r["antecedent"] == json!(["SKU-LIP"])));
    assert_eq!(rules[1]["orders"], 1);
    close(&rules[1]["support"], 1.0 / 9.0, "support");
    close(&rules[1]["confidence"], 0.2, "confidence");
    close(&rules[1]["lift"], 0.45, "lift");

    // A product no order holds is named in the refusal.
    let (code, message) = refused(
        &shop.app,
        &shop.analyst,
        ASSOCIATIONS,
        json!({"support": 0.1, "confidence": 0.1, "product": "SKU-NONE"}),
    )
    .await;
    assert_eq!(code, "INVALID_ARGUMENT", "{message}");
    assert!(
        message.contains("product") && message.contains("SKU-NONE"),
        "{message}"
    );
}

const QUALITY: &str = "query($period: CohortPeriod!) { analytics { dataQuality(period: $period) {
    customers completeness { kind customers share }
    sources { period source touchpoints refused refusalRate coreResolvedShare lagP50Seconds lagP95Seconds lagMaxSeconds }
    refusals { period source code records } } } }";

async fn data_quality_reports_completeness_refusals_and_delays_per_source(t: &TestStore) {
    let shop = shop(t).await;
    let (before, after) = shop.stored;
    let data = analytics(
        &shop.app,
        &shop.analyst,
        QUALITY,
        json!({"period": "MONTH"}),
    )
    .await;
    let q = &data["dataQuality"];
    // Seven customers, each known by a phone (a core identifier).
    assert_eq!(q["customers"], 7);
    assert_eq!(
        q["completeness"],
        json!([
            {"kind": "phone", "customers": 7, "share": 1.0},
            {"kind": "any core identifier", "customers": 7, "share": 1.0}
        ])
    );
    // Everything was stored now, so it falls in this month, whatever month it happened in.
    let month = date(after.year(), after.month(), 1).to_string();
    // app: A view, cart; B view; D view, cart, order; E view, cart; G view = 9.
    // store: A's two orders, C's visit and order, F's order = 5.
    // web: A order, B cart and two orders, C page, D order, F page = 7, and 1 refused:
    // a refusal rate of 1/8.
    let rows: Vec<(String, String, u64, u64)> = q["sources"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|s| {
            (
                s["period"].as_str().expect("a date").to_owned(),
                s["source"].as_str().expect("a source").to_owned(),
                s["touchpoints"].as_u64().expect("a count"),
                s["refused"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (month.clone(), "app-system".to_owned(), 9, 0),
            (month.clone(), "store-system".to_owned(), 5, 0),
            (month.clone(), "web-system".to_owned(), 7, 1),
        ]
    );
    close(&q["sources"][2]["refusalRate"], 0.125, "web refusal rate");
    close(&q["sources"][0]["refusalRate"], 0.0, "app refusal rate");
    for s in q["sources"].as_array().expect("rows") {
        close(&s["coreResolvedShare"], 1.0, "every touchpoint has a phone");
    }
    assert_eq!(
        q["refusals"],
        json!([{"period": month, "source": "web-system", "code": "invalid_identifier", "records": 1}])
    );

    // Delays, from happening to stored (between `before` and `after`), nearest rank:
    //   app (9): the median is the 5th smallest delay, D's cart of 04-03 10:10; the 95th
    //   percentile (9th) and the longest are A's view of 03-02 10:00.
    //   store (5): the median (3rd) is A's order of 04-10 12:00; the longest C's visit of 03-10
    //   12:00. web (7): the median (4th) is C's page of 03-10 10:00; the 95th percentile (7th)
    //   and the longest F's page of 03-01 10:00.
    let delay = |at: &str| {
        let at = DateTime::parse_from_rfc3339(at).expect("a time");
        (
            (before - at.to_utc()).num_seconds() - 1,
            (after - at.to_utc()).num_seconds() + 1,
        )
    };
    for (row, p50, max) in [
        (0, "2026-04-03T10:10:00Z", "2026-03-02T10:00:00Z"),
        (1, "2026-04-10T12:00:00Z", "2026-03-10T12:00:00Z"),
        (2, "2026-03-10T10:00:00Z", "2026-03-01T10:00:00Z"),
    ] {
        let s = &q["sources"][row];
        for (field, at) in [
            ("lagP50Seconds", p50),
            ("lagP95Seconds", max),
            ("lagMaxSeconds", max),
        ] {
            let (low, high) = delay(at);
            let got = s[field].as_i64().expect("seconds");
            assert!(
                (low..=high).contains(&got),
                "{} {field}: {got} not in {low}..={high}",
                s["source"]
            );
        }
    }

    // By week (the default), all in this week, starting on a Monday.
    let data = analytics(
        &shop.app,
        &shop.analyst,
        "{ analytics { dataQuality { sources { period touchpoints } refusals { period } } } }",
        json!({}),
    )
    .await;
    let today = after.date_naive();
    let monday = today - TimeDelta::days(i64::from(today.weekday().num_days_from_monday()));
    let sources = data["dataQuality"]["sources"].as_array().expect("rows");
    assert!(
        sources.iter().all(|s| s["period"] == monday.to_string()),
        "{data}"
    );
    let total: u64 = sources
        .iter()
        .map(|s| s["touchpoints"].as_u64().expect("a count"))
        .sum();
    assert_eq!(
        total,
        shop.records.len() as u64 - 1,
        "every stored record is a touchpoint"
    );
    assert_eq!(
        data["dataQuality"]["refusals"][0]["period"],
        monday.to_string()
    );
}

// ---------------------------------------------------------------------------------------------
// Merges and erasure.

async fn merged_customers_count_once_and_erased_ones_not_at_all(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = api_key(t, "operator").await;
    let admin = api_key(t, "admin").await;
    let analyst = api_key(t, "analyst").await;
    let ingest = |records: Vec<Value>| {
        let (app, operator) = (&app, &operator);
        async move {
            let body = post(app, operator, INGEST, json!({"records": records})).await;
            assert!(body.get("errors").is_none(), "{body}");
            let answers = body["data"]["ingest"].as_array().expect("answers").clone();
            assert!(
                answers.iter().all(|a| a["status"] == "accepted"),
                "{answers:?}"
            );
            answers
        }
    };
    let by_email = |mut r: Value| {
        r["identifiers"] = json!({"email": "yan@shop.example"});
        r
    };
    // X buys in a store on 03-01 (phone 801); Y, known only by an email, views the app and
    // adds to the cart on 03-02.
    let first = ingest(vec![
        order("store", "2026-03-01T10:00:00Z", 801, &["SKU-A"], 5_000),
        by_email(screen("2026-03-02T10:00:00Z", 0)),
        by_email(cart("app", "2026-03-02T10:05:00Z", 0)),
    ])
    .await;
    let x = first[0]["customer"].as_str().expect("an id").to_owned();
    assert_ne!(first[1]["customer"], x.as_str(), "two customers so far");
    let steps = json!({"f": {"steps": ["app:screen_viewed", "cart_item_added", "order_placed"]}});
    let data = analytics(&app, &analyst, FUNNEL, steps.clone()).await;
    assert_eq!(funnel_figures(&data).0, vec![1, 1, 0]);
    let cohorts = json!({"period": "MONTH", "byChannel": false});
    let data = analytics(&app, &analyst, COHORTS, cohorts.clone()).await;
    assert_eq!(data["cohorts"][0]["customers"], 1);

    // An order on the web on 03-03 with both the phone and the email: X and Y are one person
    // (X, the older, survives), whose app view, cart add and order now make the funnel. W
    // buys on 03-05.
    let mut both = order("web", "2026-03-03T10:00:00Z", 801, &["SKU-A"], 5_000);
    both["identifiers"] = json!({"phone": phone(801), "email": "yan@shop.example"});
    let second = ingest(vec![
        both,
        order("store", "2026-03-05T10:00:00Z", 802, &["SKU-A"], 5_000),
    ])
    .await;
    assert_eq!(
        second[0]["customer"],
        x.as_str(),
        "the older customer survives"
    );
    let w = second[1]["customer"].as_str().expect("an id").to_owned();
    let data = analytics(&app, &analyst, FUNNEL, steps.clone()).await;
    assert_eq!(funnel_figures(&data).0, vec![1, 1, 1]);
    let data = analytics(&app, &analyst, COHORTS, cohorts.clone()).await;
    assert_eq!(data["cohorts"][0]["customers"], 2, "{data}");
    // X+Y bought on 03-01 and 03-03, W on 03-05: three orders, all in March.
    assert_eq!(data["cohorts"][0]["buying"][0], 2);
    // X+Y's journeys: [store] for the first order (no touch before it), [app, app] for the
    // second; W's: [store].
    let data = analytics(&app, &analyst, ATTRIBUTION, json!({"days": 30})).await;
    assert_eq!(data["attribution"]["conversions"], 3);
    let credit = credits(&data);
    assert_eq!(
        (credit["app"]["lastTouch"], credit["store"]["lastTouch"]),
        (1.0, 2.0)
    );

    // W is erased: gone from every figure.
    let erased = post(
        &app,
        &admin,
        "mutation($id: ID!) { eraseCustomer(id: $id, reason: \"request 9\") { customer } }",
        json!({"id": w}),
    )
    .await;
    assert!(erased.get("errors").is_none(), "{erased}");
    let data = analytics(&app, &analyst, COHORTS, cohorts).await;
    assert_eq!(data["cohorts"][0]["customers"], 1, "{data}");
    let data = analytics(&app, &analyst, ATTRIBUTION, json!({"days": 30})).await;
    assert_eq!(data["attribution"]["conversions"], 2);
    let data = analytics(
        &app,
        &analyst,
        ASSOCIATIONS,
        json!({"support": 0.1, "confidence": 0.1}),
    )
    .await;
    assert_eq!(data["associations"]["orders"], 2, "W's order is gone");
    let data = analytics(&app, &analyst, QUALITY, json!({"period": "MONTH"})).await;
    let q = &data["dataQuality"];
    assert_eq!(q["customers"], 1);
    let kinds: Vec<(&str, u64)> = q["completeness"]
        .as_array()
        .expect("kinds")
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().expect("a kind"),
                c["customers"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("email", 1), ("phone", 1), ("any core identifier", 1)]
    );
}

async fn a_segment_deleted_and_saved_again_is_measured_on_its_new_members_only(t: &TestStore) {
    let shop = shop(t).await;
    let save = |rule: &str| {
        format!("mutation {{ createSegment(name: \"promo\", rule: \"{rule}\") {{ size }} }}")
    };
    // First the repeat buyers (A, B, D); the segment is deleted, then saved again for the
    // customers with three orders or more: A alone.
    let created = post(&shop.app, &shop.analyst, &save("orders >= 2"), json!({})).await;
    assert_eq!(created["data"]["createSegment"]["size"], 3, "{created}");
    let deleted = post(
        &shop.app,
        &shop.analyst,
        "mutation { deleteSegment(name: \"promo\") }",
        json!({}),
    )
    .await;
    assert_eq!(deleted["data"]["deleteSegment"], true, "{deleted}");
    let created = post(&shop.app, &shop.analyst, &save("orders >= 3"), json!({})).await;
    assert_eq!(created["data"]["createSegment"]["size"], 1, "{created}");
    // Targeted now, the segment holds A alone; B and D left it when it was deleted.
    let at = (Utc::now() + TimeDelta::seconds(1)).to_rfc3339();
    let data = analytics(
        &shop.app,
        &shop.analyst,
        "query($at: DateTime!) { analytics { campaignEffect(segment: \"promo\", at: $at) { targeted treated { customers } } } }",
        json!({"at": at}),
    )
    .await;
    // Deleting a segment logs its members' exits, so replaying the log under the name at `at`
    // finds A alone (B and D left with the deleted segment).
    assert_eq!(
        data["campaignEffect"]["targeted"], 1,
        "only the current segment's member was targeted: {data}"
    );
}

crate::on_both_stores!(
    cohorts_count_buyers_per_month_of_first_purchase,
    funnels_count_ordered_steps_within_the_window_and_for_a_segment,
    paths_to_a_first_purchase_are_counted_by_converted_customers,
    attribution_credits_every_order_to_the_touches_before_it,
    product_rules_have_exact_support_confidence_and_lift,
    data_quality_reports_completeness_refusals_and_delays_per_source,
    analytics_are_for_analysts_and_bad_arguments_are_named,
    a_campaign_is_measured_on_the_members_the_segment_had_at_the_time,
    merged_customers_count_once_and_erased_ones_not_at_all,
    a_segment_deleted_and_saved_again_is_measured_on_its_new_members_only,
    thousands_of_analyses_in_one_request_are_refused_before_anything_runs,
    analyses_take_turns_across_requests_and_one_kept_waiting_is_busy,
);

// ---------------------------------------------------------------------------------------------
// The cost of analyses: their weight in the complexity limit, and turns across requests.

/// A server over the test's store whose analytics run `concurrency` at a time, waiting `wait`
/// for a turn.
async fn spawn_limited_app(t: &TestStore, concurrency: usize, wait: Duration) -> TestApp {
    let ingestor = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let options = ServerOptions {
        analytics: AnalyticsLimits { concurrency, wait },
        ..ServerOptions::default()
    };
    let app = Application::build_with(ingestor, "127.0.0.1:0", options).expect("bind a free port");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        ingest_key: api_key(t, "ingest").await,
    }
}

/// The value of the metric `name` (a line `name value`) in the server's `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `{ analytics { a0: <field> a1: <field> ... } }` with `n` aliases.
fn aliased(field: &str, n: usize) -> String {
    let fields: String = (0..n).map(|i| format!("a{i}: {field} ")).collect();
    format!("{{ analytics {{ {fields}}} }}")
}

async fn thousands_of_analyses_in_one_request_are_refused_before_anything_runs(t: &TestStore) {
    let app = shop(t).await.app;
    let analyst = api_key(t, "analyst").await;
    let viewer = api_key(t, "viewer").await;
    let ltv = "lifetimeValue { customers }";
    let started = std::time::Instant::now();
    // 1,500 aliases (52 KB, within the 64 KiB a document may have): refused for its cost.
    let (code, message) = refused(&app, &analyst, &aliased(ltv, 1_500), json!({})).await;
    assert_eq!(code, "QUERY_TOO_COMPLEX", "{message}");
    assert!(message.contains("50000"), "the limit is named: {message}");
    assert!(message.contains("lifetimeValue 20000"), "{message}");
    assert_eq!(metric(&app, "patron_analytics_runs_total").await, 0.0);
    // The server is free for a viewer at once.
    let me = post(&app, &viewer, "{ me { name role } }", json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "VIEWER", "{me}");
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "refused at validation, not after running"
    );

    // What a request may hold: two lifetime values, or four other analyses, or one lifetime
    // value and two others.
    for (query, allowed) in [
        (aliased(ltv, 3), false),
        (aliased("cohorts { customers }", 5), false),
        (
            format!(
                "{{ analytics {{ {ltv} cohorts {{ customers }} paths {{ customers }} \
                 attribution {{ conversions }} }} }}"
            ),
            false,
        ),
        (aliased(ltv, 2), true),
        (
            format!("{{ analytics {{ {ltv} cohorts {{ customers }} paths {{ customers }} }} }}"),
            true,
        ),
        (aliased("attribution { conversions }", 4), true),
    ] {
        let body = post(&app, &analyst, &query, json!({})).await;
        let code = body["errors"][0]["extensions"]["code"].as_str();
        if allowed {
            // Run (the lifetime value of five buyers may not fit: that is its own error).
            assert_ne!(code, Some("QUERY_TOO_COMPLEX"), "{query}: {body}");
            // It ran: every error, if any, is a field's own (it has a path), none is the
            // validation's.
            let ran = body["errors"]
                .as_array()
                .is_none_or(|errors| errors.iter().all(|e| e["path"].is_array()));
            assert!(ran && body.get("data").is_some(), "{query}: {body}");
        } else {
            assert_eq!(code, Some("QUERY_TOO_COMPLEX"), "{query}: {body}");
        }
    }
    assert_eq!(metric(&app, "patron_analytics_runs_total").await, 9.0);

    // Rules judged over every customer count too: a viewer's 60 previews are refused, 40 run.
    let previews = |n: usize| -> String {
        let fields: String = (0..n)
            .map(|i| format!("p{i}: previewSegment(rule: \"orders >= {i}\") {{ size }} "))
            .collect();
        format!("{{ {fields}}}")
    };
    let body = post(&app, &viewer, &previews(60), json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body}"
    );
    let body = post(&app, &viewer, &previews(40), json!({})).await;
    assert!(body["errors"].is_null(), "{body}");
    let size = |i: usize| body["data"][format!("p{i}")]["size"].as_u64();
    assert!(size(0).is_some_and(|all| all > 0), "{body}");
    assert!(size(0) >= size(1) && size(1) >= size(39), "{body}");
}

async fn analyses_take_turns_across_requests_and_one_kept_waiting_is_busy(t: &TestStore) {
    let sound: Vec<Value> = history(Utc::now())
        .into_iter()
        .filter(|r| r["identifiers"]["phone"] != "12345")
        .collect();
    ingest_directly(t, &sound).await;
    ProfileProjection::new(t.store.clone(), 1_000)
        .catch_up()
        .await
        .expect("catch up");
    let heavy = "{ analytics { cohorts { customers } attribution { conversions } \
        paths { customers } associations { orders } } }";

    // One turn: two requests of four analyses each all run, one at a time.
    let app = spawn_limited_app(t, 1, Duration::from_secs(60)).await;
    let analyst = api_key(t, "analyst").await;
    let (first, second) = tokio::join!(
        post(&app, &analyst, heavy, json!({})),
        post(&app, &analyst, heavy, json!({}))
    );
    for body in [&first, &second] {
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(
            body["data"]["analytics"]["cohorts"][0]["customers"], 3,
            "{body}"
        );
    }
    assert_eq!(metric(&app, "patron_analytics_runs_total").await, 8.0);
    assert_eq!(metric(&app, "patron_analytics_running_max").await, 1.0);
    assert_eq!(metric(&app, "patron_analytics_busy_total").await, 0.0);
    assert_eq!(metric(&app, "patron_analytics_running").await, 0.0);

    // No wait allowed: of two analyses in one request, the second finds the turn taken.
    let impatient = spawn_limited_app(t, 1, Duration::ZERO).await;
    let body = post(
        &impatient,
        &analyst,
        "{ analytics { a: cohorts { customers } b: cohorts { customers } } }",
        json!({}),
    )
    .await;
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["extensions"]["code"], "BUSY", "{body}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("analytics_concurrency") && message.contains("analytics_wait_ms"),
        "the message names the settings: {message}"
    );
    assert_eq!(metric(&impatient, "patron_analytics_busy_total").await, 1.0);
    assert_eq!(metric(&impatient, "patron_analytics_runs_total").await, 1.0);
    // The turn is free again once the first is done.
    let data = analytics(
        &impatient,
        &analyst,
        "{ analytics { cohorts { customers } } }",
        json!({}),
    )
    .await;
    assert!(!data["cohorts"].as_array().expect("cohorts").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Access and arguments.

async fn analytics_are_for_analysts_and_bad_arguments_are_named(t: &TestStore) {
    let app = spawn_app(t).await;
    let viewer = api_key(t, "viewer").await;
    let analyst = api_key(t, "analyst").await;
    let operator = api_key(t, "operator").await;
    let cohorts = "{ analytics { cohorts { customers } } }";
    for query in [
        cohorts,
        "{ analytics { dataQuality { customers } } }",
        "{ analytics { attribution { conversions } } }",
    ] {
        let (code, message) = refused(&app, &viewer, query, json!({})).await;
        assert_eq!(code, "FORBIDDEN", "{query}: {message}");
    }
    // Analysts and the roles above them may ask; an empty store has no cohort.
    for secret in [&analyst, &operator] {
        let data = analytics(&app, secret, cohorts, json!({})).await;
        assert_eq!(data["cohorts"], json!([]));
    }

    let funnel = |f: Value| json!({"f": f});
    let normalized = |s: &str| s.replace('_', "").to_lowercase();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (FUNNEL, funnel(json!({"steps": ["order_placed"]})), "INVALID_ARGUMENT", "steps"),
        (
            FUNNEL,
            funnel(json!({"steps": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]})),
            "INVALID_ARGUMENT",
            "steps",
        ),
        (
            FUNNEL,
            funnel(json!({"steps": [":screen_viewed", "order_placed"]})),
            "INVALID_ARGUMENT",
            "steps",
        ),
        (
            FUNNEL,
            funnel(json!({"steps": ["screen_viewed", "order_placed"], "windowDays": 0})),
            "INVALID_ARGUMENT",
            "windowDays",
        ),
        (
            FUNNEL,
            funnel(json!({"steps": ["screen_viewed", "order_placed"], "segment": "no-such-segment"})),
            "NOT_FOUND",
            "no-such-segment",
        ),
        (
            "{ analytics { lifetimeValue(first: 0) { customers } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "first",
        ),
        (
            "{ analytics { paths(first: 0) { customers } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "first",
        ),
        (
            "{ analytics { paths(maxSteps: 0) { customers } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "maxSteps",
        ),
        (
            "{ analytics { paths(maxSteps: 21) { customers } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "maxSteps",
        ),
        (
            "{ analytics { associations(maxLength: 0) { orders } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "maxLength",
        ),
        (
            "{ analytics { associations(minSupport: 0) { orders } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "minSupport",
        ),
        (
            "{ analytics { associations(minConfidence: 1.5) { orders } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "minConfidence",
        ),
        (
            "{ analytics { attribution(lookbackDays: 0) { conversions } } }",
            json!({}),
            "INVALID_ARGUMENT",
            "lookbackDays",
        ),
        (
            "{ analytics { campaignEffect(segment: \"no-such-segment\", at: \"2026-06-01T00:00:00Z\") { targeted } } }",
            json!({}),
            "NOT_FOUND",
            "no-such-segment",
        ),
    ];
    for (query, variables, expected, names) in cases {
        let (code, message) = refused(&app, &analyst, query, variables.clone()).await;
        assert_eq!(code, expected, "{variables}: {message}");
        // The parameter may be written as in the schema or in snake case.
        assert!(
            normalized(&message).contains(&normalized(names)),
            "{query} {variables}: the message does not name {names}: {message}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Campaign effect.

/// Ingests records straight into the store, as the server's ingestor would; returns each
/// customer by the number of their phone.
async fn ingest_directly(t: &TestStore, records: &[Value]) -> HashMap<u32, CustomerId> {
    let ingestor = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let texts: Vec<String> = records.iter().map(Value::to_string).collect();
    let report = ingestor.ingest_json(&texts).await.expect("ingest");
    let mut ids = HashMap::new();
    for (record, outcome) in records.iter().zip(&report.records) {
        let RecordOutcome::Accepted { customer, .. } = outcome else {
            panic!("{record} was not accepted: {outcome:?}");
        };
        let who = record["identifiers"]["phone"].as_str().expect("a phone");
        let n: u32 = who[who.len() - 5..].parse().expect("a number");
        let known = ids.entry(n).or_insert(*customer);
        assert_eq!(known, customer, "one customer per phone");
    }
    ids
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("a time").to_utc()
}

async fn a_campaign_is_measured_on_the_members_the_segment_had_at_the_time(t: &TestStore) {
    // Targeted at 2026-06-01 00:00 UTC; the window is June, the pre-period the 90 days before.
    // Phones 101-105 are T1-T5, 201-206 the others K1-K6, 301 N.
    let (t1, t2, t3, t4, t5) = (101, 102, 103, 104, 105);
    let (k1, k2, k3, k4, k5, k6) = (201, 202, 203, 204, 205, 206);
    let n = 301;
    let records = vec![
        // Before: T1, T2, K1, K2 bought once and visited once (stratum "bought, 1-2 visits").
        screen("2026-05-09T10:00:00Z", t1),
        order("store", "2026-05-10T10:00:00Z", t1, &["SKU-A"], 10_000),
        page("2026-05-11T10:00:00Z", t2),
        order("web", "2026-05-12T10:00:00Z", t2, &["SKU-A"], 10_000),
        screen("2026-05-04T10:00:00Z", k1),
        order("store", "2026-05-05T10:00:00Z", k1, &["SKU-A"], 10_000),
        screen("2026-05-05T10:00:00Z", k2),
        order("store", "2026-05-06T10:00:00Z", k2, &["SKU-A"], 10_000),
        // T3, T4, K3-K6 visited once without buying ("no order, 1-2 visits").
        screen("2026-05-20T10:00:00Z", t3),
        screen("2026-05-21T10:00:00Z", t4),
        screen("2026-05-22T10:00:00Z", k3),
        screen("2026-05-23T10:00:00Z", k4),
        page("2026-05-24T10:00:00Z", k5),
        page("2026-05-25T10:00:00Z", k6),
        // T5 bought and visited three times: a stratum without control customers.
        order("store", "2026-05-01T10:00:00Z", t5, &["SKU-A"], 10_000),
        screen("2026-05-02T10:00:00Z", t5),
        screen("2026-05-03T10:00:00Z", t5),
        screen("2026-05-04T10:00:00Z", t5),
        // After.
        order("web", "2026-06-10T10:00:00Z", t1, &["SKU-A"], 20_000),
        order("web", "2026-06-15T10:00:00Z", t2, &["SKU-A"], 10_000),
        screen("2026-06-19T10:00:00Z", t3),
        order("app", "2026-06-20T10:00:00Z", t3, &["SKU-A"], 6_000),
        order("web", "2026-06-02T10:00:00Z", t5, &["SKU-A"], 50_000),
        order("store", "2026-06-05T10:00:00Z", k1, &["SKU-A"], 12_000),
        order("web", "2026-06-25T10:00:00Z", k4, &["SKU-A"], 4_000),
        page("2026-06-08T10:00:00Z", k5),
        // N was first seen after the targeting: neither treated nor control.
        order("web", "2026-06-03T10:00:00Z", n, &["SKU-A"], 3_000),
        // After the window: not counted.
        order("web", "2026-07-05T10:00:00Z", t4, &["SKU-A"], 9_000),
    ];
    let ids = ingest_directly(t, &records).await;
    let members = |who: &[u32]| -> HashSet<CustomerId> { who.iter().map(|w| ids[w]).collect() };
    // The segment's log: T1-T5 and K2 entered on 05-22; K2 left an hour before the targeting;
    // K4 entered five days after it. At the targeting the members were T1-T5.
    let name = "june_sms";
    t.store
        .save_segment(name, "orders >= 1", at("2026-05-22T00:00:00Z"))
        .await
        .expect("save the segment");
    for (when, who) in [
        ("2026-05-22T00:00:00Z", vec![t1, t2, t3, t4, t5, k2]),
        ("2026-05-31T23:00:00Z", vec![t1, t2, t3, t4, t5]),
        ("2026-06-06T00:00:00Z", vec![t1, t2, t3, t4, t5, k4]),
    ] {
        t.store
            .set_segment_members(name, &members(&who), at(when))
            .await
            .expect("set the members");
    }

    let app = spawn_app(t).await;
    let analyst = api_key(t, "analyst").await;
    let query = "query($at: DateTime!) { analytics { campaignEffect(segment: \"june_sms\", at: $at, windowDays: 30, lookbackDays: 90) {
        targeted treatedEligible treatedExcluded
        treated { customers effectiveCustomers conversion averageOrderValue visitsPerCustomer }
        controlRaw { customers effectiveCustomers conversion averageOrderValue visitsPerCustomer }
        controlReweighted { customers effectiveCustomers conversion averageOrderValue visitsPerCustomer }
        effect { conversion { difference standardError ciLow ciHigh }
                 averageOrderValue { difference ciLow ciHigh }
                 visitsPerCustomer { difference standardError } }
        unadjusted { conversion { difference } averageOrderValue { difference } visitsPerCustomer { difference } } } } }";
    let data = analytics(&app, &analyst, query, json!({"at": "2026-06-01T00:00:00Z"})).await;
    let e = &data["campaignEffect"];
    // T1-T5 targeted and known by then; T5 has no comparable control and is left out.
    assert_eq!(
        (
            e["targeted"].as_u64(),
            e["treatedEligible"].as_u64(),
            e["treatedExcluded"].as_u64()
        ),
        (Some(5), Some(5), Some(1)),
        "{e}"
    );
    // Treated: stratum 1 (T1, T2) both order; stratum 2 (T3, T4) one of two: conversion
    // 1/2 * 1 + 1/2 * 1/2 = 0.75. Orders 20000, 10000, 6000: 12000 on average. Visits: T3's
    // one, 1/2 * 0 + 1/2 * 1/2 = 0.25 per customer.
    let treated = &e["treated"];
    assert_eq!(treated["customers"], 4);
    close(
        &treated["effectiveCustomers"],
        4.0,
        "treated effective size",
    );
    close(&treated["conversion"], 0.75, "treated conversion");
    close(
        &treated["averageOrderValue"],
        12_000.0,
        "treated order value",
    );
    close(&treated["visitsPerCustomer"], 0.25, "treated visits");
    // Control, raw: K1 and K4 of six order: 1/3; orders 12000 and 4000: 8000; K5's visit: 1/6.
    let raw = &e["controlRaw"];
    assert_eq!(raw["customers"], 6, "N is not eligible: {raw}");
    close(
        &raw["effectiveCustomers"],
        6.0,
        "raw control effective size",
    );
    close(&raw["conversion"], 1.0 / 3.0, "raw control conversion");
    close(
        &raw["averageOrderValue"],
        8_000.0,
        "raw control order value",
    );
    close(&raw["visitsPerCustomer"], 1.0 / 6.0, "raw control visits");
    // Reweighted to the treated mix (1/2, 1/2): stratum 1 (K1, K2) converts 1/2, stratum 2
    // (K3-K6) 1/4: 1/2 * 1/2 + 1/2 * 1/4 = 0.375. Order value (1/2 * 6000 + 1/2 * 1000) /
    // (1/2 * 1/2 + 1/2 * 1/4) = 3500 / 0.375 = 28000/3. Visits 1/2 * 0 + 1/2 * 1/4 = 1/8.
    // Effective size 1 / (1/4 / 2 + 1/4 / 4) = 16/3.
    let reweighted = &e["controlReweighted"];
    assert_eq!(reweighted["customers"], 6);
    close(
        &reweighted["effectiveCustomers"],
        16.0 / 3.0,
        "effective size",
    );
    close(&reweighted["conversion"], 0.375, "reweighted conversion");
    close(
        &reweighted["averageOrderValue"],
        28_000.0 / 3.0,
        "reweighted order value",
    );
    close(&reweighted["visitsPerCustomer"], 0.125, "reweighted visits");
    // Effect on conversion: 0.75 - 0.375, with variance 1/4 (1/2 * 1/2) / 2 (treated) +
    // 1/4 (1/2 * 1/2) / 2 + 1/4 (1/4 * 3/4) / 4 (control) = 19/256.
    let conversion = &e["effect"]["conversion"];
    let se = 19f64.sqrt() / 16.0;
    close(&conversion["difference"], 0.375, "conversion effect");
    close(&conversion["standardError"], se, "its standard error");
    close(
        &conversion["ciLow"],
        0.375 - 1.959_963_984_540_054 * se,
        "low",
    );
    close(
        &conversion["ciHigh"],
        0.375 + 1.959_963_984_540_054 * se,
        "high",
    );
    // Visits: sample variances 1/2 (T3, T4) and 1/4 (K3-K6): 1/4 * 1/2 / 2 + 1/4 * 1/4 / 4.
    let visits = &e["effect"]["visitsPerCustomer"];
    close(&visits["difference"], 0.125, "visits effect");
    close(
        &visits["standardError"],
        (5.0f64 / 64.0).sqrt(),
        "its standard error",
    );
    let value = &e["effect"]["averageOrderValue"];
    close(
        &value["difference"],
        12_000.0 - 28_000.0 / 3.0,
        "order value effect",
    );
    let (low, high) = (
        value["ciLow"].as_f64().expect("low"),
        value["ciHigh"].as_f64().expect("high"),
    );
    assert!(low < 8_000.0 / 3.0 && 8_000.0 / 3.0 < high, "{value}");
    let unadjusted = &e["unadjusted"];
    close(
        &unadjusted["conversion"]["difference"],
        0.75 - 1.0 / 3.0,
        "unadjusted",
    );
    close(
        &unadjusted["averageOrderValue"]["difference"],
        4_000.0,
        "unadjusted",
    );
    close(
        &unadjusted["visitsPerCustomer"]["difference"],
        0.25 - 1.0 / 6.0,
        "unadjusted",
    );

    // Before anyone entered, nobody was targeted: there is nothing to measure.
    let (code, message) =
        refused(&app, &analyst, query, json!({"at": "2026-05-01T00:00:00Z"})).await;
    assert_eq!(code, "INVALID_ARGUMENT", "{message}");
    assert!(message.contains("segment"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Lifetime value against the demo's known parameters.

/// People in the demo, and its seed.
const DEMO_PEOPLE: usize = 3_000;
const DEMO_SEED: u64 = 11;
/// Relative errors allowed on the mean purchase rate and the mean dropout.
const RATE_TOLERANCE: f64 = 0.15;
const DROPOUT_TOLERANCE: f64 = 0.15;

const LIFETIME_VALUE: &str = "{ analytics { lifetimeValue(horizonDays: 90, churnDays: 60, first: 100) {
    currency horizonDays churnDays customers repeatCustomers
    bgNbd { r alpha a b logLikelihood } gammaGamma { p q v }
    churnedByRule meanPAlive expectedPurchases expectedValueMinor
    top { customerId repeatPurchases daysSinceLastPurchase pAlive expectedPurchases expectedValueMinor churnedByRule } } } }";

/// The demo draws each person's purchase rate from Gamma(r = 2, rate alpha = 90 days) and their
/// dropout probability after each repeat purchase from Beta(a = 2, b = 6): a mean rate r / alpha
/// of 2/90 a day and a mean dropout a / (a + b) of 0.25. The BG/NBD fit over the loaded demo
/// gives both back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_value_recovers_the_demo_purchase_process() {
    use patron::demo::{run_demo, DemoConfig};
    let t = TestStore::open(crate::helpers::Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let ingestor = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let config = DemoConfig {
        people: DEMO_PEOPLE,
        seed: DEMO_SEED,
        ..DemoConfig::default()
    };
    let summary = run_demo(&ingestor, &config, 10_000)
        .await
        .expect("load the demo");
    assert_eq!(summary.sound_rejected, 0, "{summary:?}");
    let app = spawn_app(&t).await;
    let analyst = api_key(&t, "analyst").await;
    let data = analytics(&app, &analyst, LIFETIME_VALUE, json!({})).await;
    let v = &data["lifetimeValue"];
    assert_eq!(v["currency"], "CNY");
    assert_eq!(
        (v["horizonDays"].as_u64(), v["churnDays"].as_u64()),
        (Some(90), Some(60))
    );
    let customers = v["customers"].as_u64().expect("a count");
    let repeat = v["repeatCustomers"].as_u64().expect("a count");
    assert!(
        customers > DEMO_PEOPLE as u64 / 2 && customers <= DEMO_PEOPLE as u64,
        "most people buy: {customers}"
    );
    assert!(repeat > 0 && repeat < customers, "{repeat} of {customers}");

    let fit = |name: &str| v["bgNbd"][name].as_f64().expect("a parameter");
    let (r, alpha, a, b) = (fit("r"), fit("alpha"), fit("a"), fit("b"));
    let rate = r / alpha;
    let dropout = a / (a + b);
    assert!(
        (rate / (2.0 / 90.0) - 1.0).abs() < RATE_TOLERANCE,
        "mean purchase rate r/alpha = {r}/{alpha} = {rate}/day, not about 2/90"
    );
    assert!(
        (dropout / 0.25 - 1.0).abs() < DROPOUT_TOLERANCE,
        "mean dropout a/(a+b) = {a}/({a}+{b}) = {dropout}, not about 0.25"
    );
    assert!(v["bgNbd"]["logLikelihood"].as_f64().expect("a number") < 0.0);
    for p in ["p", "q", "v"] {
        assert!(
            v["gammaGamma"][p].as_f64().expect("a parameter") > 0.0,
            "{}",
            v["gammaGamma"]
        );
    }

    let mean_p_alive = v["meanPAlive"].as_f64().expect("a share");
    assert!((0.0..=1.0).contains(&mean_p_alive), "{mean_p_alive}");
    assert!(v["expectedPurchases"].as_f64().expect("a number") > 0.0);
    assert!(v["expectedValueMinor"].as_f64().expect("a number") > 0.0);
    let churned = v["churnedByRule"].as_u64().expect("a count");
    assert!(
        churned > 0 && churned < customers,
        "{churned} of {customers}"
    );

    let top = v["top"].as_array().expect("the top customers");
    assert_eq!(top.len(), 100);
    let mut previous = f64::INFINITY;
    let mut ids = HashSet::new();
    for c in top {
        assert!(ids.insert(c["customerId"].as_str().expect("an id")), "{c}");
        let p_alive = c["pAlive"].as_f64().expect("a probability");
        assert!((0.0..=1.0).contains(&p_alive), "{c}");
        let purchases = c["expectedPurchases"].as_f64().expect("a number");
        let value = c["expectedValueMinor"].as_f64().expect("a number");
        assert!(purchases > 0.0 && value > 0.0, "{c}");
        assert!(value <= previous, "highest expected value first: {c}");
        previous = value;
        let days = c["daysSinceLastPurchase"].as_f64().expect("days");
        assert!(days >= 0.0, "{c}");
        assert_eq!(
            c["churnedByRule"].as_bool(),
            Some(days > 60.0),
            "churned by the rule exactly when the last purchase is over 60 days old: {c}"
        );
    }
    t.finish().await;
}
