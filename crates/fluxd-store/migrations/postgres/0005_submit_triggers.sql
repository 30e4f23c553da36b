-- fluxd schema for PostgreSQL, version 5: less work per submitted task. Submits arrive in batches
-- of many rows per statement (src/postgres/submit.rs); profiling a flat-out submit load showed
-- about 30 % of the server's time in the AFTER triggers of those inserts: a PL/pgSQL call per row
-- to bump `key_load`, and two foreign-key checks per row (tenant, key). Now:
--
-- * `key_load` is bumped once per statement, by a statement-level trigger that counts the new
--   unfinished tasks per key in its transition table. The batch statement has already locked
--   those `key_load` rows (in key order), so the count still moves under the lock the limit
--   check took. Updates and deletes keep their per-row triggers: they come one task at a time.
--   (A statement's row triggers fire before its statement triggers, so a charged task's debit
--   (0003) now runs before this count; the lock order of 0003 still holds because every submit
--   statement locks its `key_load` rows first, in its own CTE.)
-- * a task refers to its key and the key's tenant by one composite foreign key instead of two:
--   one check per row, and a stronger rule (a task's tenant is its key's tenant, as the server
--   always wrote it).

DROP TRIGGER key_load_insert ON tasks;

CREATE FUNCTION fluxd_key_load_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_load AS k (key_id, pending)
        SELECT key_id, count(*) FROM inserted WHERE status = 'Pending' GROUP BY key_id
        ON CONFLICT (key_id) DO UPDATE SET pending = k.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;
CREATE TRIGGER key_load_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION fluxd_key_load_inserted();

ALTER TABLE api_keys ADD CONSTRAINT api_keys_id_tenant UNIQUE (id, tenant);
ALTER TABLE tasks
    DROP CONSTRAINT tasks_tenant_fkey,
    DROP CONSTRAINT tasks_key_id_fkey,
    ADD CONSTRAINT tasks_key_tenant_fkey FOREIGN KEY (key_id, tenant)
        REFERENCES api_keys (id, tenant);
