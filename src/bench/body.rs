//! `patron bench body`: how much memory the server takes while it reads large and hostile
//! request bodies. Each case runs against a fresh `patron serve` process (this binary, or
//! `--server` for another build) on a scratch SQLite store, so that one case's freed memory
//! cannot hide the next one's growth; the figure is the process's peak resident set size
//! (`VmHWM`) less its resident set size just before the request.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::server::MAX_BODY_BYTES;

/// Lines of `0` in the NDJSON case: just under [`MAX_BODY_BYTES`].
const NDJSON_ZEROS: usize = 5_200_000;
/// Elements of the JSON array case.
const ARRAY_ZEROS: usize = 5_000_000;
/// Real records in the accepted batch.
const BATCH_RECORDS: usize = 10_000;
/// Connections that send a Segment request without a write key and stall before its end.
const STALLED_CONNECTIONS: usize = 20;

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct BodyCase {
    /// What was sent.
    pub name: String,
    /// Bytes per request.
    pub bytes: usize,
    /// The statuses answered, one per request (0: no answer).
    pub statuses: Vec<u16>,
    /// The server's peak resident memory above its resident memory before the requests, MiB.
    pub peak_growth_mib: f64,
    /// The server's resident memory a second after the answers, above the same baseline, MiB.
    pub retained_mib: f64,
    /// Seconds until the last answer.
    pub seconds: f64,
}

/// What `patron bench body` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BodyBenchReport {
    /// The server binary measured.
    pub server: String,
    /// One entry per case.
    pub cases: Vec<BodyCase>,
}

impl std::fmt::Display for BodyBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "server: {}", self.server)?;
        writeln!(
            f,
            "{:<34} {:>10} {:>14} {:>12} {:>12} {:>8}",
            "case", "MiB/req", "statuses", "peak +MiB", "kept +MiB", "s"
        )?;
        for case in &self.cases {
            let statuses: Vec<String> = case.statuses.iter().map(u16::to_string).collect();
            let mut statuses = statuses.join(",");
            if statuses.len() > 14 {
                statuses = format!("{}x{}", case.statuses.len(), case.statuses[0]);
            }
            writeln!(
                f,
                "{:<34} {:>10.1} {:>14} {:>12.1} {:>12.1} {:>8.1}",
                case.name,
                case.bytes as f64 / 1_048_576.0,
                statuses,
                case.peak_growth_mib,
                case.retained_mib,
                case.seconds
            )?;
        }
        Ok(())
    }
}

/// How a case is sent.
enum Sending {
    /// `copies` concurrent `POST` to `path` (`/v1/events`, `/graphql`) of `body` with an
    /// ingest key.
    Events {
        path: &'static str,
        body: String,
        content_type: &'static str,
        copies: usize,
    },
    /// One `POST /v1/events` of `body`, sent with `Content-Encoding: gzip`.
    Gzipped { body: Vec<u8> },
    /// Connections that send a `/v1/batch` head declaring [`MAX_BODY_BYTES`] without a write
    /// key, then all of the body but its last byte, and wait.
    StalledSegment,
}

