-- The event log: append-only, ordered by position.
-- Streams are interned to integer keys so that the (stream, version) index stays compact.
CREATE TABLE streams (
    stream_key INTEGER PRIMARY KEY,
    stream_id  TEXT NOT NULL UNIQUE
);

CREATE TABLE events (
    position       INTEGER PRIMARY KEY,      -- global order of commit, assigned by the writer
    event_id       BLOB    NOT NULL,         -- 16-byte UUID, the idempotency key
    stream_key     INTEGER NOT NULL,         -- streams.stream_key
    stream_version INTEGER NOT NULL,         -- 1, 2, 3 ... within the stream
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,         -- microseconds since 1970-01-01 UTC
    recorded_at    INTEGER NOT NULL,         -- microseconds since 1970-01-01 UTC
    payload        TEXT    NOT NULL,         -- JSON
    source         TEXT,
    channel        TEXT,
    correlation_id BLOB,
    causation_id   BLOB,
    actor          TEXT,
    reason         TEXT
);

CREATE UNIQUE INDEX events_event_id ON events (event_id);
CREATE UNIQUE INDEX events_stream_version ON events (stream_key, stream_version);
