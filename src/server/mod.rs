//! The HTTP server on actix-web: the GraphQL API (`/graphql`, GraphiQL, subscriptions on
//! `/graphql/ws`), ingestion (`POST /v1/events` and the Segment-shaped endpoints), health
//! (`/healthz`, `/readyz`) and metrics (`/metrics`); while it runs, the profile projection
//! follows the log and announces its changes to subscribers.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one, as the tests do) and
//! [`Application::run_until_stopped`] serves until SIGINT or SIGTERM, finishing the requests in
//! flight first: a record is answered `accepted` only once it is committed, so stopping the
//! server loses no accepted event.

mod api;
mod edge;
pub(crate) mod events;
mod graphql;
mod health;
mod housekeeping;
mod metrics;
pub(crate) mod segment;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use patron_graphql::{Backend, PatronSchema};
use tokio::sync::broadcast;
use tracing_actix_web::TracingLogger;

use crate::analytics::{AnalyticsGate, AnalyticsLimits};
use crate::ingest::{CommitQueue, IngestError, IngestReport, Ingestor, PreparedBatch};
use crate::population::ResidentPopulation;
use crate::projection::ProfileProjection;
use crate::store::EventStore;
use patron_projections::value::TierRules;

pub use api::{new_secret, secret_hash, StoreBackend, ANNOUNCEMENT_BUFFER};
pub use graphql::{SocketLimits, MAX_REQUEST_VALUES, MAX_SOCKET_MESSAGE_BYTES, REQUEST_TIMEOUT};
pub use housekeeping::Housekeeping;
pub use metrics::Metrics;

/// Events the server's profile projection applies per batch.
const PROJECTION_BATCH: usize = 20_000;

pub use events::{EventsResponse, MAX_BODY_BYTES, MAX_RECORDS};

/// How a server is set up beyond its address.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Write keys accepted by the Segment-shaped endpoints.
    pub write_keys: Vec<String>,
    /// `/readyz` answers 503 while the profiles lag the log by more than this many seconds.
    pub ready_lag_seconds: i64,
    /// Limits on the subscription sockets of `/graphql/ws`.
    pub sockets: SocketLimits,
    /// How long a caller whose key was accepted may take to send its body (408 `BODY_TIMEOUT`
    /// after that).
    pub body_timeout: std::time::Duration,
    /// How many analyses run at once, and how long one waits for its turn.
    pub analytics: AnalyticsLimits,
    /// Identifier lookups each key may make per hour, by role (counted in this process).
    pub lookup_budget: patron_graphql::loader::LookupAllowance,
    /// The currency revenue and value-tier rules are judged in: the scoring rules' (the same
    /// one the hourly segment refresh judges with, so memberships do not flip between the two).
    pub currency: String,
    /// The hourly scoring, segment refresh and quarantine expiry, if the server does them
    /// (`patron serve` does; tests and benchmarks leave them out).
    pub housekeeping: Option<Housekeeping>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            write_keys: Vec::new(),
            ready_lag_seconds: DEFAULT_READY_LAG_SECONDS,
            sockets: SocketLimits::default(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            analytics: AnalyticsLimits::default(),
            lookup_budget: patron_graphql::loader::LookupAllowance::default(),
            currency: TierRules::default().currency,
            housekeeping: None,
        }
    }
}

/// The default time a caller may take to send its body once its key is accepted: a 10 MiB
/// body at 2 Mbit/s.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// The default bound on projection lag for readiness, seconds: the projection defers to
/// ingestion for up to 30 s under sustained load.
pub const DEFAULT_READY_LAG_SECONDS: i64 = 120;

/// A bound, ready-to-run server.
pub struct Application {
    port: u16,
    server: Server,
    /// The profile projection following the log while the server runs; stopped with it, or
    /// when the server is dropped unstarted or aborted.
    projection: StopOnDrop,
    /// Reads the customers' activity for analytics into memory at start, so the first
    /// analytics request does not pay for it; stopped with the server.
    warm_up: StopOnDrop,
    /// The hourly housekeeping, stopped with the server.
    housekeeping: Vec<StopOnDrop>,
}

