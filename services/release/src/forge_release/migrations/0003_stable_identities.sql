-- Stable identities next to the display names, for separation of duties (the approval service
-- refuses an approval by the release's creator or by the author of the run it came from).
-- "sub:<token subject>" for Forge users and service accounts, "github:<numeric user id>" for
-- the author of a webhook run. NULL on releases created before this migration (and on worker
-- releases whose job did not say): those are compared by display name.
ALTER TABLE release.releases ADD COLUMN created_by_id text CHECK (created_by_id ~ '^(sub|github):.+$');
ALTER TABLE release.triggers ADD COLUMN triggered_by_id text CHECK (triggered_by_id ~ '^(sub|github):.+$');
