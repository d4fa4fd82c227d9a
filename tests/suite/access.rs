//! The right of access end to end on a real server: an admin exports everything held on a
//! person (`exportPerson`) and gets exactly that person's data, nothing of anyone else's,
//! for a customer merged from several records, two people sharing a family tablet, and people
//! a wrong merge was undone between; each export is in the access log; unknown people,
//! non-admin keys and erased people are answered as such.

use std::collections::BTreeSet;

use patron_domain::customer::CustomerId;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::graphql::{ingest, key, record};
use crate::helpers::TestStore;
use crate::http::{spawn_app, TestApp};

const EXPORT: &str = "mutation($c: ID, $i: IdentifierInput, $r: String!) { \
                      exportPerson(customer: $c, identifier: $i, reason: $r) }";

const TIMELINE: &str = "query($id: ID!) { customer(id: $id) { orders touchpoints \
                        revenue { currency minor } segments \
                        timeline(first: 500) { edges { node { eventId type } } } } }";

/// The event types of a timeline that are identity decisions, not touchpoints.
const IDENTITY_EVENTS: &[&str] = &[
    "customer_merged",
    "customer_merged_into",
    "customer_erased",
    "merge_undone",
    "customer_restored",
    "customer_split",
    "customer_split_off",
    "identifier_linked",
    "identifier_unlinked",
];

/// The tablet Li Na and Wang Fang's family share.
const TABLET: &str = "tablet-family-0001";

/// What each person left with the shop, in every form it may take in a document.
struct Someone {
    phones: &'static [&'static str],
    email: Option<&'static str>,
    name: &'static str,
}

const ZHANG: Someone = Someone {
    phones: &["+8613911110001", "13911110001", "139 1111 0001"],
    email: Some("zhang.wei@example.cn"),
    name: "Zhang Wei",
};
const LI: Someone = Someone {
    phones: &["+8613922220001", "13922220001"],
    email: None,
    name: "Li Na",
};
const WANG: Someone = Someone {
    phones: &["+8613922220002", "13922220002"],
    email: None,
    name: "Wang Fang",
};
const CHEN: Someone = Someone {
    phones: &["+8613933330001", "13933330001"],
    email: Some("chen.jie@example.cn"),
    name: "Chen Jie",
};
const DONG: Someone = Someone {
    phones: &["+8613933330002", "13933330002"],
    email: None,
    name: "Dong Mei",
};

fn order(at: &str, identifiers: Value, total: i64) -> Value {
    record(
        "order_placed",
        "store",
        at,
        identifiers,
        json!({"order_id": uuid::Uuid::new_v4().to_string(), "currency": "CNY", "items": [
            {"sku": "SKU-1", "category": "makeup", "quantity": 1, "unit_price_minor": total}]}),
    )
}

fn page(at: &str, identifiers: Value) -> Value {
    record(
        "page_viewed",
        "app",
        at,
        identifiers,
        json!({"url": "https://shop.example/p/1"}),
    )
}

fn traits(at: &str, identifiers: Value, name: &str) -> Value {
    record(
        "traits_updated",
        "membership_desk",
        at,
        identifiers,
        json!({"traits": {"name": name, "city": "Shanghai"}}),
    )
}

fn accepted_customer(answer: &Value) -> String {
    assert_eq!(answer["status"], "accepted", "{answer}");
    answer["customer"].as_str().expect("a customer").to_owned()
}

/// The people, as the shop knows them.
struct Shop {
    app: TestApp,
    admin: String,
    operator: String,
    zhang: String,
    zhang_absorbed: String,
    li: String,
    wang: String,
    chen: String,
    dong: String,
}

