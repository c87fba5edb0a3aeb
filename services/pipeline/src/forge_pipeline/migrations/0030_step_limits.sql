-- Sandbox limits of a step from project.toml (memory, processes, network); NULL memory_bytes or
-- processes: the worker's defaults (FORGE_STEP_MEMORY, FORGE_STEP_PROCESSES).
ALTER TABLE pipeline.steps ADD COLUMN IF NOT EXISTS memory_bytes bigint;
ALTER TABLE pipeline.steps ADD COLUMN IF NOT EXISTS processes integer;
ALTER TABLE pipeline.steps ADD COLUMN IF NOT EXISTS network boolean NOT NULL DEFAULT true;
