-- The repository and project of the approved release, taken from the release service when the
-- approval is recorded: approval.created and approval.revoked name them (subscribers filter
-- events on `data.repository`). Null on the rows recorded before; those are revocable only
-- until their expiry, so a null lasts at most one approval TTL after this migration.
ALTER TABLE approval.approvals
    ADD COLUMN repository text CHECK (repository <> ''),
    ADD COLUMN project text CHECK (project <> '');