/// Zhang Wei: a phone at the till, an email and his name in the app, then one web visit with
/// both (a merge), a consent and a refused record. Li Na and Wang Fang: one family tablet, two
/// phones (the tablet stays with Li Na, who used it first), each with a name, Wang Fang with a
/// refused record naming the tablet. Chen Jie and Dong Mei: merged by hand by mistake, Dong Mei
/// buys meanwhile, the merge is undone; Chen Jie's email is linked to him by hand.
async fn open_shop(t: &TestStore) -> Shop {
    let app = spawn_app(t).await;
    let admin = key(t, "admin").await;
    let operator = key(t, "operator").await;
    let analyst = key(t, "analyst").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-03-01T10:00:00Z",
                json!({"phone": "139 1111 0001"}),
                12_000,
            ),
            traits(
                "2026-03-02T10:00:00Z",
                json!({"email": "Zhang.Wei@example.cn"}),
                ZHANG.name,
            ),
            // Refused: no such event type. Kept as sent, with his phone in it.
            record(
                "hologram_viewed",
                "app",
                "2026-03-05T10:00:00Z",
                json!({"phone": "139 1111 0001"}),
                json!({}),
            ),
            page(
                "2026-03-01T11:00:00Z",
                json!({"phone": "13922220001", "device_id": TABLET}),
            ),
            traits(
                "2026-03-01T11:05:00Z",
                json!({"phone": "13922220001"}),
                LI.name,
            ),
            page(
                "2026-03-01T20:00:00Z",
                json!({"phone": "13922220002", "device_id": TABLET}),
            ),
            order(
                "2026-03-01T20:10:00Z",
                json!({"phone": "13922220002", "device_id": TABLET}),
                8_800,
            ),
            traits(
                "2026-03-01T20:15:00Z",
                json!({"phone": "13922220002"}),
                WANG.name,
            ),
            record(
                "hologram_viewed",
                "app",
                "2026-03-01T20:20:00Z",
                json!({"phone": "13922220002", "device_id": TABLET}),
                json!({}),
            ),
            order(
                "2026-03-06T10:00:00Z",
                json!({"phone": "13933330001"}),
                5_000,
            ),
            traits(
                "2026-03-06T10:05:00Z",
                json!({"phone": "13933330001"}),
                CHEN.name,
            ),
            order(
                "2026-03-07T10:00:00Z",
                json!({"phone": "13933330002"}),
                7_000,
            ),
            traits(
                "2026-03-07T10:05:00Z",
                json!({"phone": "13933330002"}),
                DONG.name,
            ),
        ],
    )
    .await;
    let zhang = accepted_customer(&answers[0]);
    let zhang_absorbed = accepted_customer(&answers[1]);
    assert_ne!(
        zhang, zhang_absorbed,
        "a phone and an email: two customers so far"
    );
    assert_eq!(answers[2]["status"], "rejected", "{}", answers[2]);
    assert_eq!(answers[8]["status"], "rejected", "{}", answers[8]);
    let li = accepted_customer(&answers[3]);
    let wang = accepted_customer(&answers[5]);
    assert_ne!(li, wang, "two phones on one tablet are two people");
    let chen = accepted_customer(&answers[9]);
    let dong = accepted_customer(&answers[11]);
    // A web visit with both ties Zhang Wei's records: the older customer survives.
    ingest(
        &app,
        t,
        &operator,
        vec![
            page(
                "2026-03-03T10:00:00Z",
                json!({"phone": "13911110001", "email": "zhang.wei@example.cn"}),
            ),
            record(
                "consent_changed",
                "app",
                "2026-03-04T10:00:00Z",
                json!({"phone": "13911110001"}),
                json!({"purpose": "marketing_sms", "granted": true}),
            ),
        ],
    )
    .await;

    let merge = "mutation($s: ID!, $a: ID!) { mergeCustomers(survivor: $s, absorbed: $a, \
                 reason: \"same surname at the desk\") { applied } }";
    let merged = app
        .graphql(&operator, merge, json!({"s": chen, "a": dong}))
        .await;
    assert_eq!(merged["mergeCustomers"]["applied"], true);
    ingest(
        &app,
        t,
        &operator,
        vec![order(
            "2026-03-08T10:00:00Z",
            json!({"phone": "13933330002"}),
            3_000,
        )],
    )
    .await;
    let undo = "mutation($c: ID!) { undoMerge(customer: $c, reason: \"ticket 4711: two people\") \
                { applied } }";
    let undone = app.graphql(&operator, undo, json!({"c": dong})).await;
    assert_eq!(undone["undoMerge"]["applied"], true);
    let link = "mutation($c: ID!) { linkIdentifier(customer: $c, \
                identifier: {kind: \"email\", value: \"chen.jie@example.cn\"}, \
                reason: \"told us at the desk\") { applied } }";
    let linked = app.graphql(&operator, link, json!({"c": chen})).await;
    assert_eq!(linked["linkIdentifier"]["applied"], true);
    ingest(&app, t, &operator, Vec::new()).await;
    let buyers = app
        .graphql(
            &analyst,
            "mutation { createSegment(name: \"buyers\", rule: \"orders >= 1\") { size } }",
            json!({}),
        )
        .await;
    assert_eq!(
        buyers["createSegment"]["size"], 4,
        "Zhang Wei, Wang Fang, Chen Jie, Dong Mei"
    );

    let holder = app
        .graphql(
            &admin,
            "{ customerByIdentifier(kind: \"email\", value: \"zhang.wei@example.cn\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(holder["customerByIdentifier"]["id"], zhang, "merged");
    Shop {
        app,
        admin,
        operator,
        zhang,
        zhang_absorbed,
        li,
        wang,
        chen,
        dong,
    }
}