/// A background task stopped when its handle is dropped.
struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The store, for the API keys callers present.
    pub store: EventStore,
    /// Commits the requests' batches, several requests per transaction when they arrive
    /// together.
    pub commits: CommitQueue,
    /// Write keys accepted by the Segment-shaped endpoints.
    pub write_keys: Vec<String>,
    /// The GraphQL schema.
    pub schema: PatronSchema,
    /// What the schema reads and writes through.
    pub backend: Arc<dyn Backend>,
    /// Counters and latencies.
    pub metrics: Arc<Metrics>,
    /// The live profile projection (for its lag).
    pub projection: ProfileProjection,
    /// The readiness bound on projection lag, seconds.
    pub ready_lag_seconds: i64,
    /// How long a known caller may take to send its body.
    pub body_timeout: std::time::Duration,
    /// The open subscription sockets and their limits.
    pub sockets: Arc<graphql::Sockets>,
    /// Said at start and in `/readyz` when the privacy keys are kept in the store rather than
    /// given by configuration.
    pub key_warning: Option<String>,
}

/// A request's body, read only up to [`MAX_BODY_BYTES`] and within `timeout`: called once the
/// caller is known, so an unauthenticated client cannot make the server buffer a large body,
/// and a known one that stops sending half-way holds its buffer no longer than `timeout`.
pub(crate) async fn read_body(
    payload: web::Payload,
    request: &actix_web::HttpRequest,
    timeout: std::time::Duration,
) -> Result<web::Bytes, actix_web::HttpResponse> {
    use actix_web::http::StatusCode;
    let error = |status: StatusCode, code: &str, message: String| {
        edge::ApiError::new(status, code, message).rest()
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let encoding = request
        .headers()
        .get(actix_web::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let compression = match encoding.as_str() {
        "" | "identity" => None,
        "gzip" | "x-gzip" => Some(Compression::Gzip),
        "deflate" => Some(Compression::Deflate),
        other => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_ENCODING",
                format!("the body's Content-Encoding {other:?} is not gzip, deflate or identity"),
            ))
        }
    };
    // The body as sent (compressed or not) is bounded while it arrives; the server's own
    // decompression (actix-web's would inflate a whole network chunk at once, unbounded) is
    // not used.
    let body = match tokio::time::timeout(timeout, payload.to_bytes_limited(MAX_BODY_BYTES)).await {
        Ok(Ok(Ok(body))) => body,
        Ok(Ok(Err(e))) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "MALFORMED_BODY",
                format!("the body could not be read: {e}"),
            ))
        }
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "BODY_TIMEOUT",
                format!("the body did not arrive within {} s", timeout.as_secs_f64()),
            ))
        }
    };
    let Some(compression) = compression else {
        return Ok(body);
    };
    // Decompressed a block at a time, never past the bound, on a blocking thread.
    let inflated = tokio::task::spawn_blocking(move || inflate(&body, compression)).await;
    match inflated {
        Ok(Ok(Some(body))) => Ok(body.into()),
        Ok(Ok(None)) => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_BODY",
            format!("the body does not decompress: {e}"),
        )),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            format!("the body could not be decompressed: {e}"),
        )),
    }
}

/// How a body is compressed.
#[derive(Clone, Copy, Debug)]
enum Compression {
    Gzip,
    Deflate,
}

/// `body` decompressed, or `None` once it passes [`MAX_BODY_BYTES`] (reading stops there).
fn inflate(body: &[u8], compression: Compression) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Compression::Deflate => Box::new(flate2::read::ZlibDecoder::new(body)),
    };
    let limit = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out)?;
    Ok((out.len() <= MAX_BODY_BYTES).then_some(out))
}

impl AppState {
    /// Commits a batch prepared by the caller through the commit queue, counting its records.
    pub(crate) async fn commit(&self, batch: PreparedBatch) -> Result<IngestReport, IngestError> {
        let report = self.commits.submit(batch).await?;
        self.metrics.count_ingested(&report);
        Ok(report)
    }
}

impl Application {
    /// Binds `address` (for example `127.0.0.1:8080`, or `127.0.0.1:0` for a free port) and
    /// prepares the server. Must be called within a Tokio runtime, which runs the committing
    /// task.
    pub fn build(ingestor: Ingestor, address: &str) -> std::io::Result<Self> {
        Self::build_with(ingestor, address, ServerOptions::default())
    }

