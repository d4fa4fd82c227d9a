-- The event log: append-only, ordered by position.
-- Streams are interned to integer keys so that the (stream, version) index stays compact.
CREATE TABLE streams (
    stream_key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id  TEXT NOT NULL UNIQUE
);

-- One row holding the last position handed out. Appending transactions lock it, so positions
-- are assigned and committed in the same order and a catch-up reader can never see a position
-- before a smaller one has committed.
CREATE TABLE event_log_head (
    singleton     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last_position BIGINT NOT NULL
);
INSERT INTO event_log_head (singleton, last_position) VALUES (TRUE, 0);

CREATE TABLE events (
    position       BIGINT      PRIMARY KEY,
    event_id       UUID        NOT NULL,
    stream_key     BIGINT      NOT NULL,  -- streams.stream_key, for the compact version index
    stream_id      TEXT        NOT NULL,  -- streams.stream_id, so reads need no join
    stream_version BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    payload        JSON        NOT NULL,  -- written once, read in order: json, not jsonb
    source         TEXT,
    channel        TEXT,
    correlation_id UUID,
    causation_id   UUID,
    actor          TEXT,
    reason         TEXT,
    CONSTRAINT events_event_id UNIQUE (event_id),
    CONSTRAINT events_stream_version UNIQUE (stream_key, stream_version)
);
