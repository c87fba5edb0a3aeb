-- Commit statuses of created releases (forge/release/<project>), posted by forge_common.github's sender: one table of
-- GitHub API calls, sent in order; github_values (unused by releases today) keeps ids
-- of GitHub objects that later calls name.
CREATE TABLE github_outbox (
    id bigserial PRIMARY KEY,
    ordering_key text NOT NULL,
    method text NOT NULL DEFAULT 'POST',
    path text NOT NULL,
    body jsonb NOT NULL,
    save_as text,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    sent_at timestamptz,
    skipped boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX github_outbox_due_idx ON github_outbox (next_attempt_at, id) WHERE sent_at IS NULL AND NOT skipped;
CREATE INDEX github_outbox_key_idx ON github_outbox (ordering_key, id) WHERE sent_at IS NULL AND NOT skipped;
CREATE INDEX github_outbox_done_idx ON github_outbox (created_at) WHERE sent_at IS NOT NULL OR skipped;
CREATE TABLE github_values (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
