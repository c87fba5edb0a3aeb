-- What exactly a release's artifacts are (issue 14): the tracking artifact's manifest digest
-- and the content's size, recorded by the worker that built them. NULL for artifacts given
-- without them (releases created by hand, or before this migration).
ALTER TABLE release.artifacts
    ADD COLUMN digest text CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    ADD COLUMN size bigint CHECK (size >= 0);
