//! The event store: Patron's append-only log of domain events, on SQLite or PostgreSQL.
//!
//! Both backends give the same guarantees:
//! - an append names one or more streams, each with an expected version, and is atomic: either
//!   every stream's events are stored or none are;
//! - an event id is stored once; sending it again stores nothing and reports the original;
//! - every event gets a global position, assigned in commit order, so a reader that has seen
//!   position `p` has seen every event before it ([`Subscription`] relies on this);
//! - old payload shapes are upcast on read through the store's [`Upcasters`].

/// Runs `$body` with `$pool` bound to a pool that writes (SQLite's writer, PostgreSQL's pool),
/// on either backend; the SQL uses `$n` placeholders, which both read.
macro_rules! writing {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite(b) => {
                let $pool = b.writer();
                $body
            }
            Backend::Postgres(b) => {
                let $pool = b.pool();
                $body
            }
        }
    };
}

/// Runs `$body` with `$tx` bound to a new writing transaction on either backend (on SQLite it
/// takes the write lock at once: `BEGIN IMMEDIATE`); `$body` commits it.
macro_rules! transaction {
    ($self:expr, $tx:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite(b) => {
                let mut $tx = b.writer().begin_with("BEGIN IMMEDIATE").await?;
                $body
            }
            Backend::Postgres(b) => {
                let mut $tx = b.pool().begin().await?;
                $body
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to a pool that reads (the reading pool of either backend, or
/// the long-read pool for a handle from [`EventStore::long_reads`]).
macro_rules! reading {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite(b) => {
                let $pool = b.reader();
                $body
            }
            Backend::Postgres(b) => {
                let $pool = b.reader();
                $body
            }
        }
    };
}

pub mod access;
mod error;
pub mod identity;
pub mod person;
mod plan;
mod postgres;
pub mod projection;
pub mod quality;
pub mod review;
pub mod scores;
pub mod scratch;
pub mod segments;
mod sqlite;
mod subscription;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use patron_domain::customer::{CustomerId, IndexFold};
use patron_domain::events::is_touchpoint;
use patron_domain::identifier::{Identifier, IdentifierKind};
use patron_domain::{
    EventId, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion, Upcasters,
};
use patron_projections::holdings::Holdings;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

pub use error::{Result, StoreError};
pub use identity::{Erasure, IdentityChanges, IdentityCommit, IdentitySnapshot, QuarantinedRecord};
pub use subscription::Subscription;

/// Which database holds the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// Where an event is in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRef {
    /// Its idempotency key.
    pub event_id: EventId,
    /// Its global position.
    pub position: Position,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: StreamVersion,
}

/// What happened to one event of an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventOutcome {
    /// Stored now, here.
    Appended(EventRef),
    /// Stored before, here: nothing was written.
    Duplicate(EventRef),
}

impl EventOutcome {
    /// Where the event is, whether it was stored now or before.
    pub fn event_ref(&self) -> &EventRef {
        match self {
            Self::Appended(r) | Self::Duplicate(r) => r,
        }
    }
}

/// What happened to one stream of an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamOutcome {
    /// The stream.
    pub stream_id: StreamId,
    /// Its version after the append.
    pub version: StreamVersion,
    /// One outcome per event, in the order given.
    pub events: Vec<EventOutcome>,
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// One per stream, in the order given.
    pub streams: Vec<StreamOutcome>,
    /// The log's last position after the append.
    pub head: Position,
    /// The time stamped on the events stored now.
    pub recorded_at: DateTime<Utc>,
}

impl AppendOutcome {
    /// How many events were stored now.
    pub fn appended(&self) -> usize {
        self.events()
            .filter(|e| matches!(e, EventOutcome::Appended(_)))
            .count()
    }

    /// How many events had been stored before.
    pub fn duplicates(&self) -> usize {
        self.events()
            .filter(|e| matches!(e, EventOutcome::Duplicate(_)))
            .count()
    }

