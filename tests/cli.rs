//! The `patron` binary as a user runs it, on a fresh SQLite file.

use std::process::Command;

fn patron(args: &[&str], database_url: &str) -> std::process::Output {
    patron_with(args, database_url, &[])
}

/// Runs patron with more environment variables.
fn patron_with(args: &[&str], database_url: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(args)
        .env("PATRON_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .envs(env.iter().copied())
        .output()
        .expect("run patron")
}

#[test]
fn status_creates_the_embedded_store_and_reports_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("patron.db");
    let url = format!("sqlite://{}", db.display());
    let out = patron(&["status", "--json"], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["backend"], "sqlite");
    assert_eq!(stats["events"], 0);
    assert_eq!(stats["head"], 0);
    assert!(db.exists(), "the store file was created");

    let out = patron(&["log"], &url);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "an empty log prints nothing");
}

#[test]
fn the_store_benchmark_runs_and_reports_its_units() {
    let out = Command::new(env!("CARGO_BIN_EXE_patron"))
        .args([
            "bench", "store", "--single", "20", "--events", "3000", "--batch", "500", "--json",
        ])
        .output()
        .expect("run patron");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["read"]["events_read"], 3020);
    assert!(report["batched_append_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["read"]["streamed_events_per_s"].as_f64().unwrap() > 0.0);
    let payload = report["mean_payload_bytes"].as_f64().unwrap();
    assert!(
        (400.0..700.0).contains(&payload),
        "touchpoints are about 500 bytes: {payload}"
    );
}

#[test]
fn a_bad_database_url_is_named_without_its_password() {
    let out = patron(&["status"], "mysql://admin:s3cret@db.example/patron");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(err.contains("mysql://admin:***@db.example/patron"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn an_unreachable_postgres_server_is_reported() {
    let out = patron(&["status"], "postgres://postgres@127.0.0.1:1/patron");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the store at postgres://postgres@127.0.0.1:1/patron"),
        "{err}"
    );
}

#[test]
fn importing_the_example_pos_export_twice_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let root = env!("CARGO_MANIFEST_DIR");
    let file = format!("{root}/examples/pos_orders.csv");
    let mapping = format!("{root}/examples/pos_orders.toml");
    let args = [
        "import",
        file.as_str(),
        "--mapping",
        mapping.as_str(),
        "--json",
    ];

    let first = patron(&args, &url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    // Six lines, five receipts: R-0001 spans two lines; R-0004 has a malformed phone.
    assert_eq!(first["records"], 5);
    assert_eq!(first["accepted"], 4);
    assert_eq!(first["rejected"], 1);
    // R-0005's phone (0086 prefix) is R-0001's: three customers, the placeholder phone of
    // R-0003 linking nothing.
    assert_eq!(first["new_customers"], 3);
    let rejection = &first["first_rejections"][0];
    assert_eq!(rejection["line"], 6);
    assert_eq!(rejection["field"], "mobile (identifiers.phone[0])");

    let second = patron(&args, &url);
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(
        (second["accepted"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(4))
    );

    let status = patron(&["status", "--json"], &url);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["events"], 4);
    assert_eq!(status["customers"], 3);

    let quarantine = patron(&["quarantine"], &url);
    let listed = String::from_utf8_lossy(&quarantine.stdout).to_string();
    assert_eq!(
        listed.lines().count(),
        1,
        "a row refused twice is kept once: {listed}"
    );
    let first_line = listed.lines().next().unwrap_or_default().to_owned();
    let kept: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    assert_eq!(kept["code"], "invalid_identifier");
    assert!(
        kept["record"].as_str().unwrap().starts_with("R-0004,"),
        "{kept}"
    );
}

#[test]
fn a_csv_without_a_mapping_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let file = format!("{}/examples/pos_orders.csv", env!("CARGO_MANIFEST_DIR"));
    let out = patron(&["import", file.as_str()], &url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --mapping"));
}

#[test]
fn a_demo_file_written_as_ndjson_imports_and_reimports_as_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let file = dir.path().join("demo.ndjson");
    let file = file.to_str().unwrap();
    let written = patron(&["demo", "--people", "40", "--write", file], &url);
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let lines = std::fs::read_to_string(file).unwrap().lines().count() as u64;
    assert!(
        lines > 40 * 4,
        "every person has introductions and touchpoints: {lines}"
    );

    let first = patron(&["import", file, "--batch", "100", "--json"], &url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first["records"].as_u64(), Some(lines));
    let (accepted, rejected) = (
        first["accepted"].as_u64().unwrap(),
        first["rejected"].as_u64().unwrap(),
    );
    assert_eq!(accepted + rejected, lines);

    let again = patron(&["import", file, "--json"], &url);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["duplicates"].as_u64(), Some(accepted));
    assert_eq!(again["accepted"].as_u64(), Some(0));
    let status = patron(&["status", "--json"], &url);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["customers"], 40, "one customer per person");
}

