//! Identity corrections end to end through GraphQL on a real server: an operator finds a wrong
//! merge, sees why it happened, undoes it and sees both customers' profiles and segment
//! memberships corrected; splits, links, unlinks and blocks; conflicts, idempotency, roles.

use serde_json::{json, Value};

use crate::graphql::{ingest, key, record};
use crate::helpers::TestStore;
use crate::http::{spawn_app, TestApp};

fn order(at: &str, identifiers: Value, total: i64) -> Value {
    record(
        "order_placed",
        "web",
        at,
        identifiers,
        json!({"order_id": uuid::Uuid::new_v4().to_string(), "currency": "CNY", "items": [
            {"sku": "SKU-1", "category": "makeup", "quantity": 1, "unit_price_minor": total}]}),
    )
}

const PROFILE: &str = "id version orders revenue { currency minor } touchpoints segments";

async fn customer(app: &TestApp, secret: &str, id: &str) -> Value {
    let data = app
        .graphql(
            secret,
            &format!(
                "query($id: ID!) {{ customer(id: $id) {{ {PROFILE} mergedFrom {{ absorbed }} }} }}"
            ),
            json!({"id": id}),
        )
        .await;
    data["customer"].clone()
}

async fn holder(app: &TestApp, secret: &str, kind: &str, value: &str) -> Value {
    let data = app
        .graphql(
            secret,
            "query($k: String!, $v: String!) { customerByIdentifier(kind: $k, value: $v) { id } }",
            json!({"k": kind, "v": value}),
        )
        .await;
    data["customerByIdentifier"]["id"].clone()
}

const MERGE: &str = "mutation($s: ID!, $a: ID!, $r: String!) { mergeCustomers(survivor: $s, absorbed: $a, reason: $r) { applied note customerIds } }";
const UNDO: &str = "mutation($c: ID!, $r: String!, $v: Int) { undoMerge(customer: $c, reason: $r, expectedVersion: $v) { applied note touchpointsMoved identifiersMoved kept customers { id orders revenue { minor } segments } } }";
const EXPLAIN: &str = "query($k: String!, $v: String!) { explainIdentifier(kind: $k, value: $v) { blocked customer { id } steps { step eventType customer actor reason rulesVersion source } } }";

