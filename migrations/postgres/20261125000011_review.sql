-- Likely duplicates the identity rules did not merge, for an operator to accept (a merge) or
-- reject (remembered: the pair is never suggested again).
CREATE TABLE duplicate_suggestions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_id    UUID NOT NULL,            -- the two customers, in id order
    second_id   UUID NOT NULL,
    score       DOUBLE PRECISION NOT NULL, -- probability that they are one person, 0 to 1
    evidence    TEXT NOT NULL,            -- JSON: the signals and their weights
    status      TEXT NOT NULL,            -- open, accepted, rejected
    found_at    BIGINT NOT NULL,          -- microseconds since 1970-01-01 UTC
    seen_at     BIGINT  NOT NULL,         -- the last scan that found it
    decided_at  BIGINT,
    decided_by  TEXT,
    reason      TEXT,
    UNIQUE (first_id, second_id)
);
CREATE INDEX duplicate_suggestions_open ON duplicate_suggestions (status, score);
