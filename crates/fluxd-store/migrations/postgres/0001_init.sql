-- fluxd schema for PostgreSQL, version 1: the SQLite schema (migrations/sqlite, up to its
-- version 3) with the same tables, columns and values, so that a row reads back through the same
-- code and `fluxd store copy` moves values unchanged. Ids are hyphenated UUID text, JSON is TEXT
-- holding the exact bytes that were written, times are BIGINT milliseconds since the Unix epoch,
-- every integer is BIGINT (one integer type to decode).
--
-- Times that decide leases and due dates come from the database's clock (`fluxd_now_ms()`), not
-- from the clocks of the API and worker machines, which may disagree.

CREATE FUNCTION fluxd_now_ms() RETURNS BIGINT LANGUAGE sql STABLE AS
$$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::BIGINT $$;

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
    max_active_tasks BIGINT NOT NULL DEFAULT 24,
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
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
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
-- Claims scan unfinished tasks in submission order (ties broken by id); finished tasks, the
-- bulk of the table, are not in this index.
CREATE INDEX tasks_queue ON tasks (created_at, id) WHERE status = 'Pending';
-- Only finished tasks are swept by retention.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE finetunes (
    tenant TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    format TEXT NOT NULL,
    rank BIGINT NOT NULL,
    alpha DOUBLE PRECISION,
    base_hidden BIGINT,
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
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    worker_id TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at, created_at) WHERE status = 'pending';
CREATE INDEX webhooks_task ON webhooks (task_id);
CREATE INDEX webhooks_updated ON webhooks (updated_at);

-- Unfinished tasks per key, kept by the triggers below in the same transaction as the change.
-- The per-key limit is checked under this row's lock (`SELECT … FOR UPDATE` in the submit), so
-- submits of one key from any number of API nodes queue on it and each sees the count its
-- predecessors left: the limit holds across nodes. Every key has its row from birth, so a
-- submit always finds one to lock.
CREATE TABLE key_load (
    key_id TEXT PRIMARY KEY,
    pending BIGINT NOT NULL
);

CREATE FUNCTION fluxd_key_born() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_load (key_id, pending) VALUES (NEW.id, 0) ON CONFLICT (key_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER key_load_born AFTER INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION fluxd_key_born();

-- +1 for a task that is (again) unfinished, -1 for one that is no longer.
CREATE FUNCTION fluxd_key_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'Pending' THEN
        UPDATE key_load SET pending = pending - 1 WHERE key_id = OLD.key_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'Pending' THEN
        INSERT INTO key_load (key_id, pending) VALUES (NEW.key_id, 1)
            ON CONFLICT (key_id) DO UPDATE SET pending = key_load.pending + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER key_load_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.status = 'Pending') EXECUTE FUNCTION fluxd_key_load();
CREATE TRIGGER key_load_status AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN ((OLD.status = 'Pending') <> (NEW.status = 'Pending'))
    EXECUTE FUNCTION fluxd_key_load();
CREATE TRIGGER key_load_delete AFTER DELETE ON tasks
    FOR EACH ROW WHEN (OLD.status = 'Pending') EXECUTE FUNCTION fluxd_key_load();

-- Secrets every node must share (the delivery URLs' signing key), each created once.
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY,
    -- Lowercase hex.
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
