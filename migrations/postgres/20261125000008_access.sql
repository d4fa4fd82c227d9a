-- API keys: the SHA-256 of each secret (the secret itself is shown once, never stored) and the
-- role it grants (viewer, analyst, operator, admin).
CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,     -- hex SHA-256 of the secret
    created_at  BIGINT NOT NULL,          -- microseconds since 1970-01-01 UTC
    revoked_at  BIGINT                    -- NULL: live
);

-- Every read of unmasked personal data: who, when, which customer, which fields.
CREATE TABLE access_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,          -- microseconds since 1970-01-01 UTC
    key_id      UUID NOT NULL,
    key_name    TEXT NOT NULL,
    customer_id UUID NOT NULL,
    what        TEXT NOT NULL             -- identifiers, traits, timeline
);
CREATE INDEX access_log_customer ON access_log (customer_id, at);

-- Which segments a customer is in (the API shows them with each customer).
CREATE INDEX segment_members_customer ON segment_members (customer_id);
