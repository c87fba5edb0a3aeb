-- Repository and project names are case-insensitive (GitHub's are, and OCI paths are
-- lower-case): `Acme/Shop` and `acme/shop` are one repository with one release sequence, one
-- set of aliases and one OCI tag per commit. The rows keep the names as first given; keys,
-- uniqueness and every lookup go through these lower-cased generated columns.

-- Two sequences that would become one cannot be merged automatically (their numbers overlap):
-- stop with the list, to be resolved by hand before upgrading.
DO $$
DECLARE
    clash text;
BEGIN
    SELECT string_agg(repository || ' ' || project, ', ' ORDER BY repository, project) INTO clash
    FROM (SELECT repository, project,
                 count(*) OVER (PARTITION BY lower(repository), lower(project)) AS n
          FROM release.project_counters) c
    WHERE n > 1;
    IF clash IS NOT NULL THEN
        RAISE EXCEPTION 'release names differing only by case have separate release sequences: %', clash
            USING HINT = 'rename or remove one of each pair, then run the migration again';
    END IF;
END
$$;

ALTER TABLE release.project_counters
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    ADD COLUMN project_key text GENERATED ALWAYS AS (lower(project)) STORED;
ALTER TABLE release.project_counters DROP CONSTRAINT project_counters_pkey;
ALTER TABLE release.project_counters ADD PRIMARY KEY (repository_key, project_key);

ALTER TABLE release.releases
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    ADD COLUMN project_key text GENERATED ALWAYS AS (lower(project)) STORED;
ALTER TABLE release.releases DROP CONSTRAINT releases_commit_key;
ALTER TABLE release.releases DROP CONSTRAINT releases_number_key;
-- "C" collation on the keys too: the SHA prefix range scan stays an index range scan.
ALTER TABLE release.releases
    ADD CONSTRAINT releases_commit_key UNIQUE (repository_key, project_key, commit_sha),
    ADD CONSTRAINT releases_number_key UNIQUE (repository_key, project_key, release_number);

ALTER TABLE release.aliases
    ADD COLUMN repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    ADD COLUMN project_key text GENERATED ALWAYS AS (lower(project)) STORED;
ALTER TABLE release.aliases DROP CONSTRAINT aliases_pkey;
ALTER TABLE release.aliases ADD PRIMARY KEY (repository_key, project_key, alias);
