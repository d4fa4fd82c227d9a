//! `patron bench soak`: a long run of mixed load against one `patron serve` process: ingestion
//! over `/v1/events` and the Segment endpoints, customer reads, segment previews, analytics,
//! websocket subscribers and hostile input, each at a fixed rate (open loop), while the server's
//! resident memory is sampled. It reports the memory curve, each request class's p99 alone
//! (idle) and in every window of the run, and checks afterwards that every record the server
//! answered `accepted` is in the store.
//!
//! The server is a child process (this binary's `serve`), so its memory is its own and it can be
//! killed at the end as a crash would: the check then reads the store as the crash left it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::server::{new_secret, secret_hash};
use crate::store::EventStore;
use patron_domain::event_log::EventId;

/// The write key the soak's server accepts on the Segment endpoints.
const WRITE_KEY: &str = "soak-write-key";

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// The store the server serves (a demo store: the run writes into it).
    pub database_url: String,
    /// The `patron` binary to run as the server.
    pub binary: PathBuf,
    /// Length of the mixed load, seconds.
    pub seconds: u64,
    /// Length of each class's idle measurement, seconds.
    pub idle_seconds: u64,
    /// Length of each reporting window, seconds.
    pub window_seconds: u64,
    /// Websocket subscribers held open through the run.
    pub subscribers: usize,
    /// Send the same ingestion and Segment records over and over (a fixed pool, stored on
    /// their first pass and duplicates after): a control whose store stops growing, so that
    /// memory growth in it is the server's own.
    pub replay: bool,
}

/// `POST /v1/events` bodies in the replayed pool.
const REPLAYED_BODIES: usize = 500;

/// A request class: what it asks, and how often.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `customer(id)` as a viewer, 40/s.
    Customer,
    /// `me` as a viewer, 10/s.
    Me,
    /// `POST /v1/events` of 10 records, 10/s.
    Ingest,
    /// `POST /v1/batch` (Segment) of 5 messages, 2/s.
    Segment,
    /// `previewSegment` as an analyst, 1/s.
    Preview,
    /// Cohorts and lifetime value as an analyst, every 10 s.
    Analytics,
    /// Hostile requests (malformed bodies, rules past their bounds, unquoted non-ASCII, bad
    /// keys, too many records, money past its bound), 5/s; each must be answered 4xx.
    Hostile,
}

impl Class {
    const ALL: [Class; 7] = [
        Class::Customer,
        Class::Me,
        Class::Ingest,
        Class::Segment,
        Class::Preview,
        Class::Analytics,
        Class::Hostile,
    ];

    fn per_second(self) -> f64 {
        match self {
            Class::Customer => 40.0,
            Class::Me => 10.0,
            Class::Ingest => 10.0,
            Class::Segment => 2.0,
            Class::Preview => 1.0,
            Class::Analytics => 0.1,
            Class::Hostile => 5.0,
        }
    }
}

/// One class's latencies in one stretch of time.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Seconds from the start of the mixed load to the window's start.
    pub from_s: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered otherwise than expected (or not at all).
    pub failures: u64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// One class over the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    /// The class.
    pub class: Class,
    /// Alone, before the mixed load.
    pub idle: Window,
    /// Under the mixed load, window by window.
    pub windows: Vec<Window>,
    /// The highest window p99 over the idle p99.
    pub worst_ratio: f64,
}

/// What a soak measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Seconds of mixed load.
    pub seconds: u64,
    /// The server's resident memory, MiB, sampled every 10 s: (seconds from the start of the
    /// mixed load, MiB).
    pub rss_mib: Vec<(u64, f64)>,
    /// Each class.
    pub classes: Vec<ClassReport>,
    /// Subscription messages the websocket subscribers received.
    pub subscription_messages: u64,
    /// Times a subscriber's connection closed and was opened again.
    pub subscriber_reconnects: u64,
    /// Records answered `accepted` or `duplicate`.
    pub records_accepted: u64,
    /// Of them, those missing from the store after the server was killed.
    pub records_lost: u64,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "mixed load: {} s", self.seconds)?;
        let curve: Vec<String> = self
            .rss_mib
            .iter()
            .map(|(s, m)| format!("{s}s:{m:.0}"))
            .collect();
        writeln!(f, "server RSS (MiB): {}", curve.join(" "))?;
        for c in &self.classes {
            let windows: Vec<String> = c
                .windows
                .iter()
                .map(|w| format!("{:.1}", w.p99_ms))
                .collect();
            let failures: u64 = c.windows.iter().map(|w| w.failures).sum();
            let requests: u64 = c.windows.iter().map(|w| w.requests).sum();
            writeln!(
                f,
                "{:?}: idle p99 {:.1} ms ({} requests); under load {} requests, {} failures, p99 per window {} ms; worst/idle {:.2}",
                c.class, c.idle.p99_ms, c.idle.requests, requests, failures, windows.join(" "), c.worst_ratio
            )?;
        }
        writeln!(
            f,
            "subscribers: {} messages, {} reconnects",
            self.subscription_messages, self.subscriber_reconnects
        )?;
        write!(
            f,
            "records accepted: {}, lost after kill -9: {}",
            self.records_accepted, self.records_lost
        )
    }
}