    /// Like [`Application::build`], accepting `write_keys` on the Segment-shaped endpoints.
    pub fn build_with_write_keys(
        ingestor: Ingestor,
        address: &str,
        write_keys: Vec<String>,
    ) -> std::io::Result<Self> {
        Self::build_with(
            ingestor,
            address,
            ServerOptions {
                write_keys,
                ..ServerOptions::default()
            },
        )
    }

    /// Like [`Application::build`], set up by `options`.
    pub fn build_with(
        ingestor: Ingestor,
        address: &str,
        options: ServerOptions,
    ) -> std::io::Result<Self> {
        let key_warning = health::key_warning(ingestor.keys_kept_in_store());
        if let Some(warning) = &key_warning {
            tracing::warn!("{warning}");
        }
        let listener = TcpListener::bind(address)?;
        let port = listener.local_addr()?.port();
        let currency = options.currency.clone();
        let (announcements, _) = broadcast::channel(ANNOUNCEMENT_BUFFER);
        let population = Arc::new(ResidentPopulation::new(ingestor.store().clone()));
        let live = ProfileProjection::new(ingestor.store().clone(), PROJECTION_BATCH)
            .with_announcements(announcements.clone())
            .with_population(population.clone())
            .with_segments(currency.clone());
        let projection = StopOnDrop(tokio::spawn(live.clone().follow()));
        let gate = AnalyticsGate::new(options.analytics);
        let metrics = Metrics::new(gate.clone()).map_err(std::io::Error::other)?;
        let key_store = ingestor.store().clone();
        let housekeeping = options
            .housekeeping
            .clone()
            .map(|h| h.start(&key_store))
            .unwrap_or_default()
            .into_iter()
            .map(StopOnDrop)
            .collect();
        let commits = CommitQueue::start(ingestor);
        let store_backend = Arc::new(
            StoreBackend::new(
                commits.clone(),
                currency,
                announcements,
                metrics.clone(),
                population,
                gate,
            )
            .with_lookup_allowance(options.lookup_budget),
        );
        let warming = store_backend.clone();
        let warm_up = StopOnDrop(tokio::spawn(async move { warming.warm_up().await }));
        let backend: Arc<dyn Backend> = store_backend;
        let state = Data::new(AppState {
            store: key_store,
            commits,
            write_keys: options.write_keys,
            schema: patron_graphql::schema(backend.clone()),
            backend,
            metrics,
            projection: live,
            ready_lag_seconds: options.ready_lag_seconds,
            body_timeout: options.body_timeout,
            sockets: graphql::Sockets::new(options.sockets),
            key_warning,
        });
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(metrics::track))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .app_data(web::JsonConfig::default().limit(MAX_BODY_BYTES))
                .route("/graphql", web::post().to(graphql::post))
                .route("/graphql", web::get().to(graphql::graphiql))
                .route("/graphql/ws", web::get().to(graphql::websocket))
                .route("/v1/events", web::post().to(events::post_events))
                .route(
                    "/v1/batch",
                    web::post().to(|s, r, b| segment::handle("batch", s, r, b)),
                )
                .route(
                    "/v1/identify",
                    web::post().to(|s, r, b| segment::handle("identify", s, r, b)),
                )
                .route(
                    "/v1/track",
                    web::post().to(|s, r, b| segment::handle("track", s, r, b)),
                )
                .route(
                    "/v1/page",
                    web::post().to(|s, r, b| segment::handle("page", s, r, b)),
                )
                .route(
                    "/v1/screen",
                    web::post().to(|s, r, b| segment::handle("screen", s, r, b)),
                )
                .route(
                    "/v1/group",
                    web::post().to(|s, r, b| segment::handle("group", s, r, b)),
                )
                .route(
                    "/v1/alias",
                    web::post().to(|s, r, b| segment::handle("alias", s, r, b)),
                )
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(health::readyz))
                .route("/metrics", web::get().to(metrics::metrics))
        })
        .listen(listener)?
        .shutdown_timeout(30)
        .run();
        Ok(Self {
            port,
            server,
            projection,
            warm_up,
            housekeeping,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped by a signal, finishing the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        drop(self.projection);
        drop(self.warm_up);
        drop(self.housekeeping);
        served
    }
}
