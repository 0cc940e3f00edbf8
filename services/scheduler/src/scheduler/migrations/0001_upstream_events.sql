-- Every upstream event the scheduler has accepted, whatever its type: nothing upstream sends is dropped.
CREATE SCHEMA IF NOT EXISTS scheduler;

CREATE TABLE IF NOT EXISTS scheduler.upstream_events (
    event_key text PRIMARY KEY,          -- AMQP message_id, or a hash of the body when the producer gave none
    event_type text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    correlation_id text,
    envelope jsonb NOT NULL
);

CREATE INDEX IF NOT EXISTS upstream_events_type_received
    ON scheduler.upstream_events (event_type, received_at DESC);
