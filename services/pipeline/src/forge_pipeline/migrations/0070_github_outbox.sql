-- Commit statuses move to the GitHub outbox shared by every service (forge_common.github):
-- one table of GitHub API calls, sent in order per ordering key (here: per run).
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

-- Statuses not yet sent carry over, in order; ${public_url} and ${status_context} are filled
-- in by the sender from FORGE_PUBLIC_URL and FORGE_GITHUB_STATUS_CONTEXT, as they were before.
INSERT INTO github_outbox (ordering_key, path, body, attempts, next_attempt_at, last_error, created_at)
SELECT 'run:' || run_id::text,
       '/repos/' || repository || '/statuses/' || commit_sha,
       jsonb_build_object(
           'state', state,
           'target_url', '${public_url}/v1/runs/' || run_id::text,
           'description', description,
           'context', '${status_context}'),
       attempts, next_attempt_at, last_error, created_at
FROM commit_statuses
WHERE sent_at IS NULL AND NOT skipped
ORDER BY id;

DROP TABLE commit_statuses;
