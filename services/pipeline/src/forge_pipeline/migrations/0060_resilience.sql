-- Issue 13 ("nothing lost, nothing stuck").
--
-- Repository names are case-insensitive (GitHub's are): `Acme/Shop` and `acme/shop` are one
-- repository with one active-run limit and one run per commit. Rows keep the name as given;
-- uniqueness, limits and lookups go through the lower-cased generated column.
DO $$
DECLARE
    clash text;
BEGIN
    SELECT string_agg(DISTINCT lower(repository) || '@' || commit_sha, ', ') INTO clash
    FROM (SELECT repository, commit_sha,
                 count(*) OVER (PARTITION BY lower(repository), commit_sha) AS n
          FROM pipeline.runs) r
    WHERE n > 1;
    IF clash IS NOT NULL THEN
        RAISE EXCEPTION 'runs of repositories differing only by case build the same commit: %', clash
            USING HINT = 'delete one run of each pair (DELETE /v1/runs cancels; remove the row by hand), then migrate again';
    END IF;
END
$$;

ALTER TABLE pipeline.runs
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    -- Stable identity of who triggered the run: "sub:<token subject>" for API callers,
    -- "github:<numeric user id>" for webhook runs; NULL on runs created before this migration.
    ADD COLUMN triggered_by_id text CHECK (triggered_by_id ~ '^(sub|github):.+$'),
    -- Why the release job of a successful run failed for good (release service refused it,
    -- or it was still failing when its retries ran out); NULL when it succeeded or never ran.
    ADD COLUMN release_error text;

ALTER TABLE pipeline.runs DROP CONSTRAINT runs_repository_commit_key;
-- "C" collation: an abbreviated SHA's run is found by an index range scan over the full SHAs.
ALTER TABLE pipeline.runs ALTER COLUMN commit_sha TYPE text COLLATE "C";
ALTER TABLE pipeline.runs ADD CONSTRAINT runs_repository_commit_key UNIQUE (repository_key, commit_sha);

DROP INDEX IF EXISTS pipeline.runs_repository_branch_created_idx;
DROP INDEX IF EXISTS pipeline.runs_repository_created_idx;
DROP INDEX IF EXISTS pipeline.runs_repository_status_created_idx;
DROP INDEX IF EXISTS pipeline.runs_active_repository_idx;
DROP INDEX IF EXISTS pipeline.runs_repository_triggered_created_idx;
CREATE INDEX runs_repository_branch_created_idx ON pipeline.runs (repository_key, branch, created_at, id);
CREATE INDEX runs_repository_created_idx ON pipeline.runs (repository_key, created_at, id);
CREATE INDEX runs_repository_status_created_idx ON pipeline.runs (repository_key, status, created_at, id);
CREATE INDEX runs_active_repository_idx ON pipeline.runs (repository_key) WHERE status IN ('pending', 'running');
CREATE INDEX runs_repository_triggered_created_idx ON pipeline.runs (repository_key, triggered_by, created_at, id);

ALTER TABLE pipeline.tag_pushes
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED;
ALTER TABLE pipeline.tag_pushes DROP CONSTRAINT tag_pushes_repository_tag_commit_key;
ALTER TABLE pipeline.tag_pushes
    ADD CONSTRAINT tag_pushes_repository_tag_commit_key UNIQUE (repository_key, tag, commit_sha);
