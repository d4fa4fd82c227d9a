//! The event log on a PostgreSQL server.
//!
//! Appending transactions lock the one-row `event_log_head` table before they assign positions
//! and hold the lock until they commit, so positions commit in order and readers may read every
//! position they see without waiting for a safe high-water mark.

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

    /// Reads what `decide` needs under the log's write lock, then writes what it decided (events
    /// and identity index changes) in the same transaction.
    pub(crate) async fn commit_identity<T>(
        &self,
        event_ids: &[EventId],
        keys: &[Identifier],
        quarantine: &[QuarantinedRecord],
        decide: impl FnOnce(IdentitySnapshot) -> Result<IdentityCommit<T>>,
    ) -> Result<(AppendOutcome, Vec<u64>, T)> {
        let mut tx = self.pool.begin().await?;
        let head = lock_head(&mut tx).await?;
        let quarantined = insert_quarantine(&mut tx, quarantine).await?;
        let stored: HashMap<EventId, EventRef> = find_in(&mut tx, event_ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id, r))
            .collect();
        let graph = load_graph(&mut tx, keys).await?;
        let customers: Vec<CustomerId> = graph.customers().collect();
        let customer_keys = load_keys(&mut tx, &customers).await?;
        let commit = decide(IdentitySnapshot {
            stored: stored.clone(),
            graph,
            customer_keys,
        })?;
        plan::validate(&commit.appends)?;
        write_identity_changes(&mut tx, &commit.changes).await?;
        let outcome = write_appends(
            &mut tx,
            &commit.appends,
            head,
            commit.order.as_deref(),
            Some(&stored),
        )
        .await?;
        tx.commit().await?;
        Ok((outcome, quarantined, commit.value))
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

/// Inserts refused records into the quarantine; returns their numbers, in order. A record
/// refused before (same source and text) keeps its number and is not stored again.
async fn insert_quarantine(
    conn: &mut PgConnection,
    records: &[QuarantinedRecord],
) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let at: Vec<DateTime<Utc>> = records.iter().map(|r| r.received_at).collect();
    let sources: Vec<Option<&str>> = records.iter().map(|r| r.source.as_deref()).collect();
    let codes: Vec<&str> = records.iter().map(|r| r.code.as_str()).collect();
    let fields: Vec<&str> = records.iter().map(|r| r.field.as_str()).collect();
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    let raw: Vec<&str> = records.iter().map(|r| r.record.as_str()).collect();
    let keys: Vec<String> = records.iter().map(QuarantinedRecord::record_key).collect();
    sqlx::query(
        "INSERT INTO quarantine (received_at, source, code, field, reason, record, record_key) \
         SELECT a, s, c, f, r, x, k FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
         AS u(a, s, c, f, r, x, k, n) ORDER BY n ON CONFLICT (record_key) DO NOTHING",
    )
    .bind(&at)
    .bind(&sources)
    .bind(&codes)
    .bind(&fields)
    .bind(&reasons)
    .bind(&raw)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, record_key FROM quarantine WHERE record_key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?;
    let ids: HashMap<String, i64> = rows.into_iter().map(|(id, key)| (key, id)).collect();
    keys.iter()
        .map(|key| {
            let id = ids.get(key).copied().ok_or_else(|| StoreError::Corrupt {
                position: 0,
                reason: "a quarantined record vanished during its insert".into(),
            })?;
            to_u64(id, 0, "quarantine id")
        })
        .collect()
}

