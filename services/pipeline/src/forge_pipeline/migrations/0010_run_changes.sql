-- Live status (GET /v1/runs/{id}/events, live.py): every status change of a run, a phase, a task
-- or a step is recorded here by triggers, in the transaction that makes it, and announced with
-- NOTIFY forge_run_changes (payload: the run id) at commit. ``seq`` is the SSE event id a client
-- resumes from with Last-Event-ID. Changes of one run are serialised by the run's row lock (every
-- change takes store.lock_run first, and the trigger takes it too), so within a run ``seq`` grows
-- in commit order: a reader that has seen seq N never later finds a committed change below N.
-- A step that went from pending straight to its outcome (a quick step whose running report was
-- never due) is recorded as running, then its outcome.
-- Rows go with their run (retention deletes runs; ON DELETE CASCADE).
CREATE TABLE IF NOT EXISTS pipeline.run_changes (
    seq bigserial PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('run', 'phase', 'task', 'step')),
    data jsonb NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS run_changes_run_seq_idx ON pipeline.run_changes (run_id, seq);

-- RFC 3339 UTC with a Z, as every timestamp the API serves.
CREATE OR REPLACE FUNCTION pipeline.rfc3339(value timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE OR REPLACE FUNCTION pipeline.record_run_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    run uuid;
    data jsonb;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'runs' THEN
        kind := 'run';
        run := NEW.id;
        data := jsonb_build_object('id', NEW.id, 'status', NEW.status, 'started_at', pipeline.rfc3339(NEW.started_at),
                                   'completed_at', pipeline.rfc3339(NEW.completed_at));
    ELSE
        run := NEW.run_id;
        -- No-op when the transaction holds it already (store.lock_run); otherwise it orders this
        -- change after every other change of the run in flight.
        PERFORM 1 FROM pipeline.runs r WHERE r.id = run FOR NO KEY UPDATE;
        IF TG_TABLE_NAME = 'phases' THEN
            kind := 'phase';
            data := jsonb_build_object('id', NEW.id, 'name', NEW.name, 'group', NEW.group_number,
                                       'status', NEW.status, 'started_at', pipeline.rfc3339(NEW.started_at),
                                       'completed_at', pipeline.rfc3339(NEW.completed_at));
        ELSIF TG_TABLE_NAME = 'tasks' THEN
            kind := 'task';
            data := jsonb_build_object('id', NEW.id, 'phase_id', NEW.phase_id, 'project_name', NEW.project_name,
                                       'status', NEW.status, 'started_at', pipeline.rfc3339(NEW.started_at),
                                       'completed_at', pipeline.rfc3339(NEW.completed_at));
        ELSE
            kind := 'step';
            data := jsonb_build_object('id', NEW.id, 'task_id', NEW.task_id, 'name', NEW.name,
                                       'position', NEW.position, 'status', NEW.status,
                                       'started_at', pipeline.rfc3339(NEW.started_at), 'completed_at', pipeline.rfc3339(NEW.completed_at),
                                       'exit_code', NEW.exit_code);
        END IF;
    END IF;
    -- A step (task, phase) that finished before its running report was due goes from pending to
    -- its outcome in one write, with a start time: its stream still shows it running first.
    IF kind <> 'run' AND TG_OP = 'UPDATE' AND OLD.status::text = 'pending'
       AND NEW.status::text IN ('success', 'failed') AND NEW.started_at IS NOT NULL THEN
        INSERT INTO pipeline.run_changes (run_id, kind, data)
        VALUES (run, kind, data || jsonb_build_object('status', 'running', 'completed_at', NULL, 'exit_code', NULL)
                - CASE WHEN kind = 'step' THEN '' ELSE 'exit_code' END);
    END IF;
    INSERT INTO pipeline.run_changes (run_id, kind, data) VALUES (run, kind, data);
    PERFORM pg_notify('forge_run_changes', run::text);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS run_changes_runs ON pipeline.runs;
CREATE TRIGGER run_changes_runs AFTER INSERT OR UPDATE OF status ON pipeline.runs
    FOR EACH ROW EXECUTE FUNCTION pipeline.record_run_change();
DROP TRIGGER IF EXISTS run_changes_phases ON pipeline.phases;
CREATE TRIGGER run_changes_phases AFTER INSERT OR UPDATE OF status ON pipeline.phases
    FOR EACH ROW EXECUTE FUNCTION pipeline.record_run_change();
DROP TRIGGER IF EXISTS run_changes_tasks ON pipeline.tasks;
CREATE TRIGGER run_changes_tasks AFTER INSERT OR UPDATE OF status ON pipeline.tasks
    FOR EACH ROW EXECUTE FUNCTION pipeline.record_run_change();
DROP TRIGGER IF EXISTS run_changes_steps ON pipeline.steps;
CREATE TRIGGER run_changes_steps AFTER INSERT OR UPDATE OF status ON pipeline.steps
    FOR EACH ROW EXECUTE FUNCTION pipeline.record_run_change();

-- Run list filters (GET /v1/runs ?triggered_by=): the other filters ride the existing
-- (repository[, branch | status], created_at, id) indexes, created_after/before and the cursor as
-- ranges on their tail.
CREATE INDEX IF NOT EXISTS runs_repository_triggered_created_idx
    ON pipeline.runs (repository, triggered_by, created_at, id);
