-- The identity index: which live customer holds each identifier, looked up by pseudonym
-- (a keyed hash of kind and value), so the index reveals no personal data.
CREATE TABLE identity_index (
    kind        TEXT NOT NULL,
    pseudonym   TEXT NOT NULL,
    customer_id UUID NOT NULL,
    PRIMARY KEY (kind, pseudonym)
);
CREATE INDEX identity_index_customer ON identity_index (customer_id);

-- Customers closed by a merge, and the live customer each now resolves to.
CREATE TABLE customer_aliases (
    absorbed UUID PRIMARY KEY,
    survivor UUID NOT NULL
);
CREATE INDEX customer_aliases_survivor ON customer_aliases (survivor);

-- Records refused at ingestion, kept with the reason and the record as received.
CREATE TABLE quarantine (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL,
    source      TEXT,
    code        TEXT NOT NULL,
    field       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    record      TEXT NOT NULL,
    record_key  TEXT NOT NULL UNIQUE  -- hash of source and record: a record refused again is kept once
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);

-- Settings Patron keeps for itself, such as the generated identity key of an embedded store.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
