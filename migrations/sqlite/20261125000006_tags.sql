-- Each live customer's tags as of the last scoring run.
CREATE TABLE customer_tags (
    tag         TEXT NOT NULL,
    customer_id BLOB NOT NULL,
    PRIMARY KEY (tag, customer_id)
) WITHOUT ROWID;
CREATE INDEX customer_tags_customer ON customer_tags (customer_id);
