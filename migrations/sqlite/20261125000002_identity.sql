-- The identity index: which live customer holds each identifier, looked up by pseudonym
-- (a keyed hash of kind and value), so the index reveals no personal data.
CREATE TABLE identity_index (
    kind        TEXT NOT NULL,
    pseudonym   TEXT NOT NULL,
    customer_id BLOB NOT NULL,            -- 16-byte UUID of a live customer
    PRIMARY KEY (kind, pseudonym)
) WITHOUT ROWID;
CREATE INDEX identity_index_customer ON identity_index (customer_id);

-- Customers closed by a merge, and the live customer each now resolves to.
CREATE TABLE customer_aliases (
    absorbed BLOB PRIMARY KEY,
    survivor BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX customer_aliases_survivor ON customer_aliases (survivor);

-- Records refused at ingestion, kept with the reason and the record as received.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,         -- microseconds since 1970-01-01 UTC
    source      TEXT,                     -- the sending system, when the record names it
    code        TEXT NOT NULL,            -- a stable rejection code
    field       TEXT NOT NULL,            -- the field at fault
    reason      TEXT NOT NULL,
    record      TEXT NOT NULL,            -- the record as received
    record_key  TEXT NOT NULL UNIQUE      -- hash of source and record: a record refused again is kept once
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);

-- Settings Patron keeps for itself, such as the generated identity key of an embedded store.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