/// A sample: class, seconds from the start of its phase, latency, whether it was as expected.
type Sample = (Class, f64, Duration, bool);

/// What the load loops share.
struct Load {
    client: reqwest::Client,
    base: String,
    viewer: String,
    analyst: String,
    ingest: String,
    customers: Vec<String>,
    samples: Mutex<Vec<Sample>>,
    accepted: Mutex<Vec<String>>,
    sequence: std::sync::atomic::AtomicU64,
    /// The replayed pools (empty when every request sends new records).
    replayed_events: Vec<String>,
    replayed_batches: Vec<Value>,
}

impl Load {
    async fn graphql(&self, secret: &str, query: &str, variables: Value) -> Option<(u16, Value)> {
        let response = self
            .client
            .post(format!("{}/graphql", self.base))
            .bearer_auth(secret)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    fn ok(answer: &Option<(u16, Value)>) -> bool {
        matches!(answer, Some((200, body)) if body.get("errors").is_none())
    }

    fn refused(answer: &Option<(u16, Value)>) -> bool {
        match answer {
            Some((status, body)) => {
                (400..500).contains(status) || body["errors"][0]["extensions"]["code"].is_string()
            }
            None => false,
        }
    }

    fn next(&self) -> u64 {
        self.sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn order(&self, phone: u64) -> Value {
        let n = self.next();
        json!({
            "event_id": uuid::Uuid::now_v7().to_string(),
            "type": "order_placed",
            "channel": "web",
            "source": "soak",
            "occurred_at": chrono::Utc::now().to_rfc3339(),
            "identifiers": {"phone": format!("139{phone:08}")},
            "order_id": format!("soak-{n}"),
            "currency": "CNY",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 1990}]
        })
    }

    /// Ten new orders as an NDJSON body.
    fn orders(&self) -> String {
        let phone = rand::thread_rng().gen_range(0..50_000u64);
        (0..10)
            .map(|i| format!("{}\n", self.order(phone + i)))
            .collect()
    }

    /// Five new Segment messages as a batch.
    fn segment_batch(&self) -> Value {
        let batch: Vec<Value> = (0..5)
            .map(|_| {
                json!({
                    "type": "track",
                    "messageId": uuid::Uuid::new_v4().to_string(),
                    "userId": format!("soak-user-{}", self.next() % 20_000),
                    "event": "Coupon Viewed",
                    "timestamp": chrono::Utc::now().to_rfc3339(),
                    "context": {"library": {"name": "analytics-python"}}
                })
            })
            .collect();
        json!({"batch": batch})
    }

    /// Fills the replayed pools.
    fn with_replayed_pools(mut self) -> Self {
        self.replayed_events = (0..REPLAYED_BODIES).map(|_| self.orders()).collect();
        self.replayed_batches = (0..REPLAYED_BODIES / 5)
            .map(|_| self.segment_batch())
            .collect();
        self
    }

