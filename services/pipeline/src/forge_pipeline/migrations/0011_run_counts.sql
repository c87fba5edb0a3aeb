-- Exact totals of GET /v1/runs without counting a million rows: runs per (repository, status),
-- kept by triggers in the transaction of every insert, status change and delete. A list
-- filtered by repository (and status) reads its total here; other filters still count rows.
-- Lock order: a status change locks its old status's row, then its new one (transitions only go
-- forward in the enum's order); a delete statement locks every row it touches sorted, first.
CREATE TABLE IF NOT EXISTS pipeline.run_counts (
    repository text NOT NULL,
    status pipeline.run_status NOT NULL,
    runs bigint NOT NULL,
    PRIMARY KEY (repository, status)
);

INSERT INTO pipeline.run_counts (repository, status, runs)
SELECT repository, status, count(*) FROM pipeline.runs GROUP BY repository, status
ON CONFLICT (repository, status) DO UPDATE SET runs = excluded.runs;

CREATE OR REPLACE FUNCTION pipeline.count_run_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IS NOT DISTINCT FROM OLD.status AND NEW.repository = OLD.repository THEN
            RETURN NULL;
        END IF;
        UPDATE pipeline.run_counts SET runs = runs - 1 WHERE repository = OLD.repository AND status = OLD.status;
    END IF;
    INSERT INTO pipeline.run_counts AS c (repository, status, runs) VALUES (NEW.repository, NEW.status, 1)
    ON CONFLICT (repository, status) DO UPDATE SET runs = c.runs + 1;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pipeline.count_deleted_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM pipeline.run_counts c
    WHERE (c.repository, c.status) IN (SELECT DISTINCT g.repository, g.status FROM gone g)
    ORDER BY c.repository, c.status FOR UPDATE;
    UPDATE pipeline.run_counts c SET runs = c.runs - g.n
    FROM (SELECT repository, status, count(*) AS n FROM gone GROUP BY repository, status) g
    WHERE c.repository = g.repository AND c.status = g.status;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS run_counts_write ON pipeline.runs;
CREATE TRIGGER run_counts_write AFTER INSERT OR UPDATE OF status, repository ON pipeline.runs
    FOR EACH ROW EXECUTE FUNCTION pipeline.count_run_rows();
DROP TRIGGER IF EXISTS run_counts_delete ON pipeline.runs;
CREATE TRIGGER run_counts_delete AFTER DELETE ON pipeline.runs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION pipeline.count_deleted_runs();
