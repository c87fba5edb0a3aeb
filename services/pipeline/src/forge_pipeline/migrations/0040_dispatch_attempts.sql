-- tasks.dispatch_attempt: the secret id of the task's job dispatch (issue 12, "replies only from
-- workers"). The CI job carries it and the worker's reply must echo it with the job id; the
-- dispatcher drops any other reply. Kept on the row so a replica that takes the run over (and
-- re-publishes the job, deduplicated by its Nats-Msg-Id) expects the same attempt.
ALTER TABLE pipeline.tasks ADD COLUMN IF NOT EXISTS dispatch_attempt text;
