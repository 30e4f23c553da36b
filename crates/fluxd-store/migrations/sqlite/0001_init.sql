-- fluxd schema, version 1.
-- Types are chosen so that the same statements read the same in PostgreSQL: TEXT, BIGINT,
-- INTEGER, DOUBLE PRECISION, BOOLEAN. Times are BIGINT milliseconds since the Unix epoch, ids are
-- hyphenated UUID text, JSON is TEXT holding the exact bytes that were written.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    label TEXT,
    -- The first characters of the key: not secret, shown to operators, and the lookup index.
    prefix TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the whole key; the key itself is never stored.
    key_hash TEXT NOT NULL,
    max_active_tasks INTEGER NOT NULL DEFAULT 24,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (id),
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    params TEXT NOT NULL,
    finetune_id TEXT,
    webhook_url TEXT,
    webhook_secret TEXT,
    -- Exactly the contract's status strings: 'Pending', 'Ready', 'Error', 'Request Moderated',
    -- 'Content Moderated'. A running task is 'Pending' with a worker, a lease and a progress.
    status TEXT NOT NULL,
    worker_id TEXT,
    lease_until BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    progress DOUBLE PRECISION,
    last_error TEXT,
    -- Error: the message; moderated: a JSON array of reasons.
    details TEXT,
    sample_key TEXT,
    prompt_used TEXT,
    -- The u64 seed's bits as a signed 64-bit integer.
    seed_used BIGINT,
    start_time DOUBLE PRECISION,
    end_time DOUBLE PRECISION,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX tasks_queue ON tasks (status, created_at);
CREATE INDEX tasks_key_status ON tasks (key_id, status);
CREATE INDEX tasks_finished ON tasks (finished_at);

CREATE TABLE finetunes (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    format TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha DOUBLE PRECISION,
    base_hidden INTEGER,
    trigger_word TEXT,
    comment TEXT,
    blob_key TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    shared BOOLEAN NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The webhook outbox. No foreign key to tasks: a delivery may outlive its task's retention.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    -- Standard Webhooks' `webhook-id`, stable across retries.
    webhook_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT,
    payload TEXT NOT NULL,
    -- 'pending', 'delivered' or 'failed'.
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    worker_id TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (status, next_attempt_at);
CREATE INDEX webhooks_task ON webhooks (task_id);
