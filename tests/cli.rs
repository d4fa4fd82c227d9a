//! The `patron` binary as a user runs it, on a fresh SQLite file.

use std::process::Command;

fn patron(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_patron"))
        .args(args)
        .env("PATRON_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
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
