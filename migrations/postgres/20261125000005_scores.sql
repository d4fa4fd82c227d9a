-- Value and lifecycle of each live customer as of the last scoring run (`patron score`).
CREATE TABLE customer_scores (
    customer_id    UUID PRIMARY KEY,
    as_of          TIMESTAMPTZ NOT NULL,
    recency_days   BIGINT,                -- NULL: no order in the window
    frequency      BIGINT NOT NULL,
    monetary_minor BIGINT NOT NULL,
    r              SMALLINT,              -- RFM scores 1-5; NULL without orders in the window
    f              SMALLINT,
    m              SMALLINT,
    rfm_segment    TEXT,
    tier           TEXT NOT NULL,
    stage          TEXT NOT NULL
);
CREATE INDEX customer_scores_tier ON customer_scores (tier);
CREATE INDEX customer_scores_stage ON customer_scores (stage);

-- Every change of lifecycle stage, stamped with the scoring run that saw it.
CREATE TABLE lifecycle_transitions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id UUID NOT NULL,
    from_stage  TEXT,                     -- NULL: the customer's first stage
    to_stage    TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX lifecycle_transitions_at ON lifecycle_transitions (at);
