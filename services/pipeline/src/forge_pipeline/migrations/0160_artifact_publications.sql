-- Publications of an artifact a run already built to a destination it was not published to when
-- it was built: today `github-release` for a tag pushed onto the run's commit afterwards (issue 14,
-- tags after the build). One row per artifact, destination and tag; the dispatcher sends a
-- `pipeline.publish.{run}.{id}` job for each `pending` row once the run has succeeded, and records
-- the outcome here and on the artifact (its published URIs gain the asset's URL, or its error
-- says why not). A row `success` with `by_build` is the tag the artifact job itself published to.
CREATE TABLE pipeline.artifact_publications (
    id uuid PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    artifact_id uuid NOT NULL REFERENCES pipeline.artifacts (id) ON DELETE CASCADE,
    destination text NOT NULL DEFAULT 'github-release' CHECK (destination IN ('github-release')),
    tag text NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'success', 'failed')),
    by_build boolean NOT NULL DEFAULT false,
    dispatch_attempt text,
    dispatched_at timestamptz,
    uri text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    CONSTRAINT artifact_publications_key UNIQUE (artifact_id, destination, tag)
);
CREATE INDEX artifact_publications_run_idx ON pipeline.artifact_publications (run_id);
-- The dispatcher's claim looks for successful runs with publications still to make.
CREATE INDEX artifact_publications_pending_idx ON pipeline.artifact_publications (run_id) WHERE status = 'pending';