    /// Every event's outcome, stream by stream.
    pub fn events(&self) -> impl Iterator<Item = &EventOutcome> {
        self.streams.iter().flat_map(|s| s.events.iter())
    }
}

/// Tuning for a store connection.
///
/// Each class of work has connections of its own, so that none can take another's: writes
/// (ingestion's commits, the read models' updates) on SQLite's one writing connection or
/// PostgreSQL's writing pool, short reads (a customer, an API key) on the reading pool, and the
/// long reads of analytics on a pool of their own ([`EventStore::long_reads`]).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections for short reads (both backends).
    pub max_connections: u32,
    /// Connections for writes on PostgreSQL (at least 2); SQLite has one writing connection.
    pub write_connections: u32,
    /// Connections for long reads: analytics reading the log (at least 1).
    pub long_read_connections: u32,
    /// How often a caught-up subscription looks for events written by other processes.
    pub poll_interval: Duration,
    /// Steps that bring old payload shapes up to date on read.
    pub upcasters: Arc<Upcasters>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            write_connections: 4,
            long_read_connections: 2,
            poll_interval: Duration::from_millis(200),
            upcasters: Arc::new(Upcasters::new()),
        }
    }
}

/// Counts that describe the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogStats {
    /// The database kind.
    pub backend: BackendKind,
    /// The last position handed out (0 for an empty log).
    pub head: Position,
    /// Events stored.
    pub events: u64,
    /// Streams with at least one event.
    pub streams: u64,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteLog),
    Postgres(postgres::PostgresLog),
}

