//! The event log in an embedded SQLite file (WAL mode, one writer).
//!
//! The driver manages connections, migrations and transactions; rows move through [`raw`]
//! prepared statements on the locked connection, which is several times faster on this path.

mod identity;
mod raw;
mod read_models;

pub(crate) use read_models::{StandingRow, STANDING_SQL};

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use patron_domain::customer::CustomerId;
use patron_domain::identifier::{Identifier, IdentifierKind};
use patron_domain::identity::resolution::IdentityGraph;
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use tokio::runtime::RuntimeFlavor;
use tracing::Instrument;
use uuid::Uuid;

use self::raw::{RawDb, RawError, Statement};

use super::error::{Result, StoreError};
use super::identity::{
    graph_of, moved_on, shredded_payload, Erasure, IdentityChanges, IdentityCommit,
    IdentitySnapshot, QuarantinedRecord, IDENTITY_TABLES,
};
use super::plan::{self, StreamState};
use super::{to_i64, to_u64, AppendOutcome, EventRef};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Page cache of the writing connection (negative: KiB); it holds the hot index pages.
const WRITER_CACHE: &str = "-262144";
/// Page cache of each reading connection (negative: KiB).
const READER_CACHE: &str = "-16384";
/// WAL pages written between background checkpoints. Appends touch index pages at random; a
/// longer WAL lets a page rewritten by many commits be copied back to the database once.
const CHECKPOINT_EVERY_PAGES: i64 = 20_000;
/// WAL pages at which the writer checkpoints by itself, should the background checkpoints fall
/// behind: a bound on the WAL's size (4 KiB pages).
const WAL_LIMIT_PAGES: &str = "100000";
/// Size the WAL file is cut back to after a checkpoint empties it.
const WAL_KEEP_BYTES: &str = "67108864";

const SELECT_EVENTS: &str = "SELECT e.position, e.event_id, s.stream_id, e.stream_version, \
     e.event_type, e.schema_version, e.occurred_at, e.recorded_at, e.payload, e.source, \
     e.channel, e.correlation_id, e.causation_id, e.actor, e.reason \
     FROM events e JOIN streams s ON s.stream_key = e.stream_key";

const FIND_EVENT: &str = "SELECT e.position, s.stream_id, e.stream_version FROM events e \
     JOIN streams s ON s.stream_key = e.stream_key WHERE e.event_id = ?1";

const FIND_STREAM: &str = "SELECT s.stream_key, (SELECT max(e.stream_version) FROM events e \
     WHERE e.stream_key = s.stream_key) FROM streams s WHERE s.stream_id = ?1";

const INSERT_STREAM: &str = "INSERT INTO streams (stream_id) VALUES (?1)";

const INSERT_EVENT: &str = "INSERT INTO events (position, event_id, stream_key, stream_version, \
     event_type, schema_version, occurred_at, recorded_at, payload, source, channel, \
     correlation_id, causation_id, actor, reason) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

const HEAD: &str = "SELECT coalesce(max(position), 0) FROM events";

/// How many times closing the store tries to fold the WAL back with a connection of its own.
const CLOSE_ATTEMPTS: usize = 10;

/// How long closing the store waits, for each pool, until every connection is back in it, and
/// then until they are all gone (a connection still lent out past that is not waited for).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// SQLite allows one writer at a time: a pool of one connection serializes appends in this
/// process, and `BEGIN IMMEDIATE` with a busy timeout serializes them with other processes.
#[derive(Clone)]
pub(crate) struct SqliteLog {
    writer: SqlitePool,
    /// What this handle reads with: the short-read pool, or `long` for
    /// [`SqliteLog::long_reads`].
    reader: SqlitePool,
    /// The long-read pool (analytics).
    long: SqlitePool,
    checkpoints: Checkpoints,
    /// How to open one more connection: [`SqliteLog::close`] uses it to fold the WAL back.
    options: Arc<SqliteConnectOptions>,
}

