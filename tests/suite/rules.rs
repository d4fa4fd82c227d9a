//! Hostile segment rules end to end: rules nested or chained past the language's bounds are
//! refused with `INVALID_RULE` naming the bound, Chinese values read quoted and are explained
//! unquoted, and a rule stored past the bounds (by an older version) is skipped, never fatal.

use patron::segmentation::unreadable_rules;
use serde_json::{json, Value};

use crate::graphql::{ingest, key, record};
use crate::helpers::TestStore;
use crate::http::spawn_app;

const PREVIEW: &str = "query($rule: String!) { previewSegment(rule: $rule) { size } }";

fn member(phone: &str, city: &str) -> Value {
    record(
        "traits_updated",
        "membership_desk",
        "2026-01-05T10:00:00+08:00",
        json!({"phone": phone}),
        json!({"traits": {"city": city}}),
    )
}

async fn rules_past_the_bounds_are_refused_and_the_server_stays_up(t: &TestStore) {
    let app = spawn_app(t).await;
    let viewer = key(t, "viewer").await;
    let analyst = key(t, "analyst").await;
    let cases = [
        // 10,000 nested parentheses (20 KB): aborted the process before.
        (
            format!("{}orders > 1{}", "(".repeat(10_000), ")".repeat(10_000)),
            "at most 16384 bytes",
        ),
        (
            format!("{}orders > 1{}", "(".repeat(40), ")".repeat(40)),
            "at most 32 deep",
        ),
        (
            format!("{}orders > 1", "not ".repeat(1_000)),
            "at most 32 deep",
        ),
        // A flat chain of 200,000 `or` terms: aborted the process before.
        (
            vec!["orders = 9"; 200_000].join(" or "),
            "at most 16384 bytes",
        ),
        (
            vec!["orders = 9"; 300].join(" or "),
            "at most 256 conditions",
        ),
    ];
    for (rule, bound) in &cases {
        let (code, message) = app
            .graphql_error(&viewer, PREVIEW, json!({"rule": rule}))
            .await;
        assert_eq!(code, "INVALID_RULE", "{message}");
        assert!(message.contains(bound), "{bound}: {message}");
        let (code, message) = app
            .graphql_error(
                &analyst,
                "mutation($rule: String!) { createSegment(name: \"deep\", rule: $rule) { size } }",
                json!({"rule": rule}),
            )
            .await;
        assert_eq!(code, "INVALID_RULE", "{message}");
    }
    let me = app.graphql(&viewer, "{ me { role } }", json!({})).await;
    assert_eq!(me["me"]["role"], "VIEWER");
    let saved = app
        .graphql(&viewer, "{ segments { name } }", json!({}))
        .await;
    assert_eq!(saved["segments"], json!([]), "nothing was saved");
}

async fn chinese_values_read_quoted_and_are_explained_unquoted(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let viewer = key(t, "viewer").await;
    ingest(
        &app,
        t,
        &operator,
        vec![member("13700000001", "上海"), member("13700000002", "北京")],
    )
    .await;
    let data = app
        .graphql(&viewer, PREVIEW, json!({"rule": "city = \"上海\""}))
        .await;
    assert_eq!(data["previewSegment"]["size"], 1);
    let data = app
        .graphql(
            &viewer,
            PREVIEW,
            json!({"rule": "city in (\"上海\", \"北京\") and not city = \"杭州\""}),
        )
        .await;
    assert_eq!(data["previewSegment"]["size"], 2);
    // Unquoted, the connection closed with no answer before.
    let (code, message) = app
        .graphql_error(&viewer, PREVIEW, json!({"rule": "city = 上海"}))
        .await;
    assert_eq!(code, "INVALID_RULE");
    assert!(message.contains("unexpected character `上`"), "{message}");
    assert!(message.contains("at character 8"), "{message}");
    assert!(message.contains("quoted"), "{message}");
}