async fn an_operator_finds_explains_and_undoes_a_wrong_merge(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let analyst = key(t, "analyst").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-03-01T10:00:00Z",
                json!({"phone": "13912340001"}),
                10_000,
            ),
            order(
                "2026-03-02T10:00:00Z",
                json!({"phone": "13912340002", "device_id": "IDFA-B"}),
                3_000,
            ),
            order(
                "2026-03-03T10:00:00Z",
                json!({"phone": "13912340002"}),
                4_000,
            ),
        ],
    )
    .await;
    let a = answers[0]["customer"].as_str().expect("a").to_owned();
    let b = answers[1]["customer"].as_str().expect("b").to_owned();
    assert_ne!(a, b);
    app.graphql(
        &analyst,
        "mutation { createSegment(name: \"repeat\", rule: \"orders >= 2\") { size } }",
        json!({}),
    )
    .await;

    // The wrong merge, by hand.
    let merged = app
        .graphql(
            &operator,
            MERGE,
            json!({"s": a, "a": b, "r": "same name at the desk"}),
        )
        .await;
    assert_eq!(merged["mergeCustomers"]["applied"], true);
    let after_merge = customer(&app, &operator, &b).await;
    assert_eq!(
        after_merge["id"], a,
        "the absorbed id resolves to the survivor"
    );
    assert_eq!(after_merge["orders"], 3);
    assert_eq!(after_merge["segments"], json!(["repeat"]));
    // A touchpoint through the absorbed customer's phone after the merge.
    ingest(
        &app,
        t,
        &operator,
        vec![order(
            "2026-03-10T10:00:00Z",
            json!({"phone": "13912340002"}),
            5_000,
        )],
    )
    .await;
    assert_eq!(customer(&app, &operator, &a).await["orders"], 4);

    // Why does B's phone belong to A?
    let why = app
        .graphql(
            &operator,
            EXPLAIN,
            json!({"k": "phone", "v": "139 1234 0002"}),
        )
        .await["explainIdentifier"]
        .clone();
    assert_eq!(why["customer"]["id"], a);
    let steps = why["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{why}");
    assert_eq!(steps[0]["step"], "linked");
    assert_eq!(steps[0]["eventType"], "order_placed");
    assert_eq!(steps[0]["customer"], b);
    assert_eq!(steps[0]["rulesVersion"], 1);
    assert_eq!(steps[0]["source"], "web-system");
    assert_eq!(steps[1]["step"], "merged");
    assert_eq!(steps[1]["reason"], "same name at the desk");
    assert_eq!(steps[1]["actor"], "api-key:operator");
    assert!(steps[1]["rulesVersion"].is_null(), "a merge by hand");

    // Undo with a stale version: a conflict, nothing written.
    let version = customer(&app, &operator, &a).await["version"]
        .as_u64()
        .expect("version");
    let (code, message) = app
        .graphql_error(
            &operator,
            UNDO,
            json!({"c": b, "r": "different people", "v": version - 1}),
        )
        .await;
    assert_eq!(code, "VERSION_CONFLICT", "{message}");
    assert!(message.contains(&a), "{message}");
    // Roles and reasons.
    let (code, _) = app
        .graphql_error(&analyst, UNDO, json!({"c": b, "r": "different people"}))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let (code, message) = app
        .graphql_error(&operator, UNDO, json!({"c": b, "r": " "}))
        .await;
    assert_eq!(code, "INVALID_ARGUMENT", "{message}");

    let undone = app
        .graphql(
            &operator,
            UNDO,
            json!({"c": b, "r": "different people", "v": version}),
        )
        .await["undoMerge"]
        .clone();
    assert_eq!(undone["applied"], true, "{undone}");
    assert_eq!(undone["touchpointsMoved"], 3, "{undone}");
    assert_eq!(undone["identifiersMoved"], 2, "phone and device: {undone}");
    assert_eq!(undone["kept"], json!([]));
    let by_id: std::collections::HashMap<String, Value> = undone["customers"]
        .as_array()
        .expect("customers")
        .iter()
        .map(|c| (c["id"].as_str().expect("id").to_owned(), c.clone()))
        .collect();
    assert_eq!(by_id[&a]["orders"], 1);
    assert_eq!(by_id[&a]["revenue"], json!([{"minor": 10_000}]));
    assert_eq!(by_id[&a]["segments"], json!([]), "A left the segment");
    assert_eq!(by_id[&b]["orders"], 3, "B's orders, the late one too");
    assert_eq!(by_id[&b]["revenue"], json!([{"minor": 12_000}]));
    assert_eq!(by_id[&b]["segments"], json!(["repeat"]));
    assert_eq!(holder(&app, &operator, "phone", "13912340002").await, b);
    assert_eq!(holder(&app, &operator, "device_id", "IDFA-B").await, b);
    assert_eq!(holder(&app, &operator, "phone", "13912340001").await, a);
    assert_eq!(customer(&app, &operator, &a).await["mergedFrom"], json!([]));

    // The same undo again changes nothing.
    let again = app
        .graphql(&operator, UNDO, json!({"c": b, "r": "different people"}))
        .await["undoMerge"]
        .clone();
    assert_eq!(again["applied"], false);
    assert!(again["note"]
        .as_str()
        .expect("note")
        .contains("nothing to undo"));

    // B's history says who did it and why.
    let history = app
        .graphql(
            &operator,
            "query($id: ID!) { customer(id: $id) { timeline(first: 50) { edges { node { type actor reason } } } } }",
            json!({"id": b}),
        )
        .await;
    let events: Vec<&Value> = history["customer"]["timeline"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| &e["node"])
        .collect();
    let restored = events
        .iter()
        .find(|e| e["type"] == "customer_restored")
        .expect("the restoration is in B's history");
    assert_eq!(restored["actor"], "api-key:operator");
    assert_eq!(restored["reason"], "different people");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "order_placed")
            .count(),
        3
    );

    // New touchpoints through B's phone go to B again.
    ingest(
        &app,
        t,
        &operator,
        vec![order(
            "2026-03-12T10:00:00Z",
            json!({"phone": "13912340002"}),
            1_000,
        )],
    )
    .await;
    assert_eq!(customer(&app, &operator, &b).await["orders"], 4);
    assert_eq!(customer(&app, &operator, &a).await["orders"], 1);
}

const SPLIT: &str = "mutation($c: ID!, $ids: [IdentifierInput!]!, $r: String!) { splitCustomer(customer: $c, identifiers: $ids, reason: $r) { applied note customerIds touchpointsMoved identifiersMoved kept } }";

