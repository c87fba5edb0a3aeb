-- Releases: immutable, numbered snapshots of one project at one commit.

CREATE TYPE release.trigger_type AS ENUM ('branch_push', 'tag', 'manual');
CREATE TYPE release.artifact_type AS ENUM ('container', 'binary', 'archive');
CREATE TYPE release.alias_type AS ENUM ('numeric', 'tag', 'branch', 'custom');

-- One row per (repository, project): the last number handed out. Creating a release bumps it
-- with a row lock held until commit, which serialises creates of one project (and only of that
-- project) and makes numbering gap-free: a rolled-back create rolls its increment back too.
CREATE TABLE release.project_counters (
    repository text NOT NULL,
    project text NOT NULL,
    last_number bigint NOT NULL CHECK (last_number >= 0),
    PRIMARY KEY (repository, project)
);

CREATE TABLE release.releases (
    id uuid PRIMARY KEY,
    repository text NOT NULL,
    project text NOT NULL,
    -- "C" collation: byte order, so a SHA prefix is a plain index range scan.
    commit_sha text COLLATE "C" NOT NULL CHECK (commit_sha ~ '^[0-9a-f]{40}([0-9a-f]{24})?$'),
    release_number bigint NOT NULL CHECK (release_number > 0),
    pipeline_run_id uuid,
    oci_uri text NOT NULL,
    oci_digest text NOT NULL CHECK (oci_digest ~ '^sha256:[0-9a-f]{64}$'),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT releases_commit_key UNIQUE (repository, project, commit_sha),
    CONSTRAINT releases_number_key UNIQUE (repository, project, release_number)
);
CREATE INDEX releases_pipeline_run_idx ON release.releases (pipeline_run_id) WHERE pipeline_run_id IS NOT NULL;

-- Exactly one trigger per release.
CREATE TABLE release.triggers (
    release_id uuid PRIMARY KEY REFERENCES release.releases (id),
    trigger_type release.trigger_type NOT NULL,
    branch text,
    tag text,
    triggered_by text NOT NULL,
    CHECK (trigger_type <> 'branch_push' OR branch IS NOT NULL),
    CHECK (trigger_type <> 'tag' OR tag IS NOT NULL)
);

CREATE TABLE release.artifacts (
    release_id uuid NOT NULL REFERENCES release.releases (id),
    name text NOT NULL,
    position integer NOT NULL,
    artifact_type release.artifact_type NOT NULL,
    tracking_oci_uri text NOT NULL,
    primary_published_uri text NOT NULL,
    PRIMARY KEY (release_id, name)
);

-- An alias names one release of a project: unique per (repository, project, alias), and so
-- also per (release, alias). repository/project are copied from the release for that key.
CREATE TABLE release.aliases (
    repository text NOT NULL,
    project text NOT NULL,
    alias text NOT NULL,
    release_id uuid NOT NULL REFERENCES release.releases (id),
    alias_type release.alias_type NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository, project, alias),
    CONSTRAINT aliases_release_alias_key UNIQUE (release_id, alias)
);