#[test]
fn a_customer_erased_from_the_command_line_reads_as_erased_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let root = env!("CARGO_MANIFEST_DIR");
    let file = format!("{root}/examples/pos_orders.csv");
    let mapping = format!("{root}/examples/pos_orders.toml");
    let master = patron(&["keys", "master"], &url);
    let master = String::from_utf8_lossy(&master.stdout).trim().to_owned();
    assert_eq!(master.len(), 44, "base64 of 32 bytes: {master}");
    let with_key = |args: &[&str]| patron_with(args, &url, &[("PATRON_MASTER_KEY", &master)]);
    let import = with_key(&["import", &file, "--mapping", &mapping]);
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );

    // Without the master key, commands are refused rather than plant a second one.
    let keyless = patron(&["log"], &url);
    assert!(!keyless.status.success());
    assert!(
        String::from_utf8_lossy(&keyless.stderr).contains("set PATRON_MASTER_KEY"),
        "{}",
        String::from_utf8_lossy(&keyless.stderr)
    );

    let erase = with_key(&[
        "erase",
        "--identifier",
        "phone=13912340001",
        "--reason",
        "request 7",
        "--json",
    ]);
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
    let erasure: serde_json::Value = serde_json::from_slice(&erase.stdout).unwrap();
    assert_eq!(erasure["identifiers_removed"], 2, "phone and member card");

    // The log still replays; the erased customer's receipts read as erased.
    let log = with_key(&["log", "--limit", "100"]);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&log.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5, "four receipts and the erasure");
    let erased = events
        .iter()
        .filter(|e| e["payload"].as_str().unwrap().contains("\"erased\":true"))
        .count();
    assert_eq!(erased, 2, "R-0001 and R-0005 were the same phone");
    let bytes = std::fs::read(dir.path().join("patron.db")).unwrap();
    for needle in ["13912340001", "MC-0001"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} left in the file"
        );
    }

    let again = with_key(&[
        "erase",
        "--identifier",
        "phone=13912340001",
        "--reason",
        "x",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no customer holds phone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_exported_from_the_command_line_gets_their_receipts_and_no_one_elses() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let root = env!("CARGO_MANIFEST_DIR");
    let file = format!("{root}/examples/pos_orders.csv");
    let mapping = format!("{root}/examples/pos_orders.toml");
    let import = patron(&["import", &file, "--mapping", &mapping], &url);
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let output = dir.path().join("export.json");
    let export = patron(
        &[
            "person",
            "export",
            "--identifier",
            "phone=139 1234 0001",
            "--reason",
            "request 9",
            "--actor",
            "dpo@shop",
            "--output",
            output.to_str().unwrap(),
        ],
        &url,
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(export.stdout.is_empty(), "the document went to the file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&output).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "personal data: readable by its owner only"
        );
    }
    let text = std::fs::read_to_string(&output).unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["schema"], "patron.person-export/1");
    assert_eq!(document["request"]["actor"], "dpo@shop");
    let receipts: Vec<&str> = document["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"]["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(receipts, ["R-0001", "R-0005"], "R-0005 is the same phone");
    assert_eq!(document["profile"]["orders"], 2);
    let identifiers: Vec<(&str, &str)> = document["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["kind"].as_str().unwrap(), i["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        identifiers,
        [("member_card", "MC-0001"), ("phone", "+8613912340001")]
    );
    for other in ["R-0002", "R-0003", "13912340002", "MC-0003", "MC-0004"] {
        assert!(!text.contains(other), "{other} is someone else's");
    }

    // Printed when no file is named; an unknown person is an error that logs nothing.
    let printed = patron(
        &[
            "person",
            "export",
            "--customer",
            document["customer"].as_str().unwrap(),
            "--reason",
            "request 10",
        ],
        &url,
    );
    assert!(printed.status.success());
    let again: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(again["touchpoints"], document["touchpoints"]);
    let unknown = patron(
        &[
            "person",
            "export",
            "--identifier",
            "phone=13999999999",
            "--reason",
            "x",
        ],
        &url,
    );
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no customer holds this phone (NOT_FOUND)"),
        "{err}"
    );
    assert!(!err.contains("13999999999"), "{err}");

    let store = patron::store::EventStore::connect(&url).await.unwrap();
    let customer: patron_domain::customer::CustomerId =
        document["customer"].as_str().unwrap().parse().unwrap();
    let log = store.access_log(customer).await.unwrap();
    let exports: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|e| (e.key_name.as_str(), e.reason.as_deref()))
        .collect();
    assert_eq!(
        exports,
        [("dpo@shop", Some("request 9")), ("cli", Some("request 10"))]
    );
    assert!(log.iter().all(|e| e.what == "export" && e.key_id.is_nil()));
    store.close().await;
}