impl Shop {
    async fn export(&self, customer: Option<&str>, identifier: Option<Value>) -> Value {
        self.app
            .graphql(
                &self.admin,
                EXPORT,
                json!({"c": customer, "i": identifier, "r": "request DSR-7"}),
            )
            .await["exportPerson"]
            .clone()
    }

    async fn by_phone(&self, phone: &str) -> Value {
        self.export(None, Some(json!({"kind": "phone", "value": phone})))
            .await
    }

    /// A customer as the API shows it, with its touchpoints' event ids in log order.
    async fn customer(&self, id: &str) -> (Value, Vec<String>) {
        let data = self
            .app
            .graphql(&self.operator, TIMELINE, json!({"id": id}))
            .await;
        let customer = data["customer"].clone();
        let mut touchpoints: Vec<String> = customer["timeline"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .filter(|e| !IDENTITY_EVENTS.contains(&e["node"]["type"].as_str().expect("a type")))
            .map(|e| e["node"]["eventId"].as_str().expect("id").to_owned())
            .collect();
        touchpoints.reverse();
        (customer, touchpoints)
    }

    /// Every id and event id of a customer's document, to look for in others' documents.
    fn ids_of(document: &Value) -> Vec<String> {
        let mut ids: Vec<String> = document["touchpoints"]
            .as_array()
            .expect("touchpoints")
            .iter()
            .chain(document["corrections"].as_array().expect("corrections"))
            .map(|t| t["event_id"].as_str().expect("event id").to_owned())
            .collect();
        ids.push(document["customer"].as_str().expect("customer").to_owned());
        for merged in document["merged_customers"].as_array().expect("merged") {
            ids.push(merged.as_str().expect("id").to_owned());
        }
        ids
    }
}

/// What of `someone` (and of the ids given) a document holds.
fn traces(document: &Value, someone: &Someone, ids: &[String]) -> Vec<String> {
    let text = document.to_string();
    let mut needles: Vec<&str> = someone.phones.to_vec();
    needles.extend(someone.email);
    needles.push(someone.name);
    needles.extend(ids.iter().map(String::as_str));
    needles
        .into_iter()
        .filter(|n| text.contains(n))
        .map(str::to_owned)
        .collect()
}

/// The document holds exactly the timeline's touchpoints and the profile's figures.
async fn check_against_the_api(shop: &Shop, document: &Value, id: &str) {
    let (customer, timeline) = shop.customer(id).await;
    let exported: Vec<String> = document["touchpoints"]
        .as_array()
        .expect("touchpoints")
        .iter()
        .map(|t| t["event_id"].as_str().expect("event id").to_owned())
        .collect();
    assert!(!exported.is_empty());
    assert_eq!(exported, timeline, "the timeline's touchpoints, in order");
    let profile = &document["profile"];
    assert_eq!(profile["touchpoints"], customer["touchpoints"]);
    assert_eq!(profile["touchpoints"], exported.len());
    assert_eq!(profile["orders"], customer["orders"]);
    for money in customer["revenue"].as_array().expect("revenue") {
        let currency = money["currency"].as_str().expect("currency");
        assert_eq!(profile["revenue"][currency], money["minor"], "{profile}");
    }
    assert_eq!(document["segments"]["current"], customer["segments"]);
    assert_eq!(document["schema"], "patron.person-export/1");
    assert!(document["generated_at"].is_string());
    assert_eq!(document["destinations"], json!([]));
    assert!(document["notes"]["destinations"].is_string());
    assert_eq!(document["erased"], false);
}

async fn an_export_holds_everything_on_a_merged_person_and_nothing_else(t: &TestStore) {
    let shop = open_shop(t).await;
    let document = shop.by_phone("139-1111-0001").await;
    assert_eq!(document["customer"], shop.zhang);
    assert_eq!(document["merged_customers"], json!([shop.zhang_absorbed]));
    check_against_the_api(&shop, &document, &shop.zhang).await;
    assert_eq!(document["touchpoints"].as_array().map(Vec::len), Some(4));
    let text = document.to_string();
    for needle in ["+8613911110001", "zhang.wei@example.cn", ZHANG.name] {
        assert!(text.contains(needle), "{needle} in {document}");
    }
    // Both records and the one that tied them, opened.
    let types: Vec<&str> = document["touchpoints"]
        .as_array()
        .expect("touchpoints")
        .iter()
        .map(|t| t["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "order_placed",
            "traits_updated",
            "page_viewed",
            "consent_changed"
        ]
    );
    let traits = &document["touchpoints"][1];
    assert_eq!(traits["action"]["name"], ZHANG.name);
    assert_eq!(traits["channel"], "membership_desk");
    assert_eq!(traits["source"], "membership_desk-system");
    assert_eq!(traits["customer"], shop.zhang_absorbed);
    assert_eq!(document["profile"]["orders"], 1);
    assert_eq!(document["profile"]["revenue"]["CNY"], 12_000);
    assert_eq!(document["profile"]["preferred_channel"], "app");
    assert!(document["scores"]["tier"].is_string(), "{document}");
    assert!(document["scores"]["stage"].is_string(), "{document}");
    assert_eq!(document["segments"]["current"], json!(["buyers"]));
    let log = document["segments"]["log"].as_array().expect("log");
    assert!(
        log.iter()
            .any(|e| e["segment"] == "buyers" && e["entered"] == true),
        "{log:?}"
    );
    assert_eq!(
        document["consent"]["current"]["marketing_sms"]["granted"],
        true
    );
    let consent = document["consent"]["history"].as_array().expect("history");
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0]["purpose"], "marketing_sms");
    assert_eq!(consent[0]["granted"], true);
    assert_eq!(consent[0]["channel"], "app");
    // The merge by the rules, on both of his customers.
    let corrections = document["corrections"].as_array().expect("corrections");
    assert!(
        corrections
            .iter()
            .any(|c| c["type"] == "customer_merged" && c["another_customer"] == false),
        "{corrections:?}"
    );
    // His identifiers, held, with why.
    let identifiers = document["identifiers"].as_array().expect("identifiers");
    assert_eq!(identifiers.len(), 2, "{identifiers:?}");
    for identifier in identifiers {
        assert_eq!(identifier["held"], true, "{identifier}");
        let steps = identifier["explanation"]["steps"]
            .as_array()
            .expect("steps");
        assert_eq!(steps[0]["step"], "linked", "{identifier}");
    }
    // His refused record, as sent.
    let quarantine = document["quarantine"].as_array().expect("quarantine");
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    assert!(quarantine[0]["record"]
        .as_str()
        .is_some_and(|r| r.contains("hologram_viewed") && r.contains("139 1111 0001")));

    // Nothing of anyone else.
    for (someone, id) in [
        (&LI, &shop.li),
        (&WANG, &shop.wang),
        (&CHEN, &shop.chen),
        (&DONG, &shop.dong),
    ] {
        let found = traces(&document, someone, std::slice::from_ref(id));
        assert!(found.is_empty(), "{found:?} in Zhang Wei's export");
    }
    // Any id of the absorbed customer asks for the same person.
    let again = shop.export(Some(&shop.zhang_absorbed), None).await;
    assert_eq!(again["customer"], shop.zhang);
    assert_eq!(again["touchpoints"], document["touchpoints"]);
}

