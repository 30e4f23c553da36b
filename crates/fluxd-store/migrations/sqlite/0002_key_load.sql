-- fluxd schema, version 2: what a submit writes, made smaller.
--
-- Each key's unfinished tasks are counted in `key_load`, kept by triggers in the same
-- transaction as the change, so the per-key limit check reads one row instead of walking the
-- key's queue, and a submit updates one row of a small table instead of inserting into a
-- (key_id, status) index whose entries for different keys lie on different pages: under load,
-- each submit's own index page was a page the commit had to write to the log.
CREATE TABLE key_load (
    key_id TEXT PRIMARY KEY,
    pending INTEGER NOT NULL
);
INSERT INTO key_load (key_id, pending)
    SELECT key_id, COUNT(*) FROM tasks WHERE status = 'Pending' GROUP BY key_id;

CREATE TRIGGER key_load_insert AFTER INSERT ON tasks WHEN NEW.status = 'Pending'
BEGIN
    INSERT INTO key_load (key_id, pending) VALUES (NEW.key_id, 1)
        ON CONFLICT (key_id) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER key_load_finish AFTER UPDATE OF status ON tasks
    WHEN OLD.status = 'Pending' AND NEW.status <> 'Pending'
BEGIN
    UPDATE key_load SET pending = pending - 1 WHERE key_id = OLD.key_id;
END;

CREATE TRIGGER key_load_requeue AFTER UPDATE OF status ON tasks
    WHEN OLD.status <> 'Pending' AND NEW.status = 'Pending'
BEGIN
    INSERT INTO key_load (key_id, pending) VALUES (NEW.key_id, 1)
        ON CONFLICT (key_id) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER key_load_delete AFTER DELETE ON tasks WHEN OLD.status = 'Pending'
BEGIN
    UPDATE key_load SET pending = pending - 1 WHERE key_id = OLD.key_id;
END;

DROP INDEX tasks_key_status;

-- Only finished tasks are swept by retention: unfinished ones (NULL) need no entry.
DROP INDEX tasks_finished;
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