async fn a_split_moves_identifiers_and_their_touchpoints_to_a_new_customer(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    // One phone, and a shared email that a second person also used alone.
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-04-01T10:00:00Z",
                json!({"phone": "13912340011", "email": "family@example.cn"}),
                1_000,
            ),
            order(
                "2026-04-02T10:00:00Z",
                json!({"email": "family@example.cn", "device_id": "IDFA-S"}),
                2_000,
            ),
            order(
                "2026-04-03T10:00:00Z",
                json!({"phone": "13912340011"}),
                4_000,
            ),
        ],
    )
    .await;
    let a = answers[0]["customer"].as_str().expect("a").to_owned();
    assert!(answers.iter().all(|r| r["customer"] == a));

    let (code, message) = app
        .graphql_error(
            &operator,
            SPLIT,
            json!({"c": a, "ids": [{"kind": "phone", "value": "not a phone"}], "r": "x"}),
        )
        .await;
    assert_eq!(code, "INVALID_IDENTIFIER", "{message}");
    assert!(message.starts_with("identifier phone:"), "{message}");
    assert!(
        !message.contains("not a phone"),
        "no value in errors: {message}"
    );
    let (code, message) = app
        .graphql_error(
            &operator,
            SPLIT,
            json!({"c": a, "ids": [{"kind": "shoe_size", "value": "42"}], "r": "x"}),
        )
        .await;
    assert_eq!(code, "INVALID_IDENTIFIER", "{message}");
    assert!(
        message.contains("know no kind \"shoe_size\"") && message.contains("phone"),
        "{message}"
    );

    let split = app
        .graphql(
            &operator,
            SPLIT,
            json!({"c": a, "ids": [{"kind": "email", "value": "FAMILY@example.cn"}], "r": "shared family email"}),
        )
        .await["splitCustomer"]
        .clone();
    assert_eq!(split["applied"], true, "{split}");
    // The first order carried the phone that stays: it stays, and is reported.
    assert_eq!(split["touchpointsMoved"], 1, "{split}");
    assert_eq!(split["kept"].as_array().map(Vec::len), Some(1), "{split}");
    assert_eq!(
        split["identifiersMoved"], 2,
        "the email and the device: {split}"
    );
    let new = split["customerIds"][1].as_str().expect("new").to_owned();
    assert_ne!(new, a);
    let theirs = customer(&app, &operator, &new).await;
    assert_eq!(theirs["orders"], 1);
    assert_eq!(
        theirs["revenue"],
        json!([{"currency": "CNY", "minor": 2_000}])
    );
    assert_eq!(customer(&app, &operator, &a).await["orders"], 2);
    assert_eq!(
        holder(&app, &operator, "email", "family@example.cn").await,
        new
    );
    assert_eq!(holder(&app, &operator, "device_id", "IDFA-S").await, new);
    assert_eq!(holder(&app, &operator, "phone", "13912340011").await, a);

    let again = app
        .graphql(
            &operator,
            SPLIT,
            json!({"c": a, "ids": [{"kind": "email", "value": "family@example.cn"}], "r": "shared family email"}),
        )
        .await["splitCustomer"]
        .clone();
    assert_eq!(again["applied"], false, "{again}");
    // The email now explains through the split.
    let why = app
        .graphql(
            &operator,
            EXPLAIN,
            json!({"k": "email", "v": "family@example.cn"}),
        )
        .await["explainIdentifier"]
        .clone();
    assert_eq!(why["customer"]["id"], new);
    assert_eq!(why["steps"][0]["eventType"], "customer_split_off", "{why}");
    assert_eq!(why["steps"][0]["reason"], "shared family email");
}

const LINK: &str = "mutation($c: ID!, $k: String!, $v: String!, $r: String!) { linkIdentifier(customer: $c, identifier: {kind: $k, value: $v}, reason: $r) { applied note customerIds } }";
const UNLINK: &str = "mutation($c: ID!, $k: String!, $v: String!, $r: String!) { unlinkIdentifier(customer: $c, identifier: {kind: $k, value: $v}, reason: $r) { applied note } }";
const BLOCK: &str = "mutation($k: String!, $v: String!, $r: String!) { blockIdentifier(identifier: {kind: $k, value: $v}, reason: $r) { applied note customerIds } }";

async fn identifiers_are_linked_unlinked_and_blocked_by_hand(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-05-01T10:00:00Z",
                json!({"phone": "13912340021"}),
                1_000,
            ),
            order(
                "2026-05-01T11:00:00Z",
                json!({"phone": "13912340022", "member_card": "MC-22"}),
                1_000,
            ),
        ],
    )
    .await;
    let (a, b) = (
        answers[0]["customer"].as_str().expect("a").to_owned(),
        answers[1]["customer"].as_str().expect("b").to_owned(),
    );
    // The member card really is A's: move it.
    let linked = app
        .graphql(
            &operator,
            LINK,
            json!({"c": a, "k": "member_card", "v": "MC-22", "r": "card swapped at the desk"}),
        )
        .await["linkIdentifier"]
        .clone();
    assert_eq!(linked["applied"], true);
    assert_eq!(linked["customerIds"], json!([a, b]));
    assert_eq!(holder(&app, &operator, "member_card", "MC-22").await, a);
    let again = app
        .graphql(
            &operator,
            LINK,
            json!({"c": a, "k": "member_card", "v": "MC-22", "r": "card swapped at the desk"}),
        )
        .await["linkIdentifier"]
        .clone();
    assert_eq!(again["applied"], false);
    let why = app
        .graphql(
            &operator,
            EXPLAIN,
            json!({"k": "member_card", "v": "MC-22"}),
        )
        .await["explainIdentifier"]
        .clone();
    assert_eq!(why["steps"][0]["eventType"], "identifier_linked", "{why}");

    // Unlinking from the wrong customer names the holder.
    let (code, message) = app
        .graphql_error(
            &operator,
            UNLINK,
            json!({"c": b, "k": "member_card", "v": "MC-22", "r": "x"}),
        )
        .await;
    assert_eq!(code, "IDENTIFIER_HELD_BY_OTHER");
    assert!(message.contains(&a), "{message}");
    let unlinked = app
        .graphql(
            &operator,
            UNLINK,
            json!({"c": a, "k": "member_card", "v": "MC-22", "r": "card returned"}),
        )
        .await["unlinkIdentifier"]
        .clone();
    assert_eq!(unlinked["applied"], true);
    assert!(holder(&app, &operator, "member_card", "MC-22")
        .await
        .is_null());

    // A blocked phone is unlinked and links nobody again: its next touchpoint starts a new
    // customer instead of reaching A.
    let blocked = app
        .graphql(
            &operator,
            BLOCK,
            json!({"k": "phone", "v": "13912340021", "r": "shop's own number"}),
        )
        .await["blockIdentifier"]
        .clone();
    assert_eq!(blocked["applied"], true);
    assert_eq!(blocked["customerIds"], json!([a]));
    assert!(holder(&app, &operator, "phone", "13912340021")
        .await
        .is_null());
    let later = ingest(
        &app,
        t,
        &operator,
        vec![order(
            "2026-05-02T10:00:00Z",
            json!({"phone": "13912340021"}),
            500,
        )],
    )
    .await;
    assert_ne!(later[0]["customer"], a);
    assert!(holder(&app, &operator, "phone", "13912340021")
        .await
        .is_null());
    let why = app
        .graphql(
            &operator,
            EXPLAIN,
            json!({"k": "phone", "v": "13912340021"}),
        )
        .await["explainIdentifier"]
        .clone();
    assert_eq!(why["blocked"], true);
    let (code, _) = app
        .graphql_error(
            &operator,
            LINK,
            json!({"c": a, "k": "phone", "v": "13912340021", "r": "x"}),
        )
        .await;
    assert_eq!(code, "IDENTIFIER_BLOCKED");
    let again = app
        .graphql(
            &operator,
            BLOCK,
            json!({"k": "phone", "v": "13912340021", "r": "shop's own number"}),
        )
        .await["blockIdentifier"]
        .clone();
    assert_eq!(again["applied"], false);
}

