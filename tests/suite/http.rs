//! The HTTP API end to end: a real server on a free port, a real HTTP client.

use patron::ingest::Ingestor;
use patron::projection::ProfileProjection;
use patron::server::{Application, ServerOptions};
use patron_domain::customer::CustomerId;
use patron_domain::identity::IdentityRules;
use serde_json::{json, Value};

use crate::helpers::TestStore;

/// A running server on a free port over the test's store.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// A key of the `ingest` role, sent by [`TestApp::post_events`].
    pub ingest_key: String,
}

/// Stores a new API key of `role`; returns its secret.
pub async fn api_key(t: &TestStore, role: &str) -> String {
    let secret = format!("test-{role}-{}", uuid::Uuid::new_v4());
    t.store
        .create_api_key(
            role,
            role,
            &patron::server::secret_hash(&secret),
            chrono::Utc::now(),
        )
        .await
        .expect("store a key");
    secret
}

/// The ingestor the tests' servers use: fixed keys, the built-in rules.
pub fn test_ingestor(t: &TestStore) -> Ingestor {
    Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    )
}

pub async fn spawn_app(t: &TestStore) -> TestApp {
    spawn_app_with(t, test_ingestor(t), ServerOptions::default()).await
}

/// A running server over `ingestor`, set up by `options`.
pub async fn spawn_app_with(t: &TestStore, ingestor: Ingestor, options: ServerOptions) -> TestApp {
    let app = Application::build_with(ingestor, "127.0.0.1:0", options).expect("bind a free port");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        ingest_key: api_key(t, "ingest").await,
    }
}

impl TestApp {
    pub async fn post_events(&self, body: String, content_type: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/events", self.address))
            .bearer_auth(&self.ingest_key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }
}

fn record(phone: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": "store_visited",
        "channel": "store",
        "source": "store-wifi",
        "occurred_at": "2026-03-08T09:30:15+08:00",
        "identifiers": {"phone": phone},
        "store_id": "SH-1",
    })
}

async fn a_json_batch_is_answered_record_by_record(t: &TestStore) {
    let app = spawn_app(t).await;
    let good = record("13912340001");
    let body = json!([good, record("12345"), {"type": "store_visited"}]).to_string();
    let response = app.post_events(body, "application/json").await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(answer["records"][0]["status"], "accepted");
    assert_eq!(answer["records"][1]["status"], "rejected");
    assert_eq!(answer["records"][1]["field"], "identifiers.phone");
    assert_eq!(answer["records"][1]["code"], "invalid_identifier");
    assert_eq!(answer["records"][2]["field"], "event_id");
    assert_eq!(answer["records"][2]["code"], "missing_field");

    // The same record again, as NDJSON this time, is a duplicate of the stored one.
    let again = app
        .post_events(format!("{good}\n\n"), "application/x-ndjson")
        .await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["records"][0]["status"], "duplicate");
    assert_eq!(
        again["records"][0]["position"],
        answer["records"][0]["position"]
    );
    // The refused records are in the quarantine, as sent.
    let kept = t.store.quarantined(0, 10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(&kept[1].record).unwrap(),
        json!({"type": "store_visited"})
    );
}

async fn bad_bodies_get_a_stable_code(t: &TestStore) {
    let app = spawn_app(t).await;
    let r = app
        .post_events("{not json".into(), "application/json")
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MALFORMED_BODY");
    let r = app.post_events("[]".into(), "application/json").await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "EMPTY_BATCH"
    );
    let many: Vec<Value> = (0..patron::server::MAX_RECORDS + 1)
        .map(|_| json!({}))
        .collect();
    let r = app
        .post_events(Value::from(many).to_string(), "application/json")
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "TOO_MANY_RECORDS"
    );
    let huge = format!("[\"{}\"]", "x".repeat(patron::server::MAX_BODY_BYTES));
    let r = app.post_events(huge, "application/json").await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        t.store.stats().await.unwrap().events,
        0,
        "nothing was stored"
    );
}

async fn ingestion_needs_a_key_that_may_ingest(t: &TestStore) {
    let app = spawn_app(t).await;
    let body = json!([record("13912340009")]).to_string();
    let send = |key: Option<String>| {
        let mut request = app
            .client
            .post(format!("{}/v1/events", app.address))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "UNAUTHENTICATED",
        "the same error shape as every other answer of /v1/events"
    );
    let viewer = api_key(t, "viewer").await;
    let r = send(Some(viewer)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "FORBIDDEN"
    );
    assert_eq!(
        t.store.stats().await.unwrap().events,
        0,
        "nothing was stored"
    );
    let operator = api_key(t, "operator").await;
    assert_eq!(send(Some(operator)).await.unwrap().status(), 200);
}

async fn health_and_readiness_answer(t: &TestStore) {
    let app = spawn_app(t).await;
    let r = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
}

mod segment {
    use super::*;

    const KEY: &str = "wk_test_123";

    fn spawn_segment_app(t: &TestStore) -> (TestApp, Ingestor) {
        let ingestor = Ingestor::new(
            t.store.clone(),
            IdentityRules::default(),
            b"test identity key",
            crate::helpers::master_key(),
        );
        let app =
            Application::build_with_write_keys(ingestor.clone(), "127.0.0.1:0", vec![KEY.into()])
                .expect("bind a free port");
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        (
            TestApp {
                address,
                client: reqwest::Client::new(),
                ingest_key: String::new(),
            },
            ingestor,
        )
    }

