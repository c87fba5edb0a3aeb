-- Deployments of releases to environments. A row is reserved `pending` before its GitOps
-- commit is pushed (the pending limit counts it), gets its commit sha once the push landed, and
-- is moved by the reconciler to `active` (the previous active one to `superseded`) or `failed`.
CREATE TABLE deployment.deployments (
    id uuid PRIMARY KEY,
    release_id uuid NOT NULL,
    repository text NOT NULL,
    project text NOT NULL,
    release_number integer NOT NULL,
    release_commit_sha text NOT NULL,
    release_oci_uri text NOT NULL DEFAULT '',
    environment text NOT NULL CHECK (environment IN ('dev', 'staging', 'production')),
    status text NOT NULL CHECK (status IN ('pending', 'active', 'superseded', 'failed')),
    deployed_at timestamptz NOT NULL,
    deployed_by text NOT NULL,
    approval_id uuid,
    gitops_path text NOT NULL,
    gitops_commit_sha text,
    committed_at timestamptz,
    reconciled_at timestamptz,
    superseded_at timestamptz,
    superseded_by uuid,
    error text,
    CONSTRAINT deployments_active_is_reconciled
        CHECK (status <> 'active' OR (reconciled_at IS NOT NULL AND gitops_commit_sha IS NOT NULL)),
    CONSTRAINT deployments_production_needs_approval
        CHECK (environment <> 'production' OR approval_id IS NOT NULL)
);

-- At most one active deployment per environment and project; also serves "current".
CREATE UNIQUE INDEX deployments_one_active_idx
    ON deployment.deployments (environment, repository, project) WHERE status = 'active';
-- History, newest first, and its total.
CREATE INDEX deployments_history_idx
    ON deployment.deployments (environment, repository, project, deployed_at DESC, id DESC);
-- The pending limit, the reconciler's work list and its timeout sweep.
CREATE INDEX deployments_pending_idx
    ON deployment.deployments (deployed_at) WHERE status = 'pending';
CREATE INDEX deployments_release_idx ON deployment.deployments (release_id);
