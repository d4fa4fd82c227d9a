//! The event log in an embedded SQLite file (WAL mode, one writer).
//!
//! The driver manages connections, migrations and transactions; rows move through [`raw`]
//! prepared statements on the locked connection, which is several times faster on this path.

mod raw;

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

/// One customer's scores, tags and memberships, as [`STANDING_SQL`] reads them: recency,
/// frequency, monetary, r, f, m, RFM segment, tier, stage, tags and segments (each joined by
/// U+001F).
pub(crate) type StandingRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The saved segments `(name, rule, purpose)` and the standings of the customers asked for.
pub(crate) type Judging = (
    Vec<(String, String, Option<String>)>,
    HashMap<CustomerId, StandingRow>,
);

/// A customer's standing (`?1`: the customer id).
pub(crate) const STANDING_SQL: &str = "SELECT s.recency_days, s.frequency, s.monetary_minor, \
     s.r, s.f, s.m, s.rfm_segment, s.tier, s.stage, \
     (SELECT group_concat(tag, char(31)) FROM customer_tags WHERE customer_id = ?1), \
     (SELECT group_concat(segment, char(31)) FROM segment_members WHERE customer_id = ?1) \
     FROM (SELECT 1) LEFT JOIN customer_scores s ON s.customer_id = ?1";
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

/// The saved segments `(name, rule, purpose)` and, unless there are none, the standing of each
/// of `customers` (the columns of [`STANDING_SQL`]).
fn read_judging(db: &RawDb<'_>, customers: &[CustomerId]) -> Result<Judging> {
    let mut rules = Vec::new();
    let mut stmt = db.prepare("SELECT name, rule, purpose FROM segments ORDER BY name")?;
    while stmt.step()? {
        let name = stmt.column_text(0).unwrap_or_default().to_owned();
        let rule = stmt.column_text(1).unwrap_or_default().to_owned();
        let purpose = stmt.column_text(2).map(str::to_owned);
        rules.push((name, rule, purpose));
    }
    drop(stmt);
    let mut found = HashMap::with_capacity(customers.len());
    if rules.is_empty() {
        return Ok((rules, found));
    }
    let mut stmt = db.prepare(STANDING_SQL)?;
    for customer in customers {
        stmt.reset()?;
        stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        if !stmt.step()? {
            continue;
        }
        let int = |stmt: &Statement<'_>, i| (!stmt.is_null(i)).then(|| stmt.column_i64(i));
        let row: StandingRow = (
            int(&stmt, 0),
            int(&stmt, 1),
            int(&stmt, 2),
            int(&stmt, 3),
            int(&stmt, 4),
            int(&stmt, 5),
            stmt.column_text(6).map(str::to_owned),
            stmt.column_text(7).map(str::to_owned),
            stmt.column_text(8).map(str::to_owned),
            stmt.column_text(9).map(str::to_owned),
            stmt.column_text(10).map(str::to_owned),
        );
        found.insert(*customer, row);
    }
    Ok((rules, found))
}

