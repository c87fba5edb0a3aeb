-- Repository names compare case-insensitively (0060): run_counts (0011) is keyed by the lower-cased
-- name too, so a list's total counts every spelling of a repository. Recounted under a share lock
-- on runs so no insert or status change slips between the recount and the new triggers.
LOCK TABLE pipeline.runs IN SHARE MODE;

CREATE OR REPLACE FUNCTION pipeline.count_run_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IS NOT DISTINCT FROM OLD.status AND lower(NEW.repository) = lower(OLD.repository) THEN
            RETURN NULL;
        END IF;
        UPDATE pipeline.run_counts SET runs = runs - 1
        WHERE repository = lower(OLD.repository) AND status = OLD.status;
    END IF;
    INSERT INTO pipeline.run_counts AS c (repository, status, runs) VALUES (lower(NEW.repository), NEW.status, 1)
    ON CONFLICT (repository, status) DO UPDATE SET runs = c.runs + 1;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pipeline.count_deleted_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM pipeline.run_counts c
    WHERE (c.repository, c.status) IN (SELECT DISTINCT lower(g.repository), g.status FROM gone g)
    ORDER BY c.repository, c.status FOR UPDATE;
    UPDATE pipeline.run_counts c SET runs = c.runs - g.n
    FROM (SELECT lower(repository) AS repository, status, count(*) AS n FROM gone GROUP BY 1, 2) g
    WHERE c.repository = g.repository AND c.status = g.status;
    RETURN NULL;
END $$;

DELETE FROM pipeline.run_counts;
INSERT INTO pipeline.run_counts (repository, status, runs)
SELECT lower(repository), status, count(*) FROM pipeline.runs GROUP BY 1, 2;
