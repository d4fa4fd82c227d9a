//! The GraphQL API end to end: a real server on a free port, real HTTP and websocket clients,
//! API keys by role, masking and the access log, customers, segments, the timeline, erasure,
//! subscriptions, metrics and readiness.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use patron::projection::ProfileProjection;
use patron::scoring::{score, ScoringRules};
use patron::server::secret_hash;
use patron_domain::customer::CustomerId;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestStore;
use crate::http::{spawn_app, TestApp};

/// Creates a key with `role` straight in the store; returns its secret.
pub(crate) async fn key(t: &TestStore, role: &str) -> String {
    let secret = format!("test-{role}-{}", uuid::Uuid::new_v4());
    t.store
        .create_api_key(role, role, &secret_hash(&secret), chrono::Utc::now())
        .await
        .expect("store a key");
    secret
}

impl TestApp {
    /// Posts a GraphQL request with `secret`; returns the status and the body.
    pub(crate) async fn graphql_status(
        &self,
        secret: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Posts a GraphQL request that must succeed; returns its `data`.
    pub(crate) async fn graphql(&self, secret: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self.graphql_status(Some(secret), query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// Posts a GraphQL request that must fail; returns its first error's code and message.
    pub(crate) async fn graphql_error(
        &self,
        secret: &str,
        query: &str,
        variables: Value,
    ) -> (String, String) {
        let (_, body) = self.graphql_status(Some(secret), query, variables).await;
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
}

pub(crate) fn record(
    event_type: &str,
    channel: &str,
    at: &str,
    identifiers: Value,
    extra: Value,
) -> Value {
    let mut r = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "channel": channel,
        "source": format!("{channel}-system"),
        "occurred_at": at,
        "identifiers": identifiers,
    });
    for (k, v) in extra.as_object().expect("an object") {
        r[k] = v.clone();
    }
    r
}

fn order(channel: &str, at: &str, phone: &str, total: i64) -> Value {
    record(
        "order_placed",
        channel,
        at,
        json!({"phone": phone}),
        json!({"order_id": uuid::Uuid::new_v4().to_string(), "currency": "CNY", "items": [
            {"sku": "SKU-1", "category": "makeup", "quantity": 1, "unit_price_minor": total}]}),
    )
}

fn traits(phone: &str, name: &str, city: &str) -> Value {
    record(
        "traits_updated",
        "membership_desk",
        "2026-01-05T10:00:00+08:00",
        json!({"phone": phone}),
        json!({"traits": {"name": name, "city": city, "birthday": "1990-04-01"}}),
    )
}

const INGEST: &str = "mutation($records: [JSON!]!) { ingest(records: $records) { status customer code field reason } }";

/// Ingests through the GraphQL mutation, then brings profiles and scores up to date.
pub(crate) async fn ingest(
    app: &TestApp,
    t: &TestStore,
    operator: &str,
    records: Vec<Value>,
) -> Vec<Value> {
    let data = app
        .graphql(operator, INGEST, json!({"records": records}))
        .await;
    settle(t).await;
    data["ingest"].as_array().expect("answers").clone()
}

async fn settle(t: &TestStore) {
    ProfileProjection::new(t.store.clone(), 1_000)
        .catch_up()
        .await
        .expect("catch up");
    score(&t.store, &ScoringRules::default(), chrono::Utc::now())
        .await
        .expect("score");
}

async fn requests_without_a_live_key_are_refused(t: &TestStore) {
    let app = spawn_app(t).await;
    let query = "{ me { name role } }";
    let (status, body) = app.graphql_status(None, query, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (status, _) = app
        .graphql_status(Some("no-such-key"), query, json!({}))
        .await;
    assert_eq!(status, 401);

    let admin = key(t, "admin").await;
    let data = app.graphql(&admin, query, json!({})).await;
    assert_eq!(data["me"]["role"], "ADMIN");

    // An admin creates a viewer key over the API; it works until revoked.
    let created = app
        .graphql(
            &admin,
            "mutation { createApiKey(name: \"ui\", role: VIEWER) { secret key { id role } } }",
            json!({}),
        )
        .await;
    let secret = created["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let id = created["createApiKey"]["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let data = app.graphql(&secret, query, json!({})).await;
    assert_eq!(data["me"]["role"], "VIEWER");
    let (code, message) = app
        .graphql_error(&secret, "{ apiKeys { id } }", json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN", "{message}");
    let revoked = app
        .graphql(
            &admin,
            "mutation($id: ID!) { revokeApiKey(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(revoked["revokeApiKey"], true);
    let (status, _) = app.graphql_status(Some(&secret), query, json!({})).await;
    assert_eq!(status, 401, "a revoked key is refused");
}

const CUSTOMER: &str = "query($id: ID!) { customer(id: $id) {
    id orders touchpoints revenue { currency minor } channels { name touchpoints }
    identifiers { kind value masked } traits tier stage tags segments
    mergedFrom { absorbed actor }
} }";

async fn personal_data_is_masked_for_viewers_and_logged_for_operators(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let viewer = key(t, "viewer").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            traits("13812345678", "Li Wei", "Shanghai"),
            order("store", "2026-02-01T10:00:00+08:00", "13812345678", 12_000),
        ],
    )
    .await;
    assert!(
        answers.iter().all(|a| a["status"] == "accepted"),
        "{answers:?}"
    );
    let id = answers[0]["customer"]
        .as_str()
        .expect("customer")
        .to_owned();

    let seen = app.graphql(&viewer, CUSTOMER, json!({"id": id})).await;
    let c = &seen["customer"];
    assert_eq!(c["orders"], 1);
    assert_eq!(c["revenue"], json!([{"currency": "CNY", "minor": 12_000}]));
    assert_eq!(
        c["identifiers"],
        json!([{"kind": "phone", "value": "138****5678", "masked": true}])
    );
    assert_eq!(c["traits"]["name"], "L****");
    assert_eq!(c["traits"]["birthday"], "****");
    assert_eq!(
        c["traits"]["city"], "Shanghai",
        "clear traits are not masked"
    );
    let customer = CustomerId::from_uuid(id.parse().expect("uuid"));
    assert!(
        t.store.access_log(customer).await.expect("log").is_empty(),
        "masked reads are not logged"
    );

    let seen = app.graphql(&operator, CUSTOMER, json!({"id": id})).await;
    let c = &seen["customer"];
    assert_eq!(
        c["identifiers"],
        json!([{"kind": "phone", "value": "+8613812345678", "masked": false}])
    );
    assert_eq!(c["traits"]["name"], "Li Wei");
    assert_eq!(c["traits"]["birthday"], "1990-04-01");
    let log = t.store.access_log(customer).await.expect("log");
    let what: Vec<&str> = log.iter().map(|e| e.what.as_str()).collect();
    assert!(
        what.contains(&"identifiers") && what.contains(&"traits"),
        "{what:?}"
    );
    assert!(log.iter().all(|e| e.key_name == "operator"));

    // The timeline of a viewer is masked too.
    let timeline = app
        .graphql(
            &viewer,
            "query($id: ID!) { customer(id: $id) { timeline { edges { node { type payload } } } } }",
            json!({"id": id}),
        )
        .await;
    let text = timeline.to_string();
    assert!(
        !text.contains("13812345678") && !text.contains("Li Wei"),
        "{text}"
    );
}

async fn customers_resolve_by_identifier_and_through_merges(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let viewer = key(t, "viewer").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order("store", "2026-02-01T10:00:00+08:00", "13900000001", 5_000),
            record(
                "page_viewed",
                "web",
                "2026-02-02T10:00:00+08:00",
                json!({"email": "zhang@example.cn"}),
                json!({"url": "/home"}),
            ),
        ],
    )
    .await;
    let first = answers[0]["customer"].as_str().expect("id").to_owned();
    let second = answers[1]["customer"].as_str().expect("id").to_owned();
    assert_ne!(first, second);
    // Ties the email's customer to the phone's.
    let tie = record(
        "custom",
        "web",
        "2026-02-03T10:00:00+08:00",
        json!({"phone": "13900000001", "email": "zhang@example.cn"}),
        json!({"name": "signup"}),
    );
    let answers = ingest(&app, t, &operator, vec![tie]).await;
    let survivor = answers[0]["customer"].as_str().expect("id").to_owned();
    let absorbed = if survivor == first { &second } else { &first };