#[test]
fn api_keys_are_created_listed_and_revoked_and_only_their_hash_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("patron.db");
    let url = format!("sqlite://{}", db.display());
    let out = patron(
        &[
            "keys",
            "create",
            "--role",
            "viewer",
            "--name",
            "marketing-ui",
        ],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        secret.starts_with("patron_") && secret.len() > 40,
        "{secret}"
    );

    let out = patron(&["keys", "list"], &url);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("marketing-ui") && listed.contains("viewer") && listed.contains("live"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "the secret is never listed");
    let id = listed.split_whitespace().next().unwrap().to_owned();

    let out = patron(&["status"], &url);
    assert!(out.status.success());
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(dir.path().join("patron.db-wal")).unwrap_or_default());
    let secret_bytes = secret.as_bytes();
    assert!(
        !bytes.windows(secret_bytes.len()).any(|w| w == secret_bytes),
        "the secret is not stored"
    );

    let out = patron(&["keys", "revoke", &id], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(patron(&["keys", "list"], &url).stdout).unwrap();
    assert!(listed.contains("revoked"), "{listed}");
    let again = patron(&["keys", "revoke", &id], &url);
    assert!(!again.status.success(), "a key is revoked once");

    let bad = patron(&["keys", "create", "--role", "root", "--name", "x"], &url);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ingest, viewer, analyst, operator or admin")
    );
}

#[test]
fn settings_come_from_the_configuration_file_unless_the_environment_gives_them() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file.db");
    std::fs::write(
        dir.path().join("patron.toml"),
        format!("database_url = \"sqlite://{}\"\n", from_file.display()),
    )
    .unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_patron"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("PATRON_DATABASE_URL")
            .env_remove("PATRON_CONFIG")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run patron")
    };
    let out = run(&[], &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(from_file.exists(), "the file's store was opened");

    let from_env = dir.path().join("from-env.db");
    let url = format!("sqlite://{}", from_env.display());
    let out = run(&[("PATRON_DATABASE_URL", &url)], &["status"]);
    assert!(out.status.success());
    assert!(from_env.exists(), "the environment wins over the file");

    std::fs::write(dir.path().join("other.toml"), "databse_url = \"x\"\n").unwrap();
    let out = run(&[], &["--config", "other.toml", "status"]);
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("`databse_url`") && message.contains("database_url"),
        "{message}"
    );
}