/// A handle on the event log; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct EventStore {
    backend: Backend,
    upcasters: Arc<Upcasters>,
    head: Arc<watch::Sender<Position>>,
    poll_interval: Duration,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl EventStore {
    /// Opens the store at `url` (`sqlite://PATH`, created if missing, or `postgres://...`) and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Opens the store with explicit options.
    #[tracing::instrument(name = "store.connect", skip_all, fields(url = %redact_url(url)))]
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteLog::open(url, &options).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres(postgres::PostgresLog::open(url, &options).await?)
        } else {
            return Err(StoreError::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let head = match &backend {
            Backend::Sqlite(b) => b.head().await?,
            Backend::Postgres(b) => b.head().await?,
        };
        Ok(Self {
            backend,
            upcasters: options.upcasters,
            head: Arc::new(watch::Sender::new(head)),
            poll_interval: options.poll_interval,
        })
    }

    /// A handle on the same store whose reads all use the long-read pool
    /// ([`StoreOptions::long_read_connections`]): for analytics, which read the whole log, so
    /// that they never hold the connections of ingestion or short reads. Meant for reading;
    /// closing the store closes its pools.
    pub fn long_reads(&self) -> Self {
        let backend = match &self.backend {
            Backend::Sqlite(b) => Backend::Sqlite(b.long_reads()),
            Backend::Postgres(b) => Backend::Postgres(b.long_reads()),
        };
        Self {
            backend,
            ..self.clone()
        }
    }

    /// Which database holds the log.
    pub fn kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Appends events to one stream.
    pub async fn append_to_stream(
        &self,
        stream_id: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<StreamOutcome> {
        let mut outcome = self
            .append(vec![StreamAppend::new(stream_id, expected, events)])
            .await?;
        Ok(outcome.streams.remove(0))
    }

    /// Appends to several streams in one transaction: all are stored, or none.
    ///
    /// Events whose id is already stored are reported as duplicates and not written again; a
    /// stream whose events are all duplicates is not version-checked, so a retried append
    /// succeeds. A stream that receives new events must be at its expected version, or the
    /// whole append fails with [`StoreError::Conflict`].
    #[tracing::instrument(name = "store.append", skip_all, fields(streams = appends.len(), events))]
    pub async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome> {
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        tracing::Span::current().record("events", events);
        plan::validate(&appends)?;
        let outcome = match &self.backend {
            Backend::Sqlite(b) => b.append(&appends).await?,
            Backend::Postgres(b) => b.append(&appends).await?,
        };
        self.advance_head(outcome.head);
        Ok(outcome)
    }

    /// Reads the stored events among `event_ids` and the identity graph around `keys` under the
    /// log's write lock, lets `decide` choose what to write, and writes it (events, identity
    /// index changes, and the `quarantine` records refused on the way) in one transaction;
    /// returns the quarantine numbers too. Events whose ids are not among `event_ids` must be
    /// new (such as merge events made by `decide`); a stored one among them fails the commit.
    /// Concurrent identity commits take turns, so every decision sees the graph as the previous
    /// one left it.
    #[tracing::instrument(name = "store.commit_identity", skip_all, fields(events = event_ids.len(), keys = keys.len()))]
    pub async fn commit_identity<T>(
        &self,
        event_ids: &[EventId],
        keys: &[Identifier],
        quarantine: &[QuarantinedRecord],
        decide: impl FnOnce(IdentitySnapshot) -> Result<IdentityCommit<T>>,
    ) -> Result<(AppendOutcome, Vec<u64>, T)> {
        let (outcome, quarantined, value) = match &self.backend {
            Backend::Sqlite(b) => {
                b.commit_identity(event_ids, keys, quarantine, decide)
                    .await?
            }
            Backend::Postgres(b) => {
                b.commit_identity(event_ids, keys, quarantine, decide)
                    .await?
            }
        };
        self.advance_head(outcome.head);
        Ok((outcome, quarantined, value))
    }

    /// The wrapped keys of those of `customers` that have one (an erased customer has none).
    pub async fn customer_keys(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<u8>>> {
        match &self.backend {
            Backend::Sqlite(b) => b.customer_keys(customers).await,
            Backend::Postgres(b) => b.customer_keys(customers).await,
        }
    }

    /// Erases a customer (given by any of its ids, live or merged) in one write transaction:
    /// destroys the keys of the live customer and of every customer merged into it, destroys in
    /// place the sealed part (with its wrapped event key) of the touchpoints at `moved_in` that
    /// lie on other customers' streams (those corrections moved to this customer), removes the
    /// live customer's identity index entries, removes the quarantined records for which
    /// `holds_their_data` is true, and appends the event `event` makes (given the live customer
    /// and every customer whose key is destroyed) to the live customer's stream. Deleted data
    /// is then scrubbed from the files (SQLite: secure delete and an emptied WAL; PostgreSQL:
    /// VACUUM of the tables concerned).
    #[tracing::instrument(name = "store.erase", skip_all, fields(customer = %customer))]
    pub async fn erase(
        &self,
        customer: CustomerId,
        moved_in: &[Position],
        holds_their_data: &(dyn Fn(&str) -> bool + Sync),
        event: impl FnOnce(CustomerId, &[CustomerId]) -> Result<NewEvent>,
    ) -> Result<Erasure> {
        let erasure = match &self.backend {
            Backend::Sqlite(b) => b.erase(customer, moved_in, holds_their_data, event).await?,
            Backend::Postgres(b) => b.erase(customer, moved_in, holds_their_data, event).await?,
        };
        self.advance_head(erasure.position);
        Ok(erasure)
    }

    /// Blanks the raw text of quarantined records received before `before` (the rest of each
    /// row stays); returns how many expired now.
    pub async fn expire_quarantine(&self, before: DateTime<Utc>) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite(b) => b.expire_quarantine(before).await,
            Backend::Postgres(b) => b.expire_quarantine(before).await,
        }
    }

    /// Up to `max` quarantined records numbered after `after_id`, oldest first.
    pub async fn quarantined(&self, after_id: u64, max: usize) -> Result<Vec<QuarantinedRecord>> {
        match &self.backend {
            Backend::Sqlite(b) => b.quarantined(after_id, max).await,
            Backend::Postgres(b) => b.quarantined(after_id, max).await,
        }
    }

    /// The live customer holding a pseudonymous identifier, if any.
    pub async fn holder(&self, key: &Identifier) -> Result<Option<CustomerId>> {
        let sql = "SELECT customer_id FROM identity_index WHERE kind = $1 AND pseudonym = $2";
        let id: Option<Uuid> = reading!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(key.kind.as_str())
                .bind(&key.value)
                .fetch_optional(pool)
                .await?
        });
        Ok(id.map(CustomerId::from_uuid))
    }

    /// The pseudonyms a live customer holds in the identity index.
    pub async fn held_by(&self, customer: CustomerId) -> Result<Vec<Identifier>> {
        let sql = "SELECT kind, pseudonym FROM identity_index WHERE customer_id = $1 \
                   ORDER BY kind, pseudonym";
        let rows: Vec<(String, String)> = reading!(self, pool => {
            sqlx::query_as(sql)
                .bind(customer.as_uuid())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(kind, value)| indexed(kind, value))
            .collect()
    }

    /// The customers merged into `live` (directly or through others).
    pub async fn absorbed_into(&self, live: CustomerId) -> Result<Vec<CustomerId>> {
        let sql = "SELECT absorbed FROM customer_aliases WHERE survivor = $1 ORDER BY absorbed";
        let ids: Vec<Uuid> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_scalar(sql)
                    .bind(live.as_uuid())
                    .fetch_all(b.reader())
                    .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_scalar(sql)
                    .bind(live.as_uuid())
                    .fetch_all(b.pool())
                    .await?
            }
        };
        Ok(ids.into_iter().map(CustomerId::from_uuid).collect())
    }

    /// Whether an operator blocked a pseudonymous identifier.
    pub async fn is_blocked(&self, key: &Identifier) -> Result<bool> {
        let sql = "SELECT 1 FROM blocked_identifiers WHERE kind = $1 AND pseudonym = $2";
        let found: Option<i32> = reading!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(key.kind.as_str())
                .bind(&key.value)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    /// The live customer an id stands for: itself, or the survivor it was merged into.
    pub async fn live_customer(&self, customer: CustomerId) -> Result<CustomerId> {
        let sql = "SELECT survivor FROM customer_aliases WHERE absorbed = $1";
        let survivor: Option<Uuid> = reading!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(customer.as_uuid())
                .fetch_optional(pool)
                .await?
        });
        Ok(survivor.map_or(customer, CustomerId::from_uuid))
    }

    /// Every merged customer with the live customer it resolves to.
    pub async fn aliases(&self) -> Result<HashMap<CustomerId, CustomerId>> {
        let sql = "SELECT absorbed, survivor FROM customer_aliases";
        let pairs: Vec<(Uuid, Uuid)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(pairs
            .into_iter()
            .map(|(a, s)| (CustomerId::from_uuid(a), CustomerId::from_uuid(s)))
            .collect())
    }

    /// Every pseudonym the identity index holds, with its holder.
    pub async fn identity_index(&self) -> Result<Vec<(Identifier, CustomerId)>> {
        let sql = "SELECT kind, pseudonym, customer_id FROM identity_index";
        let rows: Vec<(String, String, Uuid)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(kind, value, customer)| {
                Ok((indexed(kind, value)?, CustomerId::from_uuid(customer)))
            })
            .collect()
    }

    /// Every pseudonym an operator blocked.
    pub async fn blocked_identifiers(&self) -> Result<Vec<Identifier>> {
        let sql = "SELECT kind, pseudonym FROM blocked_identifiers";
        let rows: Vec<(String, String)> =
            reading!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(kind, value)| indexed(kind, value))
            .collect()
    }

    /// Replaces the identity index (holders, aliases, blocked values) with `index`, folded from
    /// the log up to position `at`; fails with [`StoreError::Stale`] if the log moved on since,
    /// and writes nothing.
    pub async fn replace_identity_index(&self, at: Position, index: &IndexFold) -> Result<()> {
        let changes = IdentityChanges {
            merges: index.aliases().iter().map(|(a, s)| (*a, *s)).collect(),
            links: index
                .holders()
                .iter()
                .map(|(identifier, holder)| (identifier.clone(), *holder))
                .collect(),
            blocks: index.blocked().iter().cloned().collect(),
            ..IdentityChanges::default()
        };
        match &self.backend {
            Backend::Sqlite(b) => b.replace_identity_index(at, &changes).await,
            Backend::Postgres(b) => b.replace_identity_index(at, &changes).await,
        }
    }

    /// Counts of the identity tables: live customers holding an identifier, merged customers,
    /// quarantined records.
    pub async fn identity_counts(&self) -> Result<(u64, u64, u64)> {
        let sql = "SELECT (SELECT count(DISTINCT customer_id) FROM identity_index), \
                   (SELECT count(*) FROM customer_aliases), (SELECT count(*) FROM quarantine)";
        let row: (i64, i64, i64) =
            reading!(self, pool => sqlx::query_as(sql).fetch_one(pool).await?);
        Ok((
            to_u64(row.0, 0, "customer count")?,
            to_u64(row.1, 0, "alias count")?,
            to_u64(row.2, 0, "quarantine count")?,
        ))
    }

    /// The value of a setting Patron keeps in the store, storing `default` first if there is
    /// none (so concurrent callers all get the one value that was stored first).
    pub async fn setting_or_insert(&self, name: &str, default: &str) -> Result<String> {
        let insert =
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        let read = "SELECT value FROM settings WHERE name = $1";
        // Read on the writing connection: a reader could still see the table without the row.
        let value: String = writing!(self, pool => {
            sqlx::query(insert).bind(name).bind(default).execute(pool).await?;
            sqlx::query_scalar(read).bind(name).fetch_one(pool).await?
        });
        Ok(value)
    }

    /// Where the given ids are stored, for the ids that are.
    #[tracing::instrument(name = "store.find_events", skip_all, fields(ids = ids.len()))]
    pub async fn find_events(&self, ids: &[EventId]) -> Result<Vec<EventRef>> {
        match &self.backend {
            Backend::Sqlite(b) => b.find(ids).await,
            Backend::Postgres(b) => b.find(ids).await,
        }
    }

    /// Up to `max` events of one stream with versions from `from_version` on, in order.
    #[tracing::instrument(name = "store.read_stream", skip_all, fields(stream = %stream_id))]
    pub async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let events = match &self.backend {
            Backend::Sqlite(b) => b.read_stream(stream_id, from_version, max).await?,
            Backend::Postgres(b) => b.read_stream(stream_id, from_version, max).await?,
        };
        self.upcast(events)
    }

    /// The touchpoints a customer owns up to position `upto` (in log order): those of its own
    /// stream and of the streams its holdings name, less the ones moved out, plus the ones
    /// moved in. What a profile or an activity is folded again from after a correction.
    pub async fn owned_touchpoints(
        &self,
        customer: CustomerId,
        holdings: &Holdings,
        upto: Position,
    ) -> Result<Vec<RecordedEvent>> {
        let mut owned: BTreeMap<Position, RecordedEvent> = BTreeMap::new();
        for stream in holdings.all_streams(customer) {
            for event in self.read_stream(&stream.stream_id(), 1, usize::MAX).await? {
                if event.position <= upto
                    && is_touchpoint(&event.event_type)
                    && holdings.keeps(event.position)
                {
                    owned.insert(event.position, event);
                }
            }
        }
        let moved_in: Vec<Position> = holdings
            .moved_in
            .iter()
            .copied()
            .filter(|p| *p <= upto && !owned.contains_key(p))
            .collect();
        for event in self.events_at(&moved_in).await? {
            if is_touchpoint(&event.event_type) {
                owned.insert(event.position, event);
            }
        }
        Ok(owned.into_values().collect())
    }

    /// The events at `positions` (those that exist), in the order given.
    pub async fn events_at(&self, positions: &[Position]) -> Result<Vec<RecordedEvent>> {
        let mut events = Vec::with_capacity(positions.len());
        for &position in positions {
            // The first event after `position - 1`: the one at `position` if it exists.
            events.extend(
                self.read_all(position.saturating_sub(1), 1)
                    .await?
                    .into_iter()
                    .filter(|e| e.position == position),
            );
        }
        Ok(events)
    }

    /// The current version of a stream (0 if it has no events).
    pub async fn stream_version(&self, stream_id: &StreamId) -> Result<StreamVersion> {
        match &self.backend {
            Backend::Sqlite(b) => b.stream_version(stream_id).await,
            Backend::Postgres(b) => b.stream_version(stream_id).await,
        }
    }

    /// Up to `max` events with positions after `after`, in position order.
    #[tracing::instrument(name = "store.read_all", skip_all, fields(after, max))]
    pub async fn read_all(&self, after: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        let events = match &self.backend {
            Backend::Sqlite(b) => b.read_all(after, max).await?,
            Backend::Postgres(b) => b.read_all(after, max).await?,
        };
        self.upcast(events)
    }

    /// Every event after `after`, in position order, as a stream of batches of up to `batch`
    /// events: the fastest way to read the whole log (rebuilds, exports), with memory bounded
    /// by the batch size however long the log is. On PostgreSQL the next batch is read while
    /// the caller works on the current one, and the stream ends at the head it saw when it
    /// started; on SQLite it reads until it reaches the end.
    pub fn stream_all(
        &self,
        after: Position,
        batch: usize,
    ) -> BoxStream<'_, Result<Vec<RecordedEvent>>> {
        let batches = match &self.backend {
            Backend::Sqlite(b) => b.stream_all(after, batch),
            Backend::Postgres(b) => b.stream_all(after, batch),
        };
        if self.upcasters.is_empty() {
            batches
        } else {
            batches.map(|b| b.and_then(|b| self.upcast(b))).boxed()
        }
    }

    /// A catch-up reader of the whole log from after `after`, which then follows new events.
    pub fn subscribe_all(&self, after: Position, batch_size: usize) -> Subscription {
        Subscription::new(self.clone(), after, batch_size.max(1))
    }

    /// The last position stored (0 for an empty log).
    pub async fn head(&self) -> Result<Position> {
        match &self.backend {
            Backend::Sqlite(b) => b.head().await,
            Backend::Postgres(b) => b.head().await,
        }
    }

    /// Counts of events and streams.
    pub async fn stats(&self) -> Result<LogStats> {
        let (head, events, streams) = match &self.backend {
            Backend::Sqlite(b) => b.stats().await?,
            Backend::Postgres(b) => b.stats().await?,
        };
        Ok(LogStats {
            backend: self.kind(),
            head,
            events,
            streams,
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(b) => b.close().await,
            Backend::Postgres(b) => b.close().await,
        }
    }

    fn upcast(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
        if self.upcasters.is_empty() {
            return Ok(events);
        }
        events
            .into_iter()
            .map(|e| self.upcasters.apply(e).map_err(StoreError::from))
            .collect()
    }

    /// Tells subscriptions of this process that the log reached `position`.
    fn advance_head(&self, position: Position) {
        self.head.send_if_modified(|head| {
            let moved = position > *head;
            if moved {
                *head = position;
            }
            moved
        });
    }

    /// Notified when this process stores events (others' writes are seen by polling).
    pub fn head_watch(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }
}

/// Converts a stored integer to a position or version, refusing negatives.
fn to_u64(value: i64, position: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        position: position.max(0).unsigned_abs(),
        reason: format!("{what} is negative ({value})"),
    })
}

/// Converts a position or version to the database's integer type.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A pseudonym as the identity tables hold it: its kind's name and its value.
fn indexed(kind: String, value: String) -> Result<Identifier> {
    Ok(Identifier {
        kind: IdentifierKind::new(kind).map_err(|e| StoreError::Corrupt {
            position: 0,
            reason: format!("identity index: {e}"),
        })?,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://patron:pa:ss@db:5432/cdp"),
            "postgres://patron:***@db:5432/cdp"
        );
        assert_eq!(
            redact_url("postgres://patron@db/cdp"),
            "postgres://patron@db/cdp"
        );
        assert_eq!(redact_url("sqlite://patron.db"), "sqlite://patron.db");
    }
}