async fn a_stored_rule_past_the_bounds_is_skipped_not_fatal(t: &TestStore) {
    // Saved straight into the store, as an older version without bounds did.
    let deep = format!("{}orders > 1{}", "(".repeat(10_000), ")".repeat(10_000));
    t.store
        .save_segment("deep", &deep, chrono::Utc::now())
        .await
        .expect("save the rule");
    t.store
        .save_segment("buyers", "orders >= 0", chrono::Utc::now())
        .await
        .expect("save the rule");
    let unreadable = unreadable_rules(&t.store).await.expect("read the rules");
    assert_eq!(unreadable.len(), 1);
    assert_eq!(unreadable[0].0, "deep");
    assert!(unreadable[0].1.message.contains("bytes"));

    // The server starts and its projection judges a new customer against the saved rules: the
    // readable segment gains the customer, the other is skipped.
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    app.graphql(
        &operator,
        "mutation($records: [JSON!]!) { ingest(records: $records) { status } }",
        json!({"records": [member("13700000003", "上海")]}),
    )
    .await;
    let query = "{ segments { name } segment(name: \"buyers\") { size } }";
    let mut data = Value::Null;
    for _ in 0..100 {
        data = app.graphql(&operator, query, json!({})).await;
        if data["segment"]["size"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        data["segment"]["size"], 1,
        "the live projection judged the customer"
    );
    assert_eq!(
        data["segments"],
        json!([{"name": "buyers"}, {"name": "deep"}])
    );
    let refreshed = patron::segmentation::refresh(&t.store, "CNY", chrono::Utc::now())
        .await
        .expect("refresh");
    assert_eq!(
        refreshed
            .iter()
            .map(|r| (r.name.as_str(), r.members))
            .collect::<Vec<_>>(),
        vec![("buyers", 1)]
    );
}

async fn a_rule_at_the_bounds_is_saved_for_a_purpose_and_judged(t: &TestStore) {
    let app = spawn_app(t).await;
    let analyst = key(t, "analyst").await;
    // 256 conditions: the most a rule may have; its purpose's consent makes it one more.
    let rule = vec!["orders >= 0"; 256].join(" or ");
    let data = app
        .graphql(
            &analyst,
            "mutation($rule: String!) { createSegment(name: \"widest\", rule: $rule, \
             purpose: MARKETING_SMS) { name size } }",
            json!({"rule": rule}),
        )
        .await;
    assert_eq!(data["createSegment"]["name"], "widest", "{data}");
    assert_eq!(data["createSegment"]["size"], 0, "no one consents yet");
    assert!(unreadable_rules(&t.store).await.expect("rules").is_empty());
    // One condition more is refused, and nothing is saved.
    let (code, message) = app
        .graphql_error(
            &analyst,
            "mutation($rule: String!) { createSegment(name: \"wider\", rule: $rule, \
             purpose: MARKETING_SMS) { name } }",
            json!({"rule": format!("{rule} or orders >= 0")}),
        )
        .await;
    assert_eq!(code, "INVALID_RULE", "{message}");
    assert!(message.contains("at most 256 conditions"), "{message}");
    let saved = app
        .graphql(&analyst, "{ segments { name } }", json!({}))
        .await;
    assert_eq!(saved["segments"], json!([{"name": "widest"}]));
}

async fn a_server_judges_segments_in_the_configured_currency(t: &TestStore) {
    let options = patron::server::ServerOptions {
        currency: "USD".into(),
        ..patron::server::ServerOptions::default()
    };
    let app = crate::http::spawn_app_with(t, crate::http::test_ingestor(t), options).await;
    let analyst = key(t, "analyst").await;
    let viewer = key(t, "viewer").await;
    let data = app
        .graphql(
            &analyst,
            "mutation { createSegment(name: \"big_usd\", rule: \"revenue >= 1000\") { size } }",
            json!({}),
        )
        .await;
    assert_eq!(data["createSegment"]["size"], 0);
    // An order of 50.00 USD: the live projection judges it in USD, as the hourly refresh does
    // (it judged in the default currency before, so the customer was not a member until then).
    let order = record(
        "order_placed",
        "web",
        "2026-01-05T10:00:00+08:00",
        json!({"phone": "13700000077"}),
        json!({"order_id": "usd-1", "currency": "USD",
               "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 5000}]}),
    );
    let r = app
        .post_events(format!("{order}\n"), "application/x-ndjson")
        .await;
    let answer: Value = r.json().await.expect("json");
    let customer = answer["records"][0]["customer"]
        .as_str()
        .expect("accepted")
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let data = app
            .graphql(
                &viewer,
                "query($id: ID!) { customer(id: $id) { segments } }",
                json!({"id": customer}),
            )
            .await;
        if data["customer"]["segments"] == json!(["big_usd"]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not judged a member in USD: {data}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

crate::on_both_stores!(
    a_server_judges_segments_in_the_configured_currency,
    a_rule_at_the_bounds_is_saved_for_a_purpose_and_judged,
    rules_past_the_bounds_are_refused_and_the_server_stays_up,
    chinese_values_read_quoted_and_are_explained_unquoted,
    a_stored_rule_past_the_bounds_is_skipped_not_fatal,
);
