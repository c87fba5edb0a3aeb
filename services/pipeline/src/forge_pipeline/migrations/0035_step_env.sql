-- A step's own environment variables from project.toml (``env = { KEY = "value" }``), a JSON
-- object of strings validated by discovery; '{}' for steps without any.
ALTER TABLE pipeline.steps ADD COLUMN IF NOT EXISTS env jsonb NOT NULL DEFAULT '{}'::jsonb;