/// The holders of `keys` and every pseudonym they hold.
async fn load_graph(conn: &mut PgConnection, keys: &[Identifier]) -> Result<IdentityGraph> {
    let kinds: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
    let values: Vec<&str> = keys.iter().map(|k| k.value.as_str()).collect();
    let rows = sqlx::query(
        "SELECT i.kind, i.pseudonym, i.customer_id FROM identity_index i \
         WHERE i.customer_id IN (SELECT o.customer_id FROM UNNEST($1::text[], $2::text[]) \
         AS q(kind, pseudonym) JOIN identity_index o \
         ON o.kind = q.kind AND o.pseudonym = q.pseudonym)",
    )
    .bind(&kinds)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| {
            let kind: String = row.try_get(0)?;
            let identifier = Identifier {
                kind: IdentifierKind::new(kind).map_err(|e| StoreError::Corrupt {
                    position: 0,
                    reason: format!("identity index: {e}"),
                })?,
                value: row.try_get(1)?,
            };
            Ok((identifier, CustomerId::from_uuid(row.try_get(2)?)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut graph = graph_of(rows);
    let blocked: Vec<(String, String)> = sqlx::query_as(
        "SELECT b.kind, b.pseudonym FROM UNNEST($1::text[], $2::text[]) AS q(kind, pseudonym) \
         JOIN blocked_identifiers b ON b.kind = q.kind AND b.pseudonym = q.pseudonym",
    )
    .bind(&kinds)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await?;
    for (kind, value) in blocked {
        if let Some(key) = keys
            .iter()
            .find(|k| k.kind.as_str() == kind && k.value == value)
        {
            graph.block(key.clone());
        }
    }
    Ok(graph)
}

/// The wrapped keys of those of `customers` that have one.
async fn load_keys(
    conn: &mut PgConnection,
    customers: &[CustomerId],
) -> Result<HashMap<CustomerId, Vec<u8>>> {
    if customers.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT customer_id, wrapped FROM customer_keys WHERE customer_id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, w)| (CustomerId::from_uuid(c), w))
        .collect())
}

