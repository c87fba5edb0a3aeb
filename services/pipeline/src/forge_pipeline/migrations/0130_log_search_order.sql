-- GET /v1/search/logs for a word on many lines (search.py, "two plans"): the newest lines in the
-- result order (indexed_at DESC, step_id, line_number), across all repositories and within one,
-- so that the first page of a common word is read from the top of an index instead of sorting
-- every match. A rare word is still served by the GIN index of 0080.
CREATE INDEX IF NOT EXISTS log_lines_recent_idx
    ON pipeline.log_lines (indexed_at DESC, step_id, line_number);
CREATE INDEX IF NOT EXISTS log_lines_repository_recent_idx
    ON pipeline.log_lines (repository, indexed_at DESC, step_id, line_number);
