-- Dispatcher bookkeeping (owned by the execution engine, dispatcher.py).
-- tasks.dispatched_at: when the task's job was first published; a replica taking over a run
--   computes the job's remaining timeout from it and re-publishes with the same message id
--   (JetStream drops the duplicate when the first publish got through).
-- runs.release_evaluated_at: release triggers of a successful run were evaluated and the
--   release job (if any) queued through the outbox; a run still NULL here is picked up again.
ALTER TABLE pipeline.tasks ADD COLUMN IF NOT EXISTS dispatched_at timestamptz;
ALTER TABLE pipeline.runs ADD COLUMN IF NOT EXISTS release_evaluated_at timestamptz;
CREATE INDEX IF NOT EXISTS runs_release_pending_idx ON pipeline.runs (completed_at)
    WHERE status = 'success' AND release_evaluated_at IS NULL;
