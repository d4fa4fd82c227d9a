//! The event log on a PostgreSQL server.
//!
//! Appending transactions lock the one-row `event_log_head` table before they assign positions
//! and hold the lock until they commit, so positions commit in order and readers may read every
//! position they see without waiting for a safe high-water mark.

mod identity;

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use patron_domain::customer::CustomerId;
use patron_domain::identifier::{Identifier, IdentifierKind};
use patron_domain::identity::resolution::IdentityGraph;
use patron_domain::{
    EventId, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamAppend, StreamId,
    StreamVersion,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::identity::{
    graph_of, moved_on, shredded_payload, Erasure, IdentityChanges, IdentityCommit,
    IdentitySnapshot, QuarantinedRecord, IDENTITY_TABLES,
};
use super::plan::{self, StreamState};
use super::{to_i64, to_u64, AppendOutcome, EventRef};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const SELECT_EVENTS: &str = "SELECT e.position, e.event_id, e.stream_id, e.stream_version, \
     e.event_type, e.schema_version, e.occurred_at, e.recorded_at, e.payload::text, e.source, \
     e.channel, e.correlation_id, e.causation_id, e.actor, e.reason FROM events e";

const READ_RANGE: &str = "SELECT e.position, e.event_id, e.stream_id, e.stream_version, \
     e.event_type, e.schema_version, e.occurred_at, e.recorded_at, e.payload::text, e.source, \
     e.channel, e.correlation_id, e.causation_id, e.actor, e.reason FROM events e \
     WHERE e.position > $1 AND e.position <= $2 ORDER BY e.position LIMIT $3";

/// Range queries running at once when streaming the log: one decoding, one in flight.
const RANGES_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub(crate) struct PostgresLog {
    /// Writes, and the reads made here (ingestion's look-ups, the log for the projections).
    pool: PgPool,
    /// Short reads through the store's `reading!` (customers, keys, segments).
    reader: PgPool,
    /// Long reads (analytics), for [`PostgresLog::long_reads`].
    long: PgPool,
}

/// Decodes a row of [`SELECT_EVENTS`] or [`READ_RANGE`]. The column types are fixed by the
/// schema and the query, so the driver's per-value type check is skipped: on the read-all path
/// it cost a fifth of the client's time.
fn decode_event(row: &PgRow) -> Result<RecordedEvent> {
    let position: i64 = row.try_get_unchecked(0)?;
    let stream_id: String = row.try_get_unchecked(2)?;
    let stream_id = StreamId::new(stream_id).map_err(|e| StoreError::Corrupt {
        position: position.max(0).unsigned_abs(),
        reason: e.to_string(),
    })?;
    let schema_version: i32 = row.try_get_unchecked(5)?;
    Ok(RecordedEvent {
        position: to_u64(position, position, "position")?,
        event_id: EventId::from_uuid(row.try_get_unchecked(1)?),
        stream_id,
        stream_version: to_u64(row.try_get_unchecked(3)?, position, "stream version")?,
        event_type: row.try_get_unchecked(4)?,
        schema_version: u32::try_from(schema_version).map_err(|_| StoreError::Corrupt {
            position: position.max(0).unsigned_abs(),
            reason: format!("schema version {schema_version} is out of range"),
        })?,
        occurred_at: row.try_get_unchecked::<DateTime<Utc>, _>(6)?,
        recorded_at: row.try_get_unchecked::<DateTime<Utc>, _>(7)?,
        payload: row.try_get_unchecked(8)?,
        metadata: Metadata {
            source: row.try_get_unchecked(9)?,
            channel: row.try_get_unchecked(10)?,
            correlation_id: row.try_get_unchecked(11)?,
            causation_id: row.try_get_unchecked(12)?,
            actor: row.try_get_unchecked(13)?,
            reason: row.try_get_unchecked(14)?,
        },
    })
}

impl PostgresLog {
    pub(crate) async fn open(url: &str, tuning: &super::StoreOptions) -> Result<Self> {
        // Parameters are arrays whose length varies from call to call: a plan made for the
        // values at hand beats a generic plan, which can fall back to scanning the log.
        let options =
            PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_custom_plan")]);
        // One direct connection first: an unreachable server fails at once instead of after
        // the pool's acquire timeout, and the schema is brought up to date on it.
        let mut conn = PgConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(tuning.write_connections.max(2))
            .connect_with(options.clone())
            .await?;
        let reader = PgPoolOptions::new()
            .max_connections(tuning.max_connections.max(1))
            .connect_lazy_with(options.clone());
        let long = PgPoolOptions::new()
            .max_connections(tuning.long_read_connections.max(1))
            .connect_lazy_with(options);
        Ok(Self { pool, reader, long })
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.long.close().await;
        self.pool.close().await;
    }

    /// The writing pool (and the reads this module makes).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool for short reads.
    pub(crate) fn reader(&self) -> &PgPool {
        &self.reader
    }

    /// This log with the long-read pool for everything: for reading only.
    pub(crate) fn long_reads(&self) -> Self {
        Self {
            pool: self.long.clone(),
            reader: self.long.clone(),
            long: self.long.clone(),
        }
    }

    pub(crate) async fn append(&self, appends: &[StreamAppend]) -> Result<AppendOutcome> {
        let mut tx = self.pool.begin().await?;
        let head = lock_head(&mut tx).await?;
        let outcome = write_appends(&mut tx, appends, head, None, None).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub(crate) async fn find(&self, ids: &[EventId]) -> Result<Vec<EventRef>> {
        let mut conn = self.pool.acquire().await?;
        find_in(&mut conn, ids).await
    }

    pub(crate) async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "{SELECT_EVENTS} WHERE e.stream_key = (SELECT stream_key FROM streams \
             WHERE stream_id = $1) AND e.stream_version >= $2 ORDER BY e.stream_version LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_id.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(max as u64))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    pub(crate) async fn stream_version(&self, stream_id: &StreamId) -> Result<StreamVersion> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT max(e.stream_version) FROM events e \
             WHERE e.stream_key = (SELECT stream_key FROM streams WHERE stream_id = $1)",
        )
        .bind(stream_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        to_u64(version.unwrap_or(0), 0, "stream version")
    }

    pub(crate) async fn read_all(&self, after: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        let sql = format!("{SELECT_EVENTS} WHERE e.position > $1 ORDER BY e.position LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(to_i64(after))
            .bind(to_i64(max as u64))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    /// The events after `after` up to the head when the stream starts, in batches of up to
    /// `batch` positions, with the next batch already in flight while the caller works on the
    /// current one. Positions are dense, so the ranges are known in advance, and each range
    /// query is an index scan whatever the planner thinks of the table's size.
    pub(crate) fn stream_all(
        &self,
        after: Position,
        batch: usize,
    ) -> BoxStream<'_, Result<Vec<RecordedEvent>>> {
        let step = batch.max(1) as u64;
        stream::once(self.head())
            .map_ok(move |head| {
                let ranges = (after..head)
                    .step_by(step as usize)
                    .map(move |start| (start, (start + step).min(head)));
                stream::iter(ranges)
                    .map(move |(start, end)| self.read_range(start, end))
                    .buffered(RANGES_IN_FLIGHT)
            })
            .try_flatten()
            .boxed()
    }

    /// The events with positions in `(after, until]`.
    async fn read_range(&self, after: Position, until: Position) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(READ_RANGE)
            .bind(to_i64(after))
            .bind(to_i64(until))
            .bind(to_i64(until.saturating_sub(after)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    pub(crate) async fn head(&self) -> Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_log_head")
            .fetch_one(&self.pool)
            .await?;
        to_u64(head, head, "head position")
    }

    pub(crate) async fn stats(&self) -> Result<(Position, u64, u64)> {
        let row = sqlx::query(
            "SELECT (SELECT last_position FROM event_log_head), \
             (SELECT count(*) FROM events), (SELECT count(*) FROM streams)",
        )
        .fetch_one(&self.pool)
        .await?;
        let head: i64 = row.try_get(0)?;
        Ok((
            to_u64(head, head, "head position")?,
            to_u64(row.try_get(1)?, 0, "event count")?,
            to_u64(row.try_get(2)?, 0, "stream count")?,
        ))
    }
}

/// Takes the log's write lock (held until the transaction ends) and returns the last position.
async fn lock_head(tx: &mut PgConnection) -> Result<Position> {
    // Serializes appends: held until commit, so positions commit in order.
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_log_head FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    to_u64(head, head, "head position")
}

/// Checks and writes a commit's events in the caller's transaction, which holds the write lock
/// and knows the `head` position. `known`, when given, says which of the commit's event ids are
/// stored already (read under the same lock), which spares looking them up again.
async fn write_appends(
    tx: &mut PgConnection,
    appends: &[StreamAppend],
    head: Position,
    order: Option<&[usize]>,
    known: Option<&HashMap<EventId, EventRef>>,
) -> Result<AppendOutcome> {
    let looked_up: HashMap<EventId, EventRef>;
    let stored = match known {
        Some(known) => known,
        None => {
            looked_up = find_in(&mut *tx, &plan::event_ids(appends))
                .await?
                .into_iter()
                .map(|r| (r.event_id, r))
                .collect();
            &looked_up
        }
    };
    let states = load_states(&mut *tx, appends).await?;
    let mut plan = plan::plan(appends, stored, &states, head, order)?;
    if plan.rows.is_empty() {
        return Ok(plan.outcome);
    }

    if !plan.new_streams.is_empty() {
        let names: Vec<&str> = plan
            .new_streams
            .iter()
            .map(|&i| appends[i].stream_id.as_str())
            .collect();
        let rows = sqlx::query(
            "INSERT INTO streams (stream_id) SELECT * FROM UNNEST($1::text[]) \
             RETURNING stream_key, stream_id",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        let created: HashMap<String, i64> = rows
            .iter()
            .map(|r| Ok((r.try_get(1)?, r.try_get(0)?)))
            .collect::<Result<_>>()?;
        for &index in &plan.new_streams {
            plan.stream_keys[index] = created.get(appends[index].stream_id.as_str()).copied();
        }
    }
    let keys = &plan.stream_keys;

    let n = plan.rows.len();
    let mut positions = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut stream_keys = Vec::with_capacity(n);
    let mut stream_ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schemas = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut channels = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    for row in &plan.rows {
        let meta = row.event.metadata();
        positions.push(to_i64(row.position));
        event_ids.push(row.event.event_id().as_uuid());
        stream_keys.push(keys[row.stream_index]);
        stream_ids.push(appends[row.stream_index].stream_id.as_str());
        versions.push(to_i64(row.stream_version));
        types.push(row.event.event_type());
        schemas.push(i32::try_from(row.event.schema_version()).unwrap_or(i32::MAX));
        occurred.push(row.event.occurred());
        payloads.push(row.event.payload());
        sources.push(meta.source.as_deref());
        channels.push(meta.channel.as_deref());
        correlations.push(meta.correlation_id);
        causations.push(meta.causation_id);
        actors.push(meta.actor.as_deref());
        reasons.push(meta.reason.as_deref());
    }
    sqlx::query(
        "INSERT INTO events (position, event_id, stream_key, stream_id, stream_version, \
         event_type, schema_version, occurred_at, recorded_at, payload, source, channel, \
         correlation_id, causation_id, actor, reason) \
         SELECT p, i, k, sid, v, t, sv, o, $8, pl::json, src, ch, co, ca, ac, re \
         FROM UNNEST($1::int8[], $2::uuid[], $3::int8[], $4::int8[], $5::text[], \
         $6::int4[], $7::timestamptz[], $9::text[], $10::text[], $11::text[], \
         $12::uuid[], $13::uuid[], $14::text[], $15::text[], $16::text[]) \
         AS r(p, i, k, v, t, sv, o, pl, src, ch, co, ca, ac, re, sid)",
    )
    .bind(&positions)
    .bind(&event_ids)
    .bind(&stream_keys)
    .bind(&versions)
    .bind(&types)
    .bind(&schemas)
    .bind(&occurred)
    .bind(plan.outcome.recorded_at)
    .bind(&payloads)
    .bind(&sources)
    .bind(&channels)
    .bind(&correlations)
    .bind(&causations)
    .bind(&actors)
    .bind(&reasons)
    .bind(&stream_ids)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from_write)?;
    sqlx::query("UPDATE event_log_head SET last_position = $1")
        .bind(to_i64(plan.outcome.head))
        .execute(&mut *tx)
        .await?;
    Ok(plan.outcome)
}

async fn find_in(conn: &mut PgConnection, ids: &[EventId]) -> Result<Vec<EventRef>> {
    let ids: Vec<Uuid> = ids.iter().map(EventId::as_uuid).collect();
    let rows = sqlx::query(
        "SELECT e.event_id, e.position, e.stream_id, e.stream_version \
         FROM UNNEST($1::uuid[]) AS q(id) JOIN events e ON e.event_id = q.id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let position: i64 = row.try_get(1)?;
            let stream_id: String = row.try_get(2)?;
            Ok(EventRef {
                event_id: EventId::from_uuid(row.try_get(0)?),
                position: to_u64(position, position, "position")?,
                stream_id: StreamId::new(stream_id).map_err(|e| StoreError::Corrupt {
                    position: position.max(0).unsigned_abs(),
                    reason: e.to_string(),
                })?,
                stream_version: to_u64(row.try_get(3)?, position, "stream version")?,
            })
        })
        .collect()
}

async fn load_states(
    conn: &mut PgConnection,
    appends: &[StreamAppend],
) -> Result<HashMap<StreamId, StreamState>> {
    let names: Vec<&str> = appends.iter().map(|a| a.stream_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT s.stream_id, s.stream_key, (SELECT max(e.stream_version) FROM events e \
         WHERE e.stream_key = s.stream_key) \
         FROM UNNEST($1::text[]) AS q(id) JOIN streams s ON s.stream_id = q.id",
    )
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        let stream_id: String = row.try_get(0)?;
        let version: Option<i64> = row.try_get(2)?;
        let stream_id = StreamId::new(stream_id).map_err(|e| StoreError::Corrupt {
            position: 0,
            reason: format!("streams table: {e}"),
        })?;
        states.insert(
            stream_id,
            StreamState {
                key: Some(row.try_get(1)?),
                version: to_u64(version.unwrap_or(0), 0, "stream version")?,
            },
        );
    }
    Ok(states)
}
