-- The W3C trace context (traceparent, tracestate) of the request that created the run, so the
-- dispatcher that drives the run, on whichever replica, continues that request's trace.
ALTER TABLE pipeline.runs ADD COLUMN IF NOT EXISTS trace_context jsonb NOT NULL DEFAULT '{}'::jsonb;
