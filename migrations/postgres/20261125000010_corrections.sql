-- Identifier values an operator blocked (by pseudonym): they never link a customer again.
-- The decisions themselves are events on the identity-blocklist stream.
CREATE TABLE blocked_identifiers (
    kind      TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    PRIMARY KEY (kind, pseudonym)
);
