-- Run retention (retention.py): finished runs older than FORGE_RUN_RETENTION are deleted in
-- batches, oldest first, through this index; each leaves a tombstone so a release (or anything
-- else) that names the run can still resolve its id, repository, commit and final status.
CREATE INDEX IF NOT EXISTS runs_finished_completed_idx ON pipeline.runs (completed_at, id)
    WHERE status IN ('success', 'failed', 'cancelled');

CREATE TABLE IF NOT EXISTS pipeline.run_tombstones (
    id uuid PRIMARY KEY,
    repository text NOT NULL,
    branch text NOT NULL,
    commit_sha text NOT NULL,
    status pipeline.run_status NOT NULL,
    created_at timestamptz NOT NULL,
    completed_at timestamptz,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
