//! The event log in an embedded SQLite file (WAL mode, one writer).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use patron_domain::{
    EventId, Metadata, Position, RecordedEvent, StreamAppend, StreamId, StreamVersion,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::plan::{self, StreamState};
use super::{to_i64, to_u64, AppendOutcome, EventRef};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Bound parameters per statement stay well under SQLite's limit of 32,766.
const ROWS_PER_INSERT: usize = 1_000;
const KEYS_PER_LOOKUP: usize = 2_000;

const SELECT_EVENTS: &str = "SELECT e.position, e.event_id, s.stream_id, e.stream_version, \
     e.event_type, e.schema_version, e.occurred_at, e.recorded_at, e.payload, e.source, \
     e.channel, e.correlation_id, e.causation_id, e.actor, e.reason \
     FROM events e JOIN streams s ON s.stream_key = e.stream_key";

/// SQLite allows one writer at a time: a pool of one connection serializes appends in this
/// process, and `BEGIN IMMEDIATE` with a busy timeout serializes them with other processes.
#[derive(Clone)]
pub(crate) struct SqliteLog {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(value: i64, position: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| StoreError::Corrupt {
        position: position.max(0).unsigned_abs(),
        reason: format!("timestamp {value} is out of range"),
    })
}

fn decode_event(row: &SqliteRow) -> Result<RecordedEvent> {
    let position: i64 = row.try_get(0)?;
    let stream_id: String = row.try_get(2)?;
    let stream_id = StreamId::new(stream_id).map_err(|e| StoreError::Corrupt {
        position: position.max(0).unsigned_abs(),
        reason: e.to_string(),
    })?;
    let schema_version: i64 = row.try_get(5)?;
    Ok(RecordedEvent {
        position: to_u64(position, position, "position")?,
        event_id: EventId::from_uuid(row.try_get(1)?),
        stream_id,
        stream_version: to_u64(row.try_get(3)?, position, "stream version")?,
        event_type: row.try_get(4)?,
        schema_version: u32::try_from(schema_version).map_err(|_| StoreError::Corrupt {
            position: position.max(0).unsigned_abs(),
            reason: format!("schema version {schema_version} is out of range"),
        })?,
        occurred_at: from_micros(row.try_get(6)?, position)?,
        recorded_at: from_micros(row.try_get(7)?, position)?,
        payload: row.try_get(8)?,
        metadata: Metadata {
            source: row.try_get(9)?,
            channel: row.try_get(10)?,
            correlation_id: row.try_get(11)?,
            causation_id: row.try_get(12)?,
            actor: row.try_get(13)?,
            reason: row.try_get(14)?,
        },
    })
}

