-- Step logs still to be indexed for search (search.LogIndexer), off the report's request path:
-- a step reported final with a log is queued by this trigger in the report's own transaction, so
-- a log is never left unindexed by a crash or an S3 outage (the indexer retries with backoff).
-- attempts/next_attempt_at: an indexer claims a row by moving next_attempt_at past its lease;
-- another replica skips it until then. A re-report while queued or claimed resets the row.
CREATE TABLE IF NOT EXISTS pipeline.log_index_queue (
    step_id uuid PRIMARY KEY REFERENCES pipeline.steps (id) ON DELETE CASCADE,
    queued_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS log_index_queue_due_idx ON pipeline.log_index_queue (next_attempt_at);

CREATE OR REPLACE FUNCTION pipeline.queue_log_index() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipeline.log_index_queue AS q (step_id) VALUES (NEW.id)
    ON CONFLICT (step_id) DO UPDATE SET attempts = 0, next_attempt_at = now(), queued_at = now();
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS log_index_queue_steps ON pipeline.steps;
CREATE TRIGGER log_index_queue_steps AFTER UPDATE OF status, logs_s3_key ON pipeline.steps
    FOR EACH ROW
    WHEN (NEW.logs_s3_key IS NOT NULL AND NEW.status::text IN ('success', 'failed', 'cancelled')
          AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.logs_s3_key IS DISTINCT FROM NEW.logs_s3_key))
    EXECUTE FUNCTION pipeline.queue_log_index();
