//! Personal data at rest: sealed in the log, erased for good, expired in the quarantine.

use patron::correction::{Corrector, Request};
use patron::ingest::{Ingestor, RecordOutcome};
use patron::privacy::{erase, expire_quarantine, Opener};
use patron::store::EventStore;
use patron_domain::customer::CustomerId;
use patron_domain::identity::IdentityRules;
use patron_domain::privacy::MasterKey;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

use crate::helpers::{master_key, TestStore};

fn ingestor(store: EventStore, master: MasterKey) -> Ingestor {
    Ingestor::new(
        store,
        IdentityRules::default(),
        b"test identity key",
        master,
    )
}

fn record(event_type: &str, channel: &str, identifiers: Value, extra: Value) -> String {
    let mut r = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "channel": channel,
        "source": format!("{channel}-system"),
        "occurred_at": "2026-03-08T09:30:15+08:00",
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

/// Li Lei's personal data as it may appear anywhere: normalized, as exported, and in traits.
const LI_LEI: &[&str] = &[
    "+8613912340001",
    "13912340001",
    "139 1234 0001",
    "139-1234-0001",
    "li.lei@example.cn",
    "Li Lei",
    "MC-7731",
    "1990-04-01",
];
const HAN_MEIMEI: &[&str] = &["+8613800001111", "Han Meimei"];

/// Every place in the database (every row of every table, as text) holding one of `needles`.
async fn scan_tables(t: &TestStore, needles: &[&str]) -> Vec<String> {
    let mut rows_as_text: Vec<(String, String)> = Vec::new();
    if t.sqlite_file().is_some() {
        let mut conn = sqlx::SqliteConnection::connect(t.url()).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for table in tables {
            for row in sqlx::query(&format!("SELECT * FROM \"{table}\""))
                .fetch_all(&mut conn)
                .await
                .unwrap()
            {
                for i in 0..row.len() {
                    // Any value as its bytes (SQLite gives text of numbers too); NULL is empty.
                    let bytes: Vec<u8> = row.try_get_unchecked(i).unwrap_or_default();
                    rows_as_text.push((table.clone(), String::from_utf8_lossy(&bytes).into()));
                }
            }
        }
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(t.url()).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for table in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT CAST(t AS text) FROM \"{table}\" t"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            rows_as_text.extend(rows.into_iter().map(|r| (table.clone(), r)));
        }
        conn.close().await.unwrap();
    }
    let mut hits = Vec::new();
    for (table, text) in &rows_as_text {
        for needle in needles {
            if text.contains(needle) {
                hits.push(format!("{needle} in {table}"));
            }
        }
    }
    hits
}

/// The needles found in the SQLite file and its WAL, byte for byte.
fn scan_sqlite_bytes(t: &TestStore, needles: &[&str]) -> Vec<String> {
    let Some(file) = t.sqlite_file() else {
        return Vec::new();
    };
    let mut hits = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", file.display());
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(format!("{needle} in {path}"));
            }
        }
    }
    hits
}

/// Li Lei (phone and member card at the POS, email and name in the app, then one web visit
/// that ties them: a merge), one refused record of his, and Han Meimei as a bystander.
async fn load_people(ing: &Ingestor) -> (CustomerId, CustomerId) {
    let report = ing
        .ingest_json(&[
            record(
                "order_placed",
                "store",
                json!({"phone": "139 1234 0001", "member_card": "MC-7731"}),
                json!({"order_id": "PO-1", "currency": "CNY",
                       "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 9900}]}),
            ),
            record(
                "traits_updated",
                "app",
                json!({"email": "li.lei@example.cn"}),
                json!({"traits": {"name": "Li Lei", "birthday": "1990-04-01", "city": "Shanghai"}}),
            ),
            record(
                "custom",
                "web",
                json!({"phone": "13912340001", "email": "li.lei@example.cn"}),
                json!({"name": "newsletter"}),
            ),
            // Refused (no channel), kept in the quarantine as sent.
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
                   "source": "wifi", "occurred_at": "2026-03-08T09:30:15+08:00",
                   "identifiers": {"phone": "139-1234-0001"}, "store_id": "SH-1"})
            .to_string(),
            record(
                "traits_updated",
                "app",
                json!({"phone": "13800001111"}),
                json!({"traits": {"name": "Han Meimei"}}),
            ),
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
                   "source": "wifi", "occurred_at": "2026-03-08T09:30:15+08:00",
                   "identifiers": {"phone": "13800001111"}, "store_id": "SH-1"})
            .to_string(),
        ])
        .await
        .unwrap();
    assert_eq!((report.accepted, report.rejected, report.merges), (4, 2, 1));
    (
        customer_of(&report.records[2]),
        customer_of(&report.records[4]),
    )
}

