-- The scheduler's tables, as a fresh database gets them. Its functions (the lifecycle's one-statement writes)
-- each have their file under repeatable/, applied after this one and re-applied whenever they change.

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

-- The command lifecycle (docs/design.md): every version kept, current state, history, timers, ack outbox.

CREATE TABLE scheduler.command_versions (
    command_id uuid NOT NULL,
    updated_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    event_type text NOT NULL,
    correlation_id text,
    command jsonb NOT NULL,
    PRIMARY KEY (command_id, updated_at)
);

CREATE TABLE scheduler.commands (
    command_id uuid PRIMARY KEY,
    device_id text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,          -- the version in force
    starts_at timestamptz NOT NULL,
    ends_at timestamptz,                      -- null: runs until replaced
    upstream_status text NOT NULL,            -- OK / CANCELED / OPT_OUT as the upstream says
    state text NOT NULL CHECK (state IN ('scheduled', 'active', 'completed', 'canceled', 'failed')),
    state_reason text,
    command jsonb NOT NULL,
    correlation_id text,
    stale_versions_ignored integer NOT NULL DEFAULT 0,
    last_outcome jsonb,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commands_device_window ON scheduler.commands (device_id, starts_at, ends_at);
CREATE INDEX commands_state ON scheduler.commands (state, changed_at DESC);

CREATE TABLE scheduler.command_history (
    id bigserial PRIMARY KEY,
    command_id uuid NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,                       -- received, stale, duplicate, scheduled, failed, dispatched, outcome, acknowledged, ...
    detail text NOT NULL
);
CREATE INDEX command_history_command ON scheduler.command_history (command_id, id);

-- Device actions come due here; claimed with FOR UPDATE SKIP LOCKED so replicas never fire one twice.
CREATE TABLE scheduler.timers (
    id bigserial PRIMARY KEY,
    device_id text NOT NULL,
    command_id uuid,
    kind text NOT NULL CHECK (kind IN ('start', 'end', 'stop')),
    due_at timestamptz NOT NULL,
    fired_at timestamptz,
    action_id uuid
);
CREATE INDEX timers_due ON scheduler.timers (due_at) WHERE fired_at IS NULL;

-- Acknowledgements to PATCH upstream, delivered in order per command, retried until accepted.
CREATE TABLE scheduler.ack_outbox (
    id bigserial PRIMARY KEY,
    command_id uuid NOT NULL,
    device_status text NOT NULL CHECK (device_status IN ('OK', 'FAILED')),
    device_status_reason text,
    idempotency_key uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    delivered_at timestamptz,
    -- A cancellation's OK is queued held until the device's release is known: next_attempt_at is when the
    -- device's revert timer has surely run out, and the confirmed write of this action releases it sooner
    -- (scheduler.release_held_acks). A dead agent therefore still leads to an OK, later.
    release_action_id uuid
);
CREATE INDEX ack_outbox_pending ON scheduler.ack_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX ack_outbox_held ON scheduler.ack_outbox (release_action_id)
    WHERE release_action_id IS NOT NULL AND delivered_at IS NULL;

-- What the device-agent last said about each device.
CREATE TABLE scheduler.device_availability (
    device_id text PRIMARY KEY,
    online boolean NOT NULL,
    reason text,
    observed_at timestamptz NOT NULL
);

CREATE TABLE scheduler.device_outcomes (
    action_id uuid PRIMARY KEY,
    command_id uuid,
    device_id text NOT NULL,
    applied boolean NOT NULL,
    reason text,
    applied_setpoint_w integer,
    observed_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