/// Copies the WAL back into the database file on a connection of its own, so that the writer
/// does not stop for it (a checkpoint writes and syncs tens of megabytes). The writer asks for
/// one every [`CHECKPOINT_EVERY_PAGES`] pages it writes; the task ends when the log is closed
/// or its last clone dropped.
#[derive(Clone)]
struct Checkpoints {
    request: tokio::sync::mpsc::Sender<CheckpointRequest>,
    /// Pages the writer had written when it last asked.
    asked_at: Arc<AtomicI64>,
}

/// What the checkpointing task is asked to do.
enum CheckpointRequest {
    /// Copy what it can of the WAL back.
    Run,
    /// Close its connection, then answer.
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Checkpoints {
    async fn start(options: &SqliteConnectOptions) -> Result<Self> {
        let mut conn = options.connect().await?;
        let (request, mut requests) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                match request {
                    CheckpointRequest::Run => {
                        let run = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                            .execute(&mut conn)
                            .instrument(tracing::debug_span!("sqlite.checkpoint"))
                            .await;
                        if let Err(err) = run {
                            tracing::warn!(error = %err, "background checkpoint failed");
                        }
                    }
                    CheckpointRequest::Close(done) => {
                        let _ = conn.close().await;
                        let _ = done.send(());
                        return;
                    }
                }
            }
            let _ = conn.close().await;
        });
        Ok(Self {
            request,
            asked_at: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Stops the task and closes its connection, so that the writer's is the last one and
    /// SQLite folds the WAL back into the database file when it closes.
    async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        if self
            .request
            .send(CheckpointRequest::Close(done))
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
    }

    /// Asks for a checkpoint if the writer wrote enough pages since it last asked. Called under
    /// the write lock, so with the pages of every earlier commit counted.
    fn note(&self, db: &RawDb<'_>) {
        let written = db.pages_written();
        let asked_at = self.asked_at.load(Ordering::Relaxed);
        if written < asked_at {
            // The writer's connection was reopened: its count started again.
            self.asked_at.store(written, Ordering::Relaxed);
        } else if written - asked_at >= CHECKPOINT_EVERY_PAGES {
            self.asked_at.store(written, Ordering::Relaxed);
            // Full means a checkpoint is already waiting; it will cover these pages too.
            let _ = self.request.try_send(CheckpointRequest::Run);
        }
    }
}

impl From<RawError> for StoreError {
    fn from(err: RawError) -> Self {
        if err.is_unique_violation() {
            StoreError::WriteRace {
                detail: err.message,
            }
        } else {
            StoreError::Database(sqlx::Error::Protocol(format!("SQLite: {err}")))
        }
    }
}

/// Runs blocking work on a locked connection without stalling the other tasks of a
/// multi-threaded runtime.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Runs one statement that returns no rows.
fn run(db: &RawDb<'_>, sql: &str) -> Result<()> {
    let mut stmt = db.prepare(sql)?;
    stmt.step()?;
    Ok(())
}

fn corrupt(position: i64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        position: position.max(0).unsigned_abs(),
        reason: reason.into(),
    }
}

fn from_micros(value: i64, position: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| corrupt(position, format!("timestamp {value} is out of range")))
}

fn uuid_column(stmt: &mut Statement<'_>, index: i32, position: i64) -> Result<Option<Uuid>> {
    match stmt.column_blob(index) {
        None => Ok(None),
        Some(bytes) => Uuid::from_slice(bytes)
            .map(Some)
            .map_err(|_| corrupt(position, format!("column {index} is not a 16-byte UUID"))),
    }
}

fn text_column(stmt: &mut Statement<'_>, index: i32, position: i64) -> Result<Option<String>> {
    if stmt.is_null(index) {
        return Ok(None);
    }
    stmt.column_text(index)
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| corrupt(position, format!("column {index} is not UTF-8 text")))
}

fn required_text(stmt: &mut Statement<'_>, index: i32, position: i64) -> Result<String> {
    text_column(stmt, index, position)?
        .ok_or_else(|| corrupt(position, format!("column {index} is NULL")))
}

fn stream_id(text: String, position: i64) -> Result<StreamId> {
    StreamId::new(text).map_err(|e| corrupt(position, e.to_string()))
}