    let by_phone = app
        .graphql(
            &viewer,
            "{ customerByIdentifier(kind: \"phone\", value: \"+86 139-0000-0001\") { id touchpoints mergedFrom { absorbed } } }",
            json!({}),
        )
        .await;
    assert_eq!(by_phone["customerByIdentifier"]["id"], survivor);
    assert_eq!(by_phone["customerByIdentifier"]["touchpoints"], 3);
    assert_eq!(
        by_phone["customerByIdentifier"]["mergedFrom"],
        json!([{"absorbed": absorbed}])
    );
    let merged = app
        .graphql(&viewer, CUSTOMER, json!({"id": absorbed}))
        .await;
    assert_eq!(
        merged["customer"]["id"], survivor,
        "a merged id reads its survivor"
    );
    // The merge's evidence (the identifiers that tied the two) is masked for a viewer too.
    let timeline = app
        .graphql(
            &viewer,
            "query($id: ID!) { customer(id: $id) { timeline { edges { node { type payload } } } } }",
            json!({"id": survivor}),
        )
        .await;
    let text = timeline.to_string();
    assert!(text.contains("customer_merged"), "{text}");
    assert!(
        !text.contains("zhang@example.cn") && !text.contains("13900000001"),
        "{text}"
    );
    let unknown = app
        .graphql(
            &viewer,
            "{ customerByIdentifier(kind: \"email\", value: \"nobody@example.cn\") { id } }",
            json!({}),
        )
        .await;
    assert!(unknown["customerByIdentifier"].is_null());
    // Lookups are few per request (they could guess a masked value's hidden digits) and logged.
    let many: String = (0..6)
        .map(|i| {
            format!(
                "l{i}: customerByIdentifier(kind: \"phone\", value: \"1390000000{i}\") {{ id }} "
            )
        })
        .collect();
    let (code, _) = app
        .graphql_error(&viewer, &format!("{{ {many} }}"), json!({}))
        .await;
    assert_eq!(code, "TOO_MANY_LOOKUPS");
    let survivor_id = CustomerId::from_uuid(survivor.parse().expect("uuid"));
    let log = t.store.access_log(survivor_id).await.expect("log");
    assert!(
        log.iter()
            .any(|e| e.what == "lookup:phone" && e.key_name == "viewer"),
        "{log:?}"
    );
    let (code, _) = app
        .graphql_error(
            &viewer,
            "{ customer(id: \"not-a-uuid\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "INVALID_ARGUMENT");
}

/// The question the API is built to answer in one query.
const AT_RISK_IN_SHANGHAI: &str = r#"city = "Shanghai"
    and count(order_placed, channel = "store") in last 3650 days >= 1
    and count(order_placed, channel = "web") in last 3650 days = 0"#;

async fn customers_are_filtered_by_rules_sorted_and_paged(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let viewer = key(t, "viewer").await;
    let mut records = Vec::new();
    // 1 and 2: Shanghai, bought in store only (1 spent more); 3: Shanghai, also online;
    // 4: Beijing, store only.
    for (phone, city) in [
        ("13800000001", "Shanghai"),
        ("13800000002", "Shanghai"),
        ("13800000003", "Shanghai"),
        ("13800000004", "Beijing"),
    ] {
        records.push(traits(phone, "Someone", city));
    }
    records.push(order(
        "store",
        "2026-03-01T10:00:00+08:00",
        "13800000001",
        90_000,
    ));
    records.push(order(
        "store",
        "2026-03-01T10:00:00+08:00",
        "13800000002",
        10_000,
    ));
    records.push(order(
        "store",
        "2026-03-01T10:00:00+08:00",
        "13800000003",
        10_000,
    ));
    records.push(order(
        "web",
        "2026-03-02T10:00:00+08:00",
        "13800000003",
        10_000,
    ));
    records.push(order(
        "store",
        "2026-03-01T10:00:00+08:00",
        "13800000004",
        10_000,
    ));
    let answers = ingest(&app, t, &operator, records).await;
    let id = |i: usize| answers[i]["customer"].as_str().expect("id").to_owned();

    let query = "query($filter: String, $after: String) {
        customers(filter: $filter, sort: REVENUE, first: 1, after: $after) {
            totalCount pageInfo { hasNextPage endCursor }
            edges { node { id traits revenue { minor } } } } }";
    let page = app
        .graphql(&viewer, query, json!({"filter": AT_RISK_IN_SHANGHAI}))
        .await;
    let c = &page["customers"];
    assert_eq!(c["totalCount"], 2);
    assert_eq!(
        c["edges"][0]["node"]["id"],
        id(0),
        "the bigger spender first"
    );
    assert_eq!(c["pageInfo"]["hasNextPage"], true);
    let next = app
        .graphql(
            &viewer,
            query,
            json!({"filter": AT_RISK_IN_SHANGHAI, "after": c["pageInfo"]["endCursor"]}),
        )
        .await;
    assert_eq!(next["customers"]["edges"][0]["node"]["id"], id(1));
    assert_eq!(next["customers"]["pageInfo"]["hasNextPage"], false);