    fn keep_accepted(&self, body: &Value) {
        let ids = body["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| matches!(r["status"].as_str(), Some("accepted" | "duplicate")))
            .filter_map(|r| r["event_id"].as_str().map(str::to_owned));
        if let Ok(mut accepted) = self.accepted.lock() {
            accepted.extend(ids);
        }
    }

    /// Sends one request of `class`; whether it was answered as expected.
    async fn request(&self, class: Class) -> bool {
        match class {
            Class::Customer => {
                let id = {
                    let mut rng = rand::thread_rng();
                    self.customers[rng.gen_range(0..self.customers.len())].clone()
                };
                let answer = self
                    .graphql(
                        &self.viewer,
                        "query($id: ID!) { customer(id: $id) { id tier stage orders revenue { minor } tags segments } }",
                        json!({"id": id}),
                    )
                    .await;
                Self::ok(&answer)
            }
            Class::Me => Self::ok(&self.graphql(&self.viewer, "{ me { role } }", json!({})).await),
            Class::Ingest => {
                let body = if self.replayed_events.is_empty() {
                    self.orders()
                } else {
                    let i = rand::thread_rng().gen_range(0..self.replayed_events.len());
                    self.replayed_events[i].clone()
                };
                let Ok(response) = self
                    .client
                    .post(format!("{}/v1/events", self.base))
                    .bearer_auth(&self.ingest)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                else {
                    return false;
                };
                if !response.status().is_success() {
                    return false;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return false;
                };
                self.keep_accepted(&body);
                body["accepted"].as_u64().unwrap_or(0) + body["duplicates"].as_u64().unwrap_or(0)
                    == 10
            }
            Class::Segment => {
                let batch = if self.replayed_batches.is_empty() {
                    self.segment_batch()
                } else {
                    let i = rand::thread_rng().gen_range(0..self.replayed_batches.len());
                    self.replayed_batches[i].clone()
                };
                let Ok(response) = self
                    .client
                    .post(format!("{}/v1/batch", self.base))
                    .basic_auth(WRITE_KEY, Some(""))
                    .json(&batch)
                    .send()
                    .await
                else {
                    return false;
                };
                if !response.status().is_success() {
                    return false;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return false;
                };
                self.keep_accepted(&body);
                body["accepted"].as_u64().unwrap_or(0) + body["duplicates"].as_u64().unwrap_or(0)
                    == 5
            }
            Class::Preview => Self::ok(
                &self
                    .graphql(
                        &self.analyst,
                        "query($rule: String!) { previewSegment(rule: $rule) { size } }",
                        json!({"rule": "orders >= 2 and count(order_placed) in last 365 days >= 1"}),
                    )
                    .await,
            ),
            Class::Analytics => Self::ok(
                &self
                    .graphql(
                        &self.analyst,
                        "{ analytics { cohorts(period: MONTH) { cohort customers } lifetimeValue(first: 5) { bgNbd { r alpha a b } } } }",
                        json!({}),
                    )
                    .await,
            ),
            Class::Hostile => self.hostile().await,
        }
    }

    /// One hostile request, chosen in turn; answered as expected when refused (4xx, or a
    /// GraphQL error with a code, or a record rejected by name).
    async fn hostile(&self) -> bool {
        let n = self.next();
        let post = |path: &str| self.client.post(format!("{}{path}", self.base));
        match n % 8 {
            0 => {
                let rule = format!("{}orders > 1{}", "(".repeat(10_000), ")".repeat(10_000));
                Self::refused(
                    &self
                        .graphql(
                            &self.viewer,
                            "query($rule: String!) { previewSegment(rule: $rule) { size } }",
                            json!({"rule": rule}),
                        )
                        .await,
                )
            }
            1 => Self::refused(
                &self
                    .graphql(
                        &self.viewer,
                        "query($rule: String!) { previewSegment(rule: $rule) { size } }",
                        json!({"rule": "city = 上海"}),
                    )
                    .await,
            ),
            2 => {
                let body = "0\n".repeat(20_000);
                let sent = post("/v1/events")
                    .bearer_auth(&self.ingest)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                sent.is_ok_and(|r| r.status().is_client_error())
            }
            3 => post("/v1/events")
                .bearer_auth(&self.ingest)
                .header("content-type", "application/json")
                .body("[{\"type\": ")
                .send()
                .await
                .is_ok_and(|r| r.status().is_client_error()),
            4 => post("/v1/batch")
                .basic_auth("not-a-write-key", Some(""))
                .json(&json!({"batch": []}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_client_error()),
            5 => post("/v1/events")
                .header("content-type", "application/json")
                .body("[]")
                .send()
                .await
                .is_ok_and(|r| r.status().is_client_error()),
            6 => {
                // A line priced past the bound: refused by name, kept in the quarantine.
                let mut record = self.order(99_999_999);
                record["items"] = json!([{"sku": "X", "quantity": 4, "unit_price_minor": 4_611_686_018_427_387_909_i64}]);
                let Ok(response) = post("/v1/events")
                    .bearer_auth(&self.ingest)
                    .json(&json!([record]))
                    .send()
                    .await
                else {
                    return false;
                };
                let body: Value = response.json().await.unwrap_or(Value::Null);
                body["rejected"] == 1
            }
            _ => {
                let deep = format!("{}{}", "{ me ".repeat(200), "}".repeat(200));
                Self::refused(&self.graphql(&self.viewer, &deep, json!({})).await)
            }
        }
    }
}

/// Sends requests of `class` at its rate until `until`, recording each against `started`.
async fn drive(load: Arc<Load>, class: Class, started: Instant, until: Instant) {
    let period = Duration::from_secs_f64(1.0 / class.per_second());
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        let load = Arc::clone(&load);
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = load.request(class).await;
            let sample = (class, (sent - started).as_secs_f64(), sent.elapsed(), ok);
            if let Ok(mut samples) = load.samples.lock() {
                samples.push(sample);
            }
        }));
    }
    for request in requests {
        let _ = request.await;
    }
}

