-- Approvals of a release for an environment.
--
-- `status` is what was last written; the status a client sees is computed at read time
-- (an `active` row whose `expires_at` has passed reads as `expired`). At most one row per
-- (release, environment) is stored `active`: the partial unique index makes a concurrent second
-- approval fail instead of racing, and writers first mark rows whose expiry passed as `expired`.
CREATE TABLE approval.approvals (
    id uuid PRIMARY KEY,
    release_id uuid NOT NULL,
    environment text NOT NULL CHECK (environment IN ('dev', 'staging', 'production')),
    approver text NOT NULL CHECK (approver <> ''),
    justification text NOT NULL CHECK (btrim(justification) <> ''),
    approved_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL CHECK (expires_at > approved_at),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'expired', 'revoked')),
    revoked_by text,
    revoked_at timestamptz,
    revocation_reason text,
    CONSTRAINT approvals_revocation_complete CHECK (
        (status = 'revoked') = (revoked_by IS NOT NULL AND revoked_at IS NOT NULL)
    )
);

-- "the current approval of a release in an environment" and the expiry sweep before a write
CREATE INDEX approvals_release_environment_idx
    ON approval.approvals (release_id, environment, approved_at DESC);

-- "what did this approver approve, and when" (audits)
CREATE INDEX approvals_approver_idx ON approval.approvals (approver, approved_at);

-- at most one active approval per (release, environment), enforced by the database
CREATE UNIQUE INDEX approvals_one_active_idx
    ON approval.approvals (release_id, environment) WHERE status = 'active';