/// Stopping the server with SIGTERM while clients are sending loses no record it answered as
/// accepted: requests in flight are finished and committed before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_every_record_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let out = patron(
        &["keys", "create", "--role", "ingest", "--name", "pos"],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(["serve", "--address", &address])
        .env("PATRON_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start patron serve");
    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the server came up");

    let mut clients = Vec::new();
    for c in 0..4 {
        let client = client.clone();
        let base = base.clone();
        let key = key.clone();
        clients.push(tokio::spawn(async move {
            let mut accepted: Vec<String> = Vec::new();
            for round in 0.. {
                let body: String = (0..100)
                    .map(|i| {
                        serde_json::json!({
                            "event_id": uuid::Uuid::new_v4().to_string(),
                            "type": "page_viewed", "channel": "web", "source": "site",
                            "occurred_at": "2026-03-08T09:30:15+08:00",
                            "identifiers": {"cookie": format!("ck-{c}-{round}-{i}")},
                            "url": "/home"
                        })
                        .to_string()
                            + "\n"
                    })
                    .collect();
                let Ok(response) = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(answer) = response.json::<serde_json::Value>().await else {
                    break;
                };
                for record in answer["records"].as_array().into_iter().flatten() {
                    if record["status"] == "accepted" {
                        accepted.push(record["event_id"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = server.wait().expect("the server exits");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    assert!(
        accepted.len() >= 100,
        "records were accepted before the stop"
    );

    let store = patron::store::EventStore::connect(&url).await.unwrap();
    let ids: Vec<patron_domain::EventId> = accepted
        .iter()
        .map(|id| patron_domain::EventId::from_uuid(id.parse().expect("an event id")))
        .collect();
    let found = store.find_events(&ids).await.unwrap();
    assert_eq!(found.len(), ids.len(), "every accepted record is stored");
    store.close().await;
}

#[test]
fn a_segment_export_for_a_purpose_leaves_out_customers_without_consent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    export_leaves_out_customers_without_consent(&url, dir.path());
}

/// The same on PostgreSQL, when `PATRON_TEST_POSTGRES_URL` names a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_export_for_a_purpose_leaves_out_customers_without_consent_on_postgres() {
    let Ok(server) = std::env::var("PATRON_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set PATRON_TEST_POSTGRES_URL to run the PostgreSQL tests");
        return;
    };
    let scratch = patron::store::scratch::ScratchPostgres::create(&server, "patron_cli")
        .await
        .expect("a scratch database");
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.url().to_owned();
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || export_leaves_out_customers_without_consent(&url, &path))
        .await
        .expect("the test ran");
    scratch
        .drop_database()
        .await
        .expect("drop the scratch database");
}

fn export_leaves_out_customers_without_consent(url: &str, dir: &std::path::Path) {
    let url = url.to_owned();
    let file = dir.join("records.ndjson");
    let record = |phone: &str, kind: &str, extra: serde_json::Value| {
        let mut r = serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(), "type": kind,
            "channel": "mini_program", "source": "mp", "occurred_at": "2026-03-01T10:00:00+08:00",
            "identifiers": {"phone": phone}
        });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r.to_string()
    };
    let lines = [
        record(
            "13100000001",
            "consent_changed",
            serde_json::json!({"purpose": "marketing_sms", "granted": true}),
        ),
        record(
            "13100000002",
            "consent_changed",
            serde_json::json!({"purpose": "marketing_sms", "granted": false}),
        ),
        record(
            "13100000003",
            "screen_viewed",
            serde_json::json!({"screen": "home"}),
        ),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = patron(&["import", file.to_str().unwrap()], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = patron(&["segment", "save", "everyone", "touchpoints >= 1"], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = patron(&["segment", "refresh"], &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let all = patron(&["segment", "export", "everyone"], &url);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let all = String::from_utf8(all.stdout).unwrap();
    assert_eq!(
        all.lines().count(),
        4,
        "a header and three customers: {all}"
    );
    assert!(all.starts_with("customer_id,tier,stage"));

    let sms = patron(
        &[
            "segment",
            "export",
            "everyone",
            "--purpose",
            "marketing_sms",
        ],
        &url,
    );
    assert!(sms.status.success());
    let sms_csv = String::from_utf8(sms.stdout).unwrap();
    assert_eq!(
        sms_csv.lines().count(),
        2,
        "only the customer who consents: {sms_csv}"
    );
    assert!(String::from_utf8_lossy(&sms.stderr).contains("2 left out without consent"));

    let bad = patron(&["segment", "export", "everyone", "--purpose", "fax"], &url);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("marketing_sms"));
}

/// A small shop written as NDJSON, all times UTC:
/// - phone 1: app view 03-02 10:00, app cart 03-02 10:05, web order 03-03, store order 04-10;
/// - phone 2: app view 03-05 10:00, web cart 03-05 11:00, web order 03-20 (15 days later);
/// - phone 3: app view 04-08, app cart 04-09, no order;
/// - phone 4: a store order on 04-20, nothing else.
fn write_small_shop(file: &std::path::Path) {
    let record = |who: u32, kind: &str, channel: &str, at: &str, extra: serde_json::Value| {
        let mut r = serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(), "type": kind, "channel": channel,
            "source": format!("{channel}-system"), "occurred_at": at,
            "identifiers": {"phone": format!("+86139000002{who:02}")}
        });
        for (k, v) in extra.as_object().expect("an object") {
            r[k] = v.clone();
        }
        r.to_string()
    };
    let line = serde_json::json!({"sku": "SKU-LIP", "quantity": 1, "unit_price_minor": 5_000});
    let screen = serde_json::json!({"screen": "home"});
    let cart = serde_json::json!({ "item": line });
    let order = || serde_json::json!({"order_id": uuid::Uuid::new_v4().to_string(), "currency": "CNY", "items": [line]});
    let lines = [
        record(
            1,
            "screen_viewed",
            "app",
            "2026-03-02T10:00:00Z",
            screen.clone(),
        ),
        record(
            1,
            "cart_item_added",
            "app",
            "2026-03-02T10:05:00Z",
            cart.clone(),
        ),
        record(1, "order_placed", "web", "2026-03-03T09:00:00Z", order()),
        record(1, "order_placed", "store", "2026-04-10T12:00:00Z", order()),
        record(
            2,
            "screen_viewed",
            "app",
            "2026-03-05T10:00:00Z",
            screen.clone(),
        ),
        record(
            2,
            "cart_item_added",
            "web",
            "2026-03-05T11:00:00Z",
            cart.clone(),
        ),
        record(2, "order_placed", "web", "2026-03-20T10:00:00Z", order()),
        record(3, "screen_viewed", "app", "2026-04-08T10:00:00Z", screen),
        record(3, "cart_item_added", "app", "2026-04-09T10:00:00Z", cart),
        record(4, "order_placed", "store", "2026-04-20T10:00:00Z", order()),
    ];
    std::fs::write(file, lines.join("\n")).expect("write the records");
}

/// Runs one SQL statement on the SQLite store at `url` (to damage it on purpose); returns the
/// rows changed.
fn sqlite_execute(url: &str, sql: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(url)
            .await
            .expect("the store opens");
        let done = sqlx::query(sql)
            .execute(&pool)
            .await
            .expect("the statement runs");
        pool.close().await;
        done.rows_affected()
    })
}

/// Runs patron and returns its standard output, failing the test if it failed.
fn patron_ok(args: &[&str], url: &str) -> String {
    let out = patron(args, url);
    assert!(
        out.status.success(),
        "patron {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs patron expecting it to fail; returns its standard error.
fn patron_fails(args: &[&str], url: &str) -> String {
    let out = patron(args, url);
    assert!(
        !out.status.success(),
        "patron {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn analytics_csv_of_a_small_shop(url: &str, dir: &std::path::Path) {
    let file = dir.join("shop.ndjson");
    write_small_shop(&file);
    let imported = patron_ok(&["import", file.to_str().expect("a path"), "--json"], url);
    let imported: serde_json::Value = serde_json::from_str(&imported).expect("JSON");
    assert_eq!(imported["accepted"], 10, "{imported}");

    // Cohorts by month of first order, observed to the end of June: March holds phones 1
    // (buying again in April) and 2; April holds phone 4. Shares of the cohort buying in each
    // month; April's cohort has one month less to show.
    let csv = patron_ok(
        &[
            "analytics",
            "cohorts",
            "--end",
            "2026-06-30T00:00:00Z",
            "--csv",
        ],
        url,
    );
    assert_eq!(
        csv,
        "cohort,channel,customers,period_0_share,period_1_share,period_2_share,period_3_share\n\
         2026-03-01,,2,1.000000,0.500000,0.000000,0.000000\n\
         2026-04-01,,1,1.000000,0.000000,0.000000,\n"
    );
    // By channel of the first order: March web (both), April store.
    let csv = patron_ok(
        &[
            "analytics",
            "cohorts",
            "--end",
            "2026-06-30T00:00:00Z",
            "--by-channel",
            "--csv",
        ],
        url,
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(
        rows,
        vec![
            "2026-03-01,web,2,1.000000,0.500000,0.000000,0.000000",
            "2026-04-01,store,1,1.000000,0.000000,0.000000,"
        ]
    );

    // App view, cart add, order within 7 days: phone 1 goes through, phone 2's order came 15
    // days after the view, phone 3 never ordered, phone 4 never viewed.
    let funnel = ["app:screen_viewed", "cart_item_added", "order_placed"];
    let mut args = vec!["analytics", "funnel"];
    args.extend(funnel);
    args.push("--csv");
    let csv = patron_ok(&args, url);
    assert_eq!(
        csv,
        "step,name,customers,from_previous_share,from_start_share,drop_off_customers\n\
         1,app:screen_viewed,3,1.000000,1.000000,0\n\
         2,cart_item_added,3,1.000000,1.000000,0\n\
         3,order_placed,1,0.333333,0.333333,2\n"
    );
    args.extend(["--window-days", "30"]);
    let csv = patron_ok(&args, url);
    assert_eq!(
        csv.lines().nth(3),
        Some("3,order_placed,2,0.666667,0.666667,1")
    );
    // Without --csv, the same as JSON.
    let mut args = vec!["analytics", "funnel"];
    args.extend(funnel);
    let json: serde_json::Value = serde_json::from_str(&patron_ok(&args, url)).expect("JSON");
    assert_eq!(json["steps"], serde_json::json!(funnel));
    assert_eq!(json["window_days"], 7);
    let counts: Vec<u64> = json["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .map(|f| f["customers"].as_u64().expect("a count"))
        .collect();
    assert_eq!(counts, vec![3, 3, 1]);

    // Bad arguments are refused with the problem named.
    let err = patron_fails(&["analytics", "funnel", "only_one_step"], url);
    assert!(
        err.contains("STEPS") && err.contains('2'),
        "a funnel needs two steps: {err}"
    );
    let err = patron_fails(
        &[
            "analytics",
            "funnel",
            "app:screen_viewed",
            "order_placed",
            "--window-days",
            "0",
        ],
        url,
    );
    assert!(
        err.contains("window_days") || err.contains("window-days"),
        "{err}"
    );
    let err = patron_fails(
        &["analytics", "funnel", ":screen_viewed", "order_placed"],
        url,
    );
    assert!(err.contains("\":screen_viewed\""), "{err}");
    let err = patron_fails(
        &[
            "analytics",
            "funnel",
            "app:screen_viewed",
            "order_placed",
            "--segment",
            "nobody",
        ],
        url,
    );
    assert!(err.contains("no segment named \"nobody\""), "{err}");
}

#[test]
fn analytics_print_cohorts_and_funnels_as_csv_and_name_bad_arguments() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    analytics_csv_of_a_small_shop(&url, dir.path());
}

/// The same on PostgreSQL, when `PATRON_TEST_POSTGRES_URL` names a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_print_cohorts_and_funnels_as_csv_and_name_bad_arguments_on_postgres() {
    let Ok(server) = std::env::var("PATRON_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set PATRON_TEST_POSTGRES_URL to run the PostgreSQL tests");
        return;
    };
    let scratch = patron::store::scratch::ScratchPostgres::create(&server, "patron_cli")
        .await
        .expect("a scratch database");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = scratch.url().to_owned();
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || analytics_csv_of_a_small_shop(&url, &path))
        .await
        .expect("the test ran");
    scratch
        .drop_database()
        .await
        .expect("drop the scratch database");
}

#[test]
fn a_wrong_merge_is_explained_and_undone_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let file = dir.path().join("shop.ndjson");
    write_small_shop(&file);
    patron_ok(&["import", file.to_str().unwrap()], &url);
    let holder = |phone: &str| -> serde_json::Value {
        let out = patron_ok(&["explain", &format!("phone={phone}"), "--json"], &url);
        serde_json::from_str(&out).expect("JSON")
    };
    let first = holder("139 0000 0201");
    let second = holder("+8613900000202");
    let (a, b) = (
        first["customer"].as_str().expect("a").to_owned(),
        second["customer"].as_str().expect("b").to_owned(),
    );
    assert_ne!(a, b);
    assert_eq!(second["steps"][0]["step"], "linked");
    assert_eq!(second["steps"][0]["rules_version"], 1);

    let merged = patron_ok(
        &[
            "correct",
            "merge",
            "--survivor",
            &a,
            "--absorbed",
            &b,
            "--reason",
            "TICKET-1",
            "--actor",
            "li.wei",
            "--json",
        ],
        &url,
    );
    let merged: serde_json::Value = serde_json::from_str(&merged).expect("JSON");
    assert_eq!(merged["applied"], true);
    let why = holder("+8613900000202");
    assert_eq!(why["customer"], a.as_str());
    assert_eq!(why["steps"][1]["step"], "merged");
    assert_eq!(why["steps"][1]["actor"], "li.wei");
    assert_eq!(why["steps"][1]["reason"], "TICKET-1");
    let text = patron_ok(&["explain", "phone=+8613900000202"], &url);
    assert!(text.contains("by li.wei: TICKET-1"), "{text}");

    let stale = patron_fails(
        &[
            "correct",
            "undo-merge",
            "--customer",
            &b,
            "--reason",
            "TICKET-2",
            "--expected-version",
            "1",
        ],
        &url,
    );
    assert!(stale.contains("VERSION_CONFLICT"), "{stale}");
    let undone = patron_ok(
        &[
            "correct",
            "undo-merge",
            "--customer",
            &b,
            "--reason",
            "TICKET-2",
        ],
        &url,
    );
    assert!(undone.starts_with("applied:"), "{undone}");
    assert!(undone.contains("touchpoints moved:   3"), "{undone}");
    assert_eq!(holder("+8613900000202")["customer"], b.as_str());
    let again = patron_ok(
        &[
            "correct",
            "undo-merge",
            "--customer",
            &b,
            "--reason",
            "TICKET-2",
        ],
        &url,
    );
    assert!(again.starts_with("unchanged:"), "{again}");
    let verified = patron_ok(&["verify"], &url);
    assert!(verified.contains("different: 0"), "{verified}");
    assert!(!verified.contains("different: 1"), "{verified}");

    // The identity index is checked against the log: holders lost from it are found, and
    // `patron rebuild identity` writes them back from the log.
    let lost = sqlite_execute(&url, "DELETE FROM identity_index WHERE kind = 'phone'");
    assert!(lost >= 2, "{lost} phones held");
    let out = patron(&["verify"], &url);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&format!("different: {lost}")), "{report}");
    assert!(
        report.contains("holder phone: stored nothing, log "),
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("patron rebuild identity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        holder("+8613900000202")["customer"],
        serde_json::Value::Null
    );
    let rebuilt = patron_ok(&["rebuild", "identity"], &url);
    assert!(rebuilt.contains("rebuilt the identity index"), "{rebuilt}");
    assert_eq!(holder("+8613900000202")["customer"], b.as_str());
    assert_eq!(holder("139 0000 0201")["customer"], a.as_str());
    let verified = patron_ok(&["verify", "--json"], &url);
    let verified: serde_json::Value = serde_json::from_str(&verified).expect("JSON");
    assert_eq!(verified["identity"]["different"], 0, "{verified}");
    assert_eq!(verified["different"], 0, "{verified}");

    let bad = patron_fails(
        &[
            "correct",
            "split",
            "--customer",
            &a,
            "--identifier",
            "phone",
            "--reason",
            "x",
        ],
        &url,
    );
    assert!(bad.contains("KIND=VALUE"), "{bad}");
    let missing = patron_fails(&["correct", "block", "--identifier", "phone=1"], &url);
    assert!(missing.contains("--reason"), "{missing}");
}

