//! Fuzzing of every parser a client reaches: generated and mutated inputs thrown at the segment
//! rule language, the `/v1/events` body, the Segment messages and the rows of CSV and NDJSON
//! imports, checking that each answers (a value or an error naming the problem) and never
//! panics or loops.
//!
//! Each target runs a few hundred cases in an ordinary test run; `PATRON_FUZZ_SECONDS=600`
//! keeps each one going for that long, which is how the runs recorded in `docs/security.md` were
//! made:
//!
//! ```sh
//! PATRON_FUZZ_SECONDS=600 cargo test --release -p patron --lib fuzz -- --nocapture --test-threads 2
//! ```

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per round; a timed run repeats rounds with fresh seeds until its time is up.
const ROUND: u32 = 256;

/// Runs `test` over inputs drawn from `strategy`: one round, or rounds until
/// `PATRON_FUZZ_SECONDS` have passed. A failing case is shrunk and reported as a panic with the
/// smallest input that fails.
pub(crate) fn run<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = std::env::var("PATRON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut cases = 0u64;
    let mut round = 0u64;
    loop {
        let seed = seed(name, round, budget.is_some());
        let config = Config {
            cases: ROUND,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("fuzz target {name} failed (round {round}, seed {seed:?}): {failure}");
        }
        cases += u64::from(ROUND);
        round += 1;
        if budget.is_none_or(|b| started.elapsed() >= b) {
            break;
        }
    }
    eprintln!(
        "fuzz target {name}: {cases} cases in {:.1} s, no failure",
        started.elapsed().as_secs_f64()
    );
}

/// A round's seed: fixed in ordinary runs (so a failure repeats), fresh in timed runs.
fn seed(name: &str, round: u64, timed: bool) -> [u8; 32] {
    use sha2::Digest;
    let fresh = if timed {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    } else {
        0
    };
    sha2::Sha256::digest(format!("{name}/{round}/{fresh}").as_bytes()).into()
}

/// Text a client might send: pieces of the expected shape, separators, quotes, digits, huge
/// numbers, non-ASCII (Chinese, combining marks, emoji) and control characters, glued together.
pub(crate) fn text_from(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => proptest::sample::select(pieces).prop_map(str::to_owned),
        2 => proptest::sample::select(JUNK).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "[0-9]{1,25}",
    ];
    let glue = proptest::sample::select(&[" ", "", "  ", "\t", "\n"][..]);
    proptest::collection::vec((piece, glue), 0..40).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(p, g)| [p, g.to_owned()])
            .collect()
    })
}

/// Pieces that break parsers.
const JUNK: &[&str] = &[
    "\"",
    "'",
    "\\",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "-",
    ".",
    "e",
    "E",
    "+",
    "0x",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "1e309",
    "NaN",
    "null",
    "上海",
    "張偉",
    "é",
    "\u{301}",
    "🎉",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}",
    "\r\n",
];