/// Runs every case against `server` (a `patron` binary), each in a fresh process.
pub async fn run_body_bench(server: Option<PathBuf>) -> anyhow::Result<BodyBenchReport> {
    let server = match server {
        Some(path) => path,
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let ndjson = "0\n".repeat(NDJSON_ZEROS);
    let mut array = String::with_capacity(ARRAY_ZEROS * 2 + 1);
    array.push('[');
    for i in 0..ARRAY_ZEROS {
        array.push_str(if i == 0 { "0" } else { ",0" });
    }
    array.push(']');
    let batch = accepted_batch();
    let cases = vec![
        (
            "ndjson: 5.2M lines of 0",
            Sending::Events {
                path: "/v1/events",
                body: ndjson.clone(),
                content_type: "application/x-ndjson",
                copies: 1,
            },
        ),
        (
            "json array: 5M zeros",
            Sending::Events {
                path: "/v1/events",
                body: array,
                content_type: "application/json",
                copies: 1,
            },
        ),
        (
            "ndjson: 10,000 records (accepted)",
            Sending::Events {
                path: "/v1/events",
                body: batch,
                content_type: "application/x-ndjson",
                copies: 1,
            },
        ),
        (
            "ndjson: 5.2M lines of 0, two at once",
            Sending::Events {
                path: "/v1/events",
                body: ndjson,
                content_type: "application/x-ndjson",
                copies: 2,
            },
        ),
        (
            "ndjson: one record of 4.5M values",
            Sending::Events {
                path: "/v1/events",
                body: format!("{}\n", one_record_of_zeros()),
                content_type: "application/x-ndjson",
                copies: 1,
            },
        ),
        (
            "graphql: 4.5M values in variables",
            Sending::Events {
                path: "/graphql",
                body: format!(
                    "{{\"query\": \"{{ me {{ role }} }}\", \"variables\": {{\"x\": [{}]}}}}",
                    zeros(VALUES)
                ),
                content_type: "application/json",
                copies: 1,
            },
        ),
        (
            "gzip: 1 GiB of spaces (1 MiB sent)",
            Sending::Gzipped {
                body: gzip_of_spaces(1 << 30)?,
            },
        ),
        ("segment: 20 stalled, no write key", Sending::StalledSegment),
    ];
    let mut measured = Vec::new();
    for (name, sending) in cases {
        let case = run_case(&server, name, &sending)
            .await
            .with_context(|| format!("case {name:?}"))?;
        eprintln!(
            "{name}: peak +{:.1} MiB, kept +{:.1} MiB",
            case.peak_growth_mib, case.retained_mib
        );
        measured.push(case);
    }
    Ok(BodyBenchReport {
        server: server.display().to_string(),
        cases: measured,
    })
}

/// Values in the one-record and GraphQL cases (about 9 MiB of `0,`).
const VALUES: usize = 4_500_000;

/// `n` spaces compressed with gzip (about a thousandth of `n`).
fn gzip_of_spaces(n: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    for _ in 0..n / block.len() {
        encoder.write_all(&block).context("cannot compress")?;
    }
    encoder.finish().context("cannot compress")
}

/// `n` zeros separated by commas.
fn zeros(n: usize) -> String {
    let mut text = String::with_capacity(n * 2);
    for i in 0..n {
        text.push_str(if i == 0 { "0" } else { ",0" });
    }
    text
}

/// One touchpoint record carrying [`VALUES`] zeros in a property.
fn one_record_of_zeros() -> String {
    format!(
        "{{\"event_id\": \"{}\", \"type\": \"store_visited\", \"channel\": \"store\", \
         \"source\": \"bench\", \"occurred_at\": \"2026-03-08T09:30:15+08:00\", \
         \"identifiers\": {{\"phone\": \"13912340001\"}}, \"x\": [{}]}}",
        uuid::Uuid::new_v4(),
        zeros(VALUES)
    )
}

/// 10,000 demo records as NDJSON, each padded with a `note` to about 1 KiB: a body near
/// [`MAX_BODY_BYTES`] that is stored.
fn accepted_batch() -> String {
    let config = crate::demo::DemoConfig {
        people: BATCH_RECORDS,
        seed: 23,
        ..crate::demo::DemoConfig::default()
    };
    let per_record = MAX_BODY_BYTES / BATCH_RECORDS - 16;
    let mut body = String::with_capacity(MAX_BODY_BYTES);
    let mut first = 0;
    let mut records = 0;
    while records < BATCH_RECORDS && first < config.people {
        for generated in crate::demo::generate_people(&config, first, 1_000) {
            if records == BATCH_RECORDS {
                break;
            }
            let mut record = generated.record;
            let length = record.to_string().len();
            record["note"] = "n".repeat(per_record.saturating_sub(length + 10)).into();
            body.push_str(&record.to_string());
            body.push('\n');
            records += 1;
        }
        first += 1_000;
    }
    body
}

/// A `patron serve` child process, killed when dropped.
struct ServerProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `server` on a free port over a new SQLite store holding one ingest key; returns
    /// it and the key once `/healthz` answers.
    async fn start(server: &Path) -> anyhow::Result<(Self, String)> {
        let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = crate::store::EventStore::connect(&url)
            .await
            .context("cannot create the scratch store")?;
        let key = super::ingest_key(&store).await?;
        store.close().await;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port")?
            .port();
        let child = Command::new(server)
            .args([
                "serve",
                "--address",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &url,
                "--write-key",
                "bench-write-key",
            ])
            .env_remove("PATRON_CONFIG")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", server.display()))?;
        let process = Self {
            child,
            port,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not start in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((process, key))
    }

    /// A field of `/proc/<pid>/status`, in MiB.
    fn status_mib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("cannot read the server's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .with_context(|| format!("no {field} in the server's /proc status"))
    }
}

/// Measures one case of `copies` concurrent `POST /v1/events` of `body` against a fresh
/// `server` process (a `patron` binary).
pub async fn measure_events(
    server: &Path,
    name: &str,
    body: String,
    content_type: &'static str,
    copies: usize,
) -> anyhow::Result<BodyCase> {
    let sending = Sending::Events {
        path: "/v1/events",
        body,
        content_type,
        copies,
    };
    run_case(server, name, &sending).await
}

async fn run_case(server: &Path, name: &str, sending: &Sending) -> anyhow::Result<BodyCase> {
    let (process, key) = ServerProcess::start(server).await?;
    let base = format!("http://127.0.0.1:{}", process.port);
    let url = format!("{base}/v1/events");
    let client = reqwest::Client::new();
    // One small request first, so that the baseline includes what any request sets up.
    client
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body("0\n")
        .send()
        .await
        .context("the warm-up request failed")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = process.status_mib("VmRSS")?;
    let started = Instant::now();
    let (bytes, statuses) = match sending {
        Sending::Events {
            path,
            body,
            content_type,
            copies,
        } => {
            let requests = (0..*copies).map(|_| {
                client
                    .post(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .header("content-type", *content_type)
                    .body(body.clone())
                    .send()
            });
            let answers = futures::future::join_all(requests).await;
            let statuses = answers
                .into_iter()
                .map(|a| a.map_or(0, |r| r.status().as_u16()))
                .collect();
            (body.len(), statuses)
        }
        Sending::Gzipped { body } => {
            let status = client
                .post(format!("{base}/v1/events"))
                .bearer_auth(&key)
                .header("content-type", "application/x-ndjson")
                .header("content-encoding", "gzip")
                .body(body.clone())
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            (body.len(), vec![status])
        }
        Sending::StalledSegment => {
            let port = process.port;
            let statuses = tokio::task::spawn_blocking(move || stalled_segment(port))
                .await
                .context("the stalled clients stopped")?;
            (MAX_BODY_BYTES - 1, statuses)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let peak = process.status_mib("VmHWM")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = process.status_mib("VmRSS")?;
    Ok(BodyCase {
        name: name.to_owned(),
        bytes,
        statuses,
        peak_growth_mib: (peak - baseline).max(0.0),
        retained_mib: (after - baseline).max(0.0),
        seconds,
    })
}

/// Opens [`STALLED_CONNECTIONS`] connections that each send a `/v1/batch` head declaring
/// [`MAX_BODY_BYTES`] without a write key, then the body but its last byte (as far as the
/// server takes it), and returns the status each was answered (0: none) right after its head.
fn stalled_segment(port: u16) -> Vec<u16> {
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {MAX_BODY_BYTES}\r\n\r\n"
    );
    let mut connections = Vec::new();
    for _ in 0..STALLED_CONNECTIONS {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        if stream.write_all(head.as_bytes()).is_ok() {
            connections.push(stream);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let statuses = connections
        .iter_mut()
        .map(|stream| {
            let mut answer = [0u8; 12];
            match std::io::Read::read(stream, &mut answer) {
                Ok(12) => std::str::from_utf8(&answer[9..12])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            }
        })
        .collect();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent + chunk.len() < MAX_BODY_BYTES {
        let mut any = false;
        for stream in &mut connections {
            any |= stream.write_all(&chunk).is_ok();
        }
        if !any {
            break;
        }
        sent += chunk.len();
    }
    // The body's end never comes: give the server a moment to hold what it was sent.
    std::thread::sleep(Duration::from_secs(1));
    statuses
}