/// Decodes the current row of a [`SELECT_EVENTS`] statement.
fn decode_event(stmt: &mut Statement<'_>) -> Result<RecordedEvent> {
    let position = stmt.column_i64(0);
    let schema_version = stmt.column_i64(5);
    Ok(RecordedEvent {
        position: to_u64(position, position, "position")?,
        event_id: EventId::from_uuid(
            uuid_column(stmt, 1, position)?.ok_or_else(|| corrupt(position, "event id is NULL"))?,
        ),
        stream_id: stream_id(required_text(stmt, 2, position)?, position)?,
        stream_version: to_u64(stmt.column_i64(3), position, "stream version")?,
        event_type: required_text(stmt, 4, position)?,
        schema_version: u32::try_from(schema_version).map_err(|_| {
            corrupt(
                position,
                format!("schema version {schema_version} is out of range"),
            )
        })?,
        occurred_at: from_micros(stmt.column_i64(6), position)?,
        recorded_at: from_micros(stmt.column_i64(7), position)?,
        payload: required_text(stmt, 8, position)?,
        metadata: Metadata {
            source: text_column(stmt, 9, position)?,
            channel: text_column(stmt, 10, position)?,
            correlation_id: uuid_column(stmt, 11, position)?,
            causation_id: uuid_column(stmt, 12, position)?,
            actor: text_column(stmt, 13, position)?,
            reason: text_column(stmt, 14, position)?,
        },
    })
}

