-- fluxd schema for PostgreSQL, version 2 (SQLite's version 4): cancelling tasks. A running
-- task's cancel is a mark its worker reads between denoising steps (the worker then finishes the
-- task `Error`); a queued task is finished at once and needs none.
ALTER TABLE tasks ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