/// `text` with one to four slips: a character inserted, dropped or replaced somewhere.
pub(crate) fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    let slip = (any::<prop::sample::Index>(), 0u8..3, any::<char>());
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(slip, 1..5),
    )
        .prop_map(|(seed, slips)| {
            let mut chars: Vec<char> = seed.chars().collect();
            for (at, what, c) in slips {
                let i = at.index(chars.len() + 1);
                match what {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ if i < chars.len() => chars[i] = c,
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect()
        })
}

mod rules {
    //! The segment rule language, as `previewSegment`, `createSegment` and `patron segment`
    //! read it.

    use std::collections::BTreeSet;

    use chrono::{TimeZone, Utc};
    use patron_projections::profile::Profile;
    use patron_projections::segment::{Rule, Subject};
    use proptest::prelude::*;

    const PIECES: &[&str] = &[
        "tier",
        "stage",
        "rfm_segment",
        "r",
        "f",
        "m",
        "orders",
        "touchpoints",
        "revenue",
        "average_order_value",
        "days_since_last_order",
        "days_since_last_seen",
        "city",
        "province",
        "gender",
        "favourite_category",
        "preferred_channel",
        "promotion_sensitivity",
        "channel.store",
        "channel.web",
        "consent.marketing_sms",
        "count",
        "spend",
        "tag",
        "in",
        "last",
        "days",
        "and",
        "or",
        "not",
        "(",
        ")",
        ",",
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "\"high_value\"",
        "\"上海\"",
        "\"\"",
        "order_placed",
        "screen_viewed",
        "channel",
        "\"web\"",
        "true",
        "false",
        "3",
        "-1",
        "0.5",
        "36500",
        "36501",
    ];

    const SEEDS: &[&str] = &[
        "tier = \"high_value\" and stage in (\"declining\", \"churned\")",
        "count(order_placed, channel = \"store\") in last 365 days >= 1 and count(order_placed, channel = \"web\") in last 365 days = 0",
        "tag \"high_frequency\" or (orders >= 3 and not consent.marketing_sms = false)",
        "spend in last 90 days >= 50000",
        "city = \"上海\" and r >= 4",
    ];

    fn rule_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => super::text_from(PIECES),
            3 => super::mutated(SEEDS),
            1 => any::<String>(),
            1 => (1usize..200, proptest::sample::select(&["(", "not ", "((", ")"][..]))
                .prop_map(|(n, p)| format!("{}orders > 1", p.repeat(n))),
        ]
    }

    #[test]
    fn the_rule_language_answers_every_text() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).single();
        let tags: BTreeSet<String> = ["vip".to_owned()].into();
        let profile = Profile::default();
        super::run("rules", rule_text(), |text| {
            let Some(as_of) = now else {
                return Ok(());
            };
            match Rule::parse(&text) {
                Ok(rule) => {
                    let subject = Subject {
                        profile: &profile,
                        stage: Some("growth"),
                        tier: None,
                        rfm_segment: None,
                        rfm: Some((1, 2, 3)),
                        tags: &tags,
                        currency: "CNY",
                        as_of,
                    };
                    let _ = rule.matches(&subject);
                    prop_assert_eq!(Rule::parse(rule.text()).ok(), Some(rule));
                }
                Err(e) => {
                    prop_assert!(e.at <= text.len(), "offset past the end: {:?}", e);
                    prop_assert!(text.is_char_boundary(e.at), "offset inside a character");
                    prop_assert!(!e.message.is_empty());
                    let shown = e.to_string();
                    prop_assert!(shown.contains('^'));
                }
            }
            Ok(())
        });
    }
}

mod import {
    //! Rows of CSV and NDJSON files, as `patron import` reads them through a mapping.

    use chrono::Utc;
    use patron_domain::identity::IdentityRules;
    use patron_domain::touchpoint::TimeBounds;
    use proptest::prelude::*;

    use crate::import::mapping::{Mapping, Row};

    const CELLS: &[&str] = &[
        "R-0001",
        "2026-03-08 09:30:15",
        "2026-02-30 25:61:00",
        "0001-01-01 00:00:00",
        "SH-0042",
        "139 1234 0001",
        "+86 139-1234-0002",
        "13800138000",
        "MC-0001",
        "SKU-10234",
        "skincare",
        "2",
        "0",
        "-1",
        "4294967296",
        "12900",
        "4611686018427387909",
        "1000",
        "",
        "\"a,b\"",
        "\"\"\"\"",
        "上海",
        "張偉",
    ];

    /// A valid row of the example POS export.
    const ROW: [&str; 10] = [
        "R-0001",
        "2026-03-08 09:30:15",
        "SH-0042",
        "139 1234 0001",
        "MC-0001",
        "SKU-10234",
        "skincare",
        "2",
        "12900",
        "1000",
    ];

    /// Rows of the example export, most of them valid but for a few cells.
    fn csv_text() -> impl Strategy<Value = String> {
        let cell = prop_oneof![
            4 => proptest::sample::select(CELLS).prop_map(str::to_owned),
            1 => super::text_from(CELLS),
            1 => any::<String>(),
        ];
        let row = prop_oneof![
            5 => proptest::collection::vec((0usize..ROW.len(), cell), 0..4).prop_map(|changes| {
                let mut row = ROW.map(str::to_owned);
                for (at, cell) in changes {
                    row[at] = cell;
                }
                row.join(",")
            }),
            1 => super::text_from(CELLS),
        ];
        proptest::collection::vec(row, 0..8).prop_map(|rows| {
            let mut text = String::from(
                "receipt_no,sold_at,store,mobile,card_no,sku,category,qty,price_fen,discount_fen\n",
            );
            for row in rows {
                text.push_str(&row);
                text.push('\n');
            }
            text
        })
    }

