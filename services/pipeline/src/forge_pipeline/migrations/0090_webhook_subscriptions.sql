-- Outgoing webhooks (forge_pipeline/notify, docs/webhooks.md): subscriptions, and one delivery
-- per (subscription, event) fanned out from FORGE_EVENTS.
CREATE TABLE IF NOT EXISTS pipeline.webhook_subscriptions (
    id uuid PRIMARY KEY,
    url text NOT NULL,
    event_types text[] NOT NULL,
    repository text,
    -- Repository names compare case-insensitively, as GitHub's do.
    repository_key text GENERATED ALWAYS AS (lower(repository)) STORED,
    environment text,
    -- The Standard Webhooks secret (whsec_<base64>): needed in clear to sign; shown once.
    secret text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- Start of the current unbroken run of failed attempts (null after any success).
    failing_since timestamptz,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_created_idx ON pipeline.webhook_subscriptions (created_at, id);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_repository_idx
    ON pipeline.webhook_subscriptions (repository_key, created_at, id);

DO $$ BEGIN
    CREATE TYPE pipeline.webhook_delivery_status AS ENUM ('pending', 'succeeded', 'failed');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- "webhook_deliveries" is taken by GitHub's incoming deliveries.
CREATE TABLE IF NOT EXISTS pipeline.subscription_deliveries (
    id uuid PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES pipeline.webhook_subscriptions (id) ON DELETE CASCADE,
    event_id text NOT NULL,
    event_type text NOT NULL,
    -- The event envelope exactly as it was on NATS: the body of every attempt.
    body bytea NOT NULL,
    status pipeline.webhook_delivery_status NOT NULL DEFAULT 'pending',
    attempt integer NOT NULL DEFAULT 0,
    -- When the next attempt is due (pending), or until when a claimed attempt is leased.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- No automatic attempt is made after this instant (FORGE_WEBHOOK_RETRY_FOR after creation).
    retry_until timestamptz NOT NULL,
    last_attempt_at timestamptz,
    response_status integer,
    response_body text,
    duration_ms integer,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A redelivered NATS message (a restart before its ack) inserts nothing twice.
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX IF NOT EXISTS subscription_deliveries_due_idx
    ON pipeline.subscription_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS subscription_deliveries_list_idx
    ON pipeline.subscription_deliveries (subscription_id, created_at, id);
