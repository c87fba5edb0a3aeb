-- Repository and project names are case-insensitive (GitHub's are; OCI paths and GitOps paths
-- are lower-cased): `Acme/Shop` and `acme/shop` are one target. The rows keep the names as
-- given; lookups, the one-active rule and history go through these lower-cased keys.
ALTER TABLE deployment.deployments
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    ADD COLUMN project_key text GENERATED ALWAYS AS (lower(project)) STORED;

-- Targets that were two before (names differing only by case) may each have an active
-- deployment: the most recently reconciled one stays active, the others are superseded by it.
WITH winner AS (
    SELECT DISTINCT ON (environment, repository_key, project_key) id, environment, repository_key, project_key
    FROM deployment.deployments
    WHERE status = 'active'
    ORDER BY environment, repository_key, project_key, reconciled_at DESC, id DESC
)
UPDATE deployment.deployments d
SET status = 'superseded', superseded_at = now(), superseded_by = w.id
FROM winner w
WHERE d.status = 'active' AND d.id <> w.id
    AND d.environment = w.environment AND d.repository_key = w.repository_key AND d.project_key = w.project_key;

DROP INDEX deployment.deployments_one_active_idx;
DROP INDEX deployment.deployments_history_idx;
-- At most one active deployment per environment and target; also serves "current".
CREATE UNIQUE INDEX deployments_one_active_idx
    ON deployment.deployments (environment, repository_key, project_key) WHERE status = 'active';
-- History, newest first, and its total.
CREATE INDEX deployments_history_idx
    ON deployment.deployments (environment, repository_key, project_key, deployed_at DESC, id DESC);
