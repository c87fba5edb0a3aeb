-- Artifacts a run builds (issue 14). Each is one step of the run's `artifacts` phase (same id),
-- so its status, exit code and log are the step's; this row holds the declaration the artifact
-- job is built from and, once built, where the result went.
CREATE TABLE pipeline.artifacts (
    id uuid PRIMARY KEY REFERENCES pipeline.steps (id) ON DELETE CASCADE,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    task_id uuid NOT NULL REFERENCES pipeline.tasks (id) ON DELETE CASCADE,
    project text NOT NULL,
    project_path text NOT NULL,
    name text NOT NULL,
    artifact_type text NOT NULL CHECK (artifact_type IN ('container', 'binary', 'archive')),
    build text NOT NULL,
    path text NOT NULL,
    publish jsonb NOT NULL DEFAULT '[]',
    timeout_seconds integer CHECK (timeout_seconds > 0),
    digest text CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    size bigint CHECK (size >= 0),
    tracking_oci_uri text,
    published_uris jsonb NOT NULL DEFAULT '[]',
    error text,
    CONSTRAINT artifacts_run_name_key UNIQUE (run_id, project, name)
);
CREATE INDEX artifacts_task_idx ON pipeline.artifacts (task_id);
