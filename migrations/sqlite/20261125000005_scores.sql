-- Value and lifecycle of each live customer as of the last scoring run (`patron score`).
CREATE TABLE customer_scores (
    customer_id    BLOB PRIMARY KEY,      -- 16-byte UUID
    as_of          INTEGER NOT NULL,      -- microseconds since 1970-01-01 UTC
    recency_days   INTEGER,               -- NULL: no order in the window
    frequency      INTEGER NOT NULL,
    monetary_minor INTEGER NOT NULL,
    r              INTEGER,               -- RFM scores 1-5; NULL without orders in the window
    f              INTEGER,
    m              INTEGER,
    rfm_segment    TEXT,
    tier           TEXT NOT NULL,
    stage          TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX customer_scores_tier ON customer_scores (tier);
CREATE INDEX customer_scores_stage ON customer_scores (stage);

-- Every change of lifecycle stage, stamped with the scoring run that saw it.
CREATE TABLE lifecycle_transitions (
    id          INTEGER PRIMARY KEY,
    customer_id BLOB NOT NULL,
    from_stage  TEXT,                     -- NULL: the customer's first stage
    to_stage    TEXT NOT NULL,
    at          INTEGER NOT NULL          -- microseconds since 1970-01-01 UTC
);
CREATE INDEX lifecycle_transitions_at ON lifecycle_transitions (at);
