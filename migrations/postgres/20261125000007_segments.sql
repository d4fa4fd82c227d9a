-- Saved segments: a name and a rule in the segment rule language (docs/projections.md).
CREATE TABLE segments (
    name       TEXT PRIMARY KEY,
    rule       TEXT NOT NULL,
    created_at BIGINT NOT NULL,           -- microseconds since 1970-01-01 UTC
    updated_at BIGINT NOT NULL
);

-- Each segment's members as of the last refresh.
CREATE TABLE segment_members (
    segment     TEXT NOT NULL,
    customer_id UUID NOT NULL,
    since       BIGINT NOT NULL,          -- microseconds since 1970-01-01 UTC
    PRIMARY KEY (segment, customer_id)
);

-- Every entry into and exit from a segment, with the refresh that saw it.
CREATE TABLE segment_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    segment     TEXT NOT NULL,
    customer_id UUID NOT NULL,
    entered     SMALLINT NOT NULL,        -- 1: entered, 0: left
    at          BIGINT NOT NULL           -- microseconds since 1970-01-01 UTC
);
CREATE INDEX segment_log_segment ON segment_log (segment, at);
