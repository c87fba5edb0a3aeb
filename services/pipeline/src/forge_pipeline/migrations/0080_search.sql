-- Search (docs/api-search.md): step log lines indexed when a step's log is final, and the run
-- columns GET /v1/search matches on. Full text with the 'simple' configuration (no stemming, no
-- stop words: logs are not English prose, and "error" must find "error", not "err").
CREATE TABLE IF NOT EXISTS pipeline.log_lines (
    step_id uuid NOT NULL REFERENCES pipeline.steps (id) ON DELETE CASCADE,
    run_id uuid NOT NULL,
    repository text NOT NULL,
    indexed_at timestamptz NOT NULL DEFAULT now(),
    line_number integer NOT NULL,
    line text NOT NULL,
    words tsvector GENERATED ALWAYS AS (to_tsvector('simple', line)) STORED,
    PRIMARY KEY (step_id, line_number)
);
CREATE INDEX IF NOT EXISTS log_lines_words_idx ON pipeline.log_lines USING gin (words);

-- GET /v1/search over runs: commit prefix, branch, tag, author, error text.
CREATE INDEX IF NOT EXISTS runs_commit_prefix_idx ON pipeline.runs (commit_sha text_pattern_ops);
CREATE INDEX IF NOT EXISTS runs_branch_created_idx ON pipeline.runs (branch, created_at, id);
CREATE INDEX IF NOT EXISTS runs_tag_idx ON pipeline.runs (tag) WHERE tag IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_triggered_by_created_idx ON pipeline.runs (triggered_by, created_at, id);
CREATE INDEX IF NOT EXISTS runs_error_words_idx ON pipeline.runs USING gin (to_tsvector('simple', coalesce(error, '')));
