-- Each customer's key, wrapped by the master key. It unlocks the personal part of the events on
-- the customer's stream; deleting the row (erasure) makes that part unreadable for good.
CREATE TABLE customer_keys (
    customer_id BLOB PRIMARY KEY,         -- 16-byte UUID
    wrapped     BLOB NOT NULL             -- nonce and AES-256-GCM ciphertext of the key
) WITHOUT ROWID;

-- A quarantined record's raw text is blanked when it expires; the rest of the row stays for
-- data-quality counts.
ALTER TABLE quarantine ADD COLUMN expired_at INTEGER;   -- microseconds since 1970-01-01 UTC