/// Records segment entries and exits `(segment, customer, entered)` at `at` (microseconds),
/// inside the caller's transaction; returns the indices of those that changed something.
fn apply_on(db: &RawDb<'_>, changes: &[(&str, CustomerId, bool)], at: i64) -> Result<Vec<usize>> {
    let mut enter = db.prepare(
        "INSERT INTO segment_members (segment, customer_id, since) \
         SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM segments WHERE name = ?1) \
         ON CONFLICT (segment, customer_id) DO NOTHING",
    )?;
    let mut leave =
        db.prepare("DELETE FROM segment_members WHERE segment = ?1 AND customer_id = ?2")?;
    let mut log = db.prepare(
        "INSERT INTO segment_log (segment, customer_id, entered, at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut applied = Vec::new();
    for (i, (segment, customer, entered)) in changes.iter().enumerate() {
        let id = customer.as_uuid();
        let stmt = if *entered { &mut enter } else { &mut leave };
        stmt.reset()?;
        stmt.bind_text(1, Some(segment))?;
        stmt.bind_blob(2, Some(id.as_bytes()))?;
        if *entered {
            stmt.bind_i64(3, at)?;
        }
        stmt.step()?;
        if db.changes() > 0 {
            log.reset()?;
            log.bind_text(1, Some(segment))?;
            log.bind_blob(2, Some(id.as_bytes()))?;
            log.bind_i64(3, i64::from(*entered))?;
            log.bind_i64(4, at)?;
            log.step()?;
            applied.push(i);
        }
    }
    Ok(applied)
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

    /// The `state` of each of `customers` that has a row in the read-model table `table`.
    pub(crate) async fn load_states(
        &self,
        table: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, String>> {
        let sql = format!("SELECT state FROM {table} WHERE customer_id = ?1");
        self.read(|db| {
            let mut stmt = db.prepare(&sql)?;
            let mut found = HashMap::with_capacity(customers.len());
            for customer in customers {
                stmt.reset()?;
                stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
                if stmt.step()? {
                    if let Some(state) = stmt.column_text(0) {
                        found.insert(*customer, state.to_owned());
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    /// Reads what judging `customers` needs (the saved segments and each customer's standing),
    /// lets `judge` decide the entries and exits `(segment, customer, entered)`, and records
    /// them, all in one transaction on the writing connection
    /// with SQLite's own statements: two hand-overs to the driver in all. Returns the changes
    /// that changed something.
    pub(crate) async fn judge_memberships<F>(
        &self,
        customers: &[CustomerId],
        at: i64,
        judge: F,
    ) -> Result<Vec<(String, CustomerId, bool)>>
    where
        F: FnOnce(
            Vec<(String, String, Option<String>)>,
            HashMap<CustomerId, StandingRow>,
        ) -> Vec<(String, CustomerId, bool)>,
    {
        let mut conn = self.writer.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = RawDb::new(&mut handle);
        blocking(|| -> Result<Vec<(String, CustomerId, bool)>> {
            run(&db, "BEGIN IMMEDIATE")?;
            let work = || -> Result<Vec<(String, CustomerId, bool)>> {
                let (rules, rows) = read_judging(&db, customers)?;
                if rules.is_empty() {
                    return Ok(Vec::new());
                }
                let changes = judge(rules, rows);
                let borrowed: Vec<(&str, CustomerId, bool)> = changes
                    .iter()
                    .map(|(s, c, e)| (s.as_str(), *c, *e))
                    .collect();
                let applied = apply_on(&db, &borrowed, at)?;
                Ok(applied.into_iter().map(|i| changes[i].clone()).collect())
            };
            match work() {
                Ok(applied) => {
                    run(&db, "COMMIT")?;
                    Ok(applied)
                }
                Err(e) => {
                    // The error is what matters; a failed rollback leaves SQLite to roll back.
                    let _ = run(&db, "ROLLBACK");
                    Err(e)
                }
            }
        })
    }

    /// Writes read-model rows `(customer, merged_into, state)` to `table` and moves the
    /// checkpoint `name` from `from` to `to`, in one transaction; `false`, writing nothing, if
    /// the checkpoint is not at `from`.
    pub(crate) async fn commit_states(
        &self,
        name: &str,
        table: &str,
        from: u64,
        to: u64,
        rows: &[(CustomerId, Option<CustomerId>, &str)],
    ) -> Result<bool> {
        let upsert = format!(
            "INSERT INTO {table} (customer_id, merged_into, state) VALUES (?1, ?2, ?3) \
             ON CONFLICT (customer_id) DO UPDATE SET merged_into = excluded.merged_into, \
             state = excluded.state"
        );
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let moved = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            self.checkpoints.note(&db);
            blocking(|| -> Result<bool> {
                let mut current =
                    db.prepare("SELECT position FROM projection_checkpoints WHERE name = ?1")?;
                current.bind_text(1, Some(name))?;
                let at = if current.step()? {
                    current.column_i64(0)
                } else {
                    0
                };
                drop(current);
                if at != to_i64(from) {
                    return Ok(false);
                }
                let mut mv = db.prepare(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )?;
                mv.bind_text(1, Some(name))?;
                mv.bind_i64(2, to_i64(to))?;
                mv.step()?;
                drop(mv);
                let mut insert = db.prepare(&upsert)?;
                for (customer, merged_into, state) in rows {
                    insert.reset()?;
                    insert.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
                    let merged = merged_into.map(|m| m.as_uuid());
                    insert.bind_blob(2, merged.as_ref().map(|m| m.as_bytes().as_slice()))?;
                    insert.bind_text(3, Some(state))?;
                    insert.step()?;
                }
                Ok(true)
            })?
        };
        if moved {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(moved)
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
        self.reader.close().await;
        self.long.close().await;
        self.writer.close().await;
        // The last connection to close folds the WAL back into the database file and removes
        // it; when the pools' connections close at the same moment on their worker threads,
        // none may see itself last. One more connection, alone now, does it.
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

/// Inserts refused records into the quarantine; returns their numbers, in order. A record
/// refused before (same source and text) keeps its number and is not stored again.
fn insert_quarantine(db: &RawDb<'_>, records: &[QuarantinedRecord]) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut insert = db.prepare(
        "INSERT INTO quarantine (received_at, source, code, field, reason, record, record_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (record_key) DO NOTHING",
    )?;
    let mut existing = db.prepare("SELECT id FROM quarantine WHERE record_key = ?1")?;
    let mut ids = Vec::with_capacity(records.len());
    for r in records {
        let key = r.record_key();
        insert.reset()?;
        insert.bind_i64(1, r.received_at.timestamp_micros())?;
        insert.bind_text(2, r.source.as_deref())?;
        insert.bind_text(3, Some(&r.code))?;
        insert.bind_text(4, Some(&r.field))?;
        insert.bind_text(5, Some(&r.reason))?;
        insert.bind_text(6, Some(&r.record))?;
        insert.bind_text(7, Some(&key))?;
        insert.step()?;
        let id = if db.changes() > 0 {
            db.last_insert_rowid()
        } else {
            existing.reset()?;
            existing.bind_text(1, Some(&key))?;
            if !existing.step()? {
                return Err(corrupt(
                    0,
                    "a quarantined record vanished during its insert",
                ));
            }
            existing.column_i64(0)
        };
        ids.push(to_u64(id, 0, "quarantine id")?);
    }
    Ok(ids)
}

/// A row of the quarantine table as SQLite stores it.
#[derive(sqlx::FromRow)]
struct QuarantineRow {
    id: i64,
    received_at: i64,
    source: Option<String>,
    code: String,
    field: String,
    reason: String,
    record: String,
    expired_at: Option<i64>,
}

fn customer_column(stmt: &mut Statement<'_>, index: i32) -> Result<CustomerId> {
    uuid_column(stmt, index, 0)?
        .map(CustomerId::from_uuid)
        .ok_or_else(|| corrupt(0, "identity index: customer id is NULL"))
}

/// The holders of `keys` and every pseudonym they hold.
fn load_graph(db: &RawDb<'_>, keys: &[Identifier]) -> Result<IdentityGraph> {
    let mut owner =
        db.prepare("SELECT customer_id FROM identity_index WHERE kind = ?1 AND pseudonym = ?2")?;
    let mut holders = BTreeSet::new();
    for key in keys {
        owner.reset()?;
        owner.bind_text(1, Some(key.kind.as_str()))?;
        owner.bind_text(2, Some(&key.value))?;
        if owner.step()? {
            holders.insert(customer_column(&mut owner, 0)?);
        }
    }
    let mut held =
        db.prepare("SELECT kind, pseudonym FROM identity_index WHERE customer_id = ?1")?;
    let mut rows = Vec::new();
    for customer in holders {
        held.reset()?;
        held.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        while held.step()? {
            let kind = IdentifierKind::new(required_text(&mut held, 0, 0)?)
                .map_err(|e| corrupt(0, format!("identity index: {e}")))?;
            rows.push((
                Identifier {
                    kind,
                    value: required_text(&mut held, 1, 0)?,
                },
                customer,
            ));
        }
    }
    let mut graph = graph_of(rows);
    let mut any = db.prepare("SELECT EXISTS (SELECT 1 FROM blocked_identifiers)")?;
    if any.step()? && any.column_i64(0) != 0 {
        let mut blocked =
            db.prepare("SELECT 1 FROM blocked_identifiers WHERE kind = ?1 AND pseudonym = ?2")?;
        for key in keys {
            blocked.reset()?;
            blocked.bind_text(1, Some(key.kind.as_str()))?;
            blocked.bind_text(2, Some(&key.value))?;
            if blocked.step()? {
                graph.block(key.clone());
            }
        }
    }
    Ok(graph)
}

/// The wrapped keys of those of `customers` that have one.
fn load_keys(
    db: &RawDb<'_>,
    customers: impl Iterator<Item = CustomerId>,
) -> Result<HashMap<CustomerId, Vec<u8>>> {
    let mut stmt = db.prepare("SELECT wrapped FROM customer_keys WHERE customer_id = ?1")?;
    let mut keys = HashMap::new();
    for customer in customers {
        stmt.reset()?;
        stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        if stmt.step()? {
            if let Some(wrapped) = stmt.column_blob(0) {
                keys.insert(customer, wrapped.to_vec());
            }
        }
    }
    Ok(keys)
}

/// Writes merges (re-pointing the absorbed customers' pseudonyms and aliases), links, then
/// new customer keys.
fn write_identity_changes(db: &RawDb<'_>, changes: &IdentityChanges) -> Result<()> {
    if !changes.merges.is_empty() {
        let mut repoint =
            db.prepare("UPDATE identity_index SET customer_id = ?2 WHERE customer_id = ?1")?;
        let mut realias =
            db.prepare("UPDATE customer_aliases SET survivor = ?2 WHERE survivor = ?1")?;
        let mut alias =
            db.prepare("INSERT INTO customer_aliases (absorbed, survivor) VALUES (?1, ?2)")?;
        for (absorbed, survivor) in &changes.merges {
            for stmt in [&mut repoint, &mut realias, &mut alias] {
                stmt.reset()?;
                stmt.bind_blob(1, Some(absorbed.as_uuid().as_bytes()))?;
                stmt.bind_blob(2, Some(survivor.as_uuid().as_bytes()))?;
                stmt.step()?;
            }
        }
    }
    if !changes.links.is_empty() {
        let mut link = db.prepare(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES (?1, ?2, ?3)",
        )?;
        for (key, customer) in &changes.links {
            link.reset()?;
            link.bind_text(1, Some(key.kind.as_str()))?;
            link.bind_text(2, Some(&key.value))?;
            link.bind_blob(3, Some(customer.as_uuid().as_bytes()))?;
            link.step()?;
        }
    }
    if !changes.restored.is_empty() {
        let mut unalias = db.prepare("DELETE FROM customer_aliases WHERE absorbed = ?1")?;
        let mut realias =
            db.prepare("UPDATE customer_aliases SET survivor = ?1 WHERE absorbed = ?2")?;
        for (restored, members) in &changes.restored {
            unalias.reset()?;
            unalias.bind_blob(1, Some(restored.as_uuid().as_bytes()))?;
            unalias.step()?;
            for member in members {
                realias.reset()?;
                realias.bind_blob(1, Some(restored.as_uuid().as_bytes()))?;
                realias.bind_blob(2, Some(member.as_uuid().as_bytes()))?;
                realias.step()?;
            }
        }
    }
    if !changes.holders.is_empty() {
        let mut give = db.prepare(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES (?1, ?2, ?3) \
             ON CONFLICT (kind, pseudonym) DO UPDATE SET customer_id = excluded.customer_id",
        )?;
        let mut take =
            db.prepare("DELETE FROM identity_index WHERE kind = ?1 AND pseudonym = ?2")?;
        for (key, holder) in &changes.holders {
            let stmt = match holder {
                Some(_) => &mut give,
                None => &mut take,
            };
            stmt.reset()?;
            stmt.bind_text(1, Some(key.kind.as_str()))?;
            stmt.bind_text(2, Some(&key.value))?;
            if let Some(holder) = holder {
                stmt.bind_blob(3, Some(holder.as_uuid().as_bytes()))?;
            }
            stmt.step()?;
        }
    }
    if !changes.blocks.is_empty() {
        let mut block = db.prepare(
            "INSERT INTO blocked_identifiers (kind, pseudonym) VALUES (?1, ?2) \
             ON CONFLICT DO NOTHING",
        )?;
        for key in &changes.blocks {
            block.reset()?;
            block.bind_text(1, Some(key.kind.as_str()))?;
            block.bind_text(2, Some(&key.value))?;
            block.step()?;
        }
    }
    if !changes.new_keys.is_empty() {
        let mut insert =
            db.prepare("INSERT INTO customer_keys (customer_id, wrapped) VALUES (?1, ?2)")?;
        for (customer, wrapped) in &changes.new_keys {
            insert.reset()?;
            insert.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
            insert.bind_blob(2, Some(wrapped))?;
            insert.step()?;
        }
    }
    Ok(())
}

impl SqliteLog {
    /// Reads what `decide` needs under the write lock, then writes what it decided (events and
    /// identity index changes) in the same transaction.
    pub(crate) async fn commit_identity<T>(
        &self,
        event_ids: &[EventId],
        keys: &[Identifier],
        quarantine: &[QuarantinedRecord],
        decide: impl FnOnce(IdentitySnapshot) -> Result<IdentityCommit<T>>,
    ) -> Result<(AppendOutcome, Vec<u64>, T)> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let result = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            self.checkpoints.note(&db);
            blocking(|| -> Result<(AppendOutcome, Vec<u64>, T)> {
                let quarantined = insert_quarantine(&db, quarantine)?;
                let stored: HashMap<EventId, EventRef> = find_events(&db, event_ids)?
                    .into_iter()
                    .map(|r| (r.event_id, r))
                    .collect();
                let graph = load_graph(&db, keys)?;
                let customer_keys = load_keys(&db, graph.customers())?;
                let commit = decide(IdentitySnapshot {
                    stored: stored.clone(),
                    graph,
                    customer_keys,
                })?;
                plan::validate(&commit.appends)?;
                write_identity_changes(&db, &commit.changes)?;
                let outcome =
                    write_commit(&db, &commit.appends, commit.order.as_deref(), Some(&stored))?;
                Ok((outcome, quarantined, commit.value))
            })?
        };
        tx.commit().await?;
        Ok(result)
    }

    pub(crate) async fn quarantined(
        &self,
        after_id: u64,
        max: usize,
    ) -> Result<Vec<QuarantinedRecord>> {
        let rows: Vec<QuarantineRow> = sqlx::query_as(
            "SELECT id, received_at, source, code, field, reason, record, expired_at \
             FROM quarantine WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(to_i64(after_id))
        .bind(to_i64(max as u64))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(QuarantinedRecord {
                    id: to_u64(r.id, 0, "quarantine id")?,
                    received_at: from_micros(r.received_at, 0)?,
                    source: r.source,
                    code: r.code,
                    field: r.field,
                    reason: r.reason,
                    record: r.record,
                    expired_at: r.expired_at.map(|at| from_micros(at, 0)).transpose()?,
                })
            })
            .collect()
    }

    pub(crate) async fn holder(&self, key: &Identifier) -> Result<Option<CustomerId>> {
        let id: Option<Uuid> = sqlx::query_scalar(
            "SELECT customer_id FROM identity_index WHERE kind = ? AND pseudonym = ?",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .fetch_optional(&self.reader)
        .await?;
        Ok(id.map(CustomerId::from_uuid))
    }

    pub(crate) async fn held_by(&self, customer: CustomerId) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT kind, pseudonym FROM identity_index WHERE customer_id = ? \
             ORDER BY kind, pseudonym",
        )
        .bind(customer.as_uuid())
        .fetch_all(&self.reader)
        .await?)
    }

    pub(crate) async fn is_blocked(&self, key: &Identifier) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM blocked_identifiers WHERE kind = ? AND pseudonym = ?",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn live_customer(&self, customer: CustomerId) -> Result<CustomerId> {
        let survivor: Option<Uuid> =
            sqlx::query_scalar("SELECT survivor FROM customer_aliases WHERE absorbed = ?")
                .bind(customer.as_uuid())
                .fetch_optional(&self.reader)
                .await?;
        Ok(survivor.map_or(customer, CustomerId::from_uuid))
    }

    pub(crate) async fn identity_counts(&self) -> Result<(u64, u64, u64)> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(DISTINCT customer_id) FROM identity_index), \
             (SELECT count(*) FROM customer_aliases), (SELECT count(*) FROM quarantine)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok((
            to_u64(row.0, 0, "customer count")?,
            to_u64(row.1, 0, "alias count")?,
            to_u64(row.2, 0, "quarantine count")?,
        ))
    }

    pub(crate) async fn setting_or_insert(&self, name: &str, default: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(default)
        .execute(&self.writer)
        .await?;
        let value: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_one(&self.writer)
            .await?;
        Ok(value)
    }

    pub(crate) async fn customer_keys(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<u8>>> {
        self.read(|db| load_keys(db, customers.iter().copied()))
            .await
    }

    /// Erases a customer in one write transaction; see [`super::EventStore::erase`].
    pub(crate) async fn erase(
        &self,
        customer: CustomerId,
        moved_in: &[Position],
        holds_their_data: &(dyn Fn(&str) -> bool + Sync),
        event: impl FnOnce(CustomerId, &[CustomerId]) -> Result<NewEvent>,
    ) -> Result<Erasure> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let erasure = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            blocking(|| -> Result<Erasure> {
                let uuid = |c: CustomerId| c.as_uuid();
                let mut survivor =
                    db.prepare("SELECT survivor FROM customer_aliases WHERE absorbed = ?1")?;
                survivor.bind_blob(1, Some(uuid(customer).as_bytes()))?;
                let live = if survivor.step()? {
                    customer_column(&mut survivor, 0)?
                } else {
                    customer
                };
                drop(survivor);
                let mut all = vec![live];
                let mut absorbed =
                    db.prepare("SELECT absorbed FROM customer_aliases WHERE survivor = ?1")?;
                absorbed.bind_blob(1, Some(uuid(live).as_bytes()))?;
                while absorbed.step()? {
                    all.push(customer_column(&mut absorbed, 0)?);
                }
                drop(absorbed);
                let mut delete_key =
                    db.prepare("DELETE FROM customer_keys WHERE customer_id = ?1")?;
                for c in &all {
                    delete_key.reset()?;
                    delete_key.bind_blob(1, Some(uuid(*c).as_bytes()))?;
                    delete_key.step()?;
                }
                drop(delete_key);
                let mut read = db.prepare(
                    "SELECT s.stream_id, e.payload FROM events e \
                     JOIN streams s ON s.stream_key = e.stream_key WHERE e.position = ?1",
                )?;
                let mut rewrite =
                    db.prepare("UPDATE events SET payload = ?2 WHERE position = ?1")?;
                let mut touchpoints_shredded = 0u64;
                for position in moved_in {
                    read.reset()?;
                    read.bind_i64(1, to_i64(*position))?;
                    if !read.step()? {
                        continue;
                    }
                    let stream = read.column_text(0).unwrap_or_default().to_owned();
                    let payload = read.column_text(1).unwrap_or_default().to_owned();
                    let Some(shredded) = shredded_payload(*position, &stream, &payload, &all)?
                    else {
                        continue;
                    };
                    rewrite.reset()?;
                    rewrite.bind_i64(1, to_i64(*position))?;
                    rewrite.bind_text(2, Some(&shredded))?;
                    rewrite.step()?;
                    touchpoints_shredded += 1;
                }
                drop((read, rewrite));
                let mut forget = db.prepare("DELETE FROM identity_index WHERE customer_id = ?1")?;
                forget.bind_blob(1, Some(uuid(live).as_bytes()))?;
                forget.step()?;
                let identifiers_removed = to_u64(db.changes(), 0, "identifiers removed")?;
                drop(forget);
                let mut scan = db.prepare("SELECT id, record, reason FROM quarantine")?;
                let mut matched = Vec::new();
                while scan.step()? {
                    let id = scan.column_i64(0);
                    let held = scan.column_text(1).is_some_and(holds_their_data)
                        || scan.column_text(2).is_some_and(holds_their_data);
                    if held {
                        matched.push(id);
                    }
                }
                drop(scan);
                let mut delete = db.prepare("DELETE FROM quarantine WHERE id = ?1")?;
                for id in &matched {
                    delete.reset()?;
                    delete.bind_i64(1, *id)?;
                    delete.step()?;
                }
                let append = StreamAppend::new(
                    live.stream_id(),
                    ExpectedVersion::Any,
                    vec![event(live, &all)?],
                );
                let outcome = write_commit(&db, &[append], None, None)?;
                Ok(Erasure {
                    customer: live,
                    keys_destroyed: all,
                    touchpoints_shredded,
                    identifiers_removed,
                    quarantined_removed: matched.len() as u64,
                    position: outcome.head,
                    scrubbed: false,
                })
            })?
        };
        tx.commit().await?;
        let mut erasure = erasure;
        erasure.scrubbed = self.empty_wal().await;
        Ok(erasure)
    }

    /// Copies the WAL back into the database file and empties it, since it still holds pages
    /// as they were before a deletion. Whether it could: a reader holding an old snapshot for
    /// longer than the busy timeout keeps the WAL (the failure is logged, not raised: the
    /// deletion itself is committed).
    async fn empty_wal(&self) -> bool {
        let done: std::result::Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.writer)
                .await;
        match done {
            Ok((0, _, _)) => true,
            Ok(_) => {
                tracing::warn!("the WAL could not be emptied: a reader holds an old snapshot");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "the WAL could not be emptied");
                false
            }
        }
    }

    /// Blanks the text of quarantined records received before `before`; returns how many.
    pub(crate) async fn expire_quarantine(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE quarantine SET record = '', reason = '', expired_at = ? \
             WHERE received_at < ? AND expired_at IS NULL",
        )
        .bind(Utc::now().timestamp_micros())
        .bind(before.timestamp_micros())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() > 0 {
            self.empty_wal().await;
        }
        Ok(done.rows_affected())
    }

    pub(crate) async fn replace_identity_index(
        &self,
        at: Position,
        changes: &IdentityChanges,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            blocking(|| -> Result<()> {
                let now = head(&db)?;
                if now != at {
                    return Err(moved_on(at, now));
                }
                for table in IDENTITY_TABLES {
                    db.prepare(&format!("DELETE FROM {table}"))?.step()?;
                }
                write_identity_changes(&db, changes)
            })?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn aliases(&self) -> Result<Vec<(Uuid, Uuid)>> {
        Ok(
            sqlx::query_as("SELECT absorbed, survivor FROM customer_aliases")
                .fetch_all(&self.reader)
                .await?,
        )
    }
}