async fn personal_data_is_never_stored_in_clear_in_the_log(t: &TestStore) {
    let ing = ingestor(t.store.clone(), master_key());
    let (li, han) = load_people(&ing).await;
    // Only the quarantine holds records as sent; nothing else holds a value in clear.
    let hits: Vec<String> = scan_tables(t, &[LI_LEI, HAN_MEIMEI].concat())
        .await
        .into_iter()
        .filter(|hit| !hit.ends_with(" in quarantine"))
        .collect();
    assert!(hits.is_empty(), "personal data in clear: {hits:?}");
    // With the master key, the events read in full.
    let opener = Opener::new(t.store.clone(), master_key());
    let history = opener.history(li).await.unwrap();
    let text: String = history.iter().map(|e| e.payload.clone()).collect();
    for value in ["+8613912340001", "li.lei@example.cn", "Li Lei", "MC-7731"] {
        assert!(text.contains(value), "{value} reads back: {text}");
    }
    assert!(!opener.history(han).await.unwrap().is_empty());
    // With another master key, nothing opens.
    let wrong = MasterKey::parse(&MasterKey::generate()).unwrap();
    let err = Opener::new(t.store.clone(), wrong.clone())
        .history(li)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "KEY_MISMATCH");
    // Nor can ingestion go on under another master key for a known customer.
    let err = ingestor(t.store.clone(), wrong)
        .ingest_json(&[record(
            "custom",
            "web",
            json!({"phone": "13912340001"}),
            json!({"name": "visit"}),
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}

async fn an_erased_customer_is_gone_from_every_table_and_the_file(t: &TestStore) {
    let ing = ingestor(t.store.clone(), master_key());
    let (li, han) = load_people(&ing).await;
    let before = t.store.stats().await.unwrap().events;
    assert!(
        !scan_tables(t, LI_LEI).await.is_empty(),
        "the quarantine holds his record"
    );

    // A profile rebuild swaps tables with overwriting of freed pages switched off for the
    // profiles it drops; erasure must still overwrite what it deletes afterwards.
    patron::projection::ProfileProjection::new(t.store.clone(), 100)
        .rebuild(|_, _| {})
        .await
        .unwrap();

    // Erasing by the id of the customer merged away erases the survivor too.
    let opener = Opener::new(t.store.clone(), master_key());
    let absorbed = opener
        .history(li)
        .await
        .unwrap()
        .iter()
        .find(|e| e.event_type == "customer_merged")
        .map(|e| serde_json::from_str::<Value>(&e.payload).unwrap()["absorbed"].clone())
        .unwrap();
    let absorbed: CustomerId = serde_json::from_value(absorbed).unwrap();
    let erasure = erase(&ing, absorbed, "dpo@shop", "ticket PIPL-42")
        .await
        .unwrap();
    assert_eq!(erasure.customer, li);
    assert_eq!(erasure.keys_destroyed.len(), 2);
    assert_eq!(erasure.identifiers_removed, 3, "phone, member card, email");
    assert_eq!(erasure.quarantined_removed, 1);
    assert_eq!(erasure.touchpoints_shredded, 0);
    assert!(erasure.scrubbed);

    // Nowhere in any table, nor in the database file's bytes.
    assert_eq!(scan_tables(t, LI_LEI).await, Vec::<String>::new());
    assert_eq!(scan_sqlite_bytes(t, LI_LEI), Vec::<String>::new());

    // The events stay and replay; his read as erased, with what happened still readable.
    assert_eq!(t.store.stats().await.unwrap().events, before + 1);
    let history = opener.history(li).await.unwrap();
    let touchpoints: Vec<Value> = history
        .iter()
        .filter(|e| !e.event_type.starts_with("customer_"))
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    assert_eq!(touchpoints.len(), 3);
    for payload in &touchpoints {
        assert_eq!(payload["erased"], true, "{payload}");
        assert!(payload.get("identifiers").is_none());
    }
    assert_eq!(touchpoints[0]["action"]["order_id"], "PO-1");
    let last = history.last().unwrap();
    assert_eq!(last.event_type, "customer_erased");
    assert_eq!(last.metadata.actor.as_deref(), Some("dpo@shop"));
    assert_eq!(last.metadata.reason.as_deref(), Some("ticket PIPL-42"));

    // The bystander is untouched.
    let text: String = opener
        .history(han)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    assert!(text.contains("Han Meimei"));
    assert_eq!(t.store.quarantined(0, 10).await.unwrap().len(), 1);

    // The same phone afterwards is somebody new.
    assert_eq!(
        ing.customer_by_identifier("phone", "13912340001")
            .await
            .unwrap(),
        None
    );
    let again = ing
        .ingest_json(&[record(
            "store_visited",
            "store",
            json!({"phone": "139 1234 0001"}),
            json!({"store_id": "SH-2"}),
        )])
        .await
        .unwrap();
    let newcomer = customer_of(&again.records[0]);
    assert_ne!(newcomer, li);
    // The identity index is still the fold of the log: the erased customer's events no
    // longer open, and the erasure took back what they gave.
    let report = patron::correction::index::verify(&ing, 3, |_, _| {})
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.identifiers > 0, "{report:?}");
    assert!(matches!(
        erase(&ing, CustomerId::new(), "dpo", "no such person")
            .await
            .unwrap_err()
            .code(),
        "UNKNOWN_CUSTOMER"
    ));
}

async fn expired_quarantined_records_keep_their_reason_but_not_their_text(t: &TestStore) {
    let ing = ingestor(t.store.clone(), master_key());
    load_people(&ing).await;
    // Records received now are not older than 0 days... until a moment has passed.
    assert_eq!(expire_quarantine(&t.store, 1).await.unwrap(), 0);
    assert_eq!(
        t.store
            .expire_quarantine(chrono::Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        2
    );
    let records = t.store.quarantined(0, 10).await.unwrap();
    assert_eq!(records.len(), 2, "the rows stay for data-quality counts");
    for r in &records {
        assert_eq!((r.record.as_str(), r.reason.as_str()), ("", ""));
        assert!(r.expired_at.is_some());
        assert_eq!(r.code, "missing_field");
        assert_eq!(r.field, "channel");
    }
    assert_eq!(
        scan_tables(t, &[LI_LEI, HAN_MEIMEI].concat()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        scan_sqlite_bytes(t, &["139-1234-0001"]),
        Vec::<String>::new()
    );
}

fn corrector(ing: &Ingestor) -> Corrector {
    Corrector::new(
        ing.clone(),
        patron::projection::ProfileProjection::new(ing.store().clone(), 100),
    )
}

fn request() -> Request {
    Request {
        actor: "op@shop".into(),
        reason: "the customer called".into(),
        expected_version: None,
    }
}

/// A refused record (no channel) naming `phone` as sent.
fn refused(phone: &str) -> String {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
           "source": "wifi", "occurred_at": "2026-03-08T09:30:15+08:00",
           "identifiers": {"phone": phone}, "store_id": "SH-1"})
    .to_string()
}

/// A phone linked to a customer by hand is theirs: quarantined records holding it go with
/// them, though no touchpoint of theirs ever carried it.
async fn erasure_removes_quarantined_records_of_a_phone_linked_by_hand(t: &TestStore) {
    let ing = ingestor(t.store.clone(), master_key());
    let report = ing
        .ingest_json(&[
            record(
                "traits_updated",
                "app",
                json!({"email": "wang.wu@example.cn"}),
                json!({"traits": {"name": "Wang Wu"}}),
            ),
            refused("139 1234 0239"),
            refused("+86 139-1234-0239"),
            refused("13800002222"),
        ])
        .await
        .unwrap();
    assert_eq!((report.accepted, report.rejected), (1, 3));
    let wang = customer_of(&report.records[0]);
    corrector(&ing)
        .link(wang, "phone", "13912340239", &request())
        .await
        .unwrap();
    assert_eq!(
        ing.customer_by_identifier("phone", "139 1234 0239")
            .await
            .unwrap(),
        Some(wang)
    );
    let phone = ["13912340239", "139 1234 0239", "139-1234-0239"];
    assert_eq!(
        scan_tables(t, &phone).await.len(),
        2,
        "both refused records hold it"
    );

    let erasure = erase(&ing, wang, "dpo@shop", "ticket PIPL-43")
        .await
        .unwrap();
    assert_eq!(erasure.quarantined_removed, 2);
    assert!(erasure.scrubbed);
    assert_eq!(scan_tables(t, &phone).await, Vec::<String>::new());
    assert_eq!(scan_sqlite_bytes(t, &phone), Vec::<String>::new());
    // The bystander's refused record stays.
    let left = t.store.quarantined(0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].record.contains("13800002222"), "{left:?}");
}