    fn json_line() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            proptest::sample::select(CELLS).prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(4, 24, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(serde_json::Value::from)
        });
        let keys = proptest::sample::select(
            &[
                "id", "at", "phone", "email", "type", "amount", "member", "x",
            ][..],
        );
        prop_oneof![
            4 => proptest::collection::btree_map(keys, value, 0..8)
                .prop_map(|m| serde_json::Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                ).to_string()),
            1 => super::text_from(CELLS),
        ]
    }

    const NDJSON_MAPPING: &str = r#"
        format = "ndjson"
        type_column = "type"
        channel = "membership_desk"
        source = "crm"
        event_id = "id"
        occurred_at = "at"
        [identifiers]
        phone = "phone"
        email = "email"
        member_id = "member"
        [fields]
        amount_minor = "amount"
        [properties]
        extra = "x"
    "#;

    fn check(mapping: &Mapping, rows: &[Row], raw: &str) {
        let rules = IdentityRules::default();
        if let Ok(record) = mapping.record(rows, raw) {
            let _ = record.validate(&rules, TimeBounds::at(Utc::now()));
        }
    }

    #[test]
    fn csv_rows_through_a_mapping_always_answer() {
        let Ok(mapping) = toml::from_str::<Mapping>(include_str!("../examples/pos_orders.toml"))
        else {
            panic!("the example mapping reads");
        };
        super::run("import_csv", csv_text(), |text| {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(text.as_bytes());
            let headers = match reader.headers() {
                Ok(h) => h.clone(),
                Err(_) => return Ok(()),
            };
            let mut group: Vec<Row> = Vec::new();
            for record in reader.records() {
                let Ok(record) = record else { continue };
                let row: Row = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect();
                let raw = record.iter().collect::<Vec<_>>().join(",");
                if group
                    .last()
                    .is_some_and(|last| mapping.group_key(last) != mapping.group_key(&row))
                {
                    check(&mapping, &group, &raw);
                    group.clear();
                }
                group.push(row);
            }
            check(&mapping, &group, "last");
            Ok(())
        });
    }

    #[test]
    fn ndjson_rows_through_a_mapping_always_answer() {
        let Ok(mapping) = toml::from_str::<Mapping>(NDJSON_MAPPING) else {
            panic!("the mapping reads");
        };
        super::run("import_ndjson", json_line(), |line| {
            if let Ok(row) = crate::import::row_of_json(&line) {
                check(&mapping, std::slice::from_ref(&row), &line);
            }
            Ok(())
        });
    }
}

mod segment {
    //! Messages of the Segment tracking API (`/v1/batch`, `/v1/track` ...), as the SDKs send
    //! them and as anyone else might.

    use chrono::Utc;
    use patron_domain::identity::IdentityRules;
    use patron_domain::touchpoint::TimeBounds;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use crate::server::segment::to_record;

    const KEYS: &[&str] = &[
        "type",
        "messageId",
        "userId",
        "anonymousId",
        "event",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "traits",
        "context",
        "properties",
        "previousId",
        "groupId",
        "name",
        "device",
        "id",
        "advertisingId",
        "library",
        "email",
        "phone",
        "birthday",
        "address",
        "city",
        "gender",
        "campaign",
        "products",
        "total",
        "revenue",
        "currency",
        "price",
        "quantity",
        "sku",
        "url",
    ];
    const TEXTS: &[&str] = &[
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
        "Order Completed",
        "2026-03-01T10:00:00Z",
        "2026-13-45T99:00:00Z",
        "0001-01-01T00:00:00Z",
        "13912340001",
        "+86 139 1234 0001",
        "a@b.cn",
        "not an email",
        "1993-18-19",
        "analytics-python",
        "analytics.js",
        "ios",
        "CNY",
        "129.00",
        "上海",
        "",
        " ",
        "9223372036854775807",
    ];

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            proptest::sample::select(TEXTS).prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                proptest::collection::btree_map(proptest::sample::select(KEYS), inner, 0..6)
                    .prop_map(|m| Value::Object(
                        m.into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>()
                    )),
            ]
        })
    }

    /// A message that mostly looks like one: the usual keys with values of any shape.
    fn message() -> impl Strategy<Value = (String, Value)> {
        let kind = proptest::sample::select(
            &[
                "track", "identify", "page", "screen", "group", "alias", "batch", "other",
            ][..],
        );
        let base = json!({
            "type": "track",
            "messageId": "m-1",
            "userId": "u-1",
            "event": "Order Completed",
            "timestamp": "2026-03-01T10:00:00Z",
            "context": {"library": {"name": "analytics-python"}, "traits": {"phone": "13912340001"}},
            "properties": {"total": 129.0, "currency": "CNY"}
        });
        (
            kind,
            proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6),
            value(),
            0u8..4,
        )
            .prop_map(move |(kind, changes, whole, how)| {
                let message = match how {
                    0 => whole,
                    _ => {
                        let mut m = base.clone();
                        for (k, v) in changes {
                            m[k] = v;
                        }
                        m
                    }
                };
                (kind.to_owned(), message)
            })
    }

    #[test]
    fn segment_messages_always_answer() {
        let rules = IdentityRules::default();
        super::run("segment", message(), |(kind, message)| {
            if let Ok(record) = to_record(&kind, &message) {
                let _ = record.validate(&rules, TimeBounds::at(Utc::now()));
            }
            Ok(())
        });
    }
}

