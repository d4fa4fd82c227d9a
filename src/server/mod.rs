//! The HTTP server: ingestion (`POST /v1/events`) and health checks, on actix-web; while it
//! runs, the profile projection follows the log.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one, as the tests do) and
//! [`Application::run_until_stopped`] serves until SIGINT or SIGTERM, finishing the requests in
//! flight first: a record is answered `accepted` only once it is committed, so stopping the
//! server loses no accepted event.

mod events;
mod health;
mod segment;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::ingest::{CommitQueue, Ingestor};
use crate::projection::ProfileProjection;
use patron_projections::value::TierRules;

/// Events the server's profile projection applies per batch.
const PROJECTION_BATCH: usize = 20_000;

pub use events::{EventsResponse, MAX_BODY_BYTES, MAX_RECORDS};

/// A bound, ready-to-run server.
pub struct Application {
    port: u16,
    server: Server,
    /// The profile projection following the log while the server runs.
    projection: tokio::task::JoinHandle<()>,
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Commits the requests' batches, several requests per transaction when they arrive
    /// together.
    pub commits: CommitQueue,
    /// Write keys accepted by the Segment-shaped endpoints.
    pub write_keys: Vec<String>,
}

impl Application {
    /// Binds `address` (for example `127.0.0.1:8080`, or `127.0.0.1:0` for a free port) and
    /// prepares the server. Must be called within a Tokio runtime, which runs the committing
    /// task.
    pub fn build(ingestor: Ingestor, address: &str) -> std::io::Result<Self> {
        Self::build_with_write_keys(ingestor, address, Vec::new())
    }

    /// Like [`Application::build`], accepting `write_keys` on the Segment-shaped endpoints.
    pub fn build_with_write_keys(
        ingestor: Ingestor,
        address: &str,
        write_keys: Vec<String>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        let port = listener.local_addr()?.port();
        let projection = tokio::spawn(
            ProfileProjection::new(ingestor.store().clone(), PROJECTION_BATCH)
                .with_segments(TierRules::default().currency)
                .follow(),
        );
        let state = Data::new(AppState {
            commits: CommitQueue::start(ingestor),
            write_keys,
        });
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
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
        })
        .listen(listener)?
        .shutdown_timeout(30)
        .run();
        Ok(Self {
            port,
            server,
            projection,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped by a signal, finishing the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.projection.abort();
        served
    }
}