/// Writes merges (re-pointing the absorbed customers' pseudonyms and aliases), links, then
/// new customer keys.
async fn write_identity_changes(conn: &mut PgConnection, changes: &IdentityChanges) -> Result<()> {
    if !changes.merges.is_empty() {
        // Applied at once with each absorbed customer's final survivor, which is what applying
        // them one by one would leave.
        let (absorbed, survivors): (Vec<Uuid>, Vec<Uuid>) = changes
            .final_merges()
            .into_iter()
            .map(|(a, s)| (a.as_uuid(), s.as_uuid()))
            .unzip();
        sqlx::query(
            "UPDATE identity_index i SET customer_id = m.survivor \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS m(absorbed, survivor) \
             WHERE i.customer_id = m.absorbed",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE customer_aliases a SET survivor = m.survivor \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS m(absorbed, survivor) \
             WHERE a.survivor = m.absorbed",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO customer_aliases (absorbed, survivor) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[])",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    if !changes.links.is_empty() {
        let kinds: Vec<&str> = changes.links.iter().map(|(k, _)| k.kind.as_str()).collect();
        let values: Vec<&str> = changes
            .links
            .iter()
            .map(|(k, _)| k.value.as_str())
            .collect();
        let customers: Vec<Uuid> = changes.links.iter().map(|(_, c)| c.as_uuid()).collect();
        sqlx::query(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[])",
        )
        .bind(&kinds)
        .bind(&values)
        .bind(&customers)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    for (restored, members) in &changes.restored {
        sqlx::query("DELETE FROM customer_aliases WHERE absorbed = $1")
            .bind(restored.as_uuid())
            .execute(&mut *conn)
            .await?;
        let members: Vec<Uuid> = members.iter().map(|m| m.as_uuid()).collect();
        sqlx::query("UPDATE customer_aliases SET survivor = $1 WHERE absorbed = ANY($2::uuid[])")
            .bind(restored.as_uuid())
            .bind(&members)
            .execute(&mut *conn)
            .await?;
    }
    for (key, holder) in &changes.holders {
        match holder {
            Some(holder) => sqlx::query(
                "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, pseudonym) DO UPDATE SET customer_id = excluded.customer_id",
            )
            .bind(key.kind.as_str())
            .bind(&key.value)
            .bind(holder.as_uuid()),
            None => sqlx::query("DELETE FROM identity_index WHERE kind = $1 AND pseudonym = $2")
                .bind(key.kind.as_str())
                .bind(&key.value),
        }
        .execute(&mut *conn)
        .await?;
    }
    for key in &changes.blocks {
        sqlx::query(
            "INSERT INTO blocked_identifiers (kind, pseudonym) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .execute(&mut *conn)
        .await?;
    }
    if !changes.new_keys.is_empty() {
        let (customers, wrapped): (Vec<Uuid>, Vec<Vec<u8>>) = changes
            .new_keys
            .iter()
            .map(|(c, w)| (c.as_uuid(), w.clone()))
            .unzip();
        sqlx::query(
            "INSERT INTO customer_keys (customer_id, wrapped) \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[])",
        )
        .bind(&customers)
        .bind(&wrapped)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    Ok(())
}

impl PostgresLog {
    pub(crate) async fn customer_keys(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<u8>>> {
        let mut conn = self.pool.acquire().await?;
        load_keys(&mut conn, customers).await
    }

    /// Erases a customer in one write transaction; see [`super::EventStore::erase`].
    pub(crate) async fn erase(
        &self,
        customer: CustomerId,
        moved_in: &[Position],
        holds_their_data: &(dyn Fn(&str) -> bool + Sync),
        event: impl FnOnce(CustomerId, &[CustomerId]) -> Result<NewEvent>,
    ) -> Result<Erasure> {
        let mut tx = self.pool.begin().await?;
        let head = lock_head(&mut tx).await?;
        let survivor: Option<Uuid> =
            sqlx::query_scalar("SELECT survivor FROM customer_aliases WHERE absorbed = $1")
                .bind(customer.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let live = survivor.map_or(customer, CustomerId::from_uuid);
        let absorbed: Vec<Uuid> =
            sqlx::query_scalar("SELECT absorbed FROM customer_aliases WHERE survivor = $1")
                .bind(live.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
        let mut all = vec![live];
        all.extend(absorbed.into_iter().map(CustomerId::from_uuid));
        let ids: Vec<Uuid> = all.iter().map(|c| c.as_uuid()).collect();
        sqlx::query("DELETE FROM customer_keys WHERE customer_id = ANY($1::uuid[])")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let positions: Vec<i64> = moved_in.iter().map(|p| to_i64(*p)).collect();
        let moved: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT e.position, s.stream_id, e.payload::text FROM events e \
             JOIN streams s ON s.stream_key = e.stream_key WHERE e.position = ANY($1::bigint[])",
        )
        .bind(&positions)
        .fetch_all(&mut *tx)
        .await?;
        let mut touchpoints_shredded = 0u64;
        for (position, stream, payload) in moved {
            let at = to_u64(position, 0, "position")?;
            if let Some(shredded) = shredded_payload(at, &stream, &payload, &all)? {
                sqlx::query("UPDATE events SET payload = $2::json WHERE position = $1")
                    .bind(position)
                    .bind(shredded)
                    .execute(&mut *tx)
                    .await?;
                touchpoints_shredded += 1;
            }
        }
        let forgotten = sqlx::query("DELETE FROM identity_index WHERE customer_id = $1")
            .bind(live.as_uuid())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let records: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, record, reason FROM quarantine")
                .fetch_all(&mut *tx)
                .await?;
        let matched: Vec<i64> = records
            .into_iter()
            .filter(|(_, record, reason)| holds_their_data(record) || holds_their_data(reason))
            .map(|(id, _, _)| id)
            .collect();
        sqlx::query("DELETE FROM quarantine WHERE id = ANY($1::bigint[])")
            .bind(&matched)
            .execute(&mut *tx)
            .await?;
        let append = StreamAppend::new(
            live.stream_id(),
            ExpectedVersion::Any,
            vec![event(live, &all)?],
        );
        let outcome = write_appends(&mut tx, &[append], head, None, None).await?;
        tx.commit().await?;
        // Deleted rows stay in the table files until vacuumed, and VACUUM frees their space
        // without overwriting it: see docs/privacy.md for what that leaves on disk.
        // The events table only when a payload was rewritten: it is the largest by far.
        let vacuum = if touchpoints_shredded > 0 {
            "VACUUM customer_keys, identity_index, quarantine, events"
        } else {
            "VACUUM customer_keys, identity_index, quarantine"
        };
        let scrubbed = match sqlx::query(vacuum).execute(&self.pool).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err, "VACUUM after an erasure failed");
                false
            }
        };
        Ok(Erasure {
            scrubbed,
            customer: live,
            keys_destroyed: all,
            touchpoints_shredded,
            identifiers_removed: forgotten,
            quarantined_removed: matched.len() as u64,
            position: outcome.head,
        })
    }

    /// Blanks the text of quarantined records received before `before`; returns how many.
    pub(crate) async fn expire_quarantine(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE quarantine SET record = '', reason = '', expired_at = now() \
             WHERE received_at < $1 AND expired_at IS NULL",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            if let Err(err) = sqlx::query("VACUUM quarantine").execute(&self.pool).await {
                tracing::warn!(error = %err, "VACUUM after quarantine expiry failed");
            }
        }
        Ok(done.rows_affected())
    }

    pub(crate) async fn quarantined(
        &self,
        after_id: u64,
        max: usize,
    ) -> Result<Vec<QuarantinedRecord>> {
        let rows = sqlx::query(
            "SELECT id, received_at, source, code, field, reason, record, expired_at \
             FROM quarantine WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(to_i64(after_id))
        .bind(to_i64(max as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(QuarantinedRecord {
                    id: to_u64(row.try_get(0)?, 0, "quarantine id")?,
                    received_at: row.try_get(1)?,
                    source: row.try_get(2)?,
                    code: row.try_get(3)?,
                    field: row.try_get(4)?,
                    reason: row.try_get(5)?,
                    record: row.try_get(6)?,
                    expired_at: row.try_get(7)?,
                })
            })
            .collect()
    }

    pub(crate) async fn holder(&self, key: &Identifier) -> Result<Option<CustomerId>> {
        let id: Option<Uuid> = sqlx::query_scalar(
            "SELECT customer_id FROM identity_index WHERE kind = $1 AND pseudonym = $2",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(CustomerId::from_uuid))
    }

    pub(crate) async fn held_by(&self, customer: CustomerId) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT kind, pseudonym FROM identity_index WHERE customer_id = $1 \
             ORDER BY kind, pseudonym",
        )
        .bind(customer.as_uuid())
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn is_blocked(&self, key: &Identifier) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM blocked_identifiers WHERE kind = $1 AND pseudonym = $2",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn live_customer(&self, customer: CustomerId) -> Result<CustomerId> {
        let survivor: Option<Uuid> =
            sqlx::query_scalar("SELECT survivor FROM customer_aliases WHERE absorbed = $1")
                .bind(customer.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(survivor.map_or(customer, CustomerId::from_uuid))
    }

    pub(crate) async fn identity_counts(&self) -> Result<(u64, u64, u64)> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(DISTINCT customer_id) FROM identity_index), \
             (SELECT count(*) FROM customer_aliases), (SELECT count(*) FROM quarantine)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            to_u64(row.0, 0, "customer count")?,
            to_u64(row.1, 0, "alias count")?,
            to_u64(row.2, 0, "quarantine count")?,
        ))
    }

    pub(crate) async fn setting_or_insert(&self, name: &str, default: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(default)
        .execute(&self.pool)
        .await?;
        let value: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }

    pub(crate) async fn replace_identity_index(
        &self,
        at: Position,
        changes: &IdentityChanges,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = lock_head(&mut tx).await?;
        if now != at {
            return Err(moved_on(at, now));
        }
        for table in IDENTITY_TABLES {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        write_identity_changes(&mut tx, changes).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn aliases(&self) -> Result<Vec<(Uuid, Uuid)>> {
        Ok(
            sqlx::query_as("SELECT absorbed, survivor FROM customer_aliases")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