/// An ingestor over `t` that has taken `records`, a corrector with a projection folding two
/// events at a time, and an operator's request.
async fn corrections_over(
    t: &TestStore,
    records: &[Value],
) -> (
    patron::ingest::Ingestor,
    patron::projection::ProfileProjection,
    patron::correction::Corrector,
    patron::correction::Request,
) {
    let ing = patron::ingest::Ingestor::new(
        t.store.clone(),
        patron_domain::identity::IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let records: Vec<String> = records.iter().map(Value::to_string).collect();
    let report = ing.ingest_json(&records).await.expect("ingest");
    assert_eq!(report.accepted, records.len());
    let projection = patron::projection::ProfileProjection::new(t.store.clone(), 2);
    let corrector = patron::correction::Corrector::new(ing.clone(), projection.clone());
    let request = patron::correction::Request {
        actor: "op".into(),
        reason: "test".into(),
        expected_version: None,
    };
    (ing, projection, corrector, request)
}

async fn verify_finds_a_live_profile_that_is_not_what_the_log_folds_to(t: &TestStore) {
    use patron::projection::PROFILES;
    use patron::store::projection::ProfileTable;

    let (ing, projection, corrector, request) = corrections_over(
        t,
        &[
            order(
                "2026-06-01T10:00:00Z",
                json!({"phone": "13912340031"}),
                1_000,
            ),
            order(
                "2026-06-02T10:00:00Z",
                json!({"phone": "13912340032"}),
                2_000,
            ),
            order(
                "2026-06-03T10:00:00Z",
                json!({"phone": "13912340032"}),
                3_000,
            ),
        ],
    )
    .await;
    let a = ing
        .customer_by_identifier("phone", "13912340031")
        .await
        .expect("look up")
        .expect("a");
    let b = ing
        .customer_by_identifier("phone", "13912340032")
        .await
        .expect("look up")
        .expect("b");
    corrector.merge(a, b, &request).await.expect("merge");
    corrector.undo_merge(b, &request).await.expect("undo");

    let found = projection.verify(|_, _| {}).await.expect("verify");
    assert!(found.is_clean(), "{found:?}");
    assert_eq!(found.position, t.store.head().await.expect("head"));
    assert_eq!(found.profiles, 2);

    // A live profile that drifted from the log is found, and named with its field.
    let at = t.store.checkpoint(PROFILES).await.expect("checkpoint");
    let mut row = t
        .store
        .all_profiles(ProfileTable::Live)
        .await
        .expect("rows")
        .into_iter()
        .find(|r| r.customer == a)
        .expect("a's row");
    row.state = row.state.replace("\"touchpoints\":1", "\"touchpoints\":7");
    assert!(t
        .store
        .commit_rows(PROFILES, ProfileTable::Live, at, at, &[row])
        .await
        .expect("tamper"));
    let found = projection.verify(|_, _| {}).await.expect("verify");
    assert_eq!((found.different, found.missing, found.extra), (1, 0, 0));
    assert_eq!(found.examples[0].customer, a);
    assert_eq!(found.examples[0].fields, vec!["touchpoints".to_owned()]);
    // The scratch table is gone: a rebuild repairs the live profiles, and verify agrees.
    projection.rebuild(|_, _| {}).await.expect("rebuild");
    assert!(projection
        .verify(|_, _| {})
        .await
        .expect("verify")
        .is_clean());
}

const AS_OF: &str = "query($id: ID!, $at: DateTime!, $k: DateTime) { customerAsOf(id: $id, at: $at, knownAt: $k) { touchpoints orders revenue { minor } firstSeen lastSeen } }";

async fn as_of(app: &TestApp, secret: &str, id: &str, at: &str, known: Option<&str>) -> Value {
    app.graphql(secret, AS_OF, json!({"id": id, "at": at, "k": known}))
        .await["customerAsOf"]
        .clone()
}

async fn a_profile_is_read_as_it_was_and_as_it_was_known(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(30));
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-03-01T10:00:00Z",
                json!({"phone": "13912340041"}),
                1_000,
            ),
            order(
                "2026-03-05T10:00:00Z",
                json!({"phone": "13912340041"}),
                2_000,
            ),
        ],
    )
    .await;
    let a = answers[0]["customer"].as_str().expect("a").to_owned();
    pause().await;
    let t1 = chrono::Utc::now().to_rfc3339();
    // What the live profile showed at t1.
    let then = app
        .graphql(
            &operator,
            "query($id: ID!) { customer(id: $id) { touchpoints orders revenue { minor } firstSeen lastSeen } }",
            json!({"id": a}),
        )
        .await["customer"]
        .clone();
    pause().await;
    // After t1: a late offline order that happened before it, and another customer merged in.
    let later = ingest(
        &app,
        t,
        &operator,
        vec![
            order(
                "2026-03-03T10:00:00Z",
                json!({"phone": "13912340041"}),
                4_000,
            ),
            order(
                "2026-03-02T10:00:00Z",
                json!({"phone": "13912340042"}),
                8_000,
            ),
        ],
    )
    .await;
    let b = later[1]["customer"].as_str().expect("b").to_owned();
    app.graphql(&operator, MERGE, json!({"s": a, "a": b, "r": "one person"}))
        .await;
    pause().await;
    let t2 = chrono::Utc::now().to_rfc3339();
    pause().await;
    app.graphql(
        &operator,
        UNDO,
        json!({"c": b, "r": "two people after all"}),
    )
    .await;

    // As known at t1: exactly what the live profile showed then.
    assert_eq!(as_of(&app, &operator, &a, &t1, Some(&t1)).await, then);
    assert_eq!(then["orders"], 2);
    // As now known to have been at t1: the late order counts; the merge was undone.
    let now_known = as_of(&app, &operator, &a, &t1, None).await;
    assert_eq!(now_known["orders"], 3);
    assert_eq!(now_known["revenue"], json!([{"minor": 7_000}]));
    // As known at t2, while the merge stood: B's order counted too.
    let at_t2 = as_of(&app, &operator, &a, &t2, Some(&t2)).await;
    assert_eq!(at_t2["orders"], 4);
    assert_eq!(at_t2["revenue"], json!([{"minor": 15_000}]));
    // Valid time: what had happened by 2026-03-04, as known at t1 and as known now.
    let march = "2026-03-04T00:00:00Z";
    assert_eq!(
        as_of(&app, &operator, &a, march, Some(&t1)).await["orders"],
        1
    );
    assert_eq!(as_of(&app, &operator, &a, march, None).await["orders"], 2);
    assert_eq!(
        as_of(&app, &operator, &a, march, Some(&t2)).await["orders"],
        3
    );
    // B as known at t2 was merged into A: its id reads A's profile then; B did not exist at t1.
    assert_eq!(
        as_of(&app, &operator, &b, &t2, Some(&t2)).await["orders"],
        4
    );
    assert!(as_of(&app, &operator, &b, &t1, Some(&t1)).await.is_null());
    assert_eq!(as_of(&app, &operator, &b, &t2, None).await["orders"], 1);
}

