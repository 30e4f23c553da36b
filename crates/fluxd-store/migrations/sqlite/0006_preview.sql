-- fluxd schema, version 6: live previews. A running task's latest preview: its blob key (kept
-- after the task finishes, so retention deletes the blob with the task) and the step it shows
-- (cleared by every claim, so a new run never shows an earlier run's preview).
ALTER TABLE tasks ADD COLUMN preview_key TEXT;
ALTER TABLE tasks ADD COLUMN preview_step BIGINT;
ALTER TABLE tasks ADD COLUMN preview_steps BIGINT;