    async fn send(app: &TestApp, path: &str, key: &str, body: Value) -> reqwest::Response {
        app.client
            .post(format!("{}{path}", app.address))
            .basic_auth(key, Some(""))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// What the Segment and RudderStack SDKs send: an anonymous visitor browses, logs in
    /// (identify with userId and traits), and the alias ties the two ids.
    pub(super) async fn sdk_messages_resolve_to_one_customer(t: &TestStore) {
        let (app, ingestor) = spawn_segment_app(t);
        let page = json!({
            "type": "page", "messageId": "ajs-next-1", "anonymousId": "anon-42",
            "timestamp": "2026-03-08T01:30:15.000Z", "name": "Home",
            "properties": {"url": "https://shop.example.cn/", "title": "Home"},
            "context": {"library": {"name": "analytics-next", "version": "1.70.0"}}
        });
        let r = send(&app, "/v1/page", KEY, page.clone()).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["success"], true);
        assert_eq!(answer["accepted"], 1);
        let batch = json!({"batch": [
            {"type": "identify", "messageId": "ajs-next-2", "userId": "u-1001", "anonymousId": "anon-42",
             "timestamp": "2026-03-08T01:31:00Z",
             "traits": {"email": "Li.Na@Example.cn", "phone": "139 1234 0001", "name": "李娜", "address": {"city": "Shanghai"}}},
            {"type": "track", "messageId": "ajs-next-3", "userId": "u-1001", "event": "Product Added",
             "timestamp": "2026-03-08T01:32:00Z", "properties": {"sku": "SKU-1", "price": 129}},
            {"type": "screen", "messageId": "ios-1", "userId": "u-1001", "name": "Cart",
             "context": {"device": {"id": "IDFV-77"}, "library": {"name": "analytics-ios"}}},
            {"type": "alias", "messageId": "ajs-next-4", "userId": "u-1001", "previousId": "anon-7"},
            {"type": "track", "messageId": "ajs-next-5", "anonymousId": "anon-9"}
        ]});
        let r = send(&app, "/v1/batch", KEY, batch).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
            (Some(4), Some(1))
        );
        assert_eq!(
            answer["records"][4]["field"], "event",
            "a track without its event name"
        );

        let customer = ingestor
            .customer_by_identifier("anonymous_id", "anon-42")
            .await
            .unwrap();
        assert!(customer.is_some());
        for (kind, value) in [
            ("login_id", "u-1001"),
            ("email", "li.na@example.cn"),
            ("phone", "13912340001"),
            ("device_id", "idfv-77"),
            ("anonymous_id", "anon-7"),
        ] {
            assert_eq!(
                ingestor.customer_by_identifier(kind, value).await.unwrap(),
                customer,
                "{kind}"
            );
        }
        // The SDK retries: the same messageId is stored once.
        let again: Value = send(&app, "/v1/page", KEY, page)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["duplicates"], 1);
    }

    pub(super) async fn a_wrong_or_missing_write_key_is_refused(t: &TestStore) {
        let (app, _) = spawn_segment_app(t);
        let message = json!({"type": "track", "messageId": "m1", "userId": "u", "event": "x"});
        let r = send(&app, "/v1/track", "not-the-key", message.clone()).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "UNKNOWN_WRITE_KEY"
        );
        let r = app
            .client
            .post(format!("{}/v1/track", app.address))
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "WRITE_KEY_REQUIRED"
        );
        assert_eq!(t.store.stats().await.unwrap().events, 0);
    }
}

async fn sdk_messages_resolve_to_one_customer(t: &TestStore) {
    segment::sdk_messages_resolve_to_one_customer(t).await;
}

async fn a_wrong_or_missing_write_key_is_refused(t: &TestStore) {
    segment::a_wrong_or_missing_write_key_is_refused(t).await;
}

async fn the_server_keeps_profiles_up_to_date(t: &TestStore) {
    let app = spawn_app(t).await;
    let answer: Value = app
        .post_events(
            json!([record("13912340001"), record("13912340001")]).to_string(),
            "application/json",
        )
        .await
        .json()
        .await
        .unwrap();
    let customer: CustomerId =
        serde_json::from_value(answer["records"][0]["customer"].clone()).unwrap();
    let projection = ProfileProjection::new(t.store.clone(), 100);
    let mut seen = None;
    for _ in 0..50 {
        seen = projection.profile(customer).await.unwrap();
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let profile = seen.expect("the server's projection applied the events within 5 s");
    assert_eq!(profile.touchpoints, 2);
    assert_eq!(profile.by_channel["store"], 2);
}

crate::on_both_stores!(
    the_server_keeps_profiles_up_to_date,
    a_json_batch_is_answered_record_by_record,
    bad_bodies_get_a_stable_code,
    health_and_readiness_answer,
    ingestion_needs_a_key_that_may_ingest,
    sdk_messages_resolve_to_one_customer,
    a_wrong_or_missing_write_key_is_refused,
);
