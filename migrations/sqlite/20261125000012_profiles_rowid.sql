-- Profiles as an ordinary (rowid) table: a profile of a kilobyte or more spills into overflow
-- pages in a WITHOUT ROWID table, which made folding and rebuilding slower. Rebuilds create the
-- table in this layout too.
CREATE TABLE profiles_rowid (
    customer_id BLOB PRIMARY KEY,         -- 16-byte UUID
    merged_into BLOB,
    state       TEXT NOT NULL
);
INSERT INTO profiles_rowid (customer_id, merged_into, state)
    SELECT customer_id, merged_into, state FROM profiles;
DROP TABLE profiles;
ALTER TABLE profiles_rowid RENAME TO profiles;