#[test]
fn the_review_queue_and_a_rules_dry_run_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("patron.db").display());
    let file = dir.path().join("shop.ndjson");
    write_small_shop(&file);
    patron_ok(&["import", file.to_str().unwrap()], &url);
    let scan = patron_ok(&["review", "scan", "--json"], &url);
    let scan: serde_json::Value = serde_json::from_str(&scan).expect("JSON");
    assert_eq!(scan["touchpoints"], 10);
    assert_eq!(scan["customers"], 4);
    assert_eq!(scan["pairs"], 0, "four different phones: nothing alike");
    assert!(patron_ok(&["review", "list"], &url).is_empty());
    let missing = patron_fails(&["review", "accept", "7", "--reason", "x"], &url);
    assert!(missing.contains("NOT_FOUND"), "{missing}");

    // Rules where a phone no longer merges anything cannot split customers of one phone each.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "version = 2\n[kinds.phone]\nstrength = \"auxiliary\"\nnormalize = \"phone\"\nmax_per_customer = 5\n",
    )
    .unwrap();
    let report = patron_ok(
        &["rules", "dry-run", rules.to_str().unwrap(), "--json"],
        &url,
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert_eq!(report["change"]["rules_version"], 2);
    assert_eq!(report["change"]["touchpoints"], 10);
    assert_eq!(report["change"]["customers_now"], 4);
    assert_eq!(report["change"]["customers_after"], 4);
    assert_eq!(report["change"]["merges"], 0);
    assert!(report["applied"].is_null(), "a dry run applies nothing");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 2\n").unwrap();
    let refused = patron_fails(&["rules", "dry-run", bad.to_str().unwrap()], &url);
    assert!(refused.contains("invalid"), "{refused}");
}