    // Profiles committed meanwhile by another process (no scoring run since) are seen by the
    // next search.
    app.graphql(
        &operator,
        INGEST,
        json!({"records": [
            traits("13800000005", "Someone", "Shanghai"),
            order("store", "2026-03-03T10:00:00+08:00", "13800000005", 5_000),
        ]}),
    )
    .await;
    ProfileProjection::new(t.store.clone(), 1_000)
        .catch_up()
        .await
        .expect("catch up");
    let page = app
        .graphql(&viewer, query, json!({"filter": AT_RISK_IN_SHANGHAI}))
        .await;
    assert_eq!(page["customers"]["totalCount"], 3);

    let all = app
        .graphql(
            &viewer,
            "{ customers(first: 500) { totalCount edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(all["customers"]["totalCount"], 5);
    let mut ids: Vec<String> = all["customers"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id").to_owned())
        .collect();
    let in_order = ids.clone();
    ids.sort();
    assert_eq!(ids, in_order, "without a sort, customers come in id order");
    // Paged two at a time, the same customers in the same order.
    let mut paged = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = app
            .graphql(
                &viewer,
                "query($after: String) { customers(first: 2, after: $after) { pageInfo { hasNextPage endCursor } edges { node { id } } } }",
                json!({"after": after}),
            )
            .await;
        let c = &page["customers"];
        for edge in c["edges"].as_array().expect("edges") {
            paged.push(edge["node"]["id"].as_str().expect("id").to_owned());
        }
        if c["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(paged, in_order);

    let (code, message) = app
        .graphql_error(
            &viewer,
            "{ customers(filter: \"city = \") { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "INVALID_RULE");
    assert!(
        message.contains('^'),
        "the message points at the bad part: {message}"
    );
    let (code, _) = app
        .graphql_error(
            &viewer,
            "{ customers(first: 501) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "INVALID_ARGUMENT");
}

async fn segments_are_managed_by_analysts_and_read_by_viewers(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let analyst = key(t, "analyst").await;
    let viewer = key(t, "viewer").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order("store", "2026-03-01T10:00:00+08:00", "13700000001", 10_000),
            order("store", "2026-03-02T10:00:00+08:00", "13700000001", 10_000),
            order("web", "2026-03-01T10:00:00+08:00", "13700000002", 10_000),
        ],
    )
    .await;
    let repeat = answers[0]["customer"].as_str().expect("id").to_owned();

    let create = "mutation($name: String!, $rule: String!) { createSegment(name: $name, rule: $rule) { name size } }";
    let (code, _) = app
        .graphql_error(
            &viewer,
            create,
            json!({"name": "repeat", "rule": "orders >= 2"}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let created = app
        .graphql(
            &analyst,
            create,
            json!({"name": "repeat", "rule": "orders >= 2"}),
        )
        .await;
    assert_eq!(
        created["createSegment"],
        json!({"name": "repeat", "size": 1})
    );
    let (code, _) = app
        .graphql_error(
            &analyst,
            create,
            json!({"name": "repeat", "rule": "orders >= 1"}),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    let (code, message) = app
        .graphql_error(
            &analyst,
            create,
            json!({"name": "bad", "rule": "orders >= lots"}),
        )
        .await;
    assert_eq!(code, "INVALID_RULE", "{message}");

    let read = app
        .graphql(
            &viewer,
            "{ segment(name: \"repeat\") { size members { totalCount edges { node { id segments } } } }
               previewSegment(rule: \"orders >= 1\") { size } }",
            json!({}),
        )
        .await;
    assert_eq!(read["segment"]["members"]["edges"][0]["node"]["id"], repeat);
    assert_eq!(
        read["segment"]["members"]["edges"][0]["node"]["segments"],
        json!(["repeat"])
    );
    assert_eq!(read["previewSegment"]["size"], 2);

    let updated = app
        .graphql(
            &analyst,
            "mutation { updateSegment(name: \"repeat\", rule: \"orders >= 1\") { size } }",
            json!({}),
        )
        .await;
    assert_eq!(updated["updateSegment"]["size"], 2);
    let (code, _) = app
        .graphql_error(
            &analyst,
            "mutation { updateSegment(name: \"none\", rule: \"orders >= 1\") { size } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let deleted = app
        .graphql(
            &analyst,
            "mutation { deleteSegment(name: \"repeat\") }",
            json!({}),
        )
        .await;
    assert_eq!(deleted["deleteSegment"], true);
    let listed = app
        .graphql(&viewer, "{ segments { name } }", json!({}))
        .await;
    assert_eq!(listed["segments"], json!([]));

    let tiers = app
        .graphql(
            &viewer,
            "{ distribution(dimension: CHANNEL) { value customers } }",
            json!({}),
        )
        .await;
    assert_eq!(
        tiers["distribution"],
        json!([{"value": "store", "customers": 1}, {"value": "web", "customers": 1}])
    );
}

async fn the_timeline_is_paged_newest_first_and_filtered(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let phone = "13600000001";
    let mut records = Vec::new();
    for day in 1..=5 {
        records.push(record(
            "screen_viewed",
            "app",
            &format!("2026-04-0{day}T10:00:00+08:00"),
            json!({"phone": phone}),
            json!({"screen": format!("s{day}")}),
        ));
    }
    records.push(order("store", "2026-04-06T10:00:00+08:00", phone, 100));
    let answers = ingest(&app, t, &operator, records).await;
    let id = answers[0]["customer"].as_str().expect("id");
    let query = "query($id: ID!, $after: String, $filter: TimelineFilter) {
        customer(id: $id) { timeline(first: 2, after: $after, filter: $filter) {
            pageInfo { hasNextPage endCursor } edges { node { type occurredAt channel } } } } }";
    let page = app.graphql(&operator, query, json!({"id": id})).await;
    let timeline = &page["customer"]["timeline"];
    assert_eq!(
        timeline["edges"][0]["node"]["type"], "order_placed",
        "newest first"
    );
    assert_eq!(
        timeline["edges"][1]["node"]["occurredAt"],
        "2026-04-05T02:00:00+00:00"
    );
    let mut seen = 2;
    let mut after = timeline["pageInfo"]["endCursor"].clone();
    while !after.is_null() {
        let page = app
            .graphql(&operator, query, json!({"id": id, "after": after}))
            .await;
        let timeline = &page["customer"]["timeline"];
        seen += timeline["edges"].as_array().expect("edges").len();
        after = if timeline["pageInfo"]["hasNextPage"] == true {
            timeline["pageInfo"]["endCursor"].clone()
        } else {
            Value::Null
        };
    }
    assert_eq!(seen, 6, "every touchpoint once across the pages");
    let filtered = app
        .graphql(
            &operator,
            query,
            json!({"id": id, "filter": {"channels": ["app"], "from": "2026-04-03T00:00:00Z"}}),
        )
        .await;
    let edges = filtered["customer"]["timeline"]["edges"]
        .as_array()
        .expect("edges");
    assert_eq!(edges.len(), 2);
    assert!(edges.iter().all(|e| e["node"]["channel"] == "app"));
}

async fn admins_erase_customers_and_operators_read_the_quarantine(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let admin = key(t, "admin").await;
    let viewer = key(t, "viewer").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            traits("13500000001", "Wang Fang", "Hangzhou"),
            record(
                "store_visited",
                "store",
                "not a time",
                json!({"phone": "13500000001"}),
                json!({"store_id": "HZ-1"}),
            ),
        ],
    )
    .await;
    assert_eq!(answers[1]["status"], "rejected");
    assert_eq!(answers[1]["field"], "occurred_at");
    let id = answers[0]["customer"].as_str().expect("id").to_owned();

    let (code, _) = app
        .graphql_error(
            &viewer,
            "{ quarantine { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let quarantine = app
        .graphql(
            &operator,
            "{ quarantine { edges { node { code field record } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        quarantine["quarantine"]["edges"][0]["node"]["field"],
        "occurred_at"
    );
    let reads = t
        .store
        .access_log(CustomerId::from_uuid(uuid::Uuid::nil()))
        .await
        .expect("log");
    assert!(
        reads.iter().any(|e| e.what == "quarantine"),
        "quarantine reads are logged"
    );

    let erase = "mutation($id: ID!) { eraseCustomer(id: $id, reason: \"request 42\") { customer keysDestroyed quarantinedRemoved } }";
    let (code, _) = app.graphql_error(&operator, erase, json!({"id": id})).await;
    assert_eq!(code, "FORBIDDEN");
    let erased = app.graphql(&admin, erase, json!({"id": id})).await;
    assert_eq!(erased["eraseCustomer"]["customer"], id);
    assert_eq!(
        erased["eraseCustomer"]["quarantinedRemoved"], 1,
        "the record held the phone"
    );
    settle(t).await;

    let seen = app
        .graphql(
            &admin,
            "query($id: ID!) { customer(id: $id) { erased identifiers { value } traits timeline { edges { node { type payload } } } } }",
            json!({"id": id}),
        )
        .await;
    let c = &seen["customer"];
    assert_eq!(c["erased"], true);
    assert_eq!(c["identifiers"], json!([]));
    assert_eq!(c["traits"], json!({}));
    let text = c["timeline"].to_string();
    assert!(
        !text.contains("Wang Fang") && !text.contains("13500000001"),
        "{text}"
    );
    assert!(text.contains("customer_erased"));
}

async fn expensive_queries_are_refused(t: &TestStore) {
    let app = spawn_app(t).await;
    let viewer = key(t, "viewer").await;
    // A body beyond 10 MiB is refused before it is read whole.
    let huge = format!(
        "{{\"query\": \"{{ me {{ name }} }}\", \"pad\": \"{}\"}}",
        "x".repeat(11 << 20)
    );
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);
    let (status, body) = app
        .graphql_status(Some(&viewer), "{ me { name", json!({}))
        .await;
    assert_eq!(status, 200);
    assert!(
        body["errors"][0]["message"].as_str().is_some(),
        "a syntax error is answered: {body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_QUERY",
        "{body}"
    );
    // 200 levels of selections stop at the parser's recursion limit, with a code.
    let deep = format!("{}{}", "{ me ".repeat(200), "}".repeat(200));
    let (status, body) = app.graphql_status(Some(&viewer), &deep, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_QUERY",
        "{body}"
    );
    let (_, body) = app
        .graphql_status(
            Some(&viewer),
            "{ customers(first: 500) { edges { node { timeline(first: 500) { edges { node { payload type channel } } } } } } }",
            json!({}),
        )
        .await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("complex"), "{body}");
}

async fn subscribers_hear_of_profile_updates_and_segment_entries(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let analyst = key(t, "analyst").await;
    app.graphql(
        &analyst,
        "mutation { createSegment(name: \"buyers\", rule: \"orders >= 1\") { size } }",
        json!({}),
    )
    .await;

    let url = app.address.replace("http://", "ws://") + "/graphql/ws";
    let mut request = url.into_client_request().expect("a websocket request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    let send = |v: Value| Message::Text(v.to_string().into());
    socket
        .send(send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {operator}")}})))
        .await
        .expect("init");
    let ack = socket.next().await.expect("a message").expect("ack");
    assert!(
        ack.to_text().expect("text").contains("connection_ack"),
        "{ack}"
    );
    // The socket carries subscriptions only: a query there is refused.
    socket
        .send(send(
            json!({"id": "q", "type": "subscribe", "payload": {"query": "{ me { name } }"}}),
        ))
        .await
        .expect("query");
    let refused = loop {
        let message = socket.next().await.expect("a message").expect("readable");
        let v: Value = serde_json::from_str(message.to_text().expect("text")).expect("json");
        if v["id"] == "q" {
            break v;
        }
    };
    assert!(refused.to_string().contains("FORBIDDEN"), "{refused}");
    socket
        .send(send(json!({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription { segmentMembershipChanged(segment: \"buyers\") { customer entered } }"}})))
        .await
        .expect("subscribe");
    socket
        .send(send(json!({"id": "2", "type": "subscribe", "payload": {
            "query": "subscription { customerUpdated { customer position } }"}})))
        .await
        .expect("subscribe");
    // Give the server a moment to register both subscriptions.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The server's own projection picks the order up once ingestion is quiet.
    let answers = app
        .graphql(
            &operator,
            INGEST,
            json!({"records": [order("web", "2026-03-01T10:00:00+08:00", "13400000001", 100)]}),
        )
        .await;
    let customer = answers["ingest"][0]["customer"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut heard_update = false;
    let mut heard_entry = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(heard_update && heard_entry) {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("both announcements within 20 s")
            .expect("a message")
            .expect("readable");
        let Ok(text) = message.to_text() else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if v["type"] != "next" {
            continue;
        }
        let data = &v["payload"]["data"];
        if data["customerUpdated"]["customer"] == customer.as_str() {
            heard_update = true;
        }
        if data["segmentMembershipChanged"]["customer"] == customer.as_str() {
            assert_eq!(data["segmentMembershipChanged"]["entered"], true);
            heard_entry = true;
        }
    }

    // Once the socket's key is revoked, its subscriptions end at their next announcement.
    let admin = key(t, "admin").await;
    for stored in t.store.api_keys().await.expect("keys") {
        if stored.name == "operator" {
            t.store
                .revoke_api_key(stored.id, chrono::Utc::now())
                .await
                .expect("revoke");
        }
    }
    tokio::time::sleep(patron_graphql::subscription::KEY_RECHECK + Duration::from_millis(100))
        .await;
    let later = app
        .graphql(
            &admin,
            INGEST,
            json!({"records": [order("web", "2026-03-02T10:00:00+08:00", "13400000002", 100)]}),
        )
        .await;
    let later = later["ingest"][0]["customer"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut completed = std::collections::BTreeSet::new();
    while completed.len() < 2 {
        let message = tokio::time::timeout_at(deadline + Duration::from_secs(20), socket.next())
            .await
            .expect("the subscriptions end within 20 s")
            .expect("a message")
            .expect("readable");
        let Ok(text) = message.to_text() else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        // Announcements from before the revocation may still be queued; none of the later
        // customer may come through.
        assert!(
            !(v["type"] == "next" && v.to_string().contains(&later)),
            "nothing is sent after the revocation: {v}"
        );
        if v["type"] == "complete" {
            completed.insert(v["id"].as_str().unwrap_or_default().to_owned());
        }
    }
}

async fn metrics_and_readiness_report_the_server(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    ingest(
        &app,
        t,
        &operator,
        vec![order(
            "store",
            "2026-03-01T10:00:00+08:00",
            "13300000001",
            100,
        )],
    )
    .await;
    let ready: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["projection"]["lag_events"], 0);
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("patron_ingested_records_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("patron_http_requests_total{route=\"/graphql\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("patron_projection_lag_events 0"), "{text}");
}

fn consent(phone: &str, at: &str, granted: bool) -> Value {
    record(
        "consent_changed",
        "mini_program",
        at,
        json!({"phone": phone}),
        json!({"purpose": "marketing_sms", "granted": granted}),
    )
}

async fn segments_for_a_purpose_hold_only_customers_who_consent(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let analyst = key(t, "analyst").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order("store", "2026-03-01T10:00:00+08:00", "13200000001", 100),
            consent("13200000001", "2026-03-01T11:00:00+08:00", true),
            order("store", "2026-03-01T10:00:00+08:00", "13200000002", 100),
            consent("13200000002", "2026-03-01T11:00:00+08:00", false),
            order("store", "2026-03-01T10:00:00+08:00", "13200000003", 100),
        ],
    )
    .await;
    let (a, b) = (
        answers[0]["customer"].as_str().expect("id").to_owned(),
        answers[2]["customer"].as_str().expect("id").to_owned(),
    );
    let created = app
        .graphql(
            &analyst,
            "mutation { createSegment(name: \"sms\", rule: \"orders >= 1\", purpose: MARKETING_SMS) { purpose size members { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    let segment = &created["createSegment"];
    assert_eq!(segment["purpose"], "MARKETING_SMS");
    assert_eq!(
        segment["size"], 1,
        "only the customer who consents: {segment}"
    );
    assert_eq!(segment["members"]["edges"][0]["node"]["id"], a);

    // The second customer consents later: they enter as the projection applies it.
    app.graphql(
        &operator,
        INGEST,
        json!({"records": [consent("13200000002", "2026-03-05T11:00:00+08:00", true)]}),
    )
    .await;
    ProfileProjection::new(t.store.clone(), 1_000)
        .with_segments("CNY")
        .catch_up()
        .await
        .expect("catch up");
    let read = app
        .graphql(
            &analyst,
            "{ segment(name: \"sms\") { size members { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(read["segment"]["size"], 2);
    let members: Vec<&str> = read["segment"]["members"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["id"].as_str())
        .collect();
    assert!(members.contains(&a.as_str()) && members.contains(&b.as_str()));

    // Without the purpose, the same rule holds all three.
    let updated = app
        .graphql(
            &analyst,
            "mutation { updateSegment(name: \"sms\", rule: \"orders >= 1\") { purpose size } }",
            json!({}),
        )
        .await;
    assert_eq!(
        updated["updateSegment"],
        json!({"purpose": null, "size": 3})
    );
}

/// A viewer key's identifier lookups across requests are held to its role's budget: a masked
/// phone's hidden digits cannot be found by trying them (issue: 201 requests did it). Other
/// keys keep their own budget, and the refusals show on /metrics.
async fn identifier_lookups_are_held_to_a_budget_per_key(t: &TestStore) {
    let ingestor = patron::ingest::Ingestor::new(
        t.store.clone(),
        patron_domain::identity::IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let options = patron::server::ServerOptions {
        lookup_budget: "viewer=3,analyst=2".parse().expect("a budget"),
        ..patron::server::ServerOptions::default()
    };
    let built = patron::server::Application::build_with(ingestor, "127.0.0.1:0", options)
        .expect("bind a free port");
    let app = TestApp {
        address: format!("http://127.0.0.1:{}", built.port()),
        client: reqwest::Client::new(),
        ingest_key: String::new(),
    };
    tokio::spawn(built.run_until_stopped());
    let operator = key(t, "operator").await;
    ingest(
        &app,
        t,
        &operator,
        vec![order(
            "store",
            "2026-03-01T10:00:00+08:00",
            "13912340239",
            100,
        )],
    )
    .await;
    let viewer = key(t, "viewer").await;
    let other_viewer = format!("test-viewer-b-{}", uuid::Uuid::new_v4());
    t.store
        .create_api_key(
            "viewer-b",
            "viewer",
            &secret_hash(&other_viewer),
            chrono::Utc::now(),
        )
        .await
        .expect("store a key");
    let lookup = |guess: u32| {
        format!(
            "{{ customerByIdentifier(kind: \"phone\", value: \"139{guess:04}0239\") {{ id }} }}"
        )
    };
    // Three lookups in three requests: the budget allows them, whatever they find.
    for guess in [0, 1, 1234] {
        let data = app.graphql(&viewer, &lookup(guess), json!({})).await;
        assert_eq!(
            data["customerByIdentifier"].is_null(),
            guess != 1234,
            "{data}"
        );
    }
    // The fourth is refused, naming the budget and when a lookup comes back.
    let (code, message) = app.graphql_error(&viewer, &lookup(1235), json!({})).await;
    assert_eq!(code, "LOOKUP_BUDGET_EXHAUSTED", "{message}");
    assert!(
        message.contains("viewer keys (3 per hour, per key)")
            && message.contains("next lookup is allowed in"),
        "{message}"
    );
    let (_, body) = app
        .graphql_status(Some(&viewer), &lookup(1234), json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "LOOKUP_BUDGET_EXHAUSTED",
        "even the right guess is refused: {body}"
    );
    assert!(body["data"]["customerByIdentifier"].is_null(), "{body}");
    // Another viewer key, and an analyst key, have budgets of their own.
    let found = app.graphql(&other_viewer, &lookup(1234), json!({})).await;
    assert!(!found["customerByIdentifier"].is_null(), "{found}");
    let analyst = key(t, "analyst").await;
    for _ in 0..2 {
        app.graphql(&analyst, &lookup(7), json!({})).await;
    }
    let (code, message) = app.graphql_error(&analyst, &lookup(7), json!({})).await;
    assert_eq!(code, "LOOKUP_BUDGET_EXHAUSTED", "{message}");
    assert!(message.contains("analyst keys (2 per hour"), "{message}");
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "patron_identifier_lookups_total{role=\"viewer\"} 6",
        "patron_identifier_lookups_refused_total{role=\"viewer\"} 2",
        "patron_identifier_lookups_total{role=\"analyst\"} 3",
        "patron_identifier_lookups_refused_total{role=\"analyst\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

crate::on_both_stores!(
    segments_for_a_purpose_hold_only_customers_who_consent,
    requests_without_a_live_key_are_refused,
    personal_data_is_masked_for_viewers_and_logged_for_operators,
    customers_resolve_by_identifier_and_through_merges,
    customers_are_filtered_by_rules_sorted_and_paged,
    segments_are_managed_by_analysts_and_read_by_viewers,
    the_timeline_is_paged_newest_first_and_filtered,
    admins_erase_customers_and_operators_read_the_quarantine,
    expensive_queries_are_refused,
    subscribers_hear_of_profile_updates_and_segment_entries,
    metrics_and_readiness_report_the_server,
    identifier_lookups_are_held_to_a_budget_per_key,
);
