-- Bumped by every change to a run or its tree (store.lock_run): lets GET /v1/runs/{id} serve an
-- unchanged tree from memory after one indexed lookup.
ALTER TABLE pipeline.runs ADD COLUMN IF NOT EXISTS tree_version bigint NOT NULL DEFAULT 0;