/// A touchpoint split off to another customer belongs to it: erasing that customer makes the
/// touchpoint unreadable though it lies on the first customer's stream, whose other events
/// still open; the log still replays to the same profiles.
async fn erasure_shreds_touchpoints_a_split_moved_to_the_customer(t: &TestStore) {
    let ing = ingestor(t.store.clone(), master_key());
    let report = ing
        .ingest_json(&[
            record(
                "custom",
                "web",
                json!({"phone": "13912340071", "email": "zhao.liu@example.cn"}),
                json!({"name": "newsletter"}),
            ),
            record(
                "custom",
                "web",
                json!({"phone": "13912340072", "email": "zhao.liu@example.cn"}),
                json!({"name": "newsletter"}),
            ),
            // The second phone's own visit: the split gives it to the new customer.
            record(
                "traits_updated",
                "app",
                json!({"phone": "13912340072"}),
                json!({"traits": {"name": "Qian Qi", "birthday": "1992-07-07"}}),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(report.accepted, 3);
    let zhao = customer_of(&report.records[0]);
    assert_eq!(customer_of(&report.records[2]), zhao);
    let moved = match &report.records[2] {
        RecordOutcome::Accepted { position, .. } => *position,
        other => panic!("{other:?}"),
    };
    corrector(&ing)
        .split(
            zhao,
            &[("phone".to_owned(), "13912340072".to_owned())],
            &request(),
        )
        .await
        .unwrap();
    let qian = ing
        .customer_by_identifier("phone", "13912340072")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(qian, zhao);
    let opener = Opener::new(t.store.clone(), master_key());
    let before: String = opener
        .history(qian)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    assert!(
        before.contains("Qian Qi"),
        "the moved touchpoint is hers: {before}"
    );

    let erasure = erase(&ing, qian, "dpo@shop", "ticket PIPL-44")
        .await
        .unwrap();
    assert_eq!(erasure.keys_destroyed, vec![qian]);
    assert_eq!(erasure.touchpoints_shredded, 1);

    // Her timeline shows the moved touchpoint erased, its clear part still there.
    let history = opener.history(qian).await.unwrap();
    let touchpoint = history
        .iter()
        .find(|e| e.position == moved)
        .expect("the moved touchpoint is still hers");
    let payload: Value = serde_json::from_str(&touchpoint.payload).unwrap();
    assert_eq!(payload["erased"], true, "{payload}");
    assert!(payload.get("identifiers").is_none(), "{payload}");
    assert_eq!(payload["channel"], "app", "{payload}");
    let text: String = history.iter().map(|e| e.payload.clone()).collect();
    for value in ["Qian Qi", "1992-07-07", "+8613912340072"] {
        assert!(!text.contains(value), "{value} in {text}");
    }
    // Not even the key of the stream that holds it opens it now.
    let raw = t.store.events_at(&[moved]).await.unwrap();
    assert!(!raw[0].payload.contains("\"sealed\""), "{}", raw[0].payload);
    let opened = opener.open(raw).await.unwrap();
    assert!(
        !opened[0].payload.contains("Qian Qi"),
        "{}",
        opened[0].payload
    );
    // His own events still open.
    let his: String = opener
        .history(zhao)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    for value in ["+8613912340071", "zhao.liu@example.cn"] {
        assert!(his.contains(value), "{value} in {his}");
    }
    assert!(!his.contains("Qian Qi"), "{his}");
    // The log still replays to the live profiles.
    let verification = patron::projection::ProfileProjection::new(t.store.clone(), 100)
        .verify(|_, _| {})
        .await
        .unwrap();
    assert!(verification.is_clean(), "{verification:?}");
}

crate::on_both_stores!(
    personal_data_is_never_stored_in_clear_in_the_log,
    an_erased_customer_is_gone_from_every_table_and_the_file,
    expired_quarantined_records_keep_their_reason_but_not_their_text,
    erasure_removes_quarantined_records_of_a_phone_linked_by_hand,
    erasure_shreds_touchpoints_a_split_moved_to_the_customer,
);
