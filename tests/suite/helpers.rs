//! One store per test, on the backend the test module names.

use patron::store::scratch::ScratchPostgres;
use patron::store::{EventStore, StoreOptions};
use patron_domain::{EventId, Metadata, NewEvent, StreamId};
use serde_json::json;
use tempfile::TempDir;

/// The variable naming a PostgreSQL server for the tests; without it they are skipped.
pub const POSTGRES_ENV: &str = "PATRON_TEST_POSTGRES_URL";

/// The database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty store that the test owns.
pub struct TestStore {
    pub store: EventStore,
    url: String,
    options: StoreOptions,
    _dir: Option<TempDir>,
    scratch: Option<ScratchPostgres>,
}

impl TestStore {
    /// A fresh store, or `None` when the backend is PostgreSQL and no server is configured.
    pub async fn open(backend: Backend) -> Option<Self> {
        Self::open_with(backend, StoreOptions::default()).await
    }

    /// A fresh store with options.
    pub async fn open_with(backend: Backend, options: StoreOptions) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("patron.db").display());
                let store = EventStore::connect_with(&url, options.clone())
                    .await
                    .expect("open SQLite store");
                Some(Self {
                    store,
                    url,
                    options,
                    _dir: Some(dir),
                    scratch: None,
                })
            }
            Backend::Postgres => {
                let Ok(server) = std::env::var(POSTGRES_ENV) else {
                    eprintln!("skipped: set {POSTGRES_ENV} to run the PostgreSQL tests");
                    return None;
                };
                let scratch = ScratchPostgres::create(&server, "patron_test")
                    .await
                    .expect("create scratch database");
                let url = scratch.url().to_owned();
                let store = EventStore::connect_with(&url, options.clone())
                    .await
                    .expect("open PostgreSQL store");
                Some(Self {
                    store,
                    url,
                    options,
                    _dir: None,
                    scratch: Some(scratch),
                })
            }
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file, when the store is SQLite.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.url
            .strip_prefix("sqlite://")
            .map(std::path::PathBuf::from)
    }

    /// A second, independent handle on the same database, as another process would open it.
    pub async fn reopen(&self) -> EventStore {
        EventStore::connect_with(&self.url, self.options.clone())
            .await
            .expect("reopen store")
    }

    /// Another handle on the same database with default options (no upcasters).
    pub async fn reopen_plain(&self) -> EventStore {
        EventStore::connect(&self.url).await.expect("reopen store")
    }

    /// Closes the store and drops its database.
    pub async fn finish(self) {
        self.store.close().await;
        if let Some(scratch) = self.scratch {
            scratch
                .drop_database()
                .await
                .expect("drop scratch database");
        }
    }
}

/// Runs each named test function on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = $crate::helpers::TestStore::open($crate::helpers::Backend::Sqlite)
                        .await
                        .expect("SQLite is always available");
                    super::$name(&store).await;
                    store.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) =
                        $crate::helpers::TestStore::open($crate::helpers::Backend::Postgres).await
                    else {
                        return;
                    };
                    super::$name(&store).await;
                    store.finish().await;
                }
            )*
        }
    };
}

/// A stream id from text known to be valid.
pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid stream id")
}

/// A touchpoint-like event with a recognisable payload.
pub fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "screen_viewed",
        &json!({"n": n, "screen": format!("product/{n}")}),
    )
    .expect("valid event")
}

/// An event with a given idempotency key.
pub fn event_with_id(n: u64, id: EventId) -> NewEvent {
    event(n).with_id(id)
}

/// Metadata with every field set.
pub fn full_metadata() -> Metadata {
    Metadata {
        source: Some("pos-shanghai".into()),
        channel: Some("store".into()),
        correlation_id: Some(uuid::Uuid::new_v4()),
        causation_id: Some(uuid::Uuid::new_v4()),
        actor: Some("operator:li.na".into()),
        reason: Some("manual correction of a wrong merge".into()),
    }
}

/// The master key the tests' ingestors wrap customer keys with.
pub fn master_key() -> patron_domain::privacy::MasterKey {
    patron_domain::privacy::MasterKey::parse(&"5a".repeat(32)).expect("64 hex digits")
}