async fn a_family_tablet_brings_in_nobody_elses_data(t: &TestStore) {
    let shop = open_shop(t).await;
    let li = shop.by_phone("13922220001").await;
    let wang = shop.by_phone("13922220002").await;
    assert_eq!(li["customer"], shop.li);
    assert_eq!(wang["customer"], shop.wang);
    check_against_the_api(&shop, &li, &shop.li).await;
    check_against_the_api(&shop, &wang, &shop.wang).await;
    assert_eq!(li["touchpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(wang["touchpoints"].as_array().map(Vec::len), Some(3));
    let li_ids = Shop::ids_of(&li);
    let wang_ids = Shop::ids_of(&wang);
    let found = traces(&li, &WANG, &wang_ids);
    assert!(found.is_empty(), "{found:?} of Wang Fang in Li Na's export");
    let found = traces(&wang, &LI, &li_ids);
    assert!(found.is_empty(), "{found:?} of Li Na in Wang Fang's export");
    assert!(traces(&li, &LI, &[]).len() >= 2, "her own phone and name");
    assert!(
        traces(&wang, &WANG, &[]).len() >= 2,
        "her own phone and name"
    );

    // The tablet is Li Na's (she used it first); Wang Fang's touchpoints carried it, so her
    // export has it too, but not held, and not who holds it.
    let tablet = |document: &Value| -> Value {
        document["identifiers"]
            .as_array()
            .expect("identifiers")
            .iter()
            .find(|i| i["kind"] == "device_id")
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(tablet(&li)["held"], true, "{li}");
    assert_eq!(tablet(&li)["value"], TABLET);
    assert_eq!(tablet(&wang)["held"], false, "{wang}");
    assert!(tablet(&wang)["explanation"].is_null());
    let skipped = &wang["touchpoints"][0]["resolution"]["skipped"][0];
    assert_eq!(skipped["reason"], "held_by_other", "{wang}");
    assert!(skipped.get("customer").is_none(), "{skipped}");
    // Wang Fang's refused record names the tablet: hers, not Li Na's.
    assert_eq!(li["quarantine"], json!([]), "{li}");
    assert_eq!(
        wang["quarantine"].as_array().map(Vec::len),
        Some(1),
        "{wang}"
    );
    for (document, someone, ids) in [
        (&li, &ZHANG, vec![shop.zhang.clone()]),
        (&wang, &CHEN, vec![shop.chen.clone()]),
    ] {
        let found = traces(document, someone, &ids);
        assert!(found.is_empty(), "{found:?}");
    }
}

async fn people_a_wrong_merge_was_undone_between_get_their_own_data(t: &TestStore) {
    let shop = open_shop(t).await;
    let chen = shop.by_phone("13933330001").await;
    let dong = shop.export(Some(&shop.dong), None).await;
    assert_eq!(chen["customer"], shop.chen);
    assert_eq!(dong["customer"], shop.dong);
    check_against_the_api(&shop, &chen, &shop.chen).await;
    check_against_the_api(&shop, &dong, &shop.dong).await;
    assert_eq!(chen["touchpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        dong["touchpoints"].as_array().map(Vec::len),
        Some(3),
        "with the order after the wrong merge"
    );
    assert_eq!(chen["merged_customers"], json!([]));
    assert_eq!(dong["merged_customers"], json!([]));

    // The corrections, with who and why, naming only the person's own customer.
    let corrections = |document: &Value| -> Vec<(String, Value, Value)> {
        document["corrections"]
            .as_array()
            .expect("corrections")
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().expect("type").to_owned(),
                    c["reason"].clone(),
                    c["another_customer"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        corrections(&chen),
        [
            (
                "customer_merged".to_owned(),
                json!("same surname at the desk"),
                json!(true)
            ),
            (
                "merge_undone".to_owned(),
                json!("ticket 4711: two people"),
                json!(true)
            ),
            (
                "identifier_linked".to_owned(),
                json!("told us at the desk"),
                json!(false)
            ),
        ]
    );
    assert_eq!(
        corrections(&dong),
        [
            (
                "customer_merged_into".to_owned(),
                json!("same surname at the desk"),
                json!(true)
            ),
            (
                "customer_restored".to_owned(),
                json!("ticket 4711: two people"),
                json!(true)
            ),
        ]
    );
    assert!(chen["corrections"]
        .as_array()
        .expect("corrections")
        .iter()
        .all(|c| c["actor"] == "api-key:operator" && c["customers"] == json!([shop.chen])));
    // The email linked by hand: held, its value known only as a keyed hash.
    let identifiers = chen["identifiers"].as_array().expect("identifiers");
    assert!(
        identifiers
            .iter()
            .any(|i| i["kind"] == "email" && i["held"] == true && i["value"].is_null()),
        "{identifiers:?}"
    );

    let found = traces(&chen, &DONG, &Shop::ids_of(&dong));
    assert!(
        found.is_empty(),
        "{found:?} of Dong Mei in Chen Jie's export"
    );
    let found = traces(&dong, &CHEN, &Shop::ids_of(&chen));
    assert!(
        found.is_empty(),
        "{found:?} of Chen Jie in Dong Mei's export"
    );
}

/// The exports in the access log, all customers.
async fn exports_logged(t: &TestStore) -> i64 {
    let sql = "SELECT COUNT(*) FROM access_log WHERE what = 'export'";
    if t.sqlite_file().is_some() {
        let mut conn = sqlx::SqliteConnection::connect(t.url())
            .await
            .expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count")
    } else {
        let mut conn = sqlx::PgConnection::connect(t.url()).await.expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count")
    }
}

async fn exports_are_for_admins_logged_and_unknown_people_are_not_found(t: &TestStore) {
    let shop = open_shop(t).await;
    let phone = json!({"kind": "phone", "value": "13911110001"});
    for role in ["operator", "analyst", "viewer"] {
        let secret = key(t, role).await;
        let (code, message) = shop
            .app
            .graphql_error(&secret, EXPORT, json!({"i": phone, "r": "curious"}))
            .await;
        assert_eq!(code, "FORBIDDEN", "{role}: {message}");
    }
    assert_eq!(exports_logged(t).await, 0, "refused exports log nothing");

    let unknown = json!({"kind": "phone", "value": "13999999999"});
    let (code, message) = shop
        .app
        .graphql_error(
            &shop.admin,
            EXPORT,
            json!({"i": unknown, "r": "request DSR-8"}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND", "{message}");
    assert!(
        message.contains("no customer holds this phone"),
        "{message}"
    );
    assert!(
        !message.contains("13999999999"),
        "no value in errors: {message}"
    );
    let nobody = uuid::Uuid::now_v7().to_string();
    let (code, message) = shop
        .app
        .graphql_error(
            &shop.admin,
            EXPORT,
            json!({"c": nobody, "r": "request DSR-8"}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND", "{message}");
    let (code, _) = shop
        .app
        .graphql_error(
            &shop.admin,
            EXPORT,
            json!({"c": shop.zhang, "i": phone, "r": "x"}),
        )
        .await;
    assert_eq!(code, "INVALID_ARGUMENT");
    let (code, _) = shop
        .app
        .graphql_error(&shop.admin, EXPORT, json!({"i": phone, "r": " "}))
        .await;
    assert_eq!(code, "REASON_REQUIRED");
    assert_eq!(exports_logged(t).await, 0, "failed exports log nothing");

    let document = shop.by_phone("13911110001").await;
    assert_eq!(document["request"]["actor"], "api-key:admin");
    assert_eq!(document["request"]["reason"], "request DSR-7");
    assert_eq!(exports_logged(t).await, 1);
    let zhang = CustomerId::from_uuid(shop.zhang.parse().expect("uuid"));
    let log = t.store.access_log(zhang).await.expect("access log");
    let exports: Vec<_> = log.iter().filter(|e| e.what == "export").collect();
    assert_eq!(exports.len(), 1, "{log:?}");
    assert_eq!(exports[0].key_name, "admin");
    assert_eq!(exports[0].reason.as_deref(), Some("request DSR-7"));
    assert_ne!(exports[0].key_id, uuid::Uuid::nil());
}

async fn an_erased_person_exports_as_erased_with_no_personal_data(t: &TestStore) {
    let shop = open_shop(t).await;
    let before = shop.by_phone("13922220001").await;
    assert!(!traces(&before, &LI, &[]).is_empty());
    let erase =
        "mutation($id: ID!) { eraseCustomer(id: $id, reason: \"request DSR-9\") { customer } }";
    shop.app
        .graphql(&shop.admin, erase, json!({"id": shop.li}))
        .await;
    let (code, _) = shop
        .app
        .graphql_error(
            &shop.admin,
            EXPORT,
            json!({"i": {"kind": "phone", "value": "13922220001"}, "r": "request DSR-10"}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND", "her phone holds no one any more");

    let document = shop.export(Some(&shop.li), None).await;
    assert_eq!(document["customer"], shop.li);
    assert_eq!(document["erased"], true);
    assert_eq!(document["erasure"]["reason"], "request DSR-9");
    assert_eq!(document["erasure"]["actor"], "api-key:admin");
    let found = traces(&document, &LI, &[]);
    assert!(found.is_empty(), "{found:?} in an erased person's export");
    assert!(!document.to_string().contains(TABLET), "{document}");
    for section in ["touchpoints", "identifiers", "quarantine", "corrections"] {
        assert_eq!(document[section], json!([]), "{section}: {document}");
    }
    assert!(document["profile"].is_null());
    let li = CustomerId::from_uuid(shop.li.parse().expect("uuid"));
    let exports = t
        .store
        .access_log(li)
        .await
        .expect("access log")
        .into_iter()
        .filter(|e| e.what == "export")
        .count();
    assert_eq!(exports, 2, "before and after the erasure");
    let ids: BTreeSet<&str> = [shop.wang.as_str()].into();
    assert!(ids.iter().all(|id| !document.to_string().contains(id)));
}

crate::on_both_stores!(
    an_export_holds_everything_on_a_merged_person_and_nothing_else,
    a_family_tablet_brings_in_nobody_elses_data,
    people_a_wrong_merge_was_undone_between_get_their_own_data,
    exports_are_for_admins_logged_and_unknown_people_are_not_found,
    an_erased_person_exports_as_erased_with_no_personal_data,
);
