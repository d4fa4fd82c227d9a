-- How far each projection has read the log: written in the same transaction as its rows, so a
-- crash never applies an event twice or skips one.
CREATE TABLE projection_checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);

-- The customer profile: one row per customer ever seen; a merged customer's row names its
-- survivor. `state` holds the figures as JSON, without personal data.
CREATE TABLE profiles (
    customer_id BLOB PRIMARY KEY,         -- 16-byte UUID
    merged_into BLOB,
    state       TEXT NOT NULL
) WITHOUT ROWID;