/// Holds a `customerUpdated` subscription open until `until`, opening it again when it closes;
/// returns (messages, reconnects).
async fn subscribe(url: String, secret: String, until: Instant) -> (u64, u64) {
    let (mut messages, mut reconnects) = (0u64, 0u64);
    let mut first = true;
    while Instant::now() < until {
        if !first {
            reconnects += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        first = false;
        let Ok(mut request) = url.as_str().into_client_request() else {
            return (messages, reconnects);
        };
        if let Ok(protocol) = "graphql-transport-ws".parse() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol);
        }
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
            continue;
        };
        let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {secret}")}});
        let subscribe = json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { customerUpdated { customer position } }"}});
        if socket
            .send(Message::Text(init.to_string().into()))
            .await
            .is_err()
            || socket
                .send(Message::Text(subscribe.to_string().into()))
                .await
                .is_err()
        {
            continue;
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await {
                Err(_) => return (messages, reconnects),
                Ok(Some(Ok(Message::Text(text)))) => {
                    if text.contains("\"next\"") {
                        messages += 1;
                    }
                }
                Ok(Some(Ok(Message::Ping(p)))) => {
                    let _ = socket.send(Message::Pong(p)).await;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
            }
        }
    }
    (messages, reconnects)
}

fn p99(latencies: &mut [Duration]) -> f64 {
    latencies.sort();
    latencies
        .get(((latencies.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
}

fn window(from_s: u64, samples: &[&Sample]) -> Window {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.2).collect();
    Window {
        from_s,
        requests: samples.len() as u64,
        failures: samples.iter().filter(|s| !s.3).count() as u64,
        p99_ms: p99(&mut latencies),
    }
}

/// A server child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the soak described by `config`.
pub async fn run_soak(config: SoakConfig) -> anyhow::Result<SoakReport> {
    let store = EventStore::connect(&config.database_url)
        .await
        .context("cannot open the store")?;
    let customers: Vec<String> = store
        .live_customer_page(None, 20_000)
        .await
        .context("cannot read customer ids")?
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    anyhow::ensure!(
        !customers.is_empty(),
        "the store has no profiles: load a demo first (patron demo)"
    );
    let mut secrets = BTreeMap::new();
    for role in ["viewer", "analyst", "ingest"] {
        let secret = new_secret();
        store
            .create_api_key(
                &format!("soak:{role}"),
                role,
                &secret_hash(&secret),
                chrono::Utc::now(),
            )
            .await
            .context("cannot create the soak's keys")?;
        secrets.insert(role, secret);
    }
    store.close().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port")?
        .port();
    let address = format!("127.0.0.1:{port}");
    let child = Child(
        std::process::Command::new(&config.binary)
            .args([
                "--database-url",
                &config.database_url,
                "serve",
                "--address",
                &address,
                "--write-key",
                WRITE_KEY,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start the server")?,
    );
    let pid = child.0.id();
    let base = format!("http://{address}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build an HTTP client")?;
    let ready = Instant::now();
    loop {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(300),
            "the server did not answer within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secret = |role: &str| secrets.get(role).cloned().unwrap_or_default();
    let mut load = Load {
        client,
        base: base.clone(),
        viewer: secret("viewer"),
        analyst: secret("analyst"),
        ingest: secret("ingest"),
        customers,
        samples: Mutex::new(Vec::new()),
        accepted: Mutex::new(Vec::new()),
        sequence: std::sync::atomic::AtomicU64::new(rand::random::<u32>().into()),
        replayed_events: Vec::new(),
        replayed_batches: Vec::new(),
    };
    if config.replay {
        load = load.with_replayed_pools();
    }
    let load = Arc::new(load);

    // Each class alone.
    let mut idle = BTreeMap::new();
    for class in Class::ALL {
        let started = Instant::now();
        let seconds = if class == Class::Analytics {
            config.idle_seconds.max(30)
        } else {
            config.idle_seconds
        };
        drive(
            Arc::clone(&load),
            class,
            started,
            started + Duration::from_secs(seconds),
        )
        .await;
        let samples = std::mem::take(
            &mut *load
                .samples
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?,
        );
        let of: Vec<&Sample> = samples.iter().collect();
        idle.insert(class, window(0, &of));
    }

    // Everything at once.
    let started = Instant::now();
    let until = started + Duration::from_secs(config.seconds);
    let mut tasks = Vec::new();
    for class in Class::ALL {
        tasks.push(tokio::spawn(drive(
            Arc::clone(&load),
            class,
            started,
            until,
        )));
    }
    let ws_url = format!("ws://{address}/graphql/ws");
    let mut subscribers = Vec::new();
    for _ in 0..config.subscribers {
        subscribers.push(tokio::spawn(subscribe(
            ws_url.clone(),
            load.viewer.clone(),
            until,
        )));
    }
    let mut rss = Vec::new();
    while Instant::now() < until {
        rss.push((
            started.elapsed().as_secs(),
            super::rss_mib_of(&pid.to_string()),
        ));
        tokio::time::sleep(
            Duration::from_secs(10).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    for task in tasks {
        task.await.context("a load loop stopped")?;
    }
    let (mut messages, mut reconnects) = (0, 0);
    for subscriber in subscribers {
        let (m, r) = subscriber.await.context("a subscriber stopped")?;
        messages += m;
        reconnects += r;
    }
    rss.push((
        started.elapsed().as_secs(),
        super::rss_mib_of(&pid.to_string()),
    ));
    // Killed as a crash would.
    drop(child);

    let samples = std::mem::take(
        &mut *load
            .samples
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let mut classes = Vec::new();
    for class in Class::ALL {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.0 == class).collect();
        let mut windows = Vec::new();
        let mut from = 0;
        while from < config.seconds {
            let to = from + config.window_seconds;
            let inside: Vec<&Sample> = of
                .iter()
                .copied()
                .filter(|s| s.1 >= from as f64 && s.1 < to as f64)
                .collect();
            windows.push(window(from, &inside));
            from = to;
        }
        let idle = idle.remove(&class).unwrap_or(Window {
            from_s: 0,
            requests: 0,
            failures: 0,
            p99_ms: 0.0,
        });
        let worst = windows.iter().map(|w| w.p99_ms).fold(0.0, f64::max);
        classes.push(ClassReport {
            class,
            worst_ratio: worst / idle.p99_ms.max(1e-9),
            idle,
            windows,
        });
    }

    let accepted: Vec<String> = std::mem::take(
        &mut *load
            .accepted
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let ids: Vec<EventId> = accepted
        .iter()
        .filter_map(|id| uuid::Uuid::parse_str(id).ok().map(EventId::from_uuid))
        .collect();
    let store = EventStore::connect(&config.database_url)
        .await
        .context("cannot open the store after the run")?;
    let mut found = 0u64;
    for chunk in ids.chunks(1_000) {
        found += store
            .find_events(chunk)
            .await
            .context("cannot look the records up")?
            .len() as u64;
    }
    store.close().await;
    Ok(SoakReport {
        seconds: config.seconds,
        rss_mib: rss,
        classes,
        subscription_messages: messages,
        subscriber_reconnects: reconnects,
        records_accepted: ids.len() as u64,
        records_lost: (ids.len() as u64).saturating_sub(found),
    })
}
