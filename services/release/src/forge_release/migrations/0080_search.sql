-- GET /v1/releases/search (docs/api-search.md): releases by commit prefix, branch, tag, alias or
-- author. Each arm of the search's UNION reads one of these indexes.
CREATE INDEX IF NOT EXISTS releases_commit_prefix_idx ON release.releases (commit_sha);  -- "C" collation: LIKE 'abc%' is a range
CREATE INDEX IF NOT EXISTS releases_created_by_idx ON release.releases (created_by);
CREATE INDEX IF NOT EXISTS triggers_branch_idx ON release.triggers (branch) WHERE branch IS NOT NULL;
CREATE INDEX IF NOT EXISTS triggers_tag_idx ON release.triggers (tag) WHERE tag IS NOT NULL;
CREATE INDEX IF NOT EXISTS triggers_triggered_by_idx ON release.triggers (triggered_by);
CREATE INDEX IF NOT EXISTS aliases_alias_idx ON release.aliases (alias);