mod events {
    //! Bodies of `POST /v1/events`: JSON arrays and NDJSON, valid records with slips, and
    //! anything else.

    use chrono::Utc;
    use patron_domain::identity::IdentityRules;
    use patron_domain::touchpoint::TimeBounds;
    use proptest::prelude::*;

    use crate::server::events::{records, MAX_RECORDS};

    const RECORD: &str = r#"{"event_id": "0190a6f2-7b1c-7e3a-9d2e-5f6a7b8c9d0e", "type": "order_placed", "channel": "store", "source": "pos", "occurred_at": "2026-03-08T09:30:15+08:00", "identifiers": {"phone": "13912340001", "member_card": ["MC-1"]}, "order_id": "R-1", "currency": "CNY", "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 12900, "discount_minor": 1000}], "traits": {"birthday": "1993-08-19"}}"#;
    const TRAITS: &str = r#"{"event_id": "0190a6f2-7b1c-7e3a-9d2e-5f6a7b8c9d0f", "type": "traits_updated", "channel": "membership_desk", "source": "crm", "occurred_at": "2026-03-08T09:30:15Z", "identifiers": {"phone": "+86 139 1234 0002"}, "traits": {"name": "张伟", "birthday": "1993-08-19", "city": "上海"}}"#;
    const PIECES: &[&str] = &[
        RECORD,
        TRAITS,
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "\"",
        "\n",
        "0",
        "null",
        "\"type\"",
        "\"items\"",
        "\"quantity\"",
        "4294967296",
        "9223372036854775807",
        "1e400",
        "\"上海\"",
    ];
    const SEEDS: &[&str] = &[RECORD, TRAITS];

    fn body() -> impl Strategy<Value = (bool, String)> {
        let record = prop_oneof![
            3 => super::mutated(SEEDS),
            1 => super::text_from(PIECES),
            1 => any::<String>(),
        ];
        let many = proptest::collection::vec(record, 0..12);
        prop_oneof![
            3 => (any::<bool>(), many).prop_map(|(ndjson, records)| {
                if ndjson {
                    (true, records.join("\n"))
                } else {
                    (false, format!("[{}]", records.join(",")))
                }
            }),
            1 => (any::<bool>(), super::text_from(PIECES)),
            1 => (any::<bool>(), (1usize..40_000).prop_map(|n| "0\n".repeat(n))),
            1 => (1usize..3_000).prop_map(|n| (false, format!("{}{}", "[".repeat(n), "]".repeat(n)))),
        ]
    }

    #[test]
    fn event_bodies_always_answer() {
        let rules = IdentityRules::default();
        super::run("events", body(), |(ndjson, body)| {
            let content_type = if ndjson {
                "application/x-ndjson"
            } else {
                "application/json"
            };
            if let Ok(incoming) = records(content_type, body.as_bytes()) {
                prop_assert!(incoming.len() <= MAX_RECORDS);
                for record in incoming {
                    if let Ok(raw) = crate::ingest::Incoming::json(record.to_owned()).parsed {
                        let _ = raw.validate(&rules, TimeBounds::at(Utc::now()));
                    }
                }
            }
            Ok(())
        });
    }
}