/// Runs a [`SELECT_EVENTS`] query whose parameters `bind` sets.
fn select_events(
    db: &RawDb<'_>,
    sql: &str,
    capacity: usize,
    bind: impl FnOnce(&mut Statement<'_>) -> Result<(), RawError>,
) -> Result<Vec<RecordedEvent>> {
    let mut stmt = db.prepare(sql)?;
    bind(&mut stmt)?;
    let mut events = Vec::with_capacity(capacity);
    while stmt.step()? {
        events.push(decode_event(&mut stmt)?);
    }
    Ok(events)
}

/// Where each of `ids` is stored, for those that are.
fn find_events(db: &RawDb<'_>, ids: &[EventId]) -> Result<Vec<EventRef>> {
    let mut stmt = db.prepare(FIND_EVENT)?;
    let mut found = Vec::new();
    for id in ids {
        stmt.reset()?;
        stmt.bind_blob(1, Some(id.as_uuid().as_bytes()))?;
        if stmt.step()? {
            let position = stmt.column_i64(0);
            found.push(EventRef {
                event_id: *id,
                position: to_u64(position, position, "position")?,
                stream_id: stream_id(required_text(&mut stmt, 1, position)?, position)?,
                stream_version: to_u64(stmt.column_i64(2), position, "stream version")?,
            });
        }
    }
    Ok(found)
}

/// The key and version of each named stream that exists.
fn stream_states(
    db: &RawDb<'_>,
    appends: &[StreamAppend],
) -> Result<HashMap<StreamId, StreamState>> {
    let mut stmt = db.prepare(FIND_STREAM)?;
    let mut states = HashMap::with_capacity(appends.len());
    for append in appends {
        stmt.reset()?;
        stmt.bind_text(1, Some(append.stream_id.as_str()))?;
        if stmt.step()? {
            let version = if stmt.is_null(1) {
                0
            } else {
                stmt.column_i64(1)
            };
            states.insert(
                append.stream_id.clone(),
                StreamState {
                    key: Some(stmt.column_i64(0)),
                    version: to_u64(version, 0, "stream version")?,
                },
            );
        }
    }
    Ok(states)
}

fn head(db: &RawDb<'_>) -> Result<Position> {
    let mut stmt = db.prepare(HEAD)?;
    let head = if stmt.step()? { stmt.column_i64(0) } else { 0 };
    to_u64(head, head, "head position")
}

/// Checks, plans and writes one commit inside the caller's transaction.
/// Checks, plans and writes one commit inside the caller's transaction. `known`, when given,
/// says which of the commit's event ids are stored already (read under the same lock), which
/// spares looking them up again.
fn write_commit(
    db: &RawDb<'_>,
    appends: &[StreamAppend],
    order: Option<&[usize]>,
    known: Option<&HashMap<EventId, EventRef>>,
) -> Result<AppendOutcome> {
    let looked_up: HashMap<EventId, EventRef>;
    let stored = match known {
        Some(known) => known,
        None => {
            looked_up = find_events(db, &plan::event_ids(appends))?
                .into_iter()
                .map(|r| (r.event_id, r))
                .collect();
            &looked_up
        }
    };
    let states = stream_states(db, appends)?;
    let mut plan = plan::plan(appends, stored, &states, head(db)?, order)?;
    if plan.rows.is_empty() {
        return Ok(plan.outcome);
    }

    if !plan.new_streams.is_empty() {
        let mut insert = db.prepare(INSERT_STREAM)?;
        for &index in &plan.new_streams {
            insert.reset()?;
            insert.bind_text(1, Some(appends[index].stream_id.as_str()))?;
            insert.step()?;
            plan.stream_keys[index] = Some(db.last_insert_rowid());
        }
    }
    let keys = &plan.stream_keys;

    let recorded = plan.outcome.recorded_at.timestamp_micros();
    let mut insert = db.prepare(INSERT_EVENT)?;
    for row in &plan.rows {
        let event = row.event;
        let meta = event.metadata();
        let key = keys[row.stream_index]
            .ok_or_else(|| corrupt(to_i64(row.position), "stream key missing after insert"))?;
        insert.reset()?;
        insert.bind_i64(1, to_i64(row.position))?;
        insert.bind_blob(2, Some(event.event_id().as_uuid().as_bytes()))?;
        insert.bind_i64(3, key)?;
        insert.bind_i64(4, to_i64(row.stream_version))?;
        insert.bind_text(5, Some(event.event_type()))?;
        insert.bind_i64(6, i64::from(event.schema_version()))?;
        insert.bind_i64(7, event.occurred().timestamp_micros())?;
        insert.bind_i64(8, recorded)?;
        insert.bind_text(9, Some(event.payload()))?;
        insert.bind_text(10, meta.source.as_deref())?;
        insert.bind_text(11, meta.channel.as_deref())?;
        insert.bind_blob(
            12,
            meta.correlation_id
                .as_ref()
                .map(|u| u.as_bytes().as_slice()),
        )?;
        insert.bind_blob(
            13,
            meta.causation_id.as_ref().map(|u| u.as_bytes().as_slice()),
        )?;
        insert.bind_text(14, meta.actor.as_deref())?;
        insert.bind_text(15, meta.reason.as_deref())?;
        insert.step()?;
    }
    Ok(plan.outcome)
}

impl SqliteLog {
    pub(crate) async fn open(url: &str, tuning: &super::StoreOptions) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false)
            .pragma("temp_store", "memory")
            // Deleted rows (erased keys, expired records) are overwritten, not left in free pages.
            .pragma("secure_delete", "ON")
            .pragma("wal_autocheckpoint", WAL_LIMIT_PAGES)
            .pragma("journal_size_limit", WAL_KEEP_BYTES);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone().pragma("cache_size", WRITER_CACHE))
            .await?;
        MIGRATOR.run(&writer).await?;
        let checkpoints = Checkpoints::start(&options).await?;
        let reading = options.clone().pragma("cache_size", READER_CACHE);
        let reader = SqlitePoolOptions::new()
            .max_connections(tuning.max_connections.max(1))
            .connect_with(reading.clone())
            .await?;
        let long = SqlitePoolOptions::new()
            .max_connections(tuning.long_read_connections.max(1))
            .connect_lazy_with(reading);
        Ok(Self {
            writer,
            reader,
            long,
            checkpoints,
            options: Arc::new(options),
        })
    }

    /// The pool of the one writing connection.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The pool of reading connections.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// This log with the long-read pool for every read.
    pub(crate) fn long_reads(&self) -> Self {
        Self {
            reader: self.long.clone(),
            ..self.clone()
        }
    }

    pub(crate) async fn close(&self) {
        self.checkpoints.close().await;
        // A connection dropped just before the pool closes is handed back by a task of its
        // own; handed back after `close` drained the pool, it stays open for the pool's life.
        // So each pool closes once every connection is back in it (or after CLOSE_WAIT).
        for pool in [&self.reader, &self.long, &self.writer] {
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while pool.num_idle() < pool.size() as usize && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            pool.close().await;
        }
        // The last connection to close folds the WAL back into the database file and removes
        // it; when the pools' connections close at the same moment on their worker threads,
        // none may see itself last. One more connection, alone now, does it.
        // A connection closing on its worker thread counts in its pool until it is gone, which
        // takes a while on a loaded machine: wait for them, so that the one below is the last.
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while self.reader.size() + self.long.size() + self.writer.size() > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let wal = format!("{}-wal", self.options.get_filename().display());
        for _ in 0..CLOSE_ATTEMPTS {
            if !std::path::Path::new(&wal).exists() {
                return;
            }
            if let Ok(mut conn) = self.options.connect().await {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn append(&self, appends: &[StreamAppend]) -> Result<AppendOutcome> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            self.checkpoints.note(&db);
            blocking(|| write_commit(&db, appends, None, None))?
        };
        if outcome.streams.iter().any(|s| {
            s.events
                .iter()
                .any(|e| matches!(e, super::EventOutcome::Appended(_)))
        }) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(outcome)
    }

    /// Runs `work` on a reading connection locked out of the driver.
    async fn read<R>(&self, work: impl FnOnce(&RawDb<'_>) -> Result<R>) -> Result<R> {
        let mut conn = self.reader.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = RawDb::new(&mut handle);
        blocking(|| work(&db))
    }

    pub(crate) async fn find(&self, ids: &[EventId]) -> Result<Vec<EventRef>> {
        self.read(|db| find_events(db, ids)).await
    }

    pub(crate) async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "{SELECT_EVENTS} WHERE e.stream_key = (SELECT stream_key FROM streams \
             WHERE stream_id = ?1) AND e.stream_version >= ?2 ORDER BY e.stream_version LIMIT ?3"
        );
        self.read(|db| {
            select_events(db, &sql, max.min(1_000), |stmt| {
                stmt.bind_text(1, Some(stream_id.as_str()))?;
                stmt.bind_i64(2, to_i64(from_version))?;
                stmt.bind_i64(3, to_i64(max as u64))
            })
        })
        .await
    }

    pub(crate) async fn stream_version(&self, stream_id: &StreamId) -> Result<StreamVersion> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT max(e.stream_version) FROM events e JOIN streams s \
             ON s.stream_key = e.stream_key WHERE s.stream_id = ?",
        )
        .bind(stream_id.as_str())
        .fetch_one(&self.reader)
        .await?;
        to_u64(version.unwrap_or(0), 0, "stream version")
    }

    pub(crate) async fn read_all(&self, after: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        let sql = format!("{SELECT_EVENTS} WHERE e.position > ?1 ORDER BY e.position LIMIT ?2");
        self.read(|db| {
            select_events(db, &sql, max.min(10_000), |stmt| {
                stmt.bind_i64(1, to_i64(after))?;
                stmt.bind_i64(2, to_i64(max as u64))
            })
        })
        .await
    }

    /// The events after `after`, in batches of up to `batch`, until a batch comes back short.
    pub(crate) fn stream_all(
        &self,
        after: Position,
        batch: usize,
    ) -> BoxStream<'_, Result<Vec<RecordedEvent>>> {
        let batch = batch.max(1);
        stream::try_unfold(Some(after), move |after| async move {
            let Some(after) = after else {
                return Ok::<_, StoreError>(None);
            };
            let events = self.read_all(after, batch).await?;
            let next = match events.last() {
                Some(last) if events.len() == batch => Some(last.position),
                _ => None,
            };
            Ok((!events.is_empty()).then_some((events, next)))
        })
        .boxed()
    }

    pub(crate) async fn head(&self) -> Result<Position> {
        self.read(head).await
    }

    pub(crate) async fn stats(&self) -> Result<(Position, u64, u64)> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(max(position), 0), count(*), \
             (SELECT count(*) FROM streams) FROM events",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok((
            to_u64(row.0, row.0, "head position")?,
            to_u64(row.1, 0, "event count")?,
            to_u64(row.2, 0, "stream count")?,
        ))
    }
}