impl SqliteLog {
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false)
            .pragma("cache_size", "-131072")
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        Ok(Self { writer, reader })
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    pub(crate) async fn append(&self, appends: &[StreamAppend]) -> Result<AppendOutcome> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<EventId> = appends
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.event_id()))
            .collect();
        let stored: HashMap<EventId, EventRef> = find_in(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id, r))
            .collect();
        let states = load_states(&mut tx, appends).await?;
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let recorded_at = Utc::now().trunc_subsecs(6);
        let plan = plan::plan(
            appends,
            &stored,
            &states,
            to_u64(head, head, "head position")?,
            recorded_at,
        )?;
        if plan.rows.is_empty() {
            tx.rollback().await?;
            return Ok(plan.outcome);
        }

        let mut keys: Vec<Option<i64>> = appends
            .iter()
            .map(|a| states.get(&a.stream_id).and_then(|s| s.key))
            .collect();
        for chunk in plan.new_streams.chunks(KEYS_PER_LOOKUP) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO streams (stream_id) ");
            qb.push_values(chunk, |mut b, &index| {
                b.push_bind(appends[index].stream_id.as_str());
            });
            qb.push(" RETURNING stream_key, stream_id");
            let rows = qb
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
            let created: HashMap<String, i64> = rows
                .iter()
                .map(|r| Ok((r.try_get(1)?, r.try_get(0)?)))
                .collect::<Result<_>>()?;
            for &index in chunk {
                keys[index] = created.get(appends[index].stream_id.as_str()).copied();
            }
        }

        let recorded = micros(recorded_at);
        for chunk in plan.rows.chunks(ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (position, event_id, stream_key, stream_version, event_type, \
                 schema_version, occurred_at, recorded_at, payload, source, channel, \
                 correlation_id, causation_id, actor, reason) ",
            );
            qb.push_values(chunk, |mut b, row| {
                let meta = row.event.metadata();
                b.push_bind(to_i64(row.position))
                    .push_bind(row.event.event_id().as_uuid())
                    .push_bind(keys[row.stream_index])
                    .push_bind(to_i64(row.stream_version))
                    .push_bind(row.event.event_type())
                    .push_bind(i64::from(row.event.schema_version()))
                    .push_bind(micros(row.event.occurred()))
                    .push_bind(recorded)
                    .push_bind(row.event.payload())
                    .push_bind(meta.source.as_deref())
                    .push_bind(meta.channel.as_deref())
                    .push_bind(meta.correlation_id)
                    .push_bind(meta.causation_id)
                    .push_bind(meta.actor.as_deref())
                    .push_bind(meta.reason.as_deref());
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
        }
        tx.commit().await?;
        Ok(plan.outcome)
    }

    pub(crate) async fn find(&self, ids: &[EventId]) -> Result<Vec<EventRef>> {
        let mut conn = self.reader.acquire().await?;
        find_in(&mut conn, ids).await
    }

    pub(crate) async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "{SELECT_EVENTS} WHERE s.stream_id = ? AND e.stream_version >= ? \
             ORDER BY e.stream_version LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_id.as_str())
            .bind(to_i64(from_version))
            .bind(to_i64(max as u64))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_event).collect()
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
        let sql = format!("{SELECT_EVENTS} WHERE e.position > ? ORDER BY e.position LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(to_i64(after))
            .bind(to_i64(max as u64))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    pub(crate) async fn head(&self) -> Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.reader)
            .await?;
        to_u64(head, head, "head position")
    }

    pub(crate) async fn stats(&self) -> Result<(Position, u64, u64)> {
        let row = sqlx::query(
            "SELECT coalesce(max(position), 0), count(*), \
             (SELECT count(*) FROM streams) FROM events",
        )
        .fetch_one(&self.reader)
        .await?;
        let head: i64 = row.try_get(0)?;
        Ok((
            to_u64(head, head, "head position")?,
            to_u64(row.try_get(1)?, 0, "event count")?,
            to_u64(row.try_get(2)?, 0, "stream count")?,
        ))
    }
}

async fn find_in(conn: &mut SqliteConnection, ids: &[EventId]) -> Result<Vec<EventRef>> {
    let mut found = Vec::new();
    for chunk in ids.chunks(KEYS_PER_LOOKUP) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT e.event_id, e.position, s.stream_id, e.stream_version FROM events e \
             JOIN streams s ON s.stream_key = e.stream_key WHERE e.event_id IN (",
        );
        let mut list = qb.separated(", ");
        for id in chunk {
            list.push_bind(id.as_uuid());
        }
        qb.push(")");
        for row in qb.build().fetch_all(&mut *conn).await? {
            let position: i64 = row.try_get(1)?;
            let stream_id: String = row.try_get(2)?;
            found.push(EventRef {
                event_id: EventId::from_uuid(row.try_get::<Uuid, _>(0)?),
                position: to_u64(position, position, "position")?,
                stream_id: StreamId::new(stream_id).map_err(|e| StoreError::Corrupt {
                    position: position.max(0).unsigned_abs(),
                    reason: e.to_string(),
                })?,
                stream_version: to_u64(row.try_get(3)?, position, "stream version")?,
            });
        }
    }
    Ok(found)
}

async fn load_states(
    conn: &mut SqliteConnection,
    appends: &[StreamAppend],
) -> Result<HashMap<StreamId, StreamState>> {
    let mut states = HashMap::with_capacity(appends.len());
    for chunk in appends.chunks(KEYS_PER_LOOKUP) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT s.stream_id, s.stream_key, (SELECT max(e.stream_version) FROM events e \
             WHERE e.stream_key = s.stream_key) FROM streams s WHERE s.stream_id IN (",
        );
        let mut list = qb.separated(", ");
        for append in chunk {
            list.push_bind(append.stream_id.as_str());
        }
        qb.push(")");
        for row in qb.build().fetch_all(&mut *conn).await? {
            let stream_id: String = row.try_get(0)?;
            let version: Option<i64> = row.try_get(2)?;
            let Ok(stream_id) = StreamId::new(stream_id) else {
                continue;
            };
            states.insert(
                stream_id,
                StreamState {
                    key: Some(row.try_get(1)?),
                    version: to_u64(version.unwrap_or(0), 0, "stream version")?,
                },
            );
        }
    }
    Ok(states)
}
