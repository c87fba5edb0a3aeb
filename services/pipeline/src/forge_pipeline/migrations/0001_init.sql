-- Pipeline schema: runs -> phases -> tasks -> steps, webhook deliveries, tag pushes and the
-- commit-status outbox. Enums and uniqueness rules are enforced here, not only in code.

CREATE TYPE pipeline.run_status AS ENUM ('pending', 'running', 'success', 'failed', 'cancelled');
CREATE TYPE pipeline.phase_status AS ENUM ('pending', 'running', 'success', 'failed', 'skipped');
CREATE TYPE pipeline.task_status AS ENUM ('pending', 'running', 'success', 'failed', 'skipped', 'cancelled');
CREATE TYPE pipeline.step_status AS ENUM ('pending', 'running', 'success', 'failed', 'skipped', 'cancelled');
CREATE TYPE pipeline.trigger_type AS ENUM ('push', 'pull_request', 'manual');

CREATE TABLE pipeline.runs (
    id uuid PRIMARY KEY,
    repository text NOT NULL,
    branch text NOT NULL,
    commit_sha text NOT NULL,
    tag text,                                   -- set for runs triggered by a tag push
    pull_request_number integer,                -- set for pull_request webhooks
    triggered_by text NOT NULL,
    trigger_type pipeline.trigger_type NOT NULL,
    status pipeline.run_status NOT NULL DEFAULT 'pending',
    error text,
    failed_phase text,
    idempotency_key text,
    request_fingerprint text,                   -- hash of the create request, for Idempotency-Key reuse checks
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    discovered_at timestamptz,
    release_triggers jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT runs_repository_commit_key UNIQUE (repository, commit_sha)
);
CREATE INDEX runs_repository_branch_created_idx ON pipeline.runs (repository, branch, created_at, id);
CREATE INDEX runs_repository_created_idx ON pipeline.runs (repository, created_at, id);
CREATE INDEX runs_repository_status_created_idx ON pipeline.runs (repository, status, created_at, id);
CREATE INDEX runs_status_started_idx ON pipeline.runs (status, started_at);
CREATE INDEX runs_lease_idx ON pipeline.runs (lease_expires_at) WHERE status IN ('pending', 'running');
CREATE INDEX runs_active_repository_idx ON pipeline.runs (repository) WHERE status IN ('pending', 'running');
CREATE UNIQUE INDEX runs_idempotency_key ON pipeline.runs (triggered_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE pipeline.phases (
    id uuid PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    name text NOT NULL,
    group_number integer NOT NULL,
    timeout_seconds integer,
    status pipeline.phase_status NOT NULL DEFAULT 'pending',
    started_at timestamptz,
    completed_at timestamptz,
    CONSTRAINT phases_run_name_key UNIQUE (run_id, name)
);

CREATE TABLE pipeline.tasks (
    id uuid PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    phase_id uuid NOT NULL REFERENCES pipeline.phases (id) ON DELETE CASCADE,
    project_name text NOT NULL,
    project_path text NOT NULL DEFAULT '.',
    status pipeline.task_status NOT NULL DEFAULT 'pending',
    error text,
    attempt integer NOT NULL DEFAULT 0,
    started_at timestamptz,
    completed_at timestamptz,
    CONSTRAINT tasks_phase_project_key UNIQUE (phase_id, project_name)
);
CREATE INDEX tasks_run_idx ON pipeline.tasks (run_id);

CREATE TABLE pipeline.steps (
    id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES pipeline.tasks (id) ON DELETE CASCADE,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    position integer NOT NULL,
    name text NOT NULL,
    action text NOT NULL DEFAULT 'shell' CHECK (action IN ('shell', 'earthly')),
    command text NOT NULL DEFAULT '',
    timeout_seconds integer,
    status pipeline.step_status NOT NULL DEFAULT 'pending',
    exit_code integer,
    logs_s3_key text,
    started_at timestamptz,
    completed_at timestamptz,
    CONSTRAINT steps_task_name_key UNIQUE (task_id, name)
);
CREATE INDEX steps_run_idx ON pipeline.steps (run_id);

-- GitHub webhook redelivery dedup: one row per X-GitHub-Delivery.
CREATE TABLE pipeline.webhook_deliveries (
    delivery_id text PRIMARY KEY,
    event text NOT NULL,
    outcome text NOT NULL,
    run_id uuid,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Tag pushes seen from GitHub, kept for release triggers ({ tag = true }).
CREATE TABLE pipeline.tag_pushes (
    id uuid PRIMARY KEY,
    repository text NOT NULL,
    tag text NOT NULL,
    commit_sha text NOT NULL,
    pushed_by text NOT NULL,
    run_id uuid REFERENCES pipeline.runs (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tag_pushes_repository_tag_commit_key UNIQUE (repository, tag, commit_sha)
);
CREATE INDEX tag_pushes_run_idx ON pipeline.tag_pushes (run_id);

-- Commit statuses to post to GitHub, written in the same transaction as the run change
-- (an outbox of its own so a slow or down GitHub never blocks the API).
CREATE TABLE pipeline.commit_statuses (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL,
    repository text NOT NULL,
    commit_sha text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'success', 'failure', 'error')),
    description text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    sent_at timestamptz,
    skipped boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commit_statuses_due_idx ON pipeline.commit_statuses (next_attempt_at, id)
    WHERE sent_at IS NULL AND NOT skipped;
CREATE INDEX commit_statuses_run_idx ON pipeline.commit_statuses (run_id, id);