const QUEUE: &str = "{ duplicateSuggestions { id score customerIds evidence { signal weightBits detail } customers { id } } }";

async fn likely_duplicates_are_scored_explained_accepted_and_rejected(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = key(t, "operator").await;
    let traits = |phone: &str, name: &str, city: &str| {
        record(
            "traits_updated",
            "membership_desk",
            "2026-02-01T10:00:00Z",
            json!({"phone": phone}),
            json!({"traits": {"name": name, "birthday": "1990-04-01", "city": city}}),
        )
    };
    let answers = ingest(
        &app,
        t,
        &operator,
        vec![
            traits("13912340051", "Li Wei", "Shanghai"),
            traits("13912340052", "li wei ", "shanghai"),
            order(
                "2026-02-02T10:00:00Z",
                json!({"phone": "13912340053", "device_id": "TABLET-1"}),
                1_000,
            ),
            order(
                "2026-02-03T10:00:00Z",
                json!({"phone": "13912340054", "device_id": "TABLET-1"}),
                1_000,
            ),
            order(
                "2026-02-04T10:00:00Z",
                json!({"email": "zhang.min@example.cn"}),
                1_000,
            ),
            order(
                "2026-02-05T10:00:00Z",
                json!({"email": "zhang.mni@example.cn"}),
                1_000,
            ),
            order(
                "2026-02-06T10:00:00Z",
                json!({"phone": "13912340056", "email": "wang.fang@example.cn"}),
                1_000,
            ),
        ],
    )
    .await;
    let who: Vec<String> = answers
        .iter()
        .map(|a| a["customer"].as_str().expect("customer").to_owned())
        .collect();
    let pair = |i: usize, j: usize| {
        let mut p = vec![who[i].clone(), who[j].clone()];
        p.sort();
        json!(p)
    };

    let (code, _) = app
        .graphql_error(&key(t, "analyst").await, QUEUE, json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let scan = app
        .graphql(
            &operator,
            "mutation { scanDuplicates { touchpoints customers pairs new } }",
            json!({}),
        )
        .await["scanDuplicates"]
        .clone();
    assert_eq!(
        scan,
        json!({"touchpoints": 7, "customers": 7, "pairs": 3, "new": 3})
    );
    let queue = app.graphql(&operator, QUEUE, json!({})).await["duplicateSuggestions"].clone();
    let queue = queue.as_array().expect("queue").clone();
    assert_eq!(queue.len(), 3, "{queue:?}");
    // Highest first: name, birthday and city (odds 1:10 x 900,000), an email typo (1:10 x
    // 500), a shared tablet (1:10 x 20).
    assert_eq!(queue[0]["customerIds"], pair(0, 1));
    assert_eq!(queue[0]["evidence"][0]["signal"], "same_name_birthday_city");
    assert!((queue[0]["score"].as_f64().expect("score") - 90_000.0 / 90_001.0).abs() < 1e-9);
    assert_eq!(queue[1]["customerIds"], pair(4, 5));
    assert_eq!(queue[1]["evidence"][0]["signal"], "email_one_typo_apart");
    assert!((queue[1]["score"].as_f64().expect("score") - 50.0 / 51.0).abs() < 1e-9);
    assert_eq!(queue[2]["customerIds"], pair(2, 3));
    assert_eq!(
        queue[2]["evidence"][0]["signal"],
        "shared_auxiliary_identifier"
    );
    assert!((queue[2]["score"].as_f64().expect("score") - 2.0 / 3.0).abs() < 1e-9);
    let detail = queue[2]["evidence"][0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains("device_id") && !detail.contains("TABLET"),
        "{detail}"
    );

    // The tablet is a family's: rejected, never suggested again.
    let tablet = queue[2]["id"].as_i64().expect("id");
    app.graphql(
        &operator,
        "mutation($id: Int!) { rejectSuggestion(id: $id, reason: \"mother and son\") }",
        json!({"id": tablet}),
    )
    .await;
    let (code, _) = app
        .graphql_error(
            &operator,
            "mutation($id: Int!) { rejectSuggestion(id: $id, reason: \"again\") }",
            json!({"id": tablet}),
        )
        .await;
    assert_eq!(code, "ALREADY_DECIDED");
    // The email typo is one person: accepted, they are merged.
    let email = queue[1]["id"].as_i64().expect("id");
    let merged = app
        .graphql(
            &operator,
            "mutation($id: Int!) { acceptSuggestion(id: $id, reason: \"called her\") { applied customers { id orders } } }",
            json!({"id": email}),
        )
        .await["acceptSuggestion"]
        .clone();
    assert_eq!(merged["applied"], true);
    assert_eq!(merged["customers"][0]["orders"], 2);
    assert_eq!(
        holder(&app, &operator, "email", "zhang.mni@example.cn").await,
        who[4]
    );
    // The son of the family is merged into another customer: the rejected pair stays rejected
    // under the survivor's id.
    app.graphql(
        &operator,
        MERGE,
        json!({"s": who[6], "a": who[3], "r": "same person"}),
    )
    .await;

    let rescan = app
        .graphql(
            &operator,
            "mutation { scanDuplicates { pairs new withdrawn } }",
            json!({}),
        )
        .await["scanDuplicates"]
        .clone();
    assert_eq!(rescan["new"], 0, "{rescan}");
    assert_eq!(rescan["withdrawn"], 0, "{rescan}");
    let queue = app.graphql(&operator, QUEUE, json!({})).await["duplicateSuggestions"].clone();
    assert_eq!(
        queue.as_array().map(|q| q
            .iter()
            .map(|s| s["customerIds"].clone())
            .collect::<Vec<_>>()),
        Some(vec![pair(0, 1)]),
        "only the name pair is still open"
    );
}

async fn a_rules_change_is_tried_on_the_log_then_applied_as_corrections(t: &TestStore) {
    use patron::correction::dry_run::{apply, dry_run};
    use patron::correction::{Corrector, Request};
    use patron::ingest::Ingestor;
    use patron::projection::ProfileProjection;
    use patron::segmentation::refresh;
    use patron_domain::identifier::IdentifierKind;
    use patron_domain::identity::{IdentityRules, RulesFile, Strength};

    let ing = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let projection = ProfileProjection::new(t.store.clone(), 100).with_segments("CNY");
    let corrector = Corrector::new(ing.clone(), projection.clone());
    let request = Request {
        actor: "op".into(),
        reason: "test".into(),
        expected_version: None,
    };
    let records: Vec<String> = [
        // X and Y share a tablet: two customers while devices are auxiliary.
        order(
            "2026-07-01T10:00:00Z",
            json!({"phone": "13912340061", "device_id": "TAB-X"}),
            1_000,
        ),
        order(
            "2026-07-02T10:00:00Z",
            json!({"phone": "13912340062", "device_id": "TAB-X"}),
            1_000,
        ),
        // W: two phones joined by one email, one customer while emails are core.
        order(
            "2026-07-03T10:00:00Z",
            json!({"phone": "13912340063", "email": "w@example.cn"}),
            1_000,
        ),
        order(
            "2026-07-04T10:00:00Z",
            json!({"phone": "13912340064", "email": "w@example.cn"}),
            1_000,
        ),
        // U and V share a tablet too, but an operator separated them.
        order(
            "2026-07-05T10:00:00Z",
            json!({"phone": "13912340065", "device_id": "TAB-U"}),
            1_000,
        ),
        order(
            "2026-07-06T10:00:00Z",
            json!({"phone": "13912340066", "device_id": "TAB-U"}),
            1_000,
        ),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    ing.ingest_json(&records).await.expect("ingest");
    projection.catch_up().await.expect("catch up");
    let holder = |phone: &'static str| {
        let ing = ing.clone();
        async move {
            ing.customer_by_identifier("phone", phone)
                .await
                .expect("look up")
                .expect("held")
        }
    };
    let (x, y, w) = (
        holder("13912340061").await,
        holder("13912340062").await,
        holder("13912340063").await,
    );
    let (u, v) = (holder("13912340065").await, holder("13912340066").await);
    assert_eq!(holder("13912340064").await, w);
    corrector.merge(u, v, &request).await.expect("merge");
    corrector.undo_merge(v, &request).await.expect("undo");
    t.store
        .save_segment_for("repeat", "orders >= 2", None, chrono::Utc::now())
        .await
        .expect("segment");
    refresh(&t.store, "CNY", chrono::Utc::now())
        .await
        .expect("refresh");
    assert_eq!(
        t.store.segment_members("repeat").await.expect("members"),
        vec![w]
    );

    // The new rules: devices merge, emails do not.
    let mut file = RulesFile {
        version: 2,
        ..RulesFile::default()
    };
    let kind = |k: &str| IdentifierKind::new(k).expect("kind");
    file.kinds
        .get_mut(&kind("device_id"))
        .expect("device rule")
        .strength = Strength::Core;
    file.kinds
        .get_mut(&kind("email"))
        .expect("email rule")
        .strength = Strength::Auxiliary;
    let rules = IdentityRules::from_file(file).expect("rules");
    let head = t.store.head().await.expect("head");

    let change = dry_run(&ing, &rules, "CNY", |_, _| {})
        .await
        .expect("dry run");
    assert_eq!(
        t.store.head().await.expect("head"),
        head,
        "a dry run writes nothing"
    );
    assert_eq!(change.rules_version, 2);
    assert_eq!(change.touchpoints, 6);
    assert_eq!((change.customers_now, change.customers_after), (5, 4));
    assert_eq!((change.merges, change.splits, change.held_back), (1, 1, 1));
    let mut merged = change.merge_examples[0].customers.clone();
    merged.sort();
    let mut expected = vec![x, y];
    expected.sort();
    assert_eq!(merged, expected);
    assert_eq!(change.merge_examples[0].through, vec!["device_id"]);
    assert_eq!(change.split_examples[0].customer, w);
    assert_eq!(change.split_examples[0].touchpoints_leaving, 1);
    // X+Y enter `repeat` (two orders), W leaves it (one order left).
    assert_eq!(change.memberships_moving, 2);
    assert_eq!(
        (change.segments[0].entries, change.segments[0].exits),
        (1, 1)
    );

    let applied = apply(&corrector, &ing, &change, &request)
        .await
        .expect("apply");
    assert_eq!((applied.splits, applied.merges), (1, 1));
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert_eq!(
        holder("13912340062").await,
        x,
        "Y merged into X, seen first"
    );
    assert_ne!(holder("13912340064").await, w, "W's second phone split off");
    assert_ne!(
        holder("13912340066").await,
        u,
        "the operator's separation stands"
    );
    // Applied as corrections: the same rules now propose nothing.
    let again = dry_run(&ing, &rules, "CNY", |_, _| {})
        .await
        .expect("dry run");
    assert_eq!((again.merges, again.splits), (0, 0), "{again:?}");
    // And each correction can be undone.
    corrector.undo_merge(y, &request).await.expect("undo");
    assert_eq!(holder("13912340062").await, y);
}

async fn corrections_racing_ingestion_lose_nothing(t: &TestStore) {
    use patron::correction::{Corrector, Request};
    use patron::ingest::Ingestor;
    use patron::projection::ProfileProjection;
    use patron_domain::identity::IdentityRules;

    let ing = Ingestor::new(
        t.store.clone(),
        IdentityRules::default(),
        b"test identity key",
        crate::helpers::master_key(),
    );
    let projection = ProfileProjection::new(t.store.clone(), 50);
    let corrector = Corrector::new(ing.clone(), projection.clone());
    let request = Request {
        actor: "op".into(),
        reason: "race".into(),
        expected_version: None,
    };
    let touch = |phone: &str, day: u32| {
        order(
            &format!("2026-08-{day:02}T10:00:00Z"),
            json!({"phone": phone}),
            100,
        )
        .to_string()
    };
    ing.ingest_json(&[touch("13912340071", 1), touch("13912340072", 1)])
        .await
        .expect("ingest");
    let a = ing
        .customer_by_identifier("phone", "13912340071")
        .await
        .expect("look up")
        .expect("a");
    let b = ing
        .customer_by_identifier("phone", "13912340072")
        .await
        .expect("look up")
        .expect("b");
    // Touchpoints of both keep arriving while an operator merges and undoes, again and again.
    let feeding = async {
        for day in 2..=21 {
            ing.ingest_json(&[touch("13912340071", day), touch("13912340072", day)])
                .await
                .expect("ingest");
        }
    };
    let correcting = async {
        for _ in 0..6 {
            corrector.merge(a, b, &request).await.expect("merge");
            corrector.undo_merge(b, &request).await.expect("undo");
        }
    };
    tokio::join!(feeding, correcting);
    projection.catch_up().await.expect("catch up");
    let verified = projection.verify(|_, _| {}).await.expect("verify");
    assert!(verified.is_clean(), "{verified:?}");
    let profiles: Vec<(patron_domain::customer::CustomerId, Value)> = t
        .store
        .all_profiles(patron::store::projection::ProfileTable::Live)
        .await
        .expect("rows")
        .into_iter()
        .filter(|r| r.merged_into.is_none())
        .map(|r| (r.customer, serde_json::from_str(&r.state).expect("state")))
        .collect();
    let total: u64 = profiles
        .iter()
        .map(|(_, p)| p["touchpoints"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 42, "every touchpoint counted once");
    // Undone last, the two are apart, and each phone's touchpoints are its customer's.
    let count = |c| {
        profiles
            .iter()
            .find(|(id, _)| *id == c)
            .map_or(0, |(_, p)| p["touchpoints"].as_u64().unwrap_or(0))
    };
    assert_eq!((count(a), count(b)), (21, 21));
}

/// The identity index is the fold of the log even after the customers that received
/// identifiers by hand are erased: a value linked to a customer erased later, and values split
/// off into a customer erased later, are held by nobody, in the store and in the fold.
async fn the_identity_index_folds_from_the_log_after_erasing_receivers(t: &TestStore) {
    use patron::correction::index;
    use patron::privacy::erase;

    let (ing, _, corrector, request) = corrections_over(
        t,
        &[
            order(
                "2026-06-01T10:00:00Z",
                json!({"phone": "13912340041"}),
                1_000,
            ),
            order(
                "2026-06-02T10:00:00Z",
                json!({"phone": "13912340042", "email": "giver@example.com"}),
                2_000,
            ),
            order(
                "2026-06-03T10:00:00Z",
                json!({"phone": "13912340043"}),
                3_000,
            ),
        ],
    )
    .await;
    let who = |phone: &'static str| {
        let ing = ing.clone();
        async move {
            ing.customer_by_identifier("phone", phone)
                .await
                .expect("look up")
                .expect("held")
        }
    };
    let (receiver, giver, third) = (
        who("13912340041").await,
        who("13912340042").await,
        who("13912340043").await,
    );
    // The giver's email goes to the receiver by hand; the third customer's phone is split off
    // into a customer of its own.
    corrector
        .link(receiver, "email", "giver@example.com", &request)
        .await
        .expect("link");
    let split = corrector
        .split(third, &[("phone".into(), "13912340043".into())], &request)
        .await
        .expect("split");
    let part = split.customers[1];
    let clean = |report: index::IndexReport| {
        assert!(report.is_clean(), "{report:?}");
        report
    };
    clean(index::verify(&ing, 2, |_, _| {}).await.expect("verify"));
    erase(&ing, receiver, "dpo", "PIPL request")
        .await
        .expect("erase");
    erase(&ing, part, "dpo", "PIPL request")
        .await
        .expect("erase");
    for (kind, value) in [("email", "giver@example.com"), ("phone", "13912340043")] {
        assert_eq!(
            ing.customer_by_identifier(kind, value)
                .await
                .expect("look up"),
            None,
            "{kind}"
        );
    }
    let report = clean(index::verify(&ing, 2, |_, _| {}).await.expect("verify"));
    assert!(
        report.unreadable > 0,
        "the receiver's link no longer opens: {report:?}"
    );
    // A rebuild gives nobody the erased people's identifiers back.
    index::rebuild(&ing, 2, |_, _| {}).await.expect("rebuild");
    assert_eq!(
        ing.customer_by_identifier("email", "giver@example.com")
            .await
            .expect("look up"),
        None
    );
    assert_eq!(who("13912340042").await, giver);
    clean(index::verify(&ing, 2, |_, _| {}).await.expect("verify"));
}

crate::on_both_stores!(
    the_identity_index_folds_from_the_log_after_erasing_receivers,
    corrections_racing_ingestion_lose_nothing,
    a_rules_change_is_tried_on_the_log_then_applied_as_corrections,
    likely_duplicates_are_scored_explained_accepted_and_rejected,
    a_profile_is_read_as_it_was_and_as_it_was_known,
    verify_finds_a_live_profile_that_is_not_what_the_log_folds_to,
    an_operator_finds_explains_and_undoes_a_wrong_merge,
    a_split_moves_identifiers_and_their_touchpoints_to_a_new_customer,
    identifiers_are_linked_unlinked_and_blocked_by_hand,
);
