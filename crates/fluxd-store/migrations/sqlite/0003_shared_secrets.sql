-- fluxd schema, version 3: secrets every process on this database must share (the delivery
-- URLs' signing key, when the database is not the data directory's own), each created once.
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY,
    -- Lowercase hex.
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
